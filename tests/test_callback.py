"""Tracker and SpectraCallback: snapshots, Parquet rows, training log, inline mode, resume, NaN."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from helpers import adamw
from helpers import train as run_steps
from rich.console import Console
from test_metrics import reference_update
from tiny_models import (
    RandomTokens,
    base_model,
    reference_principal,
    reference_weights,
    with_method,
)
from transformers import Trainer, TrainerCallback, TrainingArguments

import spectra
import spectra.follow
from spectra.callback.worker import InlineWorker
from spectra.engine import FT_RANK, Engine, compute_run
from spectra.errors import SpectraError
from spectra.follow import follow
from spectra.metrics import drift
from spectra.run_files import TRAIN_LOG
from spectra.snapshots import open_run
from spectra.train_log import from_trainer as trainer_log

TARGETS = ("q_proj", "v_proj")
METRIC_TOL = 1e-9
UPDATE = ("delta_m", "delta_dir", "amplification")  # exact to 1e-10 on every method


def train(model, tracker, steps: range, every: int, method: str, refs: dict | None = None):
    """A plain AdamW loop on random tokens; ``refs[step]`` collects float64 references."""

    def record(step: int) -> None:
        tracker.log(step, custom=step * 2)
        if refs is not None and step % every == 0:
            refs[step] = references(model, method, tracker.layers)

    run_steps(model, adamw(model), tracker, steps, on_step=record, grad_norm=torch.tensor(1.5))


def references(model, method: str, layers) -> dict:
    weights = reference_weights(model, method, layers)
    principal = reference_principal(model, method, layers) if method != "ft" else {}
    return {"weight": weights, "principal": principal, "ortho": orthonormality(layers)}


def orthonormality(layers) -> dict[str, float]:
    """‖BᵀB − I‖_F + ‖AAᵀ − I‖_F of SORSA layers, in float64."""
    out = {}
    for path, module in layers.items():
        if hasattr(module, "sorsa_A"):
            b, a = module.sorsa_B.detach().double(), module.sorsa_A.detach().double()
            eye = torch.eye(a.shape[0], dtype=torch.float64)
            out[path] = float(torch.dist(b.T @ b, eye) + torch.dist(a @ a.T, eye))
    return out


def expected_row(refs: dict, step: int, layer: str, method: str) -> dict:
    """The metrics of one row from the float64 references, without the run directory."""
    w0, wt = refs[0]["weight"][layer], refs[step]["weight"][layer]
    row = drift(w0, wt)
    rank = FT_RANK if method == "ft" else 4
    row |= reference_update(w0.numpy(), wt.numpy(), rank) if step else {
        "delta_m": 0.0, "delta_dir": 0.0, "amplification": None
    }  # fmt: skip
    if method == "ft":
        return row | {"cond_p": None, "ortho_err": None}
    p = refs[step]["principal"][layer]
    s = torch.linalg.svdvals(p)[:4]  # rank r = 4
    row["cond_p"] = math.nan if float(s[0]) == 0 else float(s[0] / s[-1])
    row["ortho_err"] = refs[step]["ortho"].get(layer)
    return row


def assert_rows_match(rows: pd.DataFrame, refs: dict, method: str, layers) -> None:
    assert sorted(set(rows["step"])) == sorted(refs)
    assert set(rows["layer"]) == set(layers)
    for row in rows.to_dict("records"):
        want = expected_row(refs, row["step"], row["layer"], method)
        for name, value in want.items():
            got = row[name]
            if isinstance(value, list):  # intruder_overlap
                np.testing.assert_allclose(got, value, rtol=0, atol=1e-12, err_msg=name)
            elif value is None:
                assert got is None or math.isnan(got), (name, row["step"])
            elif math.isnan(value):
                assert math.isnan(got), (name, row["step"])
            else:
                rel = {"cond_p": 1e-6, **dict.fromkeys(UPDATE, 1e-10)}.get(name, METRIC_TOL)
                assert got == pytest.approx(value, rel=rel, abs=1e-12), (name, row["step"])


def read_rows(path) -> pd.DataFrame:
    return pd.read_parquet(path)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ft", "lora", "pissa", "dora", "adalora", "sorsa"])
def test_deferred_rows_equal_independent_float64_metrics(tmp_path, method):
    model = with_method(base_model("llama"), method, TARGETS)
    refs = {}
    with spectra.Tracker(model, tmp_path / "run", TARGETS, every=2, mode="deferred") as tracker:
        refs[0] = references(model, method, tracker.layers)
        train(model, tracker, range(1, 6), 2, method, refs)
        refs[5] = references(model, method, tracker.layers)  # the last step, written by close()
    run = open_run(tmp_path / "run")
    assert run.steps == [0, 2, 4, 5] and run.manifest.finished
    assert run.manifest.method == method and run.manifest.every == 2
    rows = read_rows(compute_run(tmp_path / "run"))
    assert_rows_match(rows, refs, method, tracker.layers)
    assert rows["ortho_err"].notna().all() == (method == "sorsa")
    log = pq.read_table(tmp_path / "run" / TRAIN_LOG).to_pandas()
    assert list(log.columns[:5]) == ["step", "loss", "reg_loss", "grad_norm", "lr"]
    assert log["step"].tolist() == [1, 2, 3, 4, 5]
    assert log["custom"].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert log["loss"].notna().all() and log["reg_loss"].isna().all()


def wait_for_rows(path, step: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and step in set(read_rows(path)["step"]):
            return
        time.sleep(0.1)
    raise AssertionError(f"no rows for step {step} in {path} after {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("worker", ["process", "thread"])
def test_inline_parquet_grows_during_training(tmp_path, worker):
    method = "lora" if worker == "process" else "sorsa"
    model = with_method(base_model("llama"), method, TARGETS)
    refs = {}
    out = tmp_path / "run.parquet"
    tracker = spectra.Tracker(model, tmp_path / "run", TARGETS, every=2, worker=worker, poll=0.1)
    refs[0] = references(model, method, tracker.layers)
    train(model, tracker, range(1, 3), 2, method, refs)
    wait_for_rows(out, 2)  # computed while the run is still open
    assert not open_run(tmp_path / "run").manifest.finished
    train(model, tracker, range(3, 6), 2, method, refs)
    refs[5] = references(model, method, tracker.layers)
    tracker.close()
    rows = read_rows(out)
    assert_rows_match(rows, refs, method, tracker.layers)
    assert len(rows) == 4 * 4


@pytest.mark.slow
def test_worker_process_imports_this_spectra_without_pythonpath(tmp_path, monkeypatch):
    """The worker's PYTHONPATH starts with the folder that holds this ``spectra`` package."""
    seen = {}
    with monkeypatch.context() as patch:
        patch.delenv("PYTHONPATH", raising=False)
        patch.setattr(subprocess, "Popen", lambda cmd, env, **_: seen.update(cmd=cmd, env=env))
        InlineWorker(tmp_path, 0.1, "process")
    assert seen["cmd"][1:3] == ["-m", "spectra.follow"]
    found = subprocess.run(
        [sys.executable, "-c", "import spectra.follow as f; print(f.__file__)"],
        env=seen["env"], cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(found).resolve() == Path(spectra.follow.__file__).resolve()


def test_nan_weight_is_recorded_not_fatal(tmp_path):
    model = base_model("llama")
    tracker = spectra.Tracker(model, tmp_path / "run", TARGETS, every=1, mode="deferred")
    with pytest.warns(RuntimeWarning, match="NaN or Inf weights at step 1"):
        with torch.no_grad():
            model.model.layers[1].self_attn.v_proj.weight[0, 0] = math.nan
        tracker.step(1, loss=math.nan)
        tracker.flush()
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight[0, 0] = 0.0
    tracker.step(2, loss=1.0)
    tracker.close()
    run = open_run(tmp_path / "run")
    assert run.steps == [0, 1, 2]
    assert run.manifest.extra["nonfinite"] == [[1, "model.layers.1.self_attn.v_proj"]]
    engine = Engine(tmp_path / "run")
    assert engine.update() == 3 * 4 - 1
    assert engine.nonfinite == {(1, "model.layers.1.self_attn.v_proj")}


def test_bad_targets_and_unwritable_output_fail_before_training(tmp_path):
    model = base_model("llama")
    with pytest.raises(SpectraError, match="q_proj, up_proj, v_proj"):
        spectra.Tracker(model, tmp_path / "run", ("query",), mode="deferred")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpectraError, match="cannot create run directory"):
        spectra.Tracker(model, blocker / "run", TARGETS, mode="deferred")
    with pytest.raises(SpectraError, match="already holds a run; pass overwrite=True"):
        spectra.Tracker(model, tmp_path / "again", TARGETS, mode="deferred").close()
        spectra.Tracker(model, tmp_path / "again", TARGETS, mode="deferred")


