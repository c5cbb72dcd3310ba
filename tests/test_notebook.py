"""notebooks/explore.ipynb is committed clean, runs top to bottom on hand-made runs, and its
figures survive static rendering (nbconvert's HTML export), with or without a browser."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from runmaker import paper_like

from spectra.figures import browser
from spectra.notebook import NO_BROWSER_NOTE, WITHOUT_BROWSER

pytestmark = pytest.mark.slow  # multi-process, training or long runs: not in make test-fast

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"
PNG_IMG = re.compile(r'<img[^>]+src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"')
PLOTLY_DIV = re.compile(r'<div[^>]* class="plotly-graph-div"')


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not c.outputs and c.execution_count is None for c in code_cells(nb))


def test_notebook_runs_on_given_runs(tmp_path, monkeypatch):
    paper_like(tmp_path / "runs")
    monkeypatch.setenv("SPECTRA_RUNS", str(tmp_path / "runs" / "*.parquet"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK.parent}}
    )
    client.execute()
    outputs = [out for cell in code_cells(nb) for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    figures = [out for out in outputs if PLOTLY in out.get("data", {})]
    assert len(figures) == 7  # Figure 2 and matched, Figure 3, cond, heatmap, dora, intruders
    assert "figure subspace needs the run directories" in "".join(
        out.get("text", "") for out in outputs
    )  # hand-made runs have no snapshots
    texts = "".join(out.get("data", {}).get("text/plain", "") for out in outputs)
    assert "Theorem 5.5" in texts and "sorsa-noreg" in texts and "Figure 2a" in texts


def test_notebook_copied_elsewhere_finds_runs_in_its_working_directory(tmp_path, monkeypatch):
    paper_like(tmp_path / "runs")
    monkeypatch.delenv("SPECTRA_RUNS", raising=False)
    copy = tmp_path / "explore.ipynb"
    copy.write_bytes(NOTEBOOK.read_bytes())
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    outputs = [out for cell in code_cells(nb) for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert sum(PLOTLY in out.get("data", {}) for out in outputs) == 7
    if browser() is None:
        pytest.skip("no Chrome/Chromium for kaleido: the figures get no PNG copies")
    figures = [out for out in outputs if PLOTLY in out.get("data", {})]
    assert all("image/png" in out["data"] for out in figures)  # interactive and static
    html, _ = HTMLExporter().from_notebook_node(nb)
    assert len(PNG_IMG.findall(html)) == 7  # what a static viewer shows


def _run(cells: list[str], where: Path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": where}}
    ).execute()
    return nb


def test_without_a_browser_the_html_export_keeps_interactive_figures(tmp_path):
    """No Chrome/Chromium: no PNG and no failure; the note says why, the HTML export still
    draws each figure (plotly.js inline, offline)."""
    nb = _run(
        [
            "import spectra.notebook as nb\n"
            "nb.browser = lambda: None  # as on a machine without Chrome/Chromium\n"
            "nb.use_static_renderer()",
            "import plotly.graph_objects as go\n"
            "go.Figure(go.Scatter(x=[0, 1], y=[1, 0])).show()\n"
            "go.Figure(go.Bar(x=[0, 1], y=[2, 3])).show()",
        ],
        tmp_path,
    )
    first, second = (cell.outputs for cell in nb.cells)
    assert first[0]["text"] == NO_BROWSER_NOTE + "\n"
    assert first[1]["data"]["text/plain"] == repr(WITHOUT_BROWSER)
    shown = [out for out in second if PLOTLY in out.get("data", {})]
    assert len(shown) == 2 and not any("image/png" in out["data"] for out in shown)
    html, _ = HTMLExporter().from_notebook_node(nb)
    assert len(PLOTLY_DIV.findall(html)) == 2 and not PNG_IMG.search(html)
