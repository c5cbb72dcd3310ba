"""The principal subspace ("The Path Not Taken"): how much of ΔW lies in W_0's top-p singular
directions (principal_energy) and how far the top-p left singular subspace turns
(principal_angle), over steps, runs overlaid."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from spectra.figures.condition import mean_and_layers
from spectra.figures.panels import NotApplicable, color, grid, run_title, style_axis
from spectra.spectrum import PRINCIPAL_FRAC
from spectra.store import ordered_runs

PANELS = (
    ("principal_energy", "share of ‖ΔW‖²_F in W₀'s principal subspace", "value"),
    ("principal_angle", "largest principal angle of the top-p subspace (degrees)", "value"),
)


def principal_figure(frame: pd.DataFrame) -> go.Figure:
    """principal_energy and principal_angle over steps: faint per layer, thick the mean."""
    data = frame[(frame["step"] > 0) & frame["principal_energy"].notna()]
    if data.empty:
        raise NotApplicable("figure principal needs principal_energy (spectra ≥ 0.2)")
    runs = ordered_runs(data)
    fracs = {frame.attrs["runs"][r].get("engine", {}).get("principal_frac", PRINCIPAL_FRAC)
             for r in runs}  # fmt: skip
    frac = ", ".join(f"{f:g}" for f in sorted(fracs))
    g = grid(
        f"W₀'s principal subspace, its top p = ⌈{frac} · k⌉ singular vectors: the share "
        "‖U₀,ₚᵀ ΔW V₀,ₚ‖²_F / ‖ΔW‖²_F of the update inside it (left) and the largest principal "
        "angle between it and W_t's (right); thin: layers, thick: their mean.",
        [title for _, title, _ in PANELS], cols=2, panel_w=480, panel_h=360,
    )  # fmt: skip
    for i, run in enumerate(runs):
        rows, name = data[data["run"] == run], run_title(frame, run)
        for col, (column, title, kind) in enumerate(PANELS):
            mean_and_layers(g.fig, rows, column, name, color(i), g.at(col), col == 0)
            style_axis(g.fig, "y", kind, title.split(" (")[0], **g.at(col))
    g.fig.update_yaxes(range=[0, 1.02], **g.at(0))
    style_axis(g.fig, "x", "step", "step")
    return g.fig
