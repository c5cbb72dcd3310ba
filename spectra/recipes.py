"""Built-in fine-tuning recipes (transformers ``Trainer``) and the logic of ``spectra track``.

Methods: ``ft`` (only the target projections trainable, as in the paper's analysis),
``lora``, ``pissa``, ``dora``, ``adalora`` (peft), ``sorsa`` and ``sorsa-noreg`` (this
package).  Data is JSONL with MetaMathQA's ``query`` / ``response`` fields, formatted with
the paper's Listing 1 prompt; the loss covers the response only.  Every run is tracked by
``SpectraCallback`` into ``<out>/<method>/`` and ``<out>/<method>.parquet``.

``plan()`` checks every input (methods, preset, model, data, targets, rank, output) and raises
SpectraError before anything trains; ``run()`` then trains the runs one after another.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D
from transformers.trainer_callback import PrinterCallback

from spectra.callback import WORKERS, SpectraCallback
from spectra.capture import find_layers, module_paths
from spectra.errors import SpectraError
from spectra.sorsa import apply_sorsa, regularizer_backward, sorsa_modules

PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{query}\n\n### Response:"
)
METHODS = ("ft", "lora", "pissa", "dora", "adalora", "sorsa", "sorsa-noreg")
FIGURE2 = ("ft", "lora", "sorsa-noreg", "sorsa")
DEVICES = ("auto", "cpu", "cuda", "mps")
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_MODEL = DATA_DIR / "tiny-llama"
DEFAULT_DATA = DATA_DIR / "math_qa.jsonl"
ADALORA_INIT = 1.5  # AdaLoRA starts from 1.5 × the target rank (its paper's b(0) = 1.5 b(T))
IGNORE = -100  # label of prompt and padding tokens


@dataclass(frozen=True)
class Preset:
    """Training hyperparameters.  ``sorsa_lr`` is the learning rate of regularized SORSA
    (Table 2 gives it a higher one); every other method uses ``lr``."""

    lr: float
    sorsa_lr: float
    gamma: float
    rank: int
    batch_size: int  # examples per optimizer step
    micro_batch: int  # examples per forward pass (batch_size / micro_batch accumulation steps)
    max_length: int
    steps: int | None  # optimizer steps; None trains ``epochs`` epochs
    epochs: float
    every: int  # snapshot interval in optimizer steps
    examples: int | None = None  # use the first N examples only
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # 0: no clipping
    bf16: bool = False  # bf16 mixed precision where the device supports it


PRESETS = {
    # Table 2 (Appendix B.1): the analysis on Llama 2 7B, first 100K MetaMathQA examples.
    "paper-analysis": Preset(
        lr=2e-5, sorsa_lr=3e-5, gamma=5e-4, rank=128, batch_size=128, micro_batch=4,
        max_length=512, steps=None, epochs=1, every=50, examples=100_000, bf16=True,
    ),
    # The embedded default on a CPU in minutes: Table 2 scaled to a 4M-parameter model. Rank
    # 16 of 256 (128 of 4096 is a thin slice too), a learning rate that moves it in 60 steps,
    # SORSA's 1.5× learning rate and the same γ/η_d as Table 2 (5e-4 / 3e-5): under eq. 6 that
    # ratio, not γ alone, weighs the regularizer against the task gradient.
    "default": Preset(
        lr=1e-3, sorsa_lr=1.5e-3, gamma=1.5e-3 * 5e-4 / 3e-5, rank=16, batch_size=8,
        micro_batch=8, max_length=192, steps=60, epochs=1, every=5,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """A checked ``spectra track`` job."""

    methods: tuple[str, ...]
    model: str
    data: Path
    targets: tuple[str, ...]  # as given; () means the architecture's query and value
    layers: tuple[str, ...]  # the targets resolved to full layer names (slices included)
    preset: Preset
    device: str
    out: Path
    overwrite: bool = False
    worker: str = "process"  # the inline metrics worker: "process" or "thread"
    fused: tuple[tuple[str, str], ...] = ()  # (target, layout spec) of unregistered fused modules

    def run_dir(self, method: str) -> Path:
        return self.out / method

    def gamma(self, method: str) -> float | None:
        return {"sorsa": self.preset.gamma, "sorsa-noreg": 0.0}.get(method)

    def lr(self, method: str) -> float:
        return self.preset.sorsa_lr if method == "sorsa" else self.preset.lr


# ---------------------------------------------------------------- inputs


def parse_list(values: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Repeatable and comma-separated option values as one flat tuple."""
    return tuple(v.strip() for value in values or () for v in value.split(",") if v.strip())


