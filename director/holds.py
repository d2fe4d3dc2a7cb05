"""Held HTCondor pilots: release a hold known to be transient a few times, else abort.

A pure decision, as GlideinWMS's factory makes it (glideFactoryLib: isGlideinUnrecoverable,
isGlideinWithinHeldLimits):

- a hold is recoverable only when its HoldReasonCode is listed, with its HoldReasonSubCode if
  subcodes are listed for that code (the factory's `RecoverableExitcodes`, "code [subcode...]";
  since GlideinWMS 3.6.2 nothing is listed by default, every code is unrecoverable);
- a recoverable job is released while NumSystemHolds is at most `max_release_count` (10);
- not before it has been held NumSystemHolds x `min_release_time` (300 s): slower for repeat
  offenders.

Listed here by default: HTCondor's file transfer failures (11 InvalidTransferAck, 12
TransferOutputError, 13 TransferInputError, 18 InvalidTransferGoAhead: a network or a disk on
the way, not the pilot), and any hold whose reason names a network error. Never released,
whatever the lists say: a user's hold (1), the job's own policy (3: our `on_exit_hold`, a
pilot that failed), a submission on hold (15); input still spooling (16) only waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

USER_REQUEST = 1
JOB_POLICY = 3
SUBMITTED_ON_HOLD = 15
SPOOLING_INPUT = 16
NEVER_RELEASED = frozenset({USER_REQUEST, JOB_POLICY, SUBMITTED_ON_HOLD})

DEFAULT_TRANSIENT_CODES: dict[int, list[int]] = {11: [], 12: [], 13: [], 18: []}
DEFAULT_TRANSIENT_REASONS = [
    "connection timed out",
    "connection refused",
    "connection reset",
    "network is unreachable",
    "no route to host",
]


class HeldRelease(BaseModel):
    """Which holds an HTCondor CE block releases, how often, and how patiently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_releases: int = Field(
        default=10, ge=0, description="releases of one job before it is Aborted (0: never)"
    )
    release_delay_s: float = Field(
        default=300.0,
        ge=0,
        description="a hold is released after (releases so far + 1) x this many seconds",
    )
    transient_codes: dict[int, list[int]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_TRANSIENT_CODES.items()},
        description="HoldReasonCode -> the HoldReasonSubCodes that are transient (empty: all)",
    )
    transient_reasons: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TRANSIENT_REASONS),
        description="a hold whose HoldReason contains one of these (any case) is transient",
    )


class HoldAction(StrEnum):
    RELEASE = "release"
    WAIT = "wait"
    ABORT = "abort"


@dataclass(frozen=True)
class HoldDecision:
    action: HoldAction
    reason: str
    """Why, with the CE's hold reason: a pilot's StatusReason when it is Aborted."""


def is_transient(code: int | None, subcode: int | None, reason: str, policy: HeldRelease) -> bool:
    if code is None or code in NEVER_RELEASED or code == SPOOLING_INPUT:
        return False
    if code in policy.transient_codes:
        subcodes = policy.transient_codes[code]
        if not subcodes or subcode in subcodes:
            return True
    text = reason.lower()
    return any(pattern.lower() in text for pattern in policy.transient_reasons if pattern)


def decide_hold(
    code: int | None,
    subcode: int | None,
    reason: str,
    releases: int,
    policy: HeldRelease,
    held_seconds: float | None = None,
) -> HoldDecision:
    """A held job -> release it, wait, or abort it (with the pilot's reason).

    `releases`: how often the job was released already (NumSystemHolds - 1); `held_seconds`:
    how long this hold has lasted (None: unknown, no waiting).
    """
    said = reason or "held"
    if code == SPOOLING_INPUT:
        return HoldDecision(HoldAction.WAIT, f"input still spooling: {said}")
    if not is_transient(code, subcode, reason, policy):
        return HoldDecision(HoldAction.ABORT, f"held: {said}")
    if releases >= policy.max_releases:
        return HoldDecision(HoldAction.ABORT, f"held again after {releases} releases: {said}")
    delay = (releases + 1) * policy.release_delay_s
    if held_seconds is not None and held_seconds < delay:
        return HoldDecision(
            HoldAction.WAIT, f"held, released in {delay - held_seconds:.0f}s: {said}"
        )
    return HoldDecision(
        HoldAction.RELEASE,
        f"released from a transient hold ({releases + 1}/{policy.max_releases}): {said}",
    )
