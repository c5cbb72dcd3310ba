"""Engine rows of the update columns (delta_m, delta_dir, amplification, intruder_overlap)
against independent float64 numpy, on dense, low-rank and sliced layers; old files recomputed."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_engine import dense_run, sorsa_run
from test_metrics import reference_update

from spectra.columns import SCHEMA
from spectra.engine import FT_RANK, Engine, Settings, compute_run
from spectra.errors import SpectraError
from spectra.snapshots import Manifest, RunWriter, Target
from spectra.store import METADATA_KEY, read_run

TOL = 1e-10
UPDATE = ("delta_m", "delta_dir", "amplification")


def assert_update_rows(rows, truth, rank):
    for row in rows.itertuples():
        w0, wt = truth[0][row.layer], truth[row.step][row.layer]
        if row.step == 0:
            assert row.delta_m == row.delta_dir == 0.0 and np.isnan(row.amplification)
            assert list(row.intruder_overlap) == [1.0] * min(10, *w0.shape)
            continue
        want = reference_update(w0, wt, rank)
        for key in UPDATE:
            assert getattr(row, key) == pytest.approx(want[key], rel=TOL, abs=TOL), key
        u0 = np.linalg.svd(w0, full_matrices=False)[0]
        ut = np.linalg.svd(wt, full_matrices=False)[0]
        best = np.abs(ut[:, :10].T @ u0).max(axis=1)
        np.testing.assert_allclose(row.intruder_overlap, best, atol=1e-10)
        assert row.intruders == int((best < 0.5).sum())


def test_dense_rows_use_the_ft_rank(tmp_path):
    run_dir, truth = dense_run(tmp_path)
    assert_update_rows(read_run(compute_run(run_dir))[0], truth, FT_RANK)
    rows, meta = read_run(
        compute_run(run_dir, tmp_path / "r4.parquet", settings=Settings(ft_rank=4))
    )
    assert meta["engine"]["ft_rank"] == 4
    assert_update_rows(rows, truth, 4)


def test_low_rank_rows_go_through_the_factors(tmp_path):
    run_dir, truth, _ = sorsa_run(tmp_path)  # ΔW = P_t − P_0 of rank ≤ 2r, r = 3
    rows, _ = read_run(compute_run(run_dir))
    assert_update_rows(rows, truth, 3)


@pytest.mark.parametrize("kind", ["dense", "lowrank", "dora"])
def test_slices_of_a_fused_module(tmp_path, kind):
    """A slice's ΔW is its rows of the whole ΔW; its factors are the sliced row parts."""
    from spectra.factors import effective_weight

    g = torch.Generator().manual_seed(3)
    fused, rows = "h.0.attn.c_attn", {"q": ((0, 8), (16, 24)), "v": ((8, 16),)}
    frozen = {} if kind == "dense" else {"base": torch.randn(24, 10, generator=g)}
    dense0 = torch.randn(24, 10, generator=g)

    def parts_at(t):
        if kind == "dense":
            return {"weight": dense0 + 0.1 * t * torch.randn(24, 10, generator=g)}
        left = 0.1 * (t + 1) * torch.randn(24, 2, generator=g)
        parts = {"left": left, "right": torch.randn(2, 10, generator=g), "scale": torch.ones(1)}
        if kind == "dora":
            parts["magnitude"] = torch.rand(24, generator=g) + 0.5
        return parts

    targets = {f"{fused}[{n}]": Target(kind, (16 if n == "q" else 8, 10), None if kind == "dense"
               else 2, fused, r) for n, r in rows.items()}  # fmt: skip
    writer = RunWriter(tmp_path / "run", Manifest(run="run", method="x", targets=targets))
    if frozen:
        writer.write_frozen({fused: frozen})
    wholes = {}
    for t in (0, 1):
        parts = parts_at(t)
        writer.write_step(t, {fused: parts})
        wholes[t] = effective_weight(kind, frozen | parts)
    truth = {t: {} for t in wholes}
    for name, ranges in rows.items():
        for t, whole in wholes.items():
            truth[t][f"{fused}[{name}]"] = torch.cat([whole[a:b] for a, b in ranges]).numpy()
    out, _ = read_run(compute_run(tmp_path / "run"))
    assert_update_rows(out, truth, FT_RANK if kind == "dense" else 2)


def test_files_of_an_older_schema_are_recomputed(tmp_path):
    run_dir, truth = dense_run(tmp_path)
    out = compute_run(run_dir)
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    del meta["engine"]["schema"]
    old = table.drop_columns(["delta_m", "delta_dir", "amplification", "intruder_overlap"])
    pq.write_table(old.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), out)
    padded, _ = read_run(out)  # readable: the columns it lacks are null
    assert padded["delta_m"].isna().all() and padded["intruder_overlap"].isna().all()
    assert Engine(run_dir).update() == len(table)  # every row again, with the new columns
    rows, _ = read_run(out)
    assert list(rows.columns) == SCHEMA.names
    assert_update_rows(rows, truth, FT_RANK)


def test_ft_rank_must_be_positive(tmp_path):
    run_dir, _ = dense_run(tmp_path)
    with pytest.raises(SpectraError, match="ft_rank must be a positive rank"):
        Engine(run_dir, settings=Settings(ft_rank=0))


def test_compute_takes_the_ft_rank(tmp_path, cli):
    run_dir, truth = dense_run(tmp_path)
    code, _, err = cli(["compute", run_dir, "--ft-rank", "3"])
    assert code == 0, err
    rows, meta = read_run(tmp_path / "ft.parquet")
    assert meta["engine"]["ft_rank"] == 3
    assert_update_rows(rows, truth, 3)
    code, _, err = cli(["compute", run_dir, "--ft-rank", "0"])
    assert code == 2 and "--ft-rank" in err and "Traceback" not in err  # Click's usage error


def test_an_update_that_is_zero_has_no_amplification(tmp_path):
    manifest = Manifest(run="still", method="ft", targets={"l.0.q": Target("dense", (6, 5))})
    writer = RunWriter(tmp_path / "still", manifest)
    weight = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    for step in (0, 1):
        writer.write_step(step, {"l.0.q": {"weight": weight}})
    rows, _ = read_run(compute_run(tmp_path / "still"))
    moved = rows[rows.step == 1].iloc[0]
    assert moved.delta_m == moved.delta_dir == 0.0 and np.isnan(moved.amplification)
