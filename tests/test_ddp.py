"""DDP (torchrun, 2 processes, gloo on CPU): only rank 0 writes; results equal one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from ddp_train import STEPS, train

from spectra.engine import compute_run
from spectra.snapshots import open_run

SCRIPT = Path(__file__).with_name("ddp_train.py")


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


def test_ddp_rank0_writes_and_matches_single_process(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(SCRIPT), str(tmp_path / "ddp")]  # fmt: skip
    assert launch(command, env) == 0
    train(tmp_path / "single")

    runs = [open_run(tmp_path / name) for name in ("ddp", "single")]
    assert runs[0].steps == runs[1].steps == [0, 2, STEPS]
    assert runs[0].manifest.finished
    rows = [pd.read_parquet(compute_run(run.path)) for run in runs]
    assert len(rows[0]) == len(rows[1]) == 3 * 4
    for name in ("delta_sigma", "delta_d", "delta_d_matched", "cond_w", "cond_p", "fro_norm"):
        assert rows[0][name].tolist() == pytest.approx(
            rows[1][name].tolist(), rel=1e-5, abs=1e-9, nan_ok=True
        )
    assert rows[0]["delta_d"].max() > 1e-4  # the weights did move
