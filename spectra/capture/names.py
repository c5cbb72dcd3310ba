"""The one target rule, on names alone (no model, no peft): which layer names a target selects.

See :mod:`spectra.capture` for the rule; the checkpoint importer applies it to the names in a
weight file, the tracker to a live model's layers (:mod:`spectra.capture.targets`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from spectra.architectures import SLICES
from spectra.errors import SpectraError

PEFT_PREFIX = "base_model.model."
GLOB_CHARS = "*?["
# Path components that wrappers insert: FSDP1's units, activation checkpointing, torch.compile.
WRAPPERS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def layer_path(path: str) -> str:
    """A module's path as spectra names it: without the components of :data:`WRAPPERS` and
    without the ``base_model.model`` pair that peft adds (at the start for a peft model, inside
    for one held by another module, such as a LightningModule)."""
    parts = [part for part in path.split(".") if part not in WRAPPERS]
    peft = PEFT_PREFIX.rstrip(".").split(".")
    for i in range(len(parts) - 1):
        if parts[i : i + 2] == peft:
            del parts[i : i + 2]
            break
    return ".".join(parts)


def slice_name(path: str, part: str) -> str:
    """The layer name of slice ``part`` (q, k or v) of the fused module at ``path``."""
    return f"{path}[{part}]"


def split_slice(name: str) -> tuple[str, str | None]:
    """(module, slice) of a layer or target name; slice None when it names no slice."""
    if name.endswith("]") and "[" in name:
        module, _, part = name[:-1].rpartition("[")
        if part in SLICES:
            return module, part
    return name, None


def selects(target: str, path: str) -> bool:
    """Whether ``target`` selects the module ``path`` by name (no slices involved)."""
    if any(c in target for c in GLOB_CHARS):
        return fnmatch.fnmatchcase(path, target)
    return path == target or path.endswith(f".{target}")


def matches(target: str, path: str) -> bool:
    """Whether ``target`` selects the layer ``path`` (see the module docstring)."""
    target_module, target_slice = split_slice(target)
    module, part = split_slice(path)
    if target_slice is not None and target_slice != part:
        return False
    return selects(target_module, module)


def as_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """Targets as a tuple of names; one string is one target."""
    return (targets,) if isinstance(targets, str) else tuple(targets)


def target_names(paths: Iterable[str]) -> str:
    """The last components of the paths, sorted, as a list for messages."""
    return ", ".join(sorted({path.rsplit(".", 1)[-1] for path in paths})) or "(none)"


def resolve(targets: str | Iterable[str], paths: Iterable[str]) -> list[str]:
    """The paths, in their order, that the targets select.

    SpectraError, listing the names that could be targets, when some target selects nothing.
    """
    targets, paths = as_targets(targets), list(paths)
    if not targets:
        raise SpectraError("no targets given")
    missing = [t for t in targets if not any(matches(t, path) for path in paths)]
    if missing:
        names = target_names(paths)
        raise SpectraError(
            f"targets {missing} match no module; module names that can be targets: {names}"
        )
    return [path for path in paths if any(matches(t, path) for t in targets)]
