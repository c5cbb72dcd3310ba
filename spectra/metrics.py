"""Per-matrix spectral drift metrics in float64 (the exact definitions are in DESIGN.md).

W ∈ R^{m×n} in torch layout, k = min(m, n), W = U diag(σ) Vᵀ with σ descending.
``drift(w0, wt)`` gives every per-matrix metric of a pair (``match_triplets`` the assignment
behind the matched ΔD, ``profiles`` the drift per decile of the spectrum); ``factor_metrics``
gives the metrics of the trainable low-rank part W_p from its factors; ``magnitude_direction`` and
``amplification`` are DoRA's and the LoRA paper's measures of the update ΔW = W_t − W_0;
``subspace_similarity`` is the LoRA paper's φ.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from spectra.columns import INTRUDER_EPS, TOP_K
from spectra.errors import SpectraError

EPS = float(np.finfo(np.float64).eps)
DECILES = 10  # profile_dsigma, profile_dvec: the spectrum's indices in ten equal parts


class SVD(NamedTuple):
    """Thin SVD W = u diag(s) vh, float64, s descending."""

    u: torch.Tensor  # m×k
    s: torch.Tensor  # k
    vh: torch.Tensor  # k×n


def as_float64(w, name: str = "weight") -> torch.Tensor:
    """A 2-D float64 CPU tensor from a torch tensor or numpy array of any float dtype."""
    t = torch.from_numpy(np.asarray(w)) if not isinstance(w, torch.Tensor) else w.detach()
    if t.ndim != 2:
        raise SpectraError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    return t.to(device="cpu", dtype=torch.float64)


def check_finite(w: torch.Tensor, name: str = "weight") -> None:
    """Raise SpectraError if ``w`` holds NaN or Inf."""
    if not torch.isfinite(w).all():
        raise SpectraError(f"{name} contains NaN or Inf")


def svd(w, device: str = "cpu") -> SVD:
    """Thin float64 SVD after a finiteness check: LAPACK (gesdd) on the CPU, cuSOLVER on a GPU.

    The factors always come back as CPU tensors.
    """
    w = as_float64(w)
    check_finite(w)
    if device == "cpu":
        return SVD(*torch.linalg.svd(w, full_matrices=False))
    u, s, vh = torch.linalg.svd(w.to(device), full_matrices=False, driver="gesvd")
    return SVD(u.cpu(), s.cpu(), vh.cpu())


def _ratio(top: float, bottom: float, size: int) -> float:
    """top / bottom for a condition number; inf when bottom is numerically zero."""
    if top == 0.0 or bottom <= top * size * EPS:
        return math.inf
    return top / bottom


def cond(s: torch.Tensor, size: int) -> float:
    """σ_1 / σ_last, inf when σ_last is below the rank tolerance σ_1 · size · eps."""
    return _ratio(float(s[0]), float(s[-1]), size)


def effective_rank(s: torch.Tensor) -> float:
    """exp(−Σ p_i ln p_i), p_i = σ_i / Σ σ over σ_i > 0: the entropy effective rank; NaN for 0."""
    total = float(s.sum())
    if not total > 0:
        return math.nan
    p = s[s > 0] / total
    return math.exp(float(-(p * torch.log(p)).sum()))


def scale_metrics(s: torch.Tensor, w: torch.Tensor) -> dict[str, float]:
    """WeightWatcher's scale metrics plus the condition number of one matrix."""
    sigma_max = float(s[0])
    fro = float(torch.linalg.matrix_norm(w))
    stable_rank = fro**2 / sigma_max**2 if sigma_max > 0 else math.nan
    return {
        "cond_w": cond(s, max(w.shape)),
        "sigma_max": sigma_max,
        "sigma_min": float(s[-1]),
        "fro_norm": fro,
        "stable_rank": stable_rank,
        "eff_rank": effective_rank(s),
    }


def _overlaps(base: SVD, cur: SVD, index: torch.Tensor | None = None) -> torch.Tensor:
    """Joint cost |⟨u_t^i, u_0^j⟩| + |⟨v_t^i, v_0^j⟩| for every pair (i, j) of ``index``."""
    if index is not None:
        base = SVD(base.u[:, index], base.s[index], base.vh[index])
        cur = SVD(cur.u[:, index], cur.s[index], cur.vh[index])
    return (cur.u.mT @ base.u).abs_() + (cur.vh @ base.vh.mT).abs_()


