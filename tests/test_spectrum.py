"""The ΔW spectrum columns and the certified truncated SVD, against independent numpy/scipy
float64 computations, and their invariants (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from spectra.certified import TOL, bound, certified_amplification, plan, ritz
from spectra.factors import Principal, update_factors
from spectra.metrics import amplification_from_svd, drift, factored_svd, svd
from spectra.spectrum import (
    principal_angle,
    principal_count,
    principal_energy,
    rank90,
    update_sparsity,
    update_spectrum,
)

TOL_DEG = 1e-6


def reference_spectrum(w0: np.ndarray, wt: np.ndarray, atol: float = 1e-5) -> dict:
    """Every new column written out from its definition with numpy, scipy's linear assignment
    and scipy's principal angles (p = ⌈k / 10⌉ in integers)."""
    delta = wt - w0
    u0, s0, vh0 = np.linalg.svd(w0, full_matrices=False)
    ut, st_, vht = np.linalg.svd(wt, full_matrices=False)
    sd = np.linalg.svd(delta, compute_uv=False)
    k = len(s0)
    p = (k + 9) // 10
    energy = sd**2
    total = energy.sum()
    cost = np.abs(ut.T @ u0) + np.abs(vht @ vh0.T)  # [i of W_t, j of W_0]
    rows, cols = linear_sum_assignment(-cost)
    pi = np.empty(k, int)
    pi[cols] = rows
    decile = np.arange(k) * 10 // k
    dvec = 1 - (np.abs((ut[:, pi] * u0).sum(0)) + np.abs((vht[pi] * vh0).sum(1))) / 2
    ratio = np.abs(st_ - s0) / np.where(s0 != 0, s0, 1)

    def by_decile(values, keep):
        return [values[(decile == d) & keep].mean() if ((decile == d) & keep).any() else np.nan
                for d in range(10)]  # fmt: skip

    if total == 0:
        rank, eff, energy_share = 0.0, math.nan, math.nan
    else:
        share = sd[sd > 0] / sd.sum()
        rank = float(np.argmax(np.cumsum(energy) >= 0.9 * total) + 1)
        eff = float(np.exp(-(share * np.log(share)).sum()))
        energy_share = float(((u0[:, :p].T @ delta @ vh0[:p].T) ** 2).sum() / total)
    angles = scipy.linalg.subspace_angles(u0[:, :p], ut[:, :p])
    return {
        "dw_rank90": rank,
        "dw_eff_rank": eff,
        "principal_energy": energy_share,
        "principal_angle": float(np.degrees(angles.max())),
        "update_sparsity": float((np.abs(delta) <= atol).mean()),
        "profile_dsigma": by_decile(ratio, s0 != 0),
        "profile_dvec": by_decile(dvec, np.ones(k, bool)),
    }


def assert_spectrum(got: dict, want: dict, tol: float = 1e-10) -> None:
    """Each column as the brief asks: ≤ 1e-10 (relative where the value is large), angles to
    1e-6°, lists entry by entry (NaN where a decile is empty)."""
    for key, value in want.items():
        if key == "principal_angle":
            assert abs(got[key] - value) <= TOL_DEG, (key, got[key], value)
        elif key.startswith("profile_"):
            np.testing.assert_allclose(got[key], value, rtol=tol, atol=tol, err_msg=key)
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=tol, abs=tol), key


def columns(w0: np.ndarray, wt: np.ndarray) -> dict:
    """The columns through spectra's functions on a dense pair (what the engine does for FT)."""
    w0t, wtt = torch.from_numpy(w0), torch.from_numpy(wt)
    base, cur = svd(w0t), svd(wtt)
    delta = wtt - w0t
    p = principal_count(base.s.numel())
    got = drift(w0, wt, profile=True) | update_spectrum(torch.linalg.svdvals(delta))
    return got | {
        "principal_energy": principal_energy(base, p, delta),
        "principal_angle": principal_angle(base, cur, p),
        "update_sparsity": update_sparsity(delta),
    }


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (23, 17), (40, 40), (7, 3)])
@pytest.mark.parametrize("noise", [1e-7, 1e-3, 0.3])
def test_dense_columns_match_numpy(shape, noise):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    w0 = rng.standard_normal(shape)
    wt = w0 + noise * rng.standard_normal(shape)
    wt[0] = w0[0]  # an untouched row: update_sparsity counts it
    assert_spectrum(columns(w0, wt), reference_spectrum(w0, wt))


