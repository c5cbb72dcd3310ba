"""What a module's effective weight is made of, per fine-tuning method.

Each method is one *extractor*: a function that takes a module and returns its
:class:`~spectra.factors.Layout` (the method's name, the :mod:`spectra.factors` kind, the
frozen tensors and the tensors that change during training), or None when the module is not
of that method.
The extractors are tried in registration order; adding a method is one decorated function.
Tensors are returned as references in torch layout (out × in), not copies.

Targets select modules by name, by the one rule of this module (:func:`resolve`). A target
matches a module path when it is

- the exact path (``"model.layers.0.self_attn.q_proj"``),
- a dotted suffix of it: the last component or several (``"q_proj"``, ``"self_attn.q_proj"``
  both match ``model.layers.0.self_attn.q_proj``; ``"proj"`` does not), or
- a shell glob over the full path when it contains ``*``, ``?`` or ``[``
  (``"*.layers.[01].*.q_proj"``).

A slice of a fused projection is named ``<module path>[q]`` (or ``[k]``, ``[v]``; see
:mod:`spectra.architectures`). A target that ends in such a suffix selects that slice of the
modules its front part selects (``"c_attn[q]"``, ``"*.0.attn.c_attn[v]"``); a target
without one selects every slice of a fused module.

Targets are resolved once to full module paths, and that list is what the tracker, the SORSA
adapter and peft's ``target_modules`` receive.

Only capturable leaves are candidates: the peft wrapper of an adapted layer, never its inner
``base_layer``, ``lora_A`` or ``lora_B``. Paths are reported without the ``base_model.model.``
prefix that peft adds, so runs of different methods share layer names.

peft and transformers are imported by the extractors on first use, so that the target rule
alone loads without them (the checkpoint importer needs no model classes).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from spectra.architectures import SLICES
from spectra.errors import SpectraError
from spectra.factors import Layout

PEFT_PREFIX = "base_model.model."
GLOB_CHARS = "*?["
ADAPTER_EPS = 1e-5  # peft AdaLoRA's ranknum + 1e-5


Extractor = Callable[[nn.Module], "Layout | None"]
EXTRACTORS: list[Extractor] = []


def extractor(fn: Extractor) -> Extractor:
    """Register ``fn`` as the extractor of one method (tried in registration order)."""
    EXTRACTORS.append(fn)
    return fn


@torch.no_grad()
def layout(module: nn.Module) -> Layout | None:
    """The module's layout under the first extractor that recognises it, else None."""
    return next((found for fn in EXTRACTORS if (found := fn(module)) is not None), None)


def _scalar(value) -> torch.Tensor:
    """A 1-element float64 tensor (the ``scale`` part)."""
    return torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(1)


def _check_unmerged(module: nn.Module) -> None:
    if getattr(module, "merged", False):
        raise SpectraError("an adapter is merged into its base weight; unmerge it before tracking")


def _active_adapter(module: nn.Module) -> str:
    """The one active, unmerged adapter of a peft layer; SpectraError otherwise."""
    _check_unmerged(module)
    active = list(module.active_adapters)
    if len(active) != 1:
        raise SpectraError(f"spectra tracks one active adapter per layer, found {active}")
    return active[0]


