"""torch.distributed.checkpoint (DCP) folders: a ``.metadata`` file and ``__R_K.distcp`` shards.

Plain DCP folders (``dcp.save``) and accelerate's FSDP ``SHARDED_STATE_DICT`` checkpoints
(``checkpoint-N/pytorch_model_fsdp_0/``, whose keys are saved under ``model.``: a key that DCP's
planner data shows nested under ``model`` is named without it). ``.metadata`` is a pickle, read
by an unpickler that admits only DCP's metadata classes (and ``torch.Size``, dtypes, layouts,
memory formats, paths) and refuses any other global. Every chunk of every tensor is checked
against the tensor's shape and against its shard file's size before anything else is read; a
tensor is then assembled from its chunks, each read from its shard by offset and length (a
``torch.save`` blob, decompressed first by torch's own stream transforms if the metadata
records any, and loaded with ``weights_only=True``). No other byte of a shard is read.
"""

from __future__ import annotations

import hashlib
import io
import math
import pathlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from spectra.contained import find_inside
from spectra.errors import SpectraError, first_line
from spectra.importer.tensors import _reason

METADATA = ".metadata"
ACCELERATE = "pytorch_model_fsdp_0"  # accelerate's folder of the (first) model's shards
WRAPPER = "model"  # accelerate saves {"model": state_dict}

_META = "torch.distributed.checkpoint.metadata"
_CLASSES = (
    "Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
    "BytesStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
)  # fmt: skip
_PATHS = {  # StorageMeta.checkpoint_id: read as a pure path (no file-system access)
    "PosixPath": pathlib.PurePosixPath, "PurePosixPath": pathlib.PurePosixPath,
    "WindowsPath": pathlib.PureWindowsPath, "PureWindowsPath": pathlib.PureWindowsPath,
}  # fmt: skip
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)


def _allowed() -> dict[tuple[str, str], object]:
    """{(module, name): object} of every global a DCP ``.metadata`` pickle may name."""
    import torch.distributed.checkpoint.filesystem as filesystem
    import torch.distributed.checkpoint.metadata as metadata
    import torch.serialization

    allowed = {(_META, name): getattr(metadata, name) for name in _CLASSES}
    allowed[filesystem.__name__, "_StorageInfo"] = filesystem._StorageInfo
    allowed["torch", "Size"] = torch.Size
    allowed["torch.serialization", "_get_layout"] = torch.serialization._get_layout
    for module in ("pathlib", "pathlib._local"):
        allowed |= {(module, name): cls for name, cls in _PATHS.items()}
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """An unpickler of DCP metadata: any global outside :func:`_allowed` is refused."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path
        self.allowed = _allowed()

    def find_class(self, module: str, name: str):
        if (module, name) in self.allowed:
            return self.allowed[module, name]
        value = getattr(torch, name, None) if module == "torch" else None
        if isinstance(value, _TORCH_VALUES):
            return value
        raise SpectraError(
            f"{self.path}: refusing to unpickle {module}.{name} (not a DCP metadata class)"
        )


def read_metadata(path: Path):
    """The DCP ``Metadata`` in ``path``, unpickled with the allowlist; SpectraError otherwise."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f, path).load()
    except SpectraError:
        raise
    except Exception as exc:  # a damaged pickle raises many kinds
        raise SpectraError(
            f"{path}: not a readable DCP metadata file ({first_line(exc)})"
        ) from None
    if not isinstance(metadata, Metadata) or not all(
        isinstance(x, dict) for x in (metadata.state_dict_metadata, metadata.storage_data)
    ):
        raise SpectraError(f"{path}: not a DCP metadata file (no tensor or storage tables)")
    return metadata


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: where it sits in the tensor and in its shard file."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: Path
    start: int
    length: int
    transforms: tuple[str, ...]

    @property
    def region(self) -> tuple[slice, ...]:
        return tuple(slice(o, o + s) for o, s in zip(self.offsets, self.sizes, strict=True))


