"""Plotly figures of runs: Figure 2 (ΔD vs ΔΣ), Figure 3 (loss, gradient norm), κ(W_p), heatmap.

Every builder takes the frame of :func:`spectra.store.load_runs` and returns a
``plotly.graph_objects.Figure``; :func:`write_figures` saves them as self-contained HTML and,
when a Chrome/Chromium browser is available to kaleido, as PNG or SVG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from spectra.errors import SpectraError
from spectra.snapshots import atomic_path, atomic_write, read_train_log
from spectra.store import delta_d_column, delta_d_name, label, load_runs, ordered_runs

FIGURES = ("2", "3", "cond", "heatmap")
IMAGE_FORMATS = ("png", "svg")
SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "x")
FLOOR = 1e-12  # smallest ΔD drawn on the heatmap's log scale


def run_panels(frame: pd.DataFrame, runs: list[str], **options) -> tuple[go.Figure, int, int]:
    """(figure, rows, cols): a near-square grid with one titled panel per run."""
    cols = math.ceil(math.sqrt(len(runs)))
    rows = math.ceil(len(runs) / cols)
    titles = [run_title(frame, r) for r in runs]
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=0.25 / rows, **options
    )
    return fig, rows, cols


def _panel(i: int, cols: int) -> dict:
    return {"row": i // cols + 1, "col": i % cols + 1}


def _from_origin(path: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """A trajectory sorted by step that starts at (0, 0) at step 0."""
    path = path.sort_values("step")
    if path.empty or path["step"].iloc[0] != 0:
        origin = pd.DataFrame({"step": [0], x: [0.0], y: [0.0]})
        path = pd.concat([origin, path[["step", x, y]]], ignore_index=True)
    return path


def layer_paths(rows: pd.DataFrame, x: str, y: str, origin: bool) -> tuple[list, list]:
    """x and y of every layer's trajectory in one line, layers separated by gaps (None)."""
    xs: list = []
    ys: list = []
    for _, path in rows.groupby("layer", sort=True):
        path = _from_origin(path, x, y) if origin else path.sort_values("step")
        xs += [*path[x], None]
        ys += [*path[y], None]
    return xs, ys


def run_title(frame: pd.DataFrame, run: str) -> str:
    """ "LoRA" for a run named after its method, else "LoRA — <run>"."""
    method = frame.attrs["runs"][run]["method"]
    return label(method) if run == method else f"{label(method)} — {run}"


def _hover(x_name: str, y_name: str) -> str:
    return (
        "run %{customdata[0]}<br>layer %{customdata[1]}<br>step %{customdata[2]}"
        f"<br>{x_name} %{{x:.4g}}<br>{y_name} %{{y:.4g}}<extra></extra>"
    )


def drift_figure(frame: pd.DataFrame, matched: bool = False) -> go.Figure:
    """Figure 2: ΔD against ΔΣ, one panel per run, per-layer points and the mean trajectory."""
    column = delta_d_column(matched)
    runs = ordered_runs(frame)
    fig, rows, cols = run_panels(frame, runs, horizontal_spacing=0.06)
    modules = sorted(frame["module"].unique())
    hover = _hover("ΔΣ", "ΔD matched" if matched else "ΔD")
    for i, run in enumerate(runs):
        where, first = _panel(i, cols), i == 0
        data = frame[frame["run"] == run]
        xs, ys = layer_paths(data, "delta_sigma", column, origin=True)
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines", name="layer trajectories", legendgroup="paths",
                showlegend=first, line={"color": "rgba(120,120,120,0.3)", "width": 1},
                hoverinfo="skip",
            ),
            **where,
        )  # fmt: skip
        moved = data[data["step"] > 0]
        for module in modules:
            points = moved[moved["module"] == module]
            fig.add_trace(
                go.Scatter(
                    x=points["delta_sigma"], y=points[column], mode="markers+text",
                    name=module, legendgroup=module, showlegend=first,
                    text=points["block"].astype("Int64").astype("string").fillna(""),
                    textposition="top center", textfont={"size": 8},
                    marker={
                        "color": points["step"], "coloraxis": "coloraxis", "size": 7,
                        "symbol": SYMBOLS[modules.index(module) % len(SYMBOLS)],
                    },
                    customdata=points[["run", "layer", "step"]].to_numpy(), hovertemplate=hover,
                ),
                **where,
            )  # fmt: skip
        mean = _from_origin(
            data.groupby("step", as_index=False)[["delta_sigma", column]].mean(),
            "delta_sigma",
            column,
        )
        custom = np.column_stack(
            [np.full(len(mean), run), np.full(len(mean), "mean of layers"), mean["step"]]
        )
        fig.add_trace(
            go.Scatter(
                x=mean["delta_sigma"], y=mean[column], mode="lines+markers",
                name="mean per step", legendgroup="mean", showlegend=first,
                line={"color": "black", "width": 4},
                marker={"color": mean["step"], "coloraxis": "coloraxis", "size": 11,
                        "line": {"color": "black", "width": 1.5}},
                customdata=custom, hovertemplate=hover,
            ),
            **where,
        )  # fmt: skip
    fig.update_xaxes(title_text="ΔΣ")
    fig.update_yaxes(title_text="ΔD (matched)" if matched else "ΔD (index-matched)", col=1)
    fig.update_layout(
        title=f"Figure 2 — ΔD against ΔΣ per layer and step; ΔD is {delta_d_name(matched)}",
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": "step"}},
                   "cmin": 0, "cmax": int(frame["step"].max())},
        height=120 + 420 * rows, width=100 + 500 * cols, margin={"b": 110},
        legend={"orientation": "h", "yanchor": "top", "y": -0.12 / rows},
    )  # fmt: skip
    return fig


