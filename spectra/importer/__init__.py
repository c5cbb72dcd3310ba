"""Post-hoc analysis: checkpoints you already have → a run directory (``spectra import``).

Trainer output folders (``checkpoint-N/``), peft adapter folders (LoRA, PiSSA, DoRA,
AdaLoRA), full-weight model folders (single or sharded safetensors) and ``torch.save`` step
files become a run directory in the format the tracker writes, so ``compute``, ``analyze``,
``plot``, resume and Dask work unchanged. Only the target tensors are read, one at a time.

One module per job: :mod:`.tensors` (lazy weight files), :mod:`.model` (full-weight
folders and files), :mod:`.adapter` (peft adapter folders), :mod:`.trainer` (Trainer output
folders), :mod:`.layer` (one adapted layer rebuilt by peft), :mod:`.align` (base ↔
checkpoint key names), :mod:`.sources` (which checkpoints, which steps), :mod:`.plan`
(layers and tensors per step) and :mod:`.staging` (the staged run directory, checksums).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spectra.errors import Interrupted, SpectraError
from spectra.importer.model import open_model
from spectra.importer.plan import plan_import
from spectra.importer.sources import default_name, find_checkpoints
from spectra.importer.staging import check_destination, checksums, staged, write_run_dir
from spectra.importer.trainer import train_log, trainer_state
from spectra.progress import progress_bar

__all__ = ["compare_runs", "import_run"]


def import_run(
    sources: Sequence[str | Path],
    base: str | Path,
    *,
    out: str | Path = "runs",
    name: str | None = None,
    targets: Sequence[str] | None = None,
    method: str | None = None,
    steps: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Build the run directory ``out/<name>`` from checkpoints of a fine-tuning of ``base``.

    Returns its path. SpectraError (and nothing written) for anything that cannot be imported.
    """
    sources = [Path(s) for s in sources]
    run_dir = Path(out) / (name or default_name(sources))
    check_destination(run_dir, overwrite)
    checkpoints = find_checkpoints(sources, steps)
    base_model = open_model(Path(base))
    job = plan_import(checkpoints, base_model, targets or None, method)
    origin = {0: base_model} | {c.step: c.reader for c in checkpoints}
    state = trainer_state(checkpoints[-1].path)  # the training log, of a Trainer run
    log = train_log(state) if state else {}
    with progress_bar(f"importing {run_dir.name}", len(origin), progress) as advance:

        def provenance() -> dict:
            return {
                "base": str(base_model.path.resolve()),
                "method": job.method,
                "steps": {
                    str(step): {
                        "source": str(reader.path.resolve()),
                        "files": checksums(reader.files_read(), reader.tensors),
                    }
                    for step, reader in origin.items()
                },
                **({"train_log": checksums([state], base_model.tensors)} if state else {}),
                **job.details(),
            }

        frozen = job.frozen()
        with staged(run_dir, overwrite) as tmp:
            manifest = job.manifest(run_dir.name, str(base))
            manifest.ordinal_steps = not all(c.numbered for c in checkpoints)
            write_run_dir(tmp, manifest, frozen, job.steps(), log, provenance, advance)
    return run_dir


def compare_runs(
    base: str | Path,
    finetuned: Sequence[str | Path],
    *,
    out: str | Path = "runs",
    targets: Sequence[str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Import each fine-tuned source as its own run (named after its folder) and compute it;
    return the Parquet files."""
    from spectra.engine import compute_run

    names = [default_name([Path(s)]) for s in finetuned]
    seen = {}
    for source, run in zip(finetuned, names, strict=True):
        if run in seen:
            raise SpectraError(f"{seen[run]} and {source} would both be run {run}; rename one")
        seen[run] = source
        check_destination(Path(out) / run, overwrite)
    paths = []
    for source, run in zip(finetuned, names, strict=True):
        try:
            run_dir = import_run([source], base, out=out, name=run, targets=targets,
                                 overwrite=overwrite, progress=True)  # fmt: skip
            paths.append(compute_run(run_dir))
        except KeyboardInterrupt:
            done = f"{', '.join(str(p) for p in paths)} done; " if paths else ""
            raise Interrupted(
                f"{done}{run} stopped; spectra compare … --overwrite starts again"
            ) from None
    return paths
