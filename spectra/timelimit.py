"""Run a function under a time limit: for regular expressions that files supply.

A regular expression from a config (peft's ``target_modules``, ``rank_pattern`` keys, …) can
backtrack for hours on a short name. Python's regex engine checks for signals as it runs, so in
the main thread a SIGALRM timer stops it exactly where it is; in any other thread (signals
reach only the main one) the function runs in a forked child that is killed at the limit and
whose JSON result is read back (nothing is unpickled). Where neither exists (Windows, off the
main thread) the function runs unbounded.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable

from spectra.errors import SpectraError


class _TimeUp(BaseException):
    """Raised by the timer inside the bounded function (not an Exception: nothing catches it)."""


def within(seconds: float, what: str, function: Callable[[], object]):
    """``function()`` (its result must be JSON), or SpectraError naming ``what`` when it runs
    longer than ``seconds``."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _with_alarm(seconds, what, function)
    if hasattr(os, "fork"):
        return _in_child(seconds, what, function)
    return function()


def _too_long(seconds: float, what: str) -> SpectraError:
    return SpectraError(f"{what} took longer than {seconds:g} s; refusing it")


def _with_alarm(seconds: float, what: str, function: Callable[[], object]):
    def time_up(signum, frame):
        raise _TimeUp

    previous = signal.signal(signal.SIGALRM, time_up)
    outer = signal.setitimer(signal.ITIMER_REAL, seconds)[0]
    start = time.monotonic()
    try:
        return function()
    except _TimeUp:
        raise _too_long(seconds, what) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:  # the caller's own timer, re-armed with what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-6))


def _in_child(seconds: float, what: str, function: Callable[[], object]):
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process
        pid = os.fork()
    if pid == 0:  # the child: only pure-Python matching runs here
        os.close(read)
        try:
            answer = {"result": function()}
        except SpectraError as exc:
            answer = {"error": str(exc)}
        except BaseException as exc:  # reported to the parent, which raises it
            answer = {"crash": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write, "wb") as out:
            out.write(json.dumps(answer).encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + seconds
    data, done = b"", False
    try:
        while not done and select.select([read], [], [], max(0, deadline - time.monotonic()))[0]:
            chunk = os.read(read, 1 << 16)
            data, done = data + chunk, not chunk
    finally:
        os.close(read)
        if not done:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if not done:
        raise _too_long(seconds, what)
    answer = json.loads(data)
    if "crash" in answer:
        raise RuntimeError(answer["crash"])
    if "error" in answer:
        raise SpectraError(answer["error"])
    return answer["result"]
