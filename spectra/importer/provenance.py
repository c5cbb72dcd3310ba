"""What an import records of each step's source: where it is, and checksums of what was read.

A local source is its resolved path, with of each file read the SHA-256 of its header and of
each tensor read (safetensors) or of the whole file (JSON, ``torch.save``); a model read from
the Hub is ``hf://<repo>@<commit>``, with of each file its size and hash on the Hub and the same
checksums of what was fetched (config.json and the shard index: of the files in the cache).
"""

from __future__ import annotations

from spectra.importer.adapter import Adapter
from spectra.importer.model import Model
from spectra.importer.staging import checksums, sha256


def _remote(reader):
    from spectra.hub.remote import RemoteTensors  # the Hub's code loads with Hub sources only

    return reader.tensors if isinstance(reader.tensors, RemoteTensors) else None


def source_of(reader: Model | Adapter) -> str:
    """Where a step's weights came from."""
    remote = _remote(reader)
    return remote.source if remote else str(reader.path.resolve())


def files_of(reader: Model | Adapter) -> dict[str, dict]:
    """Checksums of everything of a step's source that went into the import."""
    remote = _remote(reader)
    if remote:
        meta = {f"{remote.at}/{p.name}": {"sha256": sha256(p)} for p in reader.meta_files}
        return meta | remote.records()
    return checksums(reader.files_read(), reader.tensors)