def parse_fused(values: list[str] | None) -> dict[str, str]:
    """``--fused MODULE=LAYOUT`` options as {module: layout}; SpectraError when malformed."""
    fused = {}
    for value in values or ():
        module, sep, spec = value.partition("=")
        if not sep or not module.strip() or not spec.strip():
            raise SpectraError(f"--fused {value!r}: expected MODULE=LAYOUT (wqkv=32*128,128,128)")
        fused[module.strip()] = spec.strip()
    return fused


def load_examples(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    """JSONL records with non-empty string ``query`` and ``response``; SpectraError otherwise."""
    if not path.is_file():
        raise SpectraError(f"{path}: no such data file")
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if limit is not None and len(records) >= limit:
                break
            records.append(_record(line, f"{path}:{number}"))
    if not records:
        raise SpectraError(f"{path}: no examples")
    return records


def _record(line: str, where: str) -> dict[str, str]:
    if not line.strip():
        raise SpectraError(f"{where}: empty line (expected one JSON object per line)")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SpectraError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise SpectraError(f"{where}: expected a JSON object with 'query' and 'response'")
    for field in ("query", "response"):
        if not isinstance(record.get(field), str) or not record[field].strip():
            raise SpectraError(f"{where}: missing or empty string field {field!r}")
    return {"query": record["query"], "response": record["response"]}


def _causal_lm_config(model: str):
    """The model's config, or SpectraError when it is not a causal LM transformers can load."""
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpectraError(f"{model}: not a transformers model ({first})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SpectraError(f"{model}: a {config.model_type!r} model is not a causal LM")
    return config


def adalora_ranks(rank: int) -> tuple[int, int]:
    """(init_r, target_r) of AdaLoRA for ``rank``: it prunes from 1.5 × rank down to rank."""
    return math.ceil(ADALORA_INIT * rank), rank


def _resolve_targets(
    model: str, targets: tuple[str, ...], fused: dict, rank: int, methods: tuple[str, ...]
) -> tuple[str, ...]:
    """The full layer names of the targets (None: the architecture's query and value),
    checked to be layers the methods adapt and the rank fits (on a weightless meta model)."""
    config = _causal_lm_config(model)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    layers = find_layers(skeleton, targets or None, fused)
    largest = max(adalora_ranks(rank)[0] if m == "adalora" else rank for m in methods)
    sorsa = any(m.startswith("sorsa") for m in methods)
    kinds = (nn.Linear,) if sorsa else (nn.Linear, Conv1D)
    for path in module_paths(layers):
        module = skeleton.get_submodule(path)
        if not isinstance(module, kinds):
            raise SpectraError(
                f"{path} is a {type(module).__name__}; the recipes adapt "
                f"{'nn.Linear layers (SORSA)' if sorsa else 'nn.Linear and Conv1D layers'}"
            )
        limit = min(module.weight.shape)
        if methods != ("ft",) and not 0 < largest <= limit:
            out_f, in_f = module.weight.shape
            raise SpectraError(
                f"rank {largest} does not fit {path} ({out_f}×{in_f}): use 1..{limit}"
                + (f" (AdaLoRA starts at {ADALORA_INIT} × --rank)" if largest != rank else "")
            )
    return tuple(layers)


def _device(device: str) -> str:
    if device not in DEVICES:
        raise SpectraError(f"unknown device {device!r} (expected one of {', '.join(DEVICES)})")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}  # fmt: skip
    if not available[device]:
        raise SpectraError(f"device {device!r} is not available on this machine")
    return device


def plan(
    methods: tuple[str, ...] = (),
    model: str | Path | None = None,
    data: Path | None = None,
    targets: tuple[str, ...] = (),
    rank: int | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    every: int | None = None,
    preset: str = "default",
    device: str = "auto",
    out: Path = Path("runs"),
    overwrite: bool = False,
    worker: str = "process",
    fused: dict[str, str] | None = None,
) -> Plan:
    """Check every input of a track job; SpectraError (one line) on the first problem."""
    methods = methods or FIGURE2
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SpectraError(f"unknown method {unknown[0]!r} (expected one of {', '.join(METHODS)})")
    if preset not in PRESETS:
        raise SpectraError(f"unknown preset {preset!r} (expected one of {', '.join(PRESETS)})")
    if worker not in WORKERS:
        raise SpectraError(f"unknown worker {worker!r} (expected one of {', '.join(WORKERS)})")
    if steps is not None and epochs is not None:
        raise SpectraError("give --steps or --epochs, not both")
    for name, value in (("steps", steps), ("epochs", epochs), ("every", every), ("rank", rank)):
        if value is not None and value <= 0:
            raise SpectraError(f"--{name} must be positive, got {value}")
    chosen = PRESETS[preset]
    chosen = replace(
        chosen,
        rank=rank or chosen.rank,
        steps=None if epochs else (steps or chosen.steps),
        epochs=epochs or chosen.epochs,
        every=every or chosen.every,
    )
    methods = tuple(dict.fromkeys(methods))
    model, fused = str(model or DEFAULT_MODEL), dict(fused or {})
    job = Plan(
        methods=methods,
        model=model,
        data=Path(data or DEFAULT_DATA),
        targets=targets,
        layers=_resolve_targets(model, targets, fused, chosen.rank, methods),
        preset=chosen,
        device=_device(device),
        out=Path(out),
        overwrite=overwrite,
        worker=worker,
        fused=tuple(fused.items()),
    )
    load_examples(job.data, chosen.examples)
    _check_outputs(job)
    return job


def _check_outputs(job: Plan) -> None:
    for method in job.methods:
        existing = [p for p in (job.run_dir(method), job.run_dir(method).with_suffix(".parquet"))
                    if p.exists()]  # fmt: skip
        if existing and not job.overwrite:
            raise SpectraError(
                f"{existing[0]} already exists; pass --overwrite or choose another --out"
            )


# ---------------------------------------------------------------- data


class SFTDataset(torch.utils.data.Dataset):
    """Listing 1 prompt + response, tokenized; labels cover the response (and EOS) only."""

    def __init__(self, records: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase,
                 max_length: int):  # fmt: skip
        self.items = [_tokenize(r, tokenizer, max_length) for r in records]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


def _tokenize(record: dict[str, str], tokenizer, max_length: int) -> dict[str, list[int]]:
    prompt = tokenizer(PROMPT.format(query=record["query"]))["input_ids"]
    answer = tokenizer(" " + record["response"], add_special_tokens=False)["input_ids"]
    ids = [*prompt, *answer, tokenizer.eos_token_id][:max_length]
    labels = [IGNORE] * len(prompt) + ids[len(prompt) :]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels[: len(ids)]}


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, padding with EOS when it has no pad token."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---------------------------------------------------------------- methods


