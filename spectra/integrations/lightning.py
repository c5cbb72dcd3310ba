"""PyTorch Lightning: :class:`SpectraCallback` runs a :class:`~spectra.Tracker` from a
``lightning.pytorch.Trainer``'s hooks (``pip install 'spectra-drift[lightning]'``).

    trainer = L.Trainer(max_steps=1000, callbacks=[SpectraCallback("runs/my-run", every=50)])

It tracks the model as the strategy holds it (``trainer.strategy.model``: the LightningModule,
inside DDP, FSDP or DeepSpeed), so under FSDP and DeepSpeed ZeRO-3 every rank gathers the
targets and rank 0 writes. Layer names are module paths in the LightningModule
(``model.model.layers.0.self_attn.q_proj`` for a Llama held as ``self.model``).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from spectra.callback.failures import error_text
from spectra.callback.tracker import Tracker


def _loss(outputs):
    """The loss a ``training_step`` returned (a tensor, or a dict with ``loss``), or None."""
    return outputs.get("loss") if isinstance(outputs, dict) else outputs


class SpectraCallback(Callback):
    """Track ``targets`` of a Lightning training every ``every`` optimizer steps.

    Targets and options are :class:`~spectra.Tracker`'s (None: the architecture's query and
    value projections; fused, mode, method, run_name, gamma, overwrite, …). Steps are
    ``trainer.global_step`` (optimizer steps: with gradient accumulation, a step is taken
    after its last micro-batch). ``trainer.fit(..., ckpt_path=...)`` continues the run
    directory from the checkpoint's step; a fit that raises marks the run failed, with the
    error. The training log gets the loss ``training_step`` returns, the learning rate and
    the numbers logged with ``self.log``.
    """

    def __init__(self, out: str | Path, targets=None, every: int = 10, **options):
        self.out, self.targets, self.every, self.options = out, targets, every, options
        self.tracker: Tracker | None = None
        self._step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        options = {"learning_rate": lr} | self.options
        self._step = trainer.global_step  # restored from the checkpoint when resuming
        self.tracker = Tracker(
            trainer.strategy.model or pl_module, self.out, self.targets, self.every,
            start_step=self._step, write=trainer.is_global_zero, **options,
        )  # fmt: skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step:  # accumulating gradients: no optimizer step yet
            return
        self._step = trainer.global_step
        logs = dict(trainer.callback_metrics)
        if trainer.optimizers:
            logs["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        if _loss(outputs) is not None:
            logs["loss"] = _loss(outputs)
        self.tracker.step(self._step, **logs)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.tracker is not None:
            self.tracker.save_log()  # the log on disk then covers every step of the checkpoint

    def on_train_end(self, trainer, pl_module) -> None:
        self.tracker.close()  # inline: waits until every step's metrics are computed

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.tracker is not None:
            self.tracker.close(error=error_text(exception))
