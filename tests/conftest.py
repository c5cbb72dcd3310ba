"""Shared fixtures: an isolated SVD cache for every test, and the CLI run in-process."""

import sys
from typing import NamedTuple

import pytest

from spectra.cli import main


@pytest.fixture(autouse=True)
def svd_cache(tmp_path_factory, monkeypatch):
    """Point $SPECTRA_CACHE at a fresh directory so tests never touch ~/.cache."""
    path = tmp_path_factory.mktemp("svd-cache")
    monkeypatch.setenv("SPECTRA_CACHE", str(path))
    return path


class Result(NamedTuple):
    """What ``spectra ARGS`` did: its exit code and what it printed."""

    code: int | None
    out: str
    err: str

    def error_line(self, *fragments: str) -> str:
        """The one ``error:`` line of a refused command (exit 2, nothing else printed, no
        traceback), checked to hold every fragment."""
        lines = (self.out + self.err).strip().splitlines()
        assert self.code == 2, self
        assert len(lines) == 1 and lines[0].startswith("error:"), self
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        return lines[0]


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``spectra ARGS`` in-process: ``cli(args)`` → Result(code, out, err)."""

    monkeypatch.delenv("COLUMNS", raising=False)  # no terminal: tables in full

    def run(args) -> Result:
        monkeypatch.setattr(sys, "argv", ["spectra", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        out = capsys.readouterr()
        return Result(exc.value.code, out.out, out.err)

    return run
