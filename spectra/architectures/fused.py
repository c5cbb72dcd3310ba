"""What a fused q/k/v layout is: the module's name and the output rows of each slice."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from spectra.errors import SpectraError
from spectra.factors import Rows

SLICES = ("q", "k", "v")


@dataclass(frozen=True)
class Fused:
    """A fused projection ``module`` of architecture ``model_type``; ``rows(config,
    out_features)`` gives the output rows (torch layout) of each of q, k and v."""

    model_type: str
    module: str
    rows: Callable[[Mapping, int], dict[str, Rows]]

    def slices(self, config: Mapping, out_features: int) -> dict[str, Rows]:
        """The rows of q, k and v, checked to take each of the ``out_features`` rows once."""
        return checked(self.rows(config, out_features), out_features, f"the {self.model_type} "
                       f"config's q/k/v sizes for {self.module}")  # fmt: skip


def checked(slices: dict[str, Rows], out_features: int, what: str) -> dict[str, Rows]:
    """``slices``, or SpectraError naming ``what`` unless they take every output row once."""
    taken = sorted(i for rows in slices.values() for a, b in rows for i in range(a, b))
    if taken != list(range(out_features)):
        raise SpectraError(f"{what} do not add up to the module's {out_features} output rows")
    return slices


def grouped(groups: int, q: int, k: int, v: int) -> dict[str, Rows]:
    """The rows of ``groups`` consecutive blocks [q; k; v] of ``q``, ``k`` and ``v`` rows each.

    One group is the plain stack [q; k; v]; per-head interleaving (GPT-NeoX) is one group per
    head; grouped-query layouts (Falcon's new decoder) are one group per key/value head.
    """
    size = q + k + v
    offsets = {"q": (0, q), "k": (q, q + k), "v": (q + k, size)}
    return {
        part: tuple((g * size + a, g * size + b) for g in range(groups))
        for part, (a, b) in offsets.items()
        if b > a
    }


def stacked(q: int, k: int, v: int) -> dict[str, Rows]:
    """The rows of [q; k; v] stacked one after another, of ``q``, ``k`` and ``v`` rows."""
    return grouped(1, q, k, v)


def head_dim(config: Mapping) -> int:
    """The attention head size: ``head_dim`` when the config sets it, else hidden / heads."""
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
