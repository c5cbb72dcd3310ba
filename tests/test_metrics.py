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
from spectra.factors import Principal, product, update_factors
from spectra.metrics import (
    SVD,
    amplification,
    amplification_from_svd,
    drift,
    factor_metrics,
    factored_svd,
    magnitude_direction,
    subspace_similarity,
    svd,
    top_overlaps,
    vector_drift,
)

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


# --- DoRA's magnitude and direction, the LoRA paper's amplification and φ ------------------


def reference_update(w0: np.ndarray, wt: np.ndarray, rank: int) -> dict:
    """delta_m, delta_dir and amplification written out directly from their definitions."""
    n0, nt = np.linalg.norm(w0, axis=1), np.linalg.norm(wt, axis=1)
    cos = (w0 * wt).sum(1) / (n0 * nt)
    delta = wt - w0
    u, s, vh = np.linalg.svd(delta, full_matrices=False)
    r = min(rank, int((s > s[0] * max(delta.shape) * np.finfo(float).eps).sum()))
    core = np.linalg.norm(u[:, :r].T @ w0 @ vh[:r].T)
    return {
        "delta_m": np.abs(nt - n0).mean(),
        "delta_dir": (1 - cos).mean(),
        "amplification": np.linalg.norm(delta) / core,
    }


def assert_update_close(w0, wt, got_amplification, rank, tol=TOL):
    want = reference_update(w0, wt, rank)
    got = magnitude_direction(w0, wt) | {"amplification": got_amplification}
    for key in ("delta_m", "delta_dir"):
        assert abs(got[key] - want[key]) <= tol * max(1.0, abs(want[key])), key
    assert got["amplification"] == pytest.approx(want["amplification"], rel=tol)


def _low_rank(rng, m, n, r):
    return rng.standard_normal((m, r)), rng.standard_normal((r, n))


@pytest.mark.parametrize("m, n", [(48, 32), (32, 48)])
def test_full_rank_update_ft_and_dora(m, n):
    """FT: a dense ΔW. DoRA: W_t = magnitude ⊙ (W_0 + BA)/‖W_0 + BA‖_row, full rank too."""
    rng = np.random.default_rng(m)
    w0 = rng.standard_normal((m, n))
    ft = w0 + 0.05 * rng.standard_normal((m, n))
    assert_update_close(w0, ft, amplification(w0, ft, 16), 16)
    b, a = _low_rank(rng, m, n, 4)
    v = w0 + 0.1 * b @ a
    magnitude = np.linalg.norm(w0, axis=1) * (1 + 0.05 * rng.standard_normal(m))
    dora = magnitude[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True)
    assert np.linalg.matrix_rank(dora - w0) == min(m, n)
    assert_update_close(w0, dora, amplification(w0, dora, 4), 4)


def _factored(p0: Principal, pt: Principal, base: np.ndarray, rank: int) -> tuple:
    """(W_0, W_t, amplification through the factors of ΔW) of a low-rank layer."""
    w0 = base + product(p0).numpy()
    wt = base + product(pt).numpy()
    return w0, wt, amplification_from_svd(w0, factored_svd(*update_factors(p0, pt)), rank)


def _principal(left, right, values=None):
    values = None if values is None else torch.from_numpy(values)
    return Principal(torch.from_numpy(left), values, torch.from_numpy(right))


def test_low_rank_updates_through_the_factors():
    rng = np.random.default_rng(11)
    m, n, r = 40, 30, 3
    base = rng.standard_normal((m, n))
    # LoRA: B_0 = 0, so ΔW = B_t A_t has rank r
    a0 = rng.standard_normal((r, n))
    lora0 = _principal(np.zeros((m, r)), a0)
    lorat = _principal(0.3 * rng.standard_normal((m, r)), a0 + 0.1 * rng.standard_normal((r, n)))
    assert update_factors(lora0, lorat)[0].shape == (m, r)  # the zero half is left out
    w0, wt, got = _factored(lora0, lorat, base, r)
    assert np.linalg.matrix_rank(wt - w0) == r
    assert_update_close(w0, wt, got, r)
    # PiSSA: B_0 A_0 are the top singular triplets of W_0, ΔW = B_t A_t − B_0 A_0 has rank 2r
    u, s, vh = np.linalg.svd(base, full_matrices=False)
    b0, a0 = u[:, :r] * np.sqrt(s[:r]), np.sqrt(s[:r])[:, None] * vh[:r]
    pissa0 = _principal(b0, a0)
    moved = 0.05 * rng.standard_normal((m, r)), 0.05 * rng.standard_normal((r, n))
    pissat = _principal(b0 + moved[0], a0 + moved[1])
    w0, wt, got = _factored(pissa0, pissat, base - b0 @ a0, r)
    assert np.linalg.matrix_rank(wt - w0) == 2 * r
    assert_update_close(w0, wt, got, r)
    # SORSA: singular-vector factors and values
    sorsa0 = _principal(u[:, :r], vh[:r], s[:r])
    sorsat = _principal(u[:, :r] + 0.02 * rng.standard_normal((m, r)),
                        vh[:r] + 0.02 * rng.standard_normal((r, n)), s[:r] * 1.1)  # fmt: skip
    w0, wt, got = _factored(sorsa0, sorsat, base - (u[:, :r] * s[:r]) @ vh[:r], r)
    assert_update_close(w0, wt, got, r)


