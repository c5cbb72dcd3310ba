"""spectra import on every architecture of the registry, FT and LoRA: checkpoint folders saved
the way transformers and peft save them give the run a Tracker records of the same models
(same layers and slices, same targets, bit-identical weights, equal rows)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_model
from test_architectures import adapted
from tiny_models import ARCHS, base_model, perturb

import spectra
from spectra.engine import compute_run
from spectra.importer import import_run
from spectra.snapshots import open_run

pytestmark = pytest.mark.slow  # multi-process, training or long runs: not in make test-fast

METRICS = ["delta_sigma", "delta_d", "delta_d_matched", "cond_w", "cond_p", "delta_m",
           "delta_dir", "amplification", "intruders", "rank"]  # fmt: skip


def save_full(model, folder) -> None:
    """The model's weights and config.json, as save_pretrained writes them (by hand for the
    Baichuan stand-in, which is no PreTrainedModel)."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
        return
    folder.mkdir(parents=True)
    save_model(model, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))


@pytest.mark.parametrize("method", ["ft", "lora"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_import_equals_tracking(arch, method, tmp_path):
    model = base_model(arch)
    save_full(model, tmp_path / "base")
    if method == "lora":
        config = LoraConfig(r=4, lora_alpha=8, target_modules=adapted(arch))
        model = get_peft_model(model, config)
    tracker = spectra.Tracker(model, tmp_path / "tracked", every=1, mode="deferred")
    perturb(model, seed=2)  # one training step
    tracker.step(1)
    tracker.close()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    if method == "lora":
        model.save_pretrained(checkpoint)
    else:
        save_full(model, checkpoint)

    imported = open_run(import_run([tmp_path / "out"], tmp_path / "base", out=tmp_path / "runs"))
    tracked = open_run(tmp_path / "tracked")
    assert imported.manifest.method == tracked.manifest.method == method
    assert imported.manifest.targets == tracked.manifest.targets
    assert imported.steps == tracked.steps == [0, 1]
    for step in (0, 1):
        for layer in tracked.layers:
            assert torch.equal(imported.weight(step, layer), tracked.weight(step, layer)), layer
    rows = [pd.read_parquet(compute_run(run.path)).set_index(["step", "layer"]).sort_index()
            for run in (imported, tracked)]  # fmt: skip
    pd.testing.assert_frame_equal(rows[0][METRICS], rows[1][METRICS], rtol=1e-10, atol=1e-12)
