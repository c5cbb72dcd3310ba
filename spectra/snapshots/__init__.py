"""The on-disk run directory: manifest, frozen weights, one safetensors file per step.

::

    runs/<run>/manifest.json              format, run, method, model, targets, steps, finished, ...
    runs/<run>/frozen.safetensors         frozen tensors of low-rank layers, written once
    runs/<run>/step_00000010.safetensors  the trainable tensors of every target at step 10
    runs/<run>/train_log.parquet          step, loss, reg_loss, grad_norm, lr (from the tracker)

Tensor keys are ``"<module>/<part>"`` (see :mod:`spectra.factors` for the parts of each kind).
A target is usually one module; a slice of a fused projection (``…c_attn[q]``) names its
``source`` module and the output ``rows`` it takes, and shares the source's tensors.
Every file is written to a temporary name and renamed into place (created with the user's
umask, like any file); the manifest lists a step only after its file is complete, so a crash
leaves the last complete state readable. Each run has an identity, ``run_id``, made when the
run directory is created (manifests of spectra 0.1 have none: their identity is ``None``).
Everything read is checked where it enters: every manifest field against its type, every
tensor against the shapes of the others, the base and the manifest.
Nothing here is ever unpickled: safetensors and JSON only.

One module per job: :mod:`.files` (the file names), :mod:`.manifest` (Manifest, Target, their
checks and JSON), :mod:`.atomic` (atomic writes, temporary files), :mod:`.train_log` (the
training log), :mod:`.writer` (RunWriter, remove_run) and :mod:`.reader` (Run, open_run).
"""

from spectra.snapshots.atomic import atomic_path, atomic_write, save_tensors
from spectra.snapshots.files import FROZEN, MANIFEST, TRAIN_LOG, step_file
from spectra.snapshots.manifest import FORMAT_VERSION, Distributed, Manifest, Target, Writer
from spectra.snapshots.reader import Run, open_run
from spectra.snapshots.train_log import LOG_COLUMNS, read_train_log, write_train_log
from spectra.snapshots.writer import RunWriter, remove_run

__all__ = [
    "FORMAT_VERSION",
    "FROZEN",
    "LOG_COLUMNS",
    "MANIFEST",
    "TRAIN_LOG",
    "Distributed",
    "Manifest",
    "Run",
    "RunWriter",
    "Target",
    "Writer",
    "atomic_path",
    "atomic_write",
    "open_run",
    "read_train_log",
    "remove_run",
    "save_tensors",
    "step_file",
    "write_train_log",
]
