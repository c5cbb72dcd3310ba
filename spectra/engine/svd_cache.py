"""The step-0 SVD cache: the float64 SVD of every distinct W_0, computed once, checked on use.

An entry is one safetensors file (``u``, ``s``, ``vh``) under ``<cache dir>/svd/``, named by
a content address of W_0 (its shape and a hash of its float64 bytes, :func:`weight_key`), so
later steps and every other run that shares the base weights reuse it. Its metadata records
that address and a digest of u, s and vh. An entry is used only when it is a regular file
(never read through a symlink, a FIFO or a device) of the right size whose recorded address is
the one asked for, whose tensors are float64 of the right shapes and hash to the recorded
digest, and which is an SVD of W_0 (checked with a few random probes: U diag(s) Vᵀ x = W_0 x,
orthonormal U and V, s descending). Anything else (another matrix's SVD, scrambled or
truncated vectors, another dtype) is computed again, said once on stderr, and replaced (an
entry of an older spectra, without a digest, silently); a new entry is renamed into place, so
a symlink planted there is replaced, never written through.

:func:`open_cache` checks the cache folder once: one that cannot be written (read-only, not a
folder, not creatable) is not used, with one warning line, and every task computes the SVD it
needs itself. :func:`base_task` finds or computes the entry of one layer (a module-level
function of paths, run by the engine's workers) and returns an :class:`Entry`;
:func:`load_base` reads it in a task, checked against the digest :func:`base_task` verified;
:func:`cached_svd` reads an entry without ever writing one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from spectra.atomic import atomic_write, remove_temporary_files
from spectra.cachedir import default_cache_dir
from spectra.engine.settings import DEFAULTS, Settings
from spectra.errors import SpectraError
from spectra.metrics import SVD, svd
from spectra.snapshots import open_run
from spectra.terminal import warn_once

ENTRY_FORMAT = "1"  # the metadata layout of an entry
MAX_HEADER = 1 << 16  # bytes: an entry's safetensors header is far smaller
STALE_S = 3600.0  # a temporary file in the cache this old is a killed writer's
PROBES = 4  # random vectors the SVD check multiplies by
TOLERANCE = 1e-8  # relative error of an SVD check; float64 LAPACK is at ~1e-14
MISSING, OLD = "missing", "has no digest (an older spectra wrote it)"  # computed silently
NO_FOLLOW = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


@dataclass(frozen=True)
class Entry:
    """What a task needs to find a layer's step-0 SVD: a checked cache entry (its path, W_0's
    address and shape, the digest of its tensors), or none (``path`` None: the task computes
    the SVD itself)."""

    path: str | None = None
    key: str = ""
    shape: tuple[int, int] = (0, 0)
    digest: str = ""


def weight_key(w: torch.Tensor) -> str:
    """Content address of a float64 matrix: shape and a BLAKE2b digest of its bytes."""
    digest = hashlib.blake2b(w.contiguous().numpy().data, digest_size=16).hexdigest()
    return f"{w.shape[0]}x{w.shape[1]}-{digest}"


def svd_digest(base: SVD) -> str:
    """Digest of an entry's tensors: SHA-256 of the bytes of u, s and vh, in that order."""
    digest = hashlib.sha256()
    for t in base:
        digest.update(t.contiguous().numpy().data)
    return digest.hexdigest()


def base_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "svd" / f"{key}.safetensors"


