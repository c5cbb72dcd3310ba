"""`spectra import` and `spectra compare`: runs from checkpoints and models you already have."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spectra.cli.options import COPY_HELP, split_values, step_numbers, table_width
from spectra.errors import Interrupted
from spectra.terminal import shown


def import_(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Trainer output folders (every checkpoint-N/ is step N), checkpoint, peft "
            "adapter or model folders, weight files (.safetensors; torch.save .pt/.bin), or "
            "Hub models (namespace/name[@revision]: only the target tensors are fetched)."
        ),
    ],
    base: Annotated[
        str, typer.Option(help="The base model (folder, weight file or Hub model): step 0.")
    ],
    name: Annotated[str | None, typer.Option(help="Run name [the sources' folder name].")] = None,
    out: Annotated[Path, typer.Option(help="Runs folder.")] = Path("runs"),
    targets: Annotated[
        list[str] | None,
        typer.Option(
            help="Target modules; repeat or comma list [the adapter's modules; for full "
            "weights the architecture's query and value projections]."
        ),
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="Method label [from adapter_config.json, else ft].")
    ] = None,
    steps: Annotated[
        list[str] | None,
        typer.Option(
            help="The step of each checkpoint, in order; repeat or comma list "
            "[checkpoint-N names, else 1, 2, 3, …]."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run that already exists.")] = False,
    copy: Annotated[bool, typer.Option("--copy", help=COPY_HELP)] = False,
) -> None:
    """Import checkpoints you already have as a run directory (then: spectra compute)."""
    from spectra.importer import import_run

    try:
        run = import_run(
            sources, base, out=out, name=name, targets=split_values(targets), method=method,
            steps=step_numbers(steps), overwrite=overwrite, progress=True, copy=copy,
        )  # fmt: skip
    except KeyboardInterrupt:
        raise Interrupted("nothing was written; the same command imports again") from None
    typer.echo(f"wrote {shown(run)}")


def compare(
    base: Annotated[str, typer.Argument(help="The base model (folder, weight file or Hub model).")],
    finetuned: Annotated[
        list[str],
        typer.Argument(
            help="Fine-tuned versions of it: each becomes a run named after its folder or Hub "
            "model (a Trainer output folder gives all its checkpoints as steps)."
        ),
    ],
    targets: Annotated[
        list[str] | None, typer.Option(help="Target modules; repeat or comma list.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Runs folder.")] = Path("runs"),
    overwrite: Annotated[bool, typer.Option(help="Replace runs that already exist.")] = False,
    copy: Annotated[bool, typer.Option("--copy", help=COPY_HELP)] = False,
) -> None:
    """What did these fine-tunes do to their base? Import, compute, print one summary."""
    from spectra.importer import compare_runs
    from spectra.report import render
    from spectra.store import load_runs

    paths = compare_runs(
        base, finetuned, out=out, targets=split_values(targets), overwrite=overwrite, copy=copy
    )
    typer.echo(render(load_runs(paths), width=table_width(), claims="none"), nl=False)
