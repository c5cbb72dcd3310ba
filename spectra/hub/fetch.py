"""Fetching one byte range of a Hub file into a cache piece, by HTTP range requests.

Requests go through huggingface_hub's session (its token, headers, offline switch and redirect
handling: the Hub's resolve URL sends large files on to a CDN, without the token). Each answer
must be ``206 Partial Content`` for exactly the bytes asked, of a file of the expected size;
the bytes are appended to the piece as they arrive. A connection that drops midway keeps what
arrived, and the request is made again for the rest only (a few times, with a pause that
doubles); an answer of another kind ends the fetch with one line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from spectra.errors import SpectraError, first_line

ATTEMPTS = 5
PAUSE = 0.25  # seconds before the first retry; doubles after each
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Dropped(Exception):
    """The answer stopped early or was a temporary failure: ask again for the rest."""


def fetch_range(
    url: str, piece: Path, end: int, size: int, label: str,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> None:  # fmt: skip
    """Extend ``piece`` (a file's bytes from the offset it is named by) up to byte ``end`` of the
    file at ``url``, which is ``size`` bytes long; ``on_bytes(n)`` as bytes arrive.
    SpectraError when it cannot be done."""
    import httpx2

    pause, why = PAUSE, ""
    for attempt in range(ATTEMPTS):
        with piece.open("ab") as out:
            try:
                _get(url, int(piece.name) + out.tell(), end, size, out, label, on_bytes)
                return
            except (_Dropped, httpx2.TransportError) as exc:
                why = first_line(exc)
        if attempt + 1 < ATTEMPTS:
            time.sleep(pause)
            pause *= 2
    raise SpectraError(f"{label}: the transfer failed {ATTEMPTS} times ({why}); run again to go on")


def _get(url, start, end, size, out, label, on_bytes) -> None:
    """One request for bytes [start, end), written to ``out`` as they arrive."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    if start >= end:
        return
    wanted = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
    headers = build_hf_headers() | wanted
    timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
    with get_session().stream("GET", url, headers=headers, timeout=timeout) as response:
        if response.status_code in RETRY_STATUS:
            raise _Dropped(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            response.read()  # the error's details are in the body
            hf_raise_for_status(response)
        _check_answer(response, start, end, size, label)
        left = end - start
        for chunk in response.iter_raw():  # as it arrives: a drop loses nothing received
            if len(chunk) > left:
                raise SpectraError(f"{label}: the server sent more than bytes {start}-{end - 1}")
            out.write(chunk)
            left -= len(chunk)
            on_bytes(len(chunk))
        if left:
            raise _Dropped(f"{left} bytes short")


def _check_answer(response, start: int, end: int, size: int, label: str) -> None:
    """SpectraError unless the answer is exactly bytes [start, end) of a ``size``-byte file."""
    if response.status_code != 206:
        raise SpectraError(
            f"{label}: asked for bytes {start}-{end - 1}, the server answered HTTP "
            f"{response.status_code} (it does not serve byte ranges)"
        )
    got = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    want = (start, end - 1, size)
    if not got or (int(got[1]), int(got[2])) != want[:2] or got[3] not in (str(size), "*"):
        raise SpectraError(
            f"{label}: asked for bytes {start}-{end - 1} of {size}, the server sent "
            f"{response.headers.get('Content-Range')!r}"
        )
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) != end - start:
        raise SpectraError(f"{label}: bytes {start}-{end - 1} came with Content-Length {length}")