def test_amplification_caps_the_rank_and_handles_zero_updates():
    rng = np.random.default_rng(12)
    w0 = rng.standard_normal((20, 16))
    b, a = _low_rank(rng, 20, 16, 2)
    wt = w0 + b @ a  # rank 2 < rank 5: the top-5 subspace is ΔW's range
    capped = amplification(w0, wt, 5)
    assert capped == pytest.approx(reference_update(w0, wt, 2)["amplification"], rel=TOL)
    via_factors = amplification_from_svd(w0, factored_svd(b, a), 5)
    assert via_factors == pytest.approx(capped, rel=TOL)
    assert math.isnan(amplification(w0, w0.copy(), 4))  # ΔW = 0: 0/0
    left = np.zeros((20, 1))
    left[0] = 1.0
    orthogonal = np.vstack([np.zeros((1, 16)), w0[1:]])  # W_0's row 0 is zero, ΔW lives there
    assert amplification(orthogonal, orthogonal + left @ a[:1], 1) == math.inf


@settings(max_examples=80, deadline=None)
@given(pairs(), st.floats(1.01, 50.0))
def test_magnitude_direction_invariants(pair, c):
    w0, _, _ = pair
    same = magnitude_direction(w0, w0.copy())
    assert same == {"delta_m": 0.0, "delta_dir": 0.0}
    scaled = magnitude_direction(w0, c * w0)
    assert scaled["delta_dir"] <= 1e-15
    want = (c - 1) * np.linalg.norm(w0, axis=1).mean()
    assert scaled["delta_m"] == pytest.approx(want, rel=1e-12)


def test_zero_rows_have_no_direction():
    w0 = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    wt = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    got = magnitude_direction(w0, wt)
    assert got == {"delta_m": pytest.approx(1.0), "delta_dir": pytest.approx(2 / 3)}


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_subspace_similarity_of_a_subspace_with_itself_is_one(d, k, seed):
    k = min(k, d)
    u = _orthonormal(np.random.default_rng(seed), d, k)
    phi = subspace_similarity(u, u)
    np.testing.assert_allclose(np.diag(phi), 1.0, atol=1e-12)
    assert ((phi >= 0) & (phi <= 1)).all()


def test_subspace_similarity_matches_its_definition():
    rng = np.random.default_rng(13)
    a, b = _orthonormal(rng, 30, 6), _orthonormal(rng, 30, 4)
    phi = subspace_similarity(a, b)
    assert phi.shape == (6, 4)
    for i in range(1, 7):
        for j in range(1, 5):
            want = np.linalg.norm(a[:, :i].T @ b[:, :j]) ** 2 / min(i, j)
            assert phi[i - 1, j - 1] == pytest.approx(want, abs=1e-13)
    np.testing.assert_allclose(subspace_similarity(b, a), phi.T, atol=1e-13)
    inside = np.hstack([a[:, :2], _orthonormal(rng, 30, 1)])  # span(a_1, a_2) ⊂ span(inside)
    assert subspace_similarity(a, inside)[1, 2] == pytest.approx(1.0, abs=1e-12)


def test_top_overlaps_are_the_best_cosines_with_base_vectors():
    rng = np.random.default_rng(14)
    w0 = rng.standard_normal((25, 18))
    wt = w0 + 0.5 * rng.standard_normal((25, 18))
    u0 = np.linalg.svd(w0, full_matrices=False)[0]
    ut = np.linalg.svd(wt, full_matrices=False)[0]
    got = top_overlaps(svd(w0), svd(wt), 10).numpy()
    np.testing.assert_allclose(got, np.abs(ut[:, :10].T @ u0).max(axis=1), atol=1e-12)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 12), st.integers(2, 12), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_amplification_through_factors_equals_the_full_svd(m, n, q, seed):
    """ΔW = L R of rank q ≤ r: both paths span ΔW's whole range, whatever the gaps."""
    rng = np.random.default_rng(seed)
    q = min(q, m, n)
    w0 = rng.standard_normal((m, n))
    left, right = _low_rank(rng, m, n, q)
    # the full SVD of ΔW itself: W_t − W_0 would add rounding of size ‖W_0‖·ε, which lifts ΔW's
    # zero singular values above the rank tolerance when ‖ΔW‖ ≪ ‖W_0‖
    dense = amplification_from_svd(w0, svd(left @ right), q + 1)
    factored = amplification_from_svd(w0, factored_svd(left, right), q + 1)
    assert factored == pytest.approx(dense, rel=1e-8)
