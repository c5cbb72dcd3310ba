"""Models on the Hugging Face Hub as import sources, read by byte range: ``org/name[@rev]``.

A source that is not an existing path and has the form ``namespace/name`` (optionally
``@revision``) is a Hub model id (:mod:`.ids`). It is read from the Hugging Face cache when that
holds its weights, else only the target tensors' bytes are fetched (:mod:`.resolve`), through
huggingface_hub's session, headers and token: each safetensors file's header, then the target
tensors' byte ranges, adjacent ones merged (:mod:`.intervals`), into spectra's own
content-addressed cache (:mod:`.store`), resumably (:mod:`.fetch`), checked against the header
and, where every byte of a file was fetched, the file's hash on the Hub (:mod:`.remote`).
Errors of the Hub and the network are one line each (:mod:`.errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spectra.errors import SpectraError
from spectra.hub.ids import HubId, parse_hub_id
from spectra.hub.resolve import open_source

__all__ = ["HubId", "fetch_reads", "open_source", "parse_hub_id", "run_names"]


def fetch_reads(reads, progress: bool) -> None:
    """Fetch at once the tensors an import reads of each model on the Hub (``Import.reads()``)."""
    from spectra.hub.remote import RemoteTensors

    for model, names in reads:
        if isinstance(model.tensors, RemoteTensors):
            model.tensors.fetch(names, progress)


def _name(source, long: bool) -> str:
    """A run name for a source: a Hub model's name (``namespace--name`` if ``long``, then
    ``@revision``), or a path's folder name (its parent's for a checkpoint-N folder or file)."""
    from spectra.importer.sources import default_name

    hub = parse_hub_id(source)
    if hub is None:
        return default_name([Path(source)])
    name = hub.repo_id.replace("/", "--") if long else hub.name
    return name + (f"@{hub.revision.replace('/', '-')}" if hub.revision else "")


def run_names(sources: Sequence[str | Path]) -> list[str]:
    """One run name per source; Hub models whose names clash get their namespace too.
    SpectraError if two sources would still be the same run."""
    names = [_name(s, False) for s in sources]
    names = [
        _name(s, True) if names.count(n) > 1 and parse_hub_id(s) else n
        for s, n in zip(sources, names, strict=True)
    ]
    seen: dict[str, str | Path] = {}
    for source, name in zip(sources, names, strict=True):
        if name in seen:
            raise SpectraError(f"{seen[name]} and {source} would both be run {name}; rename one")
        seen[name] = source
    return names