def fixed_by_certificate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Which indices some optimal assignment provably maps to themselves (a boolean mask).

    ``a[i] = |⟨u_t^i, u_0^i⟩|`` and ``b[i] = |⟨v_t^i, v_0^i⟩|`` are the diagonal overlaps.
    Write C for the joint cost, α_i = √(1 − a_i²), β_i = √(1 − b_i²).

    Bessel's inequality bounds every off-diagonal entry in row i and in column i:
    Σ_j ⟨u_t^i, u_0^j⟩² ≤ 1 gives |⟨u_t^i, u_0^j⟩| ≤ α_i for j ≠ i, and Σ_l ⟨u_t^l, u_0^i⟩² ≤ 1
    gives |⟨u_t^l, u_0^i⟩| ≤ α_i for l ≠ i; likewise for v with β_i. So C_ij ≤ α_i + β_i and
    C_li ≤ α_i + β_i.

    *Every index* when all a_i, b_i > 1/√2: then α_i < 1/√2 < a_i and β_i < b_i, so each
    row's largest entry is its diagonal one; the identity takes every row's maximum, and no
    assignment can do better.

    *Index i alone* when C_ii = a_i + b_i ≥ 2(α_i + β_i): take an optimal assignment π with
    π(i) = j ≠ i and π(l) = i. Sending i → i and l → j changes the total by
    C_ii + C_lj − C_ij − C_li ≥ C_ii − 2(α_i + β_i) ≥ 0 (C_lj ≥ 0), so it stays optimal,
    gains the fixed point i and keeps every other fixed point. Repeating this for each such i
    gives one optimal assignment that fixes all of them at once; on the other indices it is an
    optimal assignment of their own square block of C.
    """
    half = 2**-0.5
    if bool((a > half).all()) and bool((b > half).all()):
        return torch.ones_like(a, dtype=torch.bool)
    alpha = (1 - a.clamp(max=1) ** 2).sqrt()
    beta = (1 - b.clamp(max=1) ** 2).sqrt()
    return a + b >= 2 * (alpha + beta)


class Matching(NamedTuple):
    """ΔD of W_t against W_0, index-matched and assignment-matched, and the assignment π."""

    delta_d: float
    delta_d_matched: float | None
    pi: torch.Tensor | None  # π(i): the triplet of W_t assigned to triplet i of W_0
    overlap: torch.Tensor | None  # |⟨u_t^{π(i)}, u_0^i⟩| + |⟨v_t^{π(i)}, v_0^i⟩| for each i


def match_triplets(base: SVD, cur: SVD, matched: bool = True, certificate: bool = True) -> Matching:
    """ΔD index-matched and sign-invariant assignment-matched, with the assignment behind it.

    ``matched=False`` skips the assignment (None for the rest). The assignment runs only on
    the indices that :func:`fixed_by_certificate` cannot settle (``certificate=False`` solves it
    on all k, as a check and a benchmark baseline); π is the identity on the settled indices.
    """
    k = base.s.numel()
    a = (cur.u * base.u).sum(0).abs()
    b = (cur.vh * base.vh).sum(1).abs()
    index_total = float(a.sum() + b.sum())
    clip = lambda x: min(max(x, 0.0), 1.0)  # noqa: E731  |cos| may exceed 1 by an ulp
    if not matched:
        return Matching(clip(1 - index_total / (2 * k)), None, None, None)
    fixed = fixed_by_certificate(a, b) if certificate else torch.zeros(k, dtype=torch.bool)
    pi, overlap, matched_total = torch.arange(k), a + b, index_total
    if not bool(fixed.all()):
        free = (~fixed).nonzero().flatten()
        cost = _overlaps(base, cur, None if free.numel() == k else free).numpy()
        rows, cols = linear_sum_assignment(cost, maximize=True)
        settled = float(a[fixed].sum() + b[fixed].sum())
        total = settled + float(cost[rows, cols].sum())
        # The identity is one of the candidates, so the optimum is never below the index sum;
        # keeping the identity then keeps that exact when the sums differ only by rounding.
        if total > index_total:
            pi, overlap, matched_total = pi.clone(), overlap.clone(), total
            pi[free[cols]] = free[rows]
            overlap[free[cols]] = torch.from_numpy(cost[rows, cols])
    return Matching(clip(1 - index_total / (2 * k)), clip(1 - matched_total / (2 * k)), pi, overlap)


def vector_drift(
    base: SVD, cur: SVD, matched: bool = True, certificate: bool = True
) -> tuple[float, float | None]:
    """(delta_d, delta_d_matched): index-matched and sign-invariant assignment-matched ΔD
    (see :func:`match_triplets`)."""
    return match_triplets(base, cur, matched, certificate)[:2]


def decile_means(values: torch.Tensor, keep: torch.Tensor | None = None) -> list[float]:
    """The mean of ``values`` over each decile d of the indices i = 0…k−1, ⌊10 i / k⌋ = d,
    counting only the indices where ``keep``; NaN for a decile with none."""
    k = values.numel()
    decile = torch.arange(k) * DECILES // max(k, 1)
    if keep is not None:
        values, decile = values[keep], decile[keep]
    sums = torch.zeros(DECILES, dtype=torch.float64).index_add_(0, decile, values.double())
    return (sums / torch.bincount(decile, minlength=DECILES)).tolist()


def profiles(base: SVD, cur: SVD, overlap: torch.Tensor | None) -> dict[str, list[float] | None]:
    """Per decile of W_0's spectrum: the mean relative change |σ_t^i − σ_0^i| / σ_0^i
    (``profile_dsigma``, indices with σ_0^i = 0 left out) and the mean matched vector drift
    1 − overlap_i / 2 (``profile_dvec``; None without the assignment's ``overlap``)."""
    nonzero = base.s != 0
    ratio = (cur.s - base.s).abs() / torch.where(nonzero, base.s, 1.0)
    return {
        "profile_dsigma": decile_means(ratio, nonzero),
        "profile_dvec": None if overlap is None else decile_means(1 - overlap / 2),
    }


def top_overlaps(base: SVD, cur: SVD, top_k: int = TOP_K) -> torch.Tensor:
    """max_j |⟨u_t^i, u_0^j⟩| for each of the top-k left singular vectors u_t^i of W_t."""
    top = cur.u[:, : min(top_k, cur.u.shape[1])]
    return (top.mT @ base.u).abs().amax(dim=1)


def drift_from_svd(
    base: SVD,
    wt: torch.Tensor,
    cur: SVD | None = None,
    *,
    top_k: int = TOP_K,
    intruder_eps: float = INTRUDER_EPS,
    matched: bool = True,
    profile: bool = False,
) -> dict:
    """All per-matrix metrics of W_t against a base whose SVD is already known; with
    ``profile`` also profile_dsigma and profile_dvec (None when ``cur`` is ``base``, step 0)."""
    if cur is None:
        cur = svd(wt)
    if cur is base:  # W_t is W_0 (step 0): no drift, exactly, and no profile of it
        delta_sigma = 0.0
        matching = Matching(0.0, 0.0 if matched else None, None, None)
        overlaps = torch.ones(min(top_k, cur.u.shape[1]), dtype=torch.float64)
        deciles = dict.fromkeys(("profile_dsigma", "profile_dvec"))
    else:
        delta_sigma = float((cur.s - base.s).abs().mean())
        matching = match_triplets(base, cur, matched)
        overlaps = top_overlaps(base, cur, top_k)
        deciles = profiles(base, cur, matching.overlap) if profile else {}
    return {
        "delta_sigma": delta_sigma,
        "delta_d": matching.delta_d,
        "delta_d_matched": matching.delta_d_matched,
        **scale_metrics(cur.s, wt),
        "intruders": int((overlaps < intruder_eps).sum()),
        "intruder_overlap": overlaps.tolist(),
        **(deciles if profile else {}),
    }


def drift(
    w0, wt, *, top_k: int = TOP_K, intruder_eps: float = INTRUDER_EPS, profile: bool = False
) -> dict:
    """Every per-matrix drift metric of W_t against W_0 (torch or numpy, any float dtype).

    Keys are the Parquet column names: delta_sigma, delta_d, delta_d_matched, cond_w,
    sigma_max, sigma_min, fro_norm, stable_rank, eff_rank, intruders, intruder_overlap, and
    with ``profile`` profile_dsigma and profile_dvec (None when the two are equal).
    """
    w0, wt = as_float64(w0, "w0"), as_float64(wt, "wt")
    if w0.shape != wt.shape:
        raise SpectraError(f"shape mismatch: w0 is {tuple(w0.shape)}, wt is {tuple(wt.shape)}")
    base = svd(w0)
    cur = base if torch.equal(w0, wt) else svd(wt)
    return drift_from_svd(base, wt, cur, top_k=top_k, intruder_eps=intruder_eps, profile=profile)


def factor_metrics(left, right, values=None, scale: float = 1.0) -> dict[str, float | None]:
    """cond_p and ortho_err of W_p = scale · left · diag(values) · right.

    ``left`` is m×r and ``right`` r×n (torch layout, like peft's B and A). ``values`` marks
    factors that are singular vectors (SORSA's U_p, S_p, V_pᵀ): only then is ``ortho_err``
    = ‖leftᵀleft − I‖_F + ‖right rightᵀ − I‖_F defined; otherwise it is None. cond_p is
    σ_1/σ_r over the r non-trivial singular values of W_p, from two thin QRs and an r×r SVD;
    NaN when W_p = 0 and inf when it is numerically rank-deficient.
    """
    left, right = as_float64(left, "left"), as_float64(right, "right")
    if left.shape[1] != right.shape[0]:
        raise SpectraError(f"factor shapes {tuple(left.shape)} and {tuple(right.shape)} differ")
    check_finite(left, "left factor")
    check_finite(right, "right factor")
    scaled = left * scale if values is None else left * (scale * as_float64(values[None], "values"))
    _, r_left = torch.linalg.qr(scaled)
    _, r_right = torch.linalg.qr(right.mT)
    s = torch.linalg.svdvals(r_left @ r_right.mT)
    cond_p = (
        math.nan
        if float(s[0]) == 0.0
        else _ratio(float(s[0]), float(s[-1]), max(left.shape[0], right.shape[1]))
    )
    ortho_err = None
    if values is not None:
        r = left.shape[1]
        eye = torch.eye(r, dtype=torch.float64)
        ortho_err = float(
            torch.linalg.matrix_norm(left.mT @ left - eye)
            + torch.linalg.matrix_norm(right @ right.mT - eye)
        )
    return {"cond_p": cond_p, "ortho_err": ortho_err}


def magnitude_direction(w0, wt) -> dict[str, float]:
    """DoRA's magnitude and direction change over the m output features (rows W[i, :]).

    delta_m = (1/m) Σ_i | ‖W_t[i,:]‖ − ‖W_0[i,:]‖ |  and
    delta_dir = (1/m) Σ_i (1 − cos(W_t[i,:], W_0[i,:])), per output feature as in DoRA's code
    and peft's ``lora_magnitude_vector``. 1 − cos is evaluated as ‖ŵ_t − ŵ_0‖²/2 with ŵ the unit
    rows (the same number, without the cancellation of 1 − cos at small angles). A zero row has
    no direction: its term is 0 when both rows are zero and 1 (cos taken as 0) when one is.
    """
    w0, wt = as_float64(w0, "w0"), as_float64(wt, "wt")
    if w0.shape != wt.shape:
        raise SpectraError(f"shape mismatch: w0 is {tuple(w0.shape)}, wt is {tuple(wt.shape)}")
    n0 = torch.linalg.vector_norm(w0, dim=1)
    nt = torch.linalg.vector_norm(wt, dim=1)
    unit0 = w0 / torch.where(n0 > 0, n0, 1.0)[:, None]
    unitt = wt / torch.where(nt > 0, nt, 1.0)[:, None]
    one_minus_cos = torch.where(
        (n0 > 0) & (nt > 0),
        torch.linalg.vector_norm(unitt - unit0, dim=1).square() / 2,
        ((n0 > 0) != (nt > 0)).to(torch.float64),
    )
    return {
        "delta_m": float((nt - n0).abs().mean()),
        "delta_dir": float(one_minus_cos.mean()),
    }


def numerical_rank(s: torch.Tensor, size: int) -> int:
    """How many singular values exceed the rank tolerance σ_1 · size · eps (0 for a zero matrix)."""
    top = float(s[0]) if s.numel() else 0.0
    return int((s > top * size * EPS).sum()) if top > 0 else 0


def factored_svd(left, right) -> SVD:
    """Thin SVD of ΔW = left · right (m×q times q×n) from two thin QRs and a q×q SVD.

    left = Q_L R_L and rightᵀ = Q_R R_R give ΔW = Q_L (R_L R_Rᵀ) Q_Rᵀ; the SVD X S Yᵀ of the
    q×q core gives U = Q_L X, V = Q_R Y: O((m + n) q²), never an m×n matrix.
    """
    left, right = as_float64(left, "left"), as_float64(right, "right")
    if left.shape[1] != right.shape[0]:
        raise SpectraError(f"factor shapes {tuple(left.shape)} and {tuple(right.shape)} differ")
    check_finite(left, "left factor")
    check_finite(right, "right factor")
    q_left, r_left = torch.linalg.qr(left)
    q_right, r_right = torch.linalg.qr(right.mT)
    x, s, yh = torch.linalg.svd(r_left @ r_right.mT)
    return SVD(q_left @ x, s, yh @ q_right.mT)


def amplification_from_svd(w0, delta: SVD, rank: int) -> float:
    """‖ΔW‖_F / ‖U_rᵀ W_0 V_r‖_F from the thin SVD of ΔW (every singular value, top vectors).

    r is ``rank`` capped at ΔW's numerical rank (:func:`numerical_rank`): beyond it the
    singular vectors of ΔW span nothing ΔW does, so the top-r subspace is not defined; the
    capped subspace is ΔW's whole range, which is. NaN when ΔW = 0 (0/0), inf when ΔW's top
    directions see none of W_0.
    """
    w0 = as_float64(w0, "w0")
    r = min(rank, numerical_rank(delta.s, max(w0.shape)))
    if r == 0:
        return math.nan
    core = float(torch.linalg.matrix_norm(delta.u[:, :r].mT @ w0 @ delta.vh[:r].mT))
    fro = float(torch.linalg.vector_norm(delta.s))
    return math.inf if core == 0.0 else fro / core


def amplification(w0, wt, rank: int) -> float:
    """The LoRA paper's amplification factor (Section 7.3) of the update ΔW = W_t − W_0.

    ‖ΔW‖_F / ‖U_rᵀ W_0 V_r‖_F with U_r, V_r the top-``rank`` singular vectors of ΔW, from a
    full SVD of ΔW (see :func:`amplification_from_svd` for a rank-deficient ΔW). For a ΔW
    known as factors, ``amplification_from_svd(w0, factored_svd(left, right), rank)``.
    """
    w0, wt = as_float64(w0, "w0"), as_float64(wt, "wt")
    if w0.shape != wt.shape:
        raise SpectraError(f"shape mismatch: w0 is {tuple(w0.shape)}, wt is {tuple(wt.shape)}")
    return amplification_from_svd(w0, svd(wt - w0), rank)


def subspace_similarity(u_a, u_b) -> np.ndarray:
    """The LoRA paper's φ(A, B, i, j) = ‖U_A,iᵀ U_B,j‖_F² / min(i, j) for every i, j.

    ``u_a`` (d×p) and ``u_b`` (d×q) hold orthonormal singular vectors as columns, most
    important first; entry [i − 1, j − 1] of the p×q result is φ over the first i and j of
    them. φ lies in [0, 1]: 1 when one span contains the other, 0 when they are orthogonal.
    """
    u_a, u_b = as_float64(u_a, "u_a"), as_float64(u_b, "u_b")
    if u_a.shape[0] != u_b.shape[0]:
        raise SpectraError(f"singular vectors of length {u_a.shape[0]} and {u_b.shape[0]} differ")
    totals = (u_a.mT @ u_b).square().cumsum(0).cumsum(1).numpy()
    i = np.arange(1, totals.shape[0] + 1)[:, None]
    j = np.arange(1, totals.shape[1] + 1)[None, :]
    return np.clip(totals / np.minimum(i, j), 0.0, 1.0)
