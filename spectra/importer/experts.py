"""MoE expert stacks in a checkpoint, found and assembled by transformers' own conversion.

transformers 5 holds each expert projection as one 3-D parameter (``…experts.down_proj``,
[E, out, in] or, when its experts module ``is_transposed``, [E, in, out]; see
:mod:`spectra.capture.experts`), but saves checkpoints in their original format, one 2-D
weight per expert and projection (Mixtral's ``…block_sparse_moe.experts.3.w1.weight``; gate
and up fused into ``gate_up_proj`` on loading). So that imported runs name and hold experts
as tracked runs do, the model's layout comes from the config's architecture built on the
meta device (no memory), and the checkpoint keys are mapped onto it by the conversion
mapping that ``from_pretrained`` applies (``get_model_conversion_mapping``,
``rename_source_key``); expert e of a stack is assembled from its expert's tensors alone by
the converter's own operations (``MergeModulelist`` over one expert, then ``Concatenate``…).
A checkpoint that already stores the 3-D stack (``save_pretrained(save_original_format=
False)``) is read from it whole, by any reader (files, the Hub, sharded checkpoints).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from spectra.capture.names import expert_name, split_expert
from spectra.errors import SpectraError
from spectra.importer.align import align
from spectra.importer.tensors import Tensors
from spectra.snapshots import Target


@dataclass
class Stack:
    """A 3-D expert parameter of the model: ``path`` in the model's own key space, E experts,
    stored transposed or not, and where each expert's matrix comes from in the checkpoint."""

    path: str
    count: int
    shape: tuple[int, int]  # (out, in) of one expert, torch layout
    transposed: bool
    stored: str | None = None  # the 3-D tensor holding every expert, when there is one
    converter: object | None = None  # transformers' WeightConverter assembling one expert
    sources: dict[int, list[str]] = field(default_factory=dict)  # expert → its tensors


def meta_model(config: dict):
    """The config's architecture built on the meta device (its layout, without memory);
    transformers' log lines about the config stay off the terminal."""
    import transformers
    from transformers.utils import logging

    names = config.get("architectures") or []
    model_class = next(
        (getattr(transformers, n) for n in names if hasattr(transformers, n)),
        transformers.AutoModelForCausalLM,
    )
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        settings = transformers.AutoConfig.for_model(**config)
        with torch.device("meta"):
            return model_class._from_config(settings)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        kind = config.get("model_type")
        raise SpectraError(f"cannot build the {kind!r} model's layout ({exc})") from None
    finally:
        logging.set_verbosity(level)


def model_stacks(model) -> dict[str, tuple[int, tuple[int, int], bool]]:
    """{parameter path: (E, (out, in), transposed)} of the model's experts modules."""
    found = {}
    for path, module in model.named_modules():
        if not hasattr(module, "is_transposed"):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.ndim == 3 and param.is_floating_point():
                e, a, b = param.shape
                found[f"{path}.{name}"] = (e, (b, a) if module.is_transposed else (a, b),
                                           bool(module.is_transposed))  # fmt: skip
    return found


def _expert_index(pattern: str, key: str) -> int | None:
    """The expert number that the ``*`` of a converter's source pattern matches in ``key``."""
    found = re.search(re.escape(pattern).replace(r"\*", r"(\d+)"), key)
    return int(found[1]) if found else None


def find_stacks(tensors: Tensors, config: dict | None) -> dict[str, Stack]:
    """The expert stacks of a checkpoint, by their path in the model's layout; {} unless the
    config's architecture has experts modules (transformers 5; older versions keep a Linear per
    expert, imported as any other layer)."""
    if not config or not any("experts" in name for name in tensors.shapes):
        return {}
    try:  # transformers ≥ 5: 3-D experts and the conversion mapping that makes them
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            MergeModulelist,
            WeightConverter,
            apply_renamings,
            rename_source_key,
        )
    except ImportError:  # pragma: no cover - older transformers keep one Linear per expert
        return {}

    model = meta_model(config)
    layout = model_stacks(model)
    if not layout:
        return {}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [
        t for t in transforms if isinstance(t, WeightConverter)
        and isinstance(t.operations[0], MergeModulelist) and t.operations[0].dim == 0
    ]  # fmt: skip
    meta_keys = dict.fromkeys(model.state_dict())
    stacks = {path: Stack(path, e, shape, t) for path, (e, shape, t) in layout.items()}
    for name, shape in tensors.shapes.items():
        target, pattern = rename_source_key(
            name, renamings, converters, model.base_model_prefix, meta_keys
        )
        stack = stacks.get(target)
        if stack is None:
            continue
        if pattern is None and len(shape) == 3:
            stack.stored = name
            continue
        converter = next(c for c in converters if pattern in c.source_patterns)
        expert = _expert_index(pattern, apply_renamings(name, renamings))
        if expert is None:
            continue
        stack.converter = converter
        sources = stack.sources.setdefault(expert, [None] * len(converter.source_patterns))
        sources[converter.source_patterns.index(pattern)] = name
    complete = {}
    for path, stack in stacks.items():
        whole = sorted(stack.sources) == list(range(stack.count)) and all(
            all(sources) for sources in stack.sources.values()
        )
        if stack.stored is not None or whole:
            complete[path] = stack
    return complete


