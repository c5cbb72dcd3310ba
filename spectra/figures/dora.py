"""DoRA's Figure 2: the direction change ΔD against the magnitude change ΔM per layer and step,
one panel per run, each with its least-squares slope."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from spectra.figures import View
from spectra.figures.panels import Legend, grid, layer_points, step_colors, style_axis
from spectra.fits import Fit, fit
from spectra.store import Runs


def fit_title(runs: Runs, run: str, line: Fit) -> str:
    """ "LoRA: slope 0.52, r = 0.81" (the fit of ΔD on ΔM over the panel's points)."""
    numbers = "no fit" if math.isnan(line.slope) else f"slope {line.slope:.3g}, r = {line.r:.2f}"
    return f"{runs.title(run)}: {numbers}"


def dora_figure(runs: Runs, shared: bool = False) -> go.Figure:
    """ΔD (delta_dir) against ΔM (delta_m), one panel per run, with each run's fitted line."""
    fits = {run: fit(runs.of(run)) for run in runs.names}
    g = grid(
        "DoRA's Figure 2 — direction change ΔD_dir (mean 1 − cos of output rows) against magnitude "
        "change ΔM (mean |Δ‖row‖|) per layer and step; dashed: least-squares line, r: Pearson "
        "correlation",
        [fit_title(runs, run, fits[run]) for run in runs.names],
        shared=shared,
    )
    fig, legend = g.fig, Legend()
    for i, run in enumerate(runs.names):
        where = g.at(i)
        data = runs.of(run)
        names, size = ("ΔM", "ΔD_dir"), (g.panel_w, g.panel_h)
        layer_points(fig, runs, data, "delta_m", "delta_dir", names, where, legend, size)
        line = fits[run]
        if math.isnan(line.slope):
            continue
        moved = data[data["step"] > 0]["delta_m"]
        xs = np.array([moved.min(), moved.max()])
        fig.add_trace(
            go.Scatter(
                x=xs, y=line.intercept + line.slope * xs, mode="lines", name="least-squares fit",
                legendgroup="fit", showlegend=legend.first("fit"),
                line={"color": "black", "dash": "dash"},
                hovertemplate=f"slope {line.slope:.4g}<br>r {line.r:.3f}<br>{line.n} points"
                "<extra></extra>",
            ),
            **where,
        )  # fmt: skip
    style_axis(fig, "x", "value", "ΔM (magnitude)")
    style_axis(fig, "y", "value", "ΔD_dir (direction)")
    fig.update_layout(coloraxis=step_colors(runs))
    return fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return dora_figure(runs, view.shared)
