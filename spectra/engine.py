"""Turns a run directory into metric rows: the step-0 SVD cache, scheduling, progress.

The SVD of every step-0 matrix is computed once and kept in a content-addressed cache
(one safetensors file per distinct W_0, keyed by a hash of its float64 bytes), so later
steps and every other run that shares the base weights reuse it. Each (step, layer) matrix
is one task: a module-level function of paths, so it runs the same in this process, in a
local process pool or on any ``concurrent.futures`` executor. Rows land in
``runs/<run>.parquet``, rewritten atomically as tasks finish, and a re-run computes only
the rows that are missing. Rows are kept only while the run directory backs them: rows of
another run identity (``run_id``) and rows after a step the run was resumed from are dropped.
A local worker process exits when the process that started it dies.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from safetensors import SafetensorError, safe_open
from safetensors.torch import load

from spectra import __version__
from spectra.errors import SpectraError
from spectra.factors import Principal, live, principal, update_factors
from spectra.metrics import (
    INTRUDER_EPS,
    SVD,
    TOP_K,
    amplification_from_svd,
    drift_from_svd,
    factor_metrics,
    factored_svd,
    magnitude_direction,
    svd,
    top_overlaps,
)
from spectra.snapshots import Manifest, Run, open_run, save_tensors
from spectra.store import KEY, SCHEMA_VERSION, layer_position, read_run, run_file, write_run

WRITE_EVERY_S = 2.0  # default: how often finished rows are flushed to the Parquet file
WORKERS_PER_CORE = 4  # at most this many local worker processes per usable core
WATCH_PARENT_S = 0.5  # how often a worker checks that its parent is alive
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal for us when our parent dies
FT_RANK = 16  # default r of ΔW's top-r subspace (amplification) for layers without an adapter rank


def default_cache_dir() -> Path:
    """$SPECTRA_CACHE, else ~/.cache/spectra."""
    return Path(os.environ.get("SPECTRA_CACHE") or Path.home() / ".cache" / "spectra")


def weight_key(w: torch.Tensor) -> str:
    """Content address of a float64 matrix: shape and a BLAKE2b digest of its bytes."""
    digest = hashlib.blake2b(w.contiguous().numpy().data, digest_size=16).hexdigest()
    return f"{w.shape[0]}x{w.shape[1]}-{digest}"


def base_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "svd" / f"{key}.safetensors"


@lru_cache(maxsize=1)  # tasks arrive layer-major: one base per worker bounds memory
def _load_base(path: str) -> SVD:
    t = load(Path(path).read_bytes())  # in memory, not mapped: the file may change later
    return SVD(t["u"], t["s"], t["vh"])


def base_task(run_dir: str, layer: str, cache_dir: str, device: str = "cpu") -> str:
    """Compute (or find) the SVD of ``layer``'s step-0 weight in the cache; return its path.

    A cache entry that cannot be read back whole (truncated, corrupt) is computed again.
    """
    w0 = open_run(run_dir).weight(0, layer)
    if not torch.isfinite(w0).all():
        raise SpectraError(f"{Path(run_dir).name} layer {layer}: step-0 weight has NaN or Inf")
    path = base_path(Path(cache_dir), weight_key(w0))
    if not _cached(path, tuple(w0.shape)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpectraError(f"cannot use the SVD cache {cache_dir}: {exc.strerror}") from None
        base = svd(w0, device)
        save_tensors(path, {"u": base.u, "s": base.s, "vh": base.vh})
        _load_base.cache_clear()
    return str(path)


def _cached(path: Path, shape: tuple[int, int]) -> bool:
    """Whether ``path`` holds a whole float64 SVD of an m×n matrix (read from its header)."""
    (m, n), k = shape, min(shape)
    want = {"u": [m, k], "s": [k], "vh": [k, n]}
    try:
        with safe_open(str(path), framework="pt") as f:  # checks the file is complete
            if set(f.keys()) != set(want):
                return False
            for name, dims in want.items():
                part = f.get_slice(name)
                if part.get_shape() != dims or part.get_dtype() != "F64":
                    return False
            return bool(torch.isfinite(f.get_tensor("s")).all())
    except (SafetensorError, OSError):
        return False


def base_svd(run_dir: str | Path, layer: str, cache_dir: str | Path | None = None) -> SVD:
    """The SVD of ``layer``'s step-0 weight, from the cache (computed and cached if missing)."""
    return _load_base(base_task(str(run_dir), layer, str(cache_dir or default_cache_dir())))


