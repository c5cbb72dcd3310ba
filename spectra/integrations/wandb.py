"""W&B: its own step only grows, so spectra logs ``spectra/step`` with the values and declares it
their x-axis (``wandb.define_metric(name, step_metric="spectra/step")``), in the W&B run the
Trainer's W&B callback started. Without wandb installed or a run, nothing is sent."""

from __future__ import annotations

from spectra.integrations import PREFIX

STEP = f"{PREFIX}/step"  # W&B's x-axis for the spectra metrics


class WandB:
    """Scalars into the active W&B run against ``spectra/step``."""

    def __init__(self):
        self.defined: set[str] = set()

    def log(self, step: int, scalars: dict[str, float]) -> None:
        try:
            import wandb
        except ImportError:
            return
        if wandb.run is None:
            return
        if not self.defined:
            wandb.define_metric(STEP)
        for name in scalars.keys() - self.defined:
            wandb.define_metric(name, step_metric=STEP)
        self.defined |= {STEP, *scalars}
        wandb.log({**scalars, STEP: step})

    def close(self) -> None:
        pass
