"""`spectra analyze` and `spectra plot`: tables, claim checks and figures of run files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spectra.cli.options import STEP_HELP, table_width
from spectra.figures import FIGURES
from spectra.terminal import shown


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
    text = render(load_runs(runs), fmt, matched, table_width(), claims=claims, step=policy)
    typer.echo(text, nl=False)


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
