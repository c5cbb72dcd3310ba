"""Where in the spectrum the drift happens: per run, decile × step heatmaps of the matched
singular-vector drift (profile_dvec) and the relative singular-value change (profile_dsigma),
means over layers, decile 1 the principal (largest σ_0) tenth and 10 the minor tenth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from spectra.errors import NotApplicable
from spectra.figures import View
from spectra.figures.panels import grid, style_axis
from spectra.store import Runs

FLOOR = 1e-12  # smallest value drawn on the log colour scales
PANELS = (
    ("profile_dvec", "vectors: 1 − (|⟨u_t, u₀⟩| + |⟨v_t, v₀⟩|)/2, matched", "coloraxis"),
    ("profile_dsigma", "values: |σ_t − σ₀| / σ₀", "coloraxis2"),
)
DECILES = [f"{d} {'(principal)' if d == 1 else '(minor)' if d == 10 else ''}".strip()
           for d in range(1, 11)]  # fmt: skip


def decile_steps(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """The layer mean of each decile of ``column`` per step: deciles down, steps across."""
    present = rows[rows[column].notna()]
    values = np.stack(present[column].to_numpy()) if len(present) else np.empty((0, 10))
    wide = pd.DataFrame(values, index=present["step"].to_numpy()).groupby(level=0).mean()
    return wide.T.sort_index(axis=1)


def profile_figure(runs: Runs) -> go.Figure:
    """Two heatmaps per run (rows): log10 of profile_dvec and of profile_dsigma, decile × step."""
    frame = runs.rows
    has = frame["profile_dvec"].notna() | frame["profile_dsigma"].notna()
    drawn = [run for run in runs.names if run in set(frame.loc[has, "run"])]
    if not drawn:
        raise NotApplicable("figure profile needs profile_dvec and profile_dsigma (spectra ≥ 0.2)")
    titles = [f"{runs.title(run)} — {title}" for run in drawn for _, title, _ in PANELS]
    g = grid(
        "Drift per decile of W₀'s spectrum (decile 1: the largest singular values, 10: the "
        "smallest), mean over layers, per step: singular-vector drift (left, matched as ΔD "
        "matched is) and relative singular-value change (right), log10 colour scales.",
        titles, cols=2, panel_w=440, panel_h=260, hgap=170, legend=False,
    )  # fmt: skip
    for i, run in enumerate(drawn):
        rows = runs.of(run)
        for j, (column, _, axis) in enumerate(PANELS):
            cells = decile_steps(rows, column)
            g.fig.add_trace(
                go.Heatmap(
                    z=np.log10(cells.clip(lower=FLOOR).to_numpy()), x=cells.columns,
                    y=DECILES, customdata=cells.to_numpy(), coloraxis=axis, name=run,
                    hovertemplate=f"{run}<br>decile %{{y}}<br>step %{{x}}<br>{column} "
                    "%{customdata:.4g}<extra></extra>",
                ),
                **g.at(2 * i + j),
            )  # fmt: skip
    style_axis(g.fig, "x", "step", "step")
    g.fig.update_yaxes(autorange="reversed")
    g.fig.update_yaxes(title_text="decile of W₀'s σ", title_font_size=12, col=1)
    g.fig.update_yaxes(showticklabels=False, col=2)  # the same deciles as on the left
    left_end = g.fig.layout.xaxis.domain[1]
    g.fig.update_layout(
        coloraxis={"colorscale": "Viridis", "colorbar": {
            "title": {"text": "log10 vectors"}, "x": left_end + 0.01, "xanchor": "left",
            "len": 0.9}},
        coloraxis2={"colorscale": "Magma", "colorbar": {"title": {"text": "log10 values"},
                    "len": 0.9}},
    )  # fmt: skip
    return g.fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return profile_figure(runs)
