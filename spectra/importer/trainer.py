"""transformers ``Trainer`` output folders: every ``checkpoint-N/`` inside is step N.

Only the weights (an adapter or a full model, read by their own readers) and
``trainer_state.json`` (JSON: the training log) are read; ``optimizer.pt``, ``scheduler.pt``,
``rng_state*.pth`` and ``training_args.bin`` are pickles and are never opened.
"""

from __future__ import annotations

import re
from pathlib import Path

from spectra.contained import FOLDER, find_inside, inside
from spectra.errors import SpectraError, first_line
from spectra.limits import INT64, read_json
from spectra.train_log import from_trainer

CHECKPOINT = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"


def checkpoint_step(path: Path) -> int | None:
    """N for a folder named ``checkpoint-N``, else None."""
    match = CHECKPOINT.fullmatch(path.name)
    return int(match.group(1)) if match else None


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``checkpoint-N/`` in a Trainer output folder, by step; each
    checked to be a folder inside it."""
    found = [
        (step, inside(folder, p.name, FOLDER))
        for p in folder.iterdir()
        if (step := checkpoint_step(p)) is not None
    ]
    return sorted(found)


def trainer_state(checkpoint: Path) -> Path | None:
    """``checkpoint-N/trainer_state.json`` (the training log up to N), if it has one."""
    if checkpoint_step(checkpoint) is None:
        return None
    return find_inside(checkpoint, TRAINER_STATE)


def train_log(path: Path) -> dict[int, dict[str, float]]:
    """{step: values} of the training log in a trainer_state.json."""
    try:
        history = read_json(path)["log_history"]
        rows: dict[int, dict[str, float]] = {}
        for entry in history:
            values = {
                k: float(v)
                for k, v in from_trainer(entry).items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            step = int(entry["step"])
            if not INT64[0] <= step <= INT64[1]:
                raise ValueError(f"step {step} is beyond a 64-bit integer")
            rows.setdefault(step, {}).update(values)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise SpectraError(f"{path}: not a readable trainer state ({first_line(exc)})") from None
    return rows
