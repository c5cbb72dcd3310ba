"""MoE experts stored as 3-D parameters, as transformers 5 stores them (Mixtral, Qwen2-MoE,
Qwen3-MoE, GPT-OSS, …): one per projection, the E experts stacked along the first dimension.

An experts module is one that transformers' ``use_experts_implementation`` prepared: it
carries ``is_transposed``. Its parameter P is [E, out, in], expert e multiplying as
``F.linear(x, P[e])``, or [E, in, out] when ``is_transposed`` (``x @ P[e]``); here every
expert's matrix is taken in torch layout, out × in. ``gate_up_proj``'s expert matrix is the
gate and up projections stacked, [gate; up] (2 · intermediate rows; GPT-OSS interleaves them).

FT: the parameter itself. LoRA: peft's ``target_parameters`` wrap the experts module in one
``ParamWrapper`` per parameter (nested when several), with lora_A (E·r × in) and lora_B
(out × r·E) whose expert e is ``A.reshape(E, r, in)[e]`` and ``B.reshape(out, r, E)[:, :, e]``:
ΔW_e = scaling · B_e A_e, as ``ParamWrapper.get_delta_weight`` forms it.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from spectra.capture.common import active_adapter, scalar
from spectra.factors import Layout

try:  # peft ≥ 0.17: LoRA on parameters (target_parameters)
    from peft.tuners.lora.layer import ParamWrapper
except ImportError:  # pragma: no cover - older peft

    class ParamWrapper:  # type: ignore[no-redef]  # nothing is ever an instance of it
        pass


@dataclass(frozen=True, eq=False)
class ExpertStack:
    """The 3-D expert parameter ``name`` of the experts module at a path: ``module`` is what the
    model holds there (the experts module, or the outermost of its peft ParamWrappers)."""

    module: nn.Module
    name: str
    count: int  # E, the number of experts


def experts_module(module: nn.Module) -> nn.Module | None:
    """The transformers experts module that ``module`` is or wraps (peft), else None."""
    base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
    return base if hasattr(base, "is_transposed") else None


def expert_stacks(module: nn.Module) -> list[ExpertStack]:
    """The 3-D floating-point parameters of the experts module that ``module`` is or wraps."""
    base = experts_module(module)
    if base is None:
        return []
    return [
        ExpertStack(module, name, int(param.shape[0]))
        for name, param in base.named_parameters(recurse=False)
        if param.ndim == 3 and param.is_floating_point()
    ]


def _wrapper(module: nn.Module, name: str) -> ParamWrapper | None:
    """The peft ParamWrapper in the chain at ``module`` that adapts parameter ``name``."""
    while isinstance(module, ParamWrapper):
        if module.parameter_name == name:
            return module
        module = module.base_layer
    return None


def experts(stack) -> Layout | None:
    """Stacked expert matrices (torch layout, [E, out, in]): FT, or LoRA on the parameter."""
    if not isinstance(stack, ExpertStack):
        return None
    base = experts_module(stack.module)
    weight = getattr(base, stack.name)
    if base.is_transposed:
        weight = weight.transpose(1, 2)
    wrapper = _wrapper(stack.module, stack.name)
    if wrapper is None:
        return Layout("ft", "dense", {}, {"weight": weight})
    name = active_adapter(wrapper)
    count, rank = wrapper.num_experts, wrapper.r[name]
    a, b = wrapper.lora_A[name].weight, wrapper.lora_B[name].weight
    parts = {
        "left": b.reshape(b.shape[0], rank, count).permute(2, 0, 1),  # [E, out, r]
        "right": a.reshape(count, rank, a.shape[-1]),  # [E, r, in]
        "scale": scalar(wrapper.scaling[name]),
    }
    return Layout("lora", "lowrank", {"base": weight}, parts)
