"""Integrity: run identity, resume, failed runs, leftovers, file modes, symlinks, the cache."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import adamw, tmpfs, train
from runmaker import make_run_dir, paper_like
from safetensors.torch import load_file
from tiny_models import RandomTokens, base_model, with_method
from transformers import Trainer, TrainingArguments

import spectra
import spectra.engine as engine_module
from spectra.engine import compute_run
from spectra.errors import SpectraError
from spectra.follow import follow
from spectra.plotting import plot_runs
from spectra.run_files import MANIFEST, step_file
from spectra.snapshots import RunWriter, open_run
from spectra.store import read_run
from spectra.train_log import read_train_log

pytestmark = pytest.mark.slow  # multi-process, training or long runs: not in make test-fast
TARGETS = ("q_proj", "v_proj")
ROOT = Path(__file__).resolve().parents[1]


def rows_of(path) -> pd.DataFrame:
    return read_run(path)[0]


# --- run identity ---------------------------------------------------------------------------


def test_a_re_created_run_is_recomputed_not_mixed_with_the_old_rows(tmp_path):
    old = rows_of(compute_run(make_run_dir(tmp_path, "run", seed=0)))
    spectra.snapshots.remove_run(tmp_path / "run")
    new_dir = make_run_dir(tmp_path, "run", seed=1)  # tracked again under the same name
    new = rows_of(compute_run(new_dir))
    fresh = rows_of(compute_run(new_dir, tmp_path / "fresh.parquet"))
    pd.testing.assert_frame_equal(new, fresh)
    assert not new["delta_sigma"].equals(old["delta_sigma"])
    assert read_run(tmp_path / "run.parquet")[1]["run_id"] == open_run(new_dir).manifest.run_id


def test_a_run_without_identity_keeps_its_rows(tmp_path, monkeypatch):
    """A spectra 0.1 run directory (no run_id) and its Parquet file still go together."""
    run_dir = make_run_dir(tmp_path, "run")
    raw = json.loads((run_dir / MANIFEST).read_text())
    del raw["run_id"], raw["resumed"]
    (run_dir / MANIFEST).write_text(json.dumps(raw))
    out = compute_run(run_dir)
    assert read_run(out)[1]["run_id"] is None
    calls = []
    monkeypatch.setattr(engine_module.incremental, "matrix_task", lambda *a: calls.append(a))
    compute_run(run_dir)
    assert calls == []


# --- resume ---------------------------------------------------------------------------------


def lora_model():
    return with_method(base_model("llama", seed=0), "lora", TARGETS)


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    options = {"every": 2, "mode": "deferred", "run_name": "lora"}
    model = lora_model()
    opt = adamw(model)
    with spectra.Tracker(model, tmp_path / "whole", TARGETS, **options) as tracker:
        train(model, opt, tracker, range(1, 7))

    model = lora_model()
    opt = adamw(model)
    crash = pytest.raises(RuntimeError, match="crash")
    with crash, spectra.Tracker(model, tmp_path / "split", TARGETS, **options) as tracker:
        train(model, opt, tracker, range(1, 4))
        checkpoint = copy.deepcopy((model.state_dict(), opt.state_dict()))
        train(model, opt, tracker, range(4, 6), data_seed=100)  # the attempt diverges
        raise RuntimeError("crash after the last checkpoint")
    crashed = open_run(tmp_path / "split").manifest
    assert crashed.failed and crashed.extra["error"].startswith("RuntimeError: crash after")
    assert crashed.steps == [0, 2, 4]
    compute_run(tmp_path / "split")  # the crashed attempt's rows, as an inline worker makes them

    model = lora_model()
    model.load_state_dict(checkpoint[0])
    opt = adamw(model)
    opt.load_state_dict(checkpoint[1])
    tracker = spectra.Tracker(model, tmp_path / "split", TARGETS, start_step=3, **options)
    assert open_run(tmp_path / "split").steps == [0, 2]  # step 4 of the crashed attempt is gone
    assert not (tmp_path / "split" / step_file(4)).exists()
    assert set(rows_of(tmp_path / "split.parquet")["step"]) == {0, 2}
    assert read_train_log(tmp_path / "split")["step"].tolist() == [1, 2, 3]
    train(model, opt, tracker, range(4, 7))
    tracker.close()

    runs = [open_run(tmp_path / name) for name in ("whole", "split")]
    assert runs[0].steps == runs[1].steps == [0, 2, 4, 6]
    assert runs[1].manifest.resumed == [3] and not runs[1].manifest.failed
    logs = [read_train_log(tmp_path / name) for name in ("whole", "split")]
    pd.testing.assert_frame_equal(logs[0], logs[1])
    rows = [rows_of(compute_run(tmp_path / name)) for name in ("whole", "split")]
    pd.testing.assert_frame_equal(rows[0], rows[1])


def test_an_engine_running_across_a_resume_drops_the_discarded_rows(tmp_path):
    run_dir = make_run_dir(tmp_path, "run", steps=(0, 1, 2))
    engine = engine_module.Engine(run_dir)
    assert engine.update() == 3
    manifest = open_run(run_dir).manifest
    writer = RunWriter(run_dir, manifest, resume=True)
    writer.discard_after(1)
    parts = open_run(run_dir).parts(1, "model.layers.0.self_attn.q_proj")
    writer.write_step(2, {"model.layers.0.self_attn.q_proj": {"weight": 2 * parts["weight"]}})
    assert engine.update() == 1  # step 2 again, from the resumed run's snapshot
    fresh = rows_of(compute_run(run_dir, tmp_path / "fresh.parquet"))
    pd.testing.assert_frame_equal(rows_of(engine.out), fresh)


# --- failed runs ----------------------------------------------------------------------------


class FailingTrainer(Trainer):
    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.state.global_step == 3:
            raise RuntimeError("loss exploded")
        return super().training_step(model, inputs, num_items_in_batch)


def test_a_trainer_that_raises_marks_the_run_failed(tmp_path):
    callback = spectra.SpectraCallback(tmp_path / "run", TARGETS, every=2, mode="deferred")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=2,
        report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
    )  # fmt: skip
    trainer = FailingTrainer(model=lora_model(), args=args, train_dataset=RandomTokens(),
                             callbacks=[callback])  # fmt: skip
    with pytest.raises(RuntimeError, match="loss exploded"):
        trainer.train()
    manifest = open_run(tmp_path / "run").manifest
    assert manifest.finished and manifest.failed
    assert manifest.extra["error"] == "RuntimeError: loss exploded"
    assert manifest.steps == [0, 2]
    with pytest.raises(SpectraError, match=r"failed \(RuntimeError: loss exploded\)"):
        follow(tmp_path / "run")


SCRIPT_DIES = """
import sys
import spectra
from tiny_models import base_model
tracker = spectra.Tracker(base_model("llama"), sys.argv[1], every=1, mode="deferred")
tracker.step(1, loss=1.0)
raise ValueError("data loader broke")
"""


def test_a_process_that_dies_of_an_exception_marks_the_run_failed(tmp_path):
    script = [sys.executable, "-c", SCRIPT_DIES, str(tmp_path / "run")]
    done = subprocess.run(script, capture_output=True, text=True, env=env())
    assert done.returncode == 1 and "ValueError: data loader broke" in done.stderr
    manifest = open_run(tmp_path / "run").manifest
    assert manifest.failed and manifest.extra["error"] == "ValueError: data loader broke"
    assert manifest.steps == [0, 1]


SCRIPT_START_FAILS = """
import sys
import spectra
import spectra.callback.gather as gather
from tiny_models import base_model

