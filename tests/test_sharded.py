"""Tracking under sharding engines, in real multi-process runs (torchrun, 2 processes, gloo, CPU):
FSDP1, FSDP2 and DeepSpeed ZeRO-3 in plain loops (FT and LoRA, on attention and on a tiny
Mixtral's experts), ZeRO-3 under transformers' Trainer (accelerate's DeepSpeed plugin), FSDP1
under Lightning's FSDP strategy. The rows computed from the run directory equal
``spectra.drift`` on the weights that the engine's own API gathers at each snapshot step (to
1e-10), and the manifest names the engine.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import torchrun
from safetensors.torch import load_file
from tracking_train import PATHS, STEPS

from spectra.engine import compute_run
from spectra.metrics import drift
from spectra.run_files import step_file
from spectra.snapshots import Distributed, open_run

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent
ZERO3_ENV = {"DS_ACCELERATOR": "cpu"}
EXPERT_LAYERS = sorted(
    f"model.layers.{block}.mlp.experts.{name}[{expert}]"
    for block in range(2) for name in ("gate_up_proj", "down_proj") for expert in range(4)
)  # fmt: skip
TOL = 1e-10


def check_rows(run_dir: Path, reference: Path, prefix: str = "", paths=PATHS) -> None:
    """Every row of the run equals spectra.drift on the reference weights (step 0 vs step t),
    each layer named ``prefix + path``; the weights did move."""
    rows = pd.read_parquet(compute_run(run_dir))
    steps = sorted(set(rows["step"]))
    assert steps == [0, 2, STEPS] and sorted(set(rows["layer"])) == [prefix + p for p in paths]
    refs = {step: load_file(reference / f"step_{step}.safetensors") for step in steps}
    for row in rows.to_dict("records"):
        layer = row["layer"].removeprefix(prefix)
        expected = drift(refs[0][layer], refs[row["step"]][layer])
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=TOL, abs=TOL), (row["step"], layer, key)
    assert rows["delta_d"].max() > 1e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(engine)``: the output folder of tracking_train.py under ``engine`` (run once)."""
    done = {}

    def run(engine: str) -> Path:
        if engine not in done:
            out = tmp_path_factory.mktemp(engine)
            env = ZERO3_ENV if engine == "zero3" else {}
            assert torchrun(HERE / "tracking_train.py", engine, out=out, env=env, timeout=240) == 0
            done[engine] = out
        return done[engine]

    return run


@pytest.mark.parametrize("engine", ["fsdp1", "fsdp2", "zero3"])
def test_plain_loop_rows_equal_the_engines_own_gather(engine, trained):
    tmp_path = trained(engine)
    weights = "fp32_master" if engine == "zero3" else "parameters"
    flat = ("ft-flat",) if engine == "fsdp1" else ()  # FSDP1 with use_orig_params=False
    for name in ("ft", "lora", *flat):
        run = open_run(tmp_path / name)
        assert run.manifest.finished and run.layers == PATHS  # no wrapper components
        assert run.manifest.distributed == Distributed(engine, 2, weights)
        check_rows(run.path, tmp_path / f"{name}-reference")


@pytest.mark.parametrize("engine", ["fsdp1", "fsdp2", "zero3"])
def test_experts_rows_equal_the_engines_own_gather(engine, trained):
    """A tiny Mixtral's 3-D expert parameters, FT, and under FSDP2 LoRA on them (peft's LoRA on
    parameters trains under no other engine): every expert of every block, each gathered from
    its engine's shards like any other target."""
    tmp_path = trained(engine)
    for name in ("ft-experts", "lora-experts") if engine == "fsdp2" else ("ft-experts",):
        run = open_run(tmp_path / name)
        assert run.manifest.finished and sorted(run.layers) == EXPERT_LAYERS
        assert run.manifest.distributed.engine == engine
        check_rows(run.path, tmp_path / f"{name}-reference", paths=EXPERT_LAYERS)


def test_zero3_bf16_snapshots_hold_the_fp32_master(trained):
    """Under ZeRO-3 in bfloat16 the snapshots are DeepSpeed's fp32 master weights: float32,
    rounding exactly to the bf16 working copy that GatheredParameters gives, and finer."""
    tmp_path = trained("zero3")
    run = open_run(tmp_path / "lora-bf16")
    assert run.manifest.distributed == Distributed("zero3", 2, "fp32_master")
    finer = False
    for step in run.steps:
        snapshot = load_file(run.path / step_file(step))
        working = load_file(tmp_path / "lora-bf16-reference" / f"step_{step}.safetensors")
        for name, copy in working.items():
            master = snapshot[name]
            assert master.dtype == torch.float32 and copy.dtype == torch.bfloat16
            assert torch.equal(master.to(torch.bfloat16), copy)
            finer |= not torch.equal(master, copy.float())
    assert finer  # training moved the master off the bf16 grid


def test_trainer_with_deepspeed_zero3_and_the_callback(tmp_path):
    """Trainer + accelerate's DeepSpeed plugin (ZeRO-3), SpectraCallback in inline mode: rank 0
    writes and computes the Parquet file while training runs."""
    script = HERE / "trainer_sharded_train.py"
    assert torchrun(script, "zero3", out=tmp_path, env=ZERO3_ENV, timeout=240) == 0
    run = open_run(tmp_path / "lora")
    assert run.manifest.distributed == Distributed("zero3", 2, "fp32_master")
    assert (tmp_path / "lora.parquet").is_file()  # the inline worker's, complete
    assert len(pd.read_parquet(tmp_path / "lora.parquet")) == 3 * len(PATHS)
    check_rows(run.path, tmp_path / "lora-reference")


def test_lightning_callback_under_fsdp(tmp_path):
    assert torchrun(HERE / "lightning_train.py", "fsdp", out=tmp_path, timeout=240) == 0
    run = open_run(tmp_path / "lora")
    assert run.manifest.finished
    assert run.manifest.distributed == Distributed("fsdp1", 2, "parameters")
    check_rows(run.path, tmp_path / "lora-reference", prefix="model.")  # LightningModule.model
