"""Launching a test script under torchrun (2 processes, gloo, CPU) from pytest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

ENV = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def launch(command: list[str], env: dict, timeout: float = 120) -> int:
    """Run torchrun in its own process group; on timeout kill the group (no orphan ranks)."""
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode:
        print(err.decode()[-3000:])
    return proc.returncode


def torchrun(script, *args, env: dict | None = None, timeout: float = 120) -> int:
    """``torchrun --standalone --nproc_per_node 2 script args`` (exit code), one torch thread
    per process, gloo on the loopback interface."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), *map(str, args)]  # fmt: skip
    return launch(command, os.environ | ENV | (env or {}), timeout)
