"""Post-hoc analysis: checkpoints you already have → a run directory (``spectra import``).

Trainer output folders (``checkpoint-N/``), peft adapter folders (LoRA, PiSSA, DoRA,
AdaLoRA), full-weight model folders (single or sharded safetensors) and ``torch.save`` step
files become a run directory in the format the tracker writes, so ``compute``, ``analyze``,
``plot``, resume and Dask work unchanged. Only the target tensors are read, one at a time.

One module per job: :mod:`.tensors` (lazy weight files), :mod:`.model` (full-weight
folders and files), :mod:`.adapter` (peft adapter folders), :mod:`.trainer` (Trainer output
folders), :mod:`.layer` (one adapted layer rebuilt by peft), :mod:`.align` (base ↔
checkpoint key names), :mod:`.sources` (which checkpoints, which steps), :mod:`.plan`
(layers and tensors per step), :mod:`.references` (which steps stay in their source files),
:mod:`.provenance` (what is recorded of each source) and :mod:`.staging` (the staged run
directory, checksums). Hub ids (``org/name[@rev]``) are resolved by :mod:`spectra.hub`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spectra.errors import Interrupted, SpectraError
from spectra.importer.model import Model, open_model
from spectra.importer.plan import plan_import
from spectra.importer.provenance import files_of, source_of
from spectra.importer.references import ByReference
from spectra.importer.sources import find_checkpoints
from spectra.importer.staging import check_destination, checksums, staged, write_run_dir
from spectra.importer.trainer import train_log, trainer_state
from spectra.progress import progress_bar
from spectra.snapshots.manifest import check_run_name

__all__ = ["compare_runs", "import_run"]


def _open_base(base: str | Path | Model) -> Model:
    """The base model: already opened, or a path or Hub id."""
    from spectra.hub import open_source

    if isinstance(base, Model):
        return base
    opened = open_source(base)
    return opened if isinstance(opened, Model) else open_model(opened)


def import_run(
    sources: Sequence[str | Path | Model],
    base: str | Path | Model,
    *,
    out: str | Path = "runs",
    name: str | None = None,
    targets: Sequence[str] | None = None,
    method: str | None = None,
    steps: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    copy: bool = False,
) -> Path:
    """Build the run directory ``out/<name>`` from checkpoints of a fine-tuning of ``base``
    (paths or Hub ids; see :mod:`spectra.hub`). Steps of full weights in local safetensors
    files are stored by reference unless ``copy`` (see :mod:`.references`).

    Returns its path. SpectraError (and nothing written) for anything that cannot be imported.
    """
    from spectra.hub import fetch_reads, open_source, run_names

    if not sources:
        raise SpectraError("no sources to import")
    first = sources[0].path if isinstance(sources[0], Model) else sources[0]
    name = name or run_names([first])[0]
    check_run_name(name)  # the rule every manifest is read with: no run that compute refuses
    run_dir = Path(out) / name
    check_destination(run_dir, overwrite)
    checkpoints = find_checkpoints(
        [s if isinstance(s, Model) else open_source(s) for s in sources], steps
    )
    base_model = _open_base(base)
    job = plan_import(checkpoints, base_model, targets or None, method)
    fetch_reads(job.reads(), progress)
    origin = {0: base_model} | {c.step: c.reader for c in checkpoints}
    references = ByReference(job, {} if copy else origin)
    state = trainer_state(checkpoints[-1].path)  # the training log, of a Trainer run
    log = train_log(state) if state else {}
    with progress_bar(f"importing {run_dir.name}", len(origin), progress) as advance:

        def provenance() -> dict:
            return {
                "base": source_of(base_model),
                "method": job.method,
                "steps": {
                    str(step): {"source": source_of(reader), "files": files_of(reader)}
                    for step, reader in origin.items()
                },
                **({"train_log": checksums([state], base_model.tensors)} if state else {}),
                **job.details(),
            }

        frozen = job.frozen()
        manifest = job.manifest(run_dir.name, str(getattr(base, "path", base)))
        manifest.ordinal_steps = not all(c.numbered for c in checkpoints)
        with staged(run_dir, overwrite) as tmp:
            write_run_dir(tmp, manifest, frozen, job.steps(), log, provenance, advance, references)
    return run_dir


def compare_runs(
    base: str | Path,
    finetuned: Sequence[str | Path],
    *,
    out: str | Path = "runs",
    targets: Sequence[str] | None = None,
    overwrite: bool = False,
    copy: bool = False,
) -> list[Path]:
    """Import each fine-tuned source (paths or Hub ids) as its own run of the one base, and
    compute it; return the Parquet files. Every destination is checked and every source
    resolved before anything is imported, and the base is opened (and fetched) once."""
    from spectra.engine import compute_run
    from spectra.hub import open_source, run_names

    names = run_names(finetuned)
    for run in names:
        check_destination(Path(out) / run, overwrite)
    base_model = _open_base(base)
    opened = [open_source(s) for s in finetuned]
    paths = []
    for source, run in zip(opened, names, strict=True):
        try:
            run_dir = import_run([source], base_model, out=out, name=run, targets=targets,
                                 overwrite=overwrite, progress=True, copy=copy)  # fmt: skip
            paths.append(compute_run(run_dir))
        except KeyboardInterrupt:
            done = f"{', '.join(str(p) for p in paths)} done; " if paths else ""
            raise Interrupted(
                f"{done}{run} stopped; spectra compare … --overwrite starts again"
            ) from None
    return paths
