"""Lazy access to the tensors of weight files, by name, one tensor at a time.

A :class:`Tensors` spans one or more files: a single ``.safetensors`` file, the shards of a
``*.safetensors.index.json`` (or a sharded ``pytorch_model.bin.index.json``), or ``torch.save``
files. Only the headers of safetensors files are read up front (names, shapes), and each
tensor is read alone, without readahead, so reading the q/v projections of a sharded model
reads only those bytes from storage. ``torch.save`` files are loaded with
``torch.load(weights_only=True, mmap=True)``, never a full unpickle, and must hold tensors only
(a dict of name → tensor, possibly nested). For the run's provenance, the files whose tensors
were read are recorded, and the SHA-256 of each safetensors tensor read (of its bytes as
stored), so that no byte beyond the target tensors is ever read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from spectra.contained import inside
from spectra.errors import SpectraError, first_line
from spectra.limits import check_safetensors_header, read_json
from spectra.snapshots.raw import Slot, open_random, parse_header, read_header, read_tensor

SAFETENSORS = ".safetensors"
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
WRAPPERS = ("state_dict", "model")  # a torch.save dict holding only one of these is unwrapped


def _reason(exc: BaseException) -> str:
    """The line of a torch.load error that says why (not its advice to unpickle anyway)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    why = next((ln for ln in lines if "WeightsUnpickler error" in ln or "GLOBAL" in ln), None)
    return why or (lines[0] if lines else type(exc).__name__)


def _safetensors_slots(path: Path) -> dict[str, Slot]:
    """{name: slot} from a safetensors header, read alone (no tensor data, no readahead)."""
    check_safetensors_header(path)
    try:
        with open_random(path) as f:
            header, size = read_header(f, str(path))
    except OSError as exc:
        raise SpectraError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_header(header, size, str(path))


def _flatten(value, path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    if not isinstance(value, dict) or not value:
        what = "an empty dict" if isinstance(value, dict) else type(value).__name__
        raise SpectraError(
            f"{path}: {prefix or 'the file'} holds {what}, not tensors; "
            "spectra reads torch.save files of tensors only (a dict of name → tensor)"
        )
    out = {}
    for key, item in value.items():
        out |= _flatten(item, path, f"{prefix}.{key}" if prefix else str(key))
    return out


def load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` file, loaded weights-only; SpectraError for anything else."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise SpectraError(f"{path}: no such file") from None
    except Exception as exc:  # torch raises many kinds for files it refuses
        raise SpectraError(
            f"{path}: not a file of tensors that torch.load(weights_only=True) can read "
            f"({_reason(exc)})"
        ) from None
    while isinstance(loaded, dict) and len(loaded) == 1 and next(iter(loaded)) in WRAPPERS:
        loaded = next(iter(loaded.values()))
    return _flatten(loaded, path)


class Tensors:
    """The tensors of some weight files, by name; read one at a time, on demand."""

    def __init__(self, where: Path, files: list[Path]):
        self.where = where  # the folder or file the tensors belong to, for messages
        self.files: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._slots: dict[str, Slot] = {}  # where each safetensors tensor is in its file
        self._loaded: dict[str, torch.Tensor] = {}  # tensors of torch.save files
        self.read_files: list[Path] = []  # files whose tensor data was read, in order
        self.digests: dict[Path, dict[str, str]] = {}  # safetensors file → {tensor: sha256}
        for file in files:
            if file.suffix == SAFETENSORS:
                slots = _safetensors_slots(file)
                shapes = {name: slot.shape for name, slot in slots.items()}
            else:
                tensors = load_torch_file(file)
                self._loaded |= tensors
                shapes = {name: tuple(t.shape) for name, t in tensors.items()}
            duplicate = next((name for name in shapes if name in self.files), None)
            if duplicate is not None:
                raise SpectraError(f"{file}: tensor {duplicate} is also in {self.files[duplicate]}")
            self.shapes |= shapes
            if file.suffix == SAFETENSORS:
                self._slots |= slots
            self.files |= dict.fromkeys(shapes, file)

    def floating(self, name: str) -> bool:
        """Whether tensor ``name`` is stored as floating point (from its header: no data read)."""
        if name in self._loaded:
            return self._loaded[name].is_floating_point()
        dtype = self._slots[name].dtype  # F64, F32, F16, BF16, F8_E4M3, I8, U8, …
        return dtype.startswith("F") or dtype == "BF16"

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name``, read from its file now (only this tensor's bytes)."""
        file = self.files[name]
        if file not in self.read_files:
            self.read_files.append(file)
        if name in self._loaded:
            return self._loaded[name]
        tensor, self.digests.setdefault(file, {})[name] = read_tensor(file, name)
        return tensor


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Hex SHA-256 of a tensor's bytes (little-endian, as safetensors stores them)."""
    return hashlib.sha256(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def _weight_map(index: Path) -> dict[str, str]:
    """{tensor: shard name} of a ``*.index.json``."""
    try:
        weight_map = read_json(index)["weight_map"]
    except (KeyError, TypeError) as exc:
        raise SpectraError(f"{index}: not a readable shard index ({first_line(exc)})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SpectraError(f"{index}: its weight_map is not an object of tensor → shard file")
    return weight_map


def index_files(index: Path) -> list[Path]:
    """The shard files that a ``*.index.json`` maps tensors to, in order of first mention,
    each checked to be a file inside the index's folder."""
    shards = dict.fromkeys(_weight_map(index).values())
    return [_shard(index, shard) for shard in shards]


def _shard(index: Path, shard: str) -> Path:
    if not os.path.lexists(index.parent / shard):
        raise SpectraError(f"{index}: shard {shard} is missing")
    return inside(index.parent, shard)


def open_index(index: Path) -> Tensors:
    """The tensors of a sharded model, checked against its index."""
    weight_map = _weight_map(index)
    tensors = Tensors(index.parent, [_shard(index, s) for s in dict.fromkeys(weight_map.values())])
    for name, shard in weight_map.items():
        if tensors.files.get(name) != index.parent / shard:
            raise SpectraError(f"{index}: tensor {name} is not in shard {shard}")
    return tensors