def train_logs(frame: pd.DataFrame) -> pd.DataFrame:
    """The train logs (step, loss, grad_norm, …) of the runs, with a ``run`` column."""
    logs = []
    for run in ordered_runs(frame):
        run_dir = frame.attrs["runs"][run].get("run_dir")
        log = read_train_log(run_dir) if run_dir else None
        if log is not None:
            logs.append(log.assign(run=run))
    if not logs:
        raise SpectraError(
            "figure 3 needs train logs (runs/<run>/train_log.parquet); none of the runs has one"
        )
    return pd.concat(logs, ignore_index=True)


def training_figure(frame: pd.DataFrame) -> go.Figure:
    """Figure 3: training loss and gradient norm against step, all runs overlaid."""
    logs = train_logs(frame)
    panels = (("loss", "training loss"), ("grad_norm", "gradient norm"))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in panels])
    for i, (run, log) in enumerate(logs.groupby("run", sort=False)):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        for col, (column, title) in enumerate(panels, start=1):
            values = log.reindex(columns=["step", column]).dropna()  # steps it was logged at
            fig.add_trace(
                go.Scatter(
                    x=values["step"], y=values[column], mode="lines", name=run_title(frame, run),
                    legendgroup=run, showlegend=col == 1, line={"color": color},
                    hovertemplate=f"{run}<br>step %{{x}}<br>{title} %{{y:.4g}}<extra></extra>",
                ),
                row=1, col=col,
            )  # fmt: skip
    for col, (_, title) in enumerate(panels, start=1):
        fig.update_yaxes(title_text=title, row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title="Figure 3 — training loss and gradient norm", height=450, width=1100)
    return fig


def _mean_and_layers(
    fig: go.Figure, data: pd.DataFrame, column: str, name: str, color: str, col: int
) -> None:
    """Faint per-layer lines and a thick mean line of ``column`` against step."""
    xs, ys = layer_paths(data, "step", column, origin=False)
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, mode="lines", legendgroup=name, showlegend=False, hoverinfo="skip",
            line={"color": color, "width": 1}, opacity=0.25,
        ),
        row=1, col=col,
    )  # fmt: skip
    mean = data.groupby("step")[column].mean()
    fig.add_trace(
        go.Scatter(
            x=mean.index, y=mean.to_numpy(), mode="lines+markers", name=name, legendgroup=name,
            showlegend=col == 1, line={"color": color, "width": 3},
            hovertemplate=f"{name}<br>step %{{x}}<br>mean {column} %{{y:.4g}}<extra></extra>",
        ),
        row=1, col=col,
    )  # fmt: skip


def condition_figure(frame: pd.DataFrame) -> go.Figure:
    """κ(W_p) and the orthonormality error over steps for SORSA with and without regularizer."""
    runs = [r for r in ordered_runs(frame) if frame.attrs["runs"][r]["method"].startswith("sorsa")]
    if not runs:
        raise SpectraError("figure cond needs SORSA runs (method sorsa or sorsa-noreg)")
    panels = (("cond_p", "κ(W_p) (Theorem 5.5)"), ("ortho_err", "orthonormality error (eq. 4)"))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in panels])
    for i, run in enumerate(runs):
        name = run_title(frame, run)
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        for col, (column, _) in enumerate(panels, start=1):
            _mean_and_layers(fig, frame[frame["run"] == run], column, name, color, col)
    for col, (_, title) in enumerate(panels, start=1):
        fig.update_yaxes(title_text=title, type="log", row=1, col=col)
    fig.update_xaxes(title_text="step")
    fig.update_layout(
        title="κ(W_p) and ‖UᵀU − I‖ + ‖VᵀV − I‖ over training (thick: mean of layers)",
        height=450,
        width=1100,
    )
    return fig


def layer_labels(frame: pd.DataFrame) -> pd.Series:
    """Short labels ("3 q_proj") of the layers, by block and module; full paths if ambiguous."""
    layers = frame[["layer", "block", "module"]].drop_duplicates("layer")
    layers = layers.sort_values(["block", "module", "layer"]).set_index("layer")
    short = layers["block"].astype("Int64").astype("string").fillna("") + " " + layers["module"]
    return short.str.strip() if short.is_unique else pd.Series(layers.index, layers.index)


