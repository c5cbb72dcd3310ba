"""Sharded checkpoints of a tiny Llama, written by 2 ranks (gloo, CPU), for the import tests.

    torchrun --standalone --nproc_per_node 2 tests/checkpoint_train.py KIND OUT

KIND is one of:
- ``fsdp``: transformers' Trainer + accelerate FSDP (``SHARDED_STATE_DICT``), full fine-tuning;
  checkpoints ``OUT/fsdp/checkpoint-N/pytorch_model_fsdp_0/``, and at each save the full weights
  that torch's ``get_model_state_dict(full_state_dict=True)`` gathers, in
  ``OUT/reference/step-N.safetensors``;
- ``dcp``: a plain loop under FSDP2 (``fully_shard``), ``dcp.save`` of the sharded model state
  dict every SAVE steps into ``OUT/dcp/step-N/``, with the same references;
- ``zero3``: Trainer + DeepSpeed ZeRO-3 (CPU accelerator), full fine-tuning, one frozen target;
- ``zero3-lora``: Trainer + DeepSpeed ZeRO-3, a LoRA adapter;
- ``zero3-moe``, ``dcp-moe``: as ``zero3`` and ``dcp``, full fine-tuning of a tiny Mixtral
  (its experts 3-D parameters, partitioned or sharded like any other).

Every training is also tracked by spectra (``Tracker`` or ``SpectraCallback``, deferred) into
``OUT/tracked/``, a snapshot at each checkpoint's step, so that an import of the checkpoints can
be held against the tracked rows of the same training. The model has odd-sized tensors (hidden
size 33), so shards and partitions are padded. The base model is saved to ``OUT/base/`` first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers as tf
from ranks import finish, watch  # the script's folder is on sys.path
from safetensors.torch import save_file
from tiny_models import SMALL, RandomTokens, batch, moe_base

import spectra

SAVE, STEPS = 2, 4
TARGETS = ("q_proj", "v_proj")
TRACKED = "tracked"  # OUT/tracked/: the same training, tracked by spectra
FROZEN_TARGET = "model.layers.0.self_attn.v_proj"  # ZeRO-3 FT: saved as frozen fragments
ZERO3 = {
    "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
}


def tiny_llama() -> tf.LlamaForCausalLM:
    """A 2-block Llama with odd sizes (33-wide hidden states), the same on every rank."""
    torch.manual_seed(0)
    odd = {"hidden_size": 33, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 16,
           "intermediate_size": 49}  # fmt: skip
    config = tf.LlamaConfig(**(SMALL | odd))
    return tf.LlamaForCausalLM(config)


def save_reference(state: dict[str, torch.Tensor], path: Path) -> None:
    """Rank 0 writes gathered full weights (copies: safetensors refuses shared storage)."""
    if dist.get_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, path)


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """torch's own gather of the full state dict (collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


class Reference(tf.TrainerCallback):
    """At each save, torch's gather of the full weights (a second, independent reference)."""

    def __init__(self, out: Path):
        self.out = out

    def on_save(self, args, state, control, model=None, **kwargs):
        save_reference(full_state(model), self.out / f"step-{state.global_step}.safetensors")


class CpuFsdpTrainer(tf.Trainer):
    """accelerate turns FSDP on for accelerator devices only; on CPU (gloo) it is turned on here,
    with the plugin that the Trainer's own ``fsdp_config`` gives."""

    def create_accelerator_and_postprocess(self):
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        state.distributed_type = DistributedType.FSDP
        self.is_fsdp_enabled = True


def tracked(out: Path):
    """spectra's callback on the same training, a snapshot at every checkpoint's step."""
    return spectra.SpectraCallback(out / TRACKED, TARGETS, every=SAVE, mode="deferred")


def trainer_args(out: Path, **options) -> tf.TrainingArguments:
    return tf.TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=2, learning_rate=1e-2,
        logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="steps",
        save_steps=SAVE, seed=0, data_seed=0, dataloader_num_workers=0, **options,
    )  # fmt: skip


def train_fsdp(out: Path, model: torch.nn.Module) -> None:
    fsdp_config = {
        "state_dict_type": "SHARDED_STATE_DICT", "use_orig_params": True,
        "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
    }  # fmt: skip
    args = trainer_args(out / "fsdp", fsdp=True, fsdp_config=fsdp_config)
    trainer = CpuFsdpTrainer(model=model, args=args, train_dataset=RandomTokens())
    trainer.add_callback(Reference(out / "reference"))
    trainer.add_callback(tracked(out))
    trainer.train()


def train_dcp(out: Path, model: torch.nn.Module) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    rank, world = dist.get_rank(), dist.get_world_size()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with spectra.Tracker(model, out / TRACKED, TARGETS, every=SAVE, mode="deferred") as tracker:
        for step in range(1, STEPS + 1):
            shard = batch(step, size=4)[rank::world]
            model(input_ids=shard, labels=shard).loss.backward()
            opt.step()
            opt.zero_grad()
            tracker.step(step)
            if step % SAVE == 0:
                dcp.save(get_model_state_dict(model), checkpoint_id=out / "dcp" / f"step-{step}")
                save_reference(full_state(model), out / "reference" / f"step-{step}.safetensors")


def train_zero3(out: Path, model: torch.nn.Module, kind: str) -> None:
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__ = {}  # gloo, not a shared-memory op compiled for minutes
    if kind == "zero3-lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
    elif kind == "zero3":
        model.get_submodule(FROZEN_TARGET).weight.requires_grad_(False)
    args = trainer_args(out / kind, deepspeed=ZERO3)
    trainer = tf.Trainer(model=model, args=args, train_dataset=RandomTokens())
    trainer.add_callback(tracked(out))
    trainer.train()


def main(kind: str, out: Path) -> None:
    watch()
    dist.init_process_group("gloo")
    model = moe_base("mixtral") if kind.endswith("-moe") else tiny_llama()
    if dist.get_rank() == 0:
        model.save_pretrained(out / "base")
    dist.barrier()
    if kind == "fsdp":
        train_fsdp(out, model)
    elif kind in ("dcp", "dcp-moe"):
        train_dcp(out, model)
    else:
        train_zero3(out, model, kind)
    finish()


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main(sys.argv[1], Path(sys.argv[2]))
