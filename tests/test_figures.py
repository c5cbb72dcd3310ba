"""spectra plot: the content of every figure, the files written, and bad input."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from runmaker import make_run, paper_like, parallel, scattered

from spectra import figures
from spectra.errors import SpectraError
from spectra.store import load_runs


@pytest.fixture
def runs(tmp_path):
    return paper_like(tmp_path / "runs")


@pytest.fixture
def frame(runs):
    return load_runs([str(p) for p in runs])


def panel_traces(fig, panel: int):
    """The traces drawn on panel number ``panel`` (1-based, row-major)."""
    suffix = "" if panel == 1 else str(panel)
    return [t for t in fig.data if t.xaxis == f"x{suffix}"]


def test_figure2_has_one_panel_per_run_in_method_order(frame):
    fig = figures.drift_figure(frame)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["FT", "LoRA", "SORSA w/o reg", "SORSA"]
    assert len(fig.data) == 4 * 4  # per panel: layer paths, q points, v points, mean
    for panel in range(1, 5):
        names = [t.name for t in panel_traces(fig, panel)]
        assert names == ["layer trajectories", "q_proj", "v_proj", "mean per step"]
    assert fig.layout.xaxis.title.text == "ΔΣ"
    assert fig.layout.yaxis.title.text == "ΔD (index-matched)"
    assert "index-matched" in fig.layout.title.text


def test_figure2_points_are_the_parquet_values(frame, runs):
    fig = figures.drift_figure(frame)
    raw = pd.read_parquet(runs[3])  # SORSA, the fourth panel
    traces = panel_traces(fig, 4)
    for trace in traces[1:3]:
        rows = raw[(raw["module"] == trace.name) & (raw["step"] > 0)]
        np.testing.assert_array_equal(trace.x, rows["delta_sigma"])
        np.testing.assert_array_equal(trace.y, rows["delta_d"])
        np.testing.assert_array_equal(trace.marker.color, rows["step"])
        assert list(trace.text) == [str(b) for b in rows["block"]]
        assert [tuple(c) for c in trace.customdata] == list(
            zip(rows["run"], rows["layer"], rows["step"], strict=True)
        )
        assert "layer" in trace.hovertemplate and "step" in trace.hovertemplate
    mean = raw.groupby("step")[["delta_sigma", "delta_d"]].mean()
    np.testing.assert_allclose(traces[3].x, mean["delta_sigma"])
    np.testing.assert_allclose(traces[3].y, mean["delta_d"])


def test_figure2_steps_share_one_colour_scale(frame):
    fig = figures.drift_figure(frame)
    markers = [t.marker for t in fig.data if t.mode != "lines"]
    assert {m.coloraxis for m in markers} == {"coloraxis"}
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 40


def test_mean_and_layer_trajectories_start_at_the_origin(tmp_path):
    path = make_run(tmp_path, "late", "lora", scattered(0.1), steps=(10, 20, 30))
    fig = figures.drift_figure(load_runs([path]))
    assert fig.layout.annotations[0].text == "LoRA — late"  # run not named after its method
    paths, *_, mean = fig.data
    assert (mean.x[0], mean.y[0]) == (0, 0) and mean.marker.color[0] == 0
    assert len(mean.x) == 4  # origin + 3 steps
    starts = [0, *[i + 1 for i, v in enumerate(paths.x) if v is None][:-1]]
    assert all(paths.x[i] == 0 and paths.y[i] == 0 for i in starts)
    assert len(starts) == 8  # one trajectory per layer


def test_figure2_matched_plots_the_matched_column(frame, runs):
    fig = figures.drift_figure(frame, matched=True)
    raw = pd.read_parquet(runs[0])
    rows = raw[(raw["module"] == "q_proj") & (raw["step"] > 0)]
    np.testing.assert_array_equal(panel_traces(fig, 1)[1].y, rows["delta_d_matched"])
    assert fig.layout.yaxis.title.text == "ΔD (matched)"
    assert "sign-invariant matched" in fig.layout.title.text


def test_figure3_overlays_loss_and_grad_norm_of_every_run(frame, runs):
    fig = figures.training_figure(frame)
    assert [a.text for a in fig.layout.annotations] == ["training loss", "gradient norm"]
    assert len(fig.data) == 2 * len(runs)
    assert fig.layout.yaxis.title.text == "training loss"
    assert fig.layout.yaxis2.title.text == "gradient norm"
    log = pd.read_parquet(runs[1].parent / "lora" / "train_log.parquet")
    loss, grad = [t for t in fig.data if t.legendgroup == "lora"]
    np.testing.assert_array_equal(loss.y, log["loss"])
    np.testing.assert_array_equal(grad.y, log["grad_norm"])
    assert sum(t.showlegend for t in fig.data) == len(runs)


def test_figure3_needs_train_logs(tmp_path):
    path = make_run(tmp_path, "a", "ft", parallel(0.1), log=False)
    with pytest.raises(SpectraError, match="needs train logs"):
        figures.training_figure(load_runs([path]))


def test_cond_figure_shows_sorsa_runs_on_log_axes(frame, runs):
    fig = figures.condition_figure(frame)
    assert {t.legendgroup for t in fig.data} == {"SORSA w/o reg", "SORSA"}
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"
    raw = pd.read_parquet(runs[3])
    mean = next(t for t in fig.data if t.name == "SORSA" and t.xaxis == "x")
    np.testing.assert_allclose(mean.y, raw.groupby("step")["cond_p"].mean())
    ortho = next(t for t in fig.data if t.name == "SORSA" and t.xaxis == "x2")
    np.testing.assert_allclose(ortho.y, raw.groupby("step")["ortho_err"].mean())


def test_cond_figure_needs_sorsa_runs(tmp_path):
    path = make_run(tmp_path, "a", "lora", parallel(0.1))
    with pytest.raises(SpectraError, match="needs SORSA runs"):
        figures.condition_figure(load_runs([path]))


def test_heatmap_is_log10_delta_d_per_layer_and_step(frame, runs):
    fig = figures.heatmap_figure(frame)
    assert len(fig.data) == 4
    heat = fig.data[0]  # FT
    raw = pd.read_parquet(runs[0])
    assert list(heat.x) == [10, 20, 30, 40]
    assert list(heat.y)[:2] == ["0 q_proj", "0 v_proj"]
    cell = raw[(raw["step"] == 30) & (raw["layer"] == "model.layers.0.self_attn.v_proj")]
    assert heat.z[1][2] == pytest.approx(np.log10(cell["delta_d"].iloc[0]))
    assert heat.customdata[1][2] == pytest.approx(cell["delta_d"].iloc[0])


def test_html_is_self_contained(frame, tmp_path):
    written = figures.write_figures(
        {"figure2": figures.drift_figure(frame)}, tmp_path / "out", ["html"]
    )
    assert written == [tmp_path / "out" / "figure2.html"]
    html = written[0].read_text()
    tags = re.findall(r"<script\b[^>]*>", html)
    assert tags and all("src=" not in tag for tag in tags)  # nothing fetched from a CDN
    assert len(html) > 1_000_000  # plotly.js is inlined


def test_images_without_a_browser_say_how_to_get_one(frame, tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "browser", lambda: None)
    with pytest.raises(SpectraError, match="apt-get install -y chromium"):
        figures.write_figures({"figure2": figures.drift_figure(frame)}, tmp_path, ["html", "png"])
    assert (tmp_path / "figure2.html").is_file()
    assert not (tmp_path / "figure2.png").exists()


@pytest.mark.skipif(figures.browser() is None, reason="no Chrome/Chromium for kaleido")
def test_png_and_svg_are_rendered(frame, tmp_path):
    fig = figures.training_figure(frame)
    written = figures.write_figures({"figure3": fig}, tmp_path, ["png", "svg"])
    assert [p.suffix for p in written] == [".html", ".png", ".svg"]
    assert (tmp_path / "figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "figure3.svg").read_text()[:500]


def test_options_are_parsed(frame):
    assert figures.parse_list(" PNG, svg,png", ("html", "png", "svg"), "format") == ["png", "svg"]
    with pytest.raises(SpectraError, match="unknown figure"):
        figures.parse_list("2,4", figures.FIGURES, "figure")
    assert figures.build(frame, "2", matched=True)[0] == "figure2-matched"


def test_plot_command_defaults_to_runs_glob_and_figures_dir(runs, monkeypatch, cli):
    monkeypatch.chdir(runs[0].parent.parent)
    code, out, _ = cli(["plot", "--figure", "2,cond"])
    assert code == 0
    assert out.splitlines() == ["wrote figures/figure2.html", "wrote figures/cond.html"]


def test_plot_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    good = make_run(tmp_path, "a", "lora", parallel(0.1), log=False)
    (tmp_path / "text.parquet").write_text("not parquet")
    cases = [
        ([], "no run files match runs/*.parquet"),
        ([tmp_path / "text.parquet"], "not a readable Parquet file"),
        ([good, "--figure", "5"], "unknown figure"),
        ([good, "--format", "gif"], "unknown format"),
        ([good, "--figure", "3"], "needs train logs"),
    ]
    for args, message in cases:
        code, _, err = cli(["plot", *args])
        assert code == 2, args
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
