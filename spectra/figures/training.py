"""Figure 3 of the SORSA paper: training loss and gradient norm against step, runs overlaid."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from spectra.figures.panels import NotApplicable, color, grid, run_title, style_axis
from spectra.snapshots import read_train_log
from spectra.store import ordered_runs


def train_logs(frame: pd.DataFrame) -> pd.DataFrame:
    """The train logs (step, loss, grad_norm, …) of the runs, with a ``run`` column."""
    logs = []
    for run in ordered_runs(frame):
        run_dir = frame.attrs["runs"][run].get("run_dir")
        log = read_train_log(run_dir) if run_dir else None
        if log is not None:
            logs.append(log.assign(run=run))
    if not logs:
        raise NotApplicable(
            "figure 3 needs train logs (runs/<run>/train_log.parquet); none of the runs has one"
        )
    return pd.concat(logs, ignore_index=True)


def training_figure(frame: pd.DataFrame) -> go.Figure:
    """Figure 3: training loss and gradient norm against step, all runs overlaid."""
    logs = train_logs(frame)
    panels = (("loss", "training loss"), ("grad_norm", "gradient norm"))
    g = grid(
        "Figure 3 — training loss and gradient norm", [t for _, t in panels], cols=2,
        panel_w=480, panel_h=340,
    )  # fmt: skip
    for i, (run, log) in enumerate(logs.groupby("run", sort=False)):
        for col, (column, title) in enumerate(panels):
            values = log.reindex(columns=["step", column]).dropna()  # steps it was logged at
            g.fig.add_trace(
                go.Scatter(
                    x=values["step"], y=values[column], mode="lines", name=run_title(frame, run),
                    legendgroup=run, showlegend=col == 0, line={"color": color(i)},
                    hovertemplate=f"{run}<br>step %{{x}}<br>{title} %{{y:.4g}}<extra></extra>",
                ),
                **g.at(col),
            )  # fmt: skip
            style_axis(g.fig, "y", "value", title, **g.at(col))
    style_axis(g.fig, "x", "step", "step")
    return g.fig
