"""Run files are self-consistent: one row per (step, layer), only of the steps and layers the run
directory still has, and their names are neither hidden nor lost to glob characters."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from runmaker import LAYER, make_run_dir

from spectra.engine import compute_run
from spectra.run_files import MANIFEST, step_file
from spectra.store import read_run

KEY = ["step", "layer"]


def rows_of(path) -> pd.DataFrame:
    return read_run(path)[0]


def duplicate_rows(path, changed: float | None = None) -> None:
    """Append a second copy of every row to a run file (its ΔΣ changed, if given)."""
    table = pq.read_table(path)
    again = table
    if changed is not None:
        column = pa.array([changed] * len(table), pa.float64())
        again = table.set_column(table.column_names.index("delta_sigma"), "delta_sigma", column)
    pq.write_table(pa.concat_tables([table, again]).replace_schema_metadata(table.schema.metadata),
                   path)  # fmt: skip


def test_duplicate_rows_are_refused_by_analyze(tmp_path, cli):
    out = compute_run(make_run_dir(tmp_path, "run"))
    duplicate_rows(out, changed=5.0)
    cli(["analyze", out]).error_line("repeated (step, layer) pairs", "compute the run again")


def test_duplicate_rows_are_computed_again(tmp_path):
    run_dir = make_run_dir(tmp_path, "run")
    want = rows_of(compute_run(run_dir, tmp_path / "clean.parquet"))
    out = compute_run(run_dir)
    duplicate_rows(out, changed=5.0)
    pd.testing.assert_frame_equal(rows_of(compute_run(run_dir)), want)


def forget_step(run_dir, step: int, delete_file: bool = True) -> None:
    raw = json.loads((run_dir / MANIFEST).read_text())
    raw["steps"].remove(step)
    (run_dir / MANIFEST).write_text(json.dumps(raw))
    if delete_file:
        (run_dir / step_file(step)).unlink()


@pytest.mark.parametrize("delete_file", [True, False])
def test_rows_of_a_step_the_run_no_longer_lists_are_dropped(tmp_path, delete_file):
    run_dir = make_run_dir(tmp_path, "run", steps=(0, 1, 2))
    compute_run(run_dir)
    forget_step(run_dir, 1, delete_file)
    got = rows_of(compute_run(run_dir))
    assert sorted(got["step"]) == [0, 2]
    pd.testing.assert_frame_equal(got, rows_of(compute_run(run_dir, tmp_path / "clean.parquet")))


def test_rows_of_a_deleted_step_file_are_dropped_and_the_gap_is_an_error(tmp_path, cli):
    run_dir = make_run_dir(tmp_path, "run", steps=(0, 1, 2))
    compute_run(run_dir)
    (run_dir / step_file(1)).unlink()  # still listed in the manifest
    cli(["compute", run_dir]).error_line("snapshot file missing", step_file(1))
    assert sorted(rows_of(tmp_path / "run.parquet")["step"]) == [0, 2]


def test_rows_of_a_layer_the_run_no_longer_has_are_dropped(tmp_path):
    run_dir = make_run_dir(tmp_path, "run")
    out = compute_run(run_dir)
    table = pq.read_table(out)
    renamed = pa.array(["model.layers.9.self_attn.q_proj"] * len(table))
    extra = table.set_column(table.column_names.index("layer"), "layer", renamed)
    pq.write_table(pa.concat_tables([table, extra]).replace_schema_metadata(table.schema.metadata),
                   out)  # fmt: skip
    assert set(rows_of(compute_run(run_dir))["layer"]) == {LAYER}


def test_compute_dot_writes_the_run_file_beside_the_run(tmp_path, monkeypatch, cli):
    run_dir = make_run_dir(tmp_path, "run")
    monkeypatch.chdir(run_dir)
    result = cli(["compute", "."])
    assert result.code == 0, result
    assert not (run_dir / ".parquet").exists()
    assert len(rows_of(tmp_path / "run.parquet")) == 2


def test_a_run_file_named_like_a_glob_is_read_by_its_name(tmp_path, monkeypatch, cli):
    run_dir = make_run_dir(tmp_path, "run")
    shutil.move(run_dir, tmp_path / "lora[r16]")
    monkeypatch.chdir(tmp_path)
    assert cli(["compute", "lora[r16]"]).code == 0
    result = cli(["analyze", "lora[r16].parquet", "--format", "json"])
    assert result.code == 0, result
    assert json.loads(result.out)["summary"][0]["run"] == "run"
    assert cli(["plot", "lora[r16].parquet", "--out", "figs"]).code == 0
