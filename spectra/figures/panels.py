"""What every figure shares: the panel grid, titles that wrap instead of being cut, one tick
format per axis kind, layer filters and labels, hover text, and end-point labels that are
only drawn where they can be read."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from spectra.errors import SpectraError
from spectra.store import Runs

SYMBOLS = ("circle", "diamond", "square", "triangle-up", "cross", "x")
COLORS = qualitative.Plotly
FONT = 12  # axis and legend text, px
TITLE_FONT = 16
PANEL_TITLE_FONT = 13
CHAR_WIDTH = 0.55  # average glyph width / font size, generous so that wrapped text fits
MARGIN = {"l": 80, "r": 130, "b": 70}  # r: room for a colour bar
AXES = {  # one tick format per kind of axis
    "step": {"tickformat": "d"},
    "index": {"tickformat": "d"},
    "value": {"tickformat": "~g", "rangemode": "tozero"},
    "cos": {"tickformat": ".1f", "range": [0, 1.05]},
    "log": {"type": "log", "exponentformat": "power"},
}


def wrap(text: str, width_px: float, font_px: float) -> str:
    """``text`` broken into lines (``<br>``) that fit ``width_px`` at ``font_px``."""
    per_line = max(12, int(width_px / (CHAR_WIDTH * font_px)))
    return "<br>".join(textwrap.wrap(text, per_line, break_on_hyphens=False)) or text


def lines(text: str) -> int:
    """How many lines a wrapped text takes."""
    return text.count("<br>") + 1


def style_axis(fig: go.Figure, axis: str, ticks: str, title: str | None = None, **where) -> None:
    """Ticks of ``ticks`` (AXES) and an optional title on the x or y axes selected by ``where``."""
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    options = {**AXES[ticks], "title_font_size": FONT}
    update(**options, **({"title_text": title} if title is not None else {}), **where)


def layer_axis(fig: go.Figure, layers: int, **where) -> None:
    """A categorical y axis of ``layers`` layer labels: first at the top, every one shown."""
    fig.update_yaxes(
        autorange="reversed",
        dtick=1,
        automargin=True,
        tickfont_size=9 if layers > 24 else FONT,
        **where,
    )


def layer_height(layers: int, least: int = 300) -> int:
    """Panel height that gives every layer label of a layer axis its own line."""
    return max(least, 12 * layers)


@dataclass
class Grid:
    """A figure of ``rows`` × ``cols`` equally sized panels, ``panel_w`` × ``panel_h`` px each."""

    fig: go.Figure
    rows: int
    cols: int
    panel_w: int
    panel_h: int

    def at(self, i: int) -> dict:
        """row= and col= of panel ``i`` (row-major)."""
        return {"row": i // self.cols + 1, "col": i % self.cols + 1}

    def axis(self, i: int, which: str) -> str:
        """The layout name of panel ``i``'s x or y axis ("xaxis3")."""
        return f"{which}axis{'' if i == 0 else i + 1}"


def grid(
    title: str,
    panel_titles: Sequence[str],
    *,
    rows: int | None = None,
    cols: int | None = None,
    panel_w: int = 460,
    panel_h: int = 380,
    hgap: int = 70,
    shared: bool = False,
    legend: bool = True,
    **options,
) -> Grid:
    """A titled grid of panels, near-square unless ``cols`` (and ``rows``, when some cells stay
    empty through make_subplots' ``specs``) are given; nothing is ever cut.

    The title and panel titles wrap to the width they have; margins and spacing grow with
    them. ``hgap`` is the room between columns (px); ``shared`` gives every panel the same x
    and y ranges.
    """
    n = max(1, len(panel_titles))
    cols = cols or math.ceil(math.sqrt(n))
    rows = rows or math.ceil(n / cols)
    width = MARGIN["l"] + cols * panel_w + (cols - 1) * hgap + MARGIN["r"]
    heading = wrap(title, width - 40, TITLE_FONT)
    titles = [wrap(t, panel_w, PANEL_TITLE_FONT) for t in panel_titles]
    title_px = 20 * max((lines(t) for t in titles), default=1)
    gap = 70 + title_px  # x-axis title of the row above + the panel titles of this row
    top = 36 + 22 * lines(heading) + title_px
    bottom = MARGIN["b"] + (40 if legend else 0)
    height = top + rows * panel_h + (rows - 1) * gap + bottom
    if shared:
        options |= {"shared_xaxes": "all", "shared_yaxes": "all"}
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=titles,
        horizontal_spacing=hgap / (width - MARGIN["l"] - MARGIN["r"]) if cols > 1 else 0.0,
        vertical_spacing=gap / (height - top - bottom) if rows > 1 else 0.0,
        **options,
    )
    fig.update_annotations(font_size=PANEL_TITLE_FONT)
    fig.update_layout(
        # plotly draws a multi-line title's first line ≈ 15 px above a "top" anchor
        title={"text": heading, "x": 0.01, "xanchor": "left", "yanchor": "top",
               "y": 1 - 28 / height, "font": {"size": TITLE_FONT}},
        width=width, height=height, font={"size": FONT},
        margin={**MARGIN, "t": top, "b": bottom},
        legend={"orientation": "h", "yanchor": "top", "xanchor": "left", "x": 0,
                "y": -(MARGIN["b"] - 10) / (height - top - bottom)},
    )  # fmt: skip
    return Grid(fig, rows, cols, panel_w, panel_h)


