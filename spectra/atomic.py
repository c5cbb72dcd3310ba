"""Atomic file writing (no torch): every file spectra writes is written to a new temporary file
beside its place (``.<name>.<random>.tmp``, created with the user's umask like any file) and
renamed into place, so a crash leaves the old file or the new one, never half of one; a
symlink in that place is written through (its target is replaced), unless ``follow=False``
(the symlink itself is replaced: the SVD cache). The temporary files a killed writer left
behind (spectra's, and the ``.tmpXXXXXX`` files safetensors renames onto them) are removed by
:func:`remove_temporary_files`: when the run is opened for writing again, when the engine
opens a finished or abandoned run, and in the SVD cache once they are old. Failures to write
become SpectraError."""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from spectra.errors import SpectraError

# spectra's temporary files (``.<name>.<random>.tmp``) and safetensors' (``.tmpXXXXXX``)
TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp|\.tmp[0-9A-Za-z]{6}")


@contextmanager
def atomic_path(path: str | Path, follow: bool = True) -> Iterator[Path]:
    """A new temporary file beside ``path`` to write, renamed to ``path`` when the block ends.

    The file is created like any other (mode 0666 minus the umask); a symlink at ``path`` is
    written through (its target is replaced), or with ``follow=False`` replaced itself.
    Failures to write become SpectraError.
    """
    path = Path(path)
    if follow and path.is_symlink():
        path = Path(os.path.realpath(path))
    tmp = None
    try:
        tmp = _new_file(path)
        mode = os.stat(tmp).st_mode  # what the umask made of 0666
        yield tmp
        if os.stat(tmp).st_mode != mode:  # some writers (safetensors) make their own file
            os.chmod(tmp, stat.S_IMODE(mode))
        os.replace(tmp, path)
    except OSError as exc:
        raise SpectraError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _new_file(path: Path) -> Path:
    """An empty file ``.<name>.<random>.tmp`` that did not exist, beside ``path``."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def check_writable(path: str | Path) -> None:
    """SpectraError now (not after a long computation) unless ``path`` can be written the way
    :func:`atomic_write` writes it: a new file beside it, renamed. ``path`` is not touched."""
    path = Path(path)
    if path.is_symlink():  # written through: the file goes beside the target
        path = Path(os.path.realpath(path))
    tmp = moved = None
    try:
        tmp = _new_file(path)
        moved = _new_file(path)
        os.replace(tmp, moved)
    except OSError as exc:
        raise SpectraError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        for leftover in (tmp, moved):
            if leftover is not None:
                leftover.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], None], follow: bool = True) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    with atomic_path(path, follow) as tmp:
        write(tmp)


def remove_temporary_files(directory: Path, of: str | None = None, older_than: float = 0) -> None:
    """Remove the temporary files a killed writer left in ``directory``: spectra's (of the
    file ``of`` only, when given) and safetensors' own (``.tmpXXXXXX``, which it renames onto
    spectra's), last changed at least ``older_than`` seconds ago. Best effort: a file that
    cannot be removed stays."""
    pattern = TEMPORARY if of is None else re.compile(rf"\.{re.escape(of)}\.[0-9a-f]{{8}}\.tmp")
    try:
        names = [name for name in os.listdir(directory) if pattern.fullmatch(name)]
    except OSError:
        return
    now = time.time()
    for name in names:
        try:
            if now - os.lstat(Path(directory) / name).st_mtime >= older_than:
                os.unlink(Path(directory) / name)
        except OSError:
            continue
