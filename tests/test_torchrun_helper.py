"""``helpers.torchrun``: a rank's SIGABRT is tried once more on an emptied output folder; a
second abort, or a rank's Python error, is the script's failure."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import torchrun

pytestmark = pytest.mark.slow  # multi-process, training or long runs: not in make test-fast

SCRIPT = Path(__file__).with_name("aborting_rank.py")


def launches(out: Path) -> int:
    return int(out.with_name(f"{out.name}.launches").read_text())


def test_an_abort_is_tried_once_more_on_an_emptied_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale").touch()
    assert torchrun(SCRIPT, out=out, env={"ABORT_IN": "1"}) == 0
    assert launches(out) == 2
    assert not (out / "stale").exists() and (out / "written").is_dir()


def test_a_second_abort_or_a_python_error_fails(tmp_path):
    twice, error = tmp_path / "twice", tmp_path / "error"
    assert torchrun(SCRIPT, out=twice, env={"ABORT_IN": "1,2"}) != 0
    assert launches(twice) == 2
    assert torchrun(SCRIPT, out=error, env={"RAISE_IN": "1"}) != 0
    assert launches(error) == 1
