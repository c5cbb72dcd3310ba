"""The names of every file of a run, in one place.

A run is a directory ``runs/<run>/`` and its Parquet file ``runs/<run>.parquet`` beside it::

    runs/<run>/manifest.json              everything about the run that is not a tensor
    runs/<run>/frozen.safetensors         frozen tensors of low-rank layers, written once
    runs/<run>/step_00000010.safetensors  the trainable tensors of every target at step 10
    runs/<run>/step_00000010.reference.json  … or where they are, for a step imported by reference
    runs/<run>/train_log.parquet          step, loss, reg_loss, grad_norm, lr, …
    runs/<run>.parquet                    one row of metrics per (step, layer)

Files are written under temporary names (``.<name>.<random>.tmp``, see :mod:`spectra.atomic`)
and renamed into place; an import builds the run directory as ``.<run>.importing-<random>``
beside it and renames it into place.
"""

from __future__ import annotations

import re
from pathlib import Path

from spectra.atomic import TEMPORARY
from spectra.errors import SpectraError

MANIFEST = "manifest.json"
FROZEN = "frozen.safetensors"
TRAIN_LOG = "train_log.parquet"
PARQUET = ".parquet"
STEP_FILE = re.compile(r"step_(\d{8,})\.safetensors")
REFERENCE_FILE = re.compile(r"step_(\d{8,})\.reference\.json")


def step_file(step: int) -> str:
    """File name of the snapshot at ``step``."""
    return f"step_{step:08d}.safetensors"


def reference_file(step: int) -> str:
    """File name of the references of a step stored by reference (see snapshots.references)."""
    return f"step_{step:08d}.reference.json"


def step_of(name: str) -> int | None:
    """The step of a snapshot or references file name, or None when the name is not one."""
    found = STEP_FILE.fullmatch(name) or REFERENCE_FILE.fullmatch(name)
    return int(found[1]) if found else None


def parquet_path(run_dir: str | Path) -> Path:
    """The Parquet file of a run directory: ``runs/<run>.parquet`` for ``runs/<run>/`` (for
    ``.`` or ``..``, of the folder's real name); SpectraError when it would be hidden."""
    run_dir = Path(run_dir)
    if run_dir.name in ("", ".", ".."):
        run_dir = run_dir.resolve()
    if run_dir.name.startswith(".") or not run_dir.name:
        raise SpectraError(
            f"the run directory {run_dir} would have a hidden Parquet file "
            f"{run_dir.name}{PARQUET}; name the output (--out)"
        )
    return run_dir.parent / f"{run_dir.name}{PARQUET}"


def is_run_file(name: str) -> bool:
    """Whether a file called ``name`` in a run directory is one spectra writes (temporary
    files included)."""
    known = name in (MANIFEST, FROZEN, TRAIN_LOG) or step_of(name) is not None
    return known or TEMPORARY.fullmatch(name) is not None


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run directory (it holds a manifest)."""
    return (Path(path) / MANIFEST).is_file()
