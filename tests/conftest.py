"""Shared fixtures: an isolated SVD cache for every test, and the CLI run in-process."""

import sys

import pytest

from spectra.cli import main


@pytest.fixture(autouse=True)
def svd_cache(tmp_path_factory, monkeypatch):
    """Point $SPECTRA_CACHE and $XDG_CONFIG_HOME (the reference key) at fresh directories so
    tests never touch ~/.cache or ~/.config."""
    path = tmp_path_factory.mktemp("svd-cache")
    monkeypatch.setenv("SPECTRA_CACHE", str(path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
    return path


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``spectra ARGS`` in-process: ``cli(args)`` → (exit code, stdout, stderr)."""

    def run(args):
        monkeypatch.setattr(sys, "argv", ["spectra", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err

    return run