def _peft_config(method: str, modules: list[str], rank: int, total_steps: int):
    """peft config of a LoRA-family method; scaling 1 (alpha = r), no dropout.

    AdaLoRA follows Table 4 (β1 = β2 = 0.85, t_init/t_final 100 and 600 of ~780 steps,
    scaled to the run) except for r_init. Table 4 sets r_init = r_target, and with that peft
    (0.21) crashes at the first budget step: ``RankAllocator.mask_to_budget`` keeps the
    ``budget`` most important triplets by ``torch.kthvalue(scores, k=init_bgt - budget)``, and
    with r_init = r_target the budget is the whole initial one, so k = 0, which kthvalue
    refuses ("selected number k out of range"); it also means there is nothing to prune, so
    Table 4's AdaLoRA never reallocates rank. The nearest setting that runs and allocates
    keeps r_target = ``rank`` (Table 4's r) and starts from AdaLoRA's own r_init = 1.5 ×
    r_target (its paper's b(0) = 1.5 b(T)); :class:`AdaLoraAllocation` runs the budget
    schedule every step.
    """
    from peft import AdaLoraConfig, LoraConfig

    common = {"target_modules": modules, "task_type": "CAUSAL_LM"}
    if method == "adalora":
        init_r, target_r = adalora_ranks(rank)
        return AdaLoraConfig(
            init_r=init_r, target_r=target_r, beta1=0.85, beta2=0.85, total_step=total_steps,
            tinit=int(0.128 * total_steps), tfinal=int(0.768 * total_steps), **common,
        )  # fmt: skip
    init = "pissa" if method == "pissa" else True
    return LoraConfig(
        r=rank, lora_alpha=rank, lora_dropout=0.0, init_lora_weights=init,
        use_dora=method == "dora", **common,
    )  # fmt: skip


