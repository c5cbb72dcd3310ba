"""The spectrum of the update ΔW = W_t − W_0 and where it lies relative to W_0's principal part.

Definitions (σ_i descending, k = min(m, n), p = ⌈principal_frac · k⌉):

- ``dw_rank90``: the smallest j ≥ 1 with Σ_{i≤j} σ_i(ΔW)² ≥ 0.9 · Σ_i σ_i(ΔW)²; 0 when ΔW = 0.
- ``dw_eff_rank``: the entropy effective rank of σ(ΔW) (``eff_rank``'s definition, on ΔW).
- ``principal_energy``: ‖U₀,ₚᵀ ΔW V₀,ₚ‖_F² / ‖ΔW‖_F², U₀,ₚ and V₀,ₚ the top p singular
  vectors of W_0.
- ``principal_angle``: the largest principal angle between span(U₀,ₚ) and span(U_t,ₚ), degrees.
- ``update_sparsity``: the share of entries with |ΔW_ij| ≤ atol.

ΔW is given either as a dense matrix or as an :class:`~spectra.metrics.SVD` of its non-zero
part (a low-rank layer's update, through its factors): both give the same numbers.
"""

from __future__ import annotations

import math

import torch

from spectra.columns import PRINCIPAL_FRAC, SPARSITY_ATOL
from spectra.errors import SpectraError
from spectra.metrics import SVD, effective_rank

ENERGY = 0.9  # dw_rank90: the share of ‖ΔW‖_F² its top directions must explain


def check_spectrum_settings(principal_frac: float, sparsity_atol: float) -> None:
    """SpectraError unless 0 < principal_frac ≤ 1 and sparsity_atol is a finite number ≥ 0."""
    if not 0 < principal_frac <= 1:
        raise SpectraError(f"principal_frac must be in (0, 1], got {principal_frac}")
    if not (math.isfinite(sparsity_atol) and sparsity_atol >= 0):
        raise SpectraError(f"sparsity_atol must be a finite number ≥ 0, got {sparsity_atol}")


def principal_count(k: int, frac: float = PRINCIPAL_FRAC) -> int:
    """p = ⌈frac · k⌉, at least 1 and at most k; frac · k is rounded to 9 decimals first, so
    that 0.1 · 30 (3.0000000000000004 in binary) gives 3."""
    return min(k, max(1, math.ceil(round(frac * k, 9))))


def rank90(s: torch.Tensor) -> int:
    """The smallest j ≥ 1 whose top-j singular values hold 90% of Σ σ_i²; 0 when all are 0."""
    energy = s.square()
    total = float(energy.sum())
    if total == 0:
        return 0
    below = int((energy.cumsum(0) < ENERGY * total).sum())
    return min(below + 1, s.numel())


def update_spectrum(s: torch.Tensor) -> dict[str, float]:
    """dw_rank90 and dw_eff_rank from the singular values of ΔW (its zero ones may be left out)."""
    return {"dw_rank90": float(rank90(s)), "dw_eff_rank": effective_rank(s)}


def principal_energy(base: SVD, p: int, delta: torch.Tensor | SVD) -> float:
    """‖U₀,ₚᵀ ΔW V₀,ₚ‖_F² / ‖ΔW‖_F² ∈ [0, 1] (rounding clipped); NaN when ΔW = 0."""
    u, vh = base.u[:, :p], base.vh[:p]
    if isinstance(delta, SVD):
        core = (u.mT @ delta.u * delta.s) @ (delta.vh @ vh.mT)
        total = float(delta.s.square().sum())
    else:
        core = (u.mT @ delta) @ vh.mT
        total = float(delta.square().sum())
    if total == 0:
        return math.nan
    return min(float(core.square().sum()) / total, 1.0)


def principal_angle(base: SVD, cur: SVD, p: int) -> float:
    """The largest principal angle between span(U₀,ₚ) and span(U_t,ₚ), in degrees.

    By definition arccos of the smallest singular value of C = U₀,ₚᵀ U_t,ₚ (clipped to [0, 1]).
    arccos loses half the digits near 0 (an error δ in the cosine moves a small angle by
    ≈ √(2δ)), so below 45° the angle is taken from its sine, the largest singular value of
    U_t,ₚ − U₀,ₚ C = (I − U₀,ₚU₀,ₚᵀ) U_t,ₚ, as Björck & Golub do: the same angle, to full
    precision.
    """
    u0, ut = base.u[:, :p], cur.u[:, :p]
    cos = u0.mT @ ut
    sine = float(torch.linalg.svdvals(ut - u0 @ cos)[0])
    if sine < 2**-0.5:
        return math.degrees(math.asin(sine))
    smallest = float(torch.linalg.svdvals(cos)[-1])
    return math.degrees(math.acos(min(max(smallest, 0.0), 1.0)))


def update_sparsity(delta: torch.Tensor, atol: float = SPARSITY_ATOL) -> float:
    """The share of the entries of ΔW with |ΔW_ij| ≤ atol."""
    return float((delta.abs() <= atol).sum()) / delta.numel()
