"""The run-directory format and the engine: round trip, rows, cache, resume, bad input."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import spectra.engine as engine_module
from spectra.columns import SCHEMA
from spectra.engine import Engine, compute_run
from spectra.errors import SpectraError
from spectra.metrics import drift, factor_metrics
from spectra.run_files import step_file
from spectra.snapshots import Manifest, RunWriter, Target, open_run
from spectra.store import read_run

M, N, R = 24, 16, 3
STEPS = (0, 5, 10)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def dense_run(path, name="ft", seed=0, steps=STEPS, layers=2, dtype=torch.float32):
    """An FT-like run: full weights of ``layers`` q_proj matrices at ``steps``."""
    g = _gen(seed)
    w0 = {
        f"model.layers.{i}.self_attn.q_proj": torch.randn(M, N, generator=g) for i in range(layers)
    }
    manifest = Manifest(run=name, method="ft", targets={k: Target("dense", (M, N)) for k in w0})
    writer = RunWriter(path / name, manifest)
    truth = {}
    for step in steps:
        noise = {k: 0.02 * step * torch.randn(M, N, generator=g) for k in w0}
        layers_t = {k: {"weight": (w0[k] + noise[k]).to(dtype)} for k in w0}
        writer.write_step(step, layers_t)
        truth[step] = {k: v["weight"].double().numpy() for k, v in layers_t.items()}
    writer.finish()
    return path / name, truth


def sorsa_run(path, name="sorsa", seed=1, steps=STEPS):
    """A SORSA-like low-rank run stored as factors, with independent merged truth."""
    g = _gen(seed)
    layer = "model.layers.0.self_attn.v_proj"
    base = torch.randn(M, N, generator=g)
    u, s, vh = torch.linalg.svd(torch.randn(M, N, generator=g), full_matrices=False)
    manifest = Manifest(
        run=name, method="sorsa", rank=R, targets={layer: Target("lowrank", (M, N), R)}
    )
    writer = RunWriter(path / name, manifest)
    writer.write_frozen({layer: {"base": base}})
    truth, factors = {}, {}
    for step in steps:
        left = u[:, :R] + 0.01 * step * torch.randn(M, R, generator=g)
        right = vh[:R] + 0.01 * step * torch.randn(R, N, generator=g)
        values = s[:R] * (1 + 0.01 * step)
        parts = {"left": left, "right": right, "values": values, "scale": torch.tensor([0.5])}
        writer.write_step(step, {layer: parts})
        b, l_, r_, v_ = (t.double().numpy() for t in (base, left, right, values))
        truth[step] = {layer: b + 0.5 * (l_ * v_) @ r_}
        factors[step] = (l_, r_, 0.5 * v_)
    writer.finish()
    return path / name, truth, factors


def test_run_directory_round_trip(tmp_path):
    run_dir, truth = dense_run(tmp_path, dtype=torch.bfloat16)
    run = open_run(run_dir)
    assert run.steps == list(STEPS) and run.manifest.finished
    assert run.manifest.targets["model.layers.0.self_attn.q_proj"].shape == (M, N)
    for step in STEPS:
        for layer, want in truth[step].items():
            got = run.weight(step, layer)
            assert got.dtype == torch.float64
            np.testing.assert_array_equal(got.numpy(), want)
    assert not list(run_dir.glob("*.tmp")), "temporary files left behind"


def test_writer_is_idempotent_and_resumes(tmp_path):
    run_dir, _ = dense_run(tmp_path, steps=(0, 5))
    manifest = open_run(run_dir).manifest
    with pytest.raises(SpectraError, match="already holds a run"):
        RunWriter(run_dir, manifest)
    writer = RunWriter(run_dir, manifest, resume=True)
    assert not writer.manifest.finished
    w = open_run(run_dir).parts(5, "model.layers.0.self_attn.q_proj")
    writer.write_step(5, {"model.layers.0.self_attn.q_proj": {"weight": w["weight"] * 0}})
    writer.write_step(7, {"model.layers.0.self_attn.q_proj": {"weight": w["weight"]}})
    run = open_run(run_dir)
    assert run.steps == [0, 5, 7]
    assert torch.equal(run.parts(5, "model.layers.0.self_attn.q_proj")["weight"], w["weight"])


def test_rows_equal_independent_computation(tmp_path):
    run_dir, truth = dense_run(tmp_path)
    rows, meta = read_run(compute_run(run_dir))
    assert list(rows.columns) == SCHEMA.names
    assert len(rows) == len(STEPS) * 2
    assert meta["run"] == "ft" and meta["manifest"]["method"] == "ft"
    for row in rows.itertuples():
        want = drift(truth[0][row.layer], truth[row.step][row.layer])
        for key, value in want.items():
            assert getattr(row, key) == pytest.approx(value, rel=1e-10, abs=1e-10), key
        assert row.block == int(row.layer.split(".")[2]) and row.module == "q_proj"
        assert pd.isna(row.cond_p) and pd.isna(row.ortho_err)
    step0 = rows[rows.step == 0]
    assert (step0[["delta_sigma", "delta_d", "delta_d_matched"]] == 0).all().all()


def test_low_rank_rows_carry_factor_metrics(tmp_path):
    run_dir, truth, factors = sorsa_run(tmp_path)
    rows, _ = read_run(compute_run(run_dir))
    for row in rows.itertuples():
        want = drift(truth[0][row.layer], truth[row.step][row.layer])
        want |= factor_metrics(*factors[row.step])
        for key, value in want.items():
            assert getattr(row, key) == pytest.approx(value, rel=1e-9, abs=1e-10), key
    assert rows.ortho_err.iloc[0] < 1e-5 < 1e-2 < rows.ortho_err.iloc[-1]  # fp32 factors at step 0


def test_base_svd_is_computed_once_per_distinct_base(tmp_path, monkeypatch, svd_cache):
    calls = []
    real = engine_module.svd_cache.svd
    import spectra.certified

    modules = (engine_module.svd_cache, engine_module.row_metrics, spectra.certified)
    for module in modules:  # bases; W_t; ΔW (k = 16 = r: its full SVD)
        monkeypatch.setattr(module, "svd", lambda w, *a: calls.append(w.shape) or real(w, *a))
    first, _ = dense_run(tmp_path, name="a", seed=3)
    second, _ = dense_run(tmp_path, name="b", seed=3)  # same base weights, same later steps
    compute_run(first)
    assert len(calls) == 2 + 2 * 2 * 2  # two bases, then W_t and ΔW of two steps of two layers
    compute_run(second)
    assert len(calls) == 10 + 2 * 2 * 2  # the bases came from the cache
    assert len(list((svd_cache / "svd").iterdir())) == 2


def test_rerun_computes_only_missing_rows(tmp_path, monkeypatch):
    run_dir, _ = dense_run(tmp_path)
    out = compute_run(run_dir)
    rows, meta = read_run(out)
    from spectra.store import write_rows

    write_rows(out, rows[rows.step != 10], meta)  # as if interrupted before step 10
    calls = []
    real = engine_module.matrix_task
    monkeypatch.setattr(
        engine_module.incremental, "matrix_task", lambda *a: calls.append(a[1]) or real(*a)
    )
    engine = Engine(run_dir)
    assert engine.update() == 2
    assert calls == [10, 10]
    again, _ = read_run(out)
    pd.testing.assert_frame_equal(again, rows)
    assert Engine(run_dir).update() == 0


def test_engine_follows_a_growing_run(tmp_path):
    run_dir, _ = dense_run(tmp_path, steps=(0, 5))
    engine = Engine(run_dir)
    assert engine.update() == 4
    writer = RunWriter(run_dir, open_run(run_dir).manifest, resume=True)
    weights = open_run(run_dir).parts(5, "model.layers.0.self_attn.q_proj")["weight"]
    layers = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    writer.write_step(9, {k: {"weight": weights * 1.5} for k in layers})
    assert engine.update() == 2
    assert sorted(read_run(engine.out)[0].step.unique()) == [0, 5, 9]


@pytest.mark.slow
def test_two_workers_give_the_same_rows(tmp_path):
    run_dir, _ = dense_run(tmp_path)
    one = read_run(compute_run(run_dir, tmp_path / "one.parquet"))[0]
    two = read_run(compute_run(run_dir, tmp_path / "two.parquet", workers=2))[0]
    pd.testing.assert_frame_equal(one, two)


# --- bad input ---------------------------------------------------------------------------


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_writes_parquet(tmp_path, cli):
    run_dir, _ = dense_run(tmp_path)
    result = cli(["compute", run_dir])
    assert result.code == 0, result.err
    assert len(read_run(tmp_path / "ft.parquet")[0]) == 6


def test_missing_and_empty_directories(tmp_path, cli):
    cli(["compute", tmp_path / "nope"]).error_line("not found")
    (tmp_path / "empty").mkdir()
    cli(["compute", tmp_path / "empty"]).error_line("no manifest.json")


def test_corrupt_manifest(tmp_path, cli):
    run_dir, _ = dense_run(tmp_path)
    (run_dir / "manifest.json").write_text("{not json")
    cli(["compute", run_dir]).error_line("not a valid spectra manifest")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_snapshot_keeps_existing_parquet(tmp_path, damage, cli):
    run_dir, _ = dense_run(tmp_path)
    out = compute_run(run_dir)
    before = digest(out)
    rows, meta = read_run(out)
    from spectra.store import write_rows

    write_rows(out, rows[rows.step != 10], meta)
    before = digest(out)
    snapshot = run_dir / step_file(10)
    data = snapshot.read_bytes()
    snapshot.write_bytes(b"\x00garbage" * 10 if damage == "garbage" else data[: len(data) // 2])
    cli(["compute", run_dir]).error_line("corrupt or truncated", "step_00000010")
    assert digest(out) == before


def test_shape_mismatch_between_steps(tmp_path, cli):
    run_dir, _ = dense_run(tmp_path)
    layer = "model.layers.1.self_attn.q_proj"
    others = open_run(run_dir).parts(5, "model.layers.0.self_attn.q_proj")
    save_file(
        {
            "model.layers.0.self_attn.q_proj/weight": others["weight"],
            f"{layer}/weight": torch.ones(M, N + 1),
        },
        str(run_dir / step_file(5)),
    )
    cli(["compute", run_dir]).error_line("shape (24, 17)", layer)


def test_nan_weight_is_reported_and_good_rows_are_kept(tmp_path, cli):
    run_dir, _ = dense_run(tmp_path)
    layer = "model.layers.1.self_attn.q_proj"
    parts = {k: open_run(run_dir).parts(10, k)["weight"] for k in open_run(run_dir).layers}
    parts[layer] = parts[layer].clone()
    parts[layer][3, 4] = float("nan")
    save_file({f"{k}/weight": v for k, v in parts.items()}, str(run_dir / step_file(10)))
    cli(["compute", run_dir]).error_line("NaN or Inf", f"step 10 {layer}")
    rows, _ = read_run(tmp_path / "ft.parquet")
    assert len(rows) == 5 and not ((rows.step == 10) & (rows.layer == layer)).any()
    assert np.isfinite(rows[["delta_sigma", "delta_d"]].to_numpy()).all()


def test_nan_in_step_zero(tmp_path, cli):
    run_dir, _ = dense_run(tmp_path, steps=(0, 5))
    parts = {k: open_run(run_dir).parts(0, k)["weight"] for k in open_run(run_dir).layers}
    next(iter(parts.values()))[0, 0] = float("inf")
    save_file({f"{k}/weight": v for k, v in parts.items()}, str(run_dir / step_file(0)))
    cli(["compute", run_dir]).error_line("step-0 weight has NaN or Inf")


def test_zero_singular_values_are_infinite_condition_not_a_crash(tmp_path):
    manifest = Manifest(run="z", method="ft", targets={"l.0.q": Target("dense", (4, 3))})
    writer = RunWriter(tmp_path / "z", manifest)
    writer.write_step(0, {"l.0.q": {"weight": torch.eye(4, 3)}})
    writer.write_step(1, {"l.0.q": {"weight": torch.zeros(4, 3)}})
    rows, _ = read_run(compute_run(tmp_path / "z"))
    assert rows.cond_w.tolist() == [1.0, float("inf")]


def test_refuses_to_overwrite_a_foreign_parquet(tmp_path, cli):
    run_dir, _ = dense_run(tmp_path)
    foreign = tmp_path / "ft.parquet"
    pd.DataFrame({"x": [1, 2]}).to_parquet(foreign)
    before = digest(foreign)
    cli(["compute", run_dir]).error_line("not a spectra run file")
    assert digest(foreign) == before
    other, _ = dense_run(tmp_path, name="other")
    cli(["compute", other, "--out", foreign]).error_line("refusing")


def test_missing_step_zero(tmp_path):
    run_dir, _ = dense_run(tmp_path, steps=(5, 10))
    with pytest.raises(SpectraError, match="no step-0 snapshot"):
        compute_run(run_dir)


def test_manifest_from_a_newer_format_is_refused(tmp_path):
    run_dir, _ = dense_run(tmp_path)
    raw = json.loads((run_dir / "manifest.json").read_text())
    raw["format"] = 99
    (run_dir / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(SpectraError, match="format 99"):
        open_run(run_dir)


@pytest.mark.parametrize("kind", ["dense", "lowrank", "dora"])
def test_slice_targets_read_rows_of_their_source(tmp_path, kind):
    """A slice of a fused module is the same rows of the whole module's effective weight."""
    from spectra.factors import effective_weight

    g = _gen(7)
    fused, rows = "h.0.attn.c_attn", {"q": ((0, 4), (12, 16)), "v": ((8, 12),)}
    frozen = {} if kind == "dense" else {"base": torch.randn(16, 6, generator=g)}
    step = {"weight": torch.randn(16, 6, generator=g)} if kind == "dense" else {
        "left": torch.randn(16, 2, generator=g), "right": torch.randn(2, 6, generator=g),
        "scale": torch.tensor([0.5]),
    }  # fmt: skip
    if kind == "dora":
        step["magnitude"] = torch.rand(16, generator=g) + 0.5
    targets = {f"{fused}[{n}]": Target(kind, (8 if n == "q" else 4, 6), None if kind == "dense"
               else 2, fused, r) for n, r in rows.items()}  # fmt: skip
    writer = RunWriter(tmp_path / "run", Manifest(run="run", method="x", targets=targets))
    if frozen:
        writer.write_frozen({fused: frozen})
    writer.write_step(0, {fused: step})
    run = open_run(tmp_path / "run")
    assert run.manifest.targets[f"{fused}[q]"].rows == ((0, 4), (12, 16))
    whole = effective_weight(kind, frozen | step)
    assert torch.equal(run.weight(0, f"{fused}[q]"), torch.cat([whole[0:4], whole[12:16]]))
    assert torch.equal(run.weight(0, f"{fused}[v]"), whole[8:12])


