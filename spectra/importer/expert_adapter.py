"""peft adapters on MoE expert parameters (``target_parameters``), rebuilt by peft's own code.

Each adapted experts module becomes a stand-in module at its own path holding the base's
expert stacks (in the model's own layout, ``is_transposed`` as the model sets it, see
:mod:`.experts`); ``get_peft_model`` wraps it in its ParamWrappers under the saved config,
``set_peft_model_state_dict`` loads each checkpoint's factors into them, and
:func:`spectra.capture.layout` reads them exactly as the tracker reads a live model. peft
adapts parameters with LoRA only (no DoRA, no PiSSA init); an adapter that targets modules as
well as parameters is not imported.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from spectra.capture.names import PEFT_PREFIX, expert_name, resolve, split_expert
from spectra.errors import SpectraError
from spectra.importer.experts import find_stacks, stack_tensors, stacked
from spectra.importer.model import Model
from spectra.importer.plan import Import
from spectra.importer.staging import Layers
from spectra.snapshots import Target

SEED = 0  # LoRA's random A at step 0 (it does not change W_0)


def selects(key: str, targets) -> bool:
    """peft's rule for target_parameters: the key is a target or ends in ``.<target>``."""
    return any(key == t or key.endswith(f".{t}") for t in targets)


def stand_in(path: str, stacks: dict[str, torch.Tensor], transposed: bool) -> nn.Module:
    """A root module holding, at ``path``, an experts module with these 3-D parameters."""
    root = parent = nn.Module()
    *parents, leaf = path.split(".")
    for name in parents:
        child = nn.Module()
        parent.add_module(name, child)
        parent = child
    experts = nn.Module()
    experts.is_transposed = transposed
    for name, stack in stacks.items():
        experts.register_parameter(name, nn.Parameter(stack, requires_grad=False))
    parent.add_module(leaf, experts)
    return root


class ExpertAdapterImport(Import):
    """LoRA on expert parameters: the frozen base stacks once, each step's factors."""

    def __init__(self, checkpoints, base, targets, method: str | None):
        first = checkpoints[0].reader
        for checkpoint in checkpoints[1:]:
            checkpoint.reader.check_same(first)
        if first.raw.get("target_modules"):
            raise SpectraError(
                f"{first.config_file}: an adapter on modules and on parameters at once; "
                "spectra imports one or the other"
            )
        if method is not None and method != first.method:
            raise SpectraError(
                f"--method {method}, but {first.config_file} is a {first.method} adapter"
            )
        self.checkpoints, self.base, self.first, self.method = checkpoints, base, first, "lora"
        self.stacks = find_stacks(base.tensors, base.config)
        wanted = first.raw["target_parameters"]
        names = [expert_name(p, e) for p, s in self.stacks.items() if selects(p, wanted)
                 for e in range(s.count)]  # fmt: skip
        if not names:
            raise SpectraError(
                f"{first.config_file}: target_parameters {wanted} select no expert stack of the "
                f"base {base.path}"
            )
        self.selected = resolve(targets or names, names)
        self.modules = list(dict.fromkeys(split_expert(n)[0] for n in self.selected))
        self.owners = list(dict.fromkeys(p.rpartition(".")[0] for p in self.modules))
        for owner in self.owners:
            if not any(n.startswith(f"{PEFT_PREFIX}{owner}.") for n in first.tensors.shapes):
                raise SpectraError(f"{first.path}: no adapter tensors for {owner}")
        self.base_of = {p: p for p in self.modules}
        self.targets: dict[str, Target] = {}
        self.models: dict[str, nn.Module] = {}  # experts module path → its peft stand-in
        self.layers: dict[str, tuple] = {}  # stack path → (ExpertStack, its step-0 Layout)

    def reads(self) -> list[tuple[Model, list[str]]]:
        """The base's tensors holding the adapted expert stacks."""
        return [(self.base, [n for p in self.modules for n in stack_tensors(self.stacks[p])])]

    def frozen(self) -> Layers:
        from peft import get_peft_model

        from spectra.capture import layout
        from spectra.capture.experts import expert_stacks

        for owner in self.owners:
            names = [p for p in self.stacks if p.rpartition(".")[0] == owner]
            transposed = self.stacks[names[0]].transposed
            params = {}
            for path in names:  # the model's own layout: [E, in, out] when transposed
                stack = stacked(self.base.tensors, self.stacks[path])
                params[path.rpartition(".")[2]] = stack.transpose(1, 2) if transposed else stack
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                torch.manual_seed(SEED)
                warnings.simplefilter("ignore")  # peft: no target_modules, parameters only
                model = get_peft_model(stand_in(owner, params, transposed),
                                       copy.deepcopy(self.first.config))  # fmt: skip
            self.models[owner] = model
            for stack in expert_stacks(model.base_model.model.get_submodule(owner)):
                path = f"{owner}.{stack.name}"
                if path in self.modules:
                    self.layers[path] = (stack, layout(stack))
        for name in self.selected:
            path, expert = split_expert(name)
            init = self.layers[path][1]
            rank = int(init.step["left"].shape[-1])
            self.targets[name] = Target(init.kind, self.stacks[path].shape, rank, path, None,
                                        expert)  # fmt: skip
        return {path: init.frozen for path, (_, init) in self.layers.items()}

    def _load(self, adapter, owner: str) -> None:
        """Put the adapter's factors of the experts module ``owner`` into its stand-in."""
        from peft import set_peft_model_state_dict

        prefix = f"{PEFT_PREFIX}{owner}."
        state = {n: adapter.tensors.read(n) for n in adapter.tensors.shapes if n.startswith(prefix)}
        loaded = set_peft_model_state_dict(self.models[owner], state)
        missing = [k for k in loaded.missing_keys if "lora_" in k]
        if missing or loaded.unexpected_keys:
            what = missing[0] if missing else loaded.unexpected_keys[0]
            raise SpectraError(f"{adapter.path}: the factors of {owner} do not fit ({what})")

    def steps(self) -> Iterator[tuple[int, Layers]]:
        from spectra.capture import layout

        yield 0, {path: init.step for path, (_, init) in self.layers.items()}
        for checkpoint in self.checkpoints:
            for owner in self.owners:
                self._load(checkpoint.reader, owner)
            yield checkpoint.step, {p: layout(s).step for p, (s, _) in self.layers.items()}

    def details(self) -> dict:
        experts = {p: self.stacks[p].count for p in self.modules}
        return {"adapter_config": self.first.raw, "experts": experts}
