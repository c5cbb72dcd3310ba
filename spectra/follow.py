"""Compute a run's metrics while its snapshots land, until the manifest says training finished.

``follow(run_dir)`` shows a live summary (the latest computed step, mean ΔΣ and ΔD per
module); ``compute_until_finished`` is the same loop without a display, which the
:class:`~spectra.callback.Tracker` runs in a background worker in inline mode
(``python -m spectra.follow RUN_DIR --quiet``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from spectra.columns import LIVE
from spectra.engine import Engine, exit_with_parent
from spectra.errors import SpectraError
from spectra.snapshots import open_run
from spectra.terminal import shown


def compute_until_finished(
    run_dir: str | Path,
    poll: float = 1.0,
    *,
    on_update: Callable[[Engine], None] | None = None,
) -> Engine:
    """Run ``Engine.update()`` every ``poll`` seconds until the run is finished and computed.

    Raises SpectraError once the snapshots of a run whose training failed, or whose writing
    process ended without finishing it (killed), are computed.
    """
    engine = Engine(run_dir)
    while True:
        # Read before updating: once finished is seen, this update covers every listed step.
        manifest = open_run(run_dir).manifest
        engine.update()
        if on_update is not None:
            on_update(engine)
        if manifest.failed:
            raise SpectraError(_failed(manifest, f"its snapshots' metrics are in {engine.out}"))
        if manifest.finished:
            return engine
        if manifest.abandoned:
            writer = manifest.writer
            raise SpectraError(
                f"the training of run {manifest.run} ended without finishing it (its process "
                f"{writer.pid} on {writer.host} is gone: killed?); its snapshots' metrics are "
                f"in {engine.out}"
            )
        time.sleep(poll)


def _failed(manifest, then: str) -> str:
    error = manifest.extra.get("error") or "no error recorded"
    return f"the training of run {manifest.run} failed ({error}); {then}"


def summary(engine: Engine) -> Table:
    """The layer means of the live columns (:data:`spectra.columns.LIVE`) per module at the
    latest computed step."""
    steps = engine.run.steps
    title = (
        f"{engine.run.name} ({engine.run.manifest.method}): {len(steps)} snapshots, "
        f"last step {steps[-1] if steps else '-'}"
        f"{', training finished' if engine.run.manifest.finished else ''}"
    )
    table = Table(title=shown(title, markup=True))
    table.add_column("module", justify="left")
    for heading in ("step", "layers", *(f"mean {label}" for label in LIVE.values())):
        table.add_column(heading, justify="right")
    rows = engine.rows
    if rows.empty:
        return table
    latest = rows[rows["step"] == rows["step"].max()]
    for module, group in latest.groupby("module", sort=True):
        means = [f"{group[column].mean():.4g}" for column in LIVE]
        step = str(int(group["step"].iloc[0]))
        table.add_row(shown(module, markup=True), step, str(len(group)), *means)
    return table


def follow(run_dir: str | Path, poll: float = 1.0, console: Console | None = None) -> Path:
    """Compute a deferred run's metrics live with a terminal summary; return the Parquet path."""
    console = console or Console()
    manifest = open_run(run_dir).manifest  # a clear error before the live display starts
    if manifest.failed:
        raise SpectraError(_failed(manifest, f"compute its snapshots: spectra compute {run_dir}"))
    with Live(console=console, auto_refresh=False) as live:
        engine = compute_until_finished(
            run_dir, poll, on_update=lambda e: live.update(summary(e), refresh=True)
        )
    for step, layer in sorted(engine.nonfinite):
        where = shown(f"step {step} {layer}", markup=True)
        console.print(f"[yellow]warning:[/] {where}: NaN or Inf weights, no row")
    return engine.out


def main(argv: list[str] | None = None) -> int:
    """Inline worker entry point: compute quietly until finished (or the parent exits)."""
    parser = argparse.ArgumentParser(prog="python -m spectra.follow")
    parser.add_argument("run_dir")
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--quiet", action="store_true", help="no live display")
    parser.add_argument("--parent", type=int, help="exit when this process is gone")
    parser.add_argument("--threads", type=int, help="torch threads for the SVDs")
    args = parser.parse_args(argv)
    if args.parent:
        exit_with_parent(args.parent)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.quiet:
            compute_until_finished(args.run_dir, args.poll)
        else:
            follow(args.run_dir, args.poll)
    except SpectraError as exc:
        print(f"spectra: {shown(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
