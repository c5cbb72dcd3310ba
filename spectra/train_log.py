"""The training log of a run, ``train_log.parquet`` in its run directory (no torch): one row
per step with the standard columns (:data:`LOG_COLUMNS`: the integer step, then loss,
reg_loss, grad_norm and lr as floats) and any extra float columns after them, sorted by name;
written atomically, checked when read. :func:`from_trainer` turns a transformers ``Trainer``
log dict into its values."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from spectra.atomic import atomic_write
from spectra.errors import SpectraError
from spectra.run_files import TRAIN_LOG

if TYPE_CHECKING:  # pandas loads when a log is read, not with every run directory
    import pandas as pd

LOG_COLUMNS = ("step", "loss", "reg_loss", "grad_norm", "lr")


def write_train_log(run_dir: Path, rows: dict[int, dict[str, float]]) -> None:
    """train_log.parquet: one row per step, the standard columns first, then extras, sorted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    extras = sorted({k for row in rows.values() for k in row} - set(LOG_COLUMNS))
    steps = sorted(rows)
    columns = {"step": pa.array(steps, pa.int64())}
    for name in (*LOG_COLUMNS[1:], *extras):
        columns[name] = pa.array([rows[s].get(name) for s in steps], pa.float64())
    table = pa.table(columns)
    atomic_write(Path(run_dir) / TRAIN_LOG, lambda tmp: pq.write_table(table, tmp))


def read_train_log(run_dir: str | Path) -> pd.DataFrame | None:
    """The run's training log (a ``step`` column, then float columns), or None if it has none."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(run_dir) / TRAIN_LOG
    if not path.is_file():
        return None
    try:
        log = pq.read_table(path).replace_schema_metadata(None).to_pandas()  # no pandas metadata
    except (pa.ArrowException, OSError) as exc:
        raise SpectraError(f"{path} is not a readable train log: {exc}") from None
    if "step" not in log or not pd.api.types.is_integer_dtype(log["step"]):
        raise SpectraError(f"{path} is not a spectra train log (no integer step column)")
    return log


def from_trainer(logs: dict) -> dict[str, float]:
    """A Trainer log dict as training-log values: learning_rate → lr, the rest as is."""
    return {("lr" if k == "learning_rate" else k): v for k, v in (logs or {}).items()}


def train_logs(run_dirs: dict[str, str | Path | None]) -> dict[str, pd.DataFrame]:
    """{run: training log} of the runs (name → run directory) that have one."""
    logs = {run: read_train_log(path) if path else None for run, path in run_dirs.items()}
    return {run: log for run, log in logs.items() if log is not None}
