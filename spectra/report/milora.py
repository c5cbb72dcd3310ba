"""Principal or minor components: PiSSA (Meng et al. 2024) and SORSA (Cao & Song 2024) train
the principal singular components of W_0, MiLoRA (Wang et al. 2024) the minor ones; so their
drift should concentrate in the principal, respectively the minor, end of the spectrum.

A run's drift profile is ``profile_dvec`` (the matched singular-vector drift per decile of
W_0's spectrum, decile 1 the largest σ_0) averaged over its layers at the comparison step. The
claim holds for a run when the decile it names (1 for PiSSA and SORSA, 10 for MiLoRA) has the
largest drift of the ten; ``profile_dsigma``'s peak is given alongside. MiLoRA is a label spectra
neither trains nor detects: a run counts as MiLoRA when its method is ``milora``
(``Tracker(..., method="milora")``, ``spectra import --method milora``).
"""

from __future__ import annotations

import numpy as np

from spectra.methods import label
from spectra.report.biderman import runs_of
from spectra.report.claims import Claim, Paper, fmt, judge
from spectra.store import Runs

ENDS = {"pissa": 0, "sorsa": 0, "sorsa-noreg": 0, "milora": 9}  # the decile each should peak in


def decile_profile(runs: Runs, run: str, step: int, column: str) -> np.ndarray:
    """The layer mean of ``column`` per decile at ``step`` (NaN where no layer has a value)."""
    rows = runs.of(run)
    rows = rows[(rows["step"] == step) & rows[column].notna()]
    if rows.empty:
        return np.full(10, np.nan)
    return np.nanmean(np.stack(rows[column].to_numpy()), axis=0)


def peak(profile: np.ndarray) -> int | None:
    """The decile (0-based) with the largest value; None when there is none."""
    return None if np.isnan(profile).all() else int(np.nanargmax(profile))


def claim_ends(runs: Runs, steps: dict[str, int], matched: bool = False) -> list[Claim]:
    """Each PiSSA/SORSA run drifts most in decile 1, each MiLoRA run in decile 10, each at its
    step."""
    checked = runs_of(runs, ENDS)
    present = sorted({label(runs.method(r)) for r in checked})
    text = ("SORSA/PiSSA drift concentrates in the principal decile, MiLoRA's in the minor "
            f"(checked: {', '.join(present) or 'none'})")  # fmt: skip
    if not checked:
        return [Claim(text, None, "needs a PiSSA, SORSA or MiLoRA run")]
    checks, notes = [], []
    for run in checked:
        want = ENDS[runs.method(run)]
        vectors = decile_profile(runs, run, steps[run], "profile_dvec")
        values = decile_profile(runs, run, steps[run], "profile_dsigma")
        top, top_values = peak(vectors), peak(values)
        ok = None if top is None else top == want
        share = vectors[top] / np.nansum(vectors) if top is not None else np.nan
        checks.append((f"{run} peaks in decile {'?' if top is None else top + 1}", ok))
        notes.append(
            f"{run}: vector drift decile 1 {fmt(vectors[0])}, decile 10 {fmt(vectors[9])}, "
            f"largest in decile {'?' if top is None else top + 1} ({fmt(100 * share)}% of the "
            f"ten); σ change largest in decile {'?' if top_values is None else top_values + 1}"
        )
    return [judge(text, checks, "; ".join(notes))]


PAPER = Paper(
    "milora",
    "PiSSA, SORSA vs MiLoRA: principal or minor singular components",
    frozenset(ENDS),
    claim_ends,
    "Deciles of W₀'s spectrum (1: the largest singular values); drift = profile_dvec, the "
    "matched singular-vector drift, mean over layers at the summary step. MiLoRA: runs "
    "labelled milora.",
)
