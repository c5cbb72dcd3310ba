"""The safetensors files of a run directory: written atomically, read tensor by tensor."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from spectra.atomic import atomic_write
from spectra.errors import SpectraError
from spectra.limits import check_safetensors_header


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors to a safetensors file atomically; SpectraError when the disk refuses."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        atomic_write(path, lambda tmp: save_file(plain, str(tmp)))
    except SafetensorError as exc:
        if "I/O error" not in str(exc):
            raise
        raise SpectraError(f"cannot write {path}: {exc}") from None


def read_tensors(
    path: Path, keys: Iterable[str], expert: int | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of ``keys`` that the snapshot file ``path`` holds, of stacked experts
    ([E, …] parts) only expert ``expert``, read alone; SpectraError when the file is missing,
    corrupt or truncated."""
    if not path.is_file():
        raise SpectraError(f"snapshot file missing: {path}")
    check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            present = set(f.keys())
            return {k: _tensor(f, k, expert, path) for k in keys if k in present}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SpectraError(f"corrupt or truncated snapshot {path}: {exc}") from None


def _tensor(f, key: str, expert: int | None, path: Path) -> torch.Tensor:
    """Tensor ``key`` of an open safetensors file; of a 3-D stack of experts, expert ``expert``
    (its bytes only). A 1-element part (``scale``) is shared by every expert."""
    if expert is None:
        return f.get_tensor(key)
    stack = f.get_slice(key)
    shape = stack.get_shape()
    if len(shape) < 3:
        return f.get_tensor(key)
    _check_expert(shape[0], expert, key, path)
    return stack[expert : expert + 1][0]


def one_expert(tensor: torch.Tensor, expert: int | None, key: str, path: Path) -> torch.Tensor:
    """Of a 3-D stack of experts ``tensor``, expert ``expert``; any other tensor as it is."""
    if expert is None or tensor.dim() < 3:
        return tensor
    _check_expert(tensor.shape[0], expert, key, path)
    return tensor[expert]


def _check_expert(count: int, expert: int, key: str, path: Path) -> None:
    if expert >= count:
        raise SpectraError(f"{path}: {key} holds {count} experts, not expert {expert}")
