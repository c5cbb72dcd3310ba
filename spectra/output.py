"""Standard output whose write errors (a full disk, ``> /dev/full``, a closed pipe) become one
SpectraError, so that the CLI ends them in one error line instead of a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from spectra.errors import SpectraError


class _Checked:
    """A text stream passing writes to ``stream``. The first that fails raises SpectraError
    and is remembered (raised again when the CLI ends, should a caller have caught it); what
    follows is dropped, so that nothing fails again when Python flushes the stream at exit."""

    def __init__(self, stream):
        self._stream, self.error = stream, None

    def write(self, text: str) -> int:
        if not text and isinstance(text, str):
            return 0  # click probes streams with empty writes
        if self.error is None:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._fail(exc)
        return len(text)

    def flush(self) -> None:
        if self.error is None:
            try:
                self._stream.flush()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = SpectraError(f"cannot write the output: {exc.strerror or exc}")
        try:  # what the stream still buffers goes to /dev/null when Python flushes it at exit
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):  # not a file (a test's capture)
            pass
        raise self.error

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextmanager
def checked_stdout() -> Iterator[None]:
    """``sys.stdout`` checked while the block runs and flushed at its end."""
    real = sys.stdout
    sys.stdout = checked = _Checked(real)
    try:
        yield
        checked.flush()
    finally:
        sys.stdout = real
    if checked.error is not None:
        raise checked.error
