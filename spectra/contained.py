"""Paths that files name stay inside their folder; only regular files and folders are read.

A path read from a file (a shard of a ``*.index.json``, the weights or config of an adapter or
model folder, a ``checkpoint-N`` of a Trainer output folder) must resolve, after symlinks,
inside the folder that names it: ``../x``, an absolute path or a symlink to elsewhere is
refused. The one exception is the Hugging Face cache, whose snapshot folders link every file
to ``../../blobs/`` of the same repository. What is read must be a regular file or a folder,
which ``os.stat`` says before anything is opened: a FIFO (its reader would wait forever), a
device or socket, a dangling link or a symlink loop is refused.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePath

from spectra.errors import SpectraError

FILE, FOLDER = "file", "folder"
HF_SNAPSHOTS, HF_BLOBS = "snapshots", "blobs"  # <repo>/snapshots/<revision>/… → <repo>/blobs/…


def _stat(path: Path, shown: object) -> os.stat_result | None:
    """``os.stat(path)``; None when nothing is there; SpectraError for a loop or a bad link."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise SpectraError(f"{shown}: a symlink to nothing ({os.readlink(path)})") from None
        return None
    except ValueError:  # a NUL byte
        raise SpectraError(f"{str(shown)!a}: not a valid path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpectraError(f"{shown}: a symlink loop") from None
        raise SpectraError(f"{shown}: cannot be read ({exc.strerror})") from None


def _check_kind(info: os.stat_result, kind: str | None, shown: object) -> None:
    is_file, is_dir = stat.S_ISREG(info.st_mode), stat.S_ISDIR(info.st_mode)
    if not (is_file or is_dir):
        what = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device, socket or other special file"
        raise SpectraError(f"{shown}: {what}, not a file or folder; spectra does not read it")
    if kind == FILE and not is_file:
        raise SpectraError(f"{shown}: a folder, expected a file")
    if kind == FOLDER and not is_dir:
        raise SpectraError(f"{shown}: a file, expected a folder")


def source(path: str | Path, kind: str | None = None) -> Path:
    """``path`` given by the user (it may be a symlink), checked to be an existing regular file
    or folder (``kind``: FILE or FOLDER, None for either); SpectraError otherwise."""
    path = Path(path)
    info = _stat(path, path)
    if info is None:
        raise SpectraError(f"{path}: no such file or folder")
    _check_kind(info, kind, path)
    return path


def _roots(folder: Path) -> list[Path]:
    """Where the files of ``folder`` (resolved) may live: in it, and for a folder in a
    snapshot of the Hugging Face cache, the blobs of its repository."""
    roots = [folder]
    for parent in folder.parents:
        if parent.name == HF_SNAPSHOTS and (parent.parent / HF_BLOBS).is_dir():
            roots.append(parent.parent / HF_BLOBS)
            break
    return roots


def inside(folder: str | Path, name: str | os.PathLike, kind: str | None = FILE) -> Path:
    """``folder/name``, checked to exist, to be a regular file (or a folder, see ``kind``) and
    to lie inside ``folder`` after symlinks; SpectraError naming the first problem."""
    folder = Path(folder)
    shown = folder / name
    relative = PurePath(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise SpectraError(f"{folder}: {os.fspath(name)!r} is not a name inside the folder")
    info = _stat(shown, shown)
    if info is None:
        raise SpectraError(f"{shown}: no such file")
    _check_kind(info, kind, shown)
    real = Path(os.path.realpath(shown))
    roots = _roots(Path(os.path.realpath(folder)))
    if not any(real.is_relative_to(root) for root in roots):
        raise SpectraError(f"{shown}: links to {real}, outside {folder}; not followed")
    return shown


def find_inside(folder: str | Path, name: str, kind: str | None = FILE) -> Path | None:
    """:func:`inside`, or None when ``folder`` has no entry ``name`` at all (a dangling or
    looping link, a FIFO or a file outside is refused, not taken for absent)."""
    return inside(folder, name, kind) if os.path.lexists(Path(folder) / name) else None
