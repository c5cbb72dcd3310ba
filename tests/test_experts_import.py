"""spectra import of MoE experts: full checkpoints in transformers' original format (one 2-D
weight per expert, as save_pretrained writes them) or with 3-D stacks, and peft adapters on the
expert parameters; against transformers' own from_pretrained, peft's merge and tracked runs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import relative_error
from peft import LoraConfig, get_peft_model
from tiny_models import EXPERT_PARAMS, MOE, expert_weights, moe_base, moe_model, perturb

from spectra.callback import Tracker
from spectra.engine import compute_run
from spectra.errors import SpectraError
from spectra.importer import import_run
from spectra.importer.experts import find_stacks, stacked
from spectra.importer.model import open_model
from spectra.snapshots import open_run
from spectra.store import read_run


@pytest.mark.parametrize("original", [True, False])
@pytest.mark.parametrize("arch", list(MOE))
def test_stacks_equal_what_from_pretrained_loads(tmp_path, arch, original):
    model = moe_model(arch, "ft")
    model.save_pretrained(tmp_path, save_original_format=original)
    stored = open_model(tmp_path)
    stacks = find_stacks(stored.tensors, stored.config)
    loaded = dict(MOE[arch][1].from_pretrained(tmp_path).named_parameters())
    assert len(stacks) == 4  # 2 blocks × gate_up_proj, down_proj
    for path, stack in stacks.items():
        want = loaded[path].detach()
        assert torch.equal(stacked(stored.tensors, stack), want.transpose(1, 2) if stack.transposed
                           else want), path  # fmt: skip
        assert (stack.stored is not None) == (not original or arch == "gpt_oss")  # GPT-OSS: 3-D


def saved_training(tmp_path, arch: str, method: str):
    """A base model folder and Trainer-like checkpoint-5/-10 folders (full weights, or a peft
    adapter on both expert parameters), and each step's float64 expert matrices."""
    model = moe_base(arch)
    model.save_pretrained(tmp_path / "base")
    truth = {0: expert_weights(model, "ft")}
    if method == "lora":
        config = LoraConfig(
            r=2, lora_alpha=4, target_modules=[], target_parameters=list(EXPERT_PARAMS)
        )
        model = get_peft_model(model, config)
    for step in (5, 10):
        perturb(model, seed=step, size=0.05)
        model.save_pretrained(tmp_path / "out" / f"checkpoint-{step}")
        truth[step] = expert_weights(model, method)
    return truth


@pytest.mark.parametrize(
    ("arch", "method"), [("mixtral", "ft"), ("qwen3_moe", "ft"), ("mixtral", "lora"),
                         ("gpt_oss", "lora")],
)  # fmt: skip
def test_imported_experts_equal_the_trained_ones(tmp_path, arch, method):
    truth = saved_training(tmp_path, arch, method)
    targets = list(EXPERT_PARAMS) if method == "ft" else None  # LoRA: the adapter's parameters
    run = open_run(import_run([tmp_path / "out"], tmp_path / "base", out=tmp_path / "runs",
                              targets=targets))  # fmt: skip
    assert run.manifest.method == method and run.steps == [0, 5, 10] and len(run.layers) == 16
    assert run.manifest.rank == (2 if method == "lora" else None)
    for step, weights in truth.items():
        for layer in run.layers:
            assert relative_error(run.weight(step, layer), weights[layer]) <= 1e-12, (step, layer)
    rows, _ = read_run(compute_run(run.path))
    assert len(rows) == 48 and set(rows["module"]) == {"gate_up_proj", "down_proj"}


def test_an_imported_run_equals_the_tracked_one(tmp_path):
    """LoRA on Qwen2-MoE's experts, tracked while it trains and saved as adapters: the import of
    the saved adapters gives the same rows as the tracked run."""
    model = moe_base("qwen2_moe")
    model.save_pretrained(tmp_path / "base")
    config = LoraConfig(r=2, lora_alpha=4, target_modules=[], target_parameters=list(EXPERT_PARAMS))
    model = get_peft_model(model, config)  # B = 0: W_0 is the base
    with Tracker(model, tmp_path / "tracked", every=5, mode="deferred") as tracker:
        for step in (5, 10):
            perturb(model, seed=20 + step, size=0.05)
            model.save_pretrained(tmp_path / "out" / f"checkpoint-{step}")
            tracker.step(step)
    imported = import_run([tmp_path / "out"], tmp_path / "base", out=tmp_path / "runs")
    tracked_rows, _ = read_run(compute_run(tmp_path / "tracked"))
    imported_rows, _ = read_run(compute_run(imported))
    key = ["step", "layer"]
    a = tracked_rows[tracked_rows.step > 0].sort_values(key).reset_index(drop=True)
    b = imported_rows[imported_rows.step > 0].sort_values(key).reset_index(drop=True)
    assert list(a["layer"]) == list(b["layer"])
    for column in ("delta_sigma", "delta_d", "delta_d_matched", "dw_rank90", "principal_energy"):
        assert (a[column] - b[column]).abs().max() <= 1e-10, column


def test_adapters_on_modules_and_parameters_at_once_are_refused(tmp_path):
    truth = saved_training(tmp_path, "mixtral", "lora")
    assert truth
    config_file = tmp_path / "out" / "checkpoint-5" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(config | {"target_modules": ["q_proj"]}))
    with pytest.raises(SpectraError, match="modules and on parameters at once"):
        import_run([tmp_path / "out" / "checkpoint-5"], tmp_path / "base", out=tmp_path / "r")
    config_file.write_text(json.dumps(config | {"target_parameters": ["experts.nothing"]}))
    with pytest.raises(SpectraError, match="select no expert stack"):
        import_run([tmp_path / "out" / "checkpoint-5"], tmp_path / "base", out=tmp_path / "r")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.save in one process
@pytest.mark.parametrize("arch", ["mixtral", "gpt_oss"])  # GPT-OSS stores its stacks transposed
def test_dcp_checkpoints_of_experts_equal_the_trained_ones(tmp_path, arch):
    """dcp.save of the model's own state dict (3-D expert parameters, no config.json beside
    it): every step's experts are found through the base's config and read exactly."""
    import torch.distributed.checkpoint as dcp

    model = moe_base(arch)
    model.save_pretrained(tmp_path / "base")
    truth = {0: expert_weights(model, "ft")}
    for step in (2, 4):
        perturb(model, seed=step, size=0.05)
        dcp.save(model.state_dict(), checkpoint_id=str(tmp_path / f"step-{step}"))
        truth[step] = expert_weights(model, "ft")
    folders = [tmp_path / "step-2", tmp_path / "step-4"]
    run = open_run(import_run(folders, tmp_path / "base", out=tmp_path / "runs", steps=[2, 4],
                              targets=list(EXPERT_PARAMS)))  # fmt: skip
    assert run.steps == [0, 2, 4] and sorted(run.layers) == sorted(truth[0])
    for step, weights in truth.items():
        for layer in run.layers:
            assert torch.equal(run.weight(step, layer), weights[layer]), (step, layer)
