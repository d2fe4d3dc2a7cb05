"""The held-pilot decision: release a transient hold a few times, patiently, else abort."""

from __future__ import annotations

import pytest

from director.holds import HeldRelease, HoldAction, decide_hold, is_transient

POLICY = HeldRelease()


@pytest.mark.parametrize(
    ("code", "subcode", "reason", "releases", "held_seconds", "action", "says"),
    [
        # file transfer failures: transient, released up to 10 times (GlideinWMS's defaults)
        (13, 110, "Transfer input files failure: Connection timed out", 0, None, "release", "1/10"),
        (12, 28, "Transfer output files failure", 0, 300, "release", "1/10"),
        (11, 0, "internal protocol error", 3, 4000, "release", "4/10"),
        (18, 0, "go ahead refused", 9, None, "release", "10/10"),
        (13, 2, "Transfer input files failure", 10, None, "abort", "after 10 releases"),
        # slower for repeat offenders: (releases + 1) x 300 s held before a release
        (13, 0, "Transfer input files failure", 0, 299, "wait", "released in 1s"),
        (13, 0, "Transfer input files failure", 2, 899, "wait", "released in 1s"),
        (13, 0, "Transfer input files failure", 2, 900, "release", "3/10"),
        # a network error named in the reason, whatever the code
        (2, 0, "Failed to connect: No route to host", 0, None, "release", "1/10"),
        (26, 0, "CONNECTION REFUSED by the batch system", 0, None, "release", "1/10"),
        # not transient: aborted at once, the CE's reason kept
        (34, 0, "Memory usage exceeds a memory limit", 0, None, "abort", "held: Memory usage"),
        (26, 0, "SYSTEM_PERIODIC_HOLD", 0, None, "abort", "held: SYSTEM_PERIODIC_HOLD"),
        (4, 0, "credentials expired", 0, None, "abort", "held: credentials expired"),
        (None, None, "", 0, None, "abort", "held: held"),
        # never released, even with a network word in the reason: the pilot failed (our
        # on_exit_hold), a person held it, it was submitted on hold
        (3, 1, "pilot exited with code 1", 0, None, "abort", "held: pilot exited with code 1"),
        (3, 0, "connection refused", 0, None, "abort", "held: connection refused"),
        (1, 0, "via condor_hold (by user ops): connection timed out", 0, None, "abort", "held:"),
        (15, 0, "submitted on hold", 0, None, "abort", "held: submitted on hold"),
        # input still being spooled: waits, never aborted nor released here
        (16, 0, "Spooling input data files", 99, None, "wait", "spooling"),
    ],
)
def test_decision_table(
    code: int | None,
    subcode: int | None,
    reason: str,
    releases: int,
    held_seconds: float | None,
    action: str,
    says: str,
) -> None:
    decision = decide_hold(code, subcode, reason, releases, POLICY, held_seconds)

    assert decision.action is HoldAction(action)
    assert says in decision.reason
    if reason:
        assert reason in decision.reason, "the CE's reason is kept for the pilot's StatusReason"


def test_subcodes_narrow_a_code_and_lists_are_the_operators() -> None:
    policy = HeldRelease(transient_codes={13: [110, 111], 6: []}, transient_reasons=[])

    assert is_transient(13, 110, "", policy)
    assert not is_transient(13, 2, "", policy), "ENOENT: the input is not coming back"
    assert is_transient(6, 13, "", policy)
    assert not is_transient(12, 110, "connection timed out", policy)


def test_zero_releases_aborts_every_hold() -> None:
    policy = HeldRelease(max_releases=0)

    decision = decide_hold(13, 0, "Transfer input files failure", 0, policy)

    assert decision.action is HoldAction.ABORT


def test_no_delay_releases_at_once() -> None:
    policy = HeldRelease(release_delay_s=0)

    assert decide_hold(13, 0, "x", 5, policy, held_seconds=0).action is HoldAction.RELEASE
