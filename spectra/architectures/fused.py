"""What a fused q/k/v layout is: the module's name and the output rows of each slice."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from spectra.errors import SpectraError
from spectra.factors import Rows

SLICES = ("q", "k", "v")


@dataclass(frozen=True)
class Fused:
    """A fused projection ``module`` of architecture ``model_type``; ``rows(config)`` gives
    the output rows (torch layout) of each of q, k and v."""

    model_type: str
    module: str
    rows: Callable[[Mapping], dict[str, Rows]]

    def slices(self, config: Mapping, out_features: int) -> dict[str, Rows]:
        """The rows of q, k and v, checked to take each of the ``out_features`` rows once."""
        slices = self.rows(config)
        taken = sorted(i for rows in slices.values() for a, b in rows for i in range(a, b))
        if taken != list(range(out_features)):
            raise SpectraError(
                f"the {self.model_type} config's q/k/v sizes do not add up to the "
                f"{out_features} output rows of {self.module}"
            )
        return slices


def stacked(q: int, k: int, v: int) -> dict[str, Rows]:
    """The rows of [q; k; v] stacked one after another, of ``q``, ``k`` and ``v`` rows."""
    return {"q": ((0, q),), "k": ((q, q + k),), "v": ((q + k, q + k + v),)}
