"""The one exception type for errors a user can cause; the CLI turns it into one line and exit 2."""


class SpectraError(Exception):
    """Bad input: a missing path, a corrupt file, wrong shapes, NaN weights, an unknown option."""