def test_non_writing_rank_writes_nothing(tmp_path):
    with spectra.Tracker(base_model("llama"), tmp_path / "run", TARGETS, write=False) as tracker:
        tracker.step(10, loss=1.0)
    assert not (tmp_path / "run").exists()


def test_follow_computes_a_deferred_run_as_it_lands(tmp_path):
    model = with_method(base_model("llama"), "lora", TARGETS)
    tracker = spectra.Tracker(model, tmp_path / "run", TARGETS, every=1, mode="deferred")

    def training():
        train(model, tracker, range(1, 4), 1, "lora")
        time.sleep(0.3)
        tracker.close()

    thread = threading.Thread(target=training)
    thread.start()
    screen = io.StringIO()
    path = follow(tmp_path / "run", poll=0.05, console=Console(file=screen, width=120))
    thread.join()
    assert sorted(set(read_rows(path)["step"])) == [0, 1, 2, 3]
    text = screen.getvalue()
    assert "q_proj" in text and "v_proj" in text and "training finished" in text


# --- transformers Trainer -------------------------------------------------------------------


class Crash(TrainerCallback):
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise RuntimeError("simulated crash")


def trainer(tmp_path, callbacks, max_steps: int, save_steps: int | None = None) -> Trainer:
    model = with_method(base_model("llama"), "lora", TARGETS)
    args = TrainingArguments(
        output_dir=str(tmp_path / "ckpt"), max_steps=max_steps, per_device_train_batch_size=2,
        learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        seed=0, data_seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    return Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=callbacks)


