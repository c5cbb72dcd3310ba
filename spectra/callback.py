"""Snapshot target layers during training: ``Tracker`` for plain loops, ``SpectraCallback`` for
transformers' ``Trainer``.

The training thread only copies each target's trainable tensors to CPU memory; a background
thread writes the snapshot files, checks them for NaN/Inf and rewrites the training log. In
``inline`` mode a worker process (``python -m spectra.follow``, one torch thread) computes the
metrics into ``runs/<run>.parquet`` while training continues; in ``deferred`` mode only
snapshots are written (compute them later with ``spectra compute`` or follow them live).
Under DDP only rank 0 writes.

A training that raises marks its run failed, with the error, so followers stop waiting: the
``with`` block of a Tracker, ``Trainer.train`` of a trainer built with a SpectraCallback, an
uncaught exception (``sys.excepthook``) and an exit before ``close()`` (``atexit``) all do.
"""

from __future__ import annotations

import atexit
import functools
import os
import queue
import subprocess
import sys
import threading
import warnings
from numbers import Real
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from transformers import TrainerCallback

from spectra.capture import (
    adapter_rank,
    detect_method,
    find_layers,
    layout,
    recognise,
    step_tensors,
    weight_shape,
)
from spectra.engine import Engine
from spectra.errors import SpectraError
from spectra.factors import row_count
from spectra.follow import compute_until_finished
from spectra.reporting import Reporter
from spectra.snapshots import (
    FROZEN,
    Manifest,
    RunWriter,
    Target,
    open_run,
    read_train_log,
    remove_run,
    write_train_log,
)
from spectra.store import remove_run_file, run_file

MODES = ("inline", "deferred")
WORKERS = ("process", "thread")
QUEUE_DEPTH = 2  # snapshots held in memory before the training thread waits for the writer


