"""LoRA on a tiny Llama with transformers' ``Trainer`` under accelerate's FSDP plugin
(``TrainingArguments(fsdp=..., fsdp_config=...)``, CPU, gloo, 2 processes), tracked by
``SpectraCallback`` in inline mode; a second callback dumps the targets' effective weights as
the engine gathers them at every snapshot step (see ``tracking_train.py``).

    torchrun --standalone --nproc_per_node 2 tests/trainer_sharded_train.py fsdp1|fsdp2 OUT
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from ranks import finish, watch
from tiny_models import RandomTokens, base_model, with_method
from tracking_train import EVERY, STEPS, TARGETS, ZERO3, dump  # the script's folder is on sys.path
from transformers import Trainer, TrainerCallback, TrainingArguments

import spectra


class Reference(TrainerCallback):
    """Dumps the engine's full weights of the targets at step 0 and every snapshot step."""

    def __init__(self, engine: str, replica, out: Path):
        self.engine, self.replica, self.out = engine, replica, out

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        dump(self.engine, model, self.replica, "lora", self.out, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % EVERY == 0:
            dump(self.engine, model, self.replica, "lora", self.out, state.global_step)


def main(engine: str, out: Path) -> None:
    watch()
    model = with_method(base_model("llama"), "lora", TARGETS)
    replica = copy.deepcopy(model)
    zero3 = ZERO3 | {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
    }
    args = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=STEPS, per_device_train_batch_size=2,
        learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", logging_steps=1,
        report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no", seed=0,
        ddp_backend="gloo", deepspeed=zero3,
    )  # fmt: skip
    callback = spectra.SpectraCallback(out / "lora", TARGETS, every=EVERY)
    reference = Reference(engine, replica, out / "lora-reference")
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(),
                      callbacks=[callback, reference])  # fmt: skip
    trainer.train()
    rank = torch.distributed.get_rank()
    if callback.tracker.writing != (rank == 0) or (callback.tracker.metrics_file is None) != rank:
        raise SystemExit(f"rank {rank}: writing={callback.tracker.writing}")
    finish()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