def _torch_layout(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return weight.T if fan_in_fan_out else weight


@extractor
def sorsa(module: nn.Module) -> Layout | None:
    """SORSA (this package's layer and the reference ``sorsa`` package): W + s · (B ⊙ S) A."""
    names = ("sorsa_A", "sorsa_S", "sorsa_B", "weight")
    if not all(isinstance(getattr(module, a, None), torch.Tensor) for a in names):
        return None
    _check_unmerged(module)
    parts = {
        "left": module.sorsa_B,
        "values": module.sorsa_S,
        "right": module.sorsa_A,
        "scale": _scalar(getattr(module, "scale", 1.0)),
    }
    return Layout("sorsa", "lowrank", {"base": module.weight}, parts)


@extractor
def adalora(module: nn.Module) -> Layout | None:
    """peft AdaLoRA: base + B (A ⊙ E) · scaling / (ranknum + 1e-5), no singular values."""
    from peft.tuners.adalora import SVDLinear

    if not isinstance(module, SVDLinear):
        return None
    name = _active_adapter(module)
    scale = module.scaling[name] / (module.ranknum[name].detach().double().cpu() + ADAPTER_EPS)
    parts = {
        "left": module.lora_B[name],
        "right": module.lora_A[name].double() * module.lora_E[name].double(),  # exact product
        "scale": _scalar(scale),
    }
    base = _torch_layout(module.get_base_layer().weight, module.fan_in_fan_out)
    return Layout("adalora", "lowrank", {"base": base}, parts)


@extractor
def lora(module: nn.Module) -> Layout | None:
    """peft LoRA / PiSSA (base + scaling · B A) and DoRA (magnitude ⊙ direction)."""
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(module, LoraLinear):
        return None
    name = _active_adapter(module)
    parts = {
        "left": module.lora_B[name].weight,
        "right": module.lora_A[name].weight,
        "scale": _scalar(module.scaling[name]),
    }
    base = {"base": _torch_layout(module.get_base_layer().weight, module.fan_in_fan_out)}
    if name in module.lora_magnitude_vector:
        parts["magnitude"] = module.lora_magnitude_vector[name].weight
        return Layout("dora", "dora", base, parts)
    return Layout("lora", "lowrank", base, parts)


@extractor
def full(module: nn.Module) -> Layout | None:
    """Full fine-tuning of nn.Linear, or of GPT-2's Conv1D (stored in × out, transposed here)."""
    if isinstance(module, nn.Linear):
        return Layout("ft", "dense", {}, {"weight": module.weight})
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return Layout("ft", "dense", {}, {"weight": module.weight.T})
    return None


def _is_adapter(module: nn.Module) -> bool:
    found = layout(module)
    return found is not None and found.kind != "dense"


def candidates(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of every capturable module, skipping the insides of adapter layers."""
    inside: str | None = None
    for path, module in model.named_modules():
        if inside is not None and path.startswith(inside):
            continue
        inside = None
        if layout(module) is None:
            continue
        if _is_adapter(module):
            inside = f"{path}."
        yield path.removeprefix(PEFT_PREFIX), module


def slice_name(path: str, part: str) -> str:
    """The layer name of slice ``part`` (q, k or v) of the fused module at ``path``."""
    return f"{path}[{part}]"


def split_slice(name: str) -> tuple[str, str | None]:
    """(module, slice) of a layer or target name; slice None when it names no slice."""
    if name.endswith("]") and "[" in name:
        module, _, part = name[:-1].rpartition("[")
        if part in SLICES:
            return module, part
    return name, None


def _selects(target: str, path: str) -> bool:
    if any(c in target for c in GLOB_CHARS):
        return fnmatch.fnmatchcase(path, target)
    return path == target or path.endswith(f".{target}")


def matches(target: str, path: str) -> bool:
    """Whether ``target`` selects the layer ``path`` (see the module docstring)."""
    target_module, target_slice = split_slice(target)
    module, part = split_slice(path)
    if target_slice is not None and target_slice != part:
        return False
    return _selects(target_module, module)


def as_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """Targets as a tuple of names; one string is one target."""
    return (targets,) if isinstance(targets, str) else tuple(targets)


def resolve(targets: str | Iterable[str], paths: Iterable[str]) -> list[str]:
    """The paths, in their order, that the targets select.

    SpectraError, listing the names that could be targets, when some target selects nothing.
    """
    targets, paths = as_targets(targets), list(paths)
    if not targets:
        raise SpectraError("no targets given")
    missing = [t for t in targets if not any(matches(t, path) for path in paths)]
    if missing:
        names = sorted({path.rsplit(".", 1)[-1] for path in paths})
        raise SpectraError(
            f"targets {missing} match no module; module names that can be targets: "
            f"{', '.join(names) or '(none)'}"
        )
    return [path for path in paths if any(matches(t, path) for t in targets)]


def find_targets(model: nn.Module, targets: str | Iterable[str]) -> dict[str, nn.Module]:
    """{path: module} of the capturable modules the targets select, in model order."""
    found = dict(candidates(model))
    return {path: found[path] for path in resolve(targets, found)}


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
