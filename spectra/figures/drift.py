"""Figure 2 of the SORSA paper: ΔD against ΔΣ per layer and step, one panel per run."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from spectra.figures import View
from spectra.figures.panels import (
    TRAJECTORIES,
    Legend,
    from_origin,
    grid,
    hover,
    layer_paths,
    layer_points,
    step_colors,
    style_axis,
    with_shade,
)
from spectra.store import Runs, delta_d_column, delta_d_name


def drift_figure(runs: Runs, matched: bool = False, shared: bool = False) -> go.Figure:
    """Figure 2: ΔD against ΔΣ, one panel per run, per-layer points and the mean trajectory."""
    column = delta_d_column(matched)
    y_name = "ΔD matched" if matched else "ΔD"
    g = grid(
        f"Figure 2 — ΔD against ΔΣ per layer and step; ΔD is {delta_d_name(matched)}. "
        "Numbers: block of a layer's last point (where readable); hover for every point.",
        [runs.title(r) for r in runs.names],
        shared=shared,
    )
    fig, legend = g.fig, Legend()
    for i, run in enumerate(runs.names):
        where = g.at(i)
        data = runs.of(run)
        xs, ys = layer_paths(data, "delta_sigma", column, origin=True)
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines", name="layer trajectories", legendgroup="paths",
                showlegend=legend.first("paths"), line={"color": TRAJECTORIES, "width": 1},
                hoverinfo="skip",
            ),
            **where,
        )  # fmt: skip
        mean = from_origin(
            data.groupby("step", as_index=False)[["delta_sigma", column]].mean(),
            "delta_sigma",
            column,
        )
        layer_points(
            fig, runs, data, "delta_sigma", column, ("ΔΣ", y_name), where, legend,
            (g.panel_w, g.panel_h), mean[["delta_sigma", column]],
        )  # fmt: skip
        mean = with_shade(runs, mean.assign(run=run))
        custom = np.column_stack(
            [np.full(len(mean), run), np.full(len(mean), "mean of layers"), mean["when"]]
        )
        fig.add_trace(
            go.Scatter(
                x=mean["delta_sigma"], y=mean[column], mode="lines+markers",
                name="mean per step", legendgroup="mean", showlegend=legend.first("mean"),
                line={"color": "black", "width": 3},
                marker={"color": mean["shade"], "coloraxis": "coloraxis", "size": 9,
                        "line": {"color": "black", "width": 1.5}},
                customdata=custom, hovertemplate=hover("ΔΣ %{x:.4g}", f"{y_name} %{{y:.4g}}"),
            ),
            **where,
        )  # fmt: skip
    style_axis(fig, "x", "value", "ΔΣ")
    style_axis(fig, "y", "value", "ΔD (matched)" if matched else "ΔD (index-matched)")
    fig.update_layout(coloraxis=step_colors(runs))
    return fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return drift_figure(runs, view.matched, view.shared)
