"""κ(W_p) (Theorem 5.5 of the SORSA paper) and the orthonormality error over training."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from spectra.errors import NotApplicable
from spectra.figures import View
from spectra.figures.panels import grid, layer_paths, run_colors, style_axis
from spectra.methods import METHODS
from spectra.store import Runs


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


def condition_figure(runs: Runs) -> go.Figure:
    """κ(W_p) and the orthonormality error over steps for SORSA with and without regularizer."""
    methods = {method.name for method in METHODS if method.capture == "sorsa"}
    sorsa = [run for run in runs.names if runs.method(run) in methods]
    if not sorsa:
        raise NotApplicable("figure cond needs SORSA runs (method sorsa or sorsa-noreg)")
    panels = (("cond_p", "κ(W_p) (Theorem 5.5)"), ("ortho_err", "orthonormality error (eq. 4)"))
    g = grid(
        "κ(W_p) and ‖UᵀU − I‖ + ‖VᵀV − I‖ over training (thick: mean of layers)",
        [t for _, t in panels], cols=2, panel_w=480, panel_h=340,
    )  # fmt: skip
    colors = run_colors(runs)
    for run in sorsa:
        for col, (column, title) in enumerate(panels):
            data, name = runs.of(run), runs.title(run)
            mean_and_layers(g.fig, data, column, name, colors[run], g.at(col), col == 0)
            style_axis(g.fig, "y", "log", title, **g.at(col))
    style_axis(g.fig, "x", "step", "step")
    return g.fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return condition_figure(runs)
