"""Summaries of runs and published claims checked on them (``spectra analyze``, ``compare``).

The summary and every claim take each run at one step, its *comparison step*: by default its
last step, or the last step every run has (``--step common``), or a given step
(:func:`spectra.store.comparison_steps`); the output says which. Each paper's claims live in
their own module (:mod:`.sorsa`, :mod:`.dora`) and are shown by default when the runs include
one of the paper's methods. :mod:`.tables` prints the tables.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import pandas as pd
from rich.console import Console

from spectra.columns import SUMMARY
from spectra.errors import SpectraError
from spectra.report import dora, sorsa
from spectra.report.claims import Claim, Paper, all_of
from spectra.report.sorsa import PARALLEL, claim_theorem, parallelism
from spectra.report.tables import fitted, markdown, rich_table
from spectra.store import Runs, comparison_steps, delta_d_column, delta_d_name, steps_text

__all__ = [
    "PAPERS", "PARALLEL", "Claim", "all_of", "check_claims", "claim_theorem", "claims_frame",
    "parallelism", "render", "select_papers", "summary",
]  # fmt: skip

FORMATS = ("table", "markdown", "csv", "json")
PAPERS: dict[str, Paper] = {paper.name: paper for paper in (sorsa.PAPER, dora.PAPER)}
KEEP = 4  # summary columns never left out of a narrow table: run, method, module, step


def summary(runs: Runs, steps: dict[str, int] | None = None) -> pd.DataFrame:
    """Per run and module (and all modules), the layer means at the run's step (``steps``;
    default: each run's last step), then how many steps and layers the run has."""
    steps = comparison_steps(runs) if steps is None else steps
    parts = []
    for run in runs.names:
        rows = runs.of(run)
        at = rows[rows["step"] == steps[run]]
        for module, group in [("all", at), *at.groupby("module", sort=True)]:
            means = group[list(SUMMARY)].mean()
            parts.append(
                {"run": run, "method": runs.method(run), "module": module, "step": steps[run],
                 **means.to_dict(), "steps": rows["step"].nunique(), "layers": len(group)}
            )  # fmt: skip
    return pd.DataFrame(parts)


def select_papers(runs: Runs, choice: str | None = None) -> list[str]:
    """The papers whose claims to check: ``choice`` ("sorsa,dora", "all", "none"), or by
    default every paper one of whose methods the runs include."""
    if choice is None:
        methods = {runs.method(run) for run in runs.meta}
        return [name for name, paper in PAPERS.items() if paper.methods & methods]
    choice = choice.strip().lower()
    if choice in ("all", "none"):
        return list(PAPERS) if choice == "all" else []
    names = [n.strip() for n in choice.split(",") if n.strip()]
    unknown = [n for n in names if n not in PAPERS]
    if unknown or not names:
        raise SpectraError(f"unknown claims {choice!r} (expected {', '.join(PAPERS)}, all or none)")
    return list(dict.fromkeys(names))


def check_claims(
    runs: Runs,
    steps: dict[str, int] | None = None,
    matched: bool = False,
    papers: list[str] | None = None,
) -> list[Claim]:
    """The verdict of every claim of ``papers`` (default: by method), each run at its step
    (``steps``; default: each run's last step)."""
    steps = comparison_steps(runs) if steps is None else steps
    claims = []
    for name in select_papers(runs) if papers is None else papers:
        for claim in PAPERS[name].check(runs, steps, matched):
            claim.paper = name
            claims.append(claim)
    return claims


def claims_frame(claims: list[Claim]) -> pd.DataFrame:
    """The claims as a table: claim, verdict, evidence."""
    return pd.DataFrame(
        [{"claim": c.claim, "verdict": c.verdict_text, "evidence": c.evidence} for c in claims],
        columns=["claim", "verdict", "evidence"],
    )


def render(
    runs: Runs,
    fmt: str = "table",
    matched: bool = False,
    width: int = 160,
    claims: str | None = None,
    step: str | int = "last",
) -> str:
    """The summary and claims of ``runs`` as text in ``fmt``, each run at its step by the
    ``step`` policy (last, common or a step number).

    ``claims``: which papers' claims ("sorsa,dora", "all", "none"; default: by method). A
    table wider than ``width`` leaves out its last columns, and says so.
    """
    if fmt not in FORMATS:
        raise SpectraError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    papers = select_papers(runs, claims)
    steps = comparison_steps(runs, step)
    checked = check_claims(runs, steps, matched, papers)
    means = summary(runs, steps)
    table = means.rename(columns=SUMMARY)
    heading = (
        f"Summary{' and claims' if papers else ''} at {steps_text(runs, steps, step)} "
        f"(layer means); ΔD is {delta_d_name(matched)}."
    )
    by_paper = [(PAPERS[p], claims_frame([c for c in checked if c.paper == p])) for p in papers]
    if fmt == "json":
        return json.dumps(
            {
                "steps": steps,
                "step_policy": step,
                "delta_d": delta_d_column(matched),
                "parallel_threshold": PARALLEL,
                "papers": papers,
                "summary": json.loads(means.to_json(orient="records")),
                "claims": [asdict(c) for c in checked],
            },
            indent=2,
            ensure_ascii=False,
        )
    if fmt == "csv":
        verdicts = claims_frame(checked).assign(paper=[c.paper for c in checked])
        return table.to_csv(index=False) + "\n" + verdicts.to_csv(index=False)
    if fmt == "markdown":
        parts = [heading, "## Summary", markdown(table)]
        for paper, verdicts in by_paper:
            parts += [f"## {paper.title}", markdown(verdicts), paper.notes]
        return "\n\n".join(parts)
    console = Console(file=io.StringIO(), width=width, force_terminal=False)
    console.print(heading)
    shown, left_out = fitted(console, table, "Summary", KEEP)
    console.print(shown)
    if left_out:
        console.print(
            f"Left out to fit {width} columns: {', '.join(left_out)}; --format csv, json or "
            "markdown shows every column."
        )
    styles = {"true": "green", "false": "red", "not checkable": "yellow"}
    for paper, verdicts in by_paper:
        console.print(rich_table(verdicts, paper.title, styles))
        console.print(paper.notes)
    return console.file.getvalue()
