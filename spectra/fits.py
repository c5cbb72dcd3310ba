"""The least-squares line of DoRA's direction change on its magnitude change, one run's points:
what DoRA's claims (:mod:`spectra.report.dora`) judge and its figure draws."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd


class Fit(NamedTuple):
    """Least-squares line ΔD_dir = intercept + slope · ΔM, Pearson r, over ``n`` points."""

    slope: float
    intercept: float
    r: float
    n: int


def fit(rows: pd.DataFrame, up_to: int | None = None) -> Fit:
    """The fit of one run's (ΔM, ΔD_dir) points after step 0 (up to step ``up_to``).

    NaN slope and r when fewer than three points or either coordinate does not vary.
    """
    points = rows[(rows["step"] > 0) & ((rows["step"] <= up_to) if up_to is not None else True)]
    x = points["delta_m"].to_numpy(float)
    y = points["delta_dir"].to_numpy(float)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Fit(math.nan, math.nan, math.nan, len(x))
    slope, intercept = np.polyfit(x, y, 1)
    return Fit(float(slope), float(intercept), float(np.corrcoef(x, y)[0, 1]), len(x))
