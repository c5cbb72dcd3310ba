"""How the engine computes rows: one frozen object that every task receives.

Everything but ``device`` is recorded in the Parquet metadata: rows computed under other
settings are computed again (``device`` changes where the SVDs run, not their results).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from spectra.columns import SCHEMA_VERSION
from spectra.errors import SpectraError
from spectra.metrics import INTRUDER_EPS, TOP_K
from spectra.spectrum import PRINCIPAL_FRAC, SPARSITY_ATOL, check_spectrum_settings

FT_RANK = 16  # default r of ΔW's top-r subspace (amplification) for layers without an adapter rank


@dataclass(frozen=True)
class Settings:
    """The metric settings of a computation and where its SVDs run."""

    top_k: int = TOP_K  # intruders: leading left singular vectors of W_t examined
    intruder_eps: float = INTRUDER_EPS  # intruders: new when no base vector has |cos| ≥ this
    ft_rank: int = FT_RANK  # amplification's r for layers without an adapter rank (FT)
    principal_frac: float = PRINCIPAL_FRAC  # p = ⌈principal_frac · k⌉ (principal_energy, _angle)
    sparsity_atol: float = SPARSITY_ATOL  # update_sparsity: |ΔW_ij| ≤ this counts as unchanged
    device: str = "cpu"  # where the float64 SVDs run: cpu or cuda

    def __post_init__(self):
        if self.ft_rank < 1:
            raise SpectraError(f"ft_rank must be a positive rank, got {self.ft_rank}")
        check_spectrum_settings(self.principal_frac, self.sparsity_atol)

    def recorded(self) -> dict:
        """What the Parquet metadata records of these settings (and of the schema)."""
        settings = asdict(self)
        del settings["device"]
        return settings | {"dtype": "float64", "schema": SCHEMA_VERSION}


DEFAULTS = Settings()
