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

One module per job: :mod:`.tracker` (the :class:`Tracker`), :mod:`.trainer` (the
:class:`SpectraCallback` for ``Trainer``), :mod:`.snapshot_thread` (the background thread that
writes the snapshots), :mod:`.worker` (the inline metrics worker) and :mod:`.failures` (the
trackers not yet closed, which an uncaught exception or an exit before ``close()`` marks
failed).
"""

from spectra.callback.failures import error_text
from spectra.callback.snapshot_thread import QUEUE_DEPTH
from spectra.callback.tracker import MODES, Tracker
from spectra.callback.trainer import SpectraCallback
from spectra.callback.worker import WORKERS

__all__ = [
    "MODES",
    "QUEUE_DEPTH",
    "WORKERS",
    "SpectraCallback",
    "Tracker",
    "error_text",
]
