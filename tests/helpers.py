"""Helpers the tests share: relative errors, a plain training loop, torchrun launches, and
special files (FIFOs, symlink loops, links out of a folder) that inputs must refuse."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from tiny_models import batch


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖_F / ‖b‖_F in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b))


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW (lr 1e-2) over the trainable parameters."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)


def train(model, opt, tracker, steps, data_seed: int = 0, on_step=None, **logs) -> None:
    """Optimizer steps on random tokens, each recorded by ``tracker.step`` with its loss and
    ``logs``; ``on_step(step)`` after each."""
    for step in steps:
        x = batch(step + data_seed)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        tracker.step(step, loss=loss.detach(), **logs)
        if on_step is not None:
            on_step(step)


def torchrun(script, *args, out: Path, nproc: int = 2, timeout: float = 180,
             env: dict | None = None) -> int:  # fmt: skip
    """Run ``script *args out`` under torchrun (gloo on the CPU) in its own process group, with
    ``env`` added to the environment; on timeout the group is killed (no orphan ranks). The
    ranks' stderr is printed when they fail. A rank killed by SIGABRT inside gloo (seen once
    in CI) is not the script's failure: ``out`` is emptied and the run tried once more."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"} | (env or {})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), str(script), *map(str, args), str(out)]  # fmt: skip
    code, err = _launch(command, env, timeout)
    if code and "(SIGABRT) received by PID" in err:
        print(err[-8000:], "\na rank aborted (SIGABRT): emptying the output, trying once more")
        existed = Path(out).is_dir()
        shutil.rmtree(out, ignore_errors=True)
        if existed:
            Path(out).mkdir()
        code, err = _launch(command, env, timeout)
    if code:
        print(err[-8000:])  # with a fatal signal's stacks (ranks.watch)
    return code


def _launch(command: list[str], env: dict, timeout: float) -> tuple[int, str]:
    """(return code, stderr) of ``command`` in its own process group, killed on timeout."""
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, err.decode(errors="replace")


def as_foreground_job() -> None:
    """``preexec_fn`` of a child that a test signals as a terminal's Ctrl-C would: SIGINT at
    its default, as a shell's foreground job has it (a test run started in the background, as
    ``make test &``, would otherwise pass SIGINT ignored on to every child, as POSIX says)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fifo(path: Path) -> None:
    """``path`` replaced by a FIFO (its reader would wait for a writer forever)."""
    if path.exists():
        path.unlink()
    os.mkfifo(path)


def loop(path: Path) -> None:
    """``path`` replaced by a symlink to itself."""
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.symlink_to(path.name)


def moved_out(path: Path) -> None:
    """``path`` moved to a sibling folder ``outside-<name>`` and replaced by a symlink to it."""
    away = path.parent.parent / f"outside-{path.parent.name}" / path.name
    away.parent.mkdir()
    shutil.move(path, away)
    path.symlink_to(os.path.relpath(away, path.parent))


@contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mount`` with ``options`` (needs root; the test is skipped where it
    cannot be mounted), unmounted after the block."""
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        gc.collect()  # files a failed writer left open keep the mount busy until collected
        subprocess.run(["umount", "--lazy", str(mount)], check=True)
