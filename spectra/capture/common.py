"""Helpers the method extractors share: scalars, the active adapter, the frozen base weight."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spectra.capture.quant import dequantize, is_quantized
from spectra.errors import SpectraError

# A frozen tensor, or a function that makes it when producing it costs work (a dequantized
# base): made once, when the frozen tensors are captured, never at every step.
Frozen = torch.Tensor | Callable[[], torch.Tensor]


def scalar(value) -> torch.Tensor:
    """A 1-element float64 tensor (the ``scale`` part)."""
    return torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(1)


def check_unmerged(module: nn.Module) -> None:
    if getattr(module, "merged", False):
        raise SpectraError("an adapter is merged into its base weight; unmerge it before tracking")


def active_adapter(module: nn.Module) -> str:
    """The one active, unmerged adapter of a peft layer; SpectraError otherwise."""
    check_unmerged(module)
    active = list(module.active_adapters)
    if len(active) != 1:
        raise SpectraError(f"spectra tracks one active adapter per layer, found {active}")
    return active[0]


def torch_layout(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return weight.T if fan_in_fan_out else weight


def is_matrix_layer(layer: nn.Module) -> bool:
    """Whether ``layer`` multiplies by a 2-D weight matrix (Linear, Conv1D, a quantized Linear)."""
    weight = getattr(layer, "weight", None)
    return isinstance(weight, torch.Tensor) and (weight.ndim == 2 or is_quantized(layer))


def base_weight(module: nn.Module) -> Frozen:
    """The frozen base weight of a peft layer in torch layout (out × in): a reference, or for a
    bitsandbytes base the function that dequantizes it."""
    base = module.get_base_layer()
    if is_quantized(base):
        return lambda: dequantize(base)
    return torch_layout(base.weight, module.fan_in_fan_out)
