"""The principal subspace ("The Path Not Taken"): how much of ΔW lies in W_0's top-p singular
directions (principal_energy) and how far the top-p left singular subspace turns
(principal_angle), over steps, runs overlaid."""

from __future__ import annotations

import plotly.graph_objects as go

from spectra.columns import PRINCIPAL_FRAC
from spectra.errors import NotApplicable
from spectra.figures import View
from spectra.figures.condition import mean_and_layers
from spectra.figures.panels import color, grid, style_axis
from spectra.store import Runs

PANELS = (
    ("principal_energy", "share of ‖ΔW‖²_F in W₀'s principal subspace", "value"),
    ("principal_angle", "largest principal angle of the top-p subspace (degrees)", "value"),
)


def principal_figure(runs: Runs) -> go.Figure:
    """principal_energy and principal_angle over steps: faint per layer, thick the mean."""
    frame = runs.rows
    data = frame[(frame["step"] > 0) & frame["principal_energy"].notna()]
    if data.empty:
        raise NotApplicable("figure principal needs principal_energy (spectra ≥ 0.2)")
    drawn = [run for run in runs.names if run in set(data["run"])]
    fracs = {runs.meta[r].get("engine", {}).get("principal_frac", PRINCIPAL_FRAC)
             for r in drawn}  # fmt: skip
    frac = ", ".join(f"{f:g}" for f in sorted(fracs))
    g = grid(
        f"W₀'s principal subspace, its top p = ⌈{frac} · k⌉ singular vectors: the share "
        "‖U₀,ₚᵀ ΔW V₀,ₚ‖²_F / ‖ΔW‖²_F of the update inside it (left) and the largest principal "
        "angle between it and W_t's (right); thin: layers, thick: their mean.",
        [title for _, title, _ in PANELS], cols=2, panel_w=480, panel_h=360,
    )  # fmt: skip
    for i, run in enumerate(drawn):
        rows, name = data[data["run"] == run], runs.title(run)
        for col, (column, title, kind) in enumerate(PANELS):
            mean_and_layers(g.fig, rows, column, name, color(i), g.at(col), col == 0)
            style_axis(g.fig, "y", kind, title.split(" (")[0], **g.at(col))
    g.fig.update_yaxes(range=[0, 1.02], **g.at(0))
    style_axis(g.fig, "x", "step", "step")
    return g.fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return principal_figure(runs)
