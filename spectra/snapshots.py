"""The on-disk run directory: manifest, frozen weights, one safetensors file per step.

::

    runs/<run>/manifest.json              format, run, method, model, targets, steps, finished, ...
    runs/<run>/frozen.safetensors         frozen tensors of low-rank layers, written once
    runs/<run>/step_00000010.safetensors  the trainable tensors of every target at step 10
    runs/<run>/train_log.parquet          step, loss, reg_loss, grad_norm, lr (from the tracker)

Tensor keys are ``"<module>/<part>"`` (see :mod:`spectra.factors` for the parts of each kind).
A target is usually one module; a slice of a fused projection (``…c_attn[q]``) names its
``source`` module and the output ``rows`` it takes, and shares the source's tensors.
Every file is written to a temporary name and renamed into place (created with the user's
umask, like any file); the manifest lists a step only after its file is complete, so a crash
leaves the last complete state readable. Each run has an identity, ``run_id``, made when the
run directory is created (manifests of spectra 0.1 have none: their identity is ``None``).
Everything read is checked where it enters: every manifest field against its type, every
tensor against the shapes of the others, the base and the manifest.
Nothing here is ever unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from spectra import __version__
from spectra.errors import SpectraError
from spectra.factors import (
    FROZEN_PARTS,
    KINDS,
    Principal,
    Rows,
    check_parts,
    effective_weight,
    principal,
    row_count,
    slice_rows,
    step_parts,
)
from spectra.typedjson import at, read_dataclass

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FROZEN = "frozen.safetensors"
TRAIN_LOG = "train_log.parquet"
LOG_COLUMNS = ("step", "loss", "reg_loss", "grad_norm", "lr")


def step_file(step: int) -> str:
    """File name of the snapshot at ``step``."""
    return f"step_{step:08d}.safetensors"


@dataclass
class Target:
    """One tracked layer: parametrization kind, (out, in) shape, adapter rank, and for a slice
    of a fused projection the ``source`` module whose tensors it reads and its output ``rows``."""

    kind: str
    shape: tuple[int, int]
    rank: int | None = None
    source: str | None = None
    rows: Rows | None = None


@dataclass
class Manifest:
    """Everything about a run that is not a tensor.

    ``resumed`` lists the steps a resumed training restarted from; the snapshots after each
    were discarded. ``extra["status"]`` is "completed" or "failed" once training ended (with
    the exception in ``extra["error"]``).
    """

    run: str
    method: str
    targets: dict[str, Target]
    model: str | None = None
    rank: int | None = None
    gamma: float | None = None
    learning_rate: float | None = None
    every: int | None = None
    steps: list[int] = field(default_factory=list)
    finished: bool = False
    extra: dict = field(default_factory=dict)
    format: int = FORMAT_VERSION
    spectra_version: str = __version__
    run_id: str | None = None
    resumed: list[int] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether training ended with an exception."""
        return self.extra.get("status") == "failed"

    def to_json(self) -> str:
        raw = asdict(self)
        raw["targets"] = {
            name: {k: v for k, v in t.items() if v is not None}
            for name, t in raw["targets"].items()
        }
        return json.dumps(raw, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "manifest") -> Manifest:
        """The manifest in ``text``; SpectraError naming ``where`` and the field if it is bad."""
        try:
            raw = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
        except UnicodeDecodeError:
            raise SpectraError(f"{where} is not UTF-8 text") from None
        except ValueError as exc:
            raise SpectraError(f"{where} is not a valid spectra manifest: {exc}") from None
        if not isinstance(raw, dict):
            raise SpectraError(f"{where} is not a spectra manifest (not a JSON object)")
        version = raw.get("format", FORMAT_VERSION)
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise SpectraError(
                f"{where} has format {version}; this spectra reads up to {FORMAT_VERSION}"
            )
        try:
            manifest = read_dataclass(raw, cls, "")
            _check(manifest)
        except SpectraError as exc:
            raise SpectraError(f"{where}: {exc}") from None
        manifest.steps = sorted(set(manifest.steps))
        return manifest


