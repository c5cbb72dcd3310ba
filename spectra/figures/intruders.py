"""Intruder dimensions (Shuttleworth et al.): how closely each of the top-K left singular
vectors of W_t matches any pre-trained one, over steps, and the intruder count per layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from spectra.columns import INTRUDER_EPS, TOP_K
from spectra.figures import View
from spectra.figures.panels import (
    grid,
    hover,
    layer_axis,
    layer_height,
    layer_labels,
    style_axis,
    with_shade,
)
from spectra.store import Runs


def overlaps(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (step, layer, i): ``best`` = max_j |⟨u_t^i, u_0^j⟩| of singular vector i."""
    long = rows[["run", "layer", "step", "intruder_overlap"]].explode("intruder_overlap")
    long["i"] = long.groupby(["layer", "step"]).cumcount() + 1
    return long.rename(columns={"intruder_overlap": "best"}).astype({"best": float})


def intruders_figure(runs: Runs) -> go.Figure:
    """Per run: the best |cos| of each top-K vector over steps (mean of layers; intruders, below
    ε, as red points) and the intruder count per layer and step."""
    engine = next(iter(runs.meta.values())).get("engine", {})
    eps, top_k = engine.get("intruder_eps", INTRUDER_EPS), engine.get("top_k", TOP_K)
    layers = layer_labels(runs.rows)
    titles = []
    for run in runs.names:
        name = runs.title(run)
        titles += [f"{name}: best |cos| with a W₀ vector", f"{name}: intruders per layer"]
    g = grid(
        f"Intruder dimensions (Shuttleworth et al.): for each of the top {top_k} left singular "
        f"vectors u_i of W_t, max_j |⟨u_i, u₀ʲ⟩| over W₀'s; below ε = {eps:g} (dashed) it is an "
        "intruder. Lines: mean over layers per i, u_1 dark to u_K light; red: each intruder "
        "(hover for its layer).",
        titles, cols=2, panel_w=460, panel_h=layer_height(len(layers)), hgap=150,
    )  # fmt: skip
    shades = sample_colorscale("Viridis", list(np.linspace(0.0, 0.8, top_k)))
    most = max(1, int(np.nanmax(runs.rows["intruders"].to_numpy(float), initial=0)))
    for number, run in enumerate(runs.names):
        data = runs.of(run)
        best = with_shade(runs, overlaps(data))
        left, right = g.at(2 * number), g.at(2 * number + 1)
        for i, path in best.groupby("i"):
            mean = path.groupby("step")["best"].mean()
            label = [f"u_{i}" if i in (1, top_k) else ""] + [""] * (len(mean) - 1)
            tint = shades[(i - 1) % len(shades)]
            g.fig.add_trace(
                go.Scatter(
                    x=mean.index, y=mean.to_numpy(), mode="lines+text", name=f"u_{i}",
                    legendgroup=f"u_{i}", showlegend=number == 0, text=label,
                    textposition="top right", textfont={"size": 10, "color": tint},
                    line={"color": tint, "width": 2},
                    hovertemplate=f"u_{i}<br>step %{{x}}<br>mean best |cos| %{{y:.3f}}"
                    "<extra></extra>",
                ),
                **left,
            )  # fmt: skip
        below = best[best["best"] < eps]
        g.fig.add_trace(
            go.Scatter(
                x=below["step"], y=below["best"], mode="markers", name="intruder",
                legendgroup="intruder", showlegend=number == 0,
                marker={"color": "crimson", "size": 6, "opacity": 0.6},
                customdata=below[["run", "layer", "when", "i"]].to_numpy(),
                hovertemplate=hover("u_%{customdata[3]}", "best |cos| %{y:.3f}"),
            ),
            **left,
        )  # fmt: skip
        g.fig.add_hline(y=eps, line={"dash": "dash", "color": "black", "width": 1}, **left)
        counts = data.pivot_table(index="layer", columns="step", values="intruders")
        counts = counts.reindex(layers.index)
        g.fig.add_trace(
            go.Heatmap(
                z=counts.to_numpy(), x=counts.columns, y=layers.to_numpy(),
                coloraxis="coloraxis", name=run,
                hovertemplate=f"{run}<br>layer %{{y}}<br>step %{{x}}<br>intruders %{{z}}"
                "<extra></extra>",
            ),
            **right,
        )  # fmt: skip
        style_axis(g.fig, "y", "cos", "best |cos|", **left)
        layer_axis(g.fig, len(layers), **right)
    style_axis(g.fig, "x", "step", "step")
    g.fig.update_layout(
        coloraxis={"colorscale": "Reds", "cmin": 0, "cmax": most,
                   "colorbar": {"title": {"text": "intruders"}, "tickformat": "d",
                                "dtick": max(1, most // 10)}}
    )  # fmt: skip
    return g.fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return intruders_figure(runs)
