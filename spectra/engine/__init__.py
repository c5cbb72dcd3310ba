"""Turns a run directory into metric rows: the step-0 SVD cache, scheduling, progress.

The SVD of every step-0 matrix is computed once and kept in a content-addressed cache
(one safetensors file per distinct W_0, keyed by a hash of its float64 bytes, checked
against its digest before use), so later steps and every other run that shares the base
weights reuse it. Each (step, layer) matrix
is one task: a module-level function of paths and one frozen :class:`Settings`, so it runs
the same in this process, in a local process pool or on any ``concurrent.futures`` executor.
Rows land in ``runs/<run>.parquet``, rewritten atomically as tasks finish, and a re-run
computes only the rows that are missing. Rows are kept only while the run directory backs
them: rows of another run identity (``run_id``), rows after a step the run was resumed
from and rows of steps or layers it no longer has are dropped. A local worker process exits
when the process that started it dies; an interrupt cancels the queued tasks and ends them.

One module per job: :mod:`.settings` (what every task receives), :mod:`.svd_cache` (the
step-0 SVD cache), :mod:`.row_metrics` (one row's metrics: the task per matrix),
:mod:`.workers` (settings checks, local process pool, Dask executor, running tasks),
:mod:`.incremental` (:class:`Engine` and :func:`compute_run`) and :mod:`.subspace` (the
singular directions of ΔW that the subspace figure compares).
"""

from spectra.engine.incremental import WRITE_EVERY_S, Engine, compute_run
from spectra.engine.row_metrics import matrix_task, principal_metrics, update_metrics, update_svd
from spectra.engine.settings import DEFAULTS, FT_RANK, Settings
from spectra.engine.svd_cache import (
    Entry,
    base_path,
    base_task,
    cached_svd,
    default_cache_dir,
    open_cache,
    weight_key,
)
from spectra.engine.workers import (
    WORKERS_PER_CORE,
    check_device,
    check_workers,
    dask_executor,
    exit_with_parent,
    local_pool,
)

__all__ = [
    "DEFAULTS", "FT_RANK", "WORKERS_PER_CORE", "WRITE_EVERY_S", "Engine", "Entry", "Settings",
    "base_path", "base_task", "cached_svd", "check_device", "check_workers", "compute_run",
    "dask_executor", "default_cache_dir", "exit_with_parent", "local_pool", "matrix_task",
    "open_cache",
    "principal_metrics", "update_metrics", "update_svd", "weight_key",
]  # fmt: skip
