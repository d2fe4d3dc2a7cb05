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


# --- efficiency, quality, failing queues, the pilot list's query ------------------------------


def test_efficiency_is_done_against_every_outcome() -> None:
    from server.logic.monitor import efficiency

    assert efficiency(0, 0, 0) is None
    assert efficiency(3, 0, 0) == 100.0
    assert efficiency(0, 2, 2) == 0.0
    assert efficiency(3, 1, 0) == 75.0
    assert efficiency(1, 1, 1) == pytest.approx(100 / 3)


@pytest.mark.parametrize(
    ("percent", "ended", "flag"),
    [
        (None, 0, "Idle"),
        (0.0, 10, "Idle"),  # DIRAC: more than 10, else Idle
        (100.0, 10, "Idle"),
        (0.0, 11, "Bad"),
        (24.99, 11, "Bad"),
        (25.0, 11, "Poor"),
        (59.99, 11, "Poor"),
        (60.0, 11, "Fair"),
        (84.99, 11, "Fair"),
        (85.0, 11, "Good"),
        (100.0, 1000, "Good"),
    ],
)
def test_quality_flags_follow_dirac_thresholds(
    percent: float | None, ended: int, flag: str
) -> None:
    from server.logic.monitor import quality

    assert quality(percent, ended) == flag


def test_quality_of_the_whole_selection_wants_more_than_a_hundred() -> None:
    from server.logic.monitor import QUALITY_MIN_ENDED_ALL, quality

    assert quality(90.0, 100, QUALITY_MIN_ENDED_ALL) == "Idle"
    assert quality(90.0, 101, QUALITY_MIN_ENDED_ALL) == "Good"


def test_efficiency_rows_per_site_then_its_ces() -> None:
    from server.logic.monitor import efficiency_rows

    def r(site: str, ce: str, status: str, n: int) -> dict[str, object]:
        return {"GridSite": site, "DestinationSite": ce, "Status": status, "count": n}

    rows, total = efficiency_rows(
        [
            r("B", "b1", "Done", 20),
            r("A", "a2", "Failed", 12),
            r("A", "a1", "Done", 10),
            r("A", "a1", "Aborted", 2),
            r("A", "a1", "Running", 5),
            r("A", "a1", "Deleted", 7),  # not an outcome
        ]
    )
    assert [(x.site, x.ce) for x in rows] == [
        ("A", None),
        ("A", "a1"),
        ("A", "a2"),
        ("B", None),
        ("B", "b1"),
    ]
    a, a1, a2, b, _ = rows
    assert (a1.total, a1.ended, a1.quality) == (24, 12, "Fair")
    assert a1.efficiency == pytest.approx(83.33, abs=0.01)
    assert (a2.efficiency, a2.quality) == (0.0, "Bad")
    assert (a.total, a.ended) == (36, 24)
    assert a.efficiency == pytest.approx(41.67, abs=0.01)
    assert a.quality == "Poor"
    assert (b.efficiency, b.quality) == (100.0, "Good")
    assert (total.site, total.ended, total.count("Done"), total.quality) == ("", 44, 30, "Idle")


def test_a_queue_fails_every_pilot_only_when_its_last_ended_all_failed() -> None:
    from server.logic.monitor import fails_every_pilot

    assert fails_every_pilot(["Failed", "Aborted", "Failed"])
    assert not fails_every_pilot(["Failed", "Aborted"])  # too few to say
    assert not fails_every_pilot(["Failed", "Done", "Failed", "Failed"])
    assert not fails_every_pilot([])


