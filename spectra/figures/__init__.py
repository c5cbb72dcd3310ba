"""Plotly figures of runs (``spectra plot``), one module per figure family.

Every builder takes the frame of :func:`spectra.store.load_runs` and returns a
``plotly.graph_objects.Figure``: Figure 2 (:mod:`.drift`), Figure 3 (:mod:`.training`),
κ(W_p) (:mod:`.condition`), the ΔD heatmap (:mod:`.heatmap`), DoRA's magnitude and direction
(:mod:`.dora`), the LoRA paper's subspace similarity (:mod:`.subspace`) and intruder
dimensions (:mod:`.intruders`), the rank of ΔW (:mod:`.rank`), drift per decile of the
spectrum (:mod:`.profile`), the principal subspace (:mod:`.principal`) and MoE experts
(:mod:`.experts`). :mod:`.panels`
holds what they share, :mod:`.writer` writes them. A builder raises
:class:`~.panels.NotApplicable` when the runs lack what it draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from spectra.errors import SpectraError
from spectra.figures.condition import condition_figure
from spectra.figures.dora import dora_figure
from spectra.figures.drift import drift_figure
from spectra.figures.experts import experts_figure
from spectra.figures.heatmap import heatmap_figure
from spectra.figures.intruders import intruders_figure
from spectra.figures.panels import NotApplicable, select_layers
from spectra.figures.principal import principal_figure
from spectra.figures.profile import profile_figure
from spectra.figures.rank import rank_figure
from spectra.figures.subspace import subspace_figure
from spectra.figures.training import training_figure
from spectra.figures.writer import (
    IMAGE_FORMATS,
    PLOTLYJS,
    browser,
    include_plotlyjs,
    write_figures,
)
from spectra.store import load_runs

__all__ = [
    "FIGURES", "IMAGE_FORMATS", "PLOTLYJS", "NotApplicable", "Plotted", "browser", "build",
    "condition_figure", "dora_figure", "drift_figure", "experts_figure", "heatmap_figure",
    "intruders_figure",
    "parse_list", "plot_runs", "principal_figure", "profile_figure", "rank_figure",
    "subspace_figure", "training_figure", "write_figures",
]  # fmt: skip

FIGURES = ("2", "3", "cond", "heatmap", "dora", "subspace", "intruders", "rank", "profile",
           "principal", "experts")  # fmt: skip
STEMS = {"2": "figure2", "3": "figure3"}  # file stem of a figure, when not its name
MATCHED = ("2", "heatmap", "experts")  # figures that draw ΔD, index-matched or matched


def build(
    frame: pd.DataFrame, figure: str, matched: bool = False, shared: bool = False
) -> tuple[str, go.Figure]:
    """(file stem, figure) for one of FIGURES; ``shared``: the same axes in every panel."""
    builders: dict[str, Callable[[], go.Figure]] = {
        "2": lambda: drift_figure(frame, matched, shared),
        "3": lambda: training_figure(frame),
        "cond": lambda: condition_figure(frame),
        "heatmap": lambda: heatmap_figure(frame, matched),
        "dora": lambda: dora_figure(frame, shared),
        "subspace": lambda: subspace_figure(frame),
        "intruders": lambda: intruders_figure(frame),
        "rank": lambda: rank_figure(frame),
        "profile": lambda: profile_figure(frame),
        "principal": lambda: principal_figure(frame),
        "experts": lambda: experts_figure(frame, matched),
    }
    if figure not in builders:
        raise SpectraError(f"unknown figure {figure!r} (expected one of {', '.join(FIGURES)})")
    suffix = "-matched" if matched and figure in MATCHED else ""
    return STEMS.get(figure, figure) + suffix, builders[figure]()


def parse_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    """The items of a comma-separated option; SpectraError on an unknown one."""
    allowed = list(allowed)
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise SpectraError(f"unknown {what} {text!r} (expected one of {', '.join(allowed)})")
    return list(dict.fromkeys(items))


@dataclass
class Plotted:
    """What ``plot_runs`` did: the files written and, for ``all``, the figures it skipped."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # figure → why


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
) -> Plotted:
    """Build the comma-separated ``figures`` of runs and write them.

    ``all`` draws every figure that applies and skips, saying why, those that do not; a figure
    named explicitly that does not apply is an error. ``layers`` ("0-3,31") and ``modules``
    ("q_proj") select the layers drawn.
    """
    every = figures.strip().lower() == "all"
    names = list(FIGURES) if every else parse_list(figures, FIGURES, "figure")
    kinds = parse_list(formats, ("html", *IMAGE_FORMATS), "format")
    include_plotlyjs(plotlyjs)  # a bad option fails before anything is built
    frame = select_layers(load_runs(patterns), layers, modules)
    plotted, built = Plotted(), {}
    for name in names:
        try:
            stem, fig = build(frame, name, matched, shared)
        except NotApplicable as exc:
            if not every:
                raise
            plotted.skipped[name] = str(exc)
            continue
        built[stem] = fig
    plotted.written = write_figures(built, Path(out), kinds, plotlyjs)
    return plotted
