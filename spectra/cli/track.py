"""`spectra track`: fine-tune with a built-in recipe and track the run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spectra.limits import check_epochs
from spectra.methods import NAMES as METHOD_NAMES


def track(
    method: Annotated[
        list[str] | None,
        typer.Option(
            help=f"{', '.join(METHOD_NAMES)}; repeat or comma list [ft,lora,sorsa-noreg,sorsa]."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Causal LM folder [the embedded tiny Llama].")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="JSONL with query/response [the embedded math QA set].")
    ] = None,
    targets: Annotated[
        list[str] | None,
        typer.Option(
            help="Target modules; repeat or comma list [the architecture's query and value]."
        ),
    ] = None,
    fused: Annotated[
        list[str] | None,
        typer.Option(
            help="MODULE=LAYOUT: split a fused q/k/v module the registry does not know, "
            "LAYOUT 'Q,K,V' (stacked rows), 'N*Q,K,V' (N groups) or a layout name "
            "(gpt2, gpt_neox, phi3, falcon, baichuan); repeatable."
        ),
    ] = None,
    rank: Annotated[int | None, typer.Option(help="Adapter rank [preset].")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps [preset].")] = None,
    epochs: Annotated[float | None, typer.Option(help="Epochs instead of --steps.")] = None,
    every: Annotated[int | None, typer.Option(help="Snapshot every N steps [preset].")] = None,
    preset: Annotated[str, typer.Option(help="default or paper-analysis (Table 2).")] = "default",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    out: Annotated[Path, typer.Option(help="Runs folder.")] = Path("runs"),
    overwrite: Annotated[bool, typer.Option(help="Replace runs that already exist.")] = False,
    follow: Annotated[
        Path | None,
        typer.Option(help="Instead of training: spectra compute --follow on a run directory."),
    ] = None,
) -> None:
    """Fine-tune and track: with no options, the paper's Figure 2 runs on the embedded default."""
    if follow is not None:
        from spectra.follow import follow as follow_run

        follow_run(follow)
        return
    if epochs is not None:
        check_epochs(epochs)  # at one batch per epoch, before torch and transformers load
    if model is not None:  # before torch and transformers load (~450 MiB)
        from spectra.model_sizes import check_model_exists, check_model_folder

        check_model_exists(model)
        if Path(model).is_dir():
            check_model_folder(Path(model))
    from spectra import recipes

    job = recipes.plan(
        methods=recipes.parse_list(method), model=model, data=data,
        targets=recipes.parse_list(targets), rank=rank, steps=steps, epochs=epochs,
        every=every, preset=preset, device=device, out=out, overwrite=overwrite,
        fused=recipes.parse_fused(fused),
    )  # fmt: skip
    recipes.run(job)
