"""A tiny Llama (FT or LoRA) in a LightningModule, trained by ``lightning.pytorch.Trainer`` with
spectra's Lightning callback; a second callback dumps the targets' effective weights at every
snapshot step as the strategy's model gives them (under FSDP: ``summon_full_params``).

    torchrun --standalone --nproc_per_node 2 tests/lightning_train.py fsdp OUT

``fit(OUT)`` trains in this process (the resume and failure tests).

Lightning's FSDP strategy does not run on a CPU as it is: its accelerator connector refuses
it (by the exact type, ``type(strategy) is FSDPStrategy``; Lightning issue #21812), and its
automatic wrapping passes ``device_id=root_device.index``, None on a CPU, which torch's FSDP
refuses ("FSDP needs a non-CPU accelerator device"; fixed after Lightning 2.6 by #21774). So
the FSDP run uses a subclass of the strategy (the connector lets it through, as #21774 intends
for tests) and Lightning's manual wrapping: ``configure_model`` wraps the Llama in FSDP
(decoder layers as units), and the strategy, finding FSDP units, trains the model as it is.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from tiny_models import RandomTokens, base_model, reference_weights, with_method
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from tracking_train import EVERY, PATHS, TARGETS, WRAPPERS  # the script's folder is on sys.path
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from spectra.integrations.lightning import SpectraCallback


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, let through to a CPU accelerator (see the module docstring)."""


class TinyLlama(pl.LightningModule):
    """A tiny Llama with ``method`` on q/v, trained with SGD; raises at step ``fail_at``."""

    def __init__(self, method: str, fail_at: int | None = None, shard: bool = False):
        super().__init__()
        self.model = with_method(base_model("llama"), method, TARGETS)
        self.fail_at, self.shard = fail_at, shard

    def configure_model(self):
        if self.shard and not isinstance(self.model, FullyShardedDataParallel):
            self.model = FullyShardedDataParallel(
                self.model, device_id=torch.device("cpu"), use_orig_params=True,
                auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}),
            )  # fmt: skip

    def training_step(self, batch, batch_idx):
        if self.global_step + 1 == self.fail_at:
            raise RuntimeError(f"failing at step {self.fail_at} on purpose")
        loss = self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(trainable, lr=0.5)


class Reference(pl.Callback):
    """Rank 0 dumps the targets' W_t, merged by peft in float64, at every snapshot step."""

    def __init__(self, replica, method: str, out: Path):
        self.replica, self.method, self.out = replica, method, out

    def on_train_start(self, trainer, pl_module):
        self._dump(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % EVERY == 0:
            self._dump(trainer)

    def _dump(self, trainer):
        from safetensors.torch import save_file

        net = trainer.strategy.model
        with FullyShardedDataParallel.summon_full_params(net, writeback=False):
            state = {_inner(n): p.detach().clone() for n, p in net.named_parameters()}
        if trainer.is_global_zero:
            self.replica.load_state_dict(state, strict=True)
            weights = reference_weights(self.replica, self.method, PATHS)
            self.out.mkdir(parents=True, exist_ok=True)
            path = self.out / f"step_{trainer.global_step}.safetensors"
            save_file({p: w.contiguous() for p, w in weights.items()}, path)


def _inner(name: str) -> str:
    """A LightningModule parameter's name in its ``model`` (no wrapper components)."""
    for wrapper in WRAPPERS:
        name = name.replace(wrapper, "")
    return name.removeprefix("model.")


def fit(out: Path, strategy: str = "single", method: str = "lora", steps: int = 4,
        fail_at: int | None = None, resume: str | None = None) -> None:  # fmt: skip
    """Train ``steps`` steps, tracked into ``out/method``; single: one process, checkpoints
    every EVERY steps in ``out/ckpt``, the same batch at every step (a resumed run then
    equals an uninterrupted one); fsdp: under torchrun, with reference dumps."""
    module = TinyLlama(method, fail_at, shard=strategy == "fsdp")
    callbacks = [SpectraCallback(out / method, TARGETS, every=EVERY, mode="deferred")]
    if strategy == "fsdp":
        replica = copy.deepcopy(module.model)
        callbacks.append(Reference(replica, method, out / f"{method}-reference"))
        strategy, devices, items = CPUFSDPStrategy(process_group_backend="gloo"), 2, RandomTokens()
    else:
        callbacks.append(ModelCheckpoint(out / "ckpt", every_n_train_steps=EVERY, save_top_k=-1))
        strategy, devices, items = "auto", 1, [RandomTokens()[0]] * 64
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=steps,
        callbacks=callbacks, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=devices == 1,
        use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(items, batch_size=2), ckpt_path=resume)


if __name__ == "__main__":
    fit(Path(sys.argv[2]), sys.argv[1])
