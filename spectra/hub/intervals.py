"""Byte ranges as half-open intervals ``(start, end)``: merging, what is missing, what covers.

Pure functions on sorted lists of disjoint, non-adjacent intervals (what :func:`merge`
returns), so that a file's wanted bytes, the bytes already in the cache and the requests still
to make are one small algebra.
"""

from __future__ import annotations

from collections.abc import Iterable

Interval = tuple[int, int]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of ``intervals`` as sorted, disjoint, non-adjacent intervals (empty ones
    dropped): touching or overlapping ranges become one request."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def subtract(wanted: Iterable[Interval], have: Iterable[Interval]) -> list[Interval]:
    """The parts of ``wanted`` not in ``have``, merged."""
    have = merge(have)
    missing = []
    for start, end in merge(wanted):
        for h_start, h_end in have:
            if h_end <= start or h_start >= end:
                continue
            if h_start > start:
                missing.append((start, h_start))
            start = max(start, h_end)
        if start < end:
            missing.append((start, end))
    return missing


def total(intervals: Iterable[Interval]) -> int:
    """How many bytes the union of ``intervals`` holds."""
    return sum(end - start for start, end in merge(intervals))
