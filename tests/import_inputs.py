"""Small checkpoints for ``spectra import``, to be damaged by the bad-input and fuzz tests.

``make_import_inputs(root)`` writes ``base/`` (a tiny Llama), ``ft/`` (its fine-tune, one
safetensors file), ``sharded/`` (the same in three shards with ``model.safetensors.index.json``),
``lora/`` and ``adalora/`` (peft adapters of q/v), ``out/checkpoint-2/`` (a Trainer output
folder holding the fine-tune and a ``trainer_state.json``), ``gpt2/`` (a tiny GPT-2: a fused
``c_attn``) and ``outside/secret.safetensors`` (a copy of the fine-tune's weights that no input
may read).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from tiny_models import base_model

SHARDS = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
SECRET = Path("outside/secret.safetensors")
CATASTROPHIC = "(" + "[a-z_.0-9]*" * 12 + ")$X"  # a regex that backtracks for hours on a name


def make_import_inputs(root: Path) -> Path:
    base_model("llama").save_pretrained(root / "base")
    tuned = base_model("llama", seed=1)
    tuned.save_pretrained(root / "ft")
    tuned.save_pretrained(root / "sharded", max_shard_size="100KB")
    lora = get_peft_model(
        base_model("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.01)
    lora.save_pretrained(root / "lora")
    adalora = AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=["v_proj"])
    get_peft_model(base_model("llama"), adalora).save_pretrained(root / "adalora")
    shutil.copytree(root / "ft", root / "out" / "checkpoint-2")
    state = {"log_history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]}
    (root / "out" / "checkpoint-2" / "trainer_state.json").write_text(json.dumps(state))
    base_model("gpt2").save_pretrained(root / "gpt2")
    (root / SECRET).parent.mkdir()
    shutil.copy(root / "ft" / "model.safetensors", root / SECRET)
    return root


def first_shard(folder: Path) -> str:
    """The name of the first shard that a sharded folder's index names."""
    return sorted(set(json.loads((folder / SHARDS).read_text())["weight_map"].values()))[0]


def rename_shard(folder: Path, old: str, new: str) -> None:
    """Point every tensor of shard ``old`` in the folder's index at ``new``."""
    index = json.loads((folder / SHARDS).read_text())
    index["weight_map"] = {k: new if v == old else v for k, v in index["weight_map"].items()}
    (folder / SHARDS).write_text(json.dumps(index))


def edit_json(path: Path, **fields) -> None:
    """Set ``fields`` in the JSON object file ``path``."""
    raw = json.loads(path.read_text())
    raw.update(fields)
    path.write_text(json.dumps(raw))
