"""Full fine-tuning: the module's own weight."""

from __future__ import annotations

from torch import nn
from transformers.pytorch_utils import Conv1D

from spectra.factors import Layout


def full(module: nn.Module) -> Layout | None:
    """nn.Linear, or GPT-2's Conv1D (stored in × out, transposed here), with a floating-point
    weight (a quantized weight cannot be fine-tuned directly)."""
    weight = getattr(module, "weight", None)
    if not isinstance(module, (nn.Linear, Conv1D)) or not weight.is_floating_point():
        return None
    return Layout("ft", "dense", {}, {"weight": weight.T if isinstance(module, Conv1D) else weight})
