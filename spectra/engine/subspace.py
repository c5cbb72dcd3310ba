"""The LoRA paper's subspace similarity (Section 7.2, Figure 3) of the updates ΔW = W_t − W_0,
computed from the run directories for the subspace figure to draw.

For one block's modules (the middle block the runs share, every module they share there) at
one step of every run, the top right singular vectors (input directions) of each run's
ΔW are compared, as φ(i, j) = ‖U_iᵀ U_j‖²_F / min(i, j), with those of a reference run (the
first in method order) and with the top right singular vectors of the run's own W_0. ΔW of a
low-rank run is decomposed through its factors; W_0's SVD is read from the engine's cache when
it is there and computed otherwise, never written (drawing does not change the cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from spectra.engine.row_metrics import update_svd
from spectra.engine.settings import FT_RANK
from spectra.engine.svd_cache import cached_svd
from spectra.errors import NotApplicable
from spectra.metrics import numerical_rank, subspace_similarity
from spectra.run_files import MANIFEST, is_run_dir
from spectra.snapshots import open_run
from spectra.store import Runs, comparison_steps


class Top(NamedTuple):
    """The top right singular vectors (columns) of one run's ΔW and of its W_0."""

    delta: torch.Tensor
    base: torch.Tensor


@dataclass(frozen=True)
class Similarity:
    """φ of one run's module against the reference run ``against``, or (None) its own W₀."""

    run: str
    module: str
    against: str | None
    phi: np.ndarray


@dataclass(frozen=True)
class Subspaces:
    """Everything the subspace figure draws: where (block, step), against which reference
    run, with which r for FT, and φ of every run and module in panel order."""

    block: int
    step: int
    reference: str
    ft_rank: int
    similarities: list[Similarity]


def run_dirs(runs: Runs) -> dict[str, Path]:
    """Each run's directory; NotApplicable naming the runs whose directory is missing."""
    dirs, missing = {}, []
    for run in runs.names:
        where = runs.meta[run].get("run_dir")
        if not where or not is_run_dir(where):
            missing.append(f"{run} ({where or 'no run_dir in its Parquet metadata'})")
        else:
            dirs[run] = Path(where)
    if missing:
        raise NotApplicable(
            "figure subspace needs the run directories (snapshots) for singular vectors; "
            f"missing or without {MANIFEST}: {', '.join(missing)}"
        )
    return dirs


def middle_layers(runs: Runs) -> tuple[int, list[str]]:
    """(block, modules): the middle block the runs share and its modules common to all runs."""
    shared = None
    for run in runs.names:
        rows = runs.of(run)
        pairs = set(zip(rows["block"], rows["module"], strict=True))
        shared = pairs if shared is None else shared & pairs
    blocks = sorted({b for b, _ in shared if pd.notna(b)})
    if not blocks:
        raise NotApplicable("figure subspace: the runs share no layer of a numbered block")
    block = blocks[len(blocks) // 2]
    return int(block), sorted(m for b, m in shared if b == block)


def top_directions(run_dir: Path, layer: str, step: int, ft_rank: int) -> Top:
    """The top-r right singular vectors of ΔW at ``step`` (r capped at ΔW's numerical rank)
    and as many of W_0's."""
    run = open_run(run_dir)
    target = run.manifest.targets[layer]
    w0, principal0 = run.weight_and_principal(0, layer)
    w, principal = run.weight_and_principal(step, layer)
    delta = update_svd(target.kind, w0, principal0, w, principal)
    r = min(target.rank or ft_rank, numerical_rank(delta.s, max(w.shape)))
    return Top(delta.vh[:r].mT, cached_svd(w0).vh[:r].mT)


def subspaces(runs: Runs, policy: str | int = "last") -> Subspaces:
    """φ between the top directions of ΔW of each run and a reference run, and of W_0, at the
    one step the ``policy`` gives every run (NotApplicable when it gives them different
    steps: the runs' updates are compared at one step)."""
    names = runs.names
    dirs = run_dirs(runs)
    steps = comparison_steps(runs, policy)
    if len(set(steps.values())) > 1:
        at = ", ".join(f"{run} {step}" for run, step in steps.items())
        raise NotApplicable(
            f"figure subspace compares the runs at one step, but their last steps differ ({at}); "
            "use --step common or --step N"
        )
    step = next(iter(steps.values()))
    block, modules = middle_layers(runs)
    reference = names[0]
    ranks = {r: runs.meta[r].get("engine", {}).get("ft_rank", FT_RANK) for r in names}
    tops: dict[tuple[str, str], Top] = {}
    for run in names:
        rows = runs.of(run)
        for module in modules:
            layer = rows[(rows["block"] == block) & (rows["module"] == module)]["layer"].iloc[0]
            tops[run, module] = top_directions(dirs[run], layer, step, ranks[run])
    similarities = []
    for run in names:
        for module in modules:
            top = tops[run, module]
            if run != reference:
                ref = tops[reference, module].delta
                if ref.shape[0] != top.delta.shape[0]:
                    raise NotApplicable(
                        f"figure subspace: {run} and {reference} have {module} of different shapes"
                    )
                phi = subspace_similarity(top.delta, ref)
                similarities.append(Similarity(run, module, reference, phi))
            similarities.append(
                Similarity(run, module, None, subspace_similarity(top.delta, top.base))
            )
    return Subspaces(block, step, reference, ranks[reference], similarities)
