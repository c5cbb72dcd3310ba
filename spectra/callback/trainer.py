"""transformers' ``Trainer`` side: :class:`SpectraCallback`, which runs a :class:`Tracker`
from the Trainer's events and marks the run failed when ``trainer.train()`` raises, and the
helpers that find the calling Trainer and turn its log dicts into training-log values.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from transformers import TrainerCallback

from spectra.callback.failures import error_text
from spectra.callback.tracker import Tracker
from spectra.integrations.reporter import Reporter
from spectra.train_log import from_trainer


class SpectraCallback(TrainerCallback):
    """Track ``targets`` of a ``Trainer``'s model every ``every`` optimizer steps.

    Targets and options are :class:`Tracker`'s (None: the architecture's query and value
    projections; fused, mode, method, run_name, gamma, overwrite, …). Resuming from a
    checkpoint continues the same run directory from the checkpoint's step. When
    ``trainer.train()`` raises, the run is marked failed with the error. In inline mode the
    per-module means of the latest metrics also go to TensorBoard and W&B when ``report_to``
    names them, at the step each snapshot was taken (see :mod:`spectra.integrations.reporter`).
    Under DDP, FSDP or DeepSpeed the Trainer runs it on every rank, which gathers sharded
    targets; the world process zero writes.
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
                    self.tracker.close(error=error_text(exc))
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
        self.tracker.log(state.global_step, **from_trainer(logs))

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
