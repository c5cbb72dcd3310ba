"""spectra analyze: summaries, the parallelism statistic, claim verdicts, formats, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from runmaker import magnitude_direction, make_run, paper_like, parallel, scattered

from spectra import report
from spectra.columns import SUMMARY
from spectra.errors import SpectraError
from spectra.report import dora
from spectra.store import comparison_steps, load_runs, parse_step, read_run, write_rows


def load(*paths):
    return load_runs([str(p) for p in paths])


def verdicts(*paths, matched=False, papers=("sorsa",)):
    claims = report.check_claims(load(*paths), matched=matched, papers=list(papers))
    return [c.verdict for c in claims]


# -- parallelism ---------------------------------------------------------------------------


def test_parallelism_is_one_for_layers_on_one_line(tmp_path):
    frame = load(make_run(tmp_path, "a", "ft", parallel(0.1, 3.0)))
    assert report.parallelism(frame.rows, 40, "delta_d") == pytest.approx(1.0)


def test_parallelism_is_zero_for_perpendicular_layers(tmp_path):
    moves = {  # layer 0 moves along ΔΣ only, layer 1 along ΔD only
        "delta_sigma": lambda i, s: s * (i == 0),
        "delta_d": lambda i, s: s * (i == 1),
    }
    frame = load(make_run(tmp_path, "a", "ft", moves, blocks=1))
    assert report.parallelism(frame.rows, 40, "delta_d") == pytest.approx(0.0)


def test_parallelism_cosine_of_two_directions(tmp_path):
    # after scaling by the means (1.5, 1): layer 0 → (2/3, 1), layer 1 → (4/3, 1)
    moves = {"delta_sigma": lambda i, s: s * (1 + i), "delta_d": lambda i, s: s}
    frame = load(make_run(tmp_path, "a", "ft", moves, blocks=1))
    a, b = (2 / 3, 1), (4 / 3, 1)
    cos = (a[0] * b[0] + a[1] * b[1]) / (math.hypot(*a) * math.hypot(*b))
    assert report.parallelism(frame.rows, 40, "delta_d") == pytest.approx(cos)


def test_parallelism_counts_turns_not_just_endpoints(tmp_path):
    # both layers end at (1, 1)·40, but one goes right then up, the other up then right
    def leg(first: str, i: int, s: int) -> float:
        mine = (i == 0) == (first == "x")
        return min(s, 20) if mine else max(s - 20, 0)

    moves = {"delta_sigma": lambda i, s: leg("x", i, s), "delta_d": lambda i, s: leg("y", i, s)}
    frame = load(make_run(tmp_path, "a", "ft", moves, blocks=1))
    assert report.parallelism(frame.rows, 40, "delta_d") == pytest.approx(0.0)


def test_parallelism_without_step_zero_rows_and_without_drift(tmp_path):
    with_zero = load(make_run(tmp_path, "a", "ft", scattered(0.1)))
    without = load(make_run(tmp_path, "b", "ft", scattered(0.1), steps=(10, 20, 30, 40)))
    assert report.parallelism(without.rows, 40, "delta_d") == pytest.approx(
        report.parallelism(with_zero.rows, 40, "delta_d")
    )
    still = load(make_run(tmp_path, "c", "ft", parallel(0.0)))
    assert math.isnan(report.parallelism(still.rows, 40, "delta_d"))


# -- summary -------------------------------------------------------------------------------


def test_summary_has_the_comparison_step_means_for_all_and_each_module(tmp_path):
    paths = paper_like(tmp_path)
    longer = make_run(tmp_path, "long", "lora", parallel(0.01), steps=(0, 10, 20, 30, 40, 50))
    frame = load(*paths, longer)
    common = report.summary(frame, comparison_steps(frame, "common"))
    last = report.summary(frame)  # by default each run at its last step
    for table, long_step in ((common, 40), (last, 50)):
        assert list(table["run"].unique()) == ["ft", "long", "lora", "sorsa-noreg", "sorsa"]
        assert list(table[table["run"] == "ft"]["module"]) == ["all", "q_proj", "v_proj"]
        for path, run, step in ((paths[3], "sorsa", 40), (longer, "long", long_step)):
            raw = pd.read_parquet(path)
            at = raw[raw["step"] == step]
            for module, rows in [("all", at), ("v_proj", at[at["module"] == "v_proj"])]:
                row = table[(table["run"] == run) & (table["module"] == module)].iloc[0]
                assert row["step"] == step
                for column in SUMMARY:
                    assert row[column] == pytest.approx(rows[column].mean(), nan_ok=True), column
                assert row["layers"] == len(rows)
    table = common
    assert table[table["run"] == "long"]["steps"].iloc[0] == 6
    assert math.isnan(table[table["run"] == "ft"]["cond_p"].iloc[0])  # no W_p for FT


# -- claims --------------------------------------------------------------------------------


def test_paper_like_runs_confirm_every_claim(tmp_path):
    assert verdicts(*paper_like(tmp_path)) == [True] * 5


def test_claims_fail_when_the_runs_contradict_the_paper(tmp_path):
    paths = [
        make_run(tmp_path, "ft", "ft", scattered(0.02)),  # FT not parallel
        make_run(tmp_path, "lora", "lora", parallel(0.0001, 0.5)),  # LoRA drifts least
        make_run(tmp_path, "noreg", "sorsa-noreg", parallel(0.0002, 1.0)),
        make_run(
            tmp_path,
            "sorsa",
            "sorsa",
            parallel(0.01, 2.0) | {"cond_p": lambda i, s: 10.0 + 0.2 * s},  # κ above noreg
        ),
    ]
    assert verdicts(*paths) == [False] * 5
    claims = report.check_claims(load(*paths), papers=["sorsa"])
    assert "fails: ft not parallel" in claims[0].evidence
    assert "lora ΔΣ=0.000205 not above sorsa's 0.0205" in claims[1].evidence
    assert "fails: sorsa parallel" in claims[2].evidence


def test_claims_are_not_checkable_without_the_runs_they_compare(tmp_path):
    paths = [
        make_run(tmp_path, "ft", "ft", parallel(0.02, 8.0)),
        make_run(tmp_path, "lora", "lora", parallel(0.01, 12.0)),
    ]
    assert verdicts(*paths) == [None] * 5  # claim 1: parallel, but "a lot" needs SORSA
    assert report.select_papers(load(*paths)) == ["dora"]  # SORSA's claims are not shown


def test_theorem_reports_the_step_after_which_it_holds(tmp_path):
    crossing = {"cond_p": lambda i, s: 12.0 - 0.1 * s}  # noreg: 10 + 0.1 s; crosses at 10
    paths = [
        make_run(tmp_path, "noreg", "sorsa-noreg", parallel(0.01)),
        make_run(tmp_path, "sorsa", "sorsa", scattered(0.001) | crossing),
    ]
    claim = report.claim_theorem(load(*paths))
    assert claim.verdict is True
    assert "below at every step after 10" in claim.evidence
    assert "3 of 4 common steps" in claim.evidence


def test_matched_delta_d_can_change_a_verdict(tmp_path):
    # SORSA's index-matched ΔD is the smallest, but its matched ΔD is the largest
    swapped = {"delta_d_matched": lambda i, s: s / 40}
    paths = [
        make_run(tmp_path, "lora", "lora", parallel(0.01, 12.0)),
        make_run(tmp_path, "sorsa", "sorsa", scattered(0.002) | swapped),
    ]
    assert verdicts(*paths)[1] is True
    assert verdicts(*paths, matched=True)[1] is False


def test_comparison_steps_by_policy(tmp_path):
    a = make_run(tmp_path, "a", "ft", parallel(0.1))
    b = make_run(tmp_path, "b", "lora", parallel(0.1), steps=(0, 10, 20, 30))
    assert comparison_steps(load(a, b)) == {"a": 40, "b": 30}  # each run's last step
    assert comparison_steps(load(a, b), "common") == {"a": 30, "b": 30}
    assert comparison_steps(load(a, b), 20) == {"a": 20, "b": 20}
    c = make_run(tmp_path, "c", "lora", parallel(0.1), steps=(0, 15, 25))
    assert comparison_steps(load(a, c)) == {"a": 40, "c": 25}
    with pytest.raises(SpectraError, match="share no step after step 0"):
        comparison_steps(load(a, c), "common")
    with pytest.raises(SpectraError, match="step 15 is not in a; use --step last or common"):
        comparison_steps(load(a, c), 15)
    assert parse_step(" Common") == "common" and parse_step("30") == 30
    with pytest.raises(SpectraError, match="use last, common or a step number"):
        parse_step("-1")


# -- DoRA's claims and which papers are shown --------------------------------------------------


def test_dora_fit_is_least_squares_and_pearson_over_steps_after_zero(tmp_path):
    raw = pd.read_parquet(make_run(tmp_path, "ft", "ft", parallel(0.1) | magnitude_direction(-1)))
    moved = raw[(raw["step"] > 0) & (raw["step"] <= 30)]
    fit = dora.fit(raw, 30)
    slope, intercept = np.polyfit(moved["delta_m"], moved["delta_dir"], 1)
    assert (fit.slope, fit.intercept) == pytest.approx((slope, intercept))
    assert fit.r == pytest.approx(np.corrcoef(moved["delta_m"], moved["delta_dir"])[0, 1])
    assert fit.n == len(moved) == 3 * 8 and fit.r < 0
    flat = raw.assign(delta_m=0.01)
    assert math.isnan(dora.fit(flat).r)  # ΔM does not vary: no line


def test_dora_claims_on_runs_that_behave_as_the_paper_says_and_not(tmp_path):
    paths = [
        make_run(tmp_path, "ft", "ft", parallel(0.02) | magnitude_direction(-1)),
        make_run(tmp_path, "lora", "lora", parallel(0.01) | magnitude_direction(1)),
        make_run(tmp_path, "dora", "dora", parallel(0.01) | magnitude_direction(-1)),
    ]
    assert verdicts(*paths, papers=["dora"]) == [True, True, True]
    wrong = make_run(tmp_path, "dora2", "dora", parallel(0.01) | magnitude_direction(1))
    claims = report.check_claims(load(*paths[:2], wrong), papers=["dora"])
    assert claims[2].verdict is False and "fails: dora2 r=" in claims[2].evidence
    claims = report.check_claims(load(paths[0]), papers=["dora"])
    assert [c.verdict for c in claims] == [True, None, None]
    assert claims[1].evidence == "needs a LoRA run"


def test_papers_are_shown_when_the_runs_include_their_methods(tmp_path):
    lora = make_run(tmp_path, "lora", "lora", parallel(0.01))
    dora_run = make_run(tmp_path, "dora", "dora", parallel(0.01))
    sorsa = make_run(tmp_path, "sorsa", "sorsa", scattered(0.002))
    assert report.select_papers(load(lora, dora_run)) == ["dora"]
    assert report.select_papers(load(sorsa)) == ["sorsa"]
    assert report.select_papers(load(lora, sorsa)) == ["sorsa", "dora"]
    frame = load(lora, dora_run)
    assert report.select_papers(frame, "all") == ["sorsa", "dora"]
    assert report.select_papers(frame, "none") == []
    assert report.select_papers(frame, " Dora,sorsa,dora") == ["dora", "sorsa"]
    with pytest.raises(SpectraError, match="unknown claims 'lora'"):
        report.select_papers(frame, "lora")
    assert "SORSA paper" not in report.render(frame)  # LoRA and DoRA runs: no SORSA claims


# -- formats -------------------------------------------------------------------------------


def test_every_format_carries_the_summary_and_verdicts(tmp_path):
    frame = load(*paper_like(tmp_path))
    data = json.loads(report.render(frame, "json"))
    assert data["steps"] == dict.fromkeys(["ft", "lora", "sorsa-noreg", "sorsa"], 40)
    assert data["step_policy"] == "last" and data["parallel_threshold"] == report.PARALLEL
    assert data["papers"] == ["sorsa", "dora"]
    assert [c["verdict"] for c in data["claims"]] == [True] * 7 + [None]  # no DoRA run
    assert [c["paper"] for c in data["claims"]] == ["sorsa"] * 5 + ["dora"] * 3
    assert {row["module"] for row in data["summary"]} == {"all", "q_proj", "v_proj"}
    markdown = report.render(frame, "markdown")
    assert "| claim | verdict | evidence |" in markdown and "| ΔΣ |" in markdown
    csv = report.render(frame, "csv")
    assert csv.splitlines()[0].startswith("run,method,module,step,ΔΣ,")
    assert "claim,verdict,evidence" in csv
    table = report.render(frame, "table")
    assert "Section 4.2 claims" in table and table.count("true") >= 7
    assert table.count("at step 40, the last step of every run") == 1  # one step, said once
    assert "final step" not in table and "Claims compared at" not in table
    assert "Figure 2a" in table and "not checkable" in table
    with pytest.raises(SpectraError, match="unknown format"):
        report.render(frame, "xml")


# -- command line --------------------------------------------------------------------------


def test_analyze_command_prints_json(tmp_path, cli):
    paper_like(tmp_path)
    code, out, _ = cli(["analyze", tmp_path / "*.parquet", "--format", "json"])
    assert code == 0
    assert len(json.loads(out)["claims"]) == 8
    code, out, _ = cli(["analyze", tmp_path / "*.parquet", "--claims", "dora", "--format", "json"])
    assert [c["paper"] for c in json.loads(out)["claims"]] == ["dora"] * 3
    code, out, _ = cli(["analyze", tmp_path / "*.parquet", "--claims", "none"])
    assert code == 0 and out.startswith("Summary at step 40") and "verdict" not in out


def bad_inputs(tmp_path):
    """(arguments, expected message) for inputs a user can get wrong."""
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    (tmp_path / "text.parquet").write_text("not parquet")
    a = make_run(tmp_path, "a", "ft", parallel(0.1), steps=(0, 10))
    b = make_run(tmp_path, "b", "lora", parallel(0.1), steps=(0, 15))
    return [
        ([tmp_path / "nothing*.parquet"], "no run files match"),
        ([plain], "is not a spectra run"),
        ([tmp_path / "text.parquet"], "not a readable Parquet file"),
        ([a, b, "--step", "common"], "share no step after step 0"),
        ([a, b, "--step", "15"], "step 15 is not in a"),
        ([a, "--step", "latest"], "use last, common or a step number"),
        ([tmp_path / "empty"], "holds no run files"),
        ([a, "--format", "xml"], "unknown format"),
        ([a, "--claims", "lora"], "unknown claims"),
    ]


def test_analyze_bad_input_is_one_line_and_exit_2(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    for args, message in bad_inputs(tmp_path):
        cli(["analyze", *args]).error_line(message)


def test_runs_of_the_same_name_are_told_apart_by_their_folders(tmp_path, cli):
    """Two seeds tracked as runs/lora in a/ and b/: both analyzed, named a/lora and b/lora."""
    make_run(tmp_path / "a", "lora", "lora", parallel(0.1))
    make_run(tmp_path / "b", "lora", "lora", parallel(0.2))
    make_run(tmp_path / "b", "ft", "ft", parallel(0.3))
    frame = load_runs([tmp_path / "*" / "*.parquet"])
    assert sorted(frame.meta) == ["a/lora", "b/lora", "ft"]
    means = frame.rows[frame.rows["step"] == 40].groupby("run")["delta_sigma"].mean()
    assert means["b/lora"] == pytest.approx(2 * means["a/lora"])
    code, out, _ = cli(["analyze", tmp_path / "*" / "*.parquet", "--format", "json"])
    assert code == 0 and {"a/lora", "b/lora", "ft"} <= set(out.split('"'))


def test_same_name_in_one_folder_is_told_apart_by_file(tmp_path):
    make_run(tmp_path, "x", "lora", parallel(0.1))
    make_run(tmp_path, "y", "lora", parallel(0.1))
    for name in ("x", "y"):  # both files hold a run named "lora"
        rows, meta = read_run(tmp_path / f"{name}.parquet")
        write_rows(tmp_path / f"{name}.parquet", rows.assign(run="lora"), meta | {"run": "lora"})
    frame = load_runs([tmp_path / "x.parquet", tmp_path / "y.parquet"])
    assert list(frame.meta) == [str(tmp_path / "x.parquet"), str(tmp_path / "y.parquet")]


@pytest.mark.slow
def test_analyze_script_has_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "spectra", "analyze", str(tmp_path / "none*.parquet")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no run files match {tmp_path / 'none*.parquet'}"
