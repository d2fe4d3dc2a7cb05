"""A real director process killed with SIGKILL at points of its cycle, 50 times; after each
kill a restarted director runs one reconciliation cycle and nothing is lost or doubled."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from server.identity import OPERATOR
from server.models import PilotRequest, RequestState
from tests.conftest import LiveServer
from tests.reliability.crash_driver import POINTS
from tests.reliability.crash_trials import (
    KILL_REASON,
    OPERATOR_SUB,
    check,
    check_kills,
    run_crash_trials,
)

TRIALS = int(os.environ.get("SITE_DIRECTOR_CRASH_TRIALS", "50"))


async def test_fifty_kills_leave_no_violation(live_server_tls: LiveServer, tmp_path: Path) -> None:
    report = await run_crash_trials(
        tmp_path,
        trials=TRIALS,
        server_url=live_server_tls.url,
        director_token=live_server_tls.director_token,
        admin_token=live_server_tls.admin_token,
        operator_token=live_server_tls.token(OPERATOR_SUB, "lhcb", [OPERATOR]),
        ca_file=live_server_tls.ca_file,
    )
    assert len(report.trials) == TRIALS
    assert {t.point for t in report.trials} == set(POINTS)
    assert all(t.killed_at for t in report.trials)
    assert sum(t.jobs_after_kill for t in report.trials) > 0  # the kills did hit live jobs
    kill_trials = [t for t in report.trials if t.point == "after-kill"]
    # the driver died between the CE kill and the outcome, with kill requests to carry out
    assert all(t.kills > 0 and t.killed_at.startswith("after-kill:") for t in kill_trials)
    assert report.violations == [], report.violations[:20]


def test_the_checker_sees_each_kind_of_violation() -> None:
    """The invariants catch what they claim to: a checker that sees nothing proves nothing."""
    stamp_a, stamp_b, stamp_c = "a" * 32, "b" * 32, "c" * 32
    pilots = [
        {"PilotStamp": stamp_a, "PilotJobReference": stamp_a, "Status": "Submitted"},
        {"PilotStamp": stamp_b, "PilotJobReference": "local:gone", "Status": "Running"},
        {"PilotStamp": stamp_c, "PilotJobReference": stamp_c, "Status": "Aborted"},
    ]
    secrets = {stamp_c: [{"revoked": False, "expires_at": None}]}
    problems = check({stamp_a: f"local:{stamp_a}"}, {}, pilots, secrets, now=0.0)
    assert any("local:" + stamp_a in p and "reference is" in p for p in problems)
    assert any(stamp_b in p and "missing job" in p for p in problems)
    assert any(stamp_c in p and "still usable" in p for p in problems)
    clean = [{"PilotStamp": stamp_c, "PilotJobReference": stamp_c, "Status": "Aborted"}]
    revoked = {stamp_c: [{"revoked": True, "expires_at": None}]}
    assert check({}, {}, clean, revoked, now=0.0) == []


def _request(stamp: str, state: RequestState, last_error: str | None = None) -> PilotRequest:
    now = datetime.now(UTC)
    return PilotRequest(
        request_id=abs(hash(stamp)) % 1000 + 1,
        kind="kill",
        pilot_stamp=stamp,
        vo="lhcb",
        reason=KILL_REASON,
        requested_by=OPERATOR_SUB,
        requested_at=now,
        state=state,
        attempts=0,
        last_error=last_error,
        next_attempt_at=None,
        updated_at=now,
    )


def test_the_kill_checker_sees_each_kind_of_violation() -> None:
    stamp_a, stamp_b, stamp_c = "a" * 32, "b" * 32, "c" * 32
    killed = f"killed by {OPERATOR_SUB}: {KILL_REASON}"
    pilots = [
        {"PilotStamp": stamp_a, "Status": "Running"},
        {"PilotStamp": stamp_b, "Status": "Done", "StatusReason": "exit 0"},
        {"PilotStamp": stamp_c, "Status": "Aborted", "StatusReason": killed},
    ]
    stuck = _request(stamp_a, RequestState.IN_PROGRESS)
    problems = check_kills(
        [stuck, _request(stamp_b, RequestState.FAILED), _request(stamp_c, RequestState.DONE)],
        [stuck],
        pilots,
        {stamp_a, stamp_b, stamp_c},
    )
    assert any(stamp_a in p and "is in_progress" in p for p in problems)
    assert any(stamp_a in p and "after the monitoring step" in p for p in problems)
    assert any(stamp_a in p and "not Aborted" in p for p in problems)
    assert any(stamp_b in p and "no reason" in p for p in problems)
    assert any(stamp_b in p and "not Aborted" in p for p in problems)
    assert not any(stamp_c in p for p in problems)
    ended = _request(stamp_b, RequestState.ALREADY_ENDED)
    assert check_kills([ended], [], pilots, set()) == []
