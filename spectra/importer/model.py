"""Full-weight models: a folder as ``save_pretrained`` writes it (``model.safetensors``, or
shards ``model-0000x-of-0000y.safetensors`` with ``model.safetensors.index.json``, or the
``pytorch_model.bin`` forms), a single ``.safetensors`` file, a ``torch.save`` file of
weights (the per-step files of the SORSA paper's analysis script), or, in a folder with none of
those, a sharded checkpoint (:mod:`.dcp`, :mod:`.zero`).

Its modules are the names of its 2-D ``.weight`` tensors without that suffix (and without
peft's ``base_model.model.`` prefix); nothing but those tensors' headers is read until a
tensor is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from spectra.capture import PEFT_PREFIX
from spectra.contained import find_inside, source
from spectra.errors import SpectraError
from spectra.importer.tensors import (
    SAFETENSORS,
    TORCH_SUFFIXES,
    Tensors,
    open_index,
)
from spectra.limits import read_json

CONFIG = "config.json"
# Weight files of a save_pretrained folder, in the order transformers looks for them.
WEIGHT_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
WEIGHT = ".weight"


def read_config(path: Path) -> dict:
    """A JSON object file (config.json, adapter_config.json); SpectraError otherwise."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise SpectraError(f"{path}: not a JSON object")
    return config


@dataclass
class Model:
    """A model's weights, read lazily, and its config.json when it has one."""

    path: Path
    tensors: Tensors
    config: dict | None = None
    meta_files: list[Path] = field(default_factory=list)  # config and index files read
    modules: dict[str, str] = field(init=False)  # module path → tensor name

    def __post_init__(self):
        self.modules = {
            name.removeprefix(PEFT_PREFIX).removesuffix(WEIGHT): name
            for name, shape in self.tensors.shapes.items()
            if name.endswith(WEIGHT) and len(shape) == 2
        }
        if not self.modules:
            raise SpectraError(f"{self.path}: no 2-D .weight tensors (no weights to import)")

    def shape(self, module: str) -> tuple[int, int]:
        """The stored shape of ``module``'s weight."""
        return self.tensors.shapes[self.modules[module]]

    def weight(self, module: str) -> torch.Tensor:
        """``module``'s weight as stored (read now)."""
        return self.tensors.read(self.modules[module])

    def files_read(self) -> list[Path]:
        """Every file whose contents went into the import."""
        return [*self.meta_files, *self.tensors.read_files]


def weight_file(folder: Path) -> Path | None:
    """The weight file (or index) of a save_pretrained folder, or None."""
    return next(filter(None, (find_inside(folder, n) for n in WEIGHT_FILES)), None)


def _sharded(folder: Path):
    """The tensors of a sharded checkpoint in ``folder`` (DCP or DeepSpeed ZeRO-3), or None."""
    from spectra.importer.dcp import open_dcp
    from spectra.importer.zero import open_zero

    return open_dcp(folder) or open_zero(folder)


def open_model(path: Path) -> Model:
    """The model at ``path``: a save_pretrained folder, a .safetensors or a torch.save file."""
    if source(path).is_file():
        if path.suffix not in (SAFETENSORS, *TORCH_SUFFIXES):
            raise SpectraError(f"{path}: not a weight file (.safetensors, .bin, .pt or .pth)")
        return Model(path, Tensors(path, [path]))
    found = weight_file(path)
    sharded = _sharded(path) if found is None else None
    if found is None and sharded is None:
        raise SpectraError(
            f"{path}: no weights (looked for adapter_config.json, {', '.join(WEIGHT_FILES)}, "
            "a torch.distributed.checkpoint .metadata, DeepSpeed ZeRO-3 global_stepN/)"
        )
    config_path = find_inside(path, CONFIG)
    config = read_config(config_path) if config_path else None
    meta = [config_path] if config_path else []
    if sharded is not None:
        return Model(path, sharded, config, [*meta, *sharded.meta_files])
    if found.name.endswith(".index.json"):
        tensors = open_index(found)
        meta.append(found)
    else:
        tensors = Tensors(path, [found])
    return Model(path, tensors, config, meta)
