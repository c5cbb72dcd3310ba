"""Safetensors files of a Hub repository, read by byte range through spectra's cache.

:class:`RemoteFile` is one file: its header is fetched first (8 bytes, then the JSON) and
checked (every tensor's offsets contiguous, sized by its dtype and shape, ending at the file's
size on the Hub). :class:`RemoteTensors` gives a repository's files the interface of
:class:`~spectra.importer.tensors.Tensors` (names and shapes from the headers, a tensor read
from its cached bytes, the SHA-256 of each tensor read); :meth:`RemoteTensors.fetch` fetches
the ranges of many tensors at once, adjacent ones merged into one request and only what the
cache lacks, with a progress bar of the bytes fetched against the size of the repository.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from spectra.errors import SpectraError
from spectra.hub.fetch import fetch_range
from spectra.hub.intervals import Interval, merge
from spectra.hub.store import Entry
from spectra.importer.tensors import tensor_sha256
from spectra.progress import bytes_bar
from spectra.snapshots.raw import HEADER_LENGTH, header_length, parse_header, tensor_from_bytes


@dataclass(frozen=True)
class HubFile:
    """A file of a repository at a commit, as the Hub describes it."""

    repo_id: str
    commit: str
    filename: str
    size: int
    sha256: str | None  # of an LFS file
    blob_id: str | None  # the git blob id

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.commit[:12]}/{self.filename}"  # as RemoteTensors.at


class RemoteFile:
    """One safetensors file on the Hub: its checked header, its tensors read through the cache."""

    def __init__(self, file: HubFile, url: str, cache: Path):
        self.file, self.url, self.label = file, url, file.label
        self.entry = Entry(cache, file.sha256 or file.blob_id or "", file.size)
        self.header = self._header()
        try:
            self.slots = parse_header(self.header, file.size, self.label)
        except SpectraError:
            self.entry.clear()  # what was served is no header: fetch it again next time
            raise

    def _header(self) -> bytes:
        self.ensure([(0, HEADER_LENGTH)])
        try:
            length = header_length(self.entry.read(0, HEADER_LENGTH), self.file.size, self.label)
        except SpectraError:
            self.entry.clear()
            raise
        self.ensure([(HEADER_LENGTH, HEADER_LENGTH + length)])
        return self.entry.read(0, HEADER_LENGTH + length)

    def missing(self, wanted: list[Interval]) -> int:
        return sum(end - start for start, end in self.entry.missing(wanted))

    def ensure(self, wanted: list[Interval], on_bytes: Callable[[int], None] = lambda n: None):
        """Fetch the parts of ``wanted`` the cache lacks (merged); check the whole file's hash
        once every byte of it is held."""
        with self.entry.lock():
            for start, end in self.entry.missing(wanted):
                piece = self.entry.piece_for(start)
                fetch_range(self.url, piece, end, self.file.size, self.label, on_bytes)
            self.entry.check_whole(self.file.sha256, self.file.blob_id, self.label)

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name``, from the cache (fetched first if need be)."""
        slot = self.slots[name]
        self.ensure([(slot.start, slot.end)])
        return tensor_from_bytes(name, slot, self.entry.read(slot.start, slot.end), self.label)


class RemoteTensors:
    """The tensors of a repository's safetensors files, by name (see the module docstring)."""

    def __init__(self, where: str, files: list[RemoteFile], repo_size: int):
        self.where, self.repo_size = where, repo_size
        first = files[0].file
        self.at = f"{first.repo_id}@{first.commit[:12]}"  # the files' labels are <at>/<name>
        self.source = f"hf://{first.repo_id}@{first.commit}"
        self.remote = {f.label: f for f in files}
        self.files: dict[str, str] = {}  # tensor → its file's label
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            for name, slot in file.slots.items():
                if name in self.files:
                    raise SpectraError(f"{file.label}: tensor {name} is also in {self.files[name]}")
                self.files[name], self.shapes[name] = file.label, slot.shape
        self.read_files: list[str] = []
        self.digests: dict[str, dict[str, str]] = {}

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (its bytes fetched now unless cached)."""
        label = self.files[name]
        if label not in self.read_files:
            self.read_files.append(label)
        tensor = self.remote[label].tensor(name)
        self.digests.setdefault(label, {})[name] = tensor_sha256(tensor)
        return tensor

    def fetch(self, names: list[str], progress: bool = False) -> None:
        """Fetch the bytes of tensors ``names`` that the cache lacks, adjacent ranges merged."""
        wanted: dict[str, list[Interval]] = {}
        for name in names:
            slot = self.remote[self.files[name]].slots[name]
            wanted.setdefault(self.files[name], []).append((slot.start, slot.end))
        wanted = {label: merge(ranges) for label, ranges in wanted.items()}
        if not any(self.remote[label].missing(ranges) for label, ranges in wanted.items()):
            return
        with bytes_bar(
            f"fetching {self.where}", self.repo_size, "of the repository", progress
        ) as advance:
            for label, ranges in wanted.items():
                self.remote[label].ensure(ranges, advance)

    def records(self) -> dict[str, dict]:
        """What of each file was read: its size and hash on the Hub, the SHA-256 of its header
        and of each tensor read (as a local file's record)."""
        return {
            label: {
                "size": self.remote[label].file.size,
                "hub_sha256": self.remote[label].file.sha256 or self.remote[label].file.blob_id,
                "header_sha256": hashlib.sha256(self.remote[label].header).hexdigest(),
                "tensors": self.digests.get(label, {}),
            }
            for label in self.read_files
        }
