"""What ``overwrite`` may delete: a run spectra wrote, known by its identity, and nothing else.

A run is its directory ``runs/<run>/`` and its Parquet file ``runs/<run>.parquet``. Replacing
it removes the directory only when it is an empty folder or a spectra run directory (its
manifest reads; not a symlink) that holds no file spectra does not write, and the Parquet file
only when it is a spectra run file of that same run: the identity (``run_id``) in its metadata
is the run directory's, or, with no run directory left, its run name is the run's. Anything
else at those places (a file of another kind, a folder, another run's rows, a user's notes in
the run directory) is refused with one line before anything is removed or written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from spectra.errors import SpectraError
from spectra.run_files import MANIFEST, is_run_file, parquet_path
from spectra.snapshots import Manifest, open_run


def _run_dir_manifest(run_dir: Path) -> Manifest | None:
    """The manifest of the run directory ``run_dir`` (None for an empty folder); SpectraError
    unless spectra wrote all of it."""
    if run_dir.is_symlink() or not run_dir.is_dir():
        why = "it is a symlink" if run_dir.is_symlink() else "it is not a folder"
    elif not any(run_dir.iterdir()):
        return None
    elif others := sorted(p.name for p in run_dir.iterdir() if not is_run_file(p.name)):
        why = f"it holds {others[0]!r}, which spectra did not write"
    elif not (run_dir / MANIFEST).is_file():
        why = f"it has no {MANIFEST}"
    else:
        try:
            return open_run(run_dir).manifest
        except SpectraError as exc:
            why = f"its manifest is unreadable: {exc}"
    raise SpectraError(f"{run_dir} is not a spectra run directory ({why}); not replacing it")


def _check_run_file(parquet: Path, run_dir: Path, manifest: Manifest | None, run: str) -> None:
    """SpectraError unless ``parquet`` is the spectra run file of the run being replaced."""
    from spectra.store import run_metadata  # pandas and pyarrow: only when there is a run file

    if parquet.is_dir() and not parquet.is_symlink():
        raise SpectraError(f"{parquet} is a folder, not a spectra run file; not replacing it")
    try:
        meta = run_metadata(parquet)
    except SpectraError:
        raise SpectraError(f"{parquet} is not a spectra run file; not replacing it") from None
    if manifest is not None:
        ours = meta.get("run_id") == manifest.run_id
        ours = ours and (manifest.run_id is not None or meta["run"] == manifest.run)
        whose = f"the run in {run_dir} (id {manifest.run_id})"
    else:
        ours, whose = meta["run"] == run, f"run {run!r}"
    if not ours:
        raise SpectraError(
            f"{parquet} holds run {meta['run']!r} (id {meta.get('run_id')}), not {whose}; "
            "not replacing it"
        )


def check_replaceable(run_dir: str | Path, run: str) -> None:
    """SpectraError (one line) unless everything at ``run_dir`` and its Parquet file is the run
    spectra wrote there, which an overwrite by run ``run`` may remove."""
    run_dir = Path(run_dir)
    parquet = parquet_path(run_dir)
    manifest = None
    if run_dir.exists() or run_dir.is_symlink():
        manifest = _run_dir_manifest(run_dir)
    if parquet.exists() or parquet.is_symlink():
        _check_run_file(parquet, run_dir, manifest, run)


def replace_run(run_dir: str | Path, run: str) -> None:
    """Remove the run at ``run_dir`` (its Parquet file, then its directory) for a new run
    ``run``, after :func:`check_replaceable`; SpectraError when it cannot be removed."""
    run_dir = Path(run_dir)
    check_replaceable(run_dir, run)
    try:
        parquet_path(run_dir).unlink(missing_ok=True)
        if run_dir.exists():
            shutil.rmtree(run_dir)
    except OSError as exc:
        raise SpectraError(f"cannot remove the run {run_dir}: {exc.strerror}") from None
