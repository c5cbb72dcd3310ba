"""Reading a run directory: :class:`Run` opens one (its manifest checked where it enters) and
reads a layer's stored tensors at a step lazily, tensor by tensor, sliced to the target's
rows for a slice of a fused projection and checked against each other and the manifest's
shape; from them it makes the effective weight and the principal factors in float64."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from spectra.contained import inside
from spectra.errors import SpectraError
from spectra.factors import (
    FROZEN_PARTS,
    Principal,
    check_parts,
    effective_weight,
    principal,
    row_count,
    slice_rows,
    step_parts,
)
from spectra.limits import read_bounded
from spectra.run_files import FROZEN, MANIFEST, reference_file, step_file
from spectra.snapshots.manifest import Manifest
from spectra.snapshots.tensor_files import one_expert, read_tensors


class Run:
    """A run directory opened for reading."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SpectraError(f"run directory not found: {self.path}")
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise SpectraError(f"not a spectra run directory (no {MANIFEST}): {self.path}")
        self.manifest = Manifest.from_json(read_bounded(manifest_path), str(manifest_path))

    @property
    def name(self) -> str:
        return self.manifest.run

    @property
    def steps(self) -> list[int]:
        return list(self.manifest.steps)

    @property
    def layers(self) -> list[str]:
        return list(self.manifest.targets)

    def _own(self, name: str) -> Path:
        """The run directory's file ``name``; SpectraError when it is a link that leads out of
        the run directory or not a regular file (a missing one is the reader's to report)."""
        path = self.path / name
        return inside(self.path, name) if os.path.lexists(path) else path

    def _step(self, step: int, keys: list[str], expert: int | None) -> dict[str, torch.Tensor]:
        """The tensors of ``keys`` at ``step`` (of stacked experts, expert ``expert``): from its
        file, or where it references them."""
        if step in self.manifest.referenced:
            from spectra.snapshots.references import read_referenced

            where = self.path / reference_file(step)
            parts = read_referenced(self.path, self.manifest.run_id, step, keys)
            return {k: one_expert(v, expert, k, where) for k, v in parts.items()}
        return read_tensors(self._own(step_file(step)), keys, expert)

    def parts(self, step: int, layer: str, sliced: bool = True) -> dict[str, torch.Tensor]:
        """The stored tensors of ``layer`` at ``step`` (frozen ones included), sliced to the
        target's rows when it is a slice of a fused module (unless ``sliced`` is False),
        checked against each other and the manifest's shape."""
        target = self.manifest.targets[layer]
        module = target.source or layer
        keys = [f"{module}/{p}" for p in step_parts(target.kind)]
        parts = self._step(step, keys, target.expert)
        if FROZEN_PARTS[target.kind]:
            keys = [f"{module}/{p}" for p in FROZEN_PARTS[target.kind]]
            parts |= read_tensors(self._own(FROZEN), keys, target.expert)
        parts = {k.rsplit("/", 1)[1]: v for k, v in parts.items()}
        frozen = f" + {FROZEN}" if FROZEN_PARTS[target.kind] else ""
        stored = reference_file(step) if step in self.manifest.referenced else step_file(step)
        where = f"{self.path / stored}{frozen} layer {layer}"
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
