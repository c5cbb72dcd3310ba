"""log10 ΔD per layer and step, one panel per run, on one colour scale."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from spectra.figures import View
from spectra.figures.panels import grid, layer_axis, layer_height, layer_labels, style_axis
from spectra.store import Runs, delta_d_column, delta_d_name

FLOOR = 1e-12  # smallest ΔD drawn on the log scale


def heatmap_figure(runs: Runs, matched: bool = False) -> go.Figure:
    """log10 ΔD per layer × step, one panel per run, on one shared colour scale."""
    column = delta_d_column(matched)
    layers = layer_labels(runs.rows)
    g = grid(
        f"ΔD ({delta_d_name(matched)}) per layer and step", [runs.title(r) for r in runs.names],
        panel_w=440, panel_h=layer_height(len(layers), 260), shared_yaxes=True, legend=False,
    )  # fmt: skip
    for i, run in enumerate(runs.names):
        data = runs.of(run)
        data = data[data["step"] > 0]
        cells = data.pivot_table(index="layer", columns="step", values=column)
        cells = cells.reindex(layers.index)
        g.fig.add_trace(
            go.Heatmap(
                z=np.log10(cells.clip(lower=FLOOR).to_numpy()), x=cells.columns,
                y=layers.to_numpy(), customdata=cells.to_numpy(), coloraxis="coloraxis", name=run,
                hovertemplate=f"{run}<br>layer %{{y}}<br>step %{{x}}<br>ΔD %{{customdata:.4g}}"
                "<extra></extra>",
            ),
            **g.at(i),
        )  # fmt: skip
    style_axis(g.fig, "x", "step", "step")
    layer_axis(g.fig, len(layers))
    g.fig.update_layout(
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": "log10 ΔD"}}}
    )
    return g.fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return heatmap_figure(runs, view.matched)
