"""Metrics against an independent float64 computation (numpy's LAPACK), and their invariants."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from spectra.errors import SpectraError
from spectra.metrics import SVD, drift, factor_metrics, svd, vector_drift

TOL = 1e-10


def reference(w0: np.ndarray, wt: np.ndarray, top_k: int = 10, eps: float = 0.5) -> dict:
    """The DESIGN.md definitions, written out directly with numpy."""
    u0, s0, vh0 = np.linalg.svd(w0, full_matrices=False)
    ut, st_, vht = np.linalg.svd(wt, full_matrices=False)
    k = len(s0)
    cu = np.abs(ut.T @ u0)
    cv = np.abs(vht @ vh0.T)
    cost = cu + cv
    index = np.trace(cost)
    rows, cols = linear_sum_assignment(-cost)
    p = st_ / st_.sum()
    best = cu[: min(top_k, k)].max(axis=1)
    return {
        "delta_sigma": np.mean(np.abs(st_ - s0)),
        "delta_d": 1 - index / (2 * k),
        "delta_d_matched": 1 - cost[rows, cols].sum() / (2 * k),
        "cond_w": st_[0] / st_[-1],
        "sigma_max": st_[0],
        "sigma_min": st_[-1],
        "fro_norm": np.sqrt((wt**2).sum()),
        "stable_rank": (wt**2).sum() / st_[0] ** 2,
        "eff_rank": np.exp(-(p * np.log(p)).sum()),
        "intruders": int((best < eps).sum()),
    }


def assert_close(got: dict, want: dict, tol: float = TOL) -> None:
    assert set(want) <= set(got)
    for key, value in want.items():
        scale = (
            max(1.0, abs(value)) if key in ("cond_w", "fro_norm", "eff_rank", "stable_rank") else 1
        )
        assert abs(got[key] - value) <= tol * scale, (key, got[key], value)


@pytest.mark.parametrize("shape", [(40, 40), (64, 24), (24, 64), (1, 7), (9, 1)])
@pytest.mark.parametrize("noise", [1e-3, 0.1, 2.0])
def test_matches_independent_float64(shape, noise):
    rng = np.random.default_rng(hash((shape, noise)) % 2**32)
    w0 = rng.standard_normal(shape)
    wt = w0 + noise * rng.standard_normal(shape)
    assert_close(drift(w0, wt), reference(w0, wt))


def test_accepts_any_float_dtype_and_casts_first():
    rng = np.random.default_rng(0)
    w0 = torch.from_numpy(rng.standard_normal((30, 20))).to(torch.bfloat16)
    wt = (w0.double() + 0.05).to(torch.float16)
    want = reference(w0.double().numpy(), wt.double().numpy())
    assert_close(drift(w0, wt), want)
    assert_close(drift(w0.float().numpy(), wt.float().numpy()), want)


def test_identical_weights_have_exactly_zero_drift():
    w = np.random.default_rng(1).standard_normal((20, 30))
    got = drift(w, w.copy())
    assert got["delta_sigma"] == got["delta_d"] == got["delta_d_matched"] == 0.0
    assert got["intruders"] == 0


def test_zero_singular_values_give_infinite_condition_number():
    rank_one = np.outer(np.arange(1.0, 6.0), np.arange(1.0, 5.0))
    got = drift(rank_one + np.eye(5, 4), rank_one)
    assert got["cond_w"] == math.inf
    assert got["sigma_min"] < 1e-12
    zero = drift(np.eye(3), np.zeros((3, 3)))
    assert zero["cond_w"] == math.inf and zero["fro_norm"] == 0.0
    assert math.isnan(zero["eff_rank"]) and math.isnan(zero["stable_rank"])


@pytest.mark.parametrize(
    "w0, wt, message",
    [
        (np.ones((3, 4)), np.ones((4, 3)), "shape mismatch"),
        (np.ones(3), np.ones(3), "2-D"),
        (np.ones((3, 3)), np.full((3, 3), np.nan), "NaN or Inf"),
        (np.full((3, 3), np.inf), np.ones((3, 3)), "NaN or Inf"),
    ],
)
def test_bad_input_is_a_clear_error(w0, wt, message):
    with pytest.raises(SpectraError, match=message):
        drift(w0, wt)


# --- invariants (hypothesis) -------------------------------------------------------------

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


@st.composite
def pairs(draw):
    m, n = draw(shapes)
    seed = draw(st.integers(0, 2**32 - 1))
    noise = draw(st.sampled_from([1e-6, 1e-2, 0.3, 3.0]))
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((m, n))
    return w0, w0 + noise * rng.standard_normal((m, n)), rng


@settings(max_examples=150, deadline=None)
@given(pairs())
def test_drift_is_ordered_and_bounded(pair):
    w0, wt, _ = pair
    got = drift(w0, wt)
    assert 0.0 <= got["delta_d_matched"] <= got["delta_d"] <= 1.0
    assert got["delta_sigma"] >= 0.0
    assert 0 <= got["intruders"] <= min(10, *w0.shape)


def _flip(d: SVD, signs: np.ndarray) -> SVD:
    s = torch.from_numpy(signs)
    return SVD(d.u * s, d.s, d.vh * s[:, None])


@settings(max_examples=100, deadline=None)
@given(pairs())
def test_negating_singular_pairs_changes_nothing(pair):
    w0, wt, rng = pair
    base, cur = svd(w0), svd(wt)
    k = base.s.numel()
    flipped = vector_drift(
        _flip(base, rng.choice([-1.0, 1.0], k)), _flip(cur, rng.choice([-1.0, 1.0], k))
    )
    assert flipped == pytest.approx(vector_drift(base, cur), abs=1e-14)


@settings(max_examples=100, deadline=None)
@given(pairs(), st.floats(0.01, 100.0))
def test_positive_multiple_has_no_vector_drift(pair, c):
    w0, _, _ = pair
    got = drift(w0, c * w0)
    assert got["delta_d"] <= 1e-10 and got["delta_d_matched"] <= 1e-10
    s0 = np.linalg.svd(w0, compute_uv=False)
    assert got["delta_sigma"] == pytest.approx(abs(c - 1) * s0.mean(), rel=1e-10, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(pairs())
def test_row_and_column_permutations_change_nothing(pair):
    w0, wt, rng = pair
    p, q = rng.permutation(w0.shape[0]), rng.permutation(w0.shape[1])
    want = drift(w0, wt)
    got = drift(w0[p][:, q], wt[p][:, q])
    for key in ("delta_sigma", "delta_d", "delta_d_matched", "cond_w", "eff_rank"):
        assert got[key] == pytest.approx(want[key], rel=1e-8, abs=1e-9), key


@settings(max_examples=60, deadline=None)
@given(pairs(), st.floats(0.01, 100.0))
def test_scaling_both_scales_sigma_only(pair, c):
    w0, wt, _ = pair
    want, got = drift(w0, wt), drift(c * w0, c * wt)
    assert got["delta_sigma"] == pytest.approx(c * want["delta_sigma"], rel=1e-9, abs=1e-12)
    for key in ("delta_d", "delta_d_matched"):
        assert got[key] == pytest.approx(want[key], abs=1e-9)
    assert got["cond_w"] == pytest.approx(want["cond_w"], rel=1e-8)


def _orthonormal(rng, rows, cols):
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q


@settings(max_examples=80, deadline=None)
@given(st.integers(3, 10), st.integers(0, 2**32 - 1), st.floats(1e-4, 1e-2))
def test_swapping_close_singular_values_is_only_an_index_drift(k, seed, gap):
    """W_t carries σ_i and σ_{i+1} on exchanged pairs: same spectrum, same vectors."""
    rng = np.random.default_rng(seed)
    u, v = _orthonormal(rng, k + 2, k), _orthonormal(rng, k, k)
    s = np.linspace(5.0, 1.0, k)  # well separated, except for the pair below
    i = int(rng.integers(0, k - 1))
    s[i + 1] = s[i] - gap  # close but distinct
    swapped = s.copy()
    swapped[[i, i + 1]] = swapped[[i + 1, i]]
    got = drift(u @ np.diag(s) @ v.T, u @ np.diag(swapped) @ v.T)
    assert got["delta_sigma"] <= 1e-12
    assert got["delta_d_matched"] <= 1e-10
    assert got["delta_d"] == pytest.approx(2 / k, abs=1e-8)


def test_near_degenerate_spectrum_keeps_invariants():
    """Repeated singular values: vectors are arbitrary within the subspace, metrics stay sane."""
    rng = np.random.default_rng(3)
    u, v = _orthonormal(rng, 16, 8), _orthonormal(rng, 8, 8)
    s = np.array([4, 4, 4, 2, 2, 1, 1, 1.0]) + 1e-13 * rng.standard_normal(8)
    w0 = u @ np.diag(s) @ v.T
    rot = _orthonormal(rng, 3, 3)
    u_rot = u.copy()
    u_rot[:, :3] = u[:, :3] @ rot  # same subspace, same W up to a rotation inside it
    v_rot = v.copy()
    v_rot[:, :3] = v[:, :3] @ rot
    got = drift(w0, u_rot @ np.diag(s) @ v_rot.T)
    assert got["delta_sigma"] <= 1e-12
    assert 0 <= got["delta_d_matched"] <= got["delta_d"] <= 1


def test_matched_is_the_best_assignment_by_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(20):
        w0 = rng.standard_normal((6, 5))
        wt = w0 + 0.8 * rng.standard_normal((6, 5))
        u0, _, vh0 = np.linalg.svd(w0, full_matrices=False)
        ut, _, vht = np.linalg.svd(wt, full_matrices=False)
        cost = np.abs(ut.T @ u0) + np.abs(vht @ vh0.T)
        best = max(sum(cost[i, p[i]] for i in range(5)) for p in itertools.permutations(range(5)))
        assert drift(w0, wt)["delta_d_matched"] == pytest.approx(1 - best / 10, abs=1e-12)


def _brute_force(cost: np.ndarray, fixed: np.ndarray) -> tuple[float, float]:
    """(best total over all permutations, best over those that fix every ``fixed`` index)."""
    k = len(cost)
    best = best_fixing = -math.inf
    for p in itertools.permutations(range(k)):
        total = sum(cost[i, p[i]] for i in range(k))
        best = max(best, total)
        if all(p[i] == i for i in np.flatnonzero(fixed)):
            best_fixing = max(best_fixing, total)
    return best, best_fixing


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from([(7, 6), (6, 6), (5, 7)]),
    noise=st.sampled_from([1e-3, 0.03, 0.1, 0.3, 1.0]),
    close=st.booleans(),
)
def test_certified_indices_are_fixed_by_an_optimal_assignment(seed, shape, noise, close):
    """Brute force: some optimal permutation fixes every certified index, and the matched ΔD
    with the certificate equals the one from the full assignment (and from brute force)."""
    from spectra.metrics import fixed_by_certificate

    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(shape)
    if close:  # near-equal singular values, whose vectors swap under small noise
        u, _, vh = np.linalg.svd(w0, full_matrices=False)
        w0 = u @ np.diag(np.linspace(2, 1.9, len(vh))) @ vh
    wt = w0 + noise * rng.standard_normal(shape)
    base, cur = svd(w0), svd(wt)
    a = (cur.u * base.u).sum(0).abs()
    b = (cur.vh * base.vh).sum(1).abs()
    fixed = fixed_by_certificate(a, b)
    cost = np.abs(cur.u.numpy().T @ base.u.numpy()) + np.abs(cur.vh.numpy() @ base.vh.numpy().T)
    best, best_fixing = _brute_force(cost, fixed.numpy())
    assert best_fixing == pytest.approx(best, abs=1e-12)
    k = len(cost)
    with_cert = vector_drift(base, cur)[1]
    assert with_cert == pytest.approx(vector_drift(base, cur, certificate=False)[1], abs=1e-14)
    assert with_cert == pytest.approx(1 - best / (2 * k), abs=1e-12)


def test_certificate_settles_small_drift_without_the_assignment(monkeypatch):
    """Every index certified (small drift): no overlap matrix, no linear assignment."""
    import spectra.metrics as metrics

    rng = np.random.default_rng(11)
    w0 = rng.standard_normal((30, 20))
    base, cur = svd(w0), svd(w0 + 1e-6 * rng.standard_normal((30, 20)))

    def forbidden(*args, **kwargs):
        raise AssertionError("the assignment ran")

    monkeypatch.setattr(metrics, "linear_sum_assignment", forbidden)
    delta_d, matched = vector_drift(base, cur)
    assert matched == delta_d


# --- factor metrics ----------------------------------------------------------------------


@pytest.mark.parametrize("m, n, r", [(30, 20, 4), (8, 40, 8), (16, 16, 16)])
def test_factor_metrics_match_the_explicit_product(m, n, r):
    rng = np.random.default_rng(m * n * r)
    left, right = rng.standard_normal((m, r)), rng.standard_normal((r, n))
    s = np.linalg.svd(0.3 * left @ right, compute_uv=False)[:r]
    got = factor_metrics(left, right, scale=0.3)
    assert got["cond_p"] == pytest.approx(s[0] / s[-1], rel=1e-10)
    assert got["ortho_err"] is None


def test_factor_metrics_of_singular_vector_factors():
    rng = np.random.default_rng(7)
    u, vh = _orthonormal(rng, 20, 5), _orthonormal(rng, 12, 5).T
    values = np.array([5.0, 4, 3, 2, 1])
    exact = factor_metrics(u, vh, values)
    assert exact["cond_p"] == pytest.approx(5.0, rel=1e-12)
    assert exact["ortho_err"] < 1e-13
    bent_u = u + 0.01 * rng.standard_normal(u.shape)
    want = np.linalg.norm(bent_u.T @ bent_u - np.eye(5)) + np.linalg.norm(vh @ vh.T - np.eye(5))
    s = np.linalg.svd(bent_u @ np.diag(values) @ vh, compute_uv=False)
    got = factor_metrics(bent_u, vh, values)
    assert got["ortho_err"] == pytest.approx(want, rel=1e-10)
    assert got["cond_p"] == pytest.approx(s[0] / s[4], rel=1e-10)


def test_factor_metrics_of_a_zero_and_a_degenerate_product():
    assert math.isnan(factor_metrics(np.zeros((6, 2)), np.ones((2, 5)))["cond_p"])
    rank_one = factor_metrics(np.ones((6, 2)), np.ones((2, 5)))
    assert rank_one["cond_p"] == math.inf
    with pytest.raises(SpectraError, match="factor shapes"):
        factor_metrics(np.ones((6, 2)), np.ones((3, 5)))
