"""The capturable layers of a model (fused projections as slices), the default targets, and
the targets resolved on a model by the one rule of :mod:`spectra.capture.names`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper
from torch import nn

from spectra import architectures
from spectra.architectures import COMMON, fused_rows, spec_rows
from spectra.capture.experts import ExpertStack, expert_stacks
from spectra.capture.layouts import recognise, weight_shape
from spectra.capture.names import (
    expert_name,
    layer_path,
    matches,
    resolve,
    selects,
    slice_name,
    split_expert,
    split_slice,
    target_names,
)
from spectra.errors import SpectraError
from spectra.factors import Rows

Fusing = Mapping[str, str]  # target → layout spec of fused modules the registry does not know


class Layer(NamedTuple):
    """A capturable layer: its module's path, the module, and a slice's output rows; or for
    an expert, its 3-D parameter's path, the :class:`ExpertStack` and the expert's index."""

    path: str
    module: nn.Module | ExpertStack
    rows: Rows | None = None
    expert: int | None = None


def model_config(model: nn.Module):
    """The model's transformers config (a peft model's is its base model's), or None."""
    config = getattr(model, "config", None)
    return config if hasattr(config, "to_dict") or isinstance(config, Mapping) else None


def _slices(path: str, out_features: int, config, fused: Fusing) -> dict[str, Rows] | None:
    """The rows of each slice of the module at ``path`` when it is a fused projection."""
    spec = next((spec for target, spec in fused.items() if selects(target, path)), None)
    if spec is not None:
        return spec_rows(spec, config, out_features)
    return fused_rows(config, path, out_features)


def candidates(model: nn.Module, fused: Fusing | None = None) -> Iterator[tuple[str, Layer]]:
    """(name, layer) of every capturable module, a fused projection once per slice.

    Never the insides of a peft tuner layer (its ``base_layer``, ``lora_A``, ``default``, …),
    whether spectra captures that layer or not, nor of a ``modules_to_save`` copy. Names carry
    no wrapper components (see :func:`~spectra.capture.names.layer_path`).
    """
    config, fused = model_config(model), dict(fused or {})
    inside: str | None = None
    for path, module in model.named_modules():
        if inside is not None and path.startswith(inside):
            continue
        stacks = expert_stacks(module)
        if stacks:  # 3-D expert parameters, each E layers
            inside = f"{path}."
            for stack in stacks:
                source = f"{layer_path(path)}.{stack.name}"
                for expert in range(stack.count):
                    yield expert_name(source, expert), Layer(source, stack, None, expert)
            continue
        found = recognise(module)
        wrapper = isinstance(module, (BaseTunerLayer, ModulesToSaveWrapper))
        adapter = wrapper or (found is not None and found.kind != "dense")
        inside = f"{path}." if adapter else None
        if found is None:
            continue
        path = layer_path(path)
        rows = _slices(path, weight_shape(found)[0], config, fused)
        if rows is None:
            yield path, Layer(path, module)
            continue
        for part, part_rows in rows.items():
            yield slice_name(path, part), Layer(path, module, part_rows)


def _is_adapter(layer: Layer) -> bool:
    return recognise(layer.module).kind != "dense"


def default_layers(model: nn.Module, found: Mapping[str, Layer]) -> tuple[str, ...]:
    """The query and value projections: the layers that carry an adapter (a peft model's
    ``target_modules`` as peft resolved them, or SORSA's), else the registry's names for the
    config's ``model_type``, else the first pair of :data:`~spectra.architectures.COMMON`
    names present; SpectraError listing the candidates when there is none."""
    adapted = tuple(name for name, layer in found.items() if _is_adapter(layer))
    if adapted:
        return adapted
    config = model_config(model)
    registered = architectures.default_targets(config)
    if registered:
        return registered
    for pair in COMMON:
        if all(any(matches(t, name) for name in found) for t in pair):
            return pair
    name = architectures.model_type(config)
    raise SpectraError(
        f"no targets given and {f'a {name!r} model' if name else 'this model'} has no known "
        f"query/value projections; name them with targets=…; module names that can be "
        f"targets: {target_names(found)}"
    )


def find_layers(
    model: nn.Module, targets: str | Iterable[str] | None = None, fused: Fusing | None = None
) -> dict[str, Layer]:
    """{name: layer} of the capturable layers the targets select (None: the architecture's
    query and value projections), in model order; ``fused`` names the layout of fused
    projections the registry does not know (``{"wqkv": "32*128,128,128"}``)."""
    found = dict(candidates(model, fused))
    paths = {layer.path for layer in found.values()}
    unused = [t for t in fused or {} if not any(selects(t, path) for path in paths)]
    if unused:
        raise SpectraError(f"fused layouts given for {unused}, which match no module")
    if targets is None:
        targets = default_layers(model, found)
    return {name: found[name] for name in resolve(targets, found)}


def find_targets(
    model: nn.Module, targets: str | Iterable[str] | None = None, fused: Fusing | None = None
) -> dict[str, nn.Module]:
    """{name: module} of the capturable layers the targets select (see :func:`find_layers`);
    the slices of a fused projection share its module."""
    return {name: layer.module for name, layer in find_layers(model, targets, fused).items()}


def expert_paths(names: Iterable[str]) -> list[str]:
    """The 3-D expert parameters that layer names select, each once, in order."""
    return list(dict.fromkeys(path for path, e in map(split_expert, names) if e is not None))


def module_paths(names: Iterable[str]) -> list[str]:
    """The module paths of layer names, each once, in order (a slice names its module, an
    expert its 3-D parameter)."""
    return list(dict.fromkeys(split_slice(split_expert(name)[0])[0] for name in names))
