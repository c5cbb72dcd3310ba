"""The method extractors, in the order they are tried, and what they find in a model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spectra.capture.adalora import adalora
from spectra.capture.experts import experts
from spectra.capture.full import full
from spectra.capture.lora import lora
from spectra.capture.sorsa import sorsa
from spectra.factors import Layout

Extractor = Callable[[nn.Module], "Layout | None"]
# Tried in this order: the first that recognises a module gives its layout.
EXTRACTORS: list[Extractor] = [experts, sorsa, adalora, lora, full]


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


def _pissa(model: nn.Module) -> bool:
    """Whether the model's active peft LoRA config initialises with PiSSA."""
    configs = getattr(model, "peft_config", None) or {}
    return any(
        isinstance(init := getattr(cfg, "init_lora_weights", None), str)
        and init.lower().startswith("pissa")
        for cfg in configs.values()
    )


def detect_method(model: nn.Module, layouts: dict[str, Layout]) -> str:
    """ft, lora, pissa, dora, adalora or sorsa, from the target layouts ('+'-joined if mixed)."""
    methods = {found.method for found in layouts.values()}
    if "lora" in methods and _pissa(model):
        methods = (methods - {"lora"}) | {"pissa"}
    return "+".join(sorted(methods))
