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
        what = f"the {self.model_type} config's q/k/v sizes for {self.module}"
        return checked(self.rows(Sizes(config, out_features, what), out_features), out_features,
                       what)  # fmt: skip


class Sizes(Mapping):
    """A config whose numbers are checked as a layout reads them: none can exceed the fused
    matrix's output rows (no head count or size does), so a layout never builds more row
    ranges than the matrix has rows."""

    def __init__(self, config: Mapping, out_features: int, what: str):
        self.config, self.out_features, self.what = config, out_features, what

    def __getitem__(self, key):
        value = self.config[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            fit(value, self.out_features, f"{self.what}: {key}")
        return value

    def __iter__(self):
        return iter(self.config)

    def __len__(self) -> int:
        return len(self.config)


def fit(value: float, out_features: int, what: str) -> float:
    """``value``, or SpectraError when it exceeds the module's ``out_features`` rows."""
    if value > out_features:
        raise SpectraError(f"{what} = {value} exceeds the module's {out_features} output rows")
    return value


def checked(slices: dict[str, Rows], out_features: int, what: str) -> dict[str, Rows]:
    """``slices``, or SpectraError naming ``what`` unless they take every output row once
    (checked on the row ranges, never on a list of every row)."""
    spans = [(a, b) for rows in slices.values() for a, b in rows]
    if not all(isinstance(x, int) for span in spans for x in span):
        raise SpectraError(f"{what} are not whole numbers")
    end = 0
    for start, stop in sorted((a, b) for a, b in spans if b > a):
        if start != end:
            break
        end = stop
    else:
        if end == out_features:
            return slices
    raise SpectraError(f"{what} do not add up to the module's {out_features} output rows")


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