def test_small_angles_keep_their_digits():
    """A rotation of 1e-7 rad: arccos of the cosine would be off by ~1e-6°; the sine is not."""
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((60, 40))
    wt = w0 + 1e-9 * rng.standard_normal((60, 40))
    got = principal_angle(svd(w0), svd(wt), 4)
    u0, ut = np.linalg.svd(w0)[0][:, :4], np.linalg.svd(wt)[0][:, :4]
    want = np.degrees(scipy.linalg.subspace_angles(u0, ut)[0])
    assert 0 < want < 1e-4 and abs(got - want) <= 1e-9


def test_a_zero_update():
    w = np.random.default_rng(5).standard_normal((12, 9))
    assert rank90(torch.zeros(9, dtype=torch.float64)) == 0
    zero = update_spectrum(torch.zeros(9, dtype=torch.float64))
    assert zero["dw_rank90"] == 0.0 and math.isnan(zero["dw_eff_rank"])
    base = svd(w)
    assert math.isnan(principal_energy(base, 2, torch.zeros(12, 9, dtype=torch.float64)))
    assert update_sparsity(torch.zeros(12, 9)) == 1.0


@pytest.mark.parametrize(
    ("k", "frac", "p"), [(30, 0.1, 3), (31, 0.1, 4), (5, 0.1, 1), (64, 1.0, 64), (100, 0.25, 25)]
)
def test_principal_count_is_the_ceiling(k, frac, p):
    assert principal_count(k, frac) == p


# --- invariants (hypothesis) ------------------------------------------------------------


@st.composite
def low_rank_updates(draw):
    """W_p(0) and W_p(t) of a low-rank method: LoRA (B_0 = 0) or PiSSA/SORSA-like (both moved)."""
    m, n, r = draw(st.integers(3, 14)), draw(st.integers(3, 14)), draw(st.integers(1, 4))
    r = min(r, m, n)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lora = draw(st.booleans())

    def t(*shape):
        return torch.from_numpy(rng.standard_normal(shape))

    p0 = Principal(torch.zeros(m, r, dtype=torch.float64) if lora else t(m, r), None, t(r, n))
    pt = Principal(t(m, r), None, t(r, n))
    return p0, pt, r


@settings(max_examples=120, deadline=None)
@given(low_rank_updates())
def test_rank90_at_most_the_rank_of_a_low_rank_update(case):
    p0, pt, r = case
    delta = (pt.left @ pt.right - p0.left @ p0.right).numpy()
    thin = factored_svd(*update_factors(p0, pt))
    got = update_spectrum(thin.s)
    rank = np.linalg.matrix_rank(delta)
    assert got["dw_rank90"] <= rank <= 2 * r
    assert got["dw_rank90"] == rank90(torch.linalg.svdvals(torch.from_numpy(delta)))


@st.composite
def dense_pairs(draw, tens: bool = False):
    k = 10 * draw(st.integers(1, 4)) if tens else draw(st.integers(1, 30))
    extra = draw(st.integers(0, 8))
    m, n = (k + extra, k) if draw(st.booleans()) else (k, k + extra)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    noise = draw(st.sampled_from([1e-6, 1e-2, 0.3, 3.0]))
    w0 = rng.standard_normal((m, n))
    return w0, w0 + noise * rng.standard_normal((m, n))


@settings(max_examples=120, deadline=None)
@given(dense_pairs(tens=True))
def test_profile_dvec_averages_to_matched_delta_d_when_ten_divides_k(pair):
    got = drift(*pair, profile=True)
    assert np.mean(got["profile_dvec"]) == pytest.approx(got["delta_d_matched"], abs=1e-12)


