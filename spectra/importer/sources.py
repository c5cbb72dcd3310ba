"""What to import: the checkpoints that the sources name, and the step of each.

Sources are Trainer output folders (every ``checkpoint-N/`` inside is step N), checkpoint,
adapter or model folders, weight files, and models already opened (read from the Hub). Steps
come from ``checkpoint-N`` names when every source has one, else 1, 2, 3, … in the order given
(an order only: the run's steps are *ordinal*, its last one a final model), or from
``--steps``; step 0 is the base model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spectra.contained import source as existing
from spectra.errors import SpectraError
from spectra.importer.adapter import Adapter, is_adapter, open_adapter
from spectra.importer.model import Model, open_model
from spectra.importer.trainer import checkpoint_step, checkpoints
from spectra.limits import INT64


@dataclass
class Checkpoint:
    """One step's weights: its number, where they are, their reader, and whether the number is
    a real step (from a ``checkpoint-N`` name or ``--steps``) or only a position."""

    step: int
    path: Path
    reader: Model | Adapter
    numbered: bool = True


def _read(path: Path) -> Model | Adapter:
    """The reader of one checkpoint: its adapter or its full weights."""
    return open_adapter(path) if path.is_dir() and is_adapter(path) else open_model(path)


def _expand(sources: Sequence[Path | Model]) -> list[tuple[Path | Model, int | None]]:
    """(checkpoint, step from its name) of every source, Trainer output folders expanded."""
    found = []
    for source in sources:
        if isinstance(source, Model):
            found.append((source, None))
        else:
            inside = checkpoints(source) if existing(source).is_dir() else []
            found += [(p, step) for step, p in inside] or [(source, checkpoint_step(source))]
    return found


def _steps(found: list[tuple[Path | Model, int | None]], steps: Sequence[int] | None) -> list[int]:
    """The step of every checkpoint (see the module docstring); SpectraError on conflicts."""
    if steps is not None and len(steps) != len(found):
        raise SpectraError(f"--steps gives {len(steps)} step numbers for {len(found)} checkpoints")
    if steps is not None:
        numbers = list(steps)
    elif all(step is not None for _, step in found):
        numbers = [step for _, step in found]
    else:
        numbers = list(range(1, len(found) + 1))
    seen: dict[int, Path] = {}
    for (source, _), step in zip(found, numbers, strict=True):
        path = source.path if isinstance(source, Model) else source
        if not 1 <= step <= INT64[1]:
            raise SpectraError(
                f"{path} would be step {step}; steps start at 1 (step 0 is the base) and fit "
                "in 64 bits"
            )
        if step in seen:
            raise SpectraError(
                f"{seen[step]} and {path} are both step {step}; give distinct --steps"
            )
        seen[step] = path
    return numbers


def _checkpoint(step: int, source: Path | Model, numbered: bool) -> Checkpoint:
    if isinstance(source, Model):
        return Checkpoint(step, source.path, source, numbered)
    return Checkpoint(step, source, _read(source), numbered)


def find_checkpoints(
    sources: Sequence[Path | Model], steps: Sequence[int] | None
) -> list[Checkpoint]:
    """The checkpoints of the sources, by step, each with its (lazy) reader."""
    if not sources:
        raise SpectraError("no sources to import")
    found = _expand([s if isinstance(s, Model) else Path(s) for s in sources])
    numbers = _steps(found, steps)
    numbered = steps is not None or all(step is not None for _, step in found)
    pairs = zip(found, numbers, strict=True)
    return sorted(
        (_checkpoint(n, source, numbered) for (source, _), n in pairs),
        key=lambda c: c.step,
    )


def default_name(sources: Sequence[Path]) -> str:
    """A run name from the sources: the first one's folder name (its parent's for a
    ``checkpoint-N`` folder or a file)."""
    first = existing(sources[0]).resolve()
    return (
        first.parent.name if first.is_file() or checkpoint_step(first) is not None else first.name
    )
