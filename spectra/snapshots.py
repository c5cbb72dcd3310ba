"""The on-disk run directory: manifest, frozen weights, one safetensors file per step.

::

    runs/<run>/manifest.json              format, run, method, model, targets, steps, finished, ...
    runs/<run>/frozen.safetensors         frozen tensors of low-rank layers, written once
    runs/<run>/step_00000010.safetensors  the trainable tensors of every target at step 10
    runs/<run>/train_log.parquet          step, loss, reg_loss, grad_norm, lr (from the tracker)

Tensor keys are ``"<module>/<part>"`` (see :mod:`spectra.factors` for the parts of each kind).
A target is usually one module; a slice of a fused projection (``…c_attn[q]``) names its
``source`` module and the output ``rows`` it takes, and shares the source's tensors.
Every file is written to a temporary name and renamed into place; the manifest lists a step
only after its file is complete, so a crash leaves the last complete state readable.
Nothing here is ever unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
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
    Principal,
    Rows,
    check_parts,
    effective_weight,
    principal,
    slice_rows,
    step_parts,
)

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
    """Everything about a run that is not a tensor."""

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

    def to_json(self) -> str:
        raw = asdict(self)
        raw["targets"] = {
            name: {k: v for k, v in t.items() if v is not None}
            for name, t in raw["targets"].items()
        }
        return json.dumps(raw, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        try:
            raw = json.loads(text)
            raw["targets"] = {
                name: Target(
                    t["kind"], tuple(t["shape"]), t.get("rank"), t.get("source"),
                    tuple(tuple(r) for r in t["rows"]) if t.get("rows") else None,
                )
                for name, t in raw["targets"].items()
            }  # fmt: skip
            manifest = cls(**raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise SpectraError(f"{where} is not a valid spectra manifest: {exc}") from None
        if manifest.format > FORMAT_VERSION:
            raise SpectraError(
                f"{where} has format {manifest.format}; this spectra reads up to {FORMAT_VERSION}"
            )
        return manifest


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, str(tmp)))


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
    """Writes a run directory; with ``resume=True`` continues one that exists."""

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
        self.manifest = manifest
        self._write_manifest()  # fails here, before training, if the directory is not writable

    def _write_manifest(self) -> None:
        text = self.manifest.to_json()
        try:
            atomic_write(self.path / MANIFEST, lambda tmp: tmp.write_text(text))
        except OSError as exc:
            raise SpectraError(f"cannot write to {self.path}: {exc.strerror}") from None

    def write_frozen(self, layers: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write the frozen tensors (``{layer: {"base": W}}``) once."""
        _save_tensors(self.path / FROZEN, _flatten(layers))

    def write_step(self, step: int, layers: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write the trainable tensors of every target at ``step`` and list the step."""
        if step in self.manifest.steps:
            return
        _save_tensors(self.path / step_file(step), _flatten(layers))
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
        self.manifest = Manifest.from_json(manifest_path.read_text(), str(manifest_path))
        if not self.manifest.targets:
            raise SpectraError(f"{manifest_path} lists no target layers")

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
        target's rows when it is a slice of a fused module (unless ``sliced`` is False)."""
        target = self.manifest.targets[layer]
        if target.kind not in FROZEN_PARTS:
            check_parts(target.kind, {}, f"{self.path / MANIFEST} layer {layer}")
        module = target.source or layer
        parts = self._read(step_file(step), [f"{module}/{p}" for p in step_parts(target.kind)])
        if FROZEN_PARTS[target.kind]:
            parts |= self._read(FROZEN, [f"{module}/{p}" for p in FROZEN_PARTS[target.kind]])
        parts = {k.rsplit("/", 1)[1]: v for k, v in parts.items()}
        check_parts(target.kind, parts, f"{self.path.name} step {step} layer {layer}")
        return slice_rows(parts, target.rows) if target.rows and sliced else parts

    def weight(self, step: int, layer: str) -> torch.Tensor:
        """The effective weight W_t of ``layer`` at ``step`` in float64, shape-checked."""
        return self.weight_and_principal(step, layer)[0]

    def weight_and_principal(self, step: int, layer: str) -> tuple[torch.Tensor, Principal | None]:
        """(W_t, factors of W_p or None) of ``layer`` at ``step``, read once, in float64."""
        target = self.manifest.targets[layer]
        parts = self.parts(step, layer)
        w = effective_weight(target.kind, parts)
        if tuple(w.shape) != tuple(target.shape):
            raise SpectraError(
                f"{self.path.name} step {step} layer {layer}: shape {tuple(w.shape)} "
                f"differs from the manifest's {tuple(target.shape)}"
            )
        return w, principal(target.kind, parts)


def open_run(path: str | Path) -> Run:
    """Open a run directory for reading; SpectraError if it is not one."""
    return Run(path)