def expert_matrix(tensors: Tensors, stack: Stack, expert: int) -> torch.Tensor:
    """Expert ``expert``'s matrix (out × in, as stored: dtype unchanged), assembled from its
    own tensors by the converter's operations."""
    converter = stack.converter
    names = zip(converter.source_patterns, stack.sources[expert], strict=True)
    parts = {pattern: [tensors.read(name)] for pattern, name in names}
    for op in converter.operations:
        parts = op.convert(parts, source_patterns=converter.source_patterns,
                           target_patterns=converter.target_patterns,
                           full_layer_name=stack.path)  # fmt: skip
    (merged,) = parts.values()
    matrix = merged[0].T if stack.transposed else merged[0]
    if tuple(matrix.shape) != stack.shape:
        raise SpectraError(
            f"{tensors.where}: expert {expert} of {stack.path} has shape {tuple(matrix.shape)}, "
            f"the config says {stack.shape}"
        )
    return matrix


def stack_tensors(stack: Stack) -> list[str]:
    """The names of the checkpoint tensors that hold ``stack``'s experts."""
    if stack.stored:
        return [stack.stored]
    return list(dict.fromkeys(n for names in stack.sources.values() for n in names))


def stacked(tensors: Tensors, stack: Stack) -> torch.Tensor:
    """Every expert's matrix, [E, out, in] (torch layout): the stored 3-D tensor, read once,
    or each expert assembled from its own tensors."""
    if stack.stored is None:
        return torch.stack([expert_matrix(tensors, stack, e) for e in range(stack.count)])
    whole = tensors.read(stack.stored)  # 3-D: find_stacks takes no other as stored
    whole = whole.mT if stack.transposed else whole
    if tuple(whole.shape) != (stack.count, *stack.shape):
        raise SpectraError(
            f"{tensors.where}: {stack.stored} has shape {tuple(whole.shape)}, the config says "
            f"{stack.count} experts of {stack.shape}"
        )
    return whole.contiguous()


class ExpertLayers:
    """The expert layers of a full-weight import (FT): their names, the ones the targets select,
    their targets and each step's stacked tensors, aligned with the base model's stacks."""

    def __init__(self, first, base, config: dict | None):
        self.stacks = {first.path: find_stacks(first.tensors, config)}
        self.base, self.first, self.config = base, first, config
        self.paths: list[str] = []
        self.base_of: dict[str, str] = {}

    def names(self) -> list[str]:
        """Every expert's layer name, ``<stack path>[e]``."""
        stacks = self.stacks[self.first.path]
        return [expert_name(p, e) for p, s in stacks.items() for e in range(s.count)]

    def select(self, selected: list[str]) -> list[str]:
        """Take the selected expert layers (aligned with the base's stacks); return the rest."""
        stacks = self.stacks[self.first.path]
        experts = [n for n in selected if split_expert(n)[1] is not None
                   and split_expert(n)[0] in stacks]  # fmt: skip
        self.selected = experts
        self.paths = list(dict.fromkeys(split_expert(n)[0] for n in experts))
        if self.paths:
            base_stacks = self.of(self.base)
            self.base_of = align(self.paths, base_stacks, self.first.path, self.base.path)
            for path in self.paths:
                self.check(self.base, base_stacks[self.base_of[path]], stacks[path])
        return [n for n in selected if n not in experts]

    def of(self, model) -> dict[str, Stack]:
        """The stacks of ``model`` (found once per model)."""
        if model.path not in self.stacks:
            self.stacks[model.path] = find_stacks(model.tensors, model.config or self.config)
        return self.stacks[model.path]

    def check(self, model, found: Stack | None, want: Stack) -> None:
        """SpectraError unless ``model`` has the stack ``want`` with the same experts and shape."""
        if found is None or (found.count, found.shape) != (want.count, want.shape):
            got = "none" if found is None else f"{found.count} × {found.shape}"
            raise SpectraError(
                f"{model.path}: expert stack {want.path} is {got}, expected "
                f"{want.count} experts of {want.shape}"
            )

    def check_checkpoint(self, model) -> None:
        stacks = self.of(model)
        for path in self.paths:
            self.check(model, stacks.get(path), self.stacks[self.first.path][path])

    def reads(self, model, base: bool = False) -> list[str]:
        """The names of the tensors of ``model`` (or of the base) that hold the selected stacks."""
        if not self.paths:
            return []
        stacks = self.of(model)
        return [
            n for p in self.paths for n in stack_tensors(stacks[self.base_of[p] if base else p])
        ]

    def targets(self) -> dict[str, Target]:
        stacks = self.stacks[self.first.path]
        return {
            name: Target("dense", stacks[path].shape, None, path, None, expert)
            for name in self.selected
            for path, expert in [split_expert(name)]
        }

    def weights(self, model, base: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """{stack path: {"weight": [E, out, in]}} of a checkpoint (or of the base)."""
        stacks = self.of(model)
        return {
            path: {"weight": stacked(model.tensors, stacks[self.base_of[path] if base else path])}
            for path in self.paths
        }