def _check(manifest: Manifest) -> None:
    """SpectraError on values of the right type that no spectra run can have."""
    for name in ("run", "method"):
        _name(getattr(manifest, name), name)
    if not manifest.targets:
        raise SpectraError("targets: lists no target layers")
    for name, value in (
        ("format", manifest.format),
        ("every", manifest.every),
        ("rank", manifest.rank),
    ):
        if value is not None and value < 1:
            raise SpectraError(f"{name}: must be positive, got {value}")
    for name in ("steps", "resumed"):
        if any(step < 0 for step in getattr(manifest, name)):
            raise SpectraError(f"{name}: steps are never negative")
    for key in ("status", "error"):
        if not isinstance(manifest.extra.get(key, ""), str):
            raise SpectraError(f"extra.{key}: expected a string")
    for layer, target in manifest.targets.items():
        where = f"targets[{layer!r}]"
        _name(layer, where)
        if target.kind not in KINDS:
            raise SpectraError(
                f"{where}.kind: unknown layer kind {target.kind!r} "
                f"(expected one of {', '.join(KINDS)})"
            )
        if min(target.shape) < 1 or (target.rank is not None and target.rank < 1):
            raise SpectraError(
                f"{where}: shape {target.shape} and rank {target.rank} must be positive"
            )
        if target.source is not None:
            _name(target.source, f"{where}.source")
        if target.rows is not None:
            _check_rows(target.rows, target.shape[0], f"{where}.rows")


def _name(value: str, where: str) -> None:
    if not value or not value.isprintable():
        raise SpectraError(at(where, f"expected a non-empty printable name, got {value!a}"))