def broken(self, modules, keep=True):
    raise RuntimeError("gather failed")

gather.LocalReader.frozen = broken
spectra.Tracker(base_model("llama"), sys.argv[1], every=1, mode="inline")
"""


def test_a_tracker_that_fails_to_start_marks_the_run_failed_once(tmp_path):
    """An error while the tracker takes its step-0 snapshot (a gather, an interrupt) is raised
    as it is; the run says why it ended; nothing fails again when the process exits."""
    script = [sys.executable, "-c", SCRIPT_START_FAILS, str(tmp_path / "run")]
    done = subprocess.run(script, capture_output=True, text=True, env=env())
    assert done.returncode == 1 and "RuntimeError: gather failed" in done.stderr
    assert "Error in sys.excepthook" not in done.stderr and "AttributeError" not in done.stderr
    manifest = open_run(tmp_path / "run").manifest
    assert manifest.failed and manifest.extra["error"] == "RuntimeError: gather failed"


def test_follow_stops_when_training_fails(tmp_path):
    model = lora_model()
    tracker = spectra.Tracker(model, tmp_path / "run", TARGETS, every=1, mode="deferred")

    def training():
        train(model, adamw(model), tracker, range(1, 3))
        time.sleep(0.3)
        tracker.close(error="RuntimeError: out of memory")

    thread = threading.Thread(target=training)
    thread.start()
    with pytest.raises(SpectraError, match=r"failed .*out of memory.*metrics are in"):
        follow(tmp_path / "run", poll=0.05)
    thread.join()
    assert set(rows_of(tmp_path / "run.parquet")["step"]) == {0, 1, 2}


SCRIPT_KILLED = """
import os, signal, sys
import spectra
from tiny_models import base_model
tracker = spectra.Tracker(base_model("llama"), sys.argv[1], every=1, mode="deferred")
tracker.step(1, loss=1.0)
tracker.flush()
os.kill(os.getpid(), getattr(signal, sys.argv[2]))
"""


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_follow_stops_when_the_training_process_is_killed(tmp_path, signal_name):
    """Killed by a signal (the OOM killer, scancel), a training marks nothing: the follower
    finds its writing process gone, computes what was written and stops."""
    script = [sys.executable, "-c", SCRIPT_KILLED, str(tmp_path / "run"), signal_name]
    done = subprocess.run(script, capture_output=True, text=True, env=env())
    assert done.returncode < 0  # died of the signal
    manifest = open_run(tmp_path / "run").manifest
    assert not manifest.finished and manifest.abandoned and manifest.steps == [0, 1]
    with pytest.raises(SpectraError, match=r"ended without finishing it .* is gone: killed"):
        follow(tmp_path / "run", poll=0.05)
    assert set(rows_of(tmp_path / "run.parquet")["step"]) == {0, 1}


def test_a_live_or_foreign_writer_is_waited_for(tmp_path):
    from spectra.snapshots import WritingProcess as Writer

    here = Writer.this_process()
    assert not here.gone()  # this very process
    assert not Writer("another-host", 2**22 + 1, here.namespace).gone()
    assert not Writer(here.host, 2**22 + 1, (here.namespace or 0) + 1).gone()  # other container
    assert Writer(here.host, 2**22 + 1, here.namespace).gone()  # above pid_max: no such process


def test_leftover_temporary_files_are_removed_when_the_run_is_opened_again(tmp_path):
    run_dir = make_run_dir(tmp_path, "run")
    leftover = run_dir / f".{step_file(2)}.0a1b2c3d.tmp"
    leftover.write_bytes(b"half a snapshot")
    RunWriter(run_dir, open_run(run_dir).manifest, resume=True)
    assert not leftover.exists()


# --- overwrite ------------------------------------------------------------------------------


def test_overwrite_replaces_a_run_and_its_parquet_file(tmp_path):
    model = base_model("llama")
    with spectra.Tracker(model, tmp_path / "run", every=1, mode="deferred") as tracker:
        tracker.step(1)
    compute_run(tmp_path / "run")
    first = open_run(tmp_path / "run").manifest.run_id
    with pytest.raises(SpectraError, match="already holds a run"):
        spectra.Tracker(model, tmp_path / "run", mode="deferred")
    with spectra.Tracker(model, tmp_path / "run", mode="deferred", overwrite=True):
        pass
    manifest = open_run(tmp_path / "run").manifest
    assert manifest.run_id != first and manifest.steps == [0]
    assert not (tmp_path / "run.parquet").exists()


def test_overwrite_never_removes_what_is_not_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    (tmp_path / "run.parquet").write_text("not a spectra file")
    with pytest.raises(SpectraError, match=r"'notes\.txt', which spectra did not"):
        spectra.Tracker(base_model("llama"), tmp_path / "run", mode="deferred", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "run.parquet").read_text() == "not a spectra file"


def test_callback_overwrite(tmp_path):
    make_run_dir(tmp_path, "run")
    callback = spectra.SpectraCallback(tmp_path / "run", TARGETS, mode="deferred", overwrite=True)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=1, report_to=[],
                             use_cpu=True, disable_tqdm=True, save_strategy="no")  # fmt: skip
    Trainer(model=lora_model(), args=args, train_dataset=RandomTokens(),
            callbacks=[callback]).train()  # fmt: skip
    assert open_run(tmp_path / "run").manifest.method == "lora"


# --- files: modes, symlinks, the cache, a full disk -----------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_are_created_with_the_users_umask(tmp_path, svd_cache, umask):
    old = os.umask(umask)
    try:
        run_dir = make_run_dir(tmp_path / "runs", "run", "lowrank")
        out = compute_run(run_dir)
        figures = plot_runs(paper_like(tmp_path / "paper"), "2,3", tmp_path / "figs").written
    finally:
        os.umask(old)
    bundle = tmp_path / "figs" / "plotly.min.js"  # the plotly.js the HTML files share
    files = [*run_dir.iterdir(), out, *svd_cache.rglob("*.safetensors"), *figures, bundle]
    assert len(files) >= 8
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o777 & ~umask


def test_an_output_that_is_a_symlink_is_written_through(tmp_path):
    run_dir = make_run_dir(tmp_path / "runs", "run")
    (tmp_path / "shared").mkdir()
    link = tmp_path / "runs" / "run.parquet"
    link.symlink_to(tmp_path / "shared" / "run.parquet")  # dangling until written
    compute_run(run_dir)
    assert link.is_symlink() and len(rows_of(tmp_path / "shared" / "run.parquet")) == 2
    figure = tmp_path / "figs" / "figure2.html"
    figure.parent.mkdir()
    figure.symlink_to(tmp_path / "shared" / "figure2.html")
    plot_runs([link], "2", tmp_path / "figs")
    assert figure.is_symlink() and (tmp_path / "shared" / "figure2.html").stat().st_size > 1000


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong shape"])
def test_a_damaged_cache_entry_is_computed_again(tmp_path, svd_cache, damage):
    run_dir = make_run_dir(tmp_path, "run")
    want = rows_of(compute_run(run_dir))
    (entry,) = svd_cache.rglob("*.safetensors")
    data = entry.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": b"\x00" * 64,
               "wrong shape": data.replace(b"[6,4]", b"[4,6]", 1)}[damage]  # fmt: skip
    entry.write_bytes(damaged)
    got = rows_of(compute_run(run_dir, tmp_path / "again.parquet"))
    pd.testing.assert_frame_equal(got, want)
    assert load_file(entry)["u"].shape == (6, 4)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (needs root); skipped where it cannot be mounted."""
    with tmpfs(tmp_path / "disk", "size=256k") as mount:
        yield mount


