"""The rank ΔW needs (Biderman et al. 2024): dw_rank90 per layer over steps, one panel per run,
with the run's adapter rank r and each module's k = min(m, n) marked."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from spectra.errors import NotApplicable
from spectra.figures import View
from spectra.figures.panels import color, grid, hover, style_axis
from spectra.report.biderman import adapter_rank
from spectra.store import Runs


def module_ks(data: pd.DataFrame) -> dict[str, int]:
    """k = min(rows, cols) of each module (the largest, where a module's layers differ)."""
    k = data[["rows", "cols"]].min(axis=1)
    return k.groupby(data["module"]).max().astype(int).to_dict()


def level_line(span: list, level: float, text: str, tint: str, dash: str) -> go.Scatter:
    """A horizontal line at ``level`` across ``span`` (steps), labelled at its right end (a
    trace, not a shape: its label keeps its place on a log axis)."""
    return go.Scatter(
        x=span, y=[level, level], mode="lines+text", text=["", text], textposition="top left",
        textfont={"size": 10, "color": tint}, line={"color": tint, "dash": dash, "width": 1.5},
        showlegend=False, hovertemplate=f"{text}<extra></extra>",
    )  # fmt: skip


def rank_figure(runs: Runs) -> go.Figure:
    """dw_rank90 (the rank that holds 90% of ‖ΔW‖²_F) per layer over steps, log axis; dashed:
    the run's adapter rank r, dotted: k of each module."""
    frame = runs.rows
    data = frame[(frame["step"] > 0) & frame["dw_rank90"].notna()]
    if data.empty:
        raise NotApplicable("figure rank needs dw_rank90 (compute the runs with spectra ≥ 0.2)")
    drawn = [run for run in runs.names if run in set(data["run"])]
    g = grid(
        "The rank of the update: dw_rank90, the fewest singular directions of ΔW = W_t − W₀ that "
        "hold 90% of ‖ΔW‖²_F, per layer (thin) and its module mean (thick) over steps. Dashed: "
        "the run's adapter rank r; dotted: k = min(m, n) of the module, the most it can be.",
        [runs.title(r) for r in drawn], shared=True,
    )  # fmt: skip
    modules = sorted(data["module"].unique())
    tints = {module: color(i) for i, module in enumerate(modules)}
    legend: set[str] = set()  # modules with a legend entry: each once, whichever run has it
    for i, run in enumerate(drawn):
        rows, where = data[data["run"] == run], g.at(i)
        for module, part in rows.groupby("module", sort=True):
            for _, path in part.groupby("layer", sort=True):
                path = path.sort_values("step")
                g.fig.add_trace(
                    go.Scatter(
                        x=path["step"], y=path["dw_rank90"], mode="lines", showlegend=False,
                        legendgroup=module, line={"color": tints[module], "width": 1},
                        opacity=0.3, customdata=path[["run", "layer", "step"]].to_numpy(),
                        hovertemplate=hover("dw_rank90 %{y:.0f}"),
                    ),
                    **where,
                )  # fmt: skip
            mean = part.groupby("step")["dw_rank90"].mean()
            g.fig.add_trace(
                go.Scatter(
                    x=mean.index, y=mean.to_numpy(), mode="lines", name=f"{module} (mean)",
                    legendgroup=module, showlegend=module not in legend,
                    line={"color": tints[module], "width": 3},
                    hovertemplate=f"{run} {module}<br>step %{{x}}<br>mean dw_rank90 %{{y:.1f}}"
                    "<extra></extra>",
                ),
                **where,
            )  # fmt: skip
            legend.add(module)
        span = [rows["step"].min(), rows["step"].max()]
        by_k: dict[int, list[str]] = {}
        for module, k in module_ks(rows).items():
            by_k.setdefault(k, []).append(module)
        marks = [(f"k = {k} ({', '.join(names)})", k, tints[names[0]] if len(names) == 1
                  else "gray", "dot") for k, names in by_k.items()]  # fmt: skip
        r = adapter_rank(runs, run)
        if r is not None:
            marks.append((f"adapter rank r = {r}", r, "black", "dash"))
        for text, level, tint, dash in marks:
            g.fig.add_trace(level_line(span, level, text, tint, dash), **where)
    style_axis(g.fig, "x", "step", "step")
    style_axis(g.fig, "y", "log", "dw_rank90")
    top = int(data[["rows", "cols"]].min(axis=1).max())
    ticks = [2**e for e in range(top.bit_length() + 1)]
    g.fig.update_yaxes(tickvals=ticks, ticktext=[str(v) for v in ticks], tickfont_size=10)
    return g.fig


def draw(runs: Runs, view: View) -> go.Figure:
    """The figure as ``spectra plot`` draws it."""
    return rank_figure(runs)
