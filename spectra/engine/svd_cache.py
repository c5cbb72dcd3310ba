"""The step-0 SVD cache: the float64 SVD of every distinct W_0, computed once.

An entry is one safetensors file (``u``, ``s``, ``vh``) under ``<cache dir>/svd/``, named by
a content address of W_0 (its shape and a hash of its float64 bytes), so later steps and
every other run that shares the base weights reuse it. :func:`base_task` computes or finds
the entry of one layer (a module-level function of paths, run by the engine's workers); an
entry that cannot be read back whole is computed again. :func:`cached_svd` reads an entry
without ever writing one.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load

from spectra.engine.settings import DEFAULTS, Settings
from spectra.errors import SpectraError
from spectra.metrics import SVD, svd
from spectra.snapshots import open_run, save_tensors


def default_cache_dir() -> Path:
    """$SPECTRA_CACHE, else ~/.cache/spectra; SpectraError when neither can be found."""
    home = os.path.expanduser("~")  # $HOME, else the user's entry in the password database
    if not os.environ.get("SPECTRA_CACHE") and home in ("", "~"):
        raise SpectraError(
            "no folder for the SVD cache: $HOME is not set and the user has no home "
            "folder; set $SPECTRA_CACHE or pass --cache-dir"
        )
    return Path(os.environ.get("SPECTRA_CACHE") or Path(home) / ".cache" / "spectra")


def weight_key(w: torch.Tensor) -> str:
    """Content address of a float64 matrix: shape and a BLAKE2b digest of its bytes."""
    digest = hashlib.blake2b(w.contiguous().numpy().data, digest_size=16).hexdigest()
    return f"{w.shape[0]}x{w.shape[1]}-{digest}"


def base_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "svd" / f"{key}.safetensors"


@lru_cache(maxsize=1)  # tasks arrive layer-major: one base per worker bounds memory
def load_base(path: str) -> SVD:
    t = load(Path(path).read_bytes())  # in memory, not mapped: the file may change later
    return SVD(t["u"], t["s"], t["vh"])


def base_task(run_dir: str, layer: str, cache_dir: str, settings: Settings = DEFAULTS) -> str:
    """Compute (or find) the SVD of ``layer``'s step-0 weight in the cache; return its path.

    A cache entry that cannot be read back whole (truncated, corrupt) is computed again.
    """
    w0 = open_run(run_dir).weight(0, layer)
    if not torch.isfinite(w0).all():
        raise SpectraError(f"{Path(run_dir).name} layer {layer}: step-0 weight has NaN or Inf")
    path = base_path(Path(cache_dir), weight_key(w0))
    if not _cached(path, tuple(w0.shape)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpectraError(f"cannot use the SVD cache {cache_dir}: {exc.strerror}") from None
        base = svd(w0, settings.device)
        save_tensors(path, {"u": base.u, "s": base.s, "vh": base.vh})
        load_base.cache_clear()
    return str(path)


def _cached(path: Path, shape: tuple[int, int]) -> bool:
    """Whether ``path`` holds a whole float64 SVD of an m×n matrix (read from its header)."""
    (m, n), k = shape, min(shape)
    want = {"u": [m, k], "s": [k], "vh": [k, n]}
    try:
        with safe_open(str(path), framework="pt") as f:  # checks the file is complete
            if set(f.keys()) != set(want):
                return False
            for name, dims in want.items():
                part = f.get_slice(name)
                if part.get_shape() != dims or part.get_dtype() != "F64":
                    return False
            return bool(torch.isfinite(f.get_tensor("s")).all())
    except (SafetensorError, OSError):
        return False


def cached_svd(w0: torch.Tensor, cache_dir: str | Path | None = None) -> SVD:
    """The SVD of a step-0 weight: from the cache when it holds it, else computed here (and
    not written: readers such as figures leave the cache as it is)."""
    path = base_path(Path(cache_dir or default_cache_dir()), weight_key(w0))
    return load_base(str(path)) if _cached(path, tuple(w0.shape)) else svd(w0)
