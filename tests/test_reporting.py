"""Inline metrics in TensorBoard (event files read back with tensorboard's EventAccumulator)
and W&B (a stand-in module recording the calls), at the steps the snapshots were taken."""

from __future__ import annotations

import sys
import types

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_callback import TARGETS
from tiny_models import RandomTokens, base_model, with_method
from transformers import Trainer, TrainingArguments

import spectra
from spectra.columns import REPORTED
from spectra.integrations.reporter import Reporter, module_means
from spectra.integrations.wandb import WandB


def train(tmp_path, report_to: list[str], method: str = "lora", max_steps: int = 5) -> Trainer:
    """A Trainer run tracked inline (every 2 steps) that reports to ``report_to``."""
    model = with_method(base_model("llama"), method, TARGETS)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=2,
        learning_rate=1e-2, logging_steps=1, report_to=report_to, use_cpu=True,
        disable_tqdm=True, save_strategy="no", seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    inline = {"every": 2, "worker": "thread", "poll": 0.05}
    callback = spectra.SpectraCallback(tmp_path / "run", TARGETS, **inline)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=[callback])
    trainer.train()
    return trainer


def expected(tmp_path) -> dict[str, dict[int, float]]:
    """tag → {step: layer mean} from the run's Parquet file."""
    rows = pd.read_parquet(tmp_path / "run.parquet")
    out: dict[str, dict[int, float]] = {}
    for step, group in rows.groupby("step"):
        for tag, value in module_means(group).items():
            out.setdefault(tag, {})[int(step)] = value
    return out


def test_tensorboard_event_files_hold_the_metrics_at_their_steps(tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    train(tmp_path, ["tensorboard"])
    log_dir = tmp_path / "out" / "runs" / "spectra-run"
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    want = expected(tmp_path)
    assert {f"spectra/{m}/{mod}" for m in REPORTED if m not in ("ortho_err",)
            for mod in ("all", "q_proj", "v_proj")} == tags == set(want)  # fmt: skip
    assert sorted(want["spectra/delta_d/q_proj"]) == [0, 2, 4, 5]  # the snapshot steps
    for tag in tags:
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == sorted(want[tag])  # each once (κ(W_p): not at 0)
        for s in scalars:
            assert s.value == pytest.approx(want[tag][s.step], rel=1e-6, abs=1e-7)  # float32
    # the Trainer's own TensorBoard run sits beside it, under the same runs/ folder
    assert [p.name for p in (tmp_path / "out" / "runs").iterdir() if p != log_dir]


def test_no_reporting_without_report_to_or_in_deferred_mode(tmp_path):
    trainer = train(tmp_path, [], max_steps=2)
    callback = next(c for c in trainer.callback_handler.callbacks if hasattr(c, "reporter"))
    assert callback.reporter is None and not (tmp_path / "out" / "runs").exists()
    args = types.SimpleNamespace(report_to=["wandb"], output_dir=str(tmp_path))
    assert Reporter.for_trainer(types.SimpleNamespace(report_to=[]), tmp_path, 4, "r") is None
    assert isinstance(Reporter.for_trainer(args, tmp_path, 4, "r").sinks[0], WandB)


class FakeWandb(types.ModuleType):
    """Records define_metric and log calls like the wandb module would receive them."""

    def __init__(self, active: bool = True):
        super().__init__("wandb")
        self.run = object() if active else None
        self.defined: dict[str, str | None] = {}
        self.logged: list[dict] = []

    def define_metric(self, name, step_metric=None, **kwargs):
        self.defined[name] = step_metric

    def log(self, data, **kwargs):
        self.logged.append(dict(data))


def test_wandb_gets_a_spectra_step_axis_and_each_step_once(tmp_path, monkeypatch):
    from runmaker import make_run, parallel

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    parquet = make_run(tmp_path, "lora", "lora", parallel(0.1), steps=(0, 10, 20))
    reporter = Reporter(parquet, 8, [WandB()])
    reporter.poll()
    reporter.poll()  # nothing new: nothing sent again
    assert [entry["spectra/step"] for entry in fake.logged] == [0, 10, 20]
    assert fake.defined["spectra/step"] is None
    assert fake.defined["spectra/delta_d/q_proj"] == "spectra/step"
    rows = pd.read_parquet(parquet)
    want = rows[rows["step"] == 20]["delta_sigma"].mean()
    assert fake.logged[2]["spectra/delta_sigma/all"] == pytest.approx(want)
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb(active=False))
    WandB().log(30, {"spectra/delta_d/all": 0.1})  # no W&B run: nothing, no error
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: nothing, no error
    WandB().log(30, {"spectra/delta_d/all": 0.1})


def test_partial_steps_wait_until_every_layer_has_landed(tmp_path):
    from runmaker import make_run, parallel

    parquet = make_run(tmp_path, "lora", "lora", parallel(0.1), steps=(0, 10))
    sent = []
    sink = types.SimpleNamespace(log=lambda step, scalars: sent.append(step), close=lambda: None)
    reporter = Reporter(parquet, 9, [sink])  # one layer more than the file holds
    reporter.poll()
    assert sent == []
    reporter.close()  # training over: whatever landed is reported
    assert sent == [0, 10]
