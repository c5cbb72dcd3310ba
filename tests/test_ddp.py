"""DDP (torchrun, 2 processes, gloo on CPU): only rank 0 writes; results equal one process."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from ddp_train import STEPS, train
from helpers import torchrun

from spectra.engine import compute_run
from spectra.snapshots import Distributed, open_run

pytestmark = pytest.mark.slow  # multi-process, training or long runs: not in make test-fast

SCRIPT = Path(__file__).with_name("ddp_train.py")


def test_ddp_rank0_writes_and_matches_single_process(tmp_path):
    assert torchrun(SCRIPT, out=tmp_path / "ddp") == 0
    train(tmp_path / "single")

    runs = [open_run(tmp_path / name) for name in ("ddp", "single")]
    assert runs[0].steps == runs[1].steps == [0, 2, STEPS]
    assert runs[0].manifest.finished
    assert runs[0].manifest.distributed == Distributed("ddp", 2, "parameters")
    assert runs[1].manifest.distributed is None
    rows = [pd.read_parquet(compute_run(run.path)) for run in runs]
    assert len(rows[0]) == len(rows[1]) == 3 * 4
    for name in ("delta_sigma", "delta_d", "delta_d_matched", "cond_w", "cond_p", "fro_norm"):
        assert rows[0][name].tolist() == pytest.approx(
            rows[1][name].tolist(), rel=1e-5, abs=1e-9, nan_ok=True
        )
    assert rows[0]["delta_d"].max() > 1e-4  # the weights did move
