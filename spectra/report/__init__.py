"""Summaries of runs and published claims checked on them (``spectra analyze``).

The summary and every claim are judged at one step, the *comparison step*: the last step
after 0 that every run has. Each paper's claims live in their own module (:mod:`.sorsa`,
:mod:`.dora`) and are shown by default when the runs include one of the paper's methods.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import pandas as pd
from rich.console import Console
from rich.table import Table

from spectra.columns import SUMMARY
from spectra.errors import SpectraError
from spectra.report import dora, sorsa
from spectra.report.claims import Claim, Paper, all_of, cell
from spectra.report.sorsa import PARALLEL, claim_theorem, parallelism
from spectra.store import Runs, comparison_step, delta_d_column, delta_d_name
from spectra.terminal import shown, shown_json

__all__ = [
    "PAPERS", "PARALLEL", "Claim", "all_of", "check_claims", "claim_theorem", "claims_frame",
    "comparison_step", "parallelism", "render", "render_summary", "select_papers", "summary",
]  # fmt: skip

FORMATS = ("table", "markdown", "csv", "json")
PAPERS: dict[str, Paper] = {paper.name: paper for paper in (sorsa.PAPER, dora.PAPER)}


def summary(runs: Runs, step: int | None = None) -> pd.DataFrame:
    """Per run and module (and all modules), the layer means at ``step`` (the comparison step)."""
    step = comparison_step(runs) if step is None else step
    parts = []
    for run in runs.names:
        rows = runs.of(run)
        at = rows[rows["step"] == step]
        for module, group in [("all", at), *at.groupby("module", sort=True)]:
            means = group[list(SUMMARY)].mean()
            parts.append(
                {"run": run, "method": runs.method(run), "module": module,
                 "steps": rows["step"].nunique(), "layers": len(group), **means.to_dict()}
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
    runs: Runs, matched: bool = False, papers: list[str] | None = None
) -> tuple[int, list[Claim]]:
    """The comparison step and the verdict of every claim of ``papers`` (default: by method)."""
    step = comparison_step(runs)
    claims = []
    for name in select_papers(runs) if papers is None else papers:
        for claim in PAPERS[name].check(runs, step, matched):
            claim.paper = name
            claims.append(claim)
    return step, claims


def claims_frame(claims: list[Claim]) -> pd.DataFrame:
    """The claims as a table: claim, verdict, evidence."""
    return pd.DataFrame(
        [{"claim": c.claim, "verdict": c.verdict_text, "evidence": c.evidence} for c in claims],
        columns=["claim", "verdict", "evidence"],
    )


def _heading(step: int, matched: bool, claims: bool) -> str:
    return (
        f"Summary{' and claims' if claims else ''} at step {step}, the last step every run has "
        f"(layer means); ΔD is {delta_d_name(matched)}."
    )


def _rich_table(frame: pd.DataFrame, title: str, styles: dict | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for col in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[col])
        table.add_column(col, justify="right" if numeric else "left", overflow="fold")
    for _, row in frame.iterrows():
        style = (styles or {}).get(row.get("verdict"))
        table.add_row(*[shown(cell(v), markup=True) for v in row], style=style)  # c_attn[q]
    return table


def _csv(frame: pd.DataFrame) -> str:
    """The frame as CSV, its text cells shown safely (no control characters, no line breaks)."""
    text = frame.select_dtypes(exclude="number").columns
    safe = {c: frame[c].map(lambda v: shown(v) if isinstance(v, str) else v) for c in text}
    return frame.assign(**safe).to_csv(index=False)


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    cells = [[shown(cell(v)).replace("|", "\\|") for v in row] for row in frame.values]
    rows = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([header, rule, *rows])


def render(
    runs: Runs,
    fmt: str = "table",
    matched: bool = False,
    width: int = 160,
    claims: str | None = None,
) -> str:
    """The summary and claims of ``runs`` as text in ``fmt``.

    ``claims``: which papers' claims ("sorsa,dora", "all", "none"; default: by method).
    """
    if fmt not in FORMATS:
        raise SpectraError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    papers = select_papers(runs, claims)
    step, checked = check_claims(runs, matched, papers)
    means = summary(runs, step)
    table = means.rename(columns=SUMMARY)
    by_paper = [(PAPERS[p], claims_frame([c for c in checked if c.paper == p])) for p in papers]
    if fmt == "json":
        return shown_json(
            {
                "comparison_step": step,
                "delta_d": delta_d_column(matched),
                "parallel_threshold": PARALLEL,
                "papers": papers,
                "summary": json.loads(means.to_json(orient="records")),
                "claims": [asdict(c) for c in checked],
            },
            indent=2,
        )
    if fmt == "csv":
        verdicts = claims_frame(checked).assign(paper=[c.paper for c in checked])
        return _csv(table) + "\n" + _csv(verdicts)
    if fmt == "markdown":
        parts = [_heading(step, matched, bool(papers)), "## Summary", _markdown(table)]
        for paper, verdicts in by_paper:
            parts += [f"## {paper.title}", _markdown(verdicts), paper.notes]
        return "\n\n".join(parts)
    console = Console(file=io.StringIO(), width=width, force_terminal=False)
    console.print(_heading(step, matched, bool(papers)))
    console.print(_rich_table(table, "Summary"))
    styles = {"true": "green", "false": "red", "not checkable": "yellow"}
    for paper, verdicts in by_paper:
        console.print(_rich_table(verdicts, paper.title, styles))
        console.print(paper.notes)
    return console.file.getvalue()


def render_summary(runs: Runs, width: int = 160) -> str:
    """Each run's layer means at its own last step, as text (``spectra compare``: the runs it
    compares need share no step)."""
    last = runs.rows.groupby("run")["step"].max()
    means = pd.concat([summary(runs.with_rows(runs.of(run)), last[run]) for run in runs.names])
    means.insert(3, "step", means["run"].map(last))
    console = Console(file=io.StringIO(), width=width, force_terminal=False)
    title = "Summary at each run's last step (layer means)"
    console.print(_rich_table(means.rename(columns=SUMMARY), title))
    return console.file.getvalue()
