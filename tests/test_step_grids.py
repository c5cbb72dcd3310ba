"""Runs of different step grids: compare, analyze and plot take each run at a step that exists
(by default its last), a model imported alone is a final model drawn as an end point, and a
folder stands for its run files."""

from __future__ import annotations

import json

import pytest
from runmaker import make_run, parallel
from tiny_models import base_model, perturb

from spectra.figures import drift_figure
from spectra.report import render
from spectra.store import load_runs


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """``spectra compare base final-ft out-ft``: a model alone and a Trainer output folder with
    checkpoints at steps 10 and 30, tiny Llamas saved with save_pretrained."""
    root = tmp_path_factory.mktemp("grids")
    model = base_model("llama")
    model.save_pretrained(root / "base")
    for step in (10, 30):
        perturb(model, seed=step, size=0.05)
        model.save_pretrained(root / "out-ft" / f"checkpoint-{step}")
    perturb(model, seed=99, size=0.05)
    model.save_pretrained(root / "final-ft")
    return root


def test_compare_analyze_and_plot_all_work_on_runs_of_different_grids(compared, monkeypatch, cli):
    monkeypatch.chdir(compared)
    result = cli(["compare", "base", "final-ft", "out-ft"])
    assert result.code == 0, result
    assert "final-ft its final model" in result.out and "out-ft step 30" in result.out
    manifests = {
        name: json.loads((compared / "runs" / name / "manifest.json").read_text())
        for name in ("final-ft", "out-ft")
    }
    assert manifests["final-ft"]["ordinal_steps"] and not manifests["out-ft"]["ordinal_steps"]
    analyzed = cli(["analyze", "runs"])  # a folder: its run files
    assert analyzed.code == 0, analyzed
    assert "each run's last step (final-ft its final model, out-ft step 30)" in analyzed.out
    plotted = cli(["plot", "runs", "--figure", "all"])
    assert plotted.code == 0, plotted
    assert "wrote figures/figure2.html" in plotted.out
    skipped = [line for line in plotted.out.splitlines() if line.startswith("skipped")]
    assert (
        "skipped: figure subspace compares the runs at one step, but their last steps differ "
        "(final-ft 1, out-ft 30); use --step common or --step N"
    ) in skipped
    assert len(skipped) == 3  # and figures 3 and cond: no train logs, no SORSA runs
    common = cli(["analyze", "runs", "--step", "common"])
    common.error_line("the runs share no step after step 0 (final-ft 0..1, out-ft 0..30)")


def test_a_final_model_is_drawn_as_an_end_point(compared, monkeypatch, cli):
    monkeypatch.chdir(compared)
    if not (compared / "runs" / "final-ft.parquet").exists():
        assert cli(["compare", "base", "final-ft", "out-ft"]).code == 0
    runs = load_runs(["runs"])
    fig = drift_figure(runs)
    assert fig.layout.coloraxis.cmax == 30  # the last real step
    final = [t for t in fig.data if t.xaxis == "x" and t.mode == "markers"]
    for trace in final:  # final-ft is the first panel: every point at the end of the scale
        assert set(trace.marker.color) == {30}
        assert {c[2] for c in trace.customdata} == {"its final model"}


def test_narrow_tables_leave_out_columns_and_say_which(tmp_path):
    runs = load_runs([make_run(tmp_path, "lora", "lora", parallel(0.01))])
    narrow = render(runs, width=80, claims="none")
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert "Left out to fit 80 columns:" in narrow and "--format csv" in narrow
    wide = render(runs, width=1000, claims="none")
    assert "Left out" not in wide and "amplification" in wide


def test_columns_sets_the_width_of_a_piped_table(tmp_path, monkeypatch, cli):
    run = make_run(tmp_path, "lora", "lora", parallel(0.01))
    assert "Left out" not in cli(["analyze", run]).out  # piped, no $COLUMNS: in full
    monkeypatch.setenv("COLUMNS", "80")
    narrow = cli(["analyze", run]).out
    assert "Left out to fit 80 columns:" in narrow
    assert max(len(line) for line in narrow.splitlines()) <= 80
