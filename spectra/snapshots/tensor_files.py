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


def read_tensors(path: Path, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The tensors of ``keys`` that the snapshot file ``path`` holds; SpectraError when the
    file is missing, corrupt or truncated."""
    if not path.is_file():
        raise SpectraError(f"snapshot file missing: {path}")
    check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            present = set(f.keys())
            return {k: f.get_tensor(k) for k in keys if k in present}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SpectraError(f"corrupt or truncated snapshot {path}: {exc}") from None
