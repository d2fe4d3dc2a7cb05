from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.batching import chunks


@given(st.lists(st.integers()), st.integers(min_value=1, max_value=50))
def test_chunks_keep_order_and_bound_their_size(items: list[int], size: int) -> None:
    pieces = list(chunks(items, size))
    assert [x for piece in pieces for x in piece] == items
    assert all(1 <= len(piece) <= size for piece in pieces)
    assert all(len(piece) == size for piece in pieces[:-1])


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        list(chunks([1], 0))
