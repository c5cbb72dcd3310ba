"""Quantized bases (bitsandbytes 4-bit and 8-bit): recognised and dequantized by peft's helpers.

The dequantized weight is what the layer's forward multiplies by, made by the call peft's
merge uses: bitsandbytes' ``dequantize_4bit`` on the packed codes and quant state (nested
absmax included), or ``int8_vectorwise_dequant`` on the int8 rows and their scales.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from spectra.errors import SpectraError


@contextmanager
def quiet_bitsandbytes() -> Iterator[None]:
    """Drop the log records bitsandbytes emits while it is imported (on a CPU it warns that an
    optional kernel package is missing)."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


with quiet_bitsandbytes():
    import peft.tuners  # noqa: F401  (peft imports bitsandbytes, when installed, here)


def is_quantized(layer: nn.Module) -> bool:
    """Whether ``layer``'s weight is a bitsandbytes 4-bit or 8-bit parameter."""
    from peft.utils.integrations import get_bnb_param_type

    return bool(get_bnb_param_type(getattr(layer, "weight", None)))


@torch.no_grad()
def dequantize(layer: nn.Module) -> torch.Tensor:
    """The weight (out × in) that the bitsandbytes ``layer``'s forward uses, dequantized by
    ``dequantize_bnb_weight`` (what peft's merge calls; unlike ``dequantize_module_weight``
    it leaves the layer as it is)."""
    from peft.utils.integrations import dequantize_bnb_weight

    weight = layer.weight
    if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
        raise SpectraError(
            "bitsandbytes has repacked a 4-bit weight for CPU inference (an eval-mode forward "
            "without gradients); start tracking before evaluating, or reload the model"
        )
    return dequantize_bnb_weight(weight, state=getattr(layer, "state", None)).detach()
