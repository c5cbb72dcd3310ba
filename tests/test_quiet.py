"""What a person sees on the terminal: no third-party warning or log line (``-v`` shows them),
spectra's own warnings as one line, and a Ctrl-C that ends in one ``interrupted:`` line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
from helpers import as_foreground_job
from tiny_models import base_model, perturb, with_method

from spectra.quiet import quiet, verbose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spectra(*args: str, cwd, **options) -> subprocess.Popen:
    """``python -m spectra ARGS`` in its own process group (as a terminal's foreground job)."""
    return subprocess.Popen(
        [sys.executable, "-m", "spectra", *args], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=as_foreground_job, **options,
    )  # fmt: skip


def test_quiet_drops_library_noise_and_keeps_spectras_warnings(capsys, caplog):
    with quiet():
        warnings.warn("`x` is deprecated", FutureWarning, stacklevel=1)
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load a kernel")
        logging.getLogger("some.library").error("a real error")
        warnings.warn("spectra: NaN or Inf weights at step 3\nin 1 target", RuntimeWarning,
                      stacklevel=1)  # fmt: skip
        assert os.environ["PYTHONWARNINGS"] == "ignore"  # and in the processes started here
    assert capsys.readouterr().err == "warning: NaN or Inf weights at step 3 in 1 target\n"
    assert [r.getMessage() for r in caplog.records] == ["a real error"]  # errors still log
    assert os.environ.get("PYTHONWARNINGS") != "ignore"


def test_verbose_shows_library_lines_with_control_characters_escaped(capsys):
    """Under ``-v`` the libraries' warnings and log lines show, but a name they quote from a
    file cannot clear the screen or write the clipboard (OSC 52)."""
    clear, clipboard = "\x1b[2J", "\x1b]52;c;ZXZpbA==\x07"
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger("some.library").addHandler(handler)
    try:
        with verbose():
            warnings.warn(f"module {clear}q_proj is deprecated", FutureWarning, stacklevel=1)
            logging.getLogger("some.library").warning("target %s\nnot found", clipboard)
    finally:
        logging.getLogger("some.library").removeHandler(handler)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "module \\x1b[2Jq_proj is deprecated" in err and "FutureWarning" in err
    assert "target \\x1b]52;c;ZXZpbA==\\x07\nnot found\n" in err  # its line break kept
    assert logging.getLogRecordFactory() is logging.LogRecord  # restored


@pytest.mark.slow
def test_compare_of_adapters_prints_no_library_lines(tmp_path):
    base_model("llama").save_pretrained(tmp_path / "base")
    for name, seed in (("a1", 1), ("a2", 2)):
        adapted = with_method(base_model("llama"), "lora", ("q_proj", "v_proj"))
        perturb(adapted, seed=seed)
        adapted.save_pretrained(tmp_path / name)
    done = spectra("compare", "base", "a1", "a2", cwd=tmp_path)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert err == "" and "a1" in out and "a2" in out


@pytest.mark.slow
def test_ctrl_c_during_track_is_one_line_and_exit_130(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it (the inline worker
    included): one ``interrupted:`` line, no traceback, what was kept and how to start again."""
    done = spectra("track", "--method", "lora", "--steps", "400", "--every", "2", "--out", "runs",
                   cwd=tmp_path)  # fmt: skip
    manifest = tmp_path / "runs" / "lora" / "manifest.json"
    deadline = time.monotonic() + 240
    while not (manifest.exists() and 2 in json.loads(manifest.read_text())["steps"]):
        assert done.poll() is None and time.monotonic() < deadline, done.communicate()
        time.sleep(0.2)
    os.killpg(done.pid, signal.SIGINT)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 130, err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: lora stopped"), err
    assert "runs/lora, marked failed" in lines[0] and "--overwrite" in lines[0]