def test_rank_counts_live_components_and_older_files_are_recomputed(tmp_path):
    """``rank``: components of W_p whose right row is non-zero (AdaLoRA's λ ≠ 0); cond_p over
    them. A Parquet file written before the column existed is read (rank null) and recomputed."""
    import pyarrow.parquet as pq

    from spectra.store import METADATA_KEY

    layer, g = "model.layers.0.self_attn.q_proj", _gen(3)
    base, left, a = (torch.randn(M, N, generator=g), torch.randn(M, 4, generator=g),
                     torch.randn(4, N, generator=g))  # fmt: skip
    lam = {
        0: torch.zeros(4),
        5: torch.tensor([1.0, 0.5, 0.0, 2.0]),
        10: torch.tensor([1.0, 0, 0, 3]),
    }
    manifest = Manifest(run="ada", method="adalora", targets={layer: Target("lowrank", (M, N), 4)})
    writer = RunWriter(tmp_path / "ada", manifest)
    writer.write_frozen({layer: {"base": base}})
    for step, values in lam.items():
        parts = {"left": left, "right": a * values[:, None], "scale": torch.tensor([0.5])}
        writer.write_step(step, {layer: parts})
    writer.finish()
    path = compute_run(tmp_path / "ada")
    rows = pd.read_parquet(path).set_index("step")
    assert rows["rank"].tolist() == [0, 3, 2]
    assert np.isnan(rows.loc[0, "cond_p"])
    for step in (5, 10):
        s = torch.linalg.svdvals(0.5 * left.double() @ (a * lam[step][:, None]).double())
        live = int((lam[step] != 0).sum())
        assert rows.loc[step, "cond_p"] == pytest.approx(float(s[0] / s[live - 1]), rel=1e-9)

    table = pq.read_table(path).drop_columns(["rank"])  # as spectra 0.1 wrote it
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    del meta["engine"]["schema"]
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), path)
    old, _ = read_run(path)
    assert old["rank"].isna().all()
    engine = Engine(tmp_path / "ada")
    assert engine.update() == 3
    assert pd.read_parquet(path)["rank"].tolist() == [0, 3, 2]
