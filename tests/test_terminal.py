"""Names that come from files reach the terminal with control characters and rich markup
escaped: in analyze (every format), compare, plot, compute --follow, progress bars and error
lines."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from runmaker import LAYER, make_run, make_run_dir, parallel

from spectra.engine import Engine
from spectra.follow import summary
from spectra.run_files import MANIFEST
from spectra.terminal import shown, shown_json

CLEAR, CLIPBOARD, BIDI = "\x1b[2J", "\x1b]52;c;ZXZpbA==\x07", "\u202e"
EVIL = f"ev{CLEAR}il{CLIPBOARD}[red]X[/red]{BIDI}\nforged\x9b"
RAW = ("\x1b", "\x07", "\x9b", BIDI)


def safe(text: str) -> bool:
    """No raw control character, no forged line starting with the name's second half."""
    lines = text.splitlines()
    return not any(c in text for c in RAW) and not any(line.startswith("forged") for line in lines)


@given(st.text())
def test_shown_text_is_printable_and_json_reads_back(text):
    assert shown(text).isprintable()
    assert shown_json({"k": [text]}).isprintable()
    assert json.loads(shown_json({"k": [text]})) == {"k": [text]}


def test_shown_escapes_markup_for_rich():
    out = io.StringIO()
    Console(file=out, force_terminal=False).print(shown("[red]x[/red] \x1b", markup=True))
    assert out.getvalue().strip() == "[red]x[/red] \\x1b"


@pytest.fixture
def evil_runs(tmp_path) -> list[Path]:
    """Two Parquet runs; run a's name and module hold escape sequences and markup."""
    paths = [make_run(tmp_path, n, m, parallel(0.1)) for n, m in (("a", "ft"), ("b", "lora"))]
    table = pq.read_table(paths[0])
    meta = json.loads(table.schema.metadata[b"spectra"]) | {"run": EVIL}
    for column, value in (("run", EVIL), ("module", f"q{CLEAR}[bold]")):
        values = pa.array([value] * len(table))
        table = table.set_column(table.column_names.index(column), column, values)
    pq.write_table(table.replace_schema_metadata({b"spectra": json.dumps(meta)}), paths[0])
    return paths


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_analyze_escapes_names(evil_runs, cli, fmt):
    result = cli(["analyze", *evil_runs, "--format", fmt])
    assert result.code == 0, result
    assert safe(result.out + result.err), result.out
    if fmt == "json":
        assert json.loads(result.out)["summary"][0]["run"] == EVIL  # escaped, not changed
    else:
        assert "[red]X[/red]" in result.out  # shown, not taken as markup


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_the_heading_that_names_each_run_escapes_them(evil_runs, tmp_path, cli, fmt):
    """Runs at different last steps: the heading names each run with its step."""
    shorter = make_run(tmp_path / "short", "b", "lora", parallel(0.1), steps=(0, 10))
    result = cli(["analyze", evil_runs[0], shorter, "--format", fmt])
    assert result.code == 0, result
    heading = result.out.splitlines()[0]
    assert "each run's last step" in heading and "forged" in heading, result.out
    assert safe(result.out + result.err) and "[red]X[/red]" in heading, result.out


def test_plot_escapes_names_in_what_it_says(evil_runs, tmp_path, cli):
    result = cli(["plot", *evil_runs, "--figure", "all", "--out", tmp_path / "figs"])
    assert result.code == 0, result
    assert "skipped:" in result.out and safe(result.out + result.err)


def test_error_lines_escape_what_they_quote(tmp_path, cli):
    line = cli(["analyze", tmp_path / f"no{CLEAR}such\nfile.parquet"]).error_line("\\x1b[2J")
    assert safe(line)


def test_compare_escapes_a_folder_name(tmp_path, cli):
    from spectra.recipes import DEFAULT_MODEL

    finetuned = tmp_path / f"tuned{CLEAR}[red]"
    shutil.copytree(DEFAULT_MODEL, finetuned)
    result = cli(["compare", DEFAULT_MODEL, finetuned, "--out", tmp_path / "runs"])
    assert safe(result.out + result.err), result


def markup_run(tmp_path) -> Path:
    """A run directory whose run and layer names hold rich markup (printable, so allowed)."""
    run_dir = make_run_dir(tmp_path, "run")
    raw = json.loads((run_dir / MANIFEST).read_text())
    raw["run"], raw["method"] = "[blink]run[/blink]", "ft"
    raw["targets"] = {f"{LAYER}[bold]": raw["targets"][LAYER] | {"source": LAYER}}
    (run_dir / MANIFEST).write_text(json.dumps(raw))
    return run_dir


def test_follow_summary_shows_markup_as_text(tmp_path):
    engine = Engine(markup_run(tmp_path))
    engine.update()
    out = io.StringIO()
    Console(file=out, width=200).print(summary(engine))
    assert "[blink]run[/blink]" in out.getvalue() and "q_proj[bold]" in out.getvalue()


def test_progress_bar_shows_markup_as_text(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    Engine(markup_run(tmp_path), progress=True).update()
    assert "[blink]run[/blink]" in capsys.readouterr().err
