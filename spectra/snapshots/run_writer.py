"""Writing a run directory: :class:`RunWriter` creates one (with a new ``run_id``) or resumes
one (keeping its identity and steps, discarding the snapshots after the step a training
resumed from), writes the frozen tensors once and one file per step, and lists a step in the
manifest only after its file is complete; :func:`remove_run` deletes a run directory, and
never any other directory."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import torch

from spectra.atomic import atomic_write, remove_temporary_files
from spectra.errors import SpectraError
from spectra.factors import check_floating
from spectra.run_files import FROZEN, MANIFEST, PARQUET, is_run_dir, step_file, step_of
from spectra.snapshots.manifest import REFERENCES_FORMAT, Manifest, WritingProcess, check_manifest
from spectra.snapshots.reader import open_run
from spectra.snapshots.references import Reference, write_references
from spectra.snapshots.tensor_files import save_tensors


def _flatten(layers: dict[str, dict[str, torch.Tensor]], where: Path) -> dict[str, torch.Tensor]:
    """The tensors of a file, keyed ``<module>/<part>``; SpectraError for one the engine would
    refuse to read (not floating point: int8 factors)."""
    for layer, parts in layers.items():
        check_floating(parts, f"{where} layer {layer}")
    return {f"{layer}/{part}": t for layer, parts in layers.items() for part, t in parts.items()}


class RunWriter:
    """Writes a run directory; with ``resume=True`` continues one that exists.

    Opening it removes the temporary files a killed writer left behind (in the run directory,
    and of its Parquet file beside it). A new run gets a new ``run_id``; a resumed one keeps its
    own. A manifest or tensor that a reader would refuse is refused here, before it is written.
    """

    def __init__(self, path: str | Path, manifest: Manifest, *, resume: bool = False):
        check_manifest(manifest)  # nothing is written that a reader would refuse
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpectraError(f"cannot create run directory {self.path}: {exc.strerror}") from None
        existing = self.path / MANIFEST
        if existing.exists() and not resume:
            raise SpectraError(f"{self.path} already holds a run; remove it or resume it")
        if existing.exists():
            old = open_run(self.path).manifest
            manifest.steps, manifest.finished = old.steps, False
            manifest.run_id, manifest.resumed = old.run_id, old.resumed
            manifest.referenced, manifest.format = old.referenced, max(manifest.format, old.format)
        else:
            manifest.run_id = manifest.run_id or uuid.uuid4().hex
        remove_temporary_files(self.path)
        remove_temporary_files(self.path.parent, of=f"{self.path.name}{PARQUET}")
        manifest.writer = WritingProcess.this_process()
        self.manifest = manifest
        self._write_manifest()  # fails here, before training, if the directory is not writable

    def _write_manifest(self) -> None:
        text = self.manifest.to_json()
        atomic_write(self.path / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def discard_after(self, step: int) -> None:
        """Forget the snapshots after ``step`` (a training resumed from ``step``): first the
        manifest, then their files, so a crash in between leaves a consistent run."""
        self.manifest.steps = [s for s in self.manifest.steps if s <= step]
        self.manifest.referenced = [s for s in self.manifest.referenced if s <= step]
        self.manifest.resumed = [*self.manifest.resumed, step]
        self._write_manifest()
        for path in self.path.glob("step_*"):
            number = step_of(path.name)
            if number is not None and number > step:
                path.unlink(missing_ok=True)

    def write_frozen(self, layers: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write the frozen tensors (``{layer: {"base": W}}``) once."""
        save_tensors(self.path / FROZEN, _flatten(layers, self.path / FROZEN))

    def write_step(self, step: int, layers: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write the trainable tensors of every target at ``step`` and list the step."""
        if step in self.manifest.steps:
            return
        save_tensors(self.path / step_file(step), _flatten(layers, self.path / step_file(step)))
        self.manifest.steps = sorted({*self.manifest.steps, step})
        self._write_manifest()

    def write_references(self, step: int, tensors: dict[str, Reference]) -> None:
        """List ``step`` as stored by reference: its tensors stay in their source files."""
        if step in self.manifest.steps:
            return
        write_references(self.path, self.manifest.run_id, step, tensors)
        self.manifest.referenced = sorted({*self.manifest.referenced, step})
        self.manifest.format = max(self.manifest.format, REFERENCES_FORMAT)
        self.manifest.steps = sorted({*self.manifest.steps, step})
        self._write_manifest()

    def finish(self, **extra) -> None:
        """Mark training as finished (followers stop waiting)."""
        self.manifest.finished = True
        self.manifest.extra.update(extra)
        self._write_manifest()


def remove_run(path: str | Path) -> None:
    """Delete the run directory ``path`` if it holds a run (never any other directory)."""
    path = Path(path)
    if not is_run_dir(path):
        return
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise SpectraError(f"cannot remove the run directory {path}: {exc.strerror}") from None
