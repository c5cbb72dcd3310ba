"""spectra's Lightning callback in one process: a fit that raises marks its run failed; a fit
resumed from a checkpoint continues the run from the checkpoint's step and equals an
uninterrupted fit; the training log holds what Lightning logged. (Under Lightning's FSDP
strategy: test_sharded.py.)"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from lightning_train import fit
from safetensors.torch import load_file

from spectra.engine import compute_run
from spectra.snapshots import open_run
from spectra.train_log import read_train_log


def test_failure_marks_the_run_and_resume_equals_an_uninterrupted_fit(tmp_path):
    fit(tmp_path / "whole", steps=6)
    with pytest.raises(RuntimeError, match="on purpose"):
        fit(tmp_path / "resumed", steps=6, fail_at=5)
    failed = open_run(tmp_path / "resumed" / "lora").manifest
    assert failed.failed and failed.extra["error"] == "RuntimeError: failing at step 5 on purpose"
    assert failed.steps == [0, 2, 4]

    (checkpoint,) = (tmp_path / "resumed" / "ckpt").glob("*step=2.ckpt")
    fit(tmp_path / "resumed", steps=6, resume=str(checkpoint))
    runs = [open_run(tmp_path / name / "lora") for name in ("whole", "resumed")]
    assert runs[1].manifest.resumed == [2] and runs[1].manifest.extra["status"] == "completed"
    assert runs[0].steps == runs[1].steps == [0, 2, 4, 6]
    for path in sorted(runs[0].path.glob("*.safetensors")):
        want, got = load_file(path), load_file(runs[1].path / path.name)
        assert all(torch.equal(got[key], tensor) for key, tensor in want.items()), path.name
    rows = [pd.read_parquet(compute_run(run.path)) for run in runs]
    pd.testing.assert_frame_equal(rows[0].drop(columns="run"), rows[1].drop(columns="run"))

    logs = [read_train_log(run.path) for run in runs]
    assert logs[0]["step"].tolist() == list(range(1, 7))
    assert {"loss", "lr", "train_loss"} <= set(logs[0].columns)
    assert logs[0]["lr"].eq(0.5).all() and logs[0]["loss"].equals(logs[0]["train_loss"])
    pd.testing.assert_frame_equal(logs[0], logs[1])
