"""Interrupts and half states, with real processes and real signals (every wait bounded): Ctrl-C
and SIGTERM end `compute --workers 2` at once (queued tasks cancelled, workers ended); an
import ended by SIGTERM removes its hidden staging folder, and one killed outright has it
removed by the next import; temporary files of a killed writer do not outlive a reopening; a
`track` ended by SIGTERM keeps its snapshots and says how to start again."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from adapter_maker import adapter_tensors, make_adapter, rank_three
from helpers import as_foreground_job
from runmaker import LAYER, make_run_dir
from safetensors.torch import save_file

from spectra.engine import compute_run
from spectra.run_files import step_file
from spectra.snapshots import open_run
from spectra.store import read_run

pytestmark = pytest.mark.slow  # subprocesses
SPECTRA = [sys.executable, "-m", "spectra"]
WAIT_S = 120  # the most any step here waits; a fixed spectra needs seconds
STEPS = 100


def start(*args, cwd: Path) -> subprocess.Popen:
    """``spectra ARGS`` in its own process group (as a shell runs a foreground job)."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*SPECTRA, *map(str, args)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=as_foreground_job)  # fmt: skip


def wait_for(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    """Wait (bounded) for the process and every process of its group; kill them on timeout."""
    try:
        out, err = proc.communicate(timeout=WAIT_S)
        wait_for(lambda: group_gone(proc.pid), "the worker processes to end", timeout=30)
    finally:
        if not group_gone(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> Path:
    """A dense run of 100 steps of a 400×400 layer: 100 tasks, seconds to minutes of work."""
    from spectra.snapshots import Manifest, RunWriter, Target

    run_dir = tmp_path_factory.mktemp("long") / "run"
    g = torch.Generator().manual_seed(0)
    writer = RunWriter(run_dir, Manifest("run", "ft", {LAYER: Target("dense", (400, 400))}))
    for step in range(STEPS + 1):
        writer.write_step(step, {LAYER: {"weight": torch.randn(400, 400, generator=g)}})
    writer.finish()
    return run_dir


def started(log: Path) -> int:
    """How many tasks have started (counted_cli.py logs each)."""
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize(("how", "code"), [("ctrl-c", 130), ("sigterm", 143)])
def test_an_interrupt_ends_compute_with_workers_at_once(long_run, tmp_path, how, code):
    log = tmp_path / "tasks.log"
    env = os.environ | {"OMP_NUM_THREADS": "1", "SPECTRA_TASK_LOG": str(log),
                        "SPECTRA_TASK_SECONDS": "0.1"}  # 101 tasks: ≥ 5 s on 2 workers  # fmt: skip
    command = [
        sys.executable,
        str(Path(__file__).parent / "counted_cli.py"),
        "compute",
        str(long_run),
        "--workers",
        "2",
        "--out",
        str(tmp_path / "run.parquet"),
    ]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=as_foreground_job)  # fmt: skip
    wait_for(lambda: started(log) >= 20, "the workers to compute")
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # the terminal signals the whole foreground group
    else:
        proc.send_signal(signal.SIGTERM)  # kill PID: the main process only
    at_signal = started(log)
    returncode, _, stderr = finish(proc)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, (returncode, stderr)
    line = lines[0]
    assert returncode == code and line.startswith("interrupted: the rows of"), stderr
    assert "computed so far are kept" in line
    kept, _ = read_run(tmp_path / "run.parquet")  # the rows finished before the signal
    assert 0 < len(kept) <= started(log)
    assert started(log) <= at_signal + 2 < STEPS + 1  # at most the tasks then being handed out
    assert not list(tmp_path.glob(".*.tmp"))


def write_model(folder: Path, hidden: int, seed: int) -> None:
    """A Llama-like model folder holding only the q and v projections of one block."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {f"model.layers.0.self_attn.{m}.weight": torch.randn(hidden, hidden, generator=g)
               for m in ("q_proj", "v_proj")}  # fmt: skip
    save_file(tensors, folder / "model.safetensors")
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
              "hidden_size": hidden, "num_hidden_layers": 1, "num_attention_heads": 8}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """A base and a Trainer output folder of 40 checkpoints (hard links of 2 weight files)."""
    root = tmp_path_factory.mktemp("trainer")
    write_model(root / "base", 1024, 0)
    write_model(root / "tuned", 1024, 1)
    for step in range(1, 41):
        folder = root / "out" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        source = root / ("tuned" if step % 2 else "base")
        for name in ("model.safetensors", "config.json"):
            os.link(source / name, folder / name)
    return root


def staging(runs: Path) -> list[Path]:
    return list(runs.glob(".out.importing-*"))


def test_sigterm_mid_import_leaves_no_staging_folder(checkpoints, tmp_path):
    runs = tmp_path / "runs"
    proc = start("import", checkpoints / "out", "--base", checkpoints / "base", "--out", runs,
                 cwd=tmp_path)  # fmt: skip
    wait_for(lambda: staging(runs), "the staging folder")
    proc.send_signal(signal.SIGTERM)
    returncode, _, stderr = finish(proc)
    assert (returncode, stderr.strip()) == (
        143,
        "interrupted: nothing was written; the same command imports again",
    ), stderr
    assert not staging(runs) and not (runs / "out").exists()


def test_a_killed_import_is_cleaned_up_by_the_next(checkpoints, tmp_path):
    runs = tmp_path / "runs"
    args = ("import", checkpoints / "out", "--base", checkpoints / "base", "--out", runs)
    proc = start(*args, cwd=tmp_path)
    wait_for(lambda: staging(runs) and list(staging(runs)[0].glob("step_*")), "a step")
    os.killpg(proc.pid, signal.SIGKILL)  # no cleanup at all
    finish(proc)
    assert staging(runs)
    again = start(*args, cwd=tmp_path)
    returncode, _, stderr = finish(again)
    assert returncode == 0, stderr
    assert not staging(runs) and open_run(runs / "out").steps == list(range(41))


def test_temporary_files_of_a_killed_writer_do_not_outlive_a_reopening(tmp_path):
    from tiny_models import base_model

    import spectra

    model = base_model("llama")
    with spectra.Tracker(model, tmp_path / "run", every=1, mode="deferred") as tracker:
        tracker.step(1)
    compute_run(tmp_path / "run")
    left = [tmp_path / "run" / f".{step_file(2)}.0a1b2c3d.tmp",  # spectra's, then safetensors'
            tmp_path / "run" / ".tmpAb12Cd", tmp_path / ".run.parquet.4e5f6a7b.tmp"]  # fmt: skip
    for path in left:
        path.write_bytes(b"half a file")
    spectra.Tracker(model, tmp_path / "run", every=1, mode="deferred", start_step=1).close()
    assert not [p for p in left if p.exists()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.parquet"]


def test_compute_removes_temporary_files_of_a_finished_run(tmp_path):
    run_dir = make_run_dir(tmp_path, "run")
    left = [run_dir / f".{step_file(1)}.0a1b2c3d.tmp", run_dir / ".tmpAb12Cd"]
    for path in left:
        path.write_bytes(b"half a file")
    compute_run(run_dir)
    assert not [p for p in left if p.exists()]


def screen(raw: str) -> list[str]:
    """The non-empty lines a terminal shows after ``raw``: enough of VT100 for rich's live
    display (carriage return, erase line, cursor up; other sequences ignored)."""
    lines, row = [""], 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|\r|\n)", raw):
        if token == "\n":
            row += 1
            lines += [""] * (row + 1 - len(lines))
        elif token == "\r" or token == "\x1b[2K":
            lines[row] = "" if token == "\x1b[2K" else lines[row]
        elif token.startswith("\x1b[") and token.endswith("A"):
            row = max(0, row - int(token[2:-1] or 1))
        elif not token.startswith("\x1b"):
            lines[row] += token
    return [line.strip() for line in lines if line.strip()]


def on_a_terminal(*args, cwd: Path) -> tuple[int, str]:
    """``spectra ARGS`` in a fresh process whose stdout and stderr are a terminal (a pty)."""
    main, child = pty.openpty()
    env = os.environ | {"OMP_NUM_THREADS": "1", "TERM": "xterm", "COLUMNS": "250"}
    proc = subprocess.Popen([*SPECTRA, *map(str, args)], cwd=cwd, env=env, stdin=child,
                            stdout=child, stderr=child, close_fds=True)  # fmt: skip
    os.close(child)
    raw = b""
    while True:
        try:
            chunk = os.read(main, 1 << 16)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(main)
    return proc.wait(timeout=WAIT_S), raw.decode("utf-8", "replace")


def test_a_refused_import_is_one_line_on_a_terminal(tmp_path):
    """Refused once its progress bar is up: no bar left, no bitsandbytes or peft line."""
    from spectra.recipes import DEFAULT_MODEL

    make_adapter(DEFAULT_MODEL, tmp_path / "adapter")
    adapter_tensors(tmp_path / "adapter", rank_three)
    code, raw = on_a_terminal("import", "adapter", "--base", DEFAULT_MODEL, cwd=tmp_path)
    (line,) = screen(raw)
    assert code == 2 and line.startswith("error:") and "has rank 3" in line, raw
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _blocked() -> set:
    return signal.pthread_sigmask(signal.SIG_BLOCK, set())


def test_workers_never_take_ctrl_c_even_while_starting():
    """A worker still importing torch when Ctrl-C reaches the process group printed a
    traceback: workers start with SIGINT blocked; the parent's mask is left as it was."""
    from spectra.engine.workers import local_pool

    with local_pool(2) as pool:
        masks = [pool.submit(_blocked).result(timeout=WAIT_S) for _ in range(2)]
    assert all(signal.SIGINT in mask for mask in masks)
    assert signal.SIGINT not in _blocked()


def test_sigterm_mid_track_keeps_the_snapshots_and_says_how_to_start_again(tmp_path):
    """`kill PID` of a `spectra track` (a scheduler's preemption): one line, exit 143, the
    stopped run's snapshots kept and marked failed, the next method never started."""
    proc = start("track", "--method", "ft,lora", "--steps", "2000", "--every", "2",
                 "--out", "runs", cwd=tmp_path)  # fmt: skip
    ft = tmp_path / "runs" / "ft"

    def snapshots() -> int:
        try:
            return len(json.loads((ft / "manifest.json").read_text())["steps"])
        except (OSError, ValueError, KeyError):
            return 0

    wait_for(lambda: snapshots() >= 3, "ft's first snapshots")
    proc.send_signal(signal.SIGTERM)  # the main process only, as kill does
    returncode, _, stderr = finish(proc)
    lines = stderr.strip().splitlines()
    assert returncode == 143 and len(lines) == 1, stderr
    run = open_run(ft)
    assert run.manifest.failed and 3 <= len(run.steps) < 1001
    assert lines[0] == (
        f"interrupted: ft stopped (its snapshots: up to step {run.steps[-1]} in runs/ft, "
        "marked failed); spectra track --overwrite starts again"
    )
    assert not (tmp_path / "runs" / "lora").exists()
    rows, _ = read_run(compute_run(ft))  # what was kept is a whole run to compute
    assert sorted(set(rows["step"])) == run.steps