@pytest.mark.slow
def test_callback_with_trainer(tmp_path):
    callback = spectra.SpectraCallback(tmp_path / "run", TARGETS, every=2, mode="deferred")
    trainer(tmp_path, [callback], max_steps=5).train()
    run = open_run(tmp_path / "run")
    assert run.steps == [0, 2, 4, 5] and run.manifest.finished
    assert run.manifest.method == "lora" and run.manifest.learning_rate == 1e-2
    log = pq.read_table(tmp_path / "run" / TRAIN_LOG).to_pandas()
    assert log["step"].tolist() == [1, 2, 3, 4, 5]
    assert log[["loss", "grad_norm", "lr"]].notna().all().all()


def test_trainer_logs_become_log_columns(tmp_path):
    logs = {"loss": 2.0, "reg_loss": 0.1, "learning_rate": 3e-4, "grad_norm": 1.0, "note": "x"}
    mapped = {"loss": 2.0, "reg_loss": 0.1, "lr": 3e-4, "grad_norm": 1.0, "note": "x"}
    assert trainer_log(logs) == mapped
    with spectra.Tracker(base_model("llama"), tmp_path / "run", mode="deferred") as tracker:
        tracker.log(7, **trainer_log(logs))
    log = pq.read_table(tmp_path / "run" / TRAIN_LOG).to_pylist()
    assert log == [{"step": 7, "loss": 2.0, "reg_loss": 0.1, "grad_norm": 1.0, "lr": 3e-4}]


@pytest.mark.slow
def test_resume_from_checkpoint_continues_the_run(tmp_path):
    whole = tmp_path / "whole"
    trainer(whole, [spectra.SpectraCallback(whole / "run", TARGETS, every=2, mode="deferred")],
            max_steps=6).train()  # fmt: skip

    split = tmp_path / "split"
    first = spectra.SpectraCallback(split / "run", TARGETS, every=2, mode="deferred")
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer(split, [first, Crash(at=5)], max_steps=6, save_steps=3).train()
    first.tracker.flush()  # the crashed process's writes are done
    assert open_run(split / "run").steps == [0, 2, 4]
    second = spectra.SpectraCallback(split / "run", TARGETS, every=2, mode="deferred")
    checkpoint = str(split / "ckpt" / "checkpoint-3")
    trainer(split, [second], max_steps=6).train(resume_from_checkpoint=checkpoint)

    assert open_run(split / "run").steps == open_run(whole / "run").steps == [0, 2, 4, 6]
    logs = [pq.read_table(d / "run" / TRAIN_LOG).to_pandas() for d in (whole, split)]
    assert logs[1]["step"].tolist() == logs[0]["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert logs[1]["loss"].tolist() == pytest.approx(logs[0]["loss"].tolist(), rel=1e-4)
    rows = [read_rows(compute_run(d / "run")) for d in (whole, split)]
    for name in ("delta_sigma", "delta_d", "delta_d_matched", "cond_w"):
        assert rows[1][name].tolist() == pytest.approx(rows[0][name].tolist(), rel=1e-4, abs=1e-9)
