"""The DoRA paper's claims (Section 2, Figure 2) checked on runs.

DoRA decomposes each weight into per-output-row magnitudes and directions and reports, over
the query matrices of every layer at intermediate training steps, how the direction change
ΔD_dir (``delta_dir``) relates to the magnitude change ΔM (``delta_m``): FT's correlation is
negative, LoRA's positive, DoRA's negative like FT's. Here the relation of a run is the
Pearson correlation r (and the least-squares slope) of ΔD_dir on ΔM over every layer and step
after 0 up to the comparison step; a claim holds when r has the sign it states.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from spectra.report.claims import Claim, Paper, fmt, judge
from spectra.store import label, ordered_runs

SIGNS = (  # (method, sign of the correlation DoRA reports, where)
    ("ft", -1, "Figure 2a"),
    ("lora", 1, "Figure 2b"),
    ("dora", -1, "Figure 2c, like FT"),
)


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


def claim_sign(frame: pd.DataFrame, step: int, method: str, sign: int, where: str) -> Claim:
    """The ΔD_dir–ΔM correlation of every ``method`` run has the sign DoRA reports."""
    word = "negative" if sign < 0 else "positive"
    text = f"{label(method)}: ΔD_dir and ΔM are {word}ly correlated ({where})"
    runs = [r for r in ordered_runs(frame) if frame.attrs["runs"][r]["method"] == method]
    if not runs:
        return Claim(text, None, f"needs a {label(method)} run")
    checks, notes = [], []
    for run in runs:
        line = fit(frame[frame["run"] == run], step)
        ok = None if math.isnan(line.r) else bool(np.sign(line.r) == sign)
        checks.append((f"{run} r={fmt(line.r)}", ok))
        notes.append(f"{run}: r={fmt(line.r)}, slope={fmt(line.slope)} over {line.n} points")
    return judge(text, checks, "; ".join(notes))


def check(frame: pd.DataFrame, step: int, matched: bool = False) -> list[Claim]:
    """Every DoRA claim's verdict on the runs, over the steps up to ``step``."""
    return [claim_sign(frame, step, method, sign, where) for method, sign, where in SIGNS]


PAPER = Paper(
    "dora",
    "DoRA paper: magnitude and direction updates (Section 2, Figure 2)",
    frozenset(method for method, _, _ in SIGNS),
    check,
    "r = Pearson correlation of ΔD_dir (mean 1 − cos of output rows) and ΔM (mean change of "
    "their norms) over every layer and step after 0 up to the summary step.",
)