@dataclass(frozen=True)
class Entry:
    """A tensor of the checkpoint: its key, shape, dtype and chunks."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    chunks: tuple[Chunk, ...]


def _ints(value) -> tuple[int, ...] | None:
    """A torch.Size (or tuple) of non-negative ints as a tuple, else None."""
    if not isinstance(value, (torch.Size, tuple)):
        return None
    items = tuple(value)
    ok = all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items)
    return items if ok else None


class _Checker:
    """Checks a metadata file's tables, entry by entry, against the shard files' sizes."""

    def __init__(self, metadata, folder: Path, path: Path):
        self.storage, self.folder, self.path = metadata.storage_data, folder, path
        self.sizes: dict[str, int] = {}

    def fail(self, key: str, why: str) -> SpectraError:
        return SpectraError(f"{self.path}: tensor {key}: {why}")

    def file_size(self, key: str, name) -> int:
        if not isinstance(name, str) or pathlib.PurePath(name).name != name or name in ("", ".."):
            raise self.fail(key, f"shard name {name!r} is not a file name in {self.folder}")
        if name not in self.sizes:
            found = find_inside(self.folder, name)  # a link outside, a FIFO, a loop: refused
            if found is None:
                raise self.fail(key, f"its shard {name} is missing")
            self.sizes[name] = found.stat().st_size
        return self.sizes[name]

    def chunk(self, key: str, chunk, shape: tuple[int, ...]) -> Chunk:
        from torch.distributed.checkpoint.metadata import MetadataIndex

        offsets = _ints(getattr(chunk, "offsets", None))
        sizes = _ints(getattr(chunk, "sizes", None))
        if offsets is None or sizes is None or not len(offsets) == len(sizes) == len(shape):
            raise self.fail(key, f"a chunk is not {len(shape)} offsets and sizes")
        if any(o + s > n for o, s, n in zip(offsets, sizes, shape, strict=True)):
            raise self.fail(key, f"chunk at {list(offsets)} of size {list(sizes)} "
                                 f"lies outside its shape {list(shape)}")  # fmt: skip
        info = self.storage.get(MetadataIndex(key, offsets))
        where = (getattr(info, n, None) for n in ("relative_path", "offset", "length"))
        name, start, length = where
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, length)):
            raise self.fail(key, f"no storage record for its chunk at {list(offsets)}")
        size = self.file_size(key, name)
        if start < 0 or length < 0 or start + length > size:
            raise self.fail(key, f"its chunk at {list(offsets)} is bytes {start}–{start + length}"
                                 f" of {name}, which has {size}")  # fmt: skip
        transforms = getattr(info, "transform_descriptors", None) or ()
        if not isinstance(transforms, (list, tuple)) or not all(
            isinstance(t, str) for t in transforms
        ):
            raise self.fail(key, "its stream transforms are not a list of names")
        return Chunk(offsets, sizes, self.folder / name, start, length, tuple(transforms))

    def entry(self, key, item) -> Entry:
        if not isinstance(key, str):
            raise SpectraError(f"{self.path}: a tensor key is {type(key).__name__}, not text")
        shape = _ints(getattr(item, "size", None))
        dtype = getattr(getattr(item, "properties", None), "dtype", None)
        chunks = getattr(item, "chunks", None)
        if shape is None or not isinstance(dtype, torch.dtype) or not isinstance(chunks, list):
            raise self.fail(key, "no shape, dtype or chunk list")
        checked = tuple(self.chunk(key, c, shape) for c in chunks)
        held, numel = sum(math.prod(c.sizes) for c in checked), math.prod(shape)
        if held != numel:
            raise self.fail(key, f"its chunks hold {held} elements, its {list(shape)} {numel}")
        return Entry(key, shape, dtype, tuple(c for c in checked if math.prod(c.sizes)))


def _name(key: str, planner_data) -> str:
    """A key's name: without ``model.`` when the planner data shows it nested under ``model``."""
    path = planner_data.get(key) if isinstance(planner_data, dict) else None
    nested = isinstance(path, tuple) and len(path) == 2 and path[0] == WRAPPER
    return path[1] if nested and isinstance(path[1], str) else key


