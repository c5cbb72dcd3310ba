"""The :class:`Engine`: the rows of one run directory, computed incrementally into Parquet.

It schedules one :func:`~spectra.engine.svd_cache.base_task` per layer and one
:func:`~spectra.engine.row_metrics.matrix_task` per missing (step, layer), writes the rows
atomically as tasks finish, keeps only the rows the run directory still backs, and shows
progress. :func:`compute_run` is the one-shot form that ``spectra compute`` uses.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Executor
from contextlib import nullcontext
from pathlib import Path

import pandas as pd

from spectra import __version__
from spectra.atomic import check_writable, remove_temporary_files
from spectra.columns import KEY
from spectra.engine.row_metrics import matrix_task
from spectra.engine.settings import DEFAULTS, Settings
from spectra.engine.svd_cache import Entry, base_task, open_cache
from spectra.engine.workers import check_device, check_workers, local_pool, run_tasks
from spectra.errors import SpectraError
from spectra.progress import progress_bar
from spectra.run_files import parquet_path, step_file
from spectra.snapshots import Manifest, open_run
from spectra.store import read_own_rows, write_rows

WRITE_EVERY_S = 2.0  # default: how often finished rows are flushed to the Parquet file
STALE_S = 600.0  # a temporary file of the Parquet file this old is a killed writer's


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
        settings: Settings = DEFAULTS,
        executor: Executor | None = None,
        progress: bool = False,
        write_every: float = WRITE_EVERY_S,
    ):
        check_device(settings.device)
        check_workers(workers)
        self.run = open_run(run_dir)
        self.run_dir = str(self.run.path.resolve())
        self.out = Path(out) if out else parquet_path(self.run.path)
        self.workers, self.executor, self.progress = workers, executor, progress
        self.settings, self.write_every = settings, write_every
        check_writable(self.out)  # a refusal before any work, and before any cache warning
        self.cache_dir = open_cache(cache_dir)  # None (and one warning) when it is unusable
        self._remove_leftovers()
        self.stale = False  # rows were dropped that the Parquet file still holds
        self.rows = self._existing_rows()
        self.nonfinite: set[tuple[int, str]] = set()
        self._bases: dict[str, Entry] = {}

    def _remove_leftovers(self) -> None:
        """Remove the temporary files killed writers left: in the run directory once nothing
        writes it (finished, or its writer is gone), and old ones of the Parquet file."""
        if self.run.manifest.finished or self.run.manifest.abandoned:
            remove_temporary_files(self.run.path)
        remove_temporary_files(self.out.parent, of=self.out.name, older_than=STALE_S)

    def _existing_rows(self) -> pd.DataFrame:
        found = read_own_rows(self.out, self.run.name)
        if found is None:
            return pd.DataFrame()
        rows, meta = found
        if meta.get("engine") != self.settings.recorded():
            return pd.DataFrame()
        return self._backed(rows, meta.get("run_id"), meta.get("resumed", []), self.run.manifest)

    def _backed(self, rows: pd.DataFrame, run_id, resumed, now: Manifest) -> pd.DataFrame:
        """The rows, computed from run ``run_id`` resumed at steps ``resumed``, that ``now``
        still backs: none of another identity, none after a step it was resumed from since,
        none of a step or layer it no longer has (not listed, or its step file is gone)."""
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
            files = set(os.listdir(self.run.path))
            steps = [step for step in now.steps if step_file(step) in files]
            kept = kept[kept["step"].isin(steps) & kept["layer"].isin(list(now.targets))]
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
            "engine": self.settings.recorded(),
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
        write_rows(self.out, self.rows, self.metadata())
        self.stale = False

    def update(self) -> int:
        """Compute and write every pending row; return how many rows were added."""
        tasks = self.pending()
        if self.stale:  # before computing, which may fail: no row outlives its snapshot
            self._write([])
        if not tasks:
            return 0
        if 0 not in self.run.steps:
            raise SpectraError(f"{self.run.path}: no step-0 snapshot, nothing to compare with")
        new, added, last_write = [], 0, time.monotonic()
        try:  # the pool ends (queued tasks cancelled) before the rows so far are written
            with (
                self._executor() as executor,
                progress_bar(self.run.name, len(tasks), self.progress) as advance,
            ):
                missing = [layer for layer in self.run.layers if layer not in self._bases]
                base_args = [(self.run_dir, m, self.cache_dir, self.settings) for m in missing]
                for (_, layer, *_), entry in run_tasks(executor, base_task, base_args):
                    self._bases[layer] = entry
                args = [
                    (self.run_dir, step, layer, self._bases[layer], self.settings)
                    for step, layer in tasks
                ]
                for _, row in run_tasks(executor, matrix_task, args):
                    advance()
                    if row.pop("nonfinite", False):
                        self.nonfinite.add((row["step"], row["layer"]))
                        continue
                    new.append(row)
                    added += 1
                    if time.monotonic() - last_write >= self.write_every:
                        self._write(new)
                        new, last_write = [], time.monotonic()
        except BaseException:  # an error or a Ctrl-C: the rows computed so far are kept
            if new:
                self._write(new)
            raise
        self._write(new)
        return added

    def _executor(self):
        return nullcontext(self.executor) if self.executor else local_pool(self.workers)


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
