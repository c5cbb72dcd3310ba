"""Writing figures: HTML that shares one plotly.js file beside it (or inlines it, or takes it
from a CDN), and PNG/SVG through kaleido when a Chrome/Chromium browser is available. Every
file is written atomically, like every file spectra writes."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from spectra.atomic import atomic_path, atomic_write
from spectra.errors import SpectraError

IMAGE_FORMATS = ("png", "svg")
BUNDLE = "plotly.min.js"  # what plotly's "directory" mode links to, beside the HTML files
PLOTLYJS = {  # --plotlyjs → plotly's include_plotlyjs
    "directory": "directory",  # one plotly.min.js beside the HTML files, offline
    "inline": True,  # each HTML file self-contained (≈ 4.8 MB each)
    "cdn": "cdn",  # fetched from cdn.plot.ly when the page opens
}


def browser() -> str | None:
    """The Chrome/Chromium executable kaleido would use, or None."""
    from choreographer.browsers import Chromium

    return Chromium.find_browser(skip_local=False)


def include_plotlyjs(mode: str) -> str | bool:
    """plotly's ``include_plotlyjs`` for a ``--plotlyjs`` mode; SpectraError on an unknown one."""
    if mode not in PLOTLYJS:
        raise SpectraError(f"unknown --plotlyjs {mode!r} (expected one of {', '.join(PLOTLYJS)})")
    return PLOTLYJS[mode]


def export_figures(
    figures: dict[str, go.Figure],
    out: Path,
    formats: Iterable[str],
    plotlyjs: str = "directory",
) -> list[Path]:
    """Write each figure as HTML and in every image format asked for; return the paths."""
    include = include_plotlyjs(plotlyjs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpectraError(f"cannot make the figure folder {out}: {exc.strerror}") from None
    if include == "directory":
        _write_bundle(out / BUNDLE)
    written = []
    for stem, fig in figures.items():
        path = out / f"{stem}.html"
        atomic_write(path, lambda tmp, fig=fig: fig.write_html(tmp, include_plotlyjs=include))
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
        with ExitStack() as stack:  # each image renamed into place once all are rendered
            tmps = {path: stack.enter_context(atomic_path(path)) for path in paths}
            _render(figures, tmps)
            failed = [path for path, tmp in tmps.items() if not tmp.exists()]
            if failed:  # kaleido removes an image it failed to render (timeout, browser error)
                _render(figures, {path: tmps[path] for path in failed})
            failed = [path for path, tmp in tmps.items() if not tmp.exists()]
            if failed:
                raise SpectraError(
                    f"kaleido could not render {failed[0]} (Chrome/Chromium failed or timed out, "
                    f"twice); the HTML figures are in {out}"
                )
    return written + paths


def _render(figures: dict[str, go.Figure], tmps: dict[Path, Path]) -> None:
    """Render the image of each ``{path: temporary file}`` (its figure is ``path.stem``) into
    the temporary file, in one kaleido session; a figure kaleido fails on is left absent."""
    figs = [figures[path.stem] for path in tmps]
    sizes = {"width": [f.layout.width for f in figs], "height": [f.layout.height for f in figs]}
    formats = [path.suffix[1:] for path in tmps]
    pio.write_images(figs, list(tmps.values()), format=formats, scale=2, **sizes)


def _write_bundle(path: Path) -> None:
    """plotly.js beside the HTML files, unless this plotly's copy is already there."""
    bundle = get_plotlyjs().encode()
    if not (path.is_file() and path.read_bytes() == bundle):
        atomic_write(path, lambda tmp: tmp.write_bytes(bundle))
