"""``spectra plot``: load the runs, compute what the chosen figures need from the run
directories (train logs, the subspace φ matrices), draw the figures and write them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spectra.errors import NotApplicable, SpectraError
from spectra.figures import FIGURES, View
from spectra.figures.export import IMAGE_FORMATS, export_figures, include_plotlyjs
from spectra.figures.panels import select_layers
from spectra.store import Runs, load_runs
from spectra.train_log import train_logs


@dataclass
class Plotted:
    """What ``plot_runs`` did: the files written and, for ``all``, the figures it skipped."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # figure → why


def parse_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    """The items of a comma-separated option; SpectraError on an unknown one."""
    allowed = list(allowed)
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise SpectraError(f"unknown {what} {text!r} (expected one of {', '.join(allowed)})")
    return list(dict.fromkeys(items))


def inputs(runs: Runs, needs: str, step: str | int = "last") -> dict:
    """The View fields that a figure needing ``needs`` draws, read from the run directories
    (the subspaces at the step the ``step`` policy gives)."""
    if needs == "logs":
        return {"logs": train_logs({run: runs.meta[run].get("run_dir") for run in runs.names})}
    from spectra.engine.subspace import subspaces  # torch: only for the figure that needs it

    return {"subspaces": subspaces(runs, step)}


def draw(
    runs: Runs, name: str, matched: bool = False, shared: bool = False, step: str | int = "last"
):
    """(file stem, figure) of figure ``name``, with what it needs read from the run
    directories; NotApplicable when it does not apply to the runs."""
    figure = FIGURES[name]
    extra = inputs(runs, figure.needs, step) if figure.needs else {}
    return figure.file_stem(matched), figure.draw(runs, View(matched, shared, **extra))


def plot_runs(
    patterns: Iterable[str | Path],
    figures: str = "2",
    out: Path = Path("figures"),
    formats: str = "html",
    matched: bool = False,
    *,
    layers: str | None = None,
    modules: str | None = None,
    shared: bool = False,
    plotlyjs: str = "directory",
    step: str | int = "last",
) -> Plotted:
    """Draw the comma-separated ``figures`` of runs and write them.

    ``all`` draws every figure that applies and skips, saying why, those that do not; a figure
    named explicitly that does not apply is an error. ``layers`` ("0-3,31") and ``modules``
    ("q_proj") select the layers drawn; ``step`` is the step policy of figures that compare
    runs at one step (subspace).
    """
    every = figures.strip().lower() == "all"
    names = list(FIGURES) if every else parse_list(figures, FIGURES, "figure")
    kinds = parse_list(formats, ("html", *IMAGE_FORMATS), "format")
    include_plotlyjs(plotlyjs)  # a bad option fails before anything is drawn
    runs = select_layers(load_runs(patterns), layers, modules)
    plotted, drawn = Plotted(), {}
    for name in names:
        try:
            stem, fig = draw(runs, name, matched, shared, step)
        except NotApplicable as exc:
            if not every:
                raise
            plotted.skipped[name] = str(exc)
            continue
        drawn[stem] = fig
    plotted.written = export_figures(drawn, Path(out), kinds, plotlyjs)
    return plotted