def open_cache(cache_dir: str | Path | None = None) -> str | None:
    """The cache folder, ready to hold entries (``svd/`` created, a real folder, writable), or
    None with one warning line when it cannot be used (then no cache is used)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    entries = cache_dir / "svd"
    try:
        entries.mkdir(parents=True, exist_ok=True)
        if not stat.S_ISDIR(os.lstat(entries).st_mode):
            raise NotADirectoryError(f"{entries} is a symlink, not a folder")
        probe = entries / f".probe.{secrets.token_hex(4)}.tmp"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
        remove_temporary_files(entries, older_than=STALE_S)  # of writers killed long ago
    except OSError as exc:
        warn_once(
            f"the SVD cache {cache_dir} cannot be used ({exc.strerror or exc}); "
            "computing without it"
        )
        return None
    return str(cache_dir)


def read_entry(path: str | Path, key: str, shape: tuple[int, int]) -> tuple[SVD, str] | str:
    """(SVD, digest of its tensors) of the entry at ``path`` if it is a whole entry of W_0
    ``key`` of ``shape``, else why not (MISSING, OLD, "is corrupt", …)."""
    (m, n), k = shape, min(shape)
    want = {"u": (m, k), "s": (k,), "vh": (k, n)}
    size = 8 * (m * k + k + k * n)
    try:
        fd = os.open(path, NO_FOLLOW)
    except FileNotFoundError:
        return MISSING
    except OSError as exc:  # a symlink: ELOOP
        return f"cannot be opened ({exc.strerror})"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "is not a regular file"
        if not size < info.st_size <= size + 8 + MAX_HEADER:
            return "is truncated or has the wrong size"
        raw = f.read()
    try:
        tensors = load(raw)
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
        meta = header.get("__metadata__") or {}
    except (SafetensorError, ValueError, AttributeError):
        return "is corrupt"
    if "format" not in meta:
        return OLD
    if meta.get("w0") != key or meta["format"] != ENTRY_FORMAT:
        return "is not the SVD of this matrix"
    if set(tensors) != set(want) or any(
        tensors[name].dtype != torch.float64 or tuple(tensors[name].shape) != dims
        for name, dims in want.items()
    ):
        return "does not hold float64 u, s, vh of the right shapes"
    base = SVD(tensors["u"], tensors["s"], tensors["vh"])
    digest = svd_digest(base)
    if digest != meta.get("digest"):
        return "does not match its digest"
    return base, digest


def is_svd_of(base: SVD, w0: torch.Tensor) -> bool:
    """Whether ``base`` is an SVD of ``w0``: random probes of U diag(s) Vᵀ = W_0, UᵀU = I and
    VᵀV = I (O((m + n) k) work, not an SVD), and s finite, non-negative and descending."""
    u, s, vh = base
    if not (torch.isfinite(s).all() and (s >= 0).all() and (s[:-1] >= s[1:]).all()):
        return False
    g = torch.Generator().manual_seed(0)
    x = torch.randn(w0.shape[1], PROBES, dtype=torch.float64, generator=g)
    y = torch.randn(s.shape[0], PROBES, dtype=torch.float64, generator=g)
    scale = float(torch.linalg.matrix_norm(w0)) or 1.0
    errors = (
        torch.linalg.matrix_norm(u @ (s[:, None] * (vh @ x)) - w0 @ x) / scale,
        torch.linalg.matrix_norm(u.mT @ (u @ y) - y),
        torch.linalg.matrix_norm(vh @ (vh.mT @ y) - y),
    )
    norm = float(torch.linalg.matrix_norm(x)) + float(torch.linalg.matrix_norm(y))
    return all(float(e) <= TOLERANCE * norm for e in errors)


def _checked(path: Path, w0: torch.Tensor, key: str) -> tuple[SVD, str] | str:
    found = read_entry(path, key, tuple(w0.shape))
    if isinstance(found, str) or is_svd_of(found[0], w0):
        return found
    return "is not an SVD of this matrix"


def _write_entry(path: Path, base: SVD, key: str, digest: str) -> None:
    """Write an entry atomically; a symlink at ``path`` is replaced, never written through."""
    tensors = {"u": base.u.contiguous(), "s": base.s.contiguous(), "vh": base.vh.contiguous()}
    meta = {"format": ENTRY_FORMAT, "w0": key, "digest": digest}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), follow=False)


def base_task(
    run_dir: str, layer: str, cache_dir: str | None, settings: Settings = DEFAULTS
) -> Entry:
    """Find (or compute and store) the SVD of ``layer``'s step-0 weight in the cache.

    A cache entry that is not whole and right is computed again, with one warning line.
    With no cache (``cache_dir`` None), the tasks compute the SVD themselves.
    """
    w0 = open_run(run_dir).weight(0, layer)
    if not torch.isfinite(w0).all():
        raise SpectraError(f"{Path(run_dir).name} layer {layer}: step-0 weight has NaN or Inf")
    if cache_dir is None:
        return Entry()
    key = weight_key(w0)
    path = base_path(cache_dir, key)
    found = _checked(path, w0, key)
    if not isinstance(found, str):
        return Entry(str(path), key, tuple(w0.shape), found[1])
    if found not in (MISSING, OLD):
        warn_once(f"SVD cache entry {path} {found}; computing it again")
    base = svd(w0, settings.device)
    digest = svd_digest(base)
    try:
        _write_entry(path, base, key, digest)
    except (SpectraError, SafetensorError) as exc:
        warn_once(f"{exc}; computing without the SVD cache")
        return Entry()
    return Entry(str(path), key, tuple(w0.shape), digest)


@lru_cache(maxsize=1)  # tasks arrive layer-major: one base per worker bounds memory
def load_base(entry: Entry, run_dir: str, layer: str, device: str = "cpu") -> SVD:
    """The step-0 SVD of ``layer``: the entry :func:`base_task` checked (if its tensors still
    have the digest it checked), else computed here from the run directory."""
    if entry.path is not None:
        found = read_entry(entry.path, entry.key, entry.shape)
        if not isinstance(found, str) and found[1] == entry.digest:
            return found[0]
        warn_once(f"SVD cache entry {entry.path} changed while in use; computing it again")
    return svd(open_run(run_dir).weight(0, layer), device)


def cached_svd(w0: torch.Tensor, cache_dir: str | Path | None = None) -> SVD:
    """The SVD of a step-0 weight: from the cache when it holds a right entry, else computed
    here (and not written: readers such as figures leave the cache as it is)."""
    key = weight_key(w0)
    found = _checked(base_path(cache_dir or default_cache_dir(), key), w0, key)
    return svd(w0) if isinstance(found, str) else found[0]
