"""Where the engine's tasks run: checked settings, local worker processes, Dask, the loop.

:func:`check_device` and :func:`check_workers` validate ``--device`` and ``--workers``;
:func:`local_pool` is a spawn-based process pool whose workers exit when the process that
started them dies (:func:`exit_with_parent`); :func:`dask_executor` is a ``concurrent.futures``
executor on a Dask cluster; :func:`run_tasks` runs tasks on either, or in this process.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager

import torch

from spectra.errors import SpectraError

WORKERS_PER_CORE = 4  # at most this many local worker processes per usable core
WATCH_PARENT_S = 0.5  # how often a worker checks that its parent is alive
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for us when our parent dies


def check_device(device: str) -> None:
    """Raise SpectraError unless ``device`` ("cpu", "cuda", "cuda:N") can run a float64 SVD."""
    if device == "cpu":
        return
    if not device.startswith("cuda"):
        raise SpectraError(f"unknown device {device!r}: use cpu or cuda")
    if not torch.cuda.is_available():
        raise SpectraError(f"--device {device}: no CUDA GPU is available on this machine")


def check_workers(workers: int) -> None:
    """Raise SpectraError unless ``workers`` is between 1 and WORKERS_PER_CORE per usable core."""
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else os.cpu_count() or 1
    limit = WORKERS_PER_CORE * cores
    if not 1 <= workers <= limit:
        raise SpectraError(
            f"--workers {workers}: use 1 to {limit} worker processes ({cores} cores here)"
        )


def exit_with_parent(parent: int, death_signal: bool = False) -> None:
    """End this process soon after its parent ``parent`` dies (even of kill -9): a watchdog
    thread that sees the parent change, and with ``death_signal`` on Linux the kernel's
    parent-death signal (sent when the *thread* that started us ends: pools only)."""
    if death_signal and sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent:  # also right when the parent died before we got here
            time.sleep(WATCH_PARENT_S)
        os._exit(1)

    threading.Thread(target=watch, name="spectra-parent-watch", daemon=True).start()


def _init_worker(threads: int, parent: int) -> None:
    exit_with_parent(parent, death_signal=True)
    torch.set_num_threads(threads)


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned worker that never takes the terminal's Ctrl-C (the parent's: it ends the pool),
    from its first instruction on: it starts with SIGINT blocked, and keeps that mask."""

    def start(self) -> None:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)  # a Ctrl-C meanwhile comes now


class _WorkerContext(multiprocessing.context.SpawnContext):
    Process = _WorkerProcess


@contextmanager
def dask_executor(address: str) -> Iterator[Executor]:
    """A ``concurrent.futures`` executor on the Dask cluster whose scheduler is at ``address``.

    Workers must see the run directory and the SVD cache at the same paths (a shared disk).
    """
    try:
        from distributed import Client
    except ImportError:
        raise SpectraError("--scheduler needs Dask: pip install 'spectra-drift[dask]'") from None
    from distributed.comm.addressing import get_address_host_port

    try:
        get_address_host_port(address)
    except ValueError as exc:
        raise SpectraError(
            f"--scheduler {address!r} is not a Dask scheduler address (tcp://HOST:PORT): {exc}"
        ) from None
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise SpectraError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        yield client.get_executor()


@contextmanager
def local_pool(workers: int) -> Iterator[Executor | None]:
    """A spawn-based process pool sharing the cores, or None (run in-process) for one worker.

    When the block ends with an exception (Ctrl-C, SIGTERM in the CLI, a failed task), the
    queued tasks are cancelled and the workers ended at once, not waited for.
    """
    if workers <= 1:
        yield None
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    initargs = (threads, os.getpid())
    pool = ProcessPoolExecutor(workers, _WorkerContext(), _init_worker, initargs)
    try:
        yield pool
    except BaseException:
        _end(pool)
        raise
    pool.shutdown()


def _end(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued tasks and end the worker processes now."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public API < 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(WATCH_PARENT_S * 10)


def run_tasks(executor: Executor | None, fn, args: list[tuple]) -> Iterator[tuple[tuple, object]]:
    """(args, result) for every task, in completion order."""
    if executor is None:
        for a in args:
            yield a, fn(*a)
        return
    futures: dict[Future, tuple] = {executor.submit(fn, *a): a for a in args}
    for future in as_completed(futures):
        yield futures[future], future.result()
