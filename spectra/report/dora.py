"""The DoRA paper's claims (Section 2, Figure 2) checked on runs.

DoRA decomposes each weight into per-output-row magnitudes and directions and reports, over
the query matrices of every layer at intermediate training steps, how the direction change
ΔD_dir (``delta_dir``) relates to the magnitude change ΔM (``delta_m``): FT's correlation is
negative, LoRA's positive, DoRA's negative like FT's. Here the relation of a run is the
Pearson correlation r (and the least-squares slope) of ΔD_dir on ΔM over every layer and step
after 0 up to the run's comparison step; a claim holds when r has the sign it states.
"""

from __future__ import annotations

import math

import numpy as np

from spectra.fits import fit
from spectra.methods import label
from spectra.report.claims import Claim, Paper, fmt, judge
from spectra.store import Runs

SIGNS = (  # (method, sign of the correlation DoRA reports, where)
    ("ft", -1, "Figure 2a"),
    ("lora", 1, "Figure 2b"),
    ("dora", -1, "Figure 2c, like FT"),
)


def claim_sign(runs: Runs, steps: dict[str, int], method: str, sign: int, where: str) -> Claim:
    """The ΔD_dir–ΔM correlation of every ``method`` run has the sign DoRA reports."""
    word = "negative" if sign < 0 else "positive"
    text = f"{label(method)}: ΔD_dir and ΔM are {word}ly correlated ({where})"
    runs_of = [r for r in runs.names if runs.method(r) == method]
    if not runs_of:
        return Claim(text, None, f"needs a {label(method)} run")
    checks, notes = [], []
    for run in runs_of:
        line = fit(runs.of(run), steps[run])
        ok = None if math.isnan(line.r) else bool(np.sign(line.r) == sign)
        checks.append((f"{run} r={fmt(line.r)}", ok))
        notes.append(f"{run}: r={fmt(line.r)}, slope={fmt(line.slope)} over {line.n} points")
    return judge(text, checks, "; ".join(notes))


def check(runs: Runs, steps: dict[str, int], matched: bool = False) -> list[Claim]:
    """Every DoRA claim's verdict on the runs, each over its steps up to its step."""
    return [claim_sign(runs, steps, method, sign, where) for method, sign, where in SIGNS]


PAPER = Paper(
    "dora",
    "DoRA paper: magnitude and direction updates (Section 2, Figure 2)",
    frozenset(method for method, _, _ in SIGNS),
    check,
    "r = Pearson correlation of ΔD_dir (mean 1 − cos of output rows) and ΔM (mean change of "
    "their norms) over every layer and step after 0 up to the summary step.",
)
