"""Sane limits on what files and options say, checked before anything is allocated.

JSON (manifests, configs, index files, Parquet metadata) is read with a size limit, only from
regular files, and its nesting is bounded, so that neither parsing nor the code that walks the
result runs out of stack or memory; safetensors headers are bounded before they are parsed;
integers that become Parquet columns or process ids must fit their 64-bit or 32-bit types;
counts taken from options must be finite.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
from pathlib import Path

from spectra.errors import SpectraError, first_line

INT64 = (-(2**63), 2**63 - 1)  # steps, shapes, ranks: Parquet int64 columns
PID = (1, 2**31 - 1)  # a process id is a C int
MAX_JSON_BYTES = 64 << 20  # far beyond any config, index, manifest or trainer state
MAX_JSON_DEPTH = 64  # spectra's own files nest 9 deep, peft's and transformers' 3
# A safetensors header is parsed whole, in about 12 times its size: 8 MiB is some 70,000 tensors
# (a 70B model has 723), where safetensors itself allows 100 MB.
MAX_SAFETENSORS_HEADER = 8 << 20


def in_range(value: int, bounds: tuple[int, int], what: str) -> int:
    """``value``, or SpectraError naming ``what`` when it is outside ``bounds`` (inclusive)."""
    low, high = bounds
    if not low <= value <= high:
        raise SpectraError(f"{what}: {value} is out of range ({low} to {high})")
    return value


def finite_positive(value: float, what: str) -> float:
    """``value``, or SpectraError naming ``what`` when it is NaN, infinite or not above 0."""
    if not (math.isfinite(value) and value > 0):
        raise SpectraError(f"{what} must be a positive finite number, got {value}")
    return value


def check_epochs(epochs: float, batches: int = 1) -> float:
    """``epochs``, or SpectraError unless it is positive, finite and its optimizer steps
    (``batches`` per epoch, ⌈epochs · batches⌉) fit 64 bits; with one batch, before any data
    is read."""
    finite_positive(epochs, "--epochs")
    if epochs * batches > INT64[1]:  # ⌈x⌉ > M ⇔ x > M for a whole M
        raise SpectraError(f"--epochs {epochs} makes more optimizer steps than fit 64 bits")
    return epochs


def _depth(value) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: no recursion)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            todo += [(v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def loads(text: str | bytes, where: object):
    """``json.loads(text)`` (ValueError for what is not JSON), refusing JSON nested more than
    MAX_JSON_DEPTH deep with a SpectraError naming ``where``."""
    try:
        deep = _depth(value := json.loads(text)) > MAX_JSON_DEPTH
    except RecursionError:
        deep = True
    if deep:
        raise SpectraError(f"{where}: JSON nested more than {MAX_JSON_DEPTH} deep")
    return value


def _regular(info: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise SpectraError(f"{path}: not a regular file; spectra does not read it")
    if info.st_size > MAX_JSON_BYTES:
        raise SpectraError(
            f"{path}: {info.st_size} bytes, more than the {MAX_JSON_BYTES >> 20} MiB a JSON "
            "file may have"
        )


def read_bounded(path: Path) -> bytes:
    """The bytes of the regular file ``path``, at most MAX_JSON_BYTES; SpectraError otherwise.
    Its kind and size are checked with ``os.stat`` before it is opened (never a FIFO)."""
    try:
        _regular(os.stat(path), path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # never waits on a FIFO
        with os.fdopen(fd, "rb") as f:
            _regular(os.fstat(fd), path)  # the same file still
            return f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise SpectraError(f"{path}: cannot be read ({exc.strerror})") from None


def precheck_json(path: Path) -> None:
    """SpectraError when the regular file ``path`` is too large or JSON nested too deep; nothing
    when it is not a regular file or not JSON (its reader says so later, in its own words). For
    a refusal before the modules that read it in full are loaded."""
    if path.is_file():
        with contextlib.suppress(ValueError):
            loads(read_bounded(path), path)


def read_json(path: Path):
    """The JSON in the regular file ``path`` (see :func:`read_bounded`); SpectraError when
    it cannot be read or is not JSON."""
    try:
        return loads(read_bounded(path), path)
    except ValueError as exc:  # UnicodeDecodeError too
        raise SpectraError(f"{path}: not a readable JSON file ({first_line(exc)})") from None


def check_safetensors_header(path: Path) -> None:
    """SpectraError when the safetensors file ``path`` (a regular file) announces a header of
    more than MAX_SAFETENSORS_HEADER bytes; only its first 8 bytes are read."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
    except OSError as exc:
        raise SpectraError(f"{path}: cannot be read ({exc.strerror})") from None
    if length > MAX_SAFETENSORS_HEADER:
        raise SpectraError(
            f"{path}: corrupt or truncated safetensors file (its header would be {length} bytes; "
            f"spectra reads at most {MAX_SAFETENSORS_HEADER >> 20} MiB)"
        )
