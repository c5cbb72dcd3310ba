"""How checkpoints become a run: which layers, and their tensors at each step.

One import takes one method: full weights (FT, ``dense`` layers) or one peft adapter
configuration (``lowrank`` / ``dora`` layers, the frozen base once). Layers are the
fine-tuned model's module paths (without peft's prefix), as a tracked run of the same model
names them; a fused projection becomes its ``[q]``/``[k]``/``[v]`` slices. Targets are
resolved by :func:`spectra.capture.resolve`, the one target rule: by default the adapter's
modules, or for full weights the architecture's query and value projections. Names, shapes
and base keys of every checkpoint are checked from the file headers before a tensor is read
(an adapter's ranks against its config when its layers are built).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch

from spectra.architectures import COMMON, default_targets, fused_rows, model_type
from spectra.capture.names import matches, resolve, slice_name, split_slice
from spectra.errors import SpectraError, first_line
from spectra.factors import Rows, row_count
from spectra.importer.adapter import approximate_init
from spectra.importer.align import align
from spectra.importer.experts import ExpertLayers
from spectra.importer.model import Model
from spectra.importer.sources import Checkpoint
from spectra.importer.staging import Layers
from spectra.methods import get
from spectra.snapshots import Manifest, Target


def _default_targets(config: dict | None, names: list[str]) -> tuple[str, ...]:
    """The architecture's query/value targets, else the first common pair the names have."""
    registered = default_targets(config)
    if registered:
        return registered
    for pair in COMMON:
        if all(any(matches(t, name) for name in names) for t in pair):
            return pair
    raise SpectraError(
        f"no default query/value targets for model_type {model_type(config)!r}; give --targets"
    )


def _layer_names(module: str, slices: dict[str, Rows] | None) -> list[str]:
    return [slice_name(module, s) for s in slices] if slices else [module]


def _targets(
    shapes: dict[str, tuple[int, int]], slices: dict[str, dict | None], selected: list[str]
) -> dict[str, Target]:
    """Target of every selected layer from its module's torch-layout shape; ``kind`` and
    ``rank`` are filled in by the caller."""
    targets = {}
    for layer in selected:
        module, part = split_slice(layer)
        rows = slices[module][part] if part else None
        out, cols = shapes[module]
        shape = (row_count(rows), cols) if rows else (out, cols)
        targets[layer] = Target("dense", shape, None, module if rows else None, rows)
    return targets


def _modules(selected: list[str]) -> list[str]:
    return list(dict.fromkeys(split_slice(layer)[0] for layer in selected))


class Import:
    """What both kinds of import share: the manifest of the run they make."""

    method: str
    targets: dict[str, Target]
    base: Model
    base_of: dict[str, str]  # module → base module
    modules: list[str]
    checkpoints: list[Checkpoint]

    def manifest(self, run: str, model: str) -> Manifest:
        """The run's manifest (after :meth:`frozen`, which fills in the adapter ranks)."""
        ranks = {t.rank for t in self.targets.values()}
        rank = ranks.pop() if len(ranks) == 1 else None
        return Manifest(run=run, method=self.method, targets=self.targets, model=model, rank=rank)

    def reads(self) -> list[tuple[Model, list[str]]]:
        """The full-weight models this import reads, each with the names of its tensors read."""
        return [(self.base, [self.base.modules[self.base_of[m]] for m in self.modules])]


