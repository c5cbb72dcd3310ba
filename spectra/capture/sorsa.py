"""SORSA: this package's layer and the reference ``sorsa`` package's layout."""

from __future__ import annotations

import torch
from torch import nn

from spectra.capture.common import check_unmerged, scalar
from spectra.factors import Layout


def sorsa(module: nn.Module) -> Layout | None:
    """W + s · (B ⊙ S) A, with singular-vector factors B (out × r), S (r), A (r × in)."""
    names = ("sorsa_A", "sorsa_S", "sorsa_B", "weight")
    if not all(isinstance(getattr(module, a, None), torch.Tensor) for a in names):
        return None
    check_unmerged(module)
    parts = {
        "left": module.sorsa_B,
        "values": module.sorsa_S,
        "right": module.sorsa_A,
        "scale": scalar(getattr(module, "scale", 1.0)),
    }
    return Layout("sorsa", "lowrank", {"base": module.weight}, parts)
