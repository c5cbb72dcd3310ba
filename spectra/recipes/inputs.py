"""The inputs of ``spectra track``, checked into a :class:`Plan`: :func:`plan` checks the
methods, preset, model folder (a causal LM whose weights are there and whole), data, targets
(resolved on a weightless meta model, the rank checked to fit each), device and output folder,
and raises SpectraError on the first problem, before anything trains; :func:`parse_list` and
:func:`parse_fused` read the CLI's option values. Without a model or data it takes the embedded
default that ships inside the package (:mod:`spectra.default`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.pytorch_utils import Conv1D
from transformers.utils import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from spectra import default
from spectra.callback import WORKERS
from spectra.capture import expert_paths, find_layers, module_paths
from spectra.errors import SpectraError, first_line
from spectra.limits import INT64, check_epochs, in_range
from spectra.methods import NAMES, get
from spectra.model_sizes import (
    check_config_file,
    check_model_exists,
    check_sizes,
    config_sizes,
    weight_shapes,
)
from spectra.overwrite import check_replaceable
from spectra.recipes.presets import ADALORA_INIT, PRESETS, Preset, adalora_ranks
from spectra.recipes.sft_data import load_examples, load_tokenizer
from spectra.run_files import parquet_path

try:  # configs check their field types (huggingface_hub's strict dataclasses)
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # pragma: no cover - an older huggingface_hub
    StrictDataclassError = ValueError
# What transformers raises on a config.json with wrong or absurd values (a user's file).
CONFIG_ERRORS = (ValueError, KeyError, TypeError, ArithmeticError, StrictDataclassError)
MODEL_ERRORS = (*CONFIG_ERRORS, RuntimeError, AssertionError)  # building a model from it

FIGURE2 = ("ft", "lora", "sorsa-noreg", "sorsa")
DEVICES = ("auto", "cpu", "cuda", "mps")
DEFAULT_MODEL, DEFAULT_DATA = default.MODEL, default.DATA
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
CAUSAL_HEADS = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


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
        """γ of SORSA's regularizer (0 without it); None for methods without SORSA's factors."""
        found = get(method)
        if found.capture != "sorsa":
            return None
        return self.preset.gamma if found.regularized else 0.0

    def lr(self, method: str) -> float:
        return self.preset.sorsa_lr if get(method).regularized else self.preset.lr


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


def _causal_lm_config(model: str):
    """The model's config, or SpectraError when it is not a causal LM transformers can load."""
    check_model_exists(model)
    try:
        if Path(model).is_dir():
            check_config_file(Path(model))
        config = AutoConfig.from_pretrained(model)
    except SpectraError as exc:
        raise SpectraError(f"{model}: not a transformers model ({exc})") from None
    except (OSError, *CONFIG_ERRORS) as exc:
        raise SpectraError(f"{model}: not a transformers model ({first_line(exc)})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SpectraError(f"{model}: a {config.model_type!r} model is not a causal LM")
    heads = getattr(config, "architectures", None) or []
    if heads and not CAUSAL_HEADS & set(heads):
        raise SpectraError(f"{model}: a {heads[0]} has no causal language-model head")
    if Path(model).is_dir():
        _check_weights(Path(model), config)
    return config


def _check_weights(folder: Path, config) -> None:
    """SpectraError unless the model folder has weights, every safetensors file whole and
    large enough for what the config describes."""
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise SpectraError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES[::2])})")
    check_sizes(config_sizes(config), weight_shapes(folder), str(folder))


def _resolve_targets(
    model: str, targets: tuple[str, ...], fused: dict, rank: int, methods: tuple[str, ...]
) -> tuple[str, ...]:
    """The full layer names of the targets (None: the architecture's query and value),
    checked to be layers the methods adapt and the rank fits (on a weightless meta model)."""
    config = _causal_lm_config(model)
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except MODEL_ERRORS as exc:
        raise SpectraError(f"{model}: its config.json does not make a model ({exc})") from None
    layers = find_layers(skeleton, targets or None, fused)
    largest = max(adalora_ranks(rank)[0] if get(m).allocates_rank else rank for m in methods)
    sorsa = any(get(m).capture == "sorsa" for m in methods)
    adaptable = (nn.Linear,) if sorsa else (nn.Linear, Conv1D)
    experts = expert_paths(layers)
    other = next((m for m in methods if not get(m).trains_parameters), None)
    if experts and other is not None:
        able = " or ".join(n for n in NAMES if get(n).trains_parameters)
        raise SpectraError(
            f"{experts[0]} is an expert parameter: the recipes train experts with {able} "
            f"(peft's LoRA on parameters), not {other}"
        )
    for path in module_paths(layers):
        if path in experts:
            shape = tuple(skeleton.get_parameter(path).shape)  # [E, out, in] or [E, in, out]
        else:
            module = skeleton.get_submodule(path)
            if not isinstance(module, adaptable):
                raise SpectraError(
                    f"{path} is a {type(module).__name__}; the recipes adapt "
                    f"{'nn.Linear layers (SORSA)' if sorsa else 'nn.Linear and Conv1D layers'}"
                )
            shape = tuple(module.weight.shape)
        limit = min(shape[-2:])
        if methods != ("ft",) and not 0 < largest <= limit:
            raise SpectraError(
                f"rank {largest} does not fit {path} ({'×'.join(map(str, shape))}): use 1..{limit}"
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
    for method in methods:
        if get(method).label_only:  # SpectraError naming the known methods when unknown
            raise SpectraError(f"spectra does not train {method}: it is a label for runs made "
                               f"elsewhere (expected one of {', '.join(NAMES)})")  # fmt: skip
    if preset not in PRESETS:
        raise SpectraError(f"unknown preset {preset!r} (expected one of {', '.join(PRESETS)})")
    if worker not in WORKERS:
        raise SpectraError(f"unknown worker {worker!r} (expected one of {', '.join(WORKERS)})")
    if steps is not None and epochs is not None:
        raise SpectraError("give --steps or --epochs, not both")
    if epochs is not None:
        check_epochs(epochs)
    for name, value in (("steps", steps), ("epochs", epochs), ("every", every), ("rank", rank)):
        if value is not None and value <= 0:
            raise SpectraError(f"--{name} must be positive, got {value}")
        if value is not None and name != "epochs":
            in_range(value, INT64, f"--{name}")
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
    _check_steps(chosen, len(load_examples(job.data, chosen.examples)))
    load_tokenizer(job.model)
    _check_outputs(job)
    return job


def _check_steps(preset: Preset, examples: int) -> None:
    """SpectraError unless the optimizer steps (``--epochs`` over the data) fit in 64 bits."""
    if preset.steps is None:
        check_epochs(preset.epochs, math.ceil(examples / preset.batch_size))


def _check_outputs(job: Plan) -> None:
    if job.out.exists() and not job.out.is_dir():
        raise SpectraError(f"--out {job.out} is a file; the runs go into a folder")
    for method in job.methods:
        existing = [p for p in (job.run_dir(method), parquet_path(job.run_dir(method)))
                    if p.exists()]  # fmt: skip
        if existing and not job.overwrite:
            raise SpectraError(
                f"{existing[0]} already exists; pass --overwrite or choose another --out"
            )
        if existing:
            check_replaceable(job.run_dir(method), method)
