"""Safetensors files as bytes: a header parsed and checked, a tensor made from its own bytes.

For reading a tensor whose bytes were fetched or hashed separately from the file (a Hub range,
a step stored by reference, an imported weight): :func:`parse_header` checks that the tensors
tile the file after the header exactly, each sized by its dtype and shape;
:func:`tensor_from_bytes` hands the bytes to safetensors itself (a one-tensor buffer), so
dtypes and byte order are its own; :func:`read_tensor` reads a header and one tensor's bytes
from storage and nothing around them (a memory map's readahead reads several times more).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from spectra.errors import SpectraError, first_line

HEADER_LENGTH = 8  # a safetensors file starts with its header's length, a little-endian u64
MAX_HEADER = 100_000_000  # safetensors refuses larger headers
# Bits per element of the safetensors dtypes (the spec's names); others are not size-checked.
BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
        "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64,
        "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}  # fmt: skip


@dataclass(frozen=True)
class Slot:
    """Where a tensor's bytes are in its file (absolute offsets), and what they hold."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def header_length(first: bytes, size: int, where: str) -> int:
    """The JSON header's length from a file's first 8 bytes; SpectraError if it cannot be."""
    length = int.from_bytes(first[:HEADER_LENGTH], "little")
    if len(first) < HEADER_LENGTH or not 0 < length <= min(MAX_HEADER, size - HEADER_LENGTH):
        raise SpectraError(f"{where}: not a safetensors file (header length {length})")
    return length


def parse_header(raw: bytes, size: int, where: str) -> dict[str, Slot]:
    """{name: slot} from a safetensors header (its 8-byte length and JSON) of a ``size``-byte
    file; SpectraError unless the tensors tile the file after the header exactly."""
    try:
        header = json.loads(raw[HEADER_LENGTH:])
        header.pop("__metadata__", None)
        slots = {
            name: Slot(info["dtype"], tuple(info["shape"]), *info["data_offsets"])
            for name, info in header.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SpectraError(f"{where}: not a safetensors header ({first_line(exc)})") from None
    for name, slot in slots.items():
        numbers = (*slot.shape, slot.start, slot.end)
        if not all(type(v) is int and v >= 0 for v in numbers) or type(slot.dtype) is not str:
            raise SpectraError(f"{where}: the header's entry for {name} is malformed")
    at = 0
    for name, slot in sorted(slots.items(), key=lambda item: (item[1].start, item[1].end)):
        bits = BITS.get(slot.dtype)
        length = math.prod(slot.shape) * bits / 8 if bits else slot.end - slot.start
        if slot.start != at or slot.end - slot.start != length:
            raise SpectraError(f"{where}: the header's entry for {name} does not fit the file")
        at = slot.end
    if len(raw) + at != size:
        raise SpectraError(f"{where}: the header's tensors end at {len(raw) + at}, not at {size}")
    base = len(raw)
    return {name: Slot(s.dtype, s.shape, base + s.start, base + s.end) for name, s in slots.items()}


def tensor_from_bytes(name: str, slot: Slot, data: bytes, where: str) -> torch.Tensor:
    """Tensor ``name`` of ``slot`` from its bytes as stored, read by safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    header = json.dumps({name: {"dtype": slot.dtype, "shape": list(slot.shape),
                                "data_offsets": [0, len(data)]}}).encode()  # fmt: skip
    header += b" " * (-len(header) % 8)
    try:
        return load(len(header).to_bytes(HEADER_LENGTH, "little") + header + data)[name]
    except SafetensorError as exc:
        raise SpectraError(f"{where}: cannot read tensor {name} ({exc})") from None


def open_random(path: str | Path) -> BinaryIO:
    """``path`` opened for reading without readahead, so that only the bytes read are read
    from storage; a FIFO or device in its place is refused, not waited on. OSError when it
    cannot be opened, SpectraError when it is not a regular file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpectraError(f"{path} is not a regular file")
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return os.fdopen(fd, "rb")


def read_header(f: BinaryIO, where: str) -> tuple[bytes, int]:
    """(the header, its 8-byte length and JSON; the file's size) of the safetensors file open
    as ``f``; SpectraError when its first bytes cannot be a header's length."""
    size = os.fstat(f.fileno()).st_size
    first = f.read(HEADER_LENGTH)
    return first + f.read(header_length(first, size, where)), size


def read_tensor(path: Path, name: str) -> tuple[torch.Tensor, str]:
    """Tensor ``name`` of a safetensors file and the SHA-256 of its bytes as stored, reading
    only the file's header and those bytes."""
    try:
        with open_random(path) as f:
            header, size = read_header(f, str(path))
            slot = parse_header(header, size, str(path)).get(name)
            if slot is None:
                raise SpectraError(f"{path}: no tensor {name}")
            f.seek(slot.start)
            data = f.read(slot.end - slot.start)
    except OSError as exc:
        raise SpectraError(f"{path}: cannot read tensor {name} ({exc.strerror})") from None
    if len(data) != slot.end - slot.start:
        raise SpectraError(f"{path}: cannot read tensor {name} (the file ends before it)")
    return tensor_from_bytes(name, slot, data, str(path)), hashlib.sha256(data).hexdigest()
