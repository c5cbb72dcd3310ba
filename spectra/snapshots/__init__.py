"""The on-disk run directory: manifest, frozen weights, one safetensors file per step.

The files are named in :mod:`spectra.run_files`. Tensor keys are ``"<module>/<part>"`` (see
:mod:`spectra.factors` for the parts of each kind). A target is usually one module; a slice of
a fused projection (``…c_attn[q]``) names its ``source`` module and the output ``rows`` it
takes, and shares the source's tensors. Every file is written to a temporary name and renamed
into place (created with the user's umask, like any file; :mod:`spectra.atomic`); the
manifest lists a step only after its file is complete, so a crash leaves the last complete
state readable. Each run has an identity, ``run_id``, made when the run directory is created
(manifests of spectra 0.1 have none: their identity is ``None``). Everything read is checked
where it enters: every manifest field against its type, every tensor against the shapes of
the others, the base and the manifest. Nothing here is ever unpickled: safetensors and JSON
only.

One module per job: :mod:`.manifest` (Manifest, Target, their checks and JSON),
:mod:`.tensor_files` (safetensors files, written atomically, read lazily), :mod:`.run_writer`
(RunWriter, remove_run) and :mod:`.reader` (Run, open_run). The training log is
:mod:`spectra.train_log`.
"""

from spectra.snapshots.manifest import FORMAT_VERSION, Distributed, Manifest, Target, WritingProcess
from spectra.snapshots.reader import Run, open_run
from spectra.snapshots.run_writer import RunWriter, remove_run
from spectra.snapshots.tensor_files import read_tensors, save_tensors

__all__ = [
    "FORMAT_VERSION",
    "Distributed",
    "Manifest",
    "Run",
    "RunWriter",
    "Target",
    "WritingProcess",
    "open_run",
    "read_tensors",
    "remove_run",
    "save_tensors",
]
