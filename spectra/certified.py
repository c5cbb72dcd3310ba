"""The amplification factor of a dense update from a truncated SVD, certified a posteriori.

``amplification`` = ‖ΔW‖_F / ‖U_rᵀ W_0 V_r‖_F needs only the top-r singular subspaces of ΔW,
not its whole SVD. :func:`certified_amplification` gets them from randomized subspace
iteration (``torch.svd_lowrank``: block size and iteration count chosen from ΔW's singular
values, which the caller has anyway), proves from the residuals and the gap σ_r − σ_{r+1}
that the value is within ``tol`` (relative) of the one the exact top-r subspaces give, and
falls back to the full SVD of ΔW when it cannot.

**The bound.** Write A = ΔW (m×n), σ_1 ≥ σ_2 ≥ … its singular values, U_r, V_r exact top-r
singular vectors (any choice when σ_r = σ_{r+1}), and Ũ (m×r), Σ̂ = diag(σ̂_1…σ̂_r), Ṽ (n×r)
the computed top Ritz triplets, with residuals R = AṼ − ŨΣ̂ and S = AᵀŨ − ṼΣ̂.

1. *Orthonormality.* ŨᵀŨ = I + G with η_U = ‖G‖₂ < 1; the polar factor Ū = ŨH_U,
   H_U = (I + G)^(−1/2), is orthonormal and ‖H_U − I‖₂ ≤ h_U = (1 − η_U)^(−1/2) − 1 (the
   eigenvalues of G lie in [−η_U, η_U]); likewise V̄ = ṼH_V. Since AṼ = ŨΣ̂ + R,
   R̄ = AV̄ − ŪΣ̂ = RH_V + Ũ(Σ̂(H_V − I) − (H_U − I)Σ̂), and S̄ likewise, so the residuals of
   (Ū, Σ̂, V̄) are at most ρ = max(‖R‖₂, ‖S‖₂)(1 + h) + √(1 + η)·σ̂_1·(h_U + h_V)
   (h, η the larger of the two).
2. *Wedin's sin θ theorem* (Stewart & Sun, Matrix Perturbation Theory, Thm V.4.4), derived
   here for these residuals: complete U_r, V_r to orthogonal [U_r, U₂], [V_r, V₂], so that
   U₂ᵀA = Σ₂V₂ᵀ with ‖Σ₂‖₂ = σ_{r+1}. With X = U₂ᵀŪ and Y = V₂ᵀV̄,
   U₂ᵀR̄ = Σ₂Y − XΣ̂ and V₂ᵀS̄ = Σ₂ᵀX − YΣ̂, hence
   σ̂_r‖X‖₂ − σ_{r+1}‖Y‖₂ ≤ ρ and σ̂_r‖Y‖₂ − σ_{r+1}‖X‖₂ ≤ ρ. If ‖X‖ ≥ ‖Y‖ the first gives
   (σ̂_r − σ_{r+1})‖X‖ ≤ ρ, else the second the same for Y: with δ = σ̂_r − σ_{r+1} > 0,
   ε = ρ / δ bounds sin θ_max(Ū, U_r) = ‖P_Ū − P_{U_r}‖₂ = ‖X‖₂ and the same for V.
   σ_{r+1} is taken as the computed singular value plus LAPACK's error bound for it, u·σ_1
   (LAPACK Users' Guide §4.9); without δ > 0 nothing is certified.
3. *The denominator.* d(U, V) = ‖UᵀW_0V‖_F = ‖P_U W_0 P_V‖_F depends on the spans only. With
   C = ŨᵀW_0Ṽ (d̃ = ‖C‖_F), M = W_0Ṽ and N = ŨᵀW_0:
   |d(Ū, V̄) − d̃| = |‖H_U C H_V‖_F − ‖C‖_F| ≤ (h_U + h_V + h_U h_V)·d̃, and by the triangle
   inequality and ‖XY‖_F ≤ ‖X‖₂‖Y‖_F,
   |d(U_r, V_r) − d(Ū, V̄)| ≤ ε‖W_0V̄‖_F + ε‖U_rᵀW_0‖_F ≤ ε(1 + h_V)‖M‖_F
   + ε((1 + h_U)‖N‖_F + √(2r)·ε·‖W_0‖₂), as P_{U_r} − P_Ū has rank ≤ 2r and 2-norm ≤ ε.
   Their sum Δ bounds |d(U_r, V_r) − d̃|; ‖W_0‖₂ ≤ ‖W_0‖_F is used.
4. *The value.* The amplification is a = F/d with F = ‖A‖_F the same on both paths; the
   computed ã = F/d̃ has |ã − a| / a = |d − d̃| / d̃ ≤ Δ / d̃. That is the certificate.

The residuals are computed in float64; their rounding is accounted for as LAPACK's own error
bounds account for it, one unit roundoff u times ‖A‖₂ added to ρ (the full SVD's singular
vectors carry an error of order u‖A‖₂/gap themselves, so a value within the bound is as good
as the fallback's). Neither path's certificate covers the rounding of evaluating
‖U_rᵀW_0V_r‖_F itself, which both share.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from spectra.metrics import EPS, SVD, amplification_from_svd, numerical_rank, svd

TOL = 1e-10  # the relative error a truncated result must be proven to be within
ROUNDOFF = EPS / 2  # u, the unit roundoff of float64
CONVERGED = 1e-18  # aim: (σ_{b+1}/σ_r)^(2q+1) below this (a margin under u for the start)
MAX_ITERATIONS = 40  # more power iterations than this: the full SVD is cheaper
BLOCKS = (1.5, 2, 3, 4, 6, 8)  # block sizes tried, as multiples of r
SEED = 0  # the random start block (drawn without touching the caller's random state)


class Certified(NamedTuple):
    """An amplification value, the proven bound on its relative error and how it was found."""

    value: float
    bound: float  # |value − exact| / exact ≤ bound (0 for the full SVD, by definition)
    truncated: bool  # True: subspace iteration; False: the full SVD of ΔW


def plan(s: torch.Tensor, r: int) -> tuple[int, int] | None:
    """(block size b, power iterations q) of least work that brings the top-r subspace to
    convergence, from the singular values ``s`` of ΔW; None when the full SVD is cheaper."""
    k = s.numel()
    best, best_cost = None, math.inf
    for factor in BLOCKS:
        b = max(r + 4, math.ceil(factor * r))
        if 2 * b > k:
            break
        ratio = float(s[b]) / float(s[r - 1])
        q = 0 if ratio == 0 else math.ceil((math.log(CONVERGED) / math.log(ratio) - 1) / 2)
        cost = b * (2 * q + 4)  # products with ΔW: 2 per iteration, the start, the residuals
        if q <= MAX_ITERATIONS and cost < best_cost:
            best, best_cost = (b, q), cost
    return best


def ritz(delta: torch.Tensor, b: int, q: int, r: int) -> SVD:
    """The top-r Ritz triplets of subspace iteration with a random block of b, q iterations."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        u, s, v = torch.svd_lowrank(delta, q=b, niter=q)
    return SVD(u[:, :r], s[:r], v[:, :r].mT)