def _to_cpu(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy that later training steps cannot change."""
    t = t.detach()
    return t.to("cpu", copy=True) if t.is_contiguous() else t.contiguous().to("cpu")


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _rank_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _model_name(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def _number(value) -> float | None:
    """A log value as a float, or None when it is not a scalar number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    return None


class _SnapshotWriter:
    """Writes queued snapshots and the training log on a background thread.

    NaN/Inf in a snapshot is recorded in the manifest with a warning; a write that fails is
    re-raised in the training thread by the next ``put`` or by ``join``.
    """

    def __init__(self, writer: RunWriter):
        self.writer = writer
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        threading.Thread(target=self._drain, daemon=True).start()

    def put(self, step: int | None, parts: dict, log: dict) -> None:
        """Queue the snapshot of ``step`` (None: only the log) for writing."""
        self._raise()
        self._queue.put((step, parts, log))

    def join(self) -> None:
        """Wait until everything queued is on disk."""
        self._queue.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise SpectraError(f"writing snapshots to {self.writer.path} failed: {self.error}")

    def _drain(self) -> None:
        while True:
            step, parts, log = self._queue.get()
            try:
                if self.error is None:
                    self._write(step, parts, log)
            except BaseException as exc:  # re-raised in the training thread
                self.error = exc
            finally:
                self._queue.task_done()

    def _write(self, step: int | None, parts: dict, log: dict) -> None:
        bad = [
            p
            for p, ts in parts.items()
            if not all(bool(torch.isfinite(t).all()) for t in ts.values())
        ]
        if bad:
            self.writer.manifest.extra.setdefault("nonfinite", []).extend([step, p] for p in bad)
            warnings.warn(
                f"spectra: NaN or Inf weights at step {step} in {len(bad)} target(s) "
                f"({bad[0]}, …); recorded in the manifest, their metric rows will be skipped",
                RuntimeWarning,
                stacklevel=1,
            )
        if step is not None:
            self.writer.write_step(step, parts)
        write_train_log(self.writer.path, log)


class _InlineWorker:
    """Computes metrics as snapshots land, in a subprocess (default) or a thread."""

    def __init__(self, run_dir: Path, poll: float, kind: str):
        self.error: BaseException | None = None
        if kind == "process":
            cmd = [sys.executable, "-m", "spectra.follow", str(run_dir), "--quiet",
                   "--poll", str(poll), "--parent", str(os.getpid()), "--threads", "1"]  # fmt: skip
            root = str(Path(__file__).resolve().parent.parent)  # spectra importable from source
            path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
            self.process = subprocess.Popen(cmd, env=os.environ | {"PYTHONPATH": path})
        else:
            self.thread = threading.Thread(target=self._run, args=(run_dir, poll), daemon=True)
            self.thread.start()

    def _run(self, run_dir: Path, poll: float) -> None:
        try:
            compute_until_finished(run_dir, poll)
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def wait(self, stop: bool = False) -> str | None:
        """Wait for the worker (terminate it when ``stop``); a failure message or None."""
        if hasattr(self, "process"):
            if stop:
                self.process.terminate()
            code = self.process.wait()
            return None if code == 0 or stop else f"exit code {code}"
        self.thread.join(None if not stop else 0)
        return None if self.error is None else str(self.error)


def describe(exc: BaseException) -> str:
    """An exception as the run records it: ``RuntimeError: message``."""
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


class _OpenTrackers:
    """The trackers of this process not yet closed. While there are any, an uncaught exception
    (``sys.excepthook``) or an exit before ``close()`` (``atexit``) closes them as failed."""

    def __init__(self):
        self.trackers: dict[Tracker, None] = {}
        self.previous_hook = None
        self.registered = False

    def add(self, tracker: Tracker) -> None:
        if not self.trackers and sys.excepthook != self.excepthook:
            self.previous_hook, sys.excepthook = sys.excepthook, self.excepthook
        if not self.registered:
            atexit.register(self.fail, "the process exited before the tracker was closed")
            self.registered = True
        self.trackers[tracker] = None

    def discard(self, tracker: Tracker) -> None:
        self.trackers.pop(tracker, None)
        if not self.trackers and sys.excepthook == self.excepthook:
            sys.excepthook = self.previous_hook

    def fail(self, error: str) -> None:
        for tracker in list(self.trackers):
            tracker.close(error=error)

    def excepthook(self, exc_type, exc, tb) -> None:
        self.fail(describe(exc))
        self.previous_hook(exc_type, exc, tb)


_OPEN = _OpenTrackers()


def _log_rows(log, up_to: int) -> dict[int, dict[str, float]]:
    """The rows of a stored train log with step ≤ ``up_to`` (what a resumed run keeps)."""
    if log is None:
        return {}
    rows = log[log["step"] <= up_to].to_dict("records")
    return {
        int(row.pop("step")): {k: float(v) for k, v in row.items() if pd.notna(v)} for row in rows
    }


class Tracker:
    """Snapshots ``targets`` of ``model`` into the run directory ``out`` every ``every`` steps.

    ``targets`` follow :func:`spectra.capture.resolve`; None (the default) means the attention
    query and value projections of the architecture (a peft model's adapted layers, else the
    :mod:`spectra.architectures` registry, else the common names). A fused q/k/v projection
    is tracked as its slices; ``fused`` gives the layout of one the registry does not know
    (``{"wqkv": "32*128,128,128"}``, see :func:`spectra.architectures.spec_rows`).
    ``tracker.step(step, loss=..., **logs)`` after each optimizer step; ``close()`` (or a
    ``with`` block) at the end. Step 0 is recorded when the tracker is created; with
    ``start_step > 0`` it continues the run directory of an interrupted run instead, and
    discards what the interrupted run recorded after ``start_step`` (snapshots, their Parquet
    rows, training-log rows), so the resumed run equals an uninterrupted one. Otherwise an
    existing run is refused unless ``overwrite`` (it is replaced, with its Parquet file).
    ``write`` (default: torch.distributed rank 0) says whether this process writes.
    """

    def __init__(
        self,
        model: nn.Module,
        out: str | Path,
        targets: str | tuple[str, ...] | list[str] | None = None,
        every: int = 10,
        *,
        fused: dict[str, str] | None = None,
        mode: str = "inline",
        method: str | None = None,
        run_name: str | None = None,
        model_name: str | None = None,
        gamma: float | None = None,
        learning_rate: float | None = None,
        start_step: int = 0,
        write: bool | None = None,
        worker: str = "process",
        poll: float = 0.5,
        overwrite: bool = False,
    ):
        if every < 1:
            raise SpectraError(f"every must be a positive number of steps, got {every}")
        if mode not in MODES or worker not in WORKERS:
            raise SpectraError(f"mode must be one of {MODES} and worker one of {WORKERS}")
        model = _unwrap(model)
        found = find_layers(model, targets, fused)
        self.layers = {name: layer.module for name, layer in found.items()}
        self._modules = {layer.path: layer.module for layer in found.values()}  # snapshot once
        layouts = {path: recognise(module) for path, module in self._modules.items()}
        self.method = method or detect_method(model, layouts)
        self.every, self.path = every, Path(out)
        self.writing = _rank_zero() if write is None else write
        self._last: int | None = None
        self._taken: set[int] = set()
        self._closed = False
        if not self.writing:
            return
        manifest = self._manifest(found, layouts, run_name, model_name or _model_name(model))
        manifest.gamma, manifest.learning_rate, manifest.every = gamma, learning_rate, every
        if start_step > 0:
            self._check_resumable(manifest)
            rows = Engine(self.path)  # refuses a foreign Parquet file before anything changes
        elif overwrite:
            remove_run(self.path)
            remove_run_file(run_file(self.path))
        self.writer = RunWriter(self.path, manifest, resume=start_step > 0)
        self._log = _log_rows(read_train_log(self.path), start_step)
        if start_step > 0:
            self.writer.discard_after(start_step)
            write_train_log(self.path, self._log)
            rows.drop_stale()
        self._taken = set(self.writer.manifest.steps)
        self._writes = _SnapshotWriter(self.writer)
        _OPEN.add(self)
        if start_step == 0:  # one module at a time: a quantized base is dequantized here, once
            frozen = {
                path: {k: _to_cpu(t) for k, t in layout(module).frozen.items()}
                for path, module in self._modules.items()
            }
            if any(frozen.values()):
                self.writer.write_frozen({p: parts for p, parts in frozen.items() if parts})
        if start_step % every == 0:  # step 0, or a resumed step whose snapshot may be missing
            self.snapshot(start_step)
        self._worker = _InlineWorker(self.path, poll, worker) if mode == "inline" else None

    def _manifest(self, found, layouts, run_name, model_name) -> Manifest:
        targets = {}
        for name, layer in found.items():
            lay = layouts[layer.path]
            out_features, in_features = weight_shape(lay)
            if layer.rows is None:
                targets[name] = Target(lay.kind, (out_features, in_features), adapter_rank(lay))
            else:
                shape = (row_count(layer.rows), in_features)
                targets[name] = Target(lay.kind, shape, adapter_rank(lay), layer.path, layer.rows)
        ranks = {t.rank for t in targets.values()}
        return Manifest(
            run=run_name or self.path.name, method=self.method, targets=targets,
            model=model_name, rank=ranks.pop() if len(ranks) == 1 else None,
        )  # fmt: skip

    def _check_resumable(self, manifest: Manifest) -> None:
        old = open_run(self.path).manifest
        if old.targets != manifest.targets or 0 not in old.steps:
            raise SpectraError(
                f"{self.path} does not hold the step-0 snapshot of these targets; cannot resume it"
            )
        if not (self.path / FROZEN).is_file() and any(
            t.kind != "dense" for t in old.targets.values()
        ):
            raise SpectraError(f"{self.path} lacks {FROZEN}; cannot resume it")

    @property
    def metrics_file(self) -> Path | None:
        """The Parquet file the inline worker writes; None in deferred mode or on other ranks."""
        if not self.writing or self._worker is None:
            return None
        return self.path.parent / f"{self.path.name}.parquet"

    def log(self, step: int, **values) -> None:
        """Add training-log values (loss, reg_loss, grad_norm, lr, …) to the row of ``step``."""
        if not self.writing:
            return
        numbers = {k: v for k, raw in values.items() if (v := _number(raw)) is not None}
        if numbers:
            self._log.setdefault(int(step), {}).update(numbers)

    def step(self, step: int, loss=None, **logs) -> None:
        """Record the end of optimizer step ``step``: log values, and a snapshot when it is due."""
        self.log(step, loss=loss, **logs)
        self._last = int(step)
        if step % self.every == 0:
            self.snapshot(step)

    def snapshot(self, step: int) -> None:
        """Copy every target's trainable tensors to CPU and queue them for writing."""
        if not self.writing or step in self._taken:
            return
        self._taken.add(int(step))
        parts = {
            path: {k: _to_cpu(t) for k, t in step_tensors(module).items()}
            for path, module in self._modules.items()
        }
        self._writes.put(int(step), parts, self._log_copy())

    def save_log(self) -> None:
        """Queue a rewrite of train_log.parquet (behind any queued snapshot)."""
        if self.writing:
            self._writes.put(None, {}, self._log_copy())

    def _log_copy(self) -> dict[int, dict[str, float]]:
        return {s: dict(row) for s, row in self._log.items()}

    def flush(self) -> None:
        """Wait until every queued snapshot is on disk."""
        if self.writing:
            self._writes.join()

    def close(self, failed: bool = False, error: str | None = None) -> None:
        """Snapshot the last step, write the training log, mark the run finished.

        ``failed`` (or an ``error``, the exception that ended training) marks it failed
        instead. In inline mode, wait for the metrics of every step (unless it failed).
        """
        if self._closed or not self.writing:
            self._closed = True
            return
        self._closed = True
        _OPEN.discard(self)
        failed = failed or error is not None
        if self._last is not None and not failed:
            self.snapshot(self._last)
        self.flush()
        write_train_log(self.path, self._log)
        if failed:
            self.writer.finish(status="failed", error=error or "closed as failed")
        else:
            self.writer.finish(status="completed")
        problem = self._worker.wait(stop=failed) if self._worker else None
        if problem:
            warnings.warn(
                f"spectra: the inline metrics worker failed ({problem}); the snapshots are "
                f"complete, compute them with `spectra compute {self.path}`",
                RuntimeWarning,
                stacklevel=2,
            )

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(error=None if exc is None else describe(exc))


def trainer_log(logs: dict) -> dict[str, float]:
    """A Trainer log dict as training-log values: learning_rate → lr, the rest as is."""
    return {("lr" if k == "learning_rate" else k): v for k, v in (logs or {}).items()}


class SpectraCallback(TrainerCallback):
    """Track ``targets`` of a ``Trainer``'s model every ``every`` optimizer steps.

    Targets and options are :class:`Tracker`'s (None: the architecture's query and value
    projections; fused, mode, method, run_name, gamma, overwrite, …). Resuming from a
    checkpoint continues the same run directory from the checkpoint's step. When
    ``trainer.train()`` raises, the run is marked failed with the error. In inline mode the
    per-module means of the latest metrics also go to TensorBoard and W&B when ``report_to``
    names them, at the step each snapshot was taken (see :mod:`spectra.reporting`).
    """

    def __init__(self, out: str | Path, targets=None, every: int = 10, **options):
        self.out, self.targets, self.every, self.options = out, targets, every, options
        self.tracker: Tracker | None = None
        self.reporter: Reporter | None = None

    def on_init_end(self, args, state, control, **kwargs):
        trainer = _calling_trainer()
        if trainer is not None:  # on_train_end is never called when training raises
            trainer.train = self._failing_on_exception(trainer.train)

    def _failing_on_exception(self, train):
        @functools.wraps(train)
        def guarded(*args, **kwargs):
            try:
                return train(*args, **kwargs)
            except BaseException as exc:
                if self.tracker is not None:
                    self.tracker.close(error=describe(exc))
                raise

        return guarded

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        options = {"learning_rate": args.learning_rate} | self.options
        self.tracker = Tracker(
            model, self.out, self.targets, self.every, start_step=state.global_step,
            write=state.is_world_process_zero, **options,
        )  # fmt: skip
        parquet = self.tracker.metrics_file
        if parquet is not None:
            run, layers = self.tracker.writer.manifest.run, len(self.tracker.layers)
            self.reporter = Reporter.for_trainer(args, parquet, layers, run)

    def on_step_end(self, args, state, control, **kwargs):
        self.tracker.step(state.global_step)
        if self.reporter is not None:
            self.reporter.poll()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.tracker.log(state.global_step, **trainer_log(logs))

    def on_save(self, args, state, control, **kwargs):
        self.tracker.save_log()  # the log on disk then covers every step of the checkpoint

    def on_train_end(self, args, state, control, **kwargs):
        self.tracker.close()  # inline: waits until every step's metrics are computed
        if self.reporter is not None:
            self.reporter.close()


def _calling_trainer(depth: int = 8):
    """The transformers ``Trainer`` whose ``__init__`` is calling this callback, or None."""
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None