def test_queue_health_groups_the_last_ended_per_queue() -> None:
    from server.logic.monitor import queue_health

    when = datetime(2026, 11, 28, 12)

    def r(vo: str, ce: str, q: str, status: str, reason: str, minutes: int) -> dict[str, object]:
        return {
            "VO": vo,
            "GridSite": "S",
            "DestinationSite": ce,
            "Queue": q,
            "Status": status,
            "StatusReason": reason,
            "LastUpdateTime": when - timedelta(minutes=minutes),
        }

    health = queue_health(
        [
            r("lhcb", "ce", "q", "Aborted", "held", 1),
            r("lhcb", "ce", "q", "Failed", "exit 1", 2),
            r("lhcb", "ce", "q", "Failed", "exit 2", 3),
            r("dteam", "ce", "q", "Done", "", 1),
            r("dteam", "ce", "q", "Failed", "x", 2),
        ]
    )
    bad = health[("lhcb", "ce", "q")]
    assert bad.failing
    assert (bad.ended, bad.done, bad.latest_reason) == (3, 0, "held")
    assert bad.latest_at == when - timedelta(minutes=1)
    assert "vo=lhcb" in bad.pilots()
    good = health[("dteam", "ce", "q")]
    assert not good.failing
    assert (good.done, good.latest_reason) == (1, "x")


def test_submissions_failing_needs_failures_and_a_backoff_in_force() -> None:
    from server.logic.monitor import submissions_failing

    now = datetime(2026, 11, 28, 12)
    later = now + timedelta(minutes=5)
    assert submissions_failing({"Enabled": True, "Failures": 2, "BackoffUntil": later}, now)
    assert not submissions_failing({"Enabled": True, "Failures": 2, "BackoffUntil": now}, now)
    assert not submissions_failing({"Enabled": True, "Failures": 0, "BackoffUntil": later}, now)
    assert not submissions_failing({"Enabled": False, "Failures": 2, "BackoffUntil": later}, now)
    assert not submissions_failing({"Enabled": True, "Failures": 2, "BackoffUntil": None}, now)


def test_pilot_query_round_trips_and_drops_defaults() -> None:
    from server.logic.monitor import PilotQuery, parse_pilot_query

    assert parse_pilot_query({}) == PilotQuery()
    assert PilotQuery().query() == ""
    q = parse_pilot_query(
        {"site": "S", "status": "Failed", "stamp": " abc_-1 ", "job": "007", "sort": "status"}
    )
    assert (q.stamp, q.job, q.sort, q.direction, q.page) == ("abc_-1", "7", "status", "asc", 1)
    assert parse_pilot_query(dict(x.split("=") for x in q.query().split("&"))) == q
    # sorting by the column sorted already turns it round; another starts at its natural end
    assert "dir=desc" in q.sorted_by("status")
    assert "sort=updated" in q.sorted_by("updated")
    assert "dir" not in q.sorted_by("updated")  # newest first is the default for times
    assert q.aria_sort("status") == "ascending"
    assert q.aria_sort("site") == "none"
    assert "page" not in q.query(page=1)
    assert "page=3" in q.query(page=3)


@pytest.mark.parametrize(
    ("query", "word"),
    [
        ({"stamp": "a/b"}, "stamp"),
        ({"stamp": "a" * 33}, "stamp"),
        ({"stamp": "a%"}, "stamp"),
        ({"job": "1.5"}, "job"),
        ({"job": "٣"}, "job"),  # a digit, but not an ASCII one
        ({"ref": "x" * 256}, "ref"),
        ({"sort": "PilotID"}, "sort"),
        ({"dir": "sideways"}, "dir"),
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"page": "1e3"}, "page"),
        ({"status": "Sleeping"}, "Sleeping"),
    ],
)
def test_pilot_query_refuses_bad_values_naming_them(query: dict[str, str], word: str) -> None:
    from server.logic.monitor import parse_pilot_query

    with pytest.raises(InvalidRequest) as exc:
        parse_pilot_query(query)
    assert word in str(exc.value.detail)


def test_pilot_list_search_is_the_api_search() -> None:
    from server.logic.monitor import PilotQuery, pilot_list_search

    body = pilot_list_search(
        PilotQuery(filters=Filters(site="S"), reference="ref://1", job="42", sort="ce"),
        datetime(2026, 11, 28),
    )
    assert [(s.parameter, s.value) for s in body.search] == [  # type: ignore[union-attr]
        ("GridSite", "S"),
        ("PilotJobReference", "ref://1"),
        ("JobID", 42),
    ]
    assert [(s.parameter, s.direction) for s in body.sort] == [("DestinationSite", "desc")]
