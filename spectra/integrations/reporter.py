"""The latest metrics in TensorBoard and W&B while training runs, at the step they belong to.

In inline mode the metrics of step s land in ``runs/<run>.parquet`` some time after step s.
:class:`Reporter` watches that file and, once every tracked layer of a step has its row, sends
the per-module layer means of the reported columns (:data:`spectra.columns.REPORTED`) under
``spectra/<metric>/<module>`` (and ``spectra/<metric>/all``) to the trackers that transformers'
``report_to`` names:

- TensorBoard: ``SummaryWriter.add_scalar(tag, value, global_step=s)`` takes any step, so
  the values sit at step s although the Trainer is already further. The events go to
  ``$TENSORBOARD_LOGGING_DIR`` when set (the folder the Trainer's own TensorBoard callback
  uses then), else to ``<output_dir>/runs/spectra-<run>``, beside the Trainer's own
  ``<output_dir>/runs/<date>_<host>``: ``tensorboard --logdir <output_dir>/runs`` shows both.
- W&B: its own step only grows, so spectra logs ``spectra/step`` with the values and declares
  it their x-axis (``wandb.define_metric(name, step_metric="spectra/step")``), in the W&B run
  the Trainer's W&B callback started. Without wandb installed or a run, nothing is sent.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from spectra.columns import REPORTED
from spectra.integrations import PREFIX
from spectra.integrations.tensorboard import TensorBoard
from spectra.integrations.wandb import WandB

BACKENDS = ("tensorboard", "wandb")


def module_means(rows: pd.DataFrame) -> dict[str, float]:
    """``spectra/<metric>/<module>`` and ``spectra/<metric>/all``: the layer means of one step's
    rows; metrics that are null for every layer (κ(W_p) of FT) are left out."""
    groups = [("all", rows), *rows.groupby("module", sort=True)]
    scalars = {}
    for module, group in groups:
        for metric in REPORTED:
            value = group[metric].mean()
            if not math.isnan(value):
                scalars[f"{PREFIX}/{metric}/{module}"] = float(value)
    return scalars


class Reporter:
    """Sends each step of ``parquet`` to the ``sinks`` once all ``layers`` rows have landed."""

    def __init__(self, parquet: Path, layers: int, sinks: list):
        self.parquet, self.layers, self.sinks = Path(parquet), layers, sinks
        self.reported: set[int] = set()
        self._seen: float | None = None

    @classmethod
    def for_trainer(cls, args, parquet: Path, layers: int, run: str) -> Reporter | None:
        """A reporter to the backends of the Trainer's ``report_to``, or None if it names none."""
        wanted = [b for b in BACKENDS if b in (getattr(args, "report_to", None) or [])]
        if not wanted:
            return None
        sinks: list = []
        if "tensorboard" in wanted:
            default = Path(args.output_dir) / "runs" / f"{PREFIX}-{run}"
            sinks.append(TensorBoard(Path(os.environ.get("TENSORBOARD_LOGGING_DIR") or default)))
        if "wandb" in wanted:
            sinks.append(WandB())
        return cls(parquet, layers, sinks)

    def poll(self, final: bool = False) -> None:
        """Report the steps completed since the last call (every step left, when ``final``)."""
        try:
            seen = self.parquet.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if seen == self._seen and not final:
            return
        self._seen = seen
        columns = ["step", "module", *REPORTED]
        rows = pq.read_table(self.parquet, columns=columns).to_pandas()
        counts = rows.groupby("step").size()
        done = counts.index if final else counts.index[counts >= self.layers]
        for step in sorted(set(done) - self.reported):
            scalars = module_means(rows[rows["step"] == step])
            for sink in self.sinks:
                sink.log(int(step), scalars)
            self.reported.add(step)

    def close(self) -> None:
        """Report what is left and close the sinks."""
        self.poll(final=True)
        for sink in self.sinks:
            sink.close()
