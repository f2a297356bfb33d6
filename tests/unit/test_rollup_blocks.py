"""The aligned blocks the stitcher keeps beside the day rollups."""

from __future__ import annotations

from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from app.aggregates.repository import BLOCK_SPANS, _blocks, block_start

EPOCH = date(1970, 1, 1).toordinal()


@given(day=st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1)))
def test_a_day_lies_in_one_aligned_block_of_each_span(day: date) -> None:
    for span in BLOCK_SPANS:
        start = block_start(day.toordinal(), span)
        assert (start - EPOCH) % span == 0
        assert start <= day.toordinal() < start + span


def test_day_deltas_sum_into_their_blocks_and_cancelling_blocks_vanish() -> None:
    d1 = date(2026, 11, 1).toordinal()
    d2 = d1 + 1
    touches = {
        ("", "", "purchase", "Email", d1): [1.0, 2.0],
        ("", "", "purchase", "Email", d2): [3.0, -2.0],
        ("persona", "pro", "purchase", "Email", d1): [1.0, 0.0],
        ("persona", "pro", "purchase", "Email", d2): [-1.0, 0.0],
    }
    blocks = _blocks(touches, day_at=4, scalar=False)
    same_block = {block_start(d1, span) == block_start(d2, span) for span in BLOCK_SPANS}
    assert same_block == {True}  # 2026-11-01/02 share their 2-, 8- and 32-day blocks
    assert blocks == {
        ("", span, block_start(d1, span), "", "purchase", "Email"): [4.0, 0.0]
        for span in BLOCK_SPANS
    }
