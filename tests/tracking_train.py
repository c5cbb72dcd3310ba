"""FT and LoRA on a tiny Llama under a sharding engine (2 processes, gloo, CPU), tracked by
spectra in a plain loop; at every snapshot step rank 0 also dumps the targets' effective
weights as the engine itself gathers them (FSDP1 ``summon_full_params``, FSDP2
``get_model_state_dict(full_state_dict=True)``, ZeRO-3 ``GatheredParameters``), merged by
peft's own code in float64, to ``OUT/<run>-reference/step_N.safetensors``. Runs: ft and lora,
ft-experts (a tiny Mixtral's 3-D expert parameters, every expert a layer), and under FSDP1
ft-flat (``use_orig_params=False``), under FSDP2 lora-experts (peft's LoRA on those parameters,
which trains under no other engine, with or without spectra: FSDP1's views of its flat
parameters and ZeRO-3's empty placeholders break peft's parametrization), under ZeRO-3
lora-bf16 (bfloat16 with fp32 master weights; its reference is the LoRA factors' bf16 working
copies, unmerged).

    torchrun --standalone --nproc_per_node 2 tests/tracking_train.py fsdp1|fsdp2|zero3 OUT

ZeRO-3 wants ``DS_ACCELERATOR=cpu``. FSDP1 wraps each decoder layer (and activation
checkpointing inside it) so that module paths carry both wrappers' components; FSDP1 and
FSDP2 compute in bfloat16 (their sharded parameters, which spectra reads, stay float32).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch
import transformers  # noqa: F401  (model classes before deepspeed.zero.Init, DeepSpeed's rule)
from ranks import finish, watch  # the script's folder is on sys.path
from safetensors.torch import save_file
from tiny_models import (
    EXPERT_PARAMS,
    base_model,
    batch,
    expert_weights,
    moe_model,
    reference_weights,
    with_method,
)
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

import spectra

TARGETS = ("q_proj", "v_proj")
PATHS = [f"model.layers.{i}.self_attn.{t}" for i in range(2) for t in TARGETS]
STEPS, EVERY = 4, 2
WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
ZERO3 = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "zero_optimization": {  # partition even the tiny parameters
        "stage": 3, "stage3_param_persistence_threshold": 0,
        "stage3_model_persistence_threshold": 0,
    },
    "zero_allow_untested_optimizer": True,
    "steps_per_print": 10**9,
}  # fmt: skip


def init() -> tuple[int, int]:
    """Start the process group (gloo); (rank, world size)."""
    watch()
    if os.environ.get("DS_ACCELERATOR"):
        import deepspeed

        deepspeed.init_distributed("gloo")
    else:
        torch.distributed.init_process_group("gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def layers(model: nn.Module) -> list[nn.Module]:
    return list(model.get_base_model().model.layers if hasattr(model, "get_base_model") else
                model.model.layers)  # fmt: skip


def wrap(engine: str, model: nn.Module, variant: str = ""):
    """(the module to call, the optimizer) of ``model`` under ``engine``; ``variant`` bf16:
    ZeRO-3 in bfloat16 with fp32 master weights, flat: FSDP1 with use_orig_params=False."""
    trainable = lambda net: [p for p in net.parameters() if p.requires_grad]  # noqa: E731
    if engine == "fsdp1":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
        )
        from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, LlamaDecoderLayer))
        net = FullyShardedDataParallel(
            model, device_id=torch.device("cpu"), use_orig_params=variant != "flat",
            auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}),
            mixed_precision=MixedPrecision(param_dtype=torch.bfloat16),
        )  # fmt: skip
        return net, torch.optim.SGD(trainable(net), lr=0.5)
    if engine == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model, torch.optim.SGD(trainable(model), lr=0.5)
    import deepspeed

    optimizer = torch.optim.SGD(trainable(model), lr=0.5)
    config = ZERO3 | {"bf16": {"enabled": variant == "bf16"}}
    net, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return net, optimizer


def full_state(engine: str, net: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter in full, as the engine's own API gathers it (on every rank)."""
    if engine == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(net, writeback=False):
            named = net.named_parameters()
            return {_clean(n): p.detach().clone() for n, p in named}
    if engine == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True))
    import deepspeed

    params = dict(getattr(net, "module", net).named_parameters())  # the engine's, or its model
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {n: p.detach().clone() for n, p in params.items()}


