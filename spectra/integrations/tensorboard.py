"""TensorBoard: scalars at the steps they belong to (``SummaryWriter.add_scalar`` takes any
step, so the values sit at step s although the Trainer is already further)."""

from __future__ import annotations

from pathlib import Path


class TensorBoard:
    """Scalars into TensorBoard event files at the steps they belong to."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
