"""How a tracker copies its targets' tensors to CPU memory: straight from the modules when every
rank holds the weights whole (one process, DDP), or gathered when an engine shards them
(FSDP1, FSDP2, DeepSpeed ZeRO-3, :mod:`.engines`).

Under a sharding engine every rank runs the same gathers, one target module at a time: the
module's sharded parameters are gathered in full (a collective), swapped into the module for
the one call that reads its layout (``torch.func.functional_call``), and released, so the
extra memory per rank is one module's weight and factors (the writing rank also holds what it
writes: the frozen bases once, each step's snapshot until its writer thread has written it).
A low-rank layer's frozen base is gathered once, for the frozen file; at each step it is a
meta tensor of its shape and only the factors are gathered. Finding the targets needs no
gather at all: every sharded parameter is a stand-in of its full shape then (a meta tensor,
or zeros for a vector).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spectra.callback.engines import Shards, shards_of, world_size
from spectra.capture import layout, recognise, step_tensors
from spectra.capture.experts import ExpertStack
from spectra.snapshots import Distributed

Parts = dict[str, dict[str, torch.Tensor]]  # {module path: {part: CPU tensor}}
Target = nn.Module | ExpertStack  # what a tracker reads: a module, or a 3-D expert parameter


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy that later training steps cannot change."""
    t = t.detach()
    return t.to("cpu", copy=True) if t.is_contiguous() else t.contiguous().to("cpu")


class LocalReader:
    """Every rank holds the weights whole: the writing rank copies them from the modules
    (alone: ``keep`` is there for :class:`ShardedReader`'s other ranks)."""

    collective = False  # only the writing rank reads

    def __init__(self, distributed: Distributed | None = None):
        self.distributed = distributed

    def scan(self, model: nn.Module, find: Callable[[nn.Module], object]):
        """``find(model)``: what the targets are, from the model's layers."""
        return find(model)

    def frozen(self, modules: dict[str, nn.Module], keep: bool = True) -> Parts:
        """The frozen tensors of each module (a quantized base dequantized here, once)."""
        return {
            path: {k: cpu_copy(t) for k, t in layout(module).frozen.items()}
            for path, module in modules.items()
        }

    def step(self, modules: dict[str, nn.Module], keep: bool = True) -> Parts:
        """The tensors of each module that change during training."""
        return {
            path: {k: cpu_copy(t) for k, t in step_tensors(module).items()}
            for path, module in modules.items()
        }