def prepare(method: str, model: nn.Module, job: Plan, total_steps: int) -> nn.Module:
    """The model set up for ``method``: which weights train, adapters attached."""
    rank, modules = job.preset.rank, module_paths(job.layers)
    if method == "ft":
        model.requires_grad_(False)
        for path in modules:
            model.get_submodule(path).weight.requires_grad_(True)
        return model
    if method in ("sorsa", "sorsa-noreg"):
        apply_sorsa(model, modules, rank)
        return model
    from peft import get_peft_model

    return get_peft_model(model, _peft_config(method, modules, rank, total_steps))


class AdaLoraAllocation(TrainerCallback):
    """AdaLoRA's rank allocation, which transformers' Trainer does not run: peft's
    ``update_and_allocate`` once per optimizer step, after ``optimizer.step()`` and before the
    gradients are zeroed (it scores each triplet by |θ · ∇θ|), with the 0-based index of the
    step (the global step before it is counted), as peft's example loop passes it."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)


class SORSATrainer(Trainer):
    """A Trainer that adds (γ/η_d)·∇L_reg once per optimizer step (eq. 6) and logs
    ``reg_loss`` (L_reg averaged over the steps since the last log; also for γ = 0)."""

    def __init__(self, *args, gamma: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma = gamma
        self.adapters = list(sorsa_modules(self.model).values())
        self._reg: list[float] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # last micro-batch: before clipping and the step
            peak = self.args.learning_rate
            self._reg.append(regularizer_backward(self.adapters, self.gamma, peak))
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._reg:
            logs["reg_loss"] = sum(self._reg) / len(self._reg)
            self._reg.clear()
        super().log(logs, start_time)


class RichSteps(TrainerCallback):
    """Advance one rich progress task per optimizer step, showing the latest loss."""

    def __init__(self, progress: Progress, task):
        self.progress, self.task = progress, task

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.progress.update(self.task, loss=f"loss {logs['loss']:.3f}")


# ---------------------------------------------------------------- training


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
    if job.overwrite:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.with_suffix(".parquet").unlink(missing_ok=True)
    model = AutoModelForCausalLM.from_pretrained(job.model, dtype=torch.float32)
    model = prepare(method, model, job, steps)
    task = progress.add_task(method, total=steps, loss="")
    callbacks = [
        SpectraCallback(run_dir, targets=job.layers, fused=dict(job.fused),
                        every=job.preset.every, method=method,
                        run_name=method, gamma=job.gamma(method), model_name=job.model,
                        worker=job.worker),
        RichSteps(progress, task),
    ]  # fmt: skip
    if method == "adalora":
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


def run(job: Plan, console: Console | None = None) -> list[Path]:
    """Train and track every method of the plan; returns the run directories."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one rich bar per run instead
    console = console or Console(stderr=True)
    tokenizer = load_tokenizer(job.model)
    data = SFTDataset(load_examples(job.data, job.preset.examples), tokenizer,
                      job.preset.max_length)  # fmt: skip
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[loss]}"), TimeElapsedColumn())  # fmt: skip
    runs = []
    with Progress(*columns, console=console) as progress:
        for method in job.methods:
            start = time.perf_counter()
            runs.append(train_one(job, method, data, tokenizer, progress))
            progress.console.print(
                f"{method}: {runs[-1]}/ and {runs[-1].with_suffix('.parquet')} "
                f"({time.perf_counter() - start:.0f} s)"
            )
    console.print(f"next: spectra analyze {job.out}/*.parquet && spectra plot --figure 2 "
                  f"{job.out}/*.parquet")  # fmt: skip
    return runs