def hover(*fields: str) -> str:
    """A hover template: run, layer and step (as the reader sees it: "step 40", "its final
    model") from customdata, then the named x/y/z values."""
    head = "run %{customdata[0]}<br>layer %{customdata[1]}<br>%{customdata[2]}"
    return head + "".join(f"<br>{f}" for f in fields) + "<extra></extra>"


def from_origin(path: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
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
        path = from_origin(path, x, y) if origin else path.sort_values("step")
        xs += [*path[x], None]
        ys += [*path[y], None]
    return xs, ys


def layer_labels(frame: pd.DataFrame) -> pd.Series:
    """Short labels ("3 q_proj") of the layers, by block and module; full paths if ambiguous."""
    layers = frame[["layer", "block", "module"]].drop_duplicates("layer")
    layers = layers.sort_values(["block", "module", "layer"]).set_index("layer")
    short = layers["block"].astype("Int64").astype("string").fillna("") + " " + layers["module"]
    return short.str.strip() if short.is_unique else pd.Series(layers.index, layers.index)


def block_text(rows: pd.DataFrame) -> pd.Series:
    """The block number of each row as text ("" when the layer has none)."""
    return rows["block"].astype("Int64").astype("string").fillna("")


def readable(
    points: pd.DataFrame, texts: Sequence[str], size: tuple[float, float],
    bounds: pd.DataFrame, avoid: pd.DataFrame | None = None,
) -> np.ndarray:  # fmt: skip
    """Which labels of ``points`` (columns x, y) can be read in a panel of ``size`` px whose
    data span ``bounds`` (x, y): greedily, farthest from the crowd first, a label is kept when
    its box (above its point) overlaps no label kept before and no marker of ``avoid``."""

    def pixels(frame: pd.DataFrame) -> np.ndarray:
        low, span = bounds.min().to_numpy(float), np.ptp(bounds.to_numpy(float), axis=0)
        return (frame.to_numpy(float) - low) / np.where(span > 0, span, 1.0) * np.array(size)

    boxes = [(x - 8, y - 8, x + 8, y + 8) for x, y in pixels(avoid)] if avoid is not None else []
    at = pixels(points)
    keep = np.zeros(len(at), bool)
    spread = np.hypot(*(at - np.nanmedian(at, axis=0)).T) if len(at) else at[:, 0]
    for i in np.argsort(-spread, kind="stable"):
        (x, y), w = at[i], CHAR_WIDTH * FONT * max(1, len(texts[i])) + 4
        box = (x - w / 2, y + 5, x + w / 2, y + 5 + FONT + 2)
        if np.isnan(x) or np.isnan(y):
            continue
        if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in boxes):
            boxes.append(box)
            keep[i] = True
    return keep


def parse_blocks(text: str) -> list[range]:
    """Block numbers from "0-3,31" (numbers and inclusive ranges), as ranges: never a list of
    every number, however far a range reaches."""
    spans: list[range] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        found = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not found:
            raise SpectraError(f"--layers: {item!r} is not a block number or range like 0-3")
        start, stop = int(found[1]), int(found[2] or found[1])
        spans.append(range(start, stop + 1))
    if not any(spans):
        raise SpectraError("--layers: no block numbers given")
    return spans


def select_layers(runs: Runs, layers: str | None = None, modules: str | None = None) -> Runs:
    """The runs with the rows of the blocks in ``layers`` ("0-3,31") and the ``modules``
    ("q_proj,v_proj") only."""
    frame = chosen = runs.rows
    if layers:
        blocks = chosen["block"]
        keep = np.zeros(len(chosen), dtype=bool)
        for span in parse_blocks(layers):
            keep |= blocks.between(span.start, span.stop - 1).fillna(False).to_numpy(dtype=bool)
        chosen = chosen[keep]
    if modules:
        names = [m.strip() for m in modules.split(",") if m.strip()]
        chosen = chosen[chosen["module"].isin(names)]
    if chosen.empty:
        blocks = sorted(frame["block"].dropna().astype(int).unique())
        spans = f"{blocks[0]}-{blocks[-1]}" if blocks else "none"
        raise SpectraError(
            f"--layers {layers or 'all'} --modules {modules or 'all'} select no layer "
            f"(blocks {spans}; modules {', '.join(sorted(frame['module'].unique()))})"
        )
    return runs.with_rows(chosen.copy())


