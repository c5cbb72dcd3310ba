"""Figure 3 of the SORSA paper: training loss and gradient norm against step, runs overlaid."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from spectra.errors import NotApplicable
from spectra.figures import View
from spectra.figures.panels import grid, run_colors, style_axis
from spectra.store import Runs


def training_figure(runs: Runs, logs: dict[str, pd.DataFrame]) -> go.Figure:
    """Figure 3: training loss and gradient norm against step, all runs overlaid; ``logs``
    are the train logs of the runs that have one (:func:`spectra.train_log.train_logs`)."""
    if not logs:
        raise NotApplicable(
            "figure 3 needs train logs (runs/<run>/train_log.parquet); none of the runs has one"
        )
    panels = (("loss", "training loss"), ("grad_norm", "gradient norm"))
    g = grid(
        "Figure 3 — training loss and gradient norm", [t for _, t in panels], cols=2,
        panel_w=480, panel_h=340,
    )  # fmt: skip
    colors = run_colors(runs)
    for run in (r for r in runs.names if r in logs):
        log = logs[run]
        for col, (column, title) in enumerate(panels):
            values = log.reindex(columns=["step", column]).dropna()  # steps it was logged at
            g.fig.add_trace(
                go.Scatter(
                    x=values["step"], y=values[column], mode="lines", name=runs.title(run),
                    legendgroup=run, showlegend=col == 0, line={"color": colors[run]},
                    hovertemplate=f"{run}<br>step %{{x}}<br>{title} %{{y:.4g}}<extra></extra>",
                ),
                **g.at(col),
            )  # fmt: skip
            style_axis(g.fig, "y", "value", title, **g.at(col))
    style_axis(g.fig, "x", "step", "step")
    return g.fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return training_figure(runs, view.logs or {})
