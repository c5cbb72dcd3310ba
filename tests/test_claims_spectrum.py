"""The claims on the ΔW spectrum columns: Biderman et al.'s rank of the update, and where in
the spectrum PiSSA, SORSA and MiLoRA drift; each shown only where its methods are."""

from __future__ import annotations

import json

import numpy as np
import pytest
from runmaker import make_run, parallel

from spectra.report import check_claims, render, select_papers
from spectra.store import load_runs

SHAPE = [1.0, 0.35, 0.25, 0.2, 0.18, 0.16, 0.15, 0.14, 0.13, 0.12]


def constant(value):
    return lambda i, s: None if s == 0 else value


def runs(tmp_path, specs) -> list:
    """Parquet files of runs given as (name, method, extra columns)."""
    return [make_run(tmp_path, name, method, parallel(0.01) | cols) for name, method, cols in specs]


def claim(runs, paper):
    (found,) = check_claims(runs, papers=[paper])
    return found


@pytest.mark.parametrize(
    ("ft_rank", "r", "verdict", "says"),
    [(50.0, 4, True, "12.5×"), (30.0, 4, False, "ft only 7.5× lora's r"),
     (60.0, 16, None, "10× lora's r = 160 exceeds k = 64")],
)  # fmt: skip
def test_ft_needs_a_rank_far_above_loras_r(tmp_path, ft_rank, r, verdict, says):
    paths = runs(tmp_path, [
        ("ft", "ft", {"dw_rank90": constant(ft_rank)}),
        ("lora", "lora", {"dw_rank90": constant(3.0), "rank": lambda i, s: r}),
    ])  # fmt: skip
    found = claim(load_runs(paths), "biderman")
    assert found.verdict is verdict
    assert says in found.evidence
    assert (
        f"ft: dw_rank90 = {ft_rank:.3g}" in found.evidence
        and "its own dw_rank90 = 3" in found.evidence
    )


def test_the_rank_claim_needs_ft_and_a_lora_family_run(tmp_path):
    lora_only = load_runs(runs(tmp_path, [("lora", "lora", {})]))
    assert "biderman" not in select_papers(lora_only)
    assert claim(lora_only, "biderman").verdict is None
    ft_only = load_runs([make_run(tmp_path / "b", "ft", "ft", parallel(0.01))])
    assert "biderman" in select_papers(ft_only)
    assert "needs an FT run and a LoRA-family run" in claim(ft_only, "biderman").evidence


def test_pissa_and_sorsa_drift_in_the_principal_decile_milora_in_the_minor(tmp_path):
    frame = load_runs(runs(tmp_path, [("pissa", "pissa", {}), ("milora", "milora", {}),
                                      ("sorsa", "sorsa", {})]))  # fmt: skip
    assert {"milora", "biderman"} & set(select_papers(frame)) == {"milora"}
    found = claim(frame, "milora")
    assert found.verdict is True
    assert "checked: MiLoRA, PiSSA, SORSA" in found.claim
    rows = frame.rows
    last = rows[(rows["run"] == "milora") & (rows["step"] == rows["step"].max())]
    mean = np.mean(np.stack(last["profile_dvec"].to_numpy()), axis=0)
    assert f"milora: vector drift decile 1 {mean[0]:.3g}, decile 10 {mean[9]:.3g}" in found.evidence
    assert "largest in decile 10" in found.evidence and "largest in decile 1 (" in found.evidence


def test_a_run_that_drifts_at_the_wrong_end_fails_the_claim(tmp_path):
    minor_heavy = {"profile_dvec": lambda i, s: None if s == 0 else SHAPE[::-1]}
    frame = load_runs(runs(tmp_path, [("pissa", "pissa", minor_heavy)]))
    found = claim(frame, "milora")
    assert found.verdict is False and "fails: pissa peaks in decile 10" in found.evidence


def test_the_decile_claim_is_shown_only_for_its_methods(tmp_path):
    frame = load_runs(runs(tmp_path, [("lora", "lora", {}), ("ft", "ft", {})]))
    assert "milora" not in select_papers(frame)
    assert "needs a PiSSA, SORSA or MiLoRA run" in claim(frame, "milora").evidence


def test_json_carries_the_new_claims_and_summary_columns(tmp_path):
    frame = load_runs(runs(tmp_path, [("ft", "ft", {}), ("pissa", "pissa", {})]))
    document = json.loads(render(frame, "json"))
    assert document["papers"] == ["dora", "biderman", "milora"]
    assert {"dw_rank90", "principal_energy", "principal_angle"} <= set(document["summary"][0])
