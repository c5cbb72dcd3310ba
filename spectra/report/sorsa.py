"""The SORSA paper's claims (Section 4.2 and Theorem 5.5) checked on runs.

Drift claims compare each run at its comparison step (by default its last step; see
:func:`spectra.store.comparison_steps`).

**Parallelism** of a run: the mean pairwise cosine similarity between its layers' trajectory
displacement vectors. A layer's displacement vector is the concatenation of its step-to-step
moves (Δx, Δy) in the (ΔΣ, ΔD) plane from step 0 to the comparison step, with ΔΣ and ΔD each
divided by the run's mean over layers at the comparison step (the same per-panel scaling a
reader sees in Figure 2, so a method's overall size does not matter). It is 1 when every layer
makes proportional moves in the same direction at every step, and falls as layers head in
different directions or move at different times. A run is *parallel* when it is at least
``PARALLEL``; a drift is *large* when it is at least ``LARGE`` times SORSA's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from spectra.report.claims import Check, Claim, Paper, all_of, fmt, judge, run_label
from spectra.store import Runs, delta_d_column

PARALLEL = 0.9  # parallelism at or above which a run's layers move in parallel
LARGE = 2.0  # "a lot" of singular-vector drift: at least this many times SORSA's ΔD


def parallelism(rows: pd.DataFrame, step: int, column: str) -> float:
    """Mean pairwise cosine of one run's per-layer displacement vectors up to ``step``.

    NaN when fewer than two layers move or the run has not drifted at ``step``.
    """
    rows = rows[rows["step"] <= step]
    wide = rows.pivot_table(index="layer", columns="step", values=["delta_sigma", column])
    wide = wide.dropna(axis=1)
    x, y = wide["delta_sigma"], wide[column]
    if step not in x.columns or step not in y.columns:
        return math.nan
    if 0 not in x.columns:  # a run without step-0 rows starts at the origin all the same
        x.insert(0, 0, 0.0)
        y.insert(0, 0, 0.0)
    scale_x, scale_y = x[step].mean(), y[step].mean()
    if not (scale_x > 0 and scale_y > 0):
        return math.nan
    moves = np.hstack(
        [np.diff(x.to_numpy(), axis=1) / scale_x, np.diff(y.to_numpy(), axis=1) / scale_y]
    )
    norms = np.linalg.norm(moves, axis=1)
    units = moves[norms > 0] / norms[norms > 0, None]
    n = len(units)
    if n < 2:
        return math.nan
    gram = units @ units.T
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def run_stats(runs: Runs, steps: dict[str, int], column: str) -> pd.DataFrame:
    """Per run: method, mean ΔΣ and ΔD at its step (``steps``), and parallelism up to it."""
    stats = []
    for run in runs.names:
        rows = runs.of(run)
        step = steps[run]
        at = rows[rows["step"] == step]
        stats.append(
            {
                "run": run,
                "method": runs.method(run),
                "delta_sigma": at["delta_sigma"].mean(),
                "delta_d": at[column].mean(),
                "parallelism": parallelism(rows, step, column),
            }
        )
    return pd.DataFrame(stats).set_index("run")


def _describe(stats: pd.DataFrame, runs: Iterable[str], *fields: str) -> str:
    names = {"delta_sigma": "ΔΣ", "delta_d": "ΔD", "parallelism": "P"}
    values = lambda run: ", ".join(f"{names[f]}={fmt(stats.at[run, f])}" for f in fields)  # noqa: E731
    return "; ".join(f"{run_label(stats, run)}: {values(run)}" for run in runs)


def _parallel_check(stats: pd.DataFrame, run: str, want: bool) -> Check:
    """Whether ``run`` is parallel (P ≥ PARALLEL) as ``want`` says; unknown when P is NaN."""
    p = stats.at[run, "parallelism"]
    what = f"{run} {'not ' if want else ''}parallel (P={fmt(p)})"
    return what, None if math.isnan(p) else bool((p >= PARALLEL) == want)


def _above(stats: pd.DataFrame, high: str, low: str, field: str, factor: float = 1.0) -> Check:
    """Whether ``field`` of run ``high`` exceeds ``factor`` times that of run ``low``."""
    name = {"delta_sigma": "ΔΣ", "delta_d": "ΔD", "parallelism": "P"}[field]
    a, b = stats.at[high, field], stats.at[low, field]
    scaled = f"{factor:g}× " if factor != 1 else ""
    what = f"{high} {name}={fmt(a)} not above {scaled}{low}'s {fmt(b)}"
    return what, None if math.isnan(a) or math.isnan(b) else bool(a > factor * b)


def claim_ft_lora(stats: pd.DataFrame) -> Claim:
    """(1) FT and LoRA change singular vectors a lot and move in parallel."""
    text = "1. FT and LoRA change singular vectors a lot (ΔD) and their layers move in parallel"
    runs = stats.index[stats["method"].isin(["ft", "lora"])]
    sorsa = stats.index[stats["method"] == "sorsa"]
    if runs.empty:
        return Claim(text, None, "needs an FT or LoRA run")
    checks = [_parallel_check(stats, r, True) for r in runs]
    checks += [_above(stats, r, s, "delta_d", LARGE) for r in runs for s in sorsa]
    if sorsa.empty:
        checks.append(("a lot: needs a SORSA run to compare with", None))
    evidence = (
        f"{_describe(stats, [*runs, *sorsa], 'delta_d', 'parallelism')}; "
        f"a lot: ΔD > {LARGE:g}× SORSA's; parallel: P ≥ {PARALLEL}"
    )
    return judge(text, checks, evidence)


def claim_sorsa_least(stats: pd.DataFrame) -> Claim:
    """(2) SORSA with regularizer changes ΔΣ and ΔD least."""
    text = "2. SORSA with regularizer changes ΔΣ and ΔD least"
    sorsa = stats.index[stats["method"] == "sorsa"]
    others = stats.index[stats["method"] != "sorsa"]
    if sorsa.empty or others.empty:
        return Claim(text, None, "needs a SORSA run and a run of another method")
    checks = [
        _above(stats, o, s, field)
        for field in ("delta_sigma", "delta_d")
        for o in others
        for s in sorsa
    ]
    return judge(text, checks, _describe(stats, [*sorsa, *others], "delta_sigma", "delta_d"))


def claim_sorsa_distinct(stats: pd.DataFrame) -> Claim:
    """(3) SORSA's matrices move in distinct, non-parallel directions."""
    text = "3. SORSA's layers move in distinct, non-parallel directions"
    sorsa = stats.index[stats["method"] == "sorsa"]
    if sorsa.empty:
        return Claim(text, None, "needs a SORSA run")
    checks = [_parallel_check(stats, r, False) for r in sorsa]
    evidence = f"{_describe(stats, stats.index, 'parallelism')}; parallel: P ≥ {PARALLEL}"
    return judge(text, checks, evidence)


