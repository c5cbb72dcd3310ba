"""Byte-range algebra of the Hub fetch (spectra.hub.intervals) against sets of byte offsets."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from spectra.hub.intervals import merge, subtract, total

INTERVALS = st.lists(
    st.tuples(st.integers(0, 200), st.integers(0, 60)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=12,
)


def as_set(intervals) -> set[int]:
    return {b for start, end in intervals for b in range(start, end)}


def canonical(intervals) -> bool:
    """Sorted, non-empty, and neither overlapping nor touching."""
    return all(s < e for s, e in intervals) and all(
        a[1] < b[0] for a, b in itertools.pairwise(intervals)
    )


@given(INTERVALS)
def test_merge_is_the_union_in_fewest_requests(intervals):
    merged = merge(intervals)
    assert as_set(merged) == as_set(intervals)
    assert canonical(merged)  # adjacent ranges became one request
    assert total(intervals) == len(as_set(intervals))
    assert merge(merged) == merged


@given(INTERVALS, INTERVALS)
def test_subtract_is_what_is_missing(wanted, have):
    missing = subtract(wanted, have)
    assert as_set(missing) == as_set(wanted) - as_set(have)
    assert canonical(missing)
    assert subtract(wanted, [*have, *missing]) == []


def test_adjacent_tensors_are_one_request():
    q, k, v = (100, 164), (164, 196), (196, 228)
    assert merge([v, q, k]) == [(100, 228)]
    assert merge([q, v]) == [(100, 164), (196, 228)]