class ShardedReader:
    """An engine shards the weights: every rank gathers each module in turn (collectives)."""

    collective = True  # every rank must call frozen() and step() alike

    def __init__(self, shards: Shards, distributed: Distributed):
        self.shards, self.distributed = shards, distributed
        self._plans: dict[int, tuple[bool, set[str]]] = {}

    def _stand_ins(self, shards: dict) -> dict[str, torch.Tensor]:
        """Tensors of the parameters' full shapes: meta matrices, zero vectors (AdaLoRA's rank
        count is read as a number)."""
        metas = {name: self.shards.meta(shard) for name, shard in shards.items()}
        return {n: t if t.ndim > 1 else torch.zeros_like(t, device="cpu") for n, t in metas.items()}

    def scan(self, model: nn.Module, find: Callable[[nn.Module], object]):
        """``find(model)`` with every sharded parameter a stand-in of its full shape."""
        return _call(model, self._stand_ins(self.shards.params(model)), find)

    def _plan(self, target: Target, shards: dict) -> tuple[bool, set[str], set[str]]:
        """Whether the target has frozen tensors; the parameters only they read (a low-rank
        layer's base); and, for an expert stack, the parameters of its experts module it does
        not read at all (the other stacks and their adapters). Found once, from stand-ins of
        the sharded parameters."""
        if id(target) not in self._plans:
            stand_ins = self._stand_ins(shards)
            whole = {n: p for n, p in _module(target).named_parameters() if n not in shards}

            def plan(target: Target) -> tuple[bool, set[str], set[str]]:
                found = recognise(target)
                frozen = [t for t in found.frozen.values() if isinstance(t, torch.Tensor)]
                step = list(found.step.values())
                params = stand_ins | whole
                only = {
                    name
                    for name, t in params.items()
                    if any(_refers(f, t) for f in frozen) and not any(_refers(s, t) for s in step)
                }
                unread = set()
                if isinstance(target, ExpertStack):  # its layout only ever returns views
                    unread = {n for n, t in params.items()
                              if not any(_refers(x, t) for x in [*frozen, *step])}  # fmt: skip
                return bool(found.frozen), only, unread

            self._plans[id(target)] = _call(target, stand_ins, plan)
        return self._plans[id(target)]

    def _read(self, target: Target, skip_frozen: bool, read: Callable) -> dict:
        """``read(target)`` on its module's parameters gathered in full (frozen-only ones left
        out when ``skip_frozen``, and those it does not read: meta stand-ins if sharded), its
        result as CPU tensors."""
        module = _module(target)
        shards = self.shards.params(module)
        _, only, unread = self._plan(target, shards)
        skipped = unread | (only if skip_frozen else set())
        tensors = self.shards.gather({n: s for n, s in shards.items() if n not in skipped})
        tensors |= {n: self.shards.meta(shards[n]) for n in skipped if n in shards}
        tensors |= {  # parameters the engine leaves whole: copies, which training cannot change
            name: p.detach().to("cpu", copy=True)
            for name, p in module.named_parameters()
            if name not in shards and name not in skipped
        }
        found = _call(target, tensors, read)
        ours = {_storage(t) for t in tensors.values() if t.device.type != "meta"}
        return {  # what the gathers made is ours; anything else may be a live tensor: copied
            k: t.detach().contiguous().to("cpu") if _storage(t) in ours else cpu_copy(t)
            for k, t in found.items()
        }

    def _each(self, modules: dict[str, Target], keep: bool, read: Callable) -> Parts:
        """``read(target)`` of each target in turn; dropped at once unless ``keep``."""
        parts = {}
        for path, target in modules.items():
            found = read(target)
            parts[path] = found if keep else {}
        return parts

    def frozen(self, modules: dict[str, nn.Module], keep: bool = True) -> Parts:
        """The frozen tensors of each module (none for FT), gathered one module at a time;
        a rank that does not write joins the gathers and keeps nothing (``keep=False``)."""
        return self._each(
            modules, keep,
            lambda t: self._read(t, False, _frozen)
            if self._plan(t, self.shards.params(_module(t)))[0] else {},
        )  # fmt: skip

    def step(self, modules: dict[str, nn.Module], keep: bool = True) -> Parts:
        """The tensors of each module that change during training, gathered one module at a
        time; a rank that does not write joins the gathers and keeps nothing."""
        return self._each(modules, keep, lambda m: self._read(m, True, step_tensors))


def _frozen(module: nn.Module) -> dict[str, torch.Tensor]:
    return layout(module).frozen


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _refers(t, stand_in: torch.Tensor) -> bool:
    """Whether ``t`` is the stand-in or a view of it (a Conv1D's transposed weight)."""
    return isinstance(t, torch.Tensor) and (t is stand_in or t._base is stand_in)


def _module(target: Target) -> nn.Module:
    """The module whose parameters hold ``target``'s tensors."""
    return target.module if isinstance(target, ExpertStack) else target


class _Call(nn.Module):
    """A module whose forward is ``call()``: lets ``functional_call`` swap the tensors of
    ``module``."""

    def __init__(self, module: nn.Module, call: Callable):
        super().__init__()
        self.module, self.call = module, call

    def forward(self):
        return self.call()


def _call(target: Target, tensors: dict[str, torch.Tensor], fn: Callable):
    """``fn(target)`` with its module's named parameters replaced by ``tensors`` for the call
    (torch's own swap, undone when it returns)."""
    swap = {f"module.{name}": t for name, t in tensors.items()}
    call = _Call(_module(target), lambda: fn(target))
    return torch.func.functional_call(call, swap, (), tie_weights=False)


def reader_for(model: nn.Module) -> LocalReader | ShardedReader:
    """The reader for ``model``'s weights; its ``distributed`` is None for one process."""
    shards, world = shards_of(model), world_size()
    if shards is not None:
        return ShardedReader(shards, Distributed(shards.engine, world, shards.weights))
    return LocalReader(Distributed("ddp", world) if world > 1 else None)