def heatmap_figure(frame: pd.DataFrame, matched: bool = False) -> go.Figure:
    """log10 ΔD per layer × step, one panel per run, on one shared colour scale."""
    column = delta_d_column(matched)
    runs = ordered_runs(frame)
    fig, rows, cols = run_panels(frame, runs, shared_yaxes=True)
    layers = layer_labels(frame)
    for i, run in enumerate(runs):
        data = frame[(frame["run"] == run) & (frame["step"] > 0)]
        grid = data.pivot_table(index="layer", columns="step", values=column)
        grid = grid.reindex(layers.index)
        fig.add_trace(
            go.Heatmap(
                z=np.log10(grid.clip(lower=FLOOR).to_numpy()), x=grid.columns, y=layers.to_numpy(),
                customdata=grid.to_numpy(), coloraxis="coloraxis", name=run,
                hovertemplate=f"{run}<br>layer %{{y}}<br>step %{{x}}<br>ΔD %{{customdata:.4g}}"
                "<extra></extra>",
            ),
            **_panel(i, cols),
        )  # fmt: skip
    fig.update_xaxes(title_text="step")
    fig.update_layout(
        title=f"ΔD ({delta_d_name(matched)}) per layer and step",
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": "log10 ΔD"}}},
        height=120 + max(300, 16 * len(layers)) * rows, width=200 + 450 * cols,
    )  # fmt: skip
    return fig


def build(frame: pd.DataFrame, figure: str, matched: bool = False) -> tuple[str, go.Figure]:
    """(file stem, figure) for one of FIGURES."""
    builders: dict[str, Callable[[], go.Figure]] = {
        "2": lambda: drift_figure(frame, matched),
        "3": lambda: training_figure(frame),
        "cond": lambda: condition_figure(frame),
        "heatmap": lambda: heatmap_figure(frame, matched),
    }
    if figure not in builders:
        raise SpectraError(f"unknown figure {figure!r} (expected one of {', '.join(FIGURES)})")
    stem = {"2": "figure2", "3": "figure3"}.get(figure, figure)
    suffix = "-matched" if matched and figure in ("2", "heatmap") else ""
    return stem + suffix, builders[figure]()


def parse_list(text: str, allowed: Iterable[str], what: str) -> list[str]:
    """The items of a comma-separated option; SpectraError on an unknown one."""
    allowed = list(allowed)
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise SpectraError(f"unknown {what} {text!r} (expected one of {', '.join(allowed)})")
    return list(dict.fromkeys(items))


def browser() -> str | None:
    """The Chrome/Chromium executable kaleido would use, or None."""
    from choreographer.browsers import Chromium

    return Chromium.find_browser(skip_local=False)


def write_figures(figures: dict[str, go.Figure], out: Path, formats: Iterable[str]) -> list[Path]:
    """Write each figure as self-contained HTML and in every image format asked for (each file
    atomically, like every file spectra writes)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpectraError(f"cannot make the figure folder {out}: {exc.strerror}") from None
    written = []
    for stem, fig in figures.items():
        path = out / f"{stem}.html"
        atomic_write(path, lambda tmp, fig=fig: fig.write_html(tmp, include_plotlyjs=True))
        written.append(path)
    images = [f for f in formats if f in IMAGE_FORMATS]
    if images and browser() is None:
        raise SpectraError(
            f"{'/'.join(images).upper()} export needs Chrome or Chromium for kaleido "
            f"(install one with `apt-get install -y chromium` or `plotly_get_chrome`); "
            f"the HTML figures are in {out}"
        )
    paths = [out / f"{stem}.{fmt}" for fmt in images for stem in figures]
    if paths:
        figs = [figures[path.stem] for path in paths]
        sizes = {"width": [f.layout.width for f in figs], "height": [f.layout.height for f in figs]}
        with ExitStack() as stack:  # each image renamed into place once all are rendered
            tmps = [stack.enter_context(atomic_path(path)) for path in paths]
            formats = [path.suffix[1:] for path in paths]
            pio.write_images(figs, tmps, format=formats, scale=2, **sizes)
    return written + paths


def plot_runs(
    patterns: Iterable[str | Path],
    figures: str = "2",
    out: Path = Path("figures"),
    formats: str = "html",
    matched: bool = False,
) -> list[Path]:
    """Build the comma-separated ``figures`` ("all" for every one) of runs and write them."""
    names = FIGURES if figures.strip().lower() == "all" else parse_list(figures, FIGURES, "figure")
    kinds = parse_list(formats, ("html", *IMAGE_FORMATS), "format")
    frame = load_runs(patterns)
    built = dict(build(frame, name, matched) for name in names)
    return write_figures(built, Path(out), kinds)
