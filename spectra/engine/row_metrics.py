"""One Parquet row: every metric of one (step, layer) matrix against its step-0 SVD.

:func:`matrix_task` is the engine's unit of work, a module-level function of paths, so it
runs the same in this process, in a local process pool or on any ``concurrent.futures``
executor. It adds the drift of W_t against the cached SVD of W_0, the update columns of
ΔW = W_t − W_0 (:func:`update_metrics`, :mod:`~spectra.engine.update_columns`) and the factor
columns of a layer with principal factors (:func:`principal_metrics`). :func:`update_svd` is
the thin SVD of ΔW, through the factors of a low-rank layer.
"""

from __future__ import annotations

import math

import torch

from spectra.engine.settings import DEFAULTS, Settings
from spectra.engine.svd_cache import Entry, load_base
from spectra.engine.update_columns import STEP0, update_columns
from spectra.factors import Principal, live, principal, update_factors
from spectra.metrics import (
    SVD,
    drift_from_svd,
    factor_metrics,
    factored_svd,
    svd,
)
from spectra.snapshots import Run, open_run
from spectra.store import layer_position


def update_svd(
    kind: str,
    w0: torch.Tensor,
    factors0: Principal | None,
    w: torch.Tensor,
    factors: Principal | None,
    device: str = "cpu",
) -> SVD:
    """Thin SVD of ΔW = W_t − W_0: through the factors for a ``lowrank`` layer (O((m + n) r²),
    see :func:`~spectra.factors.update_factors`), a full SVD otherwise (FT, DoRA)."""
    if kind == "lowrank":
        return factored_svd(*update_factors(factors0, factors))
    return svd(w - w0, device)


def update_metrics(
    run: Run,
    step: int,
    layer: str,
    w: torch.Tensor,
    factors: Principal | None,
    base: SVD,
    cur: SVD,
    settings: Settings = DEFAULTS,
    certified: bool = True,
) -> dict:
    """The update columns of ``layer`` at ``step`` (:mod:`~spectra.engine.update_columns`), W_t
    and W_0 with SVDs ``cur`` and ``base``: r is the target's adapter rank, else the settings'
    ``ft_rank``. At step 0 delta_m = delta_dir = 0 and the others are None; ``certified=False``
    takes the full SVD of a dense ΔW (the check and benchmark baseline of the truncated path)."""
    if step == 0:
        return dict(STEP0)
    target = run.manifest.targets[layer]
    w0, factors0 = run.weight_and_principal(0, layer)
    rank = target.rank or settings.ft_rank
    return update_columns(
        target.kind, base, cur, w0, w, factors0, factors, rank, settings, certified=certified
    )


def matrix_task(
    run_dir: str, step: int, layer: str, base: Entry, settings: Settings = DEFAULTS
) -> dict:
    """One Parquet row: every metric of ``layer`` at ``step``; metrics are NaN for NaN weights."""
    run = open_run(run_dir)  # fresh: a long-lived worker may see a run directory re-created
    w, factors = run.weight_and_principal(step, layer)
    block, module = layer_position(layer)
    row = {"run": run.name, "method": run.manifest.method, "step": step, "layer": layer,
           "block": block, "module": module, "rows": w.shape[0], "cols": w.shape[1]}  # fmt: skip
    if not torch.isfinite(w).all():
        return row | {"nonfinite": True}
    base = load_base(base, run_dir, layer, settings.device)
    cur = base if step == 0 else svd(w, settings.device)
    row |= drift_from_svd(
        base, w, cur, top_k=settings.top_k, intruder_eps=settings.intruder_eps, profile=True
    )
    row |= update_metrics(run, step, layer, w, factors, base, cur, settings)
    if factors is None:
        return row | {"cond_p": None, "ortho_err": None, "rank": None}
    return row | principal_metrics(run, step, layer, factors)


def principal_metrics(run: Run, step: int, layer: str, factors: Principal) -> dict:
    """``rank`` (W_p's live components), ``cond_p`` over them (NaN when W_p = 0) and
    ``ortho_err``: of a slice, its module's (SORSA's regularizer keeps the whole U_p and V_p
    orthonormal; the rows of U_p that a slice takes are not meant to be)."""
    alive = live(factors)
    rank = alive.right.shape[0]
    if rank == 0:
        return {"rank": 0, "cond_p": math.nan, "ortho_err": None}
    out = {"rank": rank, **factor_metrics(alive.left, alive.right, alive.values)}
    target = run.manifest.targets[layer]
    if factors.values is not None and target.rows:
        whole = live(principal(target.kind, run.parts(step, layer, sliced=False)))
        out["ortho_err"] = factor_metrics(whole.left, whole.right, whole.values)["ortho_err"]
    return out
