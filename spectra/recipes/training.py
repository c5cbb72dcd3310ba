"""The training loop of ``spectra track``: the optimizer steps of a run, its
``TrainingArguments`` (AdamW, cosine schedule with warm-up, seeded, no checkpoints), one
tracked training of one method (:func:`train_one`), and :func:`run`, which trains every
method of a plan one after another, each tracked by ``SpectraCallback`` into
``<out>/<method>/`` and ``<out>/<method>.parquet`` and shown as one rich progress bar."""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForSeq2Seq,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback

from spectra.callback import SpectraCallback
from spectra.errors import Interrupted, SpectraError
from spectra.methods import get
from spectra.recipes.inputs import Plan
from spectra.recipes.presets import Preset
from spectra.recipes.setup import AdaLoraAllocation, SORSATrainer, prepare
from spectra.recipes.sft_data import IGNORE, SFTDataset, load_examples, load_tokenizer
from spectra.run_files import parquet_path
from spectra.snapshots import open_run


class RichSteps(TrainerCallback):
    """Advance one rich progress task per optimizer step, showing the latest loss."""

    def __init__(self, progress: Progress, task):
        self.progress, self.task = progress, task

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.progress.update(self.task, loss=f"loss {logs['loss']:.3f}")


def total_steps(preset: Preset, n_examples: int) -> int:
    """Optimizer steps of a run (``steps``, or ``epochs`` over the data)."""
    if preset.steps is not None:
        return preset.steps
    return max(1, math.ceil(preset.epochs * math.ceil(n_examples / preset.batch_size)))


def _bf16(device: str) -> bool:
    return device == "cuda" and torch.cuda.is_bf16_supported()


def training_args(job: Plan, method: str, output_dir: str, steps: int) -> TrainingArguments:
    """TrainingArguments of one run: AdamW, cosine with warm-up, seeded, no checkpoints."""
    p = job.preset
    micro = min(p.micro_batch, p.batch_size)
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=max(1, p.batch_size // micro),
        learning_rate=job.lr(method),
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(p.warmup_ratio * steps),
        weight_decay=p.weight_decay,
        max_grad_norm=p.max_grad_norm,
        optim="adamw_torch",
        bf16=p.bf16 and _bf16(job.device),
        use_cpu=job.device == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        label_names=["labels"],
        dataloader_num_workers=0,
    )


def train_one(job: Plan, method: str, data: SFTDataset, tokenizer, progress: Progress) -> Path:
    """Train one method and track it; returns the run directory."""
    steps = total_steps(job.preset, len(data))
    run_dir = job.run_dir(method)
    model = AutoModelForCausalLM.from_pretrained(job.model, dtype=torch.float32)
    model = prepare(method, model, job, steps)
    task = progress.add_task(method, total=steps, loss="")
    callbacks = [
        SpectraCallback(run_dir, targets=job.layers, fused=dict(job.fused),
                        every=job.preset.every, method=method,
                        run_name=method, gamma=job.gamma(method), model_name=job.model,
                        worker=job.worker, overwrite=job.overwrite),
        RichSteps(progress, task),
    ]  # fmt: skip
    if get(method).allocates_rank:
        callbacks.insert(0, AdaLoraAllocation())
    with tempfile.TemporaryDirectory(prefix="spectra-trainer-") as tmp:
        kwargs = {
            "model": model,
            "args": training_args(job, method, tmp, steps),
            "train_dataset": data,
            "data_collator": DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE),
            "callbacks": callbacks,
        }
        gamma = job.gamma(method)
        trainer = Trainer(**kwargs) if gamma is None else SORSATrainer(**kwargs, gamma=gamma)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return run_dir


def kept(job: Plan, done: list[Path], stopped: str) -> str:
    """What an interrupted ``spectra track`` leaves: the finished runs, the snapshots of the
    stopped one (marked failed), and how to start again."""
    finished = f"{', '.join(str(path) for path in done)} finished; " if done else ""
    try:
        steps = open_run(job.run_dir(stopped)).steps
    except SpectraError:
        steps = []
    where = f"up to step {steps[-1]} in {job.run_dir(stopped)}" if steps else "none"
    return (
        f"{finished}{stopped} stopped (its snapshots: {where}, marked failed); "
        "spectra track --overwrite starts again"
    )


def run(job: Plan, console: Console | None = None) -> list[Path]:
    """Train and track every method of the plan; returns the run directories."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one rich bar per run instead
    # transformers' own deprecation notice, raised by peft's code, not by anything a user runs
    warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
    console = console or Console(stderr=True)
    tokenizer = load_tokenizer(job.model)
    data = SFTDataset(load_examples(job.data, job.preset.examples), tokenizer,
                      job.preset.max_length)  # fmt: skip
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[loss]}"), TimeElapsedColumn())  # fmt: skip
    runs = []
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        for method in job.methods:
            start = time.perf_counter()
            try:
                runs.append(train_one(job, method, data, tokenizer, progress))
            except KeyboardInterrupt:
                raise Interrupted(kept(job, runs, method)) from None
            progress.console.print(
                f"{method}: {runs[-1]}/ and {parquet_path(runs[-1])} "
                f"({time.perf_counter() - start:.0f} s)"
            )
    console.print(f"next: spectra analyze {job.out}/*.parquet && spectra plot --figure 2 "
                  f"{job.out}/*.parquet")  # fmt: skip
    return runs