def test_a_read_only_file_system_is_one_error(tmp_path, tiny_disk, cli):
    run_dir = make_run_dir(tmp_path, "run")
    kept = tiny_disk / "run.parquet"
    compute_run(run_dir, kept)
    before = kept.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    spectra.snapshots.remove_run(run_dir)
    make_run_dir(tmp_path, "run", seed=5)
    code, _, err = cli(["compute", run_dir, "--out", kept])
    assert code == 2 and err == f"error: cannot write {kept}: Read-only file system\n"
    assert kept.read_bytes() == before


def test_a_full_disk_is_one_error_and_keeps_what_was_there(tmp_path, tiny_disk, cli):
    run_dir = make_run_dir(tmp_path, "run")
    kept = tiny_disk / "run.parquet"
    compute_run(run_dir, kept)
    before = kept.read_bytes()
    fd = os.open(tiny_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last block
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    spectra.snapshots.remove_run(run_dir)
    make_run_dir(tmp_path, "run", seed=5)  # a new identity: every row is computed again
    code, _, err = cli(["compute", run_dir, "--out", kept])
    assert code == 2 and err.startswith("error: cannot write") and "No space left" in err
    assert kept.read_bytes() == before
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler", "run.parquet"]


# --- worker processes die with their parent ---------------------------------------------------


def env() -> dict:
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def gone_within(pids, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


POOL = """
import time
from spectra.engine import local_pool
with local_pool(2) as pool:
    list(pool.map(time.sleep, [0.5, 0.5]))
    print(*pool._processes, flush=True)
    time.sleep(300)
"""

INLINE = """
import sys, time
import spectra
from tiny_models import base_model
tracker = spectra.Tracker(base_model("llama"), sys.argv[1], every=1, poll=0.1)
print(tracker._worker.process.pid, flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("script", ["pool", "inline"])
def test_workers_exit_when_their_parent_is_killed(tmp_path, script):
    code = {"pool": POOL, "inline": INLINE}[script]
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")],
                              stdout=subprocess.PIPE, text=True, env=env())  # fmt: skip
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert workers and all(alive(pid) for pid in workers)
        if script == "inline":  # wait until the worker computes, then kill its parent
            deadline = time.monotonic() + 120
            while not (tmp_path / "run.parquet").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        parent.kill()
        parent.wait()
        assert gone_within(workers, 10), "worker processes outlived their parent"
    finally:
        parent.kill()
