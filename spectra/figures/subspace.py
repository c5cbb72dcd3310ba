"""The LoRA paper's subspace similarity (Section 7.2, Figure 3) of the updates ΔW = W_t − W_0.

For one block's modules (default: the middle block, every tracked module) at the last step
every run has, the top right singular vectors (input directions) of each run's ΔW are
compared, as φ(i, j) = ‖U_iᵀ U_j‖²_F / min(i, j), with those of a reference run (the first
in method order) and with the top right singular vectors of the run's own W_0. The vectors
come from the run directories (snapshots), whose paths the Parquet metadata records; ΔW of a
low-rank run is decomposed through its factors, W_0's SVD comes from the engine's cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from spectra.engine import FT_RANK, base_svd, update_svd
from spectra.figures.panels import NotApplicable, grid, style_axis
from spectra.metrics import numerical_rank, subspace_similarity
from spectra.run_files import MANIFEST
from spectra.snapshots import open_run
from spectra.store import comparison_step, label, ordered_runs


class Top(NamedTuple):
    """The top right singular vectors (columns) of one run's ΔW and of its W_0."""

    delta: torch.Tensor
    base: torch.Tensor


def run_dirs(frame: pd.DataFrame, runs: list[str]) -> dict[str, Path]:
    """Each run's directory; NotApplicable naming the runs whose directory is missing."""
    dirs, missing = {}, []
    for run in runs:
        where = frame.attrs["runs"][run].get("run_dir")
        if not where or not (Path(where) / MANIFEST).is_file():
            missing.append(f"{run} ({where or 'no run_dir in its Parquet metadata'})")
        else:
            dirs[run] = Path(where)
    if missing:
        raise NotApplicable(
            "figure subspace needs the run directories (snapshots) for singular vectors; "
            f"missing or without {MANIFEST}: {', '.join(missing)}"
        )
    return dirs


def middle_layers(frame: pd.DataFrame, runs: list[str]) -> tuple[int | None, list[str]]:
    """(block, modules): the middle block the runs share and its modules common to all runs."""
    shared = None
    for run in runs:
        rows = frame[frame["run"] == run]
        pairs = set(zip(rows["block"], rows["module"], strict=True))
        shared = pairs if shared is None else shared & pairs
    blocks = sorted({b for b, _ in shared if pd.notna(b)})
    if not blocks:
        raise NotApplicable("figure subspace: the runs share no layer of a numbered block")
    block = blocks[len(blocks) // 2]
    return block, sorted(m for b, m in shared if b == block)


def top_directions(run_dir: Path, layer: str, step: int, ft_rank: int) -> Top:
    """The top-r right singular vectors of ΔW at ``step`` (r capped at ΔW's numerical rank)
    and as many of W_0's."""
    run = open_run(run_dir)
    target = run.manifest.targets[layer]
    w0, principal0 = run.weight_and_principal(0, layer)
    w, principal = run.weight_and_principal(step, layer)
    delta = update_svd(target.kind, w0, principal0, w, principal)
    r = min(target.rank or ft_rank, numerical_rank(delta.s, max(w.shape)))
    return Top(delta.vh[:r].mT, base_svd(run_dir, layer).vh[:r].mT)


def short_name(frame: pd.DataFrame, run: str) -> str:
    """ "LoRA" for a run named after its method, else the run's name."""
    method = frame.attrs["runs"][run]["method"]
    return label(method) if run == method else run


def heat(phi: np.ndarray, name: str, other: str) -> go.Heatmap:
    """φ as a heatmap, i down the rows and j along the columns, both from 1."""
    i, j = np.arange(1, phi.shape[0] + 1), np.arange(1, phi.shape[1] + 1)
    return go.Heatmap(
        z=phi, x=j, y=i, coloraxis="coloraxis", name=name,
        hovertemplate=f"{name}: i %{{y}}<br>{other}: j %{{x}}<br>φ %{{z:.3f}}<extra></extra>",
    )  # fmt: skip


def subspace_figure(frame: pd.DataFrame) -> go.Figure:
    """φ between the top directions of ΔW of each run and a reference run, and of W_0."""
    runs = ordered_runs(frame)
    dirs = run_dirs(frame, runs)
    step = comparison_step(frame)
    block, modules = middle_layers(frame, runs)
    reference = runs[0]
    ranks = {r: frame.attrs["runs"][r].get("engine", {}).get("ft_rank", FT_RANK) for r in runs}
    tops: dict[tuple[str, str], Top] = {}
    for run in runs:
        rows = frame[(frame["run"] == run) & (frame["block"] == block)]
        for module in modules:
            layer = rows[rows["module"] == module]["layer"].iloc[0]
            tops[run, module] = top_directions(dirs[run], layer, step, ranks[run])
    cells = []  # (row, col, title, heatmap) of every panel drawn
    for row, run in enumerate(runs):
        for m, module in enumerate(modules):
            top = tops[run, module]
            name = short_name(frame, run)
            if run != reference:
                ref = tops[reference, module].delta
                if ref.shape[0] != top.delta.shape[0]:
                    raise NotApplicable(
                        f"figure subspace: {run} and {reference} have {module} of different shapes"
                    )
                phi = subspace_similarity(top.delta, ref)
                title = f"{name} vs {short_name(frame, reference)}: {module}"
                cells.append((row, 2 * m, title, heat(phi, run, reference)))
            phi = subspace_similarity(top.delta, top.base)
            cells.append((row, 2 * m + 1, f"{name} vs its W₀: {module}", heat(phi, run, "W₀")))
    cols = 2 * len(modules)
    specs = [[None] * cols for _ in runs]
    for row, col, _, _ in cells:
        specs[row][col] = {}
    cells.sort(key=lambda c: (c[0], c[1]))
    g = grid(
        f"Subspace similarity φ(i, j) = ‖V_iᵀV_jʹ‖²_F / min(i, j) of the top right singular "
        f"vectors (input directions) of ΔW = W_t − W₀, block {block}, step {step}: each run "
        f"against {reference} (columns 1, 3) and against the top directions of its own W₀ "
        f"(columns 2, 4). r = the adapter rank (FT: {ranks[reference]}), capped at ΔW's rank.",
        [title for _, _, title, _ in cells],
        rows=len(runs), cols=cols, panel_w=250, panel_h=230, legend=False, specs=specs,
    )  # fmt: skip
    for row, col, _, trace in cells:
        g.fig.add_trace(trace, row=row + 1, col=col + 1)
    for row, col, _, _ in cells:
        other = "W₀" if col % 2 else short_name(frame, reference)
        style_axis(g.fig, "x", "index", f"j: {other}", row=row + 1, col=col + 1)
    style_axis(g.fig, "y", "index", "i: this run")
    g.fig.update_yaxes(autorange="reversed")
    g.fig.update_layout(
        coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": 1,
                   "colorbar": {"title": {"text": "φ"}, "tickformat": ".1f"}}
    )  # fmt: skip
    return g.fig
