"""The progress bar of long work: on stderr, only on a terminal, and gone when the work ends
(done, failed or interrupted), so that no fragment of it stands before an error line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable]:
    """A bar of ``total`` units; yields the function that advances it by one."""
    console = Console(stderr=True)
    with Progress(
        *Progress.get_default_columns(), MofNCompleteColumn(), console=console, transient=True,
        disable=not (enabled and console.is_terminal),
    ) as bar:  # fmt: skip
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
