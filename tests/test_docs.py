"""The documentation states the Parquet schema that spectra writes (docs/formats.md); the site
itself is built with mkdocs --strict by `make docs`, which `make test` runs."""

from __future__ import annotations

import re
from pathlib import Path

from spectra.columns import SCHEMA

FORMATS = Path(__file__).resolve().parents[1] / "docs" / "formats.md"
TYPES = {"string": "string", "int64": "int64", "int32": "int32", "double": "double",
         "list<item: double>": "list&lt;double&gt;"}  # fmt: skip


def _parquet_table() -> dict[str, str]:
    """{column: type} from the rows of the Parquet column table of docs/formats.md."""
    text = FORMATS.read_text().split("## The Parquet file", 1)[1].split("| key | what |")[0]
    columns = {}
    for names, kind in re.findall(r"^\| ((?:`\w+`(?:, )?)+) \| ([^|]+?) \|", text, re.M):
        for name in re.findall(r"`(\w+)`", names):
            columns[name] = kind
    return columns


def test_the_formats_page_lists_every_parquet_column_with_its_type() -> None:
    documented = _parquet_table()
    assert list(documented) == SCHEMA.names  # every column, in the file's order
    assert documented == {f.name: TYPES[str(f.type)] for f in SCHEMA}
