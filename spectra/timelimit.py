"""Run a function under a CPU-time limit: for regular expressions that files supply.

A regular expression from a config (peft's ``target_modules``, ``rank_pattern`` keys, …) can
backtrack for hours on a short name. Python's regex engine checks for signals as it runs, so in
the main thread a profiling timer (SIGPROF, which counts this process's CPU time, not the wall
clock: a busy machine does not make a legitimate match fail) stops it exactly where it is. In
any other thread (signals reach only the main one) the function runs in a forked child with a
CPU limit, killed at the limit, whose JSON result is read back (nothing is unpickled). Where
neither exists (Windows, off the main thread) the function runs unbounded.
"""

from __future__ import annotations

import json
import math
import os
import resource
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable

from spectra.errors import SpectraError

WALL_FACTOR = 20  # a forked child is also killed after this many times the limit, in wall time


class _TimeUp(BaseException):
    """Raised by the timer inside the bounded function (not an Exception: nothing catches it)."""


def within(seconds: float, what: str, function: Callable[[], object]):
    """``function()`` (its result must be JSON), or SpectraError naming ``what`` when it takes
    more than ``seconds`` of CPU time."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGPROF"):
        return _with_timer(seconds, what, function)
    if hasattr(os, "fork"):
        return _in_child(seconds, what, function)
    return function()


def _too_long(seconds: float, what: str) -> SpectraError:
    return SpectraError(f"{what} took longer than {seconds:g} s; refusing it")


def _raise_time_up(signum, frame):
    raise _TimeUp


def _with_timer(seconds: float, what: str, function: Callable[[], object]):
    previous = signal.signal(signal.SIGPROF, _raise_time_up)
    outer = signal.setitimer(signal.ITIMER_PROF, seconds)[0]
    start = time.process_time()
    try:
        return function()
    except _TimeUp:
        raise _too_long(seconds, what) from None
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
        if outer:  # the caller's own timer, re-armed with what is left of it
            left = outer - (time.process_time() - start)
            signal.setitimer(signal.ITIMER_PROF, max(left, 1e-6))


def _in_child(seconds: float, what: str, function: Callable[[], object]):
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process
        pid = os.fork()
    if pid == 0:  # the child: only pure-Python matching runs here
        os.close(read)
        signal.signal(signal.SIGXCPU, _raise_time_up)  # sent once the CPU limit is reached
        cpu = math.ceil(seconds)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        try:
            answer = {"result": function()}
        except _TimeUp:
            answer = {"error": str(_too_long(seconds, what))}
        except SpectraError as exc:
            answer = {"error": str(exc)}
        except BaseException as exc:  # reported to the parent, which raises it
            answer = {"crash": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write, "wb") as out:
            out.write(json.dumps(answer).encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + WALL_FACTOR * seconds
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
