"""The progress bar of long work: on stderr, only on a terminal, and gone when the work ends
(done, failed or interrupted), so that no fragment of it stands before an error line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TransferSpeedColumn,
)

from spectra.terminal import shown


@contextmanager
def _bar(columns: tuple[ProgressColumn, ...], description: str, total: int, enabled: bool):
    """A transient bar of ``columns`` on stderr (a terminal only); yields advance(n)."""
    console = Console(stderr=True)
    with Progress(
        *columns, console=console, transient=True,
        disable=not (enabled and console.is_terminal),
    ) as bar:  # fmt: skip
        task = bar.add_task(shown(description, markup=True), total=total)
        yield lambda n=1: bar.advance(task, n)


def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable]:
    """A bar of ``total`` units; yields the function that advances it by one. ``description``
    may name a run: it is shown safely (:func:`spectra.terminal.shown`)."""
    return _bar(
        (*Progress.get_default_columns(), MofNCompleteColumn()), description, total, enabled
    )


def bytes_bar(description: str, total: int, of: str, enabled: bool = True) -> Iterator[Callable]:
    """A bar of bytes done against ``total`` (``of`` what), with the speed; yields advance(n)."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TextColumn(of),
               TransferSpeedColumn())  # fmt: skip
    return _bar(columns, description, total, enabled)
