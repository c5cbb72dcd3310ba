"""A Hub id as an import source: its folder in the Hugging Face cache when that holds its
weights, else its safetensors files read from the Hub by byte range.

Everything goes through huggingface_hub, so $HF_TOKEN or a saved login, $HF_ENDPOINT (mirrors),
$HF_HOME / $HF_HUB_CACHE and $HF_HUB_OFFLINE work as in transformers:

- the weights in the cache (as ``snapshot_download`` or ``from_pretrained`` leave them) are a
  local folder, read there (offline too, or when the Hub cannot be reached);
- otherwise ``model_info`` gives the commit and every file's size and hash; config.json and
  the shard index come into the Hugging Face cache (``hf_hub_download``), and the safetensors
  files are read by byte range into spectra's cache (:mod:`spectra.hub.remote`);
- a peft adapter repository (small files) is downloaded whole into the cache, and read there.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

from spectra.cachedir import default_cache_dir
from spectra.errors import SpectraError
from spectra.hub.errors import endpoint, hub_errors, not_cached
from spectra.hub.ids import HubId, parse_hub_id
from spectra.hub.remote import HubFile, RemoteFile, RemoteTensors
from spectra.importer.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from spectra.importer.model import CONFIG, WEIGHT_FILES, Model, read_config
from spectra.importer.tensors import index_files

INDEX, SINGLE = "model.safetensors.index.json", "model.safetensors"


def open_source(source: str | Path) -> Path | Model:
    """``source`` as a path, unless it is a Hub id (see :func:`parse_hub_id`): then its folder
    in the Hugging Face cache, or its model read from the Hub."""
    model = parse_hub_id(source)
    if model is None:
        return Path(source)
    with hub_errors(model), _quiet():
        return _resolve(model)


@contextmanager
def _quiet():
    """huggingface_hub's own progress bars and warnings off: spectra shows its own bar."""
    from huggingface_hub.utils import disable_progress_bars

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with disable_progress_bars():
            yield


def _resolve(model: HubId) -> Path | Model:
    import httpx2
    from huggingface_hub import HfApi, is_offline_mode

    if is_offline_mode():
        return _cached_or_fail(model, model.revision or "main")
    try:
        info = HfApi().model_info(model.repo_id, revision=model.revision, files_metadata=True)
    except httpx2.TransportError:  # the Hub cannot be reached: the cache, as huggingface_hub does
        if (folder := cached_folder(model.repo_id, model.revision or "main")) is not None:
            return folder
        raise
    files = {sibling.rfilename: sibling for sibling in info.siblings or []}
    folder = cached_folder(model.repo_id, info.sha, files)
    if folder is not None:
        return folder
    if ADAPTER_CONFIG in files:
        return _download(model, info.sha, [ADAPTER_CONFIG, *ADAPTER_WEIGHTS], files)
    if INDEX in files or SINGLE in files:
        return open_remote(model, info.sha, files)
    raise SpectraError(
        f"{model}: no safetensors weights on {endpoint()} (spectra reads byte ranges of "
        f"safetensors files only); download it first (hf download {model.repo_id}) and run again"
    )


def _cached_or_fail(model: HubId, revision: str) -> Path:
    folder = cached_folder(model.repo_id, revision)
    if folder is None:
        raise not_cached(model)
    return folder


def cached_folder(repo_id: str, revision: str, files: dict | None = None) -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` in the Hugging Face cache if it holds
    a whole adapter or whole weights (of the files the Hub lists, when ``files`` is given)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> Path | None:
        if files is not None and name not in files:
            return None
        found = try_to_load_from_cache(repo_id, name, revision=revision)
        return Path(found) if isinstance(found, str) else None

    config = cached(ADAPTER_CONFIG)
    if config is not None and any(cached(name) for name in ADAPTER_WEIGHTS):
        return config.parent
    for name in WEIGHT_FILES:
        if (found := cached(name)) is None:
            continue
        if name.endswith(".json"):
            try:
                index_files(found)
            except SpectraError:  # a shard is not in the cache
                return None
        return found.parent
    return None


def _download(model: HubId, commit: str, names: list[str], files: dict) -> Path:
    """The folder in the Hugging Face cache holding ``names`` (those the repository has)."""
    from huggingface_hub import hf_hub_download

    paths = [hf_hub_download(model.repo_id, n, revision=commit) for n in names if n in files]
    return Path(paths[0]).parent


def _hub_file(model: HubId, commit: str, name: str, files: dict) -> HubFile:
    sibling = files.get(name)
    if sibling is None:
        raise SpectraError(f"{model}: {name} is named by the shard index but not in the repository")
    size = sibling.lfs.size if sibling.lfs else sibling.size
    if size is None:
        raise SpectraError(f"{model}: {endpoint()} gave no size for {name}")
    sha256 = sibling.lfs.sha256 if sibling.lfs else None
    return HubFile(model.repo_id, commit, name, size, sha256, sibling.blob_id)


def open_remote(model: HubId, commit: str, files: dict) -> Model:
    """The model's safetensors weights on the Hub: config and index downloaded, each shard's
    header fetched and checked, tensors read by range when asked for."""
    from huggingface_hub import hf_hub_download, hf_hub_url

    meta = [Path(hf_hub_download(model.repo_id, n, revision=commit))
            for n in (CONFIG, INDEX) if n in files]  # fmt: skip
    config = read_config(meta[0]) if CONFIG in files else None
    weight_map = _weight_map(meta[-1]) if INDEX in files else None
    shards = list(dict.fromkeys(weight_map.values())) if weight_map else [SINGLE]
    cache = default_cache_dir()
    remote = []
    for name in shards:
        file = _hub_file(model, commit, name, files)
        url = hf_hub_url(model.repo_id, name, revision=commit)
        remote.append(RemoteFile(file, url, cache))
    size = sum((s.lfs.size if s.lfs else s.size) or 0 for s in files.values())
    tensors = RemoteTensors(str(model), remote, size)
    for tensor, shard in (weight_map or {}).items():
        label = tensors.files.get(tensor)
        if label is None or tensors.remote[label].file.filename != shard:
            raise SpectraError(f"{model}: the shard index puts {tensor} in {shard}; it is not")
    return Model(Path(str(model)), tensors, config, meta)


def _weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index: tensor → shard file."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpectraError(f"{index}: not a readable shard index ({exc})") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise SpectraError(f"{index}: its weight_map is not an object of tensor → shard file")
    return weight_map
