"""Steps stored by reference: a step's tensors left in the safetensors files they came from.

``runs/<run>/step_00000010.reference.json`` (the step is in the manifest's ``referenced``)
holds, for every stored tensor key (``<module>/weight``), the file it is in (an absolute path),
its name there, whether it is stored transposed (GPT-2's Conv1D keeps in × out), and the
SHA-256 of the file's header and of the tensor's bytes, as the import read them. Reading one
back checks, before the tensor is used, that the header and the tensor's bytes still hash to
what was recorded (the tensor is made from the very bytes hashed): a source that changed or
vanished is one line that names it.

A run directory is data that can come from anyone, and a crafted one must not make spectra
open files it was not pointed at. So a reference file carries an HMAC-SHA256 of its content
and of the run's identity, made with a key that only this user holds
(``~/.config/spectra/reference.key``, or under $XDG_CONFIG_HOME; mode 0600, made by the first
import by reference): references are followed only under a valid MAC, that is only those this
user's own ``spectra import`` wrote, and a run directory from anywhere else is refused before
any path in it is opened. Paths must also be absolute and normal and name regular
``.safetensors`` files.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from spectra.atomic import atomic_write
from spectra.errors import SpectraError
from spectra.run_files import reference_file
from spectra.snapshots.raw import open_random, parse_header, read_header, tensor_from_bytes
from spectra.typedjson import read_dataclass

SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Reference:
    """Where one stored tensor is: file, name there, orientation, and what it hashed to."""

    file: str
    tensor: str
    header_sha256: str
    sha256: str
    transposed: bool = False


@dataclass
class StepReferences:
    """A step's reference file: its tensors by key, and the MAC that vouches for them."""

    step: int
    tensors: dict[str, Reference]
    mac: str


def key_path() -> Path:
    """This user's reference key: ``$XDG_CONFIG_HOME/spectra/reference.key`` (~/.config)."""
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "spectra" / "reference.key"


def _key(create: bool) -> bytes:
    """This user's key; made (0600, atomically) if ``create`` and there is none yet."""
    path = key_path()
    if create and not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)  # never replaces a key another process just made
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        except OSError as exc:
            raise SpectraError(f"cannot make the reference key {path}: {exc.strerror}") from None
    try:
        return path.read_bytes().strip()
    except OSError:
        raise SpectraError(
            f"no reference key {path}: steps stored by reference are read only for runs this "
            "user imported with this key; import the run again"
        ) from None


def _mac(key: bytes, run_id: str | None, step: int, tensors: dict[str, Reference]) -> str:
    content = {"run_id": run_id, "step": step,
               "tensors": {k: asdict(v) for k, v in tensors.items()}}  # fmt: skip
    message = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def write_references(
    run_dir: Path, run_id: str | None, step: int, tensors: dict[str, Reference]
) -> None:
    """Write ``step``'s reference file, vouched for by this user's key (made if need be)."""
    mac = _mac(_key(create=True), run_id, step, tensors)
    text = json.dumps(asdict(StepReferences(step, tensors, mac)), indent=1, sort_keys=True)
    atomic_write(run_dir / reference_file(step), lambda tmp: tmp.write_text(text, "utf-8"))


def _load(run_dir: Path, run_id: str | None, step: int) -> StepReferences:
    """``step``'s reference file, checked field by field and against its MAC."""
    path = run_dir / reference_file(step)
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise SpectraError(f"{path}: missing (step {step} is stored by reference)") from None
    except (OSError, ValueError) as exc:
        raise SpectraError(f"{path}: not a readable reference file ({exc})") from None
    if not isinstance(raw, dict):
        raise SpectraError(f"{path}: not a reference file (not a JSON object)")
    try:
        refs = read_dataclass(raw, StepReferences, "")
    except SpectraError as exc:
        raise SpectraError(f"{path}: {exc}") from None
    expected = _mac(_key(create=False), run_id, step, refs.tensors)
    if not hmac.compare_digest(refs.mac.encode(), expected.encode()):  # any text, in bytes
        raise SpectraError(
            f"{path}: not written by this user's spectra import for this run (its MAC does not "
            f"match the key {key_path()}); no file it names is opened. Import the run again, "
            "or with --copy to take it elsewhere"
        )
    if refs.step != step:
        raise SpectraError(f"{path}: holds step {refs.step}, not {step}")
    return refs


def read_referenced(
    run_dir: Path, run_id: str | None, step: int, keys: list[str]
) -> dict[str, torch.Tensor]:
    """The tensors of ``keys`` (those the step has) of a step stored by reference, each
    checked against the SHA-256 recorded for its file's header and its bytes."""
    refs = _load(run_dir, run_id, step)
    where = run_dir / reference_file(step)
    return {key: _read(refs.tensors[key], where) for key in keys if key in refs.tensors}


def _changed(path: str, what: str) -> SpectraError:
    return SpectraError(f"{path} changed since the import ({what}); import the run again")


def _open(path: str, where: Path) -> BinaryIO:
    """The regular file ``path``, opened for reading without readahead (a FIFO put in its
    place must not hang): only the header's and the tensor's bytes are read."""
    try:
        return open_random(path)
    except FileNotFoundError:
        raise SpectraError(f"{path} is gone (a source of {where}); import the run again") from None
    except OSError as exc:
        raise SpectraError(f"cannot read {path} (a source of {where}): {exc.strerror}") from None
    except SpectraError:
        raise SpectraError(f"{path} is not a regular file (a source of {where})") from None


def _read(ref: Reference, where: Path) -> torch.Tensor:
    path = ref.file
    normal = os.path.isabs(path) and os.path.normpath(path) == path
    if not (normal and path.endswith(".safetensors")):
        raise SpectraError(f"{where}: {path!a} is not an absolute, normal .safetensors path")
    if not (SHA256.fullmatch(ref.header_sha256) and SHA256.fullmatch(ref.sha256)):
        raise SpectraError(f"{where}: the checksums of {ref.tensor} are not SHA-256 hex digests")
    with _open(path, where) as f:
        try:
            header, size = read_header(f, path)
        except SpectraError:
            raise _changed(path, "not a safetensors file") from None
        if hashlib.sha256(header).hexdigest() != ref.header_sha256:
            raise _changed(path, "its header")
        try:
            slot = parse_header(header, size, path).get(ref.tensor)
        except SpectraError as exc:
            raise _changed(path, str(exc).removeprefix(f"{path}: ")) from None
        if slot is None:
            raise _changed(path, f"no tensor {ref.tensor}")
        f.seek(slot.start)
        data = f.read(slot.end - slot.start)
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise _changed(path, f"the bytes of {ref.tensor}")
    tensor = tensor_from_bytes(ref.tensor, slot, data, path)
    return tensor.T if ref.transposed else tensor
