"""`spectra compute`: the drift metrics of run directories into Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spectra.errors import Interrupted, SpectraError
from spectra.limits import precheck_json
from spectra.run_files import MANIFEST
from spectra.terminal import shown


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
