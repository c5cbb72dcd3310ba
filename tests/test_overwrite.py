"""overwrite=True (Tracker, SpectraCallback) removes a run only when its identity shows it is
the run being replaced; anything else is refused with one SpectraError and left as it was."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from runmaker import make_run, make_run_dir, parallel
from tiny_models import base_model

import spectra
from spectra.engine import compute_run
from spectra.errors import SpectraError
from spectra.importer import compare_runs
from spectra.snapshots import open_run

pytestmark = pytest.mark.slow  # builds models


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def foreign(root: Path) -> None:
    pq.write_table(pa.table({"x": [1]}), root / "run.parquet")


def another_run(root: Path) -> None:
    """runs/run/ is a run; runs/run.parquet holds the rows of another run (another id)."""
    make_run_dir(root, "run")
    make_run_dir(root / "elsewhere", "run", seed=1)
    shutil.copy(compute_run(root / "elsewhere" / "run"), root / "run.parquet")
    shutil.rmtree(root / "elsewhere")


def orphan_of_another_name(root: Path) -> None:
    make_run(root, "other", "ft", parallel(0.1), log=False)
    (root / "other.parquet").rename(root / "run.parquet")
    (root / "other").rmdir()


def notes(root: Path) -> None:
    make_run_dir(root, "run")
    (root / "run" / "notes.txt").write_text("mine")


def symlinked(root: Path) -> None:
    make_run_dir(root / "elsewhere", "run")
    (root / "run").symlink_to(root / "elsewhere" / "run")


OCCUPIED = {
    "a foreign Parquet file": (foreign, "is not a spectra run file"),
    "a folder at the Parquet path": (lambda root: (root / "run.parquet").mkdir(), "is a folder"),
    "another run's rows": (another_run, "holds run 'run' (id "),
    "an orphan of another run": (orphan_of_another_name, "holds run 'other'"),
    "notes in the run directory": (notes, "'notes.txt', which spectra did not write"),
    "a symlinked run directory": (symlinked, "it is a symlink"),
}


@pytest.mark.parametrize("case", list(OCCUPIED))
def test_tracker_overwrite_refuses_what_is_not_the_run(tmp_path, case):
    make, message = OCCUPIED[case]
    make(tmp_path)
    before = tree(tmp_path)
    with pytest.raises(SpectraError) as exc:
        spectra.Tracker(base_model("llama"), tmp_path / "run", mode="deferred", overwrite=True)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert tree(tmp_path) == before


def test_tracker_overwrite_replaces_its_own_run_and_rows(tmp_path):
    run_dir = make_run_dir(tmp_path, "run")
    compute_run(run_dir)
    old = open_run(run_dir).manifest.run_id
    spectra.Tracker(base_model("llama"), run_dir, mode="deferred", overwrite=True).close()
    assert open_run(run_dir).manifest.run_id != old
    assert not (tmp_path / "run.parquet").exists()


def test_tracker_overwrite_replaces_an_orphan_of_its_name(tmp_path):
    make_run(tmp_path, "run", "ft", parallel(0.1), log=False)  # rows; the run dir was deleted
    shutil.rmtree(tmp_path / "run")
    spectra.Tracker(base_model("llama"), tmp_path / "run", mode="deferred", overwrite=True).close()
    assert not (tmp_path / "run.parquet").exists()


@pytest.mark.parametrize("case", list(OCCUPIED))
def test_compare_overwrite_refuses_what_is_not_the_run_before_importing_any(tmp_path, case):
    make, message = OCCUPIED[case]
    runs, models = tmp_path / "runs", tmp_path / "models"
    runs.mkdir()
    make(runs)
    for name, seed in (("base", 0), ("ok", 1), ("run", 2)):
        base_model("llama", seed=seed).save_pretrained(models / name)
    before = tree(runs)
    with pytest.raises(SpectraError) as exc:
        compare_runs(models / "base", [models / "ok", models / "run"], out=runs, overwrite=True)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert tree(runs) == before  # "ok", checked first, was not imported either