def update_svd(
    kind: str,
    w0: torch.Tensor,
    factors0: Principal | None,
    w: torch.Tensor,
    factors: Principal | None,
    device: str = "cpu",
) -> SVD:
    """Thin SVD of ΔW = W_t − W_0: through the factors for a ``lowrank`` layer (O((m + n) r²),
    see :func:`~spectra.factors.update_factors`), a full SVD otherwise (FT, DoRA)."""
    if kind == "lowrank":
        return factored_svd(*update_factors(factors0, factors))
    return svd(w - w0, device)


def update_metrics(
    run: Run,
    step: int,
    layer: str,
    w: torch.Tensor,
    factors: Principal | None,
    ft_rank: int = FT_RANK,
    device: str = "cpu",
) -> dict:
    """delta_m, delta_dir and amplification of ``layer``'s update ΔW = W_t − W_0 at ``step``.

    r is the target's adapter rank, else ``ft_rank``. Amplification is None at step 0 and NaN
    when ΔW = 0.
    """
    if step == 0:
        return {"delta_m": 0.0, "delta_dir": 0.0, "amplification": None}
    target = run.manifest.targets[layer]
    w0, factors0 = run.weight_and_principal(0, layer)
    row = magnitude_direction(w0, w)
    if torch.equal(w, w0):
        return row | {"amplification": math.nan}
    delta = update_svd(target.kind, w0, factors0, w, factors, device)
    rank = target.rank or ft_rank
    return row | {"amplification": amplification_from_svd(w0, delta, rank)}


def matrix_task(
    run_dir: str,
    step: int,
    layer: str,
    base_file: str,
    top_k: int = TOP_K,
    intruder_eps: float = INTRUDER_EPS,
    device: str = "cpu",
    ft_rank: int = FT_RANK,
) -> dict:
    """One Parquet row: every metric of ``layer`` at ``step``; metrics are NaN for NaN weights."""
    run = open_run(run_dir)  # fresh: a long-lived worker may see a run directory re-created
    w, factors = run.weight_and_principal(step, layer)
    block, module = layer_position(layer)
    row = {"run": run.name, "method": run.manifest.method, "step": step, "layer": layer,
           "block": block, "module": module, "rows": w.shape[0], "cols": w.shape[1]}  # fmt: skip
    if not torch.isfinite(w).all():
        return row | {"nonfinite": True}
    base = _load_base(base_file)
    cur = base if step == 0 else svd(w, device)
    row |= drift_from_svd(base, w, cur, top_k=top_k, intruder_eps=intruder_eps)
    overlaps = top_overlaps(base, cur, top_k)
    row["intruder_overlap"] = [1.0] * overlaps.numel() if cur is base else overlaps.tolist()
    row |= update_metrics(run, step, layer, w, factors, ft_rank, device)
    if factors is None:
        return row | {"cond_p": None, "ortho_err": None, "rank": None}
    return row | principal_metrics(run, step, layer, factors)


def principal_metrics(run: Run, step: int, layer: str, factors: Principal) -> dict:
    """``rank`` (W_p's live components), ``cond_p`` over them (NaN when W_p = 0) and
    ``ortho_err``: of a slice, its module's (SORSA's regularizer keeps the whole U_p and V_p
    orthonormal; the rows of U_p that a slice takes are not meant to be)."""
    alive = live(factors)
    rank = alive.right.shape[0]
    if rank == 0:
        return {"rank": 0, "cond_p": math.nan, "ortho_err": None}
    out = {"rank": rank, **factor_metrics(alive.left, alive.right, alive.values)}
    target = run.manifest.targets[layer]
    if factors.values is not None and target.rows:
        whole = live(principal(target.kind, run.parts(step, layer, sliced=False)))
        out["ortho_err"] = factor_metrics(whole.left, whole.right, whole.values)["ortho_err"]
    return out


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
    """A spawn-based process pool sharing the cores, or None (run in-process) for one worker."""
    if workers <= 1:
        yield None
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    initargs = (threads, os.getpid())
    with ProcessPoolExecutor(workers, context, _init_worker, initargs) as pool:
        yield pool


