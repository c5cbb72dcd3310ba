"""Shared fixtures: an isolated SVD cache for every test."""

import pytest


@pytest.fixture(autouse=True)
def svd_cache(tmp_path_factory, monkeypatch):
    """Point $SPECTRA_CACHE at a fresh directory so tests never touch ~/.cache."""
    path = tmp_path_factory.mktemp("svd-cache")
    monkeypatch.setenv("SPECTRA_CACHE", str(path))
    return path
