"""The benchmarks still run against today's code: each at its smallest size, its figures held to
what they measure (benchmarks/engine.py once broke silently when an engine signature changed).

No wall time is asserted: only that each script finishes, writes its JSON and that the figures
in it are what the script says they are (counts, exactness, invariants of the data).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = pytest.mark.slow


def bench(name: str, *args: str, out: Path) -> dict:
    """Run ``benchmarks/NAME.py ARGS --out OUT`` and return the JSON it wrote."""
    command = [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]
    assert f"wrote {out}" in result.stdout
    return json.loads(out.read_text())


def test_engine_update_columns_are_certified_and_exact(tmp_path):
    figures = bench("engine", "--sizes", "256", "--update-sizes", "256", "--repeats", "1",
                    out=tmp_path / "engine.json")  # fmt: skip
    assert [r["n"] for r in figures["results"]] == [256]
    assert all(v > 0 for v in figures["results"][0]["seconds"].values())
    (update,) = figures["update_columns"]
    for pair in ("ft", "ft-powerlaw"):
        assert update[pair]["certified"] is True
        assert update[pair]["bound"] <= 1e-10
        assert update[pair]["amplification_difference"] <= 1e-12
    assert set(update) == {"n", "lora", "ft", "ft-powerlaw"}


def test_svd_cache(tmp_path):
    figures = bench("svd_cache", "--sizes", "64", "--repeats", "1", out=tmp_path / "c.json")
    (row,) = figures["rows"]
    assert row["n"] == 64
    assert row["entry_mb"] == pytest.approx((2 * 64 * 64 + 64) * 8 / 2**20, rel=0.05)


def test_sorsa_forward(tmp_path):
    figures = bench("sorsa_forward", "--sizes", "64", "--rank", "8", "--tokens", "8",
                    "--min-run-time", "0.01", "--rounds", "1", out=tmp_path / "f.json")  # fmt: skip
    (row,) = figures["results"]
    assert (row["n"], row["rank"], row["tokens"]) == (64, 8, 8)
    assert all(math.isfinite(v) and v > 0 for k, v in row.items() if k.startswith("us_"))


def test_scale_counts_every_matrix(tmp_path):
    figures = bench("scale", "--size", "64", "--layers", "2", "--steps", "2",
                    out=tmp_path / "s.json")  # fmt: skip
    by_run = {}
    for r in figures["results"]:
        by_run.setdefault(r["run"], set()).add(r["matrices"])
    assert all(len(counts) == 1 for counts in by_run.values()), by_run  # every scheduler, all
    assert {r["config"] for r in figures["results"]} >= {"local-1", "local-2", "dask-2"}


def test_tracking_overhead_sizes(tmp_path):
    figures = bench("tracking_overhead", "--steps", "2", "--rounds", "1", out=tmp_path / "t.json")
    sizes = figures["snapshot_bytes"]
    assert sizes["lora"]["step_bytes"] < sizes["ft"]["step_bytes"] / 10  # adapters, not weights
    assert sizes["lora"]["frozen_bytes"] == pytest.approx(sizes["ft"]["step_bytes"], rel=0.01)
    assert set(figures["overhead"]) == {"none", "deferred", "inline-process", "inline-thread"}


def test_import_routes_read_the_checkpoints(tmp_path):
    figures = bench("import", "--size", "small", "--checkpoints", "1", "--compare-blocks", "1",
                    out=tmp_path / "i.json")  # fmt: skip
    routes = {r["route"]: r for r in figures["results"]}
    assert {"import ref", "import copy", "read ref", "read copy"} <= set(routes)
    assert routes["import copy"]["run_bytes_per_step"] > routes["import ref"]["run_bytes_per_step"]
