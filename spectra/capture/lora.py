"""peft LoRA and PiSSA (base + scaling · B A) and DoRA (magnitude ⊙ direction), on Linear,
Conv1D and bitsandbytes 4-bit and 8-bit bases."""

from __future__ import annotations

from peft.tuners.lora import LoraLayer
from peft.tuners.lora.variants import DoraLinearVariant
from torch import nn

from spectra.capture.common import active_adapter, base_weight, is_matrix_layer, scalar
from spectra.errors import SpectraError
from spectra.factors import Layout


def lora(module: nn.Module) -> Layout | None:
    """A peft LoRA layer whose adapter is a pair of Linear factors on a matrix base."""
    if not isinstance(module, LoraLayer) or not is_matrix_layer(module.get_base_layer()):
        return None
    name = active_adapter(module)
    if name not in module.lora_A or not isinstance(module.lora_A[name], nn.Linear):
        return None
    variant = getattr(module, "lora_variant", {}).get(name)
    if variant is not None and not isinstance(variant, DoraLinearVariant):
        raise SpectraError(f"spectra captures LoRA and DoRA, not {type(variant).__name__}")
    parts = {
        "left": module.lora_B[name].weight,
        "right": module.lora_A[name].weight,
        "scale": scalar(module.scaling[name]),
    }
    frozen = {"base": base_weight(module)}
    if name in module.lora_magnitude_vector:
        parts["magnitude"] = module.lora_magnitude_vector[name].weight
        return Layout("dora", "dora", frozen, parts)
    return Layout("lora", "lowrank", frozen, parts)