def _check_rows(rows: Rows, count: int, where: str) -> None:
    """Row ranges must be non-empty, increasing, disjoint and select ``count`` rows."""
    stop = 0
    for start, end in rows:
        if not stop <= start < end:
            raise SpectraError(f"{where}: [{start}, {end}) is empty, overlaps or is out of order")
        stop = end
    if not rows or row_count(rows) != count:
        raise SpectraError(f"{where}: select {row_count(rows)} rows, the shape says {count}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A new temporary file beside ``path`` to write, renamed to ``path`` when the block ends.

    The file is created like any other (mode 0666 minus the umask); a symlink at ``path`` is
    written through (its target is replaced). Failures to write become SpectraError.
    """
    path = Path(path)
    if path.is_symlink():
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


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors to a safetensors file atomically; SpectraError when the disk refuses."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        atomic_write(path, lambda tmp: save_file(plain, str(tmp)))
    except SafetensorError as exc:
        if "I/O error" not in str(exc):
            raise
        raise SpectraError(f"cannot write {path}: {exc}") from None


def _flatten(layers: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{layer}/{part}": t for layer, parts in layers.items() for part, t in parts.items()}


def write_train_log(run_dir: Path, rows: dict[int, dict[str, float]]) -> None:
    """train_log.parquet: one row per step, the standard columns first, then extras, sorted."""
    extras = sorted({k for row in rows.values() for k in row} - set(LOG_COLUMNS))
    steps = sorted(rows)
    columns = {"step": pa.array(steps, pa.int64())}
    for name in (*LOG_COLUMNS[1:], *extras):
        columns[name] = pa.array([rows[s].get(name) for s in steps], pa.float64())
    table = pa.table(columns)
    atomic_write(Path(run_dir) / TRAIN_LOG, lambda tmp: pq.write_table(table, tmp))


def read_train_log(run_dir: str | Path) -> pd.DataFrame | None:
    """The run's training log (a ``step`` column, then float columns), or None if it has none."""
    path = Path(run_dir) / TRAIN_LOG
    if not path.is_file():
        return None
    try:
        log = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise SpectraError(f"{path} is not a readable train log: {exc}") from None
    if "step" not in log or not pd.api.types.is_integer_dtype(log["step"]):
        raise SpectraError(f"{path} is not a spectra train log (no integer step column)")
    return log


class RunWriter:
    """Writes a run directory; with ``resume=True`` continues one that exists.

    Opening it removes the temporary files a killed writer left behind. A new run gets a new
    ``run_id``; a resumed one keeps its own.
    """

    def __init__(self, path: str | Path, manifest: Manifest, *, resume: bool = False):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpectraError(f"cannot create run directory {self.path}: {exc.strerror}") from None
        existing = self.path / MANIFEST
        if existing.exists() and not resume:
            raise SpectraError(f"{self.path} already holds a run; remove it or resume it")
        if existing.exists():
            old = open_run(self.path).manifest
            manifest.steps, manifest.finished = old.steps, False
            manifest.run_id, manifest.resumed = old.run_id, old.resumed
        else:
            manifest.run_id = manifest.run_id or uuid.uuid4().hex
        for leftover in self.path.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        self.manifest = manifest
        self._write_manifest()  # fails here, before training, if the directory is not writable

    def _write_manifest(self) -> None:
        text = self.manifest.to_json()
        atomic_write(self.path / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def discard_after(self, step: int) -> None:
        """Forget the snapshots after ``step`` (a training resumed from ``step``): first the
        manifest, then their files, so a crash in between leaves a consistent run."""
        self.manifest.steps = [s for s in self.manifest.steps if s <= step]
        self.manifest.resumed = [*self.manifest.resumed, step]
        self._write_manifest()
        for path in self.path.glob("step_*.safetensors"):
            number = path.name[len("step_") : -len(".safetensors")]
            if number.isdigit() and int(number) > step:
                path.unlink(missing_ok=True)

    def write_frozen(self, layers: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write the frozen tensors (``{layer: {"base": W}}``) once."""
        save_tensors(self.path / FROZEN, _flatten(layers))

    def write_step(self, step: int, layers: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write the trainable tensors of every target at ``step`` and list the step."""
        if step in self.manifest.steps:
            return
        save_tensors(self.path / step_file(step), _flatten(layers))
        self.manifest.steps = sorted({*self.manifest.steps, step})
        self._write_manifest()

    def finish(self, **extra) -> None:
        """Mark training as finished (followers stop waiting)."""
        self.manifest.finished = True
        self.manifest.extra.update(extra)
        self._write_manifest()


class Run:
    """A run directory opened for reading."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SpectraError(f"run directory not found: {self.path}")
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise SpectraError(f"not a spectra run directory (no {MANIFEST}): {self.path}")
        try:
            text = manifest_path.read_bytes()
        except OSError as exc:
            raise SpectraError(f"cannot read {manifest_path}: {exc.strerror}") from None
        self.manifest = Manifest.from_json(text, str(manifest_path))

    @property
    def name(self) -> str:
        return self.manifest.run

    @property
    def steps(self) -> list[int]:
        return list(self.manifest.steps)

    @property
    def layers(self) -> list[str]:
        return list(self.manifest.targets)

    def _read(self, file: str, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        path = self.path / file
        if not path.is_file():
            raise SpectraError(f"snapshot file missing: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                present = set(f.keys())
                return {k: f.get_tensor(k) for k in keys if k in present}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise SpectraError(f"corrupt or truncated snapshot {path}: {exc}") from None

    def parts(self, step: int, layer: str, sliced: bool = True) -> dict[str, torch.Tensor]:
        """The stored tensors of ``layer`` at ``step`` (frozen ones included), sliced to the
        target's rows when it is a slice of a fused module (unless ``sliced`` is False),
        checked against each other and the manifest's shape."""
        target = self.manifest.targets[layer]
        module = target.source or layer
        parts = self._read(step_file(step), [f"{module}/{p}" for p in step_parts(target.kind)])
        if FROZEN_PARTS[target.kind]:
            parts |= self._read(FROZEN, [f"{module}/{p}" for p in FROZEN_PARTS[target.kind]])
        parts = {k.rsplit("/", 1)[1]: v for k, v in parts.items()}
        frozen = f" + {FROZEN}" if FROZEN_PARTS[target.kind] else ""
        where = f"{self.path / step_file(step)}{frozen} layer {layer}"
        m, n = check_parts(target.kind, parts, where)
        if target.rows:
            if target.rows[-1][1] > m:
                raise SpectraError(
                    f"{where}: rows {list(target.rows)} of {self.path / MANIFEST} go beyond "
                    f"the {m} rows of {module}"
                )
            if not sliced:
                return parts
            parts, m = slice_rows(parts, target.rows), row_count(target.rows)
        if (m, n) != tuple(target.shape):
            raise SpectraError(
                f"{where}: shape {(m, n)} differs from the manifest's {tuple(target.shape)}"
            )
        return parts

    def weight(self, step: int, layer: str) -> torch.Tensor:
        """The effective weight W_t of ``layer`` at ``step`` in float64, shape-checked."""
        return self.weight_and_principal(step, layer)[0]

    def weight_and_principal(self, step: int, layer: str) -> tuple[torch.Tensor, Principal | None]:
        """(W_t, factors of W_p or None) of ``layer`` at ``step``, read once, in float64."""
        kind = self.manifest.targets[layer].kind
        parts = self.parts(step, layer)
        return effective_weight(kind, parts), principal(kind, parts)


def open_run(path: str | Path) -> Run:
    """Open a run directory for reading; SpectraError if it is not one."""
    return Run(path)


def remove_run(path: str | Path) -> None:
    """Delete the run directory ``path`` if it holds a run (never any other directory)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise SpectraError(f"cannot remove the run directory {path}: {exc.strerror}") from None