def claim_noreg(stats: pd.DataFrame) -> Claim:
    """(4) Without the regularizer SORSA drifts more and moves in parallel like LoRA/FT."""
    text = "4. SORSA without regularizer drifts more and moves in parallel like LoRA/FT"
    noreg = stats.index[stats["method"] == "sorsa-noreg"]
    sorsa = stats.index[stats["method"] == "sorsa"]
    if noreg.empty or sorsa.empty:
        return Claim(text, None, "needs a SORSA run and a SORSA w/o reg run")
    fields = ("delta_sigma", "delta_d", "parallelism")
    checks = [_above(stats, n, s, f) for n in noreg for s in sorsa for f in fields]
    checks += [_parallel_check(stats, n, True) for n in noreg]
    evidence = f"{_describe(stats, [*noreg, *sorsa], *fields)}; parallel: P ≥ {PARALLEL}"
    return judge(text, checks, evidence)


def mean_cond(runs: Runs, run: str) -> pd.Series:
    """κ(W_p) averaged over layers, per step, of one run."""
    return runs.of(run).groupby("step")["cond_p"].mean()


def claim_theorem(runs: Runs) -> Claim:
    """Theorem 5.5: after some step, κ(W_p) with the regularizer is below κ without."""
    text = "Theorem 5.5: after some step c, κ(W_p) with regularizer < without"
    reg = [r for r in sorted(runs.meta) if runs.method(r) == "sorsa"]
    unreg = [r for r in sorted(runs.meta) if runs.method(r) == "sorsa-noreg"]
    if not reg or not unreg:
        return Claim(text, None, "needs a SORSA run and a SORSA w/o reg run")
    parts, notes = [], []
    for r in reg:
        for u in unreg:
            both = pd.concat([mean_cond(runs, r), mean_cond(runs, u)], axis=1, join="inner")
            parts.append(_cond_below(both.dropna(), f"{r} vs {u}", notes))
    return Claim(text, all_of(parts), " | ".join(notes))


def _cond_below(both: pd.DataFrame, pair: str, notes: list[str]) -> bool | None:
    """Whether κ(reg) (column 0) ends below κ(unreg) (column 1); a note on since when."""
    both = both[both.index > 0]
    if both.empty:
        notes.append(f"{pair}: no common step after 0 with κ(W_p)")
        return None
    below = both.iloc[:, 0] < both.iloc[:, 1]
    holds = bool(below.iloc[-1])
    if not holds:
        since = "not below at the last common step"
    elif below.all():
        since = "below at every common step after 0"
    else:
        since = f"below at every step after {below[~below].index.max()}"
    notes.append(
        f"{pair} at step {both.index[-1]}: κ={fmt(both.iloc[-1, 0])} vs {fmt(both.iloc[-1, 1])}"
        f"; {since} (below at {int(below.sum())} of {len(below)} common steps)"
    )
    return holds


def check(runs: Runs, steps: dict[str, int], matched: bool) -> list[Claim]:
    """Every SORSA claim's verdict on the runs, each run's drift taken at its step."""
    stats = run_stats(runs, steps, delta_d_column(matched))
    return [
        claim_ft_lora(stats),
        claim_sorsa_least(stats),
        claim_sorsa_distinct(stats),
        claim_noreg(stats),
        claim_theorem(runs),
    ]


PAPER = Paper(
    "sorsa",
    "SORSA paper: Section 4.2 claims and Theorem 5.5",
    frozenset({"sorsa", "sorsa-noreg"}),
    check,
    f"P = parallelism, mean pairwise cosine of per-layer displacement vectors in the "
    f"(ΔΣ, ΔD) plane (each axis scaled by the run's mean); parallel when P ≥ {PARALLEL}.",
)