def _run_tasks(executor: Executor | None, fn, args: list[tuple]) -> Iterator[tuple[tuple, object]]:
    """(args, result) for every task, in completion order."""
    if executor is None:
        for a in args:
            yield a, fn(*a)
        return
    futures: dict[Future, tuple] = {executor.submit(fn, *a): a for a in args}
    for future in as_completed(futures):
        yield futures[future], future.result()


class Engine:
    """Incremental metric computation for one run directory.

    ``update()`` computes every (step, layer) row of the steps the manifest lists and the
    Parquet file lacks, so it serves a one-shot computation, a re-run after an interruption
    and a live run alike (call it again as new snapshots land).
    """

    def __init__(
        self,
        run_dir: str | Path,
        out: str | Path | None = None,
        *,
        workers: int = 1,
        cache_dir: str | Path | None = None,
        top_k: int = TOP_K,
        intruder_eps: float = INTRUDER_EPS,
        ft_rank: int = FT_RANK,
        device: str = "cpu",
        executor: Executor | None = None,
        progress: bool = False,
        write_every: float = WRITE_EVERY_S,
    ):
        check_device(device)
        check_workers(workers)
        self.run = open_run(run_dir)
        self.run_dir = str(self.run.path.resolve())
        self.out = Path(out) if out else run_file(self.run.path)
        self.workers, self.executor, self.progress = workers, executor, progress
        self.device, self.write_every = device, write_every
        self.cache_dir = str(Path(cache_dir) if cache_dir else default_cache_dir())
        if ft_rank < 1:
            raise SpectraError(f"ft_rank must be a positive rank, got {ft_rank}")
        self.settings = {
            "top_k": top_k, "intruder_eps": intruder_eps, "ft_rank": ft_rank, "dtype": "float64",
            "schema": SCHEMA_VERSION,
        }  # fmt: skip
        self.stale = False  # rows were dropped that the Parquet file still holds
        self.rows = self._existing_rows()
        self.nonfinite: set[tuple[int, str]] = set()
        self._bases: dict[str, str] = {}

    def _existing_rows(self) -> pd.DataFrame:
        if not self.out.exists():
            return pd.DataFrame()
        try:
            rows, meta = read_run(self.out)
        except SpectraError:
            raise SpectraError(
                f"{self.out} exists and is not a spectra run file; refusing to overwrite it"
            ) from None
        if meta["run"] != self.run.name:
            raise SpectraError(
                f"{self.out} holds run {meta['run']!r}, not {self.run.name!r}; "
                "refusing to overwrite it"
            )
        if meta.get("engine") != self.settings:
            return pd.DataFrame()
        return self._backed(rows, meta.get("run_id"), meta.get("resumed", []), self.run.manifest)

    def _backed(self, rows: pd.DataFrame, run_id, resumed, now: Manifest) -> pd.DataFrame:
        """The rows, computed from run ``run_id`` resumed at steps ``resumed``, that ``now``
        still backs: none of another identity, none after a step it was resumed from since."""
        if rows.empty:
            return rows
        if (
            run_id != now.run_id
            or not isinstance(resumed, list)
            or resumed != now.resumed[: len(resumed)]
        ):
            kept = rows.iloc[:0]
        else:
            since = now.resumed[len(resumed) :]
            kept = rows[rows["step"] <= min(since)] if since else rows
        self.stale = self.stale or len(kept) < len(rows)
        return kept

    def metadata(self) -> dict:
        """Key-value metadata of the Parquet file: the manifest, identity and engine settings."""
        return {
            "run": self.run.name,
            "run_id": self.run.manifest.run_id,
            "resumed": self.run.manifest.resumed,
            "method": self.run.manifest.method,
            "run_dir": os.path.relpath(self.run_dir, self.out.parent.resolve()),
            "manifest": json.loads(self.run.manifest.to_json()),
            "engine": self.settings,
            "spectra_version": __version__,
        }

    def pending(self) -> list[tuple[int, str]]:
        """(step, layer) pairs listed in the manifest and not yet computed, layer-major."""
        self._reopen()
        done = set()
        if not self.rows.empty:
            done = set(zip(self.rows["step"].tolist(), self.rows["layer"].tolist(), strict=True))
        return [
            (step, layer)
            for layer in self.run.layers
            for step in self.run.steps
            if (step, layer) not in done | self.nonfinite
        ]

    def _reopen(self) -> None:
        """Read the manifest again; forget what a resume or a re-created run invalidated."""
        run = open_run(self.run.path)
        old = self.run.manifest
        rows = self._backed(self.rows, old.run_id, old.resumed, run.manifest)
        if len(rows) < len(self.rows) or run.manifest.run_id != old.run_id:
            self.nonfinite.clear()  # look at those steps again
        if run.manifest.run_id != old.run_id:
            self._bases.clear()
        self.rows, self.run = rows, run

    def _write(self, new: list[dict]) -> None:
        if new:
            fresh = pd.DataFrame(new)
            self.rows = fresh if self.rows.empty else pd.concat([self.rows, fresh])
            self.rows = self.rows.drop_duplicates(KEY, keep="last")
        write_run(self.out, self.rows, self.metadata())
        self.stale = False

    def drop_stale(self) -> None:
        """Rewrite the Parquet file without the rows the run directory no longer backs."""
        self._reopen()
        if self.stale:
            self._write([])

    def update(self) -> int:
        """Compute and write every pending row; return how many rows were added."""
        tasks = self.pending()
        if not tasks:
            if self.stale:
                self._write([])
            return 0
        if 0 not in self.run.steps:
            raise SpectraError(f"{self.run.path}: no step-0 snapshot, nothing to compare with")
        with self._executor() as executor, self._progress(len(tasks)) as advance:
            options = [self.settings[k] for k in ("top_k", "intruder_eps")]
            layers = [layer for layer in self.run.layers if layer not in self._bases]
            base_args = [(self.run_dir, layer, self.cache_dir, self.device) for layer in layers]
            for (_, layer, *_), path in _run_tasks(executor, base_task, base_args):
                self._bases[layer] = path
            options += [self.device, self.settings["ft_rank"]]
            args = [(self.run_dir, s, layer, self._bases[layer], *options) for s, layer in tasks]
            new, added, last_write = [], 0, time.monotonic()
            for _, row in _run_tasks(executor, matrix_task, args):
                advance()
                if row.pop("nonfinite", False):
                    self.nonfinite.add((row["step"], row["layer"]))
                    continue
                new.append(row)
                added += 1
                if time.monotonic() - last_write >= self.write_every:
                    self._write(new)
                    new, last_write = [], time.monotonic()
            self._write(new)
        return added

    def _executor(self):
        return nullcontext(self.executor) if self.executor else local_pool(self.workers)

    @contextmanager
    def _progress(self, total: int):
        if not self.progress:
            yield lambda: None
            return
        columns = (*Progress.get_default_columns(), MofNCompleteColumn())
        console = Console(stderr=True)  # on a terminal only, and gone when done or on an error
        with Progress(
            *columns, console=console, transient=True, disable=not console.is_terminal
        ) as bar:
            task = bar.add_task(f"{self.run.name}", total=total)
            yield lambda: bar.advance(task)


def compute_run(
    run_dir: str | Path, out: str | Path | None = None, *, workers: int = 1, **options
) -> Path:
    """Compute every missing row of a run directory into its Parquet file; return its path.

    Raises SpectraError after writing the good rows if some weights were NaN or Inf.
    """
    engine = Engine(run_dir, out, workers=workers, progress=True, **options)
    engine.update()
    if engine.nonfinite:
        bad = ", ".join(f"step {s} {layer}" for s, layer in sorted(engine.nonfinite)[:3])
        more = len(engine.nonfinite) - 3
        raise SpectraError(
            f"{len(engine.nonfinite)} matrices have NaN or Inf weights ({bad}"
            f"{f' and {more} more' if more > 0 else ''}); their rows were not written"
        )
    return engine.out
