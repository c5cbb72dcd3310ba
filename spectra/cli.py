"""The `spectra` command line: compute, track, analyze, plot, import, compare."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from spectra.errors import Interrupted, SpectraError, Terminated
from spectra.figures import FIGURES
from spectra.limits import check_epochs, precheck_json
from spectra.methods import NAMES as METHOD_NAMES
from spectra.output import checked_stdout
from spectra.run_files import MANIFEST
from spectra.terminal import shown

STEP_HELP = (
    "The step each run is shown at: last (each run's last step), common (the last step every "
    "run has) or a step number."
)

try:  # typer vendors click since 0.2x; older typers use click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

app = typer.Typer(
    help="Spectral drift analysis of fine-tuning: ΔΣ, ΔD, κ and orthonormality per layer per step.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts show [defaults] literally
)


def _version(value: bool) -> None:
    if value:
        from spectra import __version__

        typer.echo(f"spectra {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show the warnings and log lines of the libraries spectra uses."
        ),
    ] = False,
) -> None:
    """Spectral drift analysis of fine-tuning."""
    from spectra import quiet

    ctx.with_resource(quiet.verbose() if verbose else quiet.quiet())


@app.command()
def compute(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (runs/<run>/).")],
    out: Annotated[
        Path | None, typer.Option(help="Parquet path (one run only); default runs/<run>.parquet.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes.")] = 1,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Step-0 SVD cache (default $SPECTRA_CACHE or ~/.cache/spectra)."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address (tcp://HOST:PORT), instead of local workers."),
    ] = None,
    device: Annotated[str, typer.Option(help="Where the float64 SVDs run: cpu or cuda.")] = "cpu",
    ft_rank: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="r of ΔW's top-r subspace (amplification) for layers without an adapter "
            "rank (FT) [16].",
        ),
    ] = None,
    principal_frac: Annotated[
        float | None,
        typer.Option(
            help="p = ⌈FRAC · k⌉ top singular vectors of W₀ for principal_energy and "
            "principal_angle [0.1]."
        ),
    ] = None,
    sparsity_atol: Annotated[
        float | None,
        typer.Option(help="|ΔW_ij| at or below this counts as unchanged (update_sparsity) [1e-5]."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Compute as snapshots land, with a live summary.")
    ] = False,
) -> None:
    """Compute the drift metrics of run directories into runs/<run>.parquet (resumable)."""
    from contextlib import nullcontext

    for run in runs:  # a manifest's kind, size and depth, before torch and pandas load
        precheck_json(run / MANIFEST)
    from spectra.engine import Settings, compute_run, dask_executor

    if out is not None and len(runs) > 1:
        raise SpectraError("--out needs exactly one run directory")
    if follow:
        from spectra.follow import follow as follow_run

        if len(runs) != 1:
            raise SpectraError("--follow needs exactly one run directory")
        typer.echo(f"wrote {shown(follow_run(runs[0]))}")
        return
    chosen = {"ft_rank": ft_rank, "principal_frac": principal_frac, "sparsity_atol": sparsity_atol}
    settings = Settings(device=device, **{k: v for k, v in chosen.items() if v is not None})
    with dask_executor(scheduler) if scheduler else nullcontext() as executor:
        for run in runs:
            options = {"cache_dir": cache_dir, "settings": settings, "executor": executor}
            try:
                path = compute_run(run, out, workers=workers, **options)
            except KeyboardInterrupt:
                raise Interrupted(
                    f"the rows of {run} computed so far are kept; the same command computes the "
                    "rest"
                ) from None
            typer.echo(f"wrote {shown(path)}")


@app.command()
def analyze(
    runs: Annotated[list[str], typer.Argument(help="Run Parquet files, globs or folders.")],
    fmt: Annotated[str, typer.Option("--format", help="table, markdown, csv or json.")] = "table",
    step: Annotated[str, typer.Option(help=STEP_HELP)] = "last",
    matched: Annotated[
        bool, typer.Option(help="Judge ΔD claims on sign-invariant matched ΔD.")
    ] = False,
    claims: Annotated[
        str | None,
        typer.Option(
            help="Whose claims: sorsa, dora, biderman, milora (comma-separated), all or none "
            "[the papers whose methods the runs include]."
        ),
    ] = None,
) -> None:
    """Summarize runs and check published claims on them (SORSA Section 4.2 and Theorem 5.5,
    DoRA Figure 2, Biderman et al.'s ΔW rank, PiSSA/SORSA vs MiLoRA), by default each run at
    its last step."""
    from spectra.report import render
    from spectra.store import load_runs, parse_step

    policy = parse_step(step)
    text = render(load_runs(runs), fmt, matched, _width(), claims=claims, step=policy)
    typer.echo(text, nl=False)


@app.command()
def plot(
    runs: Annotated[
        list[str] | None,
        typer.Argument(help="Run files, globs or folders (default: runs/*.parquet)."),
    ] = None,
    figure: Annotated[
        str,
        typer.Option(
            help=f"{', '.join(FIGURES)} (comma-separated), or all: every one that applies."
        ),
    ] = "2",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("figures"),
    fmt: Annotated[
        str, typer.Option("--format", help="html (always), png, svg; comma-separated.")
    ] = "html",
    matched: Annotated[
        bool, typer.Option(help="Plot sign-invariant matched ΔD instead of the paper's.")
    ] = False,
    layers: Annotated[
        str | None, typer.Option(help="Blocks to draw: numbers and ranges, e.g. 0-3,31 [all].")
    ] = None,
    modules: Annotated[str | None, typer.Option(help="Modules to draw, e.g. q_proj [all].")] = None,
    shared_axes: Annotated[
        bool, typer.Option(help="The same x and y ranges in every panel (figures 2 and dora).")
    ] = False,
    plotlyjs: Annotated[
        str,
        typer.Option(
            help="directory: one plotly.min.js beside the HTML files (offline); inline: in "
            "each file; cdn: from cdn.plot.ly."
        ),
    ] = "directory",
    step: Annotated[
        str, typer.Option(help=f"{STEP_HELP} For the figures that compare runs at one step.")
    ] = "last",
) -> None:
    """Draw Figure 2 (ΔD vs ΔΣ), Figure 3 (loss, gradient norm), κ(W_p), a ΔD heatmap, DoRA's
    magnitude and direction, the LoRA paper's subspace similarity, intruder dimensions, the
    rank of ΔW, drift per decile of the spectrum, the principal subspace or MoE experts."""
    from spectra.plotting import plot_runs
    from spectra.store import parse_step

    done = plot_runs(
        runs or ["runs/*.parquet"], figure, out, fmt, matched, layers=layers, modules=modules,
        shared=shared_axes, plotlyjs=plotlyjs, step=parse_step(step),
    )  # fmt: skip
    for path in done.written:
        typer.echo(f"wrote {shown(path)}")
    for why in done.skipped.values():
        typer.echo(f"skipped: {shown(why)}")


@app.command()
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
    if model is not None and Path(model).is_dir():
        from spectra.model_sizes import check_model_folder

        check_model_folder(Path(model))  # before torch and transformers load (~450 MiB)
    from spectra import recipes

    job = recipes.plan(
        methods=recipes.parse_list(method), model=model, data=data,
        targets=recipes.parse_list(targets), rank=rank, steps=steps, epochs=epochs,
        every=every, preset=preset, device=device, out=out, overwrite=overwrite,
        fused=recipes.parse_fused(fused),
    )  # fmt: skip
    recipes.run(job)


def _split(values: list[str] | None) -> list[str]:
    """Repeatable, comma-separated option values as one flat list."""
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


def _step_numbers(values: list[str] | None) -> list[int] | None:
    if not values:
        return None
    try:
        return [int(v) for v in _split(values)]
    except ValueError:
        raise SpectraError(f"--steps takes whole step numbers, got {', '.join(values)}") from None


COPY_HELP = (
    "Copy every step's tensors into the run, instead of referencing full weights in local "
    "safetensors files (the run then survives the sources moving or changing)."
)


@app.command("import")
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
            sources, base, out=out, name=name, targets=_split(targets), method=method,
            steps=_step_numbers(steps), overwrite=overwrite, progress=True, copy=copy,
        )  # fmt: skip
    except KeyboardInterrupt:
        raise Interrupted("nothing was written; the same command imports again") from None
    typer.echo(f"wrote {shown(run)}")


@app.command()
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
        base, finetuned, out=out, targets=_split(targets), overwrite=overwrite, copy=copy
    )
    typer.echo(render(load_runs(paths), width=_width(), claims="none"), nl=False)


def _width() -> int:
    """The columns tables may take: ``$COLUMNS``, the terminal's, or without a terminal as many
    as needed."""
    if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return 1000


def main() -> None:
    """Entry point: user errors (spectra's and the command line's own, like an unknown option)
    become one line on stderr and exit code 2."""
    if len(sys.argv) <= 1:
        app()  # no arguments: the help
    try:
        with _sigterm_as_ctrl_c(), checked_stdout():  # an unwritable output: an error line too
            code = app(standalone_mode=False)
    except SpectraError as exc:
        _fail(str(exc))
    except ClickException as exc:
        where = f" (see {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) else ""
        _fail(exc.format_message() + where, exc.exit_code)
    except Interrupted as exc:
        _fail(str(exc), _interrupt_code(exc), "interrupted")
    except KeyboardInterrupt as exc:
        _fail("stopped before it finished", _interrupt_code(exc), "interrupted")
    sys.exit(code if isinstance(code, int) else 0)


def _terminated(signum, frame) -> None:
    raise Terminated


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) while it lasts, so that every
    cleanup and message of a Ctrl-C follows a ``kill`` too."""
    before = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _interrupt_code(exc: BaseException) -> int:
    """128 + the signal that stopped the command: SIGTERM when a :class:`Terminated` is behind
    ``exc``, else SIGINT."""
    while exc is not None:
        if isinstance(exc, Terminated):
            return 128 + signal.SIGTERM
        exc = exc.__cause__ or exc.__context__
    return 128 + signal.SIGINT


def _fail(message: str, code: int = 2, what: str = "error") -> None:
    """Print ``error: message`` (or ``interrupted: message``) as one line, whatever the message
    holds, and exit."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    typer.secho(f"{what}: {shown(line)}", err=True, fg="red")
    sys.exit(code)
