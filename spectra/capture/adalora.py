"""peft AdaLoRA (``SVDLinear`` and its bitsandbytes forms)."""

from __future__ import annotations

from peft.tuners.adalora import AdaLoraLayer
from torch import nn

from spectra.capture.common import active_adapter, base_weight, is_matrix_layer, scalar
from spectra.factors import Layout

ADAPTER_EPS = 1e-5  # peft AdaLoRA's ranknum + 1e-5


def adalora(module: nn.Module) -> Layout | None:
    """base + B (A ⊙ E) · scaling / (ranknum + 1e-5); E holds the λ, 0 where pruned."""
    if not isinstance(module, AdaLoraLayer) or not is_matrix_layer(module.get_base_layer()):
        return None
    name = active_adapter(module)
    scale = module.scaling[name] / (module.ranknum[name].detach().double().cpu() + ADAPTER_EPS)
    parts = {
        "left": module.lora_B[name],
        "right": module.lora_A[name].double() * module.lora_E[name].double(),  # exact product
        "scale": scalar(scale),
    }
    return Layout("adalora", "lowrank", {"base": base_weight(module)}, parts)