@settings(max_examples=120, deadline=None)
@given(dense_pairs(), st.floats(0.01, 1.0))
def test_principal_energy_is_a_share_and_angles_are_angles(pair, frac):
    w0, wt = (torch.from_numpy(w) for w in pair)
    base, cur = svd(w0), svd(wt)
    p = principal_count(base.s.numel(), frac)
    energy = principal_energy(base, p, wt - w0)
    assert 0.0 <= energy <= 1.0
    assert 0.0 <= principal_angle(base, cur, p) <= 90.0
    if p == base.s.numel() and w0.shape[0] == w0.shape[1]:  # U₀ spans everything
        assert energy == pytest.approx(1.0, abs=1e-12)


# --- the certified truncated SVD ----------------------------------------------------------


def designed(m: int, n: int, s: np.ndarray, seed: int) -> np.ndarray:
    """A matrix with singular values ``s`` and random singular vectors."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, len(s))))[0]
    v = np.linalg.qr(rng.standard_normal((n, len(s))))[0]
    return (u * s) @ v.T


def spectrum_with_gap(k: int, r: int, gap: float, decay: float) -> np.ndarray:
    """σ_i = decay^i, except σ_{r+1} = σ_r (1 − gap) and the rest scaled down with it."""
    s = decay ** np.arange(k, dtype=float)
    s[r:] *= s[r - 1] * (1 - gap) / s[r]
    return s


@settings(max_examples=60, deadline=None)
@given(
    st.integers(60, 110),
    st.integers(60, 110),
    st.integers(1, 6),
    st.sampled_from([0.5, 0.1, 1e-2, 1e-4, 1e-7, 1e-11, 1e-15, 0.0]),
    st.floats(0.80, 0.97),
    st.integers(0, 2**32 - 1),
)
def test_certified_amplification_equals_the_full_svd_or_falls_back(m, n, r, gap, decay, seed):
    k = min(m, n)
    delta = torch.from_numpy(designed(m, n, spectrum_with_gap(k, r, gap, decay), seed))
    w0 = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((m, n)))
    s = torch.linalg.svdvals(delta)
    got = certified_amplification(w0, delta, s, r)
    exact = amplification_from_svd(w0, svd(delta), r)
    if got.truncated:
        assert got.bound <= TOL
        assert abs(got.value - exact) <= max(TOL, got.bound) * exact
    else:
        assert got.value == exact  # the fallback is the full SVD's value
    if gap <= 1e-11:  # σ_r ≈ σ_{r+1}: the top-r subspace is not determined to 1e-10
        assert not got.truncated


def test_the_truncated_path_is_taken_and_its_bound_holds():
    """A clear gap: certified; the bound covers the real error with room to spare."""
    m, n, r = 300, 200, 5
    delta = torch.from_numpy(designed(m, n, spectrum_with_gap(n, r, 0.3, 0.97), 7))
    w0 = torch.from_numpy(np.random.default_rng(8).standard_normal((m, n)))
    s = torch.linalg.svdvals(delta)
    state = torch.random.get_rng_state()
    got = certified_amplification(w0, delta, s, r)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG untouched
    exact = amplification_from_svd(w0, svd(delta), r)
    assert got.truncated and got.bound <= TOL
    assert abs(got.value - exact) / exact <= 1e-13


def test_an_unconverged_subspace_is_not_certified():
    """Too few iterations for the gap: the residual is large and the bound says so."""
    m, n, r = 120, 100, 4
    delta = torch.from_numpy(designed(m, n, spectrum_with_gap(n, r, 0.05, 0.9), 9))
    w0 = torch.from_numpy(np.random.default_rng(10).standard_normal((m, n)))
    s = torch.linalg.svdvals(delta)
    b, q = plan(s, r)
    value, proven = bound(w0, delta, s, ritz(delta, b, 0, r))
    exact = amplification_from_svd(w0, svd(delta), r)
    assert proven > TOL
    assert abs(value - exact) / exact <= proven  # still a true bound
    value, proven = bound(w0, delta, s, ritz(delta, b, q, r))
    assert proven <= TOL and abs(value - exact) / exact <= proven
