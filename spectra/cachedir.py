"""Where spectra keeps what it can make again: $SPECTRA_CACHE, else ~/.cache/spectra."""

from __future__ import annotations

import os
from pathlib import Path

from spectra.errors import SpectraError


def default_cache_dir() -> Path:
    """$SPECTRA_CACHE, else ~/.cache/spectra; SpectraError when neither can be found."""
    home = os.path.expanduser("~")  # $HOME, else the user's entry in the password database
    if not os.environ.get("SPECTRA_CACHE") and home in ("", "~"):
        raise SpectraError(
            "no folder for the SVD cache: $HOME is not set and the user has no home "
            "folder; set $SPECTRA_CACHE or pass --cache-dir"
        )
    return Path(os.environ.get("SPECTRA_CACHE") or Path(home) / ".cache" / "spectra")
