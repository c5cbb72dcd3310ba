"""The `spectra` command line: compute, analyze, plot, track, import, compare.

:mod:`.app` holds the Typer app, its root options and the entry point that turns errors into
one line; one module per group of commands (:mod:`.compute`, :mod:`.analysis`, :mod:`.track`,
:mod:`.sources`), registered here in the order ``spectra --help`` lists them.
"""

from __future__ import annotations

from spectra.cli.analysis import analyze, plot
from spectra.cli.app import app, main
from spectra.cli.compute import compute
from spectra.cli.sources import compare, import_
from spectra.cli.track import track

for command in (compute, analyze, plot, track):
    app.command()(command)
app.command("import")(import_)
app.command()(compare)

__all__ = ["app", "main"]