class FullImport(Import):
    """Full-weight checkpoints (FT): each step stores every target module's whole weight."""

    def __init__(self, checkpoints: list[Checkpoint], base: Model, targets, method: str | None):
        first: Model = checkpoints[0].reader
        self.checkpoints, self.base = checkpoints, base
        self.method = method or "ft"
        config = first.config or base.config
        self.transposed, slices, shapes = {}, {}, {}
        for module in first.modules:
            stored = first.shape(module)
            self.transposed[module], slices[module] = _orient(config, module, stored)
            shapes[module] = stored[::-1] if self.transposed[module] else stored
        names = [n for m in first.modules for n in _layer_names(m, slices[m])]
        self.experts = ExpertLayers(first, base, config)  # MoE experts, in the model's layout
        names += self.experts.names()
        selected = self.experts.select(resolve(targets or _default_targets(config, names), names))
        self.modules = _modules(selected)
        self.base_of = align(self.modules, base.modules, first.path, base.path) if selected else {}
        for checkpoint in checkpoints:
            self._check(checkpoint.reader)
            self.experts.check_checkpoint(checkpoint.reader)
        self.targets = _targets(shapes, slices, selected) | self.experts.targets()

    def _check(self, model: Model) -> None:
        for module in self.modules:
            if module not in model.modules:
                raise SpectraError(f"{model.path}: no tensor {module}.weight")
            name, base_name = model.modules[module], self.base.modules[self.base_of[module]]
            shape, base_shape = model.tensors.shapes[name], self.base.tensors.shapes[base_name]
            if shape != base_shape:
                raise SpectraError(
                    f"{model.tensors.files[name]}: tensor {name} has shape {shape}, but the "
                    f"base's {self.base.tensors.files[base_name]} {base_name} has {base_shape}"
                )

    def _weights(self, model: Model, names: dict[str, str]) -> Layers:
        layers = {}
        for module in self.modules:
            weight = model.weight(names[module])
            layers[module] = {"weight": weight.T if self.transposed[module] else weight}
        return layers

    def reads(self) -> list[tuple[Model, list[str]]]:
        """Every model's target tensors, then those of its selected expert stacks."""
        models = [(self.base, self.base_of, True)]
        models += [(c.reader, {m: m for m in self.modules}, False) for c in self.checkpoints]
        return [(model, [model.modules[names[m]] for m in self.modules]
                 + self.experts.reads(model, base)) for model, names, base in models]  # fmt: skip

    def frozen(self) -> Layers:
        return {}

    def steps(self) -> Iterator[tuple[int, Layers]]:
        yield 0, self._weights(self.base, self.base_of) | self.experts.weights(self.base, True)
        for checkpoint in self.checkpoints:
            reader = checkpoint.reader
            names = {m: m for m in self.modules}
            yield checkpoint.step, self._weights(reader, names) | self.experts.weights(reader)

    def details(self) -> dict:
        return {"transposed": sorted(m for m in self.modules if self.transposed[m])}


def _orient(config: dict | None, module: str, shape: tuple[int, ...]):
    """(stored in × out, {slice: rows} or None) of a module from its stored weight's shape.

    A fused projection's slices must take every output row: the stored shape tells whether
    the module keeps its weight out × in (nn.Linear) or in × out (GPT-2's Conv1D).
    """
    try:
        return False, fused_rows(config, module, shape[0])
    except SpectraError as exc:
        try:
            return True, fused_rows(config, module, shape[1])
        except SpectraError:
            raise exc from None


