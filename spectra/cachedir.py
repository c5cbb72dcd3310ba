"""Where spectra keeps what it can make again: $SPECTRA_CACHE, else ~/.cache/spectra."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$SPECTRA_CACHE, else ~/.cache/spectra."""
    return Path(os.environ.get("SPECTRA_CACHE") or Path.home() / ".cache" / "spectra")
