"""The names of the files in a run directory, in one place: the manifest, the frozen tensors
(written once), the snapshot of each step (or its reference file, for a step whose tensors
stay in their source files) and the training log."""

from __future__ import annotations

MANIFEST = "manifest.json"
FROZEN = "frozen.safetensors"
TRAIN_LOG = "train_log.parquet"


def step_file(step: int) -> str:
    """File name of the snapshot at ``step``."""
    return f"step_{step:08d}.safetensors"


def reference_file(step: int) -> str:
    """File name of the references of a step stored by reference."""
    return f"step_{step:08d}.reference.json"
