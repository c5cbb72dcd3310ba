"""Engine rows of the ΔW spectrum columns on tracked runs of a GQA Llama (q 64×64, v 32×64:
k = 64 and 32, not multiples of 10), for FT, LoRA, PiSSA, DoRA and SORSA, against independent
numpy float64 computations on each method's own float64 merge; the new settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_metrics import reference_update
from test_spectrum import assert_spectrum, reference_spectrum
from tiny_models import base_model, perturb, reference_weights, with_method

from spectra.callback import Tracker
from spectra.engine import Engine, Settings, compute_run, update_columns
from spectra.errors import SpectraError
from spectra.store import read_run

TARGETS = ("q_proj", "v_proj")
PATHS = [f"model.layers.{b}.self_attn.{m}" for b in (0, 1) for m in TARGETS]
NEW = ("dw_rank90", "dw_eff_rank", "principal_energy", "principal_angle", "update_sparsity",
       "profile_dsigma", "profile_dvec", "amplification")  # fmt: skip
FT_RANK = 3  # small enough for the truncated path (its block must fit twice into k)


def untouched_entries(model, before: dict[str, torch.Tensor]) -> None:
    """FT: put row 0 back and move row 1 by 1e-6 only, so that update_sparsity counts them."""
    with torch.no_grad():
        for path in PATHS:
            weight = model.get_submodule(path).weight
            weight[0] = before[path][0].to(weight.dtype)
            weight[1] = before[path][1].to(weight.dtype) + 1e-6


def tracked_run(tmp_path, method: str) -> tuple:
    """A run of two perturbation steps, and each step's W_t from the method's own merge."""
    model = with_method(base_model("llama"), method, TARGETS)
    truth = {0: reference_weights(model, method, PATHS)}
    with Tracker(model, tmp_path / method, every=1, mode="deferred") as tracker:
        for step in (1, 2):
            perturb(model, seed=step, size=0.05 * step)
            if method == "ft":
                untouched_entries(model, truth[0])
            truth[step] = reference_weights(model, method, PATHS)
            tracker.step(step)
    return tmp_path / method, {s: {p: w.numpy() for p, w in t.items()} for s, t in truth.items()}


@pytest.mark.parametrize("method", ["ft", "lora", "pissa", "dora", "sorsa"])
def test_rows_match_numpy(tmp_path, method, monkeypatch):
    paths = []  # dense ΔW: True where the truncated SVD was certified, False where it fell back
    real = update_columns.certified_amplification
    monkeypatch.setattr(
        update_columns,
        "certified_amplification",
        lambda *a: (found := real(*a), paths.append(found.truncated))[0],
    )
    run_dir, truth = tracked_run(tmp_path, method)
    rows, meta = read_run(compute_run(run_dir, settings=Settings(ft_rank=FT_RANK)))
    assert (True in paths) == (method in ("ft", "dora"))  # both paths meet the same numbers
    assert meta["engine"]["principal_frac"] == 0.1 and meta["engine"]["sparsity_atol"] == 1e-5
    assert sorted(set(zip(rows["rows"], rows["cols"], strict=True))) == [(32, 64), (64, 64)]
    for row in rows.itertuples():
        got = row._asdict()
        if row.step == 0:
            assert all(got[c] is None or (isinstance(got[c], float) and math.isnan(got[c]))
                       for c in NEW)  # fmt: skip
            continue
        w0, wt = truth[0][row.layer], truth[row.step][row.layer]
        rank = FT_RANK if method == "ft" else 4
        want = reference_spectrum(w0, wt) | reference_update(w0, wt, rank)
        got = {k: list(v) if isinstance(v, np.ndarray) else v for k, v in got.items()}
        assert_spectrum(got, want)
    if method == "ft":
        assert (rows[rows.step > 0]["update_sparsity"] >= 2 / 64).all()


def test_settings_are_recorded_and_a_change_recomputes(tmp_path, cli):
    run_dir, truth = tracked_run(tmp_path, "lora")
    code, _, err = cli(["compute", run_dir, "--principal-frac", "0.25", "--sparsity-atol", "0.01"])
    assert code == 0, err
    rows, meta = read_run(tmp_path / "lora.parquet")
    assert meta["engine"]["principal_frac"] == 0.25 and meta["engine"]["sparsity_atol"] == 0.01
    later = rows[rows.step == 2].set_index("layer")
    for layer, row in later.iterrows():
        w0, wt = truth[0][layer], truth[2][layer]
        k = min(w0.shape)
        u0, _, vh0 = np.linalg.svd(w0)
        p = math.ceil(k / 4)
        delta = wt - w0
        share = ((u0[:, :p].T @ delta @ vh0[:p, :].T) ** 2).sum() / (delta**2).sum()
        assert row.principal_energy == pytest.approx(share, abs=1e-10)
        assert row.update_sparsity == pytest.approx((np.abs(delta) <= 0.01).mean(), abs=0)
    assert Engine(run_dir, settings=Settings(principal_frac=0.25, sparsity_atol=0.01)).update() == 0
    assert Engine(run_dir).update() == len(rows)  # the defaults again: every row recomputed


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--principal-frac", "0", "principal_frac"), ("--principal-frac", "1.5", "principal_frac"),
     ("--sparsity-atol", "-1", "sparsity_atol"), ("--sparsity-atol", "nan", "sparsity_atol")],
)  # fmt: skip
def test_bad_settings_are_one_line(tmp_path, cli, option, value, message):
    run_dir, _ = tracked_run(tmp_path, "lora")
    code, _, err = cli(["compute", run_dir, option, value])
    assert code == 2 and message in err and "Traceback" not in err
    with pytest.raises(SpectraError, match=message):
        Settings(**{message: float(value)})
