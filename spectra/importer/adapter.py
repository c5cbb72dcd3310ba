"""peft adapter folders: ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``).

peft saves each adapted module's tensors under ``base_model.model.<module path>.`` with the
adapter's name dropped (verified with peft 0.21): LoRA, PiSSA and DoRA as ``lora_A.weight``
(r × in), ``lora_B.weight`` (out × r) and, for DoRA, ``lora_magnitude_vector`` (out);
AdaLoRA as ``lora_A`` (r × in), ``lora_E`` (r × 1) and ``lora_B`` (out × r), without
``ranknum`` (always ``init_r``). Once AdaLoRA has allocated its ranks, the saved config holds
``rank_pattern`` (per module, which of the ``init_r`` triplets are kept) and the saved tensors
hold only the kept triplets; they are put back at their places, the pruned ones zero, which is
the layer as it was in training (pruned triplets have E = 0).

The adapted modules are those the tensors name and the config's ``target_modules`` selects,
by peft's own matching (a list of names, or a regular expression).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

import torch

from spectra.capture import PEFT_PREFIX
from spectra.contained import find_inside, inside
from spectra.errors import SpectraError, first_line
from spectra.importer import adapter_config
from spectra.importer.model import read_config
from spectra.importer.tensors import Tensors
from spectra.methods import of_adapter

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# The saved tensor of each part of an adapted layer (the layer's attribute), per peft type.
SAVED = {
    "LORA": {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight"},
    "ADALORA": {"lora_A": "lora_A", "lora_B": "lora_B", "lora_E": "lora_E"},
}
MAGNITUDE = "lora_magnitude_vector"  # DoRA's saved magnitude (LORA with use_dora)
# init_lora_weights whose step 0 is rebuilt exactly from the base weight by peft's own code
EXACT_INITS = (True, "gaussian", "pissa", "olora")
# Fields that must agree between the checkpoints of one import (AdaLoRA's rank_pattern moves).
SAME_CONFIG = (
    "peft_type", "r", "init_r", "lora_alpha", "use_rslora", "use_dora", "init_lora_weights",
    "fan_in_fan_out", "target_modules", "exclude_modules", "layers_to_transform",
    "layers_pattern", "alpha_pattern", "target_parameters",
)  # fmt: skip


def is_adapter(folder: Path) -> bool:
    """Whether ``folder`` holds a peft adapter (whatever its config is: it is checked when read)."""
    return os.path.lexists(folder / ADAPTER_CONFIG)


def approximate_init(config: dict) -> bool:
    """Whether peft's init draws random numbers that change the base (PiSSA's fast SVD)."""
    init = config.get("init_lora_weights", True)
    return isinstance(init, str) and init.lower().startswith("pissa_niter_")


def _check_init(config: dict, path: Path) -> None:
    init = config.get("init_lora_weights", True)
    if init in EXACT_INITS or approximate_init(config):
        return
    raise SpectraError(
        f"{path}: init_lora_weights={init!r}: the step-0 adapter of this init cannot be rebuilt "
        "from the base weights (supported: true, 'gaussian', 'pissa', 'pissa_niter_K', 'olora')"
    )


@dataclass
class Adapter:
    """A peft adapter folder: its config (raw and as peft's object) and its tensors, lazily."""

    path: Path
    raw: dict
    config: object  # peft's config object (peft is imported only when an adapter is read)
    tensors: Tensors
    modules: dict[str, dict[str, str]] = field(default_factory=dict)  # path → {attr: name}
    layers: dict[str, list] = field(default_factory=dict)  # path → [rank, alpha] of its layer

    @property
    def config_file(self) -> Path:
        return self.path / ADAPTER_CONFIG

    @property
    def method(self) -> str:
        return of_adapter(self.raw)

    def files_read(self) -> list[Path]:
        """Every file whose contents went into the import."""
        return [self.config_file, *self.tensors.read_files]

    def check_same(self, first: Adapter) -> None:
        """SpectraError unless this checkpoint has ``first``'s method and configuration."""
        if self.method != first.method:
            raise SpectraError(
                f"{self.config_file}: a {self.method} adapter, but {first.config_file} is "
                f"{first.method}; one import takes one method"
            )
        fields = SAME_CONFIG + (("rank_pattern",) if self.raw["peft_type"] == "LORA" else ())
        for name in fields:
            if self.raw.get(name) != first.raw.get(name):
                raise SpectraError(
                    f"{self.config_file}: {name} = {self.raw.get(name)!r} differs from "
                    f"{first.config_file}'s {first.raw.get(name)!r}; one import takes one "
                    "adapter configuration"
                )

    def rank_masks(self) -> dict[str, list[bool]]:
        """AdaLoRA: {module path: which of the init_r triplets are kept}, once allocated."""
        if self.raw["peft_type"] != "ADALORA" or not self.raw.get("rank_pattern"):
            return {}
        masks = {}
        for key, mask in self.raw["rank_pattern"].items():
            parts = key.split(".")
            if parts[-1] != "lora_E":  # the key still names the adapter
                parts = parts[:-1]
            masks[".".join(parts[:-1])] = [bool(m) for m in mask]
        return masks

    def check(self, module: str, shape: tuple[int, int]) -> None:
        """SpectraError unless the saved tensors of ``module`` are floating point and fit a base
        of torch ``shape`` (from the file header: nothing is read)."""
        names = self.modules.get(module)
        if names is None:
            raise SpectraError(f"{self.path}: no adapter tensors for {module}")
        shapes = {attr: self.tensors.shapes[name] for attr, name in names.items()}
        out, cols = shape
        rank = shapes["lora_A"][0]
        expected = {
            "lora_A": (rank, cols), "lora_B": (out, rank), "lora_E": (rank, 1), MAGNITUDE: (out,),
        }  # fmt: skip
        for attr, found in shapes.items():
            if not self.tensors.floating(names[attr]):
                raise SpectraError(
                    f"{self.tensors.files[names[attr]]}: tensor {names[attr]} is not floating "
                    "point; spectra imports adapter factors of a floating type"
                )
            if found != expected[attr]:
                raise SpectraError(
                    f"{self.tensors.files[names[attr]]}: tensor {names[attr]} has shape {found}, "
                    f"but the base's {module}.weight ({out}×{cols}) needs {expected[attr]}"
                )
        mask = self.rank_masks().get(module)
        full = self.layers[module][0]
        if rank != full and (mask is None or len(mask) != full):
            raise SpectraError(
                f"{self.tensors.files[names['lora_A']]}: tensor {names['lora_A']} has rank "
                f"{rank}, but {self.config_file} gives {module} rank {full}"
            )
        if mask is not None and rank not in (len(mask), sum(mask)):
            raise SpectraError(
                f"{self.tensors.files[names['lora_A']]}: {module} has {rank} triplets, but "
                f"rank_pattern in {self.config_file} keeps {sum(mask)} of {len(mask)}"
            )

    def layer_config(self, module: str):
        """The peft config that builds ``module``'s layer: its name, rank and alpha, no pattern."""
        return adapter_config.literal(self.config, module, *self.layers[module])

    def parts(self, module: str) -> dict[str, torch.Tensor]:
        """The layer's adapter tensors ({attribute: tensor}) as the layer held them."""
        tensors = {attr: self.tensors.read(name) for attr, name in self.modules[module].items()}
        mask = self.rank_masks().get(module)
        if mask is not None and tensors["lora_A"].shape[0] != len(mask):
            tensors = _unprune(tensors, mask)
        return tensors


def _unprune(tensors: dict[str, torch.Tensor], mask: list[bool]) -> dict[str, torch.Tensor]:
    """AdaLoRA tensors saved with only the kept triplets, back at their init_r places (the
    pruned ones zero: in training their E is zero)."""
    keep = torch.tensor(mask).nonzero().flatten()
    full = {}
    for attr, t in tensors.items():
        along = 1 if attr == "lora_B" else 0
        shape = list(t.shape)
        shape[along] = len(mask)
        full[attr] = t.new_zeros(shape).index_copy_(along, keep, t)
    return full


def _saved(raw: dict) -> dict[str, str]:
    """{layer attribute: saved key suffix} of every tensor an adapted layer must have."""
    saved = dict(SAVED[raw["peft_type"]])
    return saved | ({MAGNITUDE: MAGNITUDE} if raw.get("use_dora") else {})


def _module_tensors(tensors: Tensors, saved: dict[str, str]) -> dict[str, dict[str, str]]:
    """{module path: {attribute: tensor name}} of the modules with saved LoRA factors."""
    modules: dict[str, dict[str, str]] = {}
    for name in tensors.shapes:
        key = name.removeprefix(PEFT_PREFIX)
        for attr, suffix in saved.items():
            if key.endswith(f".{suffix}"):
                modules.setdefault(key[: -len(suffix) - 1], {})[attr] = name
    return {m: parts for m, parts in modules.items() if "lora_A" in parts}


def open_adapter(folder: Path) -> Adapter:
    """The adapter in ``folder``; SpectraError for what spectra cannot import."""
    config_file = inside(folder, ADAPTER_CONFIG)
    raw = read_config(config_file)
    peft_type = raw.get("peft_type")
    if peft_type not in SAVED:
        raise SpectraError(
            f"{config_file}: peft_type {peft_type!r} is not one spectra imports (LORA, ADALORA)"
        )
    _check_init(raw, config_file)
    adapter_config.check_fields(raw, config_file)
    weights = next(filter(None, (find_inside(folder, n) for n in ADAPTER_WEIGHTS)), None)
    if weights is None:
        raise SpectraError(f"{folder}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    tensors = Tensors(folder, [weights])
    saved = _saved(raw)
    modules = _module_tensors(tensors, saved)
    if not modules:
        raise SpectraError(f"{weights}: no LoRA factors of linear layers (lora_A / lora_B)")
    for module, parts in modules.items():
        missing = [suffix for attr, suffix in saved.items() if attr not in parts]
        if missing:
            raise SpectraError(f"{weights}: no tensor {module}.{missing[0]}")
    largest = max(max(tensors.shapes[n], default=0) for p in modules.values() for n in p.values())
    adapter_config.check_ranks(raw, largest, config_file)
    adapter_config.bound_patterns(raw, list(modules), config_file)
    import_module("spectra.capture.quant")  # peft (and bitsandbytes) imported quietly, first
    from peft import PeftConfig

    try:
        config = PeftConfig.from_peft_type(**raw)
    except Exception as exc:  # peft raises many kinds for configs it refuses
        raise SpectraError(f"{config_file}: not a valid peft config ({first_line(exc)})") from None
    layers = adapter_config.resolve(config, list(modules), config_file)
    return Adapter(folder, raw, config, tensors, modules, layers)
