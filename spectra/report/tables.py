"""How ``spectra analyze`` and ``compare`` print a table: a rich table that fits the width it
has (the rightmost, least important columns left out, and said so), or Markdown."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from spectra.report.claims import cell


def rich_table(frame: pd.DataFrame, title: str, styles: dict | None = None) -> Table:
    """``frame`` as a rich table; a row's style by its ``verdict`` (``styles``)."""
    table = Table(title=title, title_justify="left")
    for col in frame.columns:
        numeric = pd.api.types.is_numeric_dtype(frame[col])
        table.add_column(col, justify="right" if numeric else "left", overflow="fold")
    for _, row in frame.iterrows():
        style = (styles or {}).get(row.get("verdict"))
        table.add_row(*[escape(cell(v)) for v in row], style=style)  # c_attn[q]: not markup
    return table


def fitted(console: Console, frame: pd.DataFrame, title: str, keep: int) -> tuple[Table, list]:
    """A rich table of ``frame`` that fits the console's width: columns after the first
    ``keep`` are left out from the right until it does; returns it and the columns left out."""
    unbounded = console.options.update_width(1 << 20)  # a table's natural width, unwrapped
    shown = len(frame.columns)
    table = rich_table(frame, title)
    while shown > keep and console.measure(table, options=unbounded).maximum > console.width:
        shown -= 1
        table = rich_table(frame.iloc[:, :shown], title)
    return table, list(frame.columns[shown:])


def markdown(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table, every cell as the tables show it."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    cells = [[cell(v).replace("|", "\\|") for v in row] for row in frame.values]
    rows = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([header, rule, *rows])
