"""The engines that shard a model's parameters across processes (FSDP1, FSDP2, DeepSpeed ZeRO-3)
and how each gathers one parameter in full.

Every gather is a collective: every rank of the process group calls it, for the same
parameters in the same order. An engine is recognised only when its library is already
imported by the training script, so tracking never imports FSDP or DeepSpeed itself (nor
prints their import-time log lines).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod

import torch
from torch import nn


def world_size() -> int:
    """The number of processes of the default torch.distributed group (1 without one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class Shards(ABC):
    """A model's sharded parameters under one engine: their full shapes, and full copies of them
    gathered collectively."""

    engine: str
    weights = "parameters"  # see spectra.snapshots.manifest.WEIGHTS

    @abstractmethod
    def params(self, module: nn.Module) -> dict[str, object]:
        """The sharded parameters of ``module`` and its submodules, by name relative to it."""

    @abstractmethod
    def meta(self, shard) -> torch.Tensor:
        """A meta tensor of the full shape and dtype of a sharded parameter (no data, no gather)."""

    @abstractmethod
    def gather(self, shards: dict[str, object]) -> dict[str, torch.Tensor]:
        """Full CPU copies of the parameters (a collective: every rank calls it alike)."""


class DTensorShards(Shards):
    """FSDP2 (``fully_shard``): every parameter a DTensor, sharded on dim 0."""

    engine = "fsdp2"

    def __init__(self, dtensor: type):
        self.dtensor = dtensor

    def params(self, module):
        return {n: p for n, p in module.named_parameters() if isinstance(p, self.dtensor)}

    def meta(self, shard):
        return torch.empty(shard.shape, dtype=shard.dtype, device="meta")

    @torch.no_grad()
    def gather(self, shards):
        out = {}
        for name, param in shards.items():
            full = param.full_tensor()
            if full.untyped_storage().data_ptr() == param.to_local().untyped_storage().data_ptr():
                full = full.clone()  # a replicated DTensor's full tensor is its own storage
            out[name] = full.detach().to("cpu")
        return out


class FlatShards(Shards):
    """FSDP1 (``FullyShardedDataParallel``): each unit's parameters flattened into one
    ``FlatParameter`` whose contiguous shards the ranks hold. A parameter is gathered alone, not
    its whole unit: each rank puts its piece at the piece's place in a zero tensor of the full
    size, and an all-reduce (sum) of those tensors is the parameter, exactly."""

    engine = "fsdp1"

    def __init__(self, fsdp: type, model: nn.Module):
        self.owned: dict[int, dict[str, tuple]] = {}  # id(module) → {name: (unit, flat, index)}
        for unit in fsdp.fsdp_modules(model):
            flat = unit._flat_param
            if flat is None or not unit._handle.uses_sharded_strategy:
                continue  # NO_SHARD (or one process): the parameters are whole on every rank
            for index, (name, module, _) in enumerate(flat._param_infos):
                self.owned.setdefault(id(module), {})[name] = (unit, flat, index)

    def params(self, module):
        return {
            f"{path}.{name}" if path else name: shard
            for path, sub in module.named_modules()
            for name, shard in self.owned.get(id(sub), {}).items()
        }

    def meta(self, shard):
        _, flat, index = shard
        return torch.empty(flat._shapes[index], dtype=flat.dtype, device="meta")

    @torch.no_grad()
    def gather(self, shards):
        out = {}
        for name, (unit, flat, index) in shards.items():
            local = getattr(flat, "_local_shard", flat)  # the shard in full precision
            info = flat._shard_param_infos[index]
            full = torch.zeros(flat._numels[index], dtype=local.dtype, device=unit.compute_device)
            if info.in_shard:
                piece = local[info.offset_in_shard : info.offset_in_shard + info.numel_in_shard]
                full[info.intra_param_start_idx : info.intra_param_end_idx + 1] = piece
            torch.distributed.all_reduce(full, group=unit.process_group)
            out[name] = full.view(flat._shapes[index]).to("cpu")
        return out


class ZeroShards(Shards):
    """DeepSpeed ZeRO-3: partitioned parameters (``ds_id``; a ``Size([0])`` placeholder outside
    forward). A trainable parameter is read from the optimizer's fp32 master copy
    (``deepspeed.utils.safe_get_full_fp32_param``) once an optimizer is attached, any other
    from the working copy (``deepspeed.zero.GatheredParameters``)."""

    engine = "zero3"

    def __init__(self, deepspeed, model: nn.Module):
        self.deepspeed = deepspeed
        trainable = [p for p in model.parameters() if p.requires_grad and hasattr(p, "ds_id")]
        # safe_get_full_fp32_param reads the optimizer that deepspeed.initialize links here
        self.master = bool(trainable) and hasattr(trainable[0], "_z3_optimizer")
        self.weights = "fp32_master" if self.master else "working"

    def params(self, module):
        return {n: p for n, p in module.named_parameters() if hasattr(p, "ds_id")}

    def meta(self, shard):
        return torch.empty(shard.ds_shape, dtype=shard.dtype, device="meta")

    @torch.no_grad()
    def gather(self, shards):
        from deepspeed.utils import safe_get_full_fp32_param

        master = {n for n, p in shards.items() if self.master and p.requires_grad}
        working = [p for n, p in shards.items() if n not in master]
        out = {}
        with self.deepspeed.zero.GatheredParameters(working, modifier_rank=None):
            for name, param in shards.items():
                if name not in master:  # the gathered buffer is freed on exit: copy it
                    out[name] = param.data.detach().to("cpu", copy=True)
        for name, param in shards.items():  # in the same order on every rank
            if name in master:
                out[name] = safe_get_full_fp32_param(param).detach().to("cpu")
        return {name: out[name] for name in shards}


def shards_of(model: nn.Module) -> Shards | None:
    """The sharding of ``model``'s parameters, or None when every rank holds them whole."""
    params = list(model.parameters())
    deepspeed = sys.modules.get("deepspeed")
    if deepspeed is not None and any(hasattr(p, "ds_id") for p in params):
        return ZeroShards(deepspeed, model)
    fsdp = getattr(sys.modules.get("torch.distributed.fsdp"), "FullyShardedDataParallel", None)
    if fsdp is not None and any(isinstance(m, fsdp) for m in model.modules()):
        return FlatShards(fsdp, model)
    tensor = sys.modules.get("torch.distributed.tensor")
    if tensor is not None and any(isinstance(p, tensor.DTensor) for p in params):
        return DTensorShards(tensor.DTensor)
    return None
