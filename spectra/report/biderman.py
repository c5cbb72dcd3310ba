"""Biderman et al. 2024, "LoRA Learns Less and Forgets Less" (Section 4.4, Figure 7): full
fine-tuning's weight update needs a rank 10–100× higher than typical LoRA configurations.

Here the rank an update needs is ``dw_rank90`` (the fewest singular directions of ΔW that hold
90% of ‖ΔW‖²_F, their measure), averaged over an FT run's layers at the comparison step, and
"far above" means at least ``FAR`` times the adapter rank r of every LoRA-family run.
"""

from __future__ import annotations

import math

from spectra.report.claims import Claim, Paper, fmt, judge
from spectra.store import Runs

FAR = 10.0  # "far above": at least this many times r (the paper: 10–100×)
LOW_RANK = frozenset({"lora", "pissa", "dora", "adalora", "milora"})  # LoRA-family methods


def adapter_rank(runs: Runs, run: str) -> int | None:
    """The run's adapter rank r: its manifest's, else the largest live ``rank``; None for FT."""
    manifest = runs.meta[run].get("manifest") or {}
    if manifest.get("rank"):
        return int(manifest["rank"])
    live = runs.of(run)["rank"].dropna()
    return int(live.max()) if len(live) else None


def runs_of(runs: Runs, methods) -> list[str]:
    """The runs whose method is one of ``methods``, in method order."""
    return [r for r in runs.names if runs.method(r) in methods]


def mean_rank(runs: Runs, run: str, step: int) -> tuple[float, float]:
    """(mean dw_rank90 over the run's layers at ``step``, mean k = min(m, n) of those layers)."""
    rows = runs.of(run)
    rows = rows[rows["step"] == step]
    k = rows[["rows", "cols"]].min(axis=1)
    return float(rows["dw_rank90"].mean()), float(k.mean())


def claim_rank(runs: Runs, steps: dict[str, int], matched: bool = False) -> list[Claim]:
    """FT's ΔW needs a rank at least FAR × the adapter rank r of each LoRA-family run, each run
    at its step."""
    text = f"FT's ΔW needs a rank far above LoRA's r (dw_rank90 ≥ {FAR:g}× r; Figure 7)"
    ft, low = runs_of(runs, {"ft"}), runs_of(runs, LOW_RANK)
    if not ft or not low:
        return [Claim(text, None, "needs an FT run and a LoRA-family run")]
    ranks = {run: adapter_rank(runs, run) for run in low}
    checks, notes = [], []
    for run in low:
        rank = mean_rank(runs, run, steps[run])[0]
        notes.append(f"{run}: r = {ranks[run]}, its own dw_rank90 = {fmt(rank)}")
    for run in ft:
        rank, k = mean_rank(runs, run, steps[run])
        notes.insert(0, f"{run}: dw_rank90 = {fmt(rank)} ({fmt(100 * rank / k)}% of k = {fmt(k)})")
        for other, r in ranks.items():
            if r is not None and FAR * r > k:  # not even a full-rank ΔW could be that far above
                notes.append(f"{FAR:g}× {other}'s r = {fmt(FAR * r)} exceeds k = {fmt(k)}")
            ok = None if math.isnan(rank) or r is None or FAR * r > k else bool(rank >= FAR * r)
            times = "?" if r is None else f"{fmt(rank / r)}×"
            notes.append(f"{run}'s is {times} {other}'s r")
            checks.append((f"{run} only {times} {other}'s r", ok))
    return [judge(text, checks, "; ".join(notes))]


PAPER = Paper(
    "biderman",
    'Biderman et al. 2024, "LoRA Learns Less and Forgets Less": the rank of the update',
    frozenset({"ft"}),
    claim_rank,
    "dw_rank90 = the fewest singular directions of ΔW = W_t − W₀ holding 90% of ‖ΔW‖²_F, "
    "mean over layers at the summary step; r = the run's adapter rank.",
)
