"""A paper's claim, its three-valued verdict and the evidence behind it; the papers' registry."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd

from spectra.methods import label
from spectra.store import Runs


@dataclass
class Claim:
    """One claim of a paper, its verdict on the runs (None: not checkable) and why."""

    claim: str
    verdict: bool | None
    evidence: str
    paper: str = ""

    @property
    def verdict_text(self) -> str:
        return {True: "true", False: "false", None: "not checkable"}[self.verdict]


Checker = Callable[[Runs, dict[str, int], bool], list[Claim]]  # (runs, steps, matched)


@dataclass(frozen=True)
class Paper:
    """A paper whose claims ``spectra analyze`` checks; shown by default when the runs include
    one of its ``methods``."""

    name: str
    title: str
    methods: frozenset[str]
    check: Checker
    notes: str = ""


def all_of(parts: Iterable[bool | None]) -> bool | None:
    """Three-valued AND: False if any part is False, else None if any is unknown, else True."""
    parts = list(parts)
    if False in parts:
        return False
    return None if None in parts or not parts else True


def fmt(value: float) -> str:
    """A number as claims and tables show it (3 significant digits)."""
    return f"{value:.3g}"


def cell(value) -> str:
    """A table cell: numbers as :func:`fmt`, NaN as an em dash."""
    if isinstance(value, float):
        return "—" if math.isnan(value) else fmt(value)
    return str(value)


def run_label(stats: pd.DataFrame, run: str) -> str:
    """ "lora (LoRA)": a run and its method's display name."""
    return f"{run} ({label(stats.at[run, 'method'])})"


Check = tuple[str, "bool | None"]  # (what fails when False, outcome; None: unknown)


def judge(text: str, checks: list[Check], evidence: str) -> Claim:
    """A claim whose verdict is all of ``checks``; the evidence names the checks that fail."""
    failed = [what for what, ok in checks if ok is False]
    if failed:
        evidence += "; fails: " + ", ".join(failed)
    return Claim(text, all_of(ok for _, ok in checks), evidence)
