"""What the commands share: option help texts, option parsing and the width of tables."""

from __future__ import annotations

import os
import shutil
import sys

from spectra.errors import SpectraError

STEP_HELP = (
    "The step each run is shown at: last (each run's last step), common (the last step every "
    "run has) or a step number."
)

COPY_HELP = (
    "Copy every step's tensors into the run, instead of referencing full weights in local "
    "safetensors files (the run then survives the sources moving or changing)."
)


def split_values(values: list[str] | None) -> list[str]:
    """Repeatable, comma-separated option values as one flat list."""
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


def step_numbers(values: list[str] | None) -> list[int] | None:
    """The step numbers of ``--steps`` (repeatable, comma-separated); None when not given."""
    if not values:
        return None
    try:
        return [int(v) for v in split_values(values)]
    except ValueError:
        raise SpectraError(f"--steps takes whole step numbers, got {', '.join(values)}") from None


def table_width() -> int:
    """The columns tables may take: ``$COLUMNS``, the terminal's, or without a terminal as many
    as needed."""
    if os.environ.get("COLUMNS", "").isdigit() or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return 1000