def _entries(folder: Path, path: Path) -> dict[str, Entry]:
    """{name: entry} of every tensor in a DCP folder, checked."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_metadata(path)
    checker = _Checker(metadata, folder, path)
    entries = {}
    for key, item in metadata.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            name = _name(key, metadata.planner_data)
            if name in entries:
                raise SpectraError(f"{path}: two tensors are both named {name}")
            entries[name] = checker.entry(key, item)
    return entries


def _untransform(data: bytes, transforms: tuple[str, ...]) -> io.IOBase:
    """The stored bytes after torch's stream transforms (e.g. ``stream.zstd/1``) are undone."""
    from torch.distributed.checkpoint._extension import ExtensionRegistry

    stream = io.BytesIO(data)
    for extension in ExtensionRegistry().from_descriptor_list(transforms):
        stream = extension.transform_from(stream)
    return io.BytesIO(stream.read()) if transforms else stream


class DcpTensors:
    """The tensors of a DCP folder, by name; each assembled from its chunks when read."""

    def __init__(self, folder: Path):
        self.where = folder
        self.metadata = folder / METADATA
        self.entries = _entries(folder, self.metadata)
        self.shapes = {name: entry.shape for name, entry in self.entries.items()}
        self.files = dict.fromkeys(self.entries, self.metadata)  # for messages: the metadata
        self.meta_files = [self.metadata]
        self.read_files: list[Path] = []  # shard files read from, in order
        self.digests: dict[Path, dict[str, str]] = {}  # shard → {"key[start:end]": sha256}

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name``, assembled from its chunks (only their bytes are read)."""
        entry = self.entries[name]
        try:
            tensor = torch.empty(entry.shape, dtype=entry.dtype)
        except RuntimeError as exc:  # a shape no memory holds
            raise SpectraError(f"{self.metadata}: tensor {entry.key}: {first_line(exc)}") from None
        covered = torch.zeros(entry.shape, dtype=torch.bool)
        for chunk in entry.chunks:
            tensor[chunk.region] = self._chunk(entry, chunk)
            covered[chunk.region] = True
        if not bool(covered.all()):  # the chunks hold as many elements as the tensor: no gaps
            raise SpectraError(f"{self.metadata}: tensor {entry.key}: its chunks overlap")
        return tensor

    def _chunk(self, entry: Entry, chunk: Chunk) -> torch.Tensor:
        where = f"{chunk.file}: bytes {chunk.start}–{chunk.start + chunk.length} of {entry.key}"
        try:
            with open(chunk.file, "rb") as f:
                f.seek(chunk.start)
                data = f.read(chunk.length)
        except OSError as exc:
            raise SpectraError(f"{where}: cannot be read ({exc.strerror})") from None
        if len(data) != chunk.length:
            raise SpectraError(f"{where}: the file ends after {len(data)} of them")
        if chunk.file not in self.read_files:
            self.read_files.append(chunk.file)
        span = f"{entry.key}[{chunk.start}:{chunk.start + chunk.length}]"
        self.digests.setdefault(chunk.file, {})[span] = hashlib.sha256(data).hexdigest()
        try:
            stream = _untransform(data, chunk.transforms)
        except Exception as exc:  # unknown or unavailable transforms, corrupt streams
            raise SpectraError(
                f"{where}: cannot undo its transforms {list(chunk.transforms)} ({first_line(exc)})"
            ) from None
        try:
            piece = torch.load(stream, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for blobs it refuses
            raise SpectraError(
                f"{where}: not a tensor that torch.load(weights_only=True) can read "
                f"({_reason(exc)})"
            ) from None
        if not isinstance(piece, torch.Tensor) or tuple(piece.shape) != chunk.sizes:
            what = list(piece.shape) if isinstance(piece, torch.Tensor) else type(piece).__name__
            raise SpectraError(f"{where}: holds {what}, not its chunk of {list(chunk.sizes)}")
        if piece.dtype != entry.dtype:
            raise SpectraError(f"{where}: holds {piece.dtype}, but the metadata says {entry.dtype}")
        return piece


def dcp_folder(folder: Path) -> Path | None:
    """The DCP folder of a checkpoint folder: itself, or accelerate's ``pytorch_model_fsdp_0/``
    (its metadata file inside ``folder`` after symlinks, a regular file)."""
    names = (METADATA, f"{ACCELERATE}/{METADATA}")
    return next((found.parent for n in names if (found := find_inside(folder, n))), None)


def open_dcp(folder: Path) -> DcpTensors | None:
    """The tensors of the DCP checkpoint in ``folder``, checked; None if it holds none."""
    found = dcp_folder(folder)
    return DcpTensors(found) if found is not None else None