def _clean(name: str) -> str:
    for wrapper in WRAPPERS:
        name = name.replace(wrapper, "")
    return name


def dump(engine: str, net: nn.Module, replica: nn.Module, run: str, out: Path, step: int):
    """Rank 0 writes the targets' W_t from the engine's full parameters, merged by peft."""
    state = full_state(engine, net)
    if torch.distributed.get_rank() == 0:
        replica.load_state_dict(state, strict=True)
        method, _, variant = run.partition("-")
        if variant == "experts":
            weights = expert_weights(replica, method)
        else:
            weights = reference_weights(replica, method, PATHS)
        out.mkdir(parents=True, exist_ok=True)
        save_file({p: w.contiguous() for p, w in weights.items()}, out / f"step_{step}.safetensors")


def dump_working(net, out: Path, step: int) -> None:
    """Rank 0 writes the LoRA factors' working copies (bf16) as ``GatheredParameters`` gives
    them, under spectra's names (``<module>/left`` for B, ``<module>/right`` for A)."""
    import deepspeed

    factors = {}
    for path in PATHS:
        module = net.module.get_submodule(f"base_model.model.{path}")
        factors |= {f"{path}/left": module.lora_B.default.weight,
                    f"{path}/right": module.lora_A.default.weight}  # fmt: skip
    with deepspeed.zero.GatheredParameters(list(factors.values())):
        copies = {name: p.detach().clone() for name, p in factors.items()}
    if torch.distributed.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file(copies, out / f"step_{step}.safetensors")


def sharded(engine: str, net: nn.Module) -> bool:
    """Whether every rank holds shards of the weights, not whole ones."""
    params = list(net.parameters())
    if engine == "fsdp2":
        return all(type(p).__name__ == "DTensor" for p in params)
    if engine == "fsdp1":  # flat pieces (the FlatParameters, or views into them)
        return all(p.ndim == 1 for p in params)
    return all(p.numel() == 0 for p in params)  # ZeRO-3: empty placeholders


def train(engine: str, run: str, out: Path, rank: int, world: int) -> None:
    """Train ``run`` (``method`` or ``method-variant``, see :func:`wrap`) and track it into
    ``out/run``."""
    method, _, variant = run.partition("-")
    bf16, experts = variant == "bf16", variant == "experts"
    if experts:
        model, targets = moe_model("mixtral", method), EXPERT_PARAMS
    else:
        model, targets = with_method(base_model("llama"), method, TARGETS), TARGETS
    replica = copy.deepcopy(model)
    net, optimizer = wrap(engine, model, variant)
    tracker = spectra.Tracker(net, out / run, targets, every=EVERY, mode="deferred")
    if tracker.writing != (rank == 0) or not sharded(engine, net):
        raise SystemExit(f"rank {rank}: writing={tracker.writing}, or the weights are whole")
    reference = out / f"{run}-reference"

    def record(step: int) -> None:
        if bf16:
            dump_working(net, reference, step)
        else:
            dump(engine, net, replica, run, reference, step)

    record(0)
    for step in range(1, STEPS + 1):
        shard = batch(step, size=4)[rank::world]
        loss = net(input_ids=shard, labels=shard).loss
        if engine == "zero3":
            net.backward(loss)
            net.step()
        else:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        tracker.step(step, loss=loss.detach())
        if step % EVERY == 0:
            record(step)
    tracker.close()


if __name__ == "__main__":
    rank, world = init()
    extra = {"zero3": ("lora-bf16",), "fsdp1": ("ft-flat",), "fsdp2": ("lora-experts",)}
    for run in ("ft", "lora", "ft-experts", *extra[sys.argv[1]]):
        train(sys.argv[1], run, Path(sys.argv[2]), rank, world)
    finish()
