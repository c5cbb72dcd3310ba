"""Figure 2 of the SORSA paper: ΔD against ΔΣ per layer and step, one panel per run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from spectra.figures.panels import (
    SYMBOLS,
    block_text,
    from_origin,
    grid,
    hover,
    layer_paths,
    readable,
    run_title,
    style_axis,
)
from spectra.store import delta_d_column, delta_d_name, ordered_runs

TRAJECTORIES = "rgba(120,120,120,0.3)"


def step_colors(frame: pd.DataFrame) -> dict:
    """The shared step colour axis (Viridis, 0 to the last step)."""
    return {"colorscale": "Viridis", "colorbar": {"title": {"text": "step"}, "tickformat": "d"},
            "cmin": 0, "cmax": int(frame["step"].max())}  # fmt: skip


def layer_points(
    fig: go.Figure, data: pd.DataFrame, x: str, y: str, names: tuple[str, str], where: dict,
    first: bool, panel: tuple[int, int], avoid: pd.DataFrame | None = None,
) -> None:  # fmt: skip
    """Each layer at each step after 0 as a marker (one trace per module, coloured by step),
    the block number above the end points where it can be read (clear of the markers of
    ``avoid``, columns x and y), every value in the hover."""
    moved = data[data["step"] > 0]
    modules = sorted(data["module"].unique())
    template = hover(f"{names[0]} %{{x:.4g}}", f"{names[1]} %{{y:.4g}}")
    for number, module in enumerate(modules):
        points = moved[moved["module"] == module]
        fig.add_trace(
            go.Scatter(
                x=points[x], y=points[y], mode="markers", name=module, legendgroup=module,
                showlegend=first, hovertemplate=template,
                marker={"color": points["step"], "coloraxis": "coloraxis", "size": 6,
                        "symbol": SYMBOLS[number % len(SYMBOLS)], "line": {"width": 0}},
                customdata=points[["run", "layer", "step"]].to_numpy(),
            ),
            **where,
        )  # fmt: skip
    ends = moved.sort_values("step").groupby("layer").tail(1)
    text = block_text(ends).to_numpy()
    bounds = pd.concat([moved[[x, y]], pd.DataFrame({x: [0.0], y: [0.0]})])
    obstacles = None if avoid is None else avoid.set_axis([x, y], axis=1)
    keep = readable(ends[[x, y]], text, panel, bounds, obstacles)
    fig.add_trace(
        go.Scatter(
            x=ends[x][keep], y=ends[y][keep], text=text[keep], mode="text", name="block (end)",
            textposition="top center", textfont={"size": 10}, hoverinfo="skip",
            legendgroup="ends", showlegend=False,
        ),
        **where,
    )  # fmt: skip


def drift_figure(frame: pd.DataFrame, matched: bool = False, shared: bool = False) -> go.Figure:
    """Figure 2: ΔD against ΔΣ, one panel per run, per-layer points and the mean trajectory."""
    column = delta_d_column(matched)
    runs = ordered_runs(frame)
    y_name = "ΔD matched" if matched else "ΔD"
    g = grid(
        f"Figure 2 — ΔD against ΔΣ per layer and step; ΔD is {delta_d_name(matched)}. "
        "Numbers: block of a layer's last point (where readable); hover for every point.",
        [run_title(frame, r) for r in runs],
        shared=shared,
    )
    fig = g.fig
    for i, run in enumerate(runs):
        where, first = g.at(i), i == 0
        data = frame[frame["run"] == run]
        xs, ys = layer_paths(data, "delta_sigma", column, origin=True)
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines", name="layer trajectories", legendgroup="paths",
                showlegend=first, line={"color": TRAJECTORIES, "width": 1}, hoverinfo="skip",
            ),
            **where,
        )  # fmt: skip
        mean = from_origin(
            data.groupby("step", as_index=False)[["delta_sigma", column]].mean(),
            "delta_sigma",
            column,
        )
        layer_points(
            fig, data, "delta_sigma", column, ("ΔΣ", y_name), where, first,
            (g.panel_w, g.panel_h), mean[["delta_sigma", column]],
        )  # fmt: skip
        custom = np.column_stack(
            [np.full(len(mean), run), np.full(len(mean), "mean of layers"), mean["step"]]
        )
        fig.add_trace(
            go.Scatter(
                x=mean["delta_sigma"], y=mean[column], mode="lines+markers",
                name="mean per step", legendgroup="mean", showlegend=first,
                line={"color": "black", "width": 3},
                marker={"color": mean["step"], "coloraxis": "coloraxis", "size": 9,
                        "line": {"color": "black", "width": 1.5}},
                customdata=custom, hovertemplate=hover("ΔΣ %{x:.4g}", f"{y_name} %{{y:.4g}}"),
            ),
            **where,
        )  # fmt: skip
    style_axis(fig, "x", "value", "ΔΣ")
    style_axis(fig, "y", "value", "ΔD (matched)" if matched else "ΔD (index-matched)")
    fig.update_layout(coloraxis=step_colors(frame))
    return fig
