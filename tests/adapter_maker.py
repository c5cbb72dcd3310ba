"""peft LoRA adapters of a model folder, as peft saves them, and damaged copies of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch


def make_adapter(model: Path, out: Path) -> None:
    """A peft LoRA adapter (r = 2, q and v) of the model folder, as peft saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                        init_lora_weights="gaussian")  # fmt: skip
    get_peft_model(AutoModelForCausalLM.from_pretrained(model), config).save_pretrained(out)


def adapter_tensors(folder: Path, change: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Rewrite every tensor of an adapter with ``change(name, tensor)``."""
    from safetensors.torch import load_file, save_file

    weights = folder / "adapter_model.safetensors"
    save_file({k: change(k, v).contiguous() for k, v in load_file(weights).items()}, weights)


def as_int8(name: str, t: torch.Tensor) -> torch.Tensor:
    return (t * 100).to(torch.int8)


def rank_three(name: str, t: torch.Tensor) -> torch.Tensor:
    """Factors of rank 3 (the config says 2): refused once the import reads the step."""
    return torch.ones(3, t.shape[1]) if "lora_A" in name else torch.ones(t.shape[0], 3)
