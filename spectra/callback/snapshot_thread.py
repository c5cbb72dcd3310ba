"""The background thread that writes a tracker's queued snapshots and training log to the run
directory, so the training thread only copies tensors to CPU memory; it records NaN/Inf
snapshots in the manifest and hands a failed write back to the training thread.
"""

from __future__ import annotations

import queue
import threading
import warnings

import torch

from spectra.errors import SpectraError
from spectra.snapshots import RunWriter
from spectra.train_log import write_train_log

QUEUE_DEPTH = 2  # snapshots held in memory before the training thread waits for the writer


class SnapshotThread:
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
