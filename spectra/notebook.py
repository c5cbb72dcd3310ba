"""Plotly figures in notebooks that survive static rendering: ``use_static_renderer()`` makes
every figure's output carry the interactive figure (plotly's own MIME type, which JupyterLab
and VS Code draw) and a PNG of it (which nbconvert's exports and repository viewers show),
rendered by kaleido with one Chrome/Chromium kept running for the whole notebook."""

from __future__ import annotations

import warnings

import plotly.io as pio

from spectra.figures import browser

STATIC = "plotly_mimetype+png"  # interactive in Jupyter, a PNG everywhere else
# No browser for kaleido: the figure also as HTML with plotly.js inline (nbconvert's HTML
# export keeps it, offline); a repository viewer, which runs no JavaScript, shows no figure.
WITHOUT_BROWSER = "plotly_mimetype+notebook"
NO_BROWSER_NOTE = (
    "Static PNG copies of the figures need Chrome or Chromium for kaleido "
    "(apt-get install -y chromium, or plotly_get_chrome); without one, an HTML export "
    "keeps the interactive figures, but a repository viewer shows none."
)


def use_static_renderer() -> str:
    """Set Plotly's default renderer for this session and return its name; without a browser
    for kaleido, print why the figures get no PNG copies (nothing fails)."""
    if browser() is None:
        pio.renderers.default = WITHOUT_BROWSER
        print(NO_BROWSER_NOTE)
        return WITHOUT_BROWSER
    import kaleido

    kaleido.start_sync_server(silence_warnings=True)  # one browser for every figure
    # plotly passes kaleido options that a running server does not take; the PNG is the same
    warnings.filterwarnings("ignore", "The kopts argument is ignored", UserWarning)
    pio.renderers.default = STATIC
    return STATIC
