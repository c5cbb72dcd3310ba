"""Failure bookkeeping: the trackers of this process not yet closed, which an uncaught exception
(``sys.excepthook``) or an exit before ``close()`` (``atexit``) closes as failed, and how a run
records the exception that ended it.
"""

from __future__ import annotations

import atexit
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spectra.callback.tracker import Tracker


def error_text(exc: BaseException) -> str:
    """An exception as the run records it: ``RuntimeError: message``."""
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


class OpenTrackers:
    """The trackers of this process not yet closed. While there are any, an uncaught exception
    (``sys.excepthook``) or an exit before ``close()`` (``atexit``) closes them as failed."""

    def __init__(self):
        self.trackers: dict[Tracker, None] = {}
        self.previous_hook = None
        self.registered = False

    def add(self, tracker: Tracker) -> None:
        if not self.trackers and sys.excepthook != self.excepthook:
            self.previous_hook, sys.excepthook = sys.excepthook, self.excepthook
        if not self.registered:
            atexit.register(self.fail, "the process exited before the tracker was closed")
            self.registered = True
        self.trackers[tracker] = None

    def discard(self, tracker: Tracker) -> None:
        self.trackers.pop(tracker, None)
        if not self.trackers and sys.excepthook == self.excepthook:
            sys.excepthook = self.previous_hook

    def fail(self, error: str) -> None:
        for tracker in list(self.trackers):
            tracker.close(error=error)

    def excepthook(self, exc_type, exc, tb) -> None:
        self.fail(error_text(exc))
        self.previous_hook(exc_type, exc, tb)


OPEN_TRACKERS = OpenTrackers()