class AdapterImport(Import):
    """peft adapter checkpoints: the frozen base once, each step's factors (as a tracked run)."""

    def __init__(self, checkpoints: list[Checkpoint], base: Model, targets, method: str | None):
        first = checkpoints[0].reader
        for checkpoint in checkpoints[1:]:
            checkpoint.reader.check_same(first)
        if method is not None and method != first.method:
            raise SpectraError(
                f"--method {method}, but {first.config_file} is a {first.method} adapter"
            )
        self.checkpoints, self.base, self.first = checkpoints, base, first
        self.method = first.method
        self.approximate = approximate_init(first.raw)
        if self.approximate:
            warnings.warn(
                f"spectra: {first.config_file} uses a randomized PiSSA init; step 0 is rebuilt "
                "by peft's code under a fixed seed, not with the training run's draw",
                RuntimeWarning,
                stacklevel=3,
            )
        weights_file = first.tensors.files[next(iter(first.modules.values()))["lora_A"]]
        shapes = {
            m: (first.tensors.shapes[parts["lora_B"]][0], first.tensors.shapes[parts["lora_A"]][1])
            for m, parts in first.modules.items()
        }
        slices = {m: fused_rows(base.config, m, shapes[m][0]) for m in first.modules}
        names = [n for m in first.modules for n in _layer_names(m, slices[m])]
        try:
            selected = resolve(targets or names, names)
        except SpectraError as exc:
            raise SpectraError(f"{weights_file}: the adapter's modules do not fit: {exc}") from None
        self.modules = _modules(selected)
        self.base_of = align(self.modules, base.modules, first.path, base.path)
        fan_in_fan_out = bool(first.config.fan_in_fan_out)
        for module in self.modules:
            stored = base.tensors.shapes[base.modules[self.base_of[module]]]
            shapes[module] = stored[::-1] if fan_in_fan_out else stored
            for checkpoint in checkpoints:
                checkpoint.reader.check(module, shapes[module])
        self.targets = _targets(shapes, slices, selected)
        self.layers, self.init = {}, {}

    def frozen(self) -> Layers:
        from spectra.capture import layout
        from spectra.importer.layer import adapted_layer

        for module in self.modules:
            weight = self.base.weight(self.base_of[module])
            try:
                layer = adapted_layer(module, weight, self.first.layer_config(module))
            except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
                raise SpectraError(
                    f"{self.first.config_file}: peft cannot build {module} from it "
                    f"({first_line(exc)})"
                ) from None
            self.layers[module] = layer
            self.init[module] = layout(self.layers[module])
        for layer, target in self.targets.items():
            init = self.init[split_slice(layer)[0]]
            target.kind, target.rank = init.kind, int(init.step["left"].shape[1])
        return {m: self.init[m].frozen for m in self.modules}

    def steps(self) -> Iterator[tuple[int, Layers]]:
        from spectra.importer.layer import load

        yield 0, {m: self.init[m].step for m in self.modules}
        for checkpoint in self.checkpoints:
            adapter = checkpoint.reader
            layers = {}
            for module in self.modules:
                parts = adapter.parts(module)
                self._check_rank(adapter, module, parts)
                layers[module] = load(self.layers[module], parts).step
            yield checkpoint.step, layers

    def _check_rank(self, adapter, module: str, parts: dict[str, torch.Tensor]) -> None:
        layer = self.layers[module]
        name = layer.active_adapters[0]
        rank = layer.r[name]
        if parts["lora_A"].shape[0] != rank:
            tensor = adapter.modules[module]["lora_A"]
            raise SpectraError(
                f"{adapter.tensors.files[tensor]}: tensor {tensor} has rank "
                f"{parts['lora_A'].shape[0]}, but {adapter.config_file} gives r = {rank}"
            )

    def details(self) -> dict:
        layers = {}
        for module in self.modules:
            layer = self.layers[module]
            name = layer.active_adapters[0]
            layers[module] = {
                "r": int(layer.r[name]),
                "scale": float(self.init[module].step["scale"]),
            }
        details = {"adapter_config": self.first.raw, "layers": layers}
        if self.approximate:
            details["step0"] = (
                f"approximate: init_lora_weights={self.first.raw['init_lora_weights']!r} draws "
                f"random numbers; the residual base is peft's init under seed 0, not the "
                f"training run's"
            )
        return details


def plan_import(checkpoints: list[Checkpoint], base: Model, targets, method: str | None):
    """The import of these checkpoints (a FullImport or an AdapterImport), checked."""
    full = [c for c in checkpoints if isinstance(c.reader, Model)]
    if full and len(full) < len(checkpoints):
        adapter = next(c for c in checkpoints if not isinstance(c.reader, Model))
        raise SpectraError(
            f"{full[0].path} holds full weights but {adapter.path} an adapter; "
            "one import takes one method"
        )
    if method is not None:
        get(method)  # a known method
    importer = FullImport if full else AdapterImport
    if not full and checkpoints[0].reader.raw.get("target_parameters"):
        from spectra.importer.expert_adapter import ExpertAdapterImport  # LoRA on MoE experts

        importer = ExpertAdapterImport
    return importer(checkpoints, base, targets, method)
