"""How the engine computes rows: one frozen object that every task receives.

Everything but ``device`` is recorded in the Parquet metadata: rows computed under other
settings are computed again (``device`` changes where the SVDs run, not their results).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from spectra.columns import SCHEMA_VERSION
from spectra.errors import SpectraError
from spectra.metrics import INTRUDER_EPS, TOP_K

FT_RANK = 16  # default r of ΔW's top-r subspace (amplification) for layers without an adapter rank


@dataclass(frozen=True)
class Settings:
    """The metric settings of a computation and where its SVDs run."""

    top_k: int = TOP_K  # intruders: leading left singular vectors of W_t examined
    intruder_eps: float = INTRUDER_EPS  # intruders: new when no base vector has |cos| ≥ this
    ft_rank: int = FT_RANK  # amplification's r for layers without an adapter rank (FT)
    device: str = "cpu"  # where the float64 SVDs run: cpu or cuda

    def __post_init__(self):
        if self.ft_rank < 1:
            raise SpectraError(f"ft_rank must be a positive rank, got {self.ft_rank}")

    def recorded(self) -> dict:
        """What the Parquet metadata records of these settings (and of the schema)."""
        settings = asdict(self)
        del settings["device"]
        return settings | {"dtype": "float64", "schema": SCHEMA_VERSION}


DEFAULTS = Settings()
