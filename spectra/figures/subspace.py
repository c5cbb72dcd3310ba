"""The LoRA paper's subspace similarity (Section 7.2, Figure 3) of the updates ΔW = W_t − W_0:
φ(i, j) between the top right singular vectors of each run's ΔW and a reference run's, and of
its own W_0, as :func:`spectra.engine.subspace.subspaces` computed them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from spectra.figures import View
from spectra.figures.panels import grid, style_axis
from spectra.store import Runs

if TYPE_CHECKING:  # computed on the engine side; drawing needs no torch
    from spectra.engine.subspace import Subspaces


def heat(phi: np.ndarray, name: str, other: str) -> go.Heatmap:
    """φ as a heatmap, i down the rows and j along the columns, both from 1."""
    i, j = np.arange(1, phi.shape[0] + 1), np.arange(1, phi.shape[1] + 1)
    return go.Heatmap(
        z=phi, x=j, y=i, coloraxis="coloraxis", name=name,
        hovertemplate=f"{name}: i %{{y}}<br>{other}: j %{{x}}<br>φ %{{z:.3f}}<extra></extra>",
    )  # fmt: skip


def subspace_figure(runs: Runs, data: Subspaces) -> go.Figure:
    """φ between the top directions of ΔW of each run and a reference run, and of W_0: each run
    a row, each module two columns (against the reference run, against its own W₀)."""
    names = [run for run in runs.names if any(s.run == run for s in data.similarities)]
    modules = list(dict.fromkeys(s.module for s in data.similarities))
    cells = []  # (row, col, title, heatmap) of every panel drawn
    for s in data.similarities:
        row, mine = names.index(s.run), runs.short(s.run)
        other = "its W₀" if s.against is None else runs.short(s.against)
        col = 2 * modules.index(s.module) + (s.against is None)
        trace = heat(s.phi, s.run, s.against or "W₀")
        cells.append((row, col, f"{mine} vs {other}: {s.module}", trace))
    cols = 2 * len(modules)
    specs = [[None] * cols for _ in names]
    for row, col, _, _ in cells:
        specs[row][col] = {}
    cells.sort(key=lambda c: (c[0], c[1]))
    g = grid(
        f"Subspace similarity φ(i, j) = ‖V_iᵀV_jʹ‖²_F / min(i, j) of the top right singular "
        f"vectors (input directions) of ΔW = W_t − W₀, block {data.block}, step {data.step}: "
        f"each run against {data.reference} (columns 1, 3) and against the top directions of "
        f"its own W₀ (columns 2, 4). r = the adapter rank (FT: {data.ft_rank}), capped at "
        "ΔW's rank.",
        [title for _, _, title, _ in cells],
        rows=len(names), cols=cols, panel_w=250, panel_h=230, legend=False, specs=specs,
    )  # fmt: skip
    for row, col, _, trace in cells:
        g.fig.add_trace(trace, row=row + 1, col=col + 1)
        other = "W₀" if col % 2 else runs.short(data.reference)
        style_axis(g.fig, "x", "index", f"j: {other}", row=row + 1, col=col + 1)
    style_axis(g.fig, "y", "index", "i: this run")
    g.fig.update_yaxes(autorange="reversed")
    g.fig.update_layout(
        coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": 1,
                   "colorbar": {"title": {"text": "φ"}, "tickformat": ".1f"}}
    )  # fmt: skip
    return g.fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return subspace_figure(runs, view.subspaces)
