"""The monitor's arithmetic without a database: filters, the matrix, buckets, the chart."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from server.errors import InvalidRequest
from server.logic.monitor import (
    STATUS_COLUMNS,
    Bucket,
    Filters,
    bucket_start,
    buckets,
    build_matrix,
    filter_specs,
    parse_filters,
)
from server.models import ScalarOperator, ScalarSearch
from server.monitor import chart


def test_filters_default_to_everything() -> None:
    assert parse_filters({}) == Filters()
    assert filter_specs(Filters(), datetime(2026, 11, 28)) == []


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ({"status": "Sleeping"}, "Sleeping"),
        ({"since": "3d"}, "since"),
        ({"range": "1y"}, "range"),
        ({"site": "x" * 129}, "site"),
    ],
)
def test_a_bad_filter_is_refused_with_its_name(query: dict[str, str], names: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_filters(query)
    assert names in str(refused.value.detail)


def test_filters_become_the_api_search_conditions() -> None:
    now = datetime(2026, 11, 28, 12, 0)
    filters = parse_filters(
        {
            "vo": "lhcb",
            "site": "LCG.CERN.ch",
            "ce": "ce1",
            "queue": "long",
            "status": "Running",
            "since": "1h",
        }
    )
    specs = filter_specs(filters, now)
    as_tuples = {(s.parameter, s.operator, s.value) for s in specs if isinstance(s, ScalarSearch)}
    assert as_tuples == {
        ("VO", ScalarOperator.EQ, "lhcb"),
        ("GridSite", ScalarOperator.EQ, "LCG.CERN.ch"),
        ("DestinationSite", ScalarOperator.EQ, "ce1"),
        ("Queue", ScalarOperator.EQ, "long"),
        ("Status", ScalarOperator.EQ, "Running"),
        ("SubmissionTime", ScalarOperator.GT, "2026-11-28T11:00:00"),
    }


def test_a_query_string_keeps_the_selection_and_applies_changes() -> None:
    filters = Filters(site="A B", status="Done")
    assert filters.query() == "site=A+B&status=Done"
    assert filters.query(status="Failed", range="7d") == "site=A+B&status=Failed&range=7d"
    assert filters.query(site="") == "status=Done"


def test_the_matrix_counts_rows_columns_and_totals() -> None:
    summary = [
        {"GridSite": "B", "Status": "Running", "count": 3},
        {"GridSite": "A", "Status": "Done", "count": 2},
        {"GridSite": "A", "Status": "Running", "count": 1},
        {"GridSite": "A", "Status": "Stalled", "count": 4},  # a status of someone's own
    ]
    matrix = build_matrix(summary)
    assert matrix.statuses == (*STATUS_COLUMNS, "Stalled")
    assert [r.site for r in matrix.rows] == ["A", "B"]
    a, b = matrix.rows
    assert (a.counts["Done"], a.counts["Running"], a.counts["Stalled"], a.total) == (2, 1, 4, 7)
    assert (b.counts["Running"], b.counts["Failed"], b.total) == (3, 0, 3)
    assert matrix.totals["Running"] == 4
    assert matrix.grand_total == 10 == sum(r.total for r in matrix.rows)


def test_an_empty_summary_is_an_empty_matrix() -> None:
    matrix = build_matrix([])
    assert matrix.rows == []
    assert matrix.grand_total == 0
    assert matrix.statuses == STATUS_COLUMNS


def test_buckets_are_whole_hours_ending_with_the_current_one() -> None:
    now = datetime(2026, 11, 28, 13, 47, 12)
    start = bucket_start("24h", now)
    assert start == datetime(2026, 11, 27, 14, 0)
    assert start + 23 * timedelta(hours=1) <= now < start + 24 * timedelta(hours=1)
    week = bucket_start("7d", now)
    assert week == datetime(2026, 11, 28, 12, 0) - 27 * timedelta(hours=6)
    assert week.hour % 6 == 0


def test_the_chart_scales_to_the_busiest_bucket() -> None:
    start = datetime(2026, 11, 28)
    series = buckets(start, timedelta(hours=1), [0, 5, 10], [2, 0, 0])
    drawn = chart.layout(series)
    assert len(drawn.bars) == 6
    tallest = max(drawn.bars, key=lambda b: b.height)
    assert (tallest.kind, tallest.count) == ("submitted", 10)
    assert tallest.y == pytest.approx(chart.MARGIN_TOP, abs=0.01)
    half = next(b for b in drawn.bars if b.count == 5)
    assert half.height == pytest.approx(tallest.height / 2, abs=0.01)
    assert [b.height for b in drawn.bars if b.count == 0] == [0, 0, 0]
    assert (drawn.total_submitted, drawn.total_ended, drawn.peak) == (15, 2, 10)


def test_an_idle_period_draws_flat() -> None:
    drawn = chart.layout([Bucket(datetime(2026, 1, 1), 0, 0)])
    assert drawn.peak == 1
    assert all(b.height == 0 for b in drawn.bars)
