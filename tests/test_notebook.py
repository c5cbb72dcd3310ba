"""notebooks/explore.ipynb is committed clean and runs top to bottom on hand-made runs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from runmaker import paper_like

pytestmark = pytest.mark.slow  # multi-process, training or long runs: not in make test-fast

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"


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
