"""Spectra's own cache of byte ranges of Hub files: ``$SPECTRA_CACHE/hub/<file hash>/``.

An entry is addressed by the file's content hash on the Hub (the LFS SHA-256, or the git blob
id of a file kept in git), so every repository and revision holding the same file shares it.
It holds pieces: a file named by an offset holds the file's bytes from that offset on, as far
as they have been fetched. A fetch that stops midway leaves a shorter piece, and the next
fetch of those bytes extends it (resume). A lock per entry keeps two processes from writing
one piece. Once the pieces cover the whole file, the file's hash is checked (and ``verified``
marks it); a mismatch removes the entry.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from spectra.errors import SpectraError
from spectra.hub.intervals import Interval, merge, subtract

KEY = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git blob id or an LFS SHA-256
VERIFIED = "verified"
CHUNK = 1 << 20


class Entry:
    """The cached ranges of one file of ``size`` bytes whose content hash is ``key``."""

    def __init__(self, root: Path, key: str, size: int):
        if not KEY.fullmatch(key):
            raise SpectraError(f"the Hub gave {key!a} as a file's hash, not a hex SHA-1 or SHA-256")
        self.key, self.size = key, size
        self.path = Path(root) / "hub" / key

    def pieces(self) -> dict[int, Path]:
        """{offset: piece file}, by offset."""
        if not self.path.is_dir():
            return {}
        found = {int(p.name): p for p in self.path.iterdir() if p.name.isdigit()}
        return dict(sorted(found.items()))

    def coverage(self) -> list[Interval]:
        """The byte ranges held."""
        return merge((start, start + p.stat().st_size) for start, p in self.pieces().items())

    def missing(self, wanted: list[Interval]) -> list[Interval]:
        """The parts of ``wanted`` not held yet."""
        return subtract(wanted, self.coverage())

    def piece_for(self, start: int) -> Path:
        """The piece to append bytes from ``start`` to: the one ending there, else a new one."""
        for offset, piece in self.pieces().items():
            if offset + piece.stat().st_size == start:
                return piece
        return self.path / str(start)

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file, from the pieces; SpectraError if they are not held."""
        out = bytearray()
        for offset, piece in self.pieces().items():
            lo, hi = max(start + len(out), offset), min(end, offset + piece.stat().st_size)
            if lo != start + len(out) or lo >= hi:
                continue
            with piece.open("rb") as f:
                f.seek(lo - offset)
                out += f.read(hi - lo)
        if len(out) != end - start:
            raise SpectraError(f"{self.path}: bytes {start}-{end} are not all in the cache")
        return bytes(out)

    def check_whole(self, sha256: str | None, blob_id: str | None, label: str) -> bool:
        """Once every byte is held: whether they hash to the file's LFS SHA-256 (or git blob id).
        False while bytes are missing or when the Hub gave no hash."""
        if (self.path / VERIFIED).is_file():
            return True
        if self.coverage() != [(0, self.size)] or not (sha256 or blob_id):
            return False
        digest = hashlib.sha256() if sha256 else hashlib.sha1(b"blob %d\0" % self.size)
        for start in range(0, self.size, CHUNK):
            digest.update(self.read(start, min(start + CHUNK, self.size)))
        if digest.hexdigest() != (sha256 or blob_id):
            self.clear()
            raise SpectraError(
                f"{label}: the bytes served do not hash to the file's hash on the Hub "
                f"({sha256 or blob_id}): tampered or corrupt; they were removed from the cache"
            )
        (self.path / VERIFIED).touch()
        return True

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    @contextmanager
    def lock(self):
        """This entry, for this process alone (other processes wait)."""
        from huggingface_hub.utils import WeakFileLock

        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpectraError(f"cannot use the cache {self.path.parent}: {exc.strerror}") from None
        with WeakFileLock(self.path.with_name(f"{self.key}.lock")):
            yield self
