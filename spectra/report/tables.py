"""How ``spectra analyze`` and ``compare`` print a table: a rich table that fits the width it
has (the rightmost, least important columns left out, and said so), Markdown or CSV; every
cell shown safely (:func:`spectra.terminal.shown`)."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table

from spectra.report.claims import cell
from spectra.terminal import shown


def rich_table(frame: pd.DataFrame, title: str, styles: dict | None = None) -> Table:
    """``frame`` as a rich table; a row's style by its ``verdict`` (``styles``)."""
    table = Table(title=title, title_justify="left")
    for col in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[col])
        table.add_column(col, justify="right" if numeric else "left", overflow="fold")
    for _, row in frame.iterrows():
        style = (styles or {}).get(row.get("verdict"))
        table.add_row(*[shown(cell(v), markup=True) for v in row], style=style)  # c_attn[q]
    return table


def fitted(console: Console, frame: pd.DataFrame, title: str, keep: int) -> tuple[Table, list]:
    """A rich table of ``frame`` that fits the console's width: columns after the first
    ``keep`` are left out from the right until it does; returns it and the columns left out."""
    unbounded = console.options.update_width(1 << 20)  # a table's natural width, unwrapped
    kept = len(frame.columns)
    table = rich_table(frame, title)
    while kept > keep and console.measure(table, options=unbounded).maximum > console.width:
        kept -= 1
        table = rich_table(frame.iloc[:, :kept], title)
    return table, list(frame.columns[kept:])


def markdown(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table, every cell as the tables show it."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    cells = [[shown(cell(v)).replace("|", "\\|") for v in row] for row in frame.values]
    rows = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([header, rule, *rows])


def csv(frame: pd.DataFrame) -> str:
    """``frame`` as CSV, its text cells shown safely (no control characters, no line breaks)."""
    text = frame.select_dtypes(exclude="number").columns
    safe = {c: frame[c].map(lambda v: shown(v) if isinstance(v, str) else v) for c in text}
    return frame.assign(**safe).to_csv(index=False)
