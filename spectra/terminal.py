"""Text that reaches the terminal: names from files shown safely, and one-line warnings.

Run names, layer names, paths, methods and messages quoting file content can hold anything:
an escape sequence that clears the screen or writes the clipboard (OSC 52), a newline that
forges an output line, a bidi override, or ``[red]``-style rich markup. :func:`shown` is the
one way such text is displayed: every character that is not printable is written as its
Python escape (``\\x1b``, ``\\n``, ``\\u202e``), and for a rich console the markup is escaped;
:func:`shown_json` is the same rule for JSON output, where the escapes are JSON's own (so the
data read back is unchanged).
"""

from __future__ import annotations

import json
import sys

from rich.markup import escape


def _escaped(char: str) -> str:
    return char if char.isprintable() else char.encode("unicode_escape").decode("ascii")


def shown(text: object, markup: bool = False) -> str:
    """``text`` safe to display: non-printable characters escaped (``\\x1b``, ``\\n``), and with
    ``markup`` rich markup escaped too (for text that goes through a rich console)."""
    text = str(text)
    if not text.isprintable():
        text = "".join(map(_escaped, text))
    return escape(text) if markup else text


def shown_json(value, **options) -> str:
    """``json.dumps(value, **options)`` with every non-printable character in it written as a
    JSON escape (``\\u001b``): safe to display, and it reads back as the same value."""
    text = json.dumps(value, ensure_ascii=False, **options)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else json.dumps(c)[1:-1] for c in text)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Print ``warning: message`` as one line on stderr, once per process."""
    if message in _warned:
        return
    _warned.add(message)
    print(f"warning: {shown(message)}", file=sys.stderr, flush=True)
