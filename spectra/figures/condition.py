"""κ(W_p) (Theorem 5.5 of the SORSA paper) and the orthonormality error over training."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from spectra.figures.panels import NotApplicable, color, grid, layer_paths, run_title, style_axis
from spectra.store import ordered_runs


def mean_and_layers(
    fig: go.Figure, data: pd.DataFrame, column: str, name: str, tint: str, where: dict,
    legend: bool,
) -> None:  # fmt: skip
    """Faint per-layer lines and a thick mean line of ``column`` against step."""
    xs, ys = layer_paths(data, "step", column, origin=False)
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, mode="lines", legendgroup=name, showlegend=False, hoverinfo="skip",
            line={"color": tint, "width": 1}, opacity=0.25,
        ),
        **where,
    )  # fmt: skip
    mean = data.groupby("step")[column].mean()
    fig.add_trace(
        go.Scatter(
            x=mean.index, y=mean.to_numpy(), mode="lines+markers", name=name, legendgroup=name,
            showlegend=legend, line={"color": tint, "width": 3},
            hovertemplate=f"{name}<br>step %{{x}}<br>mean {column} %{{y:.4g}}<extra></extra>",
        ),
        **where,
    )  # fmt: skip


def condition_figure(frame: pd.DataFrame) -> go.Figure:
    """κ(W_p) and the orthonormality error over steps for SORSA with and without regularizer."""
    runs = [r for r in ordered_runs(frame) if frame.attrs["runs"][r]["method"].startswith("sorsa")]
    if not runs:
        raise NotApplicable("figure cond needs SORSA runs (method sorsa or sorsa-noreg)")
    panels = (("cond_p", "κ(W_p) (Theorem 5.5)"), ("ortho_err", "orthonormality error (eq. 4)"))
    g = grid(
        "κ(W_p) and ‖UᵀU − I‖ + ‖VᵀV − I‖ over training (thick: mean of layers)",
        [t for _, t in panels], cols=2, panel_w=480, panel_h=340,
    )  # fmt: skip
    for i, run in enumerate(runs):
        for col, (column, title) in enumerate(panels):
            data, name = frame[frame["run"] == run], run_title(frame, run)
            mean_and_layers(g.fig, data, column, name, color(i), g.at(col), col == 0)
            style_axis(g.fig, "y", "log", title, **g.at(col))
    style_axis(g.fig, "x", "step", "step")
    return g.fig