def color(i: int) -> str:
    """The i-th colour of the qualitative palette."""
    return COLORS[i % len(COLORS)]


TRAJECTORIES = "rgba(120,120,120,0.3)"


def known_top(runs: Runs) -> int:
    """The last step of the runs whose steps are real ones (of every run when none are)."""
    known = [run for run in runs.names if not runs.ordinal(run)] or runs.names
    return max(int(runs.of(run)["step"].max()) for run in known)


def with_shade(runs: Runs, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with ``shade``, the colour value of their step (the step; for a run of ordinal
    steps its position scaled to :func:`known_top`, so that a final model is an end point),
    and ``when``, the step as a reader should see it (``step 40``, ``its final model``)."""
    top, shade, when = known_top(runs), [], []
    for run, group in rows.groupby("run", sort=False):
        last = int(runs.of(run)["step"].max()) or 1
        scale = top / last if runs.ordinal(run) else 1.0
        shade.append(group["step"] * scale)
        when.append(group["step"].map(lambda step, run=run: runs.step_label(run, int(step))))
    if not shade:
        return rows.assign(shade=rows["step"], when=rows["step"].astype(str))
    return rows.assign(shade=pd.concat(shade), when=pd.concat(when))


def step_colors(runs: Runs) -> dict:
    """The shared step colour axis (Viridis, 0 to the last step)."""
    return {"colorscale": "Viridis", "colorbar": {"title": {"text": "step"}, "tickformat": "d"},
            "cmin": 0, "cmax": known_top(runs)}  # fmt: skip


class Legend:
    """Which legend entries a figure has shown: each group once, wherever it first appears."""

    def __init__(self):
        self.shown: set[str] = set()

    def first(self, group: str) -> bool:
        """True the first time ``group`` is asked for (show it in the legend then)."""
        new = group not in self.shown
        self.shown.add(group)
        return new


def module_symbols(rows: pd.DataFrame) -> dict[str, str]:
    """One marker symbol per module, the same in every panel of a figure."""
    modules = sorted(rows["module"].unique())
    return {module: SYMBOLS[i % len(SYMBOLS)] for i, module in enumerate(modules)}


def run_colors(runs: Runs) -> dict[str, str]:
    """One colour per run, by run order: the same run has the same colour in every figure."""
    return {run: color(i) for i, run in enumerate(runs.names)}


def layer_points(
    fig: go.Figure, runs: Runs, data: pd.DataFrame, x: str, y: str, names: tuple[str, str],
    where: dict, legend: Legend, panel: tuple[int, int], avoid: pd.DataFrame | None = None,
) -> None:  # fmt: skip
    """Each layer at each step after 0 as a marker (one trace per module, coloured by step,
    one symbol per module across ``runs``), the block number above the end points where it
    can be read (clear of the markers of ``avoid``, columns x and y), every value in the
    hover."""
    moved = with_shade(runs, data[data["step"] > 0])
    symbols = module_symbols(runs.rows)
    template = hover(f"{names[0]} %{{x:.4g}}", f"{names[1]} %{{y:.4g}}")
    for module in sorted(moved["module"].unique()):
        points = moved[moved["module"] == module]
        fig.add_trace(
            go.Scatter(
                x=points[x], y=points[y], mode="markers", name=module, legendgroup=module,
                showlegend=legend.first(module), hovertemplate=template,
                marker={"color": points["shade"], "coloraxis": "coloraxis", "size": 6,
                        "symbol": symbols[module], "line": {"width": 0}},
                customdata=points[["run", "layer", "when"]].to_numpy(),
            ),
            **where,
        )  # fmt: skip
    ends = moved.sort_values("step").groupby("layer").tail(1)
    text = block_text(ends).to_numpy()
    bounds = pd.concat([moved[[x, y]], pd.DataFrame({x: [0.0], y: [0.0]})])
    obstacles = None if avoid is None else avoid.set_axis([x, y], axis=1)
    keep = readable(ends[[x, y]], text, panel, bounds, obstacles)
    fig.add_trace(
        go.Scatter(
            x=ends[x][keep], y=ends[y][keep], text=text[keep], mode="text", name="block (end)",
            textposition="top center", textfont={"size": 10}, hoverinfo="skip",
            legendgroup="ends", showlegend=False,
        ),
        **where,
    )  # fmt: skip
