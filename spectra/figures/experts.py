"""MoE experts: ΔD and ΔΣ of every expert of every block, each run at its comparison step (its
last by default, ``--step``); one row of two heatmaps per run and expert parameter
(``gate_up_proj``, ``down_proj``)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from spectra.errors import NotApplicable
from spectra.figures import View
from spectra.figures.panels import grid, style_axis
from spectra.store import Runs, comparison_steps, delta_d_column, delta_d_name, steps_text

EXPERT = r"\[(\d+)\]$"  # the expert index at the end of a layer name


def expert_rows(runs: Runs) -> Runs:
    """The runs' MoE expert rows, with their ``expert`` index; NotApplicable without any."""
    index = runs.rows["layer"].str.extract(EXPERT, expand=False)
    rows = runs.rows[index.notna()].assign(expert=index.dropna().astype(int))
    if rows.empty:
        raise NotApplicable("figure experts needs MoE expert layers (…experts.down_proj[e])")
    return Runs(rows, {run: runs.meta[run] for run in rows["run"].unique()})


def experts_figure(runs: Runs, matched: bool = False, policy: str | int = "last") -> go.Figure:
    """log10 ΔD and log10 ΔΣ per block (down) and expert (across), per run and parameter, each
    run at the step the ``policy`` gives it."""
    experts = expert_rows(runs)
    rows, steps = experts.rows, comparison_steps(experts, policy)
    column = delta_d_column(matched)
    panels = [(run, module) for run in experts.names
              for module in sorted(experts.of(run)["module"].unique())]  # fmt: skip
    titles = [f"{experts.title(run)} — {module}: {what}" for run, module in panels
              for what in ("ΔD", "ΔΣ")]  # fmt: skip
    blocks = int(rows["block"].nunique())
    g = grid(
        f"MoE experts at {steps_text(experts, steps, policy)}: ΔD ({delta_d_name(matched)}, "
        "left) and ΔΣ (right) of every expert (across) in every block (down), log10 colour "
        "scales; blank: an expert that did not move at all.",
        titles, cols=2, panel_w=420, panel_h=max(220, 14 * blocks), hgap=170, legend=False,
    )  # fmt: skip
    at = rows[rows["step"] == rows["run"].map(steps)]
    for i, (run, module) in enumerate(panels):
        part = at[(at["run"] == run) & (at["module"] == module)]
        for j, (value, axis) in enumerate(((column, "coloraxis"), ("delta_sigma", "coloraxis2"))):
            cells = part.pivot_table(index="block", columns="expert", values=value)
            g.fig.add_trace(
                go.Heatmap(
                    z=np.log10(cells.where(cells > 0).to_numpy()), x=cells.columns,
                    y=cells.index, customdata=cells.to_numpy(), coloraxis=axis, name=run,
                    hovertemplate=f"{run} {module}<br>block %{{y}}<br>expert %{{x}}<br>{value} "
                    "%{customdata:.4g}<extra></extra>",
                ),
                **g.at(2 * i + j),
            )  # fmt: skip
    style_axis(g.fig, "x", "index", "expert")
    style_axis(g.fig, "y", "index", "block")
    g.fig.update_yaxes(autorange="reversed")
    left_end = g.fig.layout.xaxis.domain[1]
    g.fig.update_layout(
        coloraxis={"colorscale": "Viridis", "colorbar": {
            "title": {"text": "log10 ΔD"}, "x": left_end + 0.01, "xanchor": "left", "len": 0.9}},
        coloraxis2={"colorscale": "Magma", "colorbar": {"title": {"text": "log10 ΔΣ"},
                    "len": 0.9}},
    )  # fmt: skip
    return g.fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return experts_figure(runs, view.matched, view.step)
