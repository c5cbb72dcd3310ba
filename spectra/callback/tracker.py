"""The :class:`Tracker`: snapshots the target layers of a model into a run directory every
``every`` steps of a plain training loop, with its training log, and marks the run finished
or failed when it is closed; the writing and the inline metrics are handed to a background
writer thread and worker.
"""

from __future__ import annotations

import warnings
from numbers import Real
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from spectra.callback.failures import OPEN_TRACKERS, error_text
from spectra.callback.gather import reader_for
from spectra.callback.snapshot_thread import SnapshotThread
from spectra.callback.worker import WORKERS, InlineWorker
from spectra.capture import adapter_rank, detect_method, find_layers, recognise, weight_shape
from spectra.errors import SpectraError
from spectra.factors import row_count
from spectra.overwrite import replace_run
from spectra.run_files import FROZEN, is_run_dir, parquet_path
from spectra.snapshots import Manifest, RunWriter, Target, open_run
from spectra.store import drop_rows_after, read_own_rows
from spectra.train_log import read_train_log, write_train_log

MODES = ("inline", "deferred")


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP, DataParallel and DeepSpeed's engine (FSDP1's root stays: it owns
    the shards of the parameters no inner unit holds)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) or (
        type(model).__name__ == "DeepSpeedEngine"
    ):
        model = model.module
    return model


def _targets(model: nn.Module, targets, fused) -> tuple[dict, dict]:
    """The layers the targets select, and the layout of each of their modules."""
    found = find_layers(model, targets, fused)
    return found, {layer.path: recognise(layer.module) for layer in found.values()}


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

    Under FSDP1, FSDP2 or DeepSpeed ZeRO-3 every rank makes the same tracker and calls
    ``step`` at the same steps: the targets are gathered on every rank, one module at a time
    (see :mod:`spectra.callback.gather`), and the writing rank writes them.
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
        self._reader = reader_for(model)
        found, layouts = self._reader.scan(model, lambda m: _targets(m, targets, fused))
        self.layers = {name: layer.module for name, layer in found.items()}
        self._modules = {layer.path: layer.module for layer in found.values()}  # snapshot once
        self.method = method or detect_method(model, layouts)
        self.every, self.path = every, Path(out)
        self.writing = _rank_zero() if write is None else write
        self._last: int | None = None
        self._taken: set[int] = set()  # the steps in the run directory
        self._seen: set[int] = set()  # the steps this process has snapshotted
        self._closed = False
        if not self.writing:
            if self._reader.collective:  # join the gathers of the writing rank
                if start_step == 0:
                    self._reader.frozen(self._modules, keep=False)
                if start_step % every == 0:
                    self.snapshot(start_step)
            return
        manifest = self._manifest(found, layouts, run_name, model_name or _model_name(model))
        manifest.gamma, manifest.learning_rate, manifest.every = gamma, learning_rate, every
        parquet = parquet_path(self.path)
        if start_step == 0 and not overwrite and is_run_dir(self.path):
            raise SpectraError(
                f"{self.path} already holds a run; pass overwrite=True to replace it (with its "
                "Parquet file), or start_step=N to resume it"
            )
        if start_step > 0:
            self._check_resumable(manifest)
            rows = read_own_rows(parquet, manifest.run)  # refuses a foreign file, changing nothing
        elif overwrite:
            replace_run(self.path, manifest.run)
        self.writer = RunWriter(self.path, manifest, resume=start_step > 0)
        self._log = _log_rows(read_train_log(self.path), start_step)
        if start_step > 0:
            self.writer.discard_after(start_step)
            write_train_log(self.path, self._log)
            if rows is not None:
                written = self.writer.manifest
                drop_rows_after(parquet, start_step, written.run_id, written.resumed)
        self._taken = set(self.writer.manifest.steps)
        self._writes, self._worker = SnapshotThread(self.writer), None
        OPEN_TRACKERS.add(self)
        try:
            if start_step == 0:  # one module at a time: a quantized base dequantized here, once
                frozen = self._reader.frozen(self._modules)
                if any(frozen.values()):
                    self.writer.write_frozen({p: parts for p, parts in frozen.items() if parts})
            if start_step % every == 0:  # step 0, or a resumed step whose snapshot may be missing
                self.snapshot(start_step)
            if mode == "inline":
                self._worker = InlineWorker(self.path, poll, worker)
        except BaseException as exc:  # the run says why it ended, and no hook closes it again
            self.close(error=error_text(exc))
            raise

    def _manifest(self, found, layouts, run_name, model_name) -> Manifest:
        targets = {}
        for name, layer in found.items():
            lay = layouts[layer.path]
            out_features, in_features = weight_shape(lay)
            if layer.expert is not None:
                shape, rank = (out_features, in_features), adapter_rank(lay)
                targets[name] = Target(lay.kind, shape, rank, layer.path, None, layer.expert)
            elif layer.rows is None:
                targets[name] = Target(lay.kind, (out_features, in_features), adapter_rank(lay))
            else:
                shape = (row_count(layer.rows), in_features)
                targets[name] = Target(lay.kind, shape, adapter_rank(lay), layer.path, layer.rows)
        ranks = {t.rank for t in targets.values()}
        return Manifest(
            run=run_name or self.path.name, method=self.method, targets=targets,
            model=model_name, rank=ranks.pop() if len(ranks) == 1 else None,
            distributed=self._reader.distributed,
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
        return parquet_path(self.path)

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
        """Copy every target's trainable tensors to CPU and queue them for writing.

        Under a sharding engine every rank gathers them (a collective), once per step.
        """
        step = int(step)
        new = self.writing and step not in self._taken
        if step in self._seen or not (new or self._reader.collective):
            return
        self._seen.add(step)
        parts = self._reader.step(self._modules, keep=new)
        if new:
            self._taken.add(step)
            self._writes.put(step, parts, self._log_copy())

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
        if self._closed:
            return
        self._closed = True
        OPEN_TRACKERS.discard(self)
        failed = failed or error is not None
        if self._last is not None and not failed:
            self.snapshot(self._last)  # under a sharding engine, on every rank
        if not self.writing:
            return
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
        self.close(error=None if exc is None else error_text(exc))
