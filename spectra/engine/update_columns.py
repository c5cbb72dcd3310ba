"""The update columns of one row: what ΔW = W_t − W_0 is and where it lies relative to W_0.

delta_m and delta_dir (DoRA), amplification (the LoRA paper), dw_rank90, dw_eff_rank,
principal_energy, principal_angle and update_sparsity (:mod:`spectra.spectrum`). A low-rank
layer's ΔW goes through its factors: its non-zero spectrum is exact from their thin SVD,
O((m + n) r²). A dense ΔW (FT, DoRA) takes its singular values alone (values only) and the
certified truncated SVD for amplification (:mod:`spectra.certified`), falling back to its
full SVD when that cannot be certified; on a GPU (``device``) the full SVD runs there.
"""

from __future__ import annotations

import math

import torch

from spectra.certified import certified_amplification
from spectra.engine.settings import DEFAULTS, Settings
from spectra.factors import Principal, update_factors
from spectra.metrics import (
    SVD,
    amplification_from_svd,
    factored_svd,
    magnitude_direction,
    svd,
)
from spectra.spectrum import (
    principal_angle,
    principal_count,
    principal_energy,
    update_sparsity,
    update_spectrum,
)

SPECTRUM = ("amplification", "dw_rank90", "dw_eff_rank", "principal_energy", "principal_angle",
            "update_sparsity")  # fmt: skip
STEP0 = {"delta_m": 0.0, "delta_dir": 0.0, **dict.fromkeys(SPECTRUM)}  # null at step 0


def dense_update(
    w0: torch.Tensor, delta: torch.Tensor, rank: int, device: str, certified: bool
) -> tuple[torch.Tensor, float]:
    """(singular values of a dense ΔW, its amplification): values only and the certified
    truncated SVD on the CPU (``certified``), else the full SVD of ΔW (on ``device``)."""
    if device == "cpu" and certified:
        s = torch.linalg.svdvals(delta)
        return s, certified_amplification(w0, delta, s, rank).value
    full = svd(delta, device)
    return full.s, amplification_from_svd(w0, full, rank)


def update_columns(
    kind: str,
    base: SVD,
    cur: SVD,
    w0: torch.Tensor,
    w: torch.Tensor,
    factors0: Principal | None,
    factors: Principal | None,
    rank: int,
    settings: Settings = DEFAULTS,
    certified: bool = True,
) -> dict:
    """Every update column of W_t (SVD ``cur``) against W_0 (SVD ``base``) after step 0.

    r = ``rank`` (the adapter rank, else ``ft_rank``); p = ⌈principal_frac · k⌉.
    """
    delta = w - w0
    p = principal_count(base.s.numel(), settings.principal_frac)
    row = magnitude_direction(w0, w) | {
        "principal_angle": principal_angle(base, cur, p),
        "update_sparsity": update_sparsity(delta, settings.sparsity_atol),
    }
    if torch.equal(w, w0):
        zero = {"dw_rank90": 0.0, "dw_eff_rank": math.nan, "principal_energy": math.nan}
        return row | zero | {"amplification": math.nan}
    if kind == "lowrank":
        thin = factored_svd(*update_factors(factors0, factors))
        s, amplification, energy = thin.s, amplification_from_svd(w0, thin, rank), thin
    else:
        s, amplification = dense_update(w0, delta, rank, settings.device, certified)
        energy = delta
    return (
        row
        | update_spectrum(s)
        | {
            "amplification": amplification,
            "principal_energy": principal_energy(base, p, energy),
        }
    )
