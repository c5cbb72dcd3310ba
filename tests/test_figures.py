"""spectra plot: the content of every figure, readability, the files written, and bad input."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from runmaker import large, make_run, paper_like, parallel, scattered
from test_engine import dense_run

from spectra import figures
from spectra.engine import compute_run
from spectra.engine.subspace import subspaces
from spectra.errors import NotApplicable, SpectraError
from spectra.figures import export, panels
from spectra.metrics import subspace_similarity
from spectra.plotting import draw, parse_list
from spectra.store import load_runs


@pytest.fixture
def runs(tmp_path):
    return paper_like(tmp_path / "runs")


@pytest.fixture
def frame(runs):
    return load_runs([str(p) for p in runs])


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """FT, LoRA and DoRA runs of 32 blocks × 2 modules × 50 steps."""
    return load_runs([str(p) for p in large(tmp_path_factory.mktemp("large"))])


def panel_traces(fig, panel: int):
    """The traces drawn on panel number ``panel`` (1-based, row-major)."""
    suffix = "" if panel == 1 else str(panel)
    return [t for t in fig.data if t.xaxis == f"x{suffix}"]


def title_lines(text: str) -> list[str]:
    return text.split("<br>")


# -- Figure 2 ------------------------------------------------------------------------------


def test_figure2_has_one_panel_per_run_in_method_order(frame):
    fig = figures.drift_figure(frame)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["FT", "LoRA", "SORSA w/o reg", "SORSA"]
    for panel in range(1, 5):
        names = [t.name for t in panel_traces(fig, panel)]
        assert names == ["layer trajectories", "q_proj", "v_proj", "block (end)", "mean per step"]
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
        assert trace.text is None  # no label on every point: hover carries them
        steps = [f"step {step}" for step in rows["step"]]
        assert [tuple(c) for c in trace.customdata] == list(
            zip(rows["run"], rows["layer"], steps, strict=True)
        )
        assert "layer" in trace.hovertemplate and "%{customdata[2]}" in trace.hovertemplate
    ends = traces[3]
    last = raw[raw["step"] == 40].set_index("delta_sigma")
    assert 0 < len(ends.x) <= 8
    for x, text in zip(ends.x, ends.text, strict=True):  # labels sit on layers' last points
        assert str(last.loc[x, "block"]) == text
    mean = raw.groupby("step")[["delta_sigma", "delta_d"]].mean()
    np.testing.assert_allclose(traces[4].x, mean["delta_sigma"])
    np.testing.assert_allclose(traces[4].y, mean["delta_d"])


def test_figure2_steps_share_one_colour_scale(frame):
    fig = figures.drift_figure(frame)
    markers = [t.marker for t in fig.data if t.mode not in ("lines", "text")]
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


# -- readable at real size -------------------------------------------------------------------


def test_32_block_figure2_labels_only_what_can_be_read(big):
    fig = figures.drift_figure(big)
    for panel in (1, 2, 3):
        ends = next(t for t in panel_traces(fig, panel) if t.name == "block (end)")
        assert 0 < len(ends.text) < 64  # 64 layers; crowded end points stay unlabelled
        assert all(re.fullmatch(r"\d+", t) for t in ends.text)
        points = [t for t in panel_traces(fig, panel) if t.name in ("q_proj", "v_proj")]
        assert sum(len(t.x) for t in points) == 64 * 49  # every layer at every step after 0


def test_readable_keeps_labels_apart():
    spread = pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 2.0]})
    same = pd.DataFrame({"x": [1.0, 1.0, 1.0], "y": [1.0, 1.0, 1.0]})
    bounds = pd.DataFrame({"x": [0.0, 2.0], "y": [0.0, 2.0]})
    size = (400, 400)
    assert panels.readable(spread, ["1", "2", "3"], size, bounds).all()
    assert panels.readable(same, ["1", "2", "3"], size, bounds).sum() == 1
    blocked = panels.readable(spread, ["1", "2", "3"], size, bounds, avoid=spread.iloc[[1]])
    assert list(blocked) == [True, False, True]  # a label never sits on a marker to avoid


@pytest.mark.parametrize("name", ["2", "dora", "heatmap", "intruders", "3"])
def test_titles_wrap_to_the_figure_instead_of_being_cut(tmp_path, name):
    long = "lora-rank-64-seed-1234-cosine-schedule-warmup-0.03"
    path = make_run(tmp_path, long, "lora", parallel(0.1))  # one panel, a long run name
    fig = draw(load_runs([path]), name)[1]
    width = fig.layout.width
    for line in title_lines(fig.layout.title.text):
        assert len(line) * panels.CHAR_WIDTH * panels.TITLE_FONT <= width - 40, line
    for note in fig.layout.annotations:
        for line in title_lines(note.text):
            assert len(line) * panels.CHAR_WIDTH * panels.PANEL_TITLE_FONT <= 460, line
    assert fig.layout.margin.t >= 22 * len(title_lines(fig.layout.title.text))


def test_one_tick_format_per_axis_kind(frame):
    fig = figures.intruders_figure(frame)
    for name in fig.layout:
        if name.startswith("xaxis"):
            assert fig.layout[name].tickformat == "d"  # every x axis is a step axis
    dora = figures.dora_figure(frame)
    formats = {dora.layout[n].tickformat for n in dora.layout if n.startswith(("xaxis", "yaxis"))}
    assert formats == {"~g"}


def test_layer_and_module_filters(frame):
    some = panels.select_layers(frame, "0-1,3", "v_proj")
    assert set(some.rows["block"]) == {0, 1, 3} and set(some.rows["module"]) == {"v_proj"}
    assert some.meta == frame.meta
    fig = figures.drift_figure(some)
    assert [t.name for t in panel_traces(fig, 1)][1] == "v_proj"
    assert panels.parse_blocks("2, 5-7") == [range(2, 3), range(5, 8)]
    with pytest.raises(SpectraError, match="not a block number"):
        panels.parse_blocks("a-b")
    with pytest.raises(SpectraError, match=r"select no layer .*blocks 0-3"):
        panels.select_layers(frame, "9")


def test_shared_axes_give_every_panel_one_range(frame):
    def groups(fig, which):
        names = [n for n in fig.layout if n.startswith(f"{which}axis")]
        return {fig.layout[n].matches or n.replace("axis", "") for n in names}

    alone = figures.drift_figure(frame)
    assert len(groups(alone, "x")) == len(groups(alone, "y")) == 4
    shared = figures.drift_figure(frame, shared=True)
    assert len(groups(shared, "x")) == len(groups(shared, "y")) == 1


# -- DoRA, subspace, intruders ----------------------------------------------------------------


def test_dora_figure_draws_each_runs_points_and_fitted_slope(frame, runs):
    fig = figures.dora_figure(frame)
    titles = [a.text for a in fig.layout.annotations]
    assert [t.split(":")[0] for t in titles] == ["FT", "LoRA", "SORSA w/o reg", "SORSA"]
    for panel, path in ((1, runs[0]), (2, runs[1])):
        raw = pd.read_parquet(path)
        moved = raw[raw["step"] > 0]
        slope, intercept = np.polyfit(moved["delta_m"], moved["delta_dir"], 1)
        r = np.corrcoef(moved["delta_m"], moved["delta_dir"])[0, 1]
        traces = panel_traces(fig, panel)
        q = next(t for t in traces if t.name == "q_proj")
        np.testing.assert_array_equal(q.x, moved[moved["module"] == "q_proj"]["delta_m"])
        np.testing.assert_array_equal(q.y, moved[moved["module"] == "q_proj"]["delta_dir"])
        line = next(t for t in traces if t.name == "least-squares fit")
        assert (line.y[1] - line.y[0]) / (line.x[1] - line.x[0]) == pytest.approx(slope)
        assert line.y[0] == pytest.approx(intercept + slope * line.x[0])
        assert f"slope {slope:.3g}, r = {r:.2f}" in titles[panel - 1]
    assert "slope -" in titles[0] and "slope -" not in titles[1]  # FT falls, LoRA rises
    assert fig.layout.xaxis.title.text.startswith("ΔM") and "ΔD_dir" in fig.layout.yaxis.title.text


@pytest.fixture
def seeds(tmp_path):
    """Two FT runs of the same layers from different seeds, computed, with run directories."""
    for name, seed in (("a", 0), ("b", 1)):
        dense_run(tmp_path, name=name, seed=seed)
        compute_run(tmp_path / name)
    return [tmp_path / "a.parquet", tmp_path / "b.parquet"]


def right_vectors(delta: np.ndarray, r: int) -> np.ndarray:
    return np.linalg.svd(delta, full_matrices=False)[2][:r].T


def test_subspace_figure_is_phi_of_the_top_directions(seeds, tmp_path):
    from spectra.snapshots import open_run

    frame = load_runs(seeds)
    fig = figures.subspace_figure(frame, subspaces(frame))
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["a vs its W₀: q_proj", "b vs a: q_proj", "b vs its W₀: q_proj"]
    assert "block 1, step 10" in fig.layout.title.text  # middle block, last common step
    layer = "model.layers.1.self_attn.q_proj"
    weights = {}
    for name in ("a", "b"):
        run = open_run(tmp_path / name)
        weights[name] = run.weight(0, layer).numpy(), run.weight(10, layer).numpy()
    r = 16  # FT: the engine's ft_rank, ΔW (24×16) has rank 16
    va, vb = (right_vectors(w[1] - w[0], r) for w in weights.values())
    vb0 = right_vectors(weights["b"][0], r)
    np.testing.assert_allclose(fig.data[1].z, subspace_similarity(vb, va), atol=1e-10)
    np.testing.assert_allclose(fig.data[2].z, subspace_similarity(vb, vb0), atol=1e-10)
    assert fig.data[1].z.shape == (16, 16) and list(fig.data[1].y) == list(range(1, 17))
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == 1


def test_subspace_figure_says_which_run_directory_is_missing(seeds, tmp_path):
    import shutil

    shutil.rmtree(tmp_path / "b")
    with pytest.raises(NotApplicable, match=r"missing or without manifest.json: b \("):
        subspaces(load_runs(seeds))


def test_intruders_figure_shows_best_cosines_and_counts(frame, runs):
    fig = figures.intruders_figure(frame)
    raw = pd.read_parquet(runs[3])  # SORSA: the fourth row, panels 7 (cosines) and 8 (counts)
    left, right = panel_traces(fig, 7), panel_traces(fig, 8)
    lines = [t for t in left if t.name.startswith("u_")]
    assert [t.name for t in lines] == [f"u_{i}" for i in range(1, 11)]
    best = np.stack(raw["intruder_overlap"].to_numpy())  # rows × 10
    u3 = pd.Series(best[:, 2]).groupby(raw["step"].to_numpy()).mean()
    np.testing.assert_allclose(lines[2].y, u3.to_numpy())
    intruders = next(t for t in left if t.name == "intruder")
    assert len(intruders.y) == int((best < 0.5).sum()) and (np.array(intruders.y) < 0.5).all()
    counts = raw.pivot_table(index="layer", columns="step", values="intruders")
    np.testing.assert_array_equal(right[0].z, counts.to_numpy())
    eps = [s for s in fig.layout.shapes if s.y0 == s.y1]
    assert len(eps) == 4 and {s.y0 for s in eps} == {0.5}  # the ε line in each cosine panel


# -- figures that do not apply ---------------------------------------------------------------


def test_figure3_needs_train_logs(tmp_path):
    path = make_run(tmp_path, "a", "ft", parallel(0.1), log=False)
    with pytest.raises(NotApplicable, match="needs train logs"):
        draw(load_runs([path]), "3")


def test_cond_figure_needs_sorsa_runs(tmp_path):
    path = make_run(tmp_path, "a", "lora", parallel(0.1))
    with pytest.raises(NotApplicable, match="needs SORSA runs"):
        figures.condition_figure(load_runs([path]))


def test_figure_all_draws_what_applies_and_says_what_it_skipped(runs, monkeypatch, cli):
    monkeypatch.chdir(runs[0].parent.parent)
    code, out, _ = cli(["plot", "--figure", "all"])
    assert code == 0
    lines = out.splitlines()
    wrote = [line.removeprefix("wrote figures/") for line in lines if line.startswith("wrote")]
    stems = ("figure2", "figure3", "cond", "heatmap", "dora", "intruders", "rank", "profile",
             "principal")  # fmt: skip
    assert wrote == [f"{s}.html" for s in stems]
    skipped = [line for line in lines if line.startswith("skipped")]
    assert len(skipped) == 2 and "figure subspace needs the run directories" in skipped[0]
    assert "figure experts needs MoE expert layers" in skipped[1]


# -- figures kept from before ------------------------------------------------------------------


def test_figure3_overlays_loss_and_grad_norm_of_every_run(frame, runs):
    fig = draw(frame, "3")[1]
    assert [a.text for a in fig.layout.annotations] == ["training loss", "gradient norm"]
    assert len(fig.data) == 2 * len(runs)
    assert fig.layout.yaxis.title.text == "training loss"
    assert fig.layout.yaxis2.title.text == "gradient norm"
    log = pd.read_parquet(runs[1].parent / "lora" / "train_log.parquet")
    loss, grad = [t for t in fig.data if t.legendgroup == "lora"]
    np.testing.assert_array_equal(loss.y, log["loss"])
    np.testing.assert_array_equal(grad.y, log["grad_norm"])
    assert sum(t.showlegend for t in fig.data) == len(runs)


def test_cond_figure_shows_sorsa_runs_on_log_axes(frame, runs):
    fig = figures.condition_figure(frame)
    assert {t.legendgroup for t in fig.data} == {"SORSA w/o reg", "SORSA"}
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"
    raw = pd.read_parquet(runs[3])
    mean = next(t for t in fig.data if t.name == "SORSA" and t.xaxis == "x")
    np.testing.assert_allclose(mean.y, raw.groupby("step")["cond_p"].mean())
    ortho = next(t for t in fig.data if t.name == "SORSA" and t.xaxis == "x2")
    np.testing.assert_allclose(ortho.y, raw.groupby("step")["ortho_err"].mean())


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


# -- files -----------------------------------------------------------------------------------


def test_html_shares_one_plotly_js_beside_the_figures(frame, tmp_path):
    built = {"figure2": figures.drift_figure(frame), "dora": figures.dora_figure(frame)}
    written = figures.export_figures(built, tmp_path / "out", ["html"])
    assert written == [tmp_path / "out" / "figure2.html", tmp_path / "out" / "dora.html"]
    assert (tmp_path / "out" / "plotly.min.js").stat().st_size > 1_000_000
    for path in written:
        html = path.read_text()
        assert re.search(r'<script [^>]*src="plotly.min.js"', html) and len(html) < 1_000_000
        assert "cdn.plot.ly" not in html  # offline


def test_html_inline_or_cdn_on_request(frame, tmp_path):
    fig = {"figure2": figures.drift_figure(frame)}
    inline = figures.export_figures(fig, tmp_path / "inline", ["html"], "inline")[0].read_text()
    tags = re.findall(r"<script\b[^>]*>", inline)
    assert tags and all("src=" not in tag for tag in tags) and len(inline) > 1_000_000
    cdn = figures.export_figures(fig, tmp_path / "cdn", ["html"], "cdn")[0].read_text()
    assert re.search(r'<script [^>]*src="https://cdn.plot.ly/plotly-[\d.]+\.min\.js"', cdn)
    assert not (tmp_path / "inline" / "plotly.min.js").exists()
    with pytest.raises(SpectraError, match="unknown --plotlyjs"):
        figures.export_figures(fig, tmp_path, ["html"], "web")


def test_images_without_a_browser_say_how_to_get_one(frame, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "browser", lambda: None)
    with pytest.raises(SpectraError, match="apt-get install -y chromium"):
        figures.export_figures({"figure2": figures.drift_figure(frame)}, tmp_path, ["html", "png"])
    assert (tmp_path / "figure2.html").is_file()
    assert not (tmp_path / "figure2.png").exists()


def flaky_kaleido(monkeypatch, fails: dict[str, int]) -> list[list[str]]:
    """pio.write_images as kaleido behaves: each image named in ``fails`` fails that many
    times, its file removed (kaleido unlinks what it could not render, and plotly does not
    say); the others are written. Returns the names asked for, call by call."""
    calls = []

    def write_images(figs, files, format, **options):
        calls.append([".".join(file.name.split(".")[1:3]) for file in files])  # .NAME.hex.tmp
        for file, name in zip(files, calls[-1], strict=True):
            file.touch()  # kaleido claims the name first
            if fails.get(name, 0) > 0:
                fails[name] -= 1
                file.unlink()
            else:
                file.write_bytes(b"image of " + name.encode())

    monkeypatch.setattr(export, "browser", lambda: "chromium")
    monkeypatch.setattr(export.pio, "write_images", write_images)
    return calls


def test_an_image_kaleido_fails_on_once_is_rendered_again(frame, tmp_path, monkeypatch):
    calls = flaky_kaleido(monkeypatch, {"figure2.png": 1})
    fig = figures.drift_figure(frame)
    written = figures.export_figures({"figure2": fig}, tmp_path, ["png", "svg"])
    assert calls == [["figure2.png", "figure2.svg"], ["figure2.png"]]
    assert (tmp_path / "figure2.png").read_bytes() == b"image of figure2.png"
    assert [p.name for p in written] == ["figure2.html", "figure2.png", "figure2.svg"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_image_kaleido_fails_on_twice_is_one_error_and_no_image(frame, tmp_path, monkeypatch):
    calls = flaky_kaleido(monkeypatch, {"figure2.svg": 2})
    fig = figures.drift_figure(frame)
    with pytest.raises(SpectraError, match=r"kaleido could not render .*figure2\.svg"):
        figures.export_figures({"figure2": fig}, tmp_path, ["png", "svg"])
    assert len(calls) == 2
    assert not (tmp_path / "figure2.png").exists() and not (tmp_path / "figure2.svg").exists()
    assert (tmp_path / "figure2.html").is_file() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.skipif(figures.browser() is None, reason="no Chrome/Chromium for kaleido")
def test_png_and_svg_are_rendered(frame, tmp_path):
    fig = draw(frame, "3")[1]
    written = figures.export_figures({"figure3": fig}, tmp_path, ["png", "svg"])
    assert [p.suffix for p in written] == [".html", ".png", ".svg"]
    assert (tmp_path / "figure3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "figure3.svg").read_text()[:500]


def test_options_are_parsed(frame):
    assert parse_list(" PNG, svg,png", ("html", "png", "svg"), "format") == ["png", "svg"]
    with pytest.raises(SpectraError, match="unknown figure"):
        parse_list("2,4", figures.FIGURES, "figure")
    assert draw(frame, "2", matched=True)[0] == "figure2-matched"


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
        ([good, "--figure", "subspace"], "needs the run directories"),
        ([good, "--layers", "x"], "not a block number"),
        ([good, "--modules", "o_proj"], "select no layer"),
        ([good, "--plotlyjs", "web"], "unknown --plotlyjs"),
    ]
    for args, message in cases:
        cli(["plot", *args]).error_line(message)