def bound(w0: torch.Tensor, delta: torch.Tensor, s: torch.Tensor, top: SVD) -> tuple[float, float]:
    """(amplification from the Ritz triplets ``top``, proven bound on its relative error; inf
    when nothing can be proven), as derived in the module docstring."""
    r = top.s.numel()
    u, sigma, v = top.u, top.s, top.vh.mT
    eye = torch.eye(r, dtype=torch.float64)
    eta_u = float(torch.linalg.matrix_norm(u.mT @ u - eye, 2))
    eta_v = float(torch.linalg.matrix_norm(v.mT @ v - eye, 2))
    m_, n_ = w0 @ v, u.mT @ w0
    denominator = float(torch.linalg.matrix_norm(u.mT @ m_))
    value = float(torch.linalg.vector_norm(s)) / denominator if denominator > 0 else math.inf
    gap = float(sigma[-1]) - float(s[r]) - ROUNDOFF * float(s[0])
    if max(eta_u, eta_v) >= 0.5 or gap <= 0 or denominator == 0:
        return value, math.inf
    h_u, h_v = (1 - eta_u) ** -0.5 - 1, (1 - eta_v) ** -0.5 - 1
    residual = max(
        float(torch.linalg.matrix_norm(delta @ v - u * sigma, 2)),
        float(torch.linalg.matrix_norm(delta.mT @ u - v * sigma, 2)),
    )
    rho = residual * (1 + max(h_u, h_v)) + (1 + max(eta_u, eta_v)) ** 0.5 * float(sigma[0]) * (
        h_u + h_v
    )
    eps = (rho + ROUNDOFF * float(s[0])) / gap
    fro_m, fro_n = float(torch.linalg.matrix_norm(m_)), float(torch.linalg.matrix_norm(n_))
    spread = eps * math.sqrt(2 * r) * float(torch.linalg.matrix_norm(w0))
    drift = (h_u + h_v + h_u * h_v) * denominator
    drift += eps * ((1 + h_v) * fro_m + (1 + h_u) * fro_n + spread)
    return value, drift / denominator


def certified_amplification(
    w0: torch.Tensor, delta: torch.Tensor, s: torch.Tensor, rank: int, tol: float = TOL
) -> Certified:
    """The amplification of a dense ΔW with singular values ``s`` (descending), r = ``rank``
    capped at ΔW's numerical rank as :func:`~spectra.metrics.amplification_from_svd` caps it:
    from subspace iteration when its bound proves it within ``tol`` (relative) of the exact
    top-r value, else from the full SVD. NaN when ΔW = 0."""
    r = min(rank, numerical_rank(s, max(delta.shape)))
    if r == 0:
        return Certified(math.nan, 0.0, False)
    steps = plan(s, r)
    if steps is not None:
        value, proven = bound(w0, delta, s, ritz(delta, *steps, r))
        if proven <= tol:
            return Certified(value, proven, True)
    return Certified(amplification_from_svd(w0, svd(delta), rank), 0.0, False)
