"""The run directory an import writes: built beside its destination and renamed into place.

Nothing is left half-written: the run is written with :class:`~spectra.snapshots.RunWriter`
into a hidden folder next to ``runs/<run>/``, which becomes ``runs/<run>/`` only once the last
step and the manifest are complete; on any error the folder is removed. ``--overwrite``
replaces an existing run directory (and its now stale ``runs/<run>.parquet``), never a folder
that is not a run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from spectra.errors import SpectraError
from spectra.importer.tensors import SAFETENSORS, Tensors
from spectra.run_files import is_run_dir, parquet_path
from spectra.snapshots import Manifest, RunWriter
from spectra.train_log import write_train_log

CHUNK = 1 << 20
HEADER_LENGTH = 8  # a safetensors file starts with its header's length, a little-endian u64

Layers = dict[str, dict[str, torch.Tensor]]  # {module: {part: tensor}}


def sha256(path: Path, size: int | None = None) -> str:
    """Hex SHA-256 of a file, or of its first ``size`` bytes, read in chunks."""
    digest = hashlib.sha256()
    left = size if size is not None else -1
    with open(path, "rb") as f:
        while left and (chunk := f.read(CHUNK if left < 0 else min(CHUNK, left))):
            digest.update(chunk)
            left -= len(chunk) if left > 0 else 0
    return digest.hexdigest()


def checksums(files: Iterable[Path], tensors: Tensors) -> dict[str, dict]:
    """What of each file went into the import: of a safetensors file the SHA-256 of its header
    (names, dtypes, shapes, offsets) and of each tensor read; of a file read in pieces (a DCP
    shard, ZeRO-3 optimizer states) the SHA-256 of each piece; of any other file (JSON, a
    torch.save file, DCP metadata, read whole) the SHA-256 of the file."""
    records = {}
    for path in files:
        try:
            if path.suffix == SAFETENSORS:
                length = int.from_bytes(path.open("rb").read(HEADER_LENGTH), "little")
                header = sha256(path, HEADER_LENGTH + length)
                records[str(path.resolve())] = {
                    "header_sha256": header, "tensors": tensors.digests.get(path, {}),
                }  # fmt: skip
            elif path in tensors.digests:  # read in pieces (DCP chunks, ZeRO-3 partitions)
                records[str(path.resolve())] = {"pieces": tensors.digests[path]}
            else:
                records[str(path.resolve())] = {"sha256": sha256(path)}
        except OSError as exc:
            raise SpectraError(f"cannot read {path} again for its checksum: {exc}") from None
    return records


def check_destination(run_dir: Path, overwrite: bool) -> None:
    """SpectraError unless ``run_dir`` is free, or ``overwrite`` and it holds a run."""
    taken = [p for p in (run_dir, parquet_path(run_dir)) if p.exists()]
    if taken and not overwrite:
        raise SpectraError(f"{taken[0]} already exists; pass --overwrite to replace that run")
    if run_dir.exists() and not is_run_dir(run_dir):
        raise SpectraError(f"{run_dir} exists and is not a spectra run directory; not replacing it")


def _replace(new: Path, run_dir: Path, overwrite: bool) -> None:
    check_destination(run_dir, overwrite)
    old = run_dir.with_name(f".{run_dir.name}.replaced-{uuid.uuid4().hex[:8]}")
    if run_dir.exists():
        os.rename(run_dir, old)
    os.rename(new, run_dir)
    parquet_path(run_dir).unlink(missing_ok=True)  # the replaced run's rows
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged(run_dir: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh folder beside ``run_dir`` that replaces it on success and vanishes on error."""
    check_destination(run_dir, overwrite)
    tmp = run_dir.with_name(f".{run_dir.name}.importing-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise SpectraError(f"cannot create {tmp.parent}: {exc.strerror}") from None
    try:
        yield tmp
        _replace(tmp, run_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_run_dir(
    path: Path,
    manifest: Manifest,
    frozen: Layers,
    steps: Iterable[tuple[int, Layers]],
    log: dict[int, dict[str, float]],
    provenance,
    on_step=lambda: None,
) -> None:
    """Write a complete run directory: frozen tensors, each step as it comes (``on_step()``
    after each), the training log, then the manifest marked finished with ``provenance()``
    under ``extra["import"]``."""
    writer = RunWriter(path, manifest)
    if frozen:
        writer.write_frozen(frozen)
    for step, layers in steps:
        writer.write_step(step, layers)
        del layers  # one step's tensors in memory at a time: gone before the next is read
        on_step()
    if log:
        write_train_log(path, log)
    writer.finish(status="completed", **{"import": provenance()})
