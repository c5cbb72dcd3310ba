"""The one exception type for errors a user can cause; the CLI turns it into one line and exit 2."""


class SpectraError(Exception):
    """Bad input: a missing path, a corrupt file, wrong shapes, NaN weights, an unknown option."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for a SpectraError."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class NotApplicable(SpectraError):
    """A figure or analysis does not apply to these runs (``--figure all`` skips it, saying why)."""


class Interrupted(Exception):
    """The user stopped a command (Ctrl-C); the message says what was kept and how to go on."""
