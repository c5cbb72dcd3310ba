"""The figures of the ΔW spectrum columns: rank, profile, principal; their content against the
Parquet values, what they need, and PNGs at 32 blocks × 2 modules × 50 steps."""

from __future__ import annotations

import numpy as np
import pytest
from runmaker import large, large_moe, make_run, paper_like, parallel, routed

from spectra import figures
from spectra.errors import NotApplicable
from spectra.plotting import draw
from spectra.store import load_runs


@pytest.fixture
def runs(tmp_path):
    return load_runs([str(p) for p in paper_like(tmp_path / "runs")])


def traces_of(fig, name: str) -> list:
    return [t for t in fig.data if t.name == name]


def test_rank_figure_draws_every_layer_its_mean_r_and_k(runs):
    fig, frame = figures.rank_figure(runs), runs.rows
    assert [a.text for a in fig.layout.annotations][:4] == ["FT", "LoRA", "SORSA w/o reg", "SORSA"]
    lora = frame[(frame["run"] == "lora") & (frame["step"] > 0)]
    layer = lora[lora["layer"] == lora["layer"].iloc[0]].sort_values("step")
    name = layer["layer"].iloc[0]
    drawn = [t for t in fig.data if t.customdata is not None
             and tuple(t.customdata[0][:2]) == ("lora", name)]  # fmt: skip
    assert len(drawn) == 1 and list(drawn[0].y) == list(layer["dw_rank90"])
    mean = lora[lora["module"] == "q_proj"].groupby("step")["dw_rank90"].mean()
    (q_mean,) = [t for t in traces_of(fig, "q_proj (mean)") if t.xaxis == "x2"]
    np.testing.assert_allclose(q_mean.y, mean.to_numpy())
    lines = [t for t in fig.data if t.mode == "lines+text"]
    labels = {(t.xaxis, t.text[1], t.y[0]) for t in lines}
    assert ("x2", "adapter rank r = 16", 16) in labels  # LoRA's r, from its rank column
    assert ("x", "k = 64 (q_proj, v_proj)", 64) in labels
    assert not any(t.xaxis == "x" and "adapter" in t.text[1] for t in lines)  # FT has no r
    assert fig.layout.yaxis.type == "log"


def test_profile_figure_is_the_decile_means_per_step(runs):
    fig, frame = figures.profile_figure(runs), runs.rows
    sorsa = frame[(frame["run"] == "sorsa") & (frame["step"] > 0)]
    heat = [t for t in fig.data if t.name == "sorsa"]
    assert len(heat) == 2
    for trace, column in zip(heat, ("profile_dvec", "profile_dsigma"), strict=True):
        for j, step in enumerate(trace.x):
            values = np.stack(sorsa[sorsa["step"] == step][column].to_numpy()).mean(axis=0)
            np.testing.assert_allclose(np.asarray(trace.customdata)[:, j], values, rtol=1e-12)
            np.testing.assert_allclose(np.asarray(trace.z)[:, j], np.log10(values), rtol=1e-12)
        assert trace.y[0] == "1 (principal)" and trace.y[-1] == "10 (minor)"
    assert {t.coloraxis for t in fig.data} == {"coloraxis", "coloraxis2"}


def test_principal_figure_plots_energy_and_angle_means(runs):
    fig, frame = figures.principal_figure(runs), runs.rows
    for axis, column in (("x", "principal_energy"), ("x2", "principal_angle")):
        (mean,) = [t for t in traces_of(fig, "FT") if t.xaxis == axis]
        want = frame[(frame["run"] == "ft") & (frame["step"] > 0)].groupby("step")[column].mean()
        np.testing.assert_allclose(mean.y, want.to_numpy())
    assert "⌈0.1 · k⌉" in fig.layout.title.text.replace("<br>", " ")


def test_runs_without_the_columns_are_not_applicable(tmp_path):
    empty = {c: (lambda i, s: None) for c in ("dw_rank90", "principal_energy", "profile_dvec",
                                              "profile_dsigma")}  # fmt: skip
    old = load_runs([make_run(tmp_path, "old", "ft", parallel(0.01) | empty)])
    for name in ("rank", "profile", "principal"):
        with pytest.raises(NotApplicable, match=f"figure {name} needs"):
            draw(old, name)


@pytest.mark.slow
@pytest.mark.skipif(figures.browser() is None, reason="no Chrome/Chromium for kaleido")
def test_pngs_at_32_blocks(tmp_path):
    runs = load_runs([str(p) for p in large(tmp_path / "large")])
    assert runs.rows["layer"].nunique() == 64 and runs.rows["step"].nunique() == 50
    built = dict(draw(runs, name) for name in ("rank", "profile", "principal"))
    moe = load_runs([large_moe(tmp_path / "moe")])
    assert moe.rows["layer"].nunique() == 32 * 2 * 8 and moe.rows["step"].nunique() == 50
    built |= dict([draw(moe, "experts")])
    written = figures.export_figures(built, tmp_path / "figs", ["png"])
    pngs = [p for p in written if p.suffix == ".png"]
    assert [p.stem for p in pngs] == ["rank", "profile", "principal", "experts"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_experts_figure_is_delta_d_and_sigma_per_block_and_expert(tmp_path):
    runs = load_runs([make_run(tmp_path, "moe", "ft", routed(4), experts=4)])
    fig, frame = figures.experts_figure(runs), runs.rows
    last = frame[frame["step"] == frame["step"].max()]
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:4] == ["FT — moe — down_proj: ΔD", "FT — moe — down_proj: ΔΣ",
                          "FT — moe — gate_up_proj: ΔD", "FT — moe — gate_up_proj: ΔΣ"]  # fmt: skip
    panels = [(m, c) for m in ("down_proj", "gate_up_proj") for c in ("delta_d", "delta_sigma")]
    for trace, (module, column) in zip(fig.data, panels, strict=True):
        part = last[last["module"] == module]
        for b, block in enumerate(trace.y):
            for e, expert in enumerate(trace.x):
                cell = (part["block"] == block) & part["layer"].str.endswith(f"[{expert}]")
                value = part.loc[cell, column].item()
                drawn = np.asarray(trace.z)[b, e]
                assert np.isnan(drawn) if value == 0 else drawn == pytest.approx(np.log10(value))
    assert np.isnan(np.asarray(fig.data[0].z)).sum() == 4  # one expert per block never routed
    assert "-matched" in draw(runs, "experts", matched=True)[0]
    with pytest.raises(NotApplicable, match="figure experts needs MoE expert layers"):
        figures.experts_figure(load_runs([make_run(tmp_path / "q", "q", "ft", parallel(0.01))]))


def test_rank_legend_keys_every_module_of_every_run(tmp_path):
    paths = [make_run(tmp_path, "q", "ft", parallel(0.01)),
             make_run(tmp_path, "moe", "ft", routed(2), experts=2)]  # fmt: skip
    fig = figures.rank_figure(load_runs([str(p) for p in paths]))
    keyed = [t.name for t in fig.data if t.showlegend is not False]
    modules = ("down_proj", "gate_up_proj", "q_proj", "v_proj")
    assert sorted(keyed) == [f"{m} (mean)" for m in modules]
