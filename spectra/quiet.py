"""Third-party noise kept off the terminal while a command runs (``spectra -v`` shows it).

Libraries spectra drives (transformers, peft, bitsandbytes, accelerate, DeepSpeed, torch, …)
warn and log about their own affairs: deprecations, optional kernels they could not load,
progress bars. None of it is about the user's command, so while :func:`quiet` is active every
warning and every log record below ERROR is dropped, here and in the processes started
meanwhile; spectra's own warnings (their message starts ``spectra:``) still show, one
``warning:`` line each. Under :func:`verbose` the libraries' warnings and log lines show, with
their control characters escaped (they may quote names from files).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from spectra.terminal import shown

OWN = "spectra: "  # how spectra's own warnings start
QUIET_ENV = {"PYTHONWARNINGS": "ignore", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a spectra warning as one safe ``warning:`` line on stderr (it may quote a name)."""
    text = " ".join(str(message).removeprefix(OWN).split())
    print(f"warning: {shown(text)}", file=file or sys.stderr, flush=True)


def _escaped_lines(text: str) -> str:
    """``text`` with every line made safe to display, its line breaks kept."""
    return "\n".join(map(shown, text.split("\n")))


def _escaped_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n")
    print(_escaped_lines(text), file=file or sys.stderr, flush=True)


@contextmanager
def verbose() -> Iterator[None]:
    """Show every warning and log line, each with its control characters escaped."""
    factory = logging.getLogRecordFactory()

    def escaped_record(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.msg, record.args = _escaped_lines(record.getMessage()), None
        return record

    logging.setLogRecordFactory(escaped_record)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _escaped_warning
            yield
    finally:
        logging.setLogRecordFactory(factory)


@contextmanager
def quiet() -> Iterator[None]:
    """Drop third-party warnings and log records below ERROR (also in child processes, through
    their environment); show spectra's own warnings as one line each."""
    saved = {key: os.environ.get(key) for key in QUIET_ENV}
    os.environ.update(QUIET_ENV)
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.filterwarnings("always", message=OWN)
            warnings.showwarning = _one_line
            yield
    finally:
        logging.disable(logging.NOTSET)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
