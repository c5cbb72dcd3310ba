"""A module's layout under the method extractors, and the method of a model's target layers.

The extractors are those the methods registry names (:mod:`spectra.methods`: the function
``<name>`` of ``spectra/capture/<name>.py``), tried in :func:`spectra.methods.capture_order`
after :func:`~spectra.capture.experts.experts` (3-D MoE expert stacks): the first that
recognises a module gives its layout.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

import torch
from torch import nn

from spectra.capture.experts import experts
from spectra.factors import Layout
from spectra.methods import capture_order, of_adapter

Extractor = Callable[[nn.Module], "Layout | None"]
# Tried in this order, the first that recognises a module giving its layout: 3-D expert stacks
# (FT or LoRA on them, not a method of their own), then the methods' extractors.
EXTRACTORS: tuple[Extractor, ...] = (
    experts,
    *(getattr(import_module(f"spectra.capture.{name}"), name) for name in capture_order()),
)


def recognise(module: nn.Module) -> Layout | None:
    """The module's layout, its frozen tensors possibly still functions that make them."""
    return next((found for fn in EXTRACTORS if (found := fn(module)) is not None), None)


@torch.no_grad()
def layout(module: nn.Module) -> Layout | None:
    """The module's layout under the first extractor that recognises it, else None."""
    found = recognise(module)
    if found is None:
        return None
    frozen = {part: t() if callable(t) else t for part, t in found.frozen.items()}
    return found._replace(frozen=frozen)


@torch.no_grad()
def step_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a recognised module that change during training (no frozen work)."""
    return recognise(module).step


def weight_shape(found: Layout) -> tuple[int, int]:
    """(out, in) of the effective weight W_t (of each expert, for stacked experts)."""
    if found.kind == "dense":
        return tuple(found.step["weight"].shape[-2:])
    return found.step["left"].shape[-2], found.step["right"].shape[-1]


def adapter_rank(found: Layout) -> int | None:
    """The number of components of a low-rank layout (the adapter rank r); None when dense."""
    return None if found.kind == "dense" else int(found.step["left"].shape[-1])


def detect_method(model: nn.Module, layouts: dict[str, Layout]) -> str:
    """The method of the target layouts ('+'-joined if mixed): the extractors' (ft, lora, dora,
    adalora, sorsa), a LoRA layer's refined by the model's peft config (PiSSA)."""
    methods = {found.method for found in layouts.values()}
    configs = (getattr(model, "peft_config", None) or {}).values()
    peft = {of_adapter(config.to_dict()) for config in configs} - {None}
    if "lora" in methods and len(peft) == 1 and peft != {"lora"}:
        methods = (methods - {"lora"}) | peft
    return "+".join(sorted(methods))
