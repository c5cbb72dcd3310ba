"""The `spectra` command line: compute, track, analyze, plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from spectra.errors import SpectraError

app = typer.Typer(
    help="Spectral drift analysis of fine-tuning: ΔΣ, ΔD, κ and orthonormality per layer per step.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def compute(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (runs/<run>/).")],
    out: Annotated[
        Path | None, typer.Option(help="Parquet path (one run only); default runs/<run>.parquet.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes.")] = 1,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Step-0 SVD cache (default $SPECTRA_CACHE or ~/.cache/spectra)."),
    ] = None,
) -> None:
    """Compute the drift metrics of run directories into runs/<run>.parquet (resumable)."""
    from spectra.engine import compute_run

    if out is not None and len(runs) > 1:
        raise SpectraError("--out needs exactly one run directory")
    for run in runs:
        path = compute_run(run, out, workers=workers, cache_dir=cache_dir)
        typer.echo(f"wrote {path}")


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit code 2."""
    try:
        app()
    except SpectraError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
