"""CE job states mapped to pilot statuses: pure functions, one per CE kind.

The maps follow what DIRAC's own CE plugins do, so a pilot shows the same status whichever
director submitted it. An unknown state maps to `Unknown`; the monitoring cycle turns pilots
that stay Unknown too long into Aborted.
"""

from __future__ import annotations

from server.models import PilotStatus

_ARC: dict[str, PilotStatus] = {
    # A-REX REST states (the `state` field of action=status)
    "ACCEPTING": PilotStatus.WAITING,
    "ACCEPTED": PilotStatus.WAITING,
    "PREPARING": PilotStatus.WAITING,
    "PREPARED": PilotStatus.WAITING,
    "SUBMITTING": PilotStatus.WAITING,
    "QUEUING": PilotStatus.WAITING,
    "RUNNING": PilotStatus.RUNNING,
    "HELD": PilotStatus.WAITING,
    "EXITINGLRMS": PilotStatus.RUNNING,
    "OTHER": PilotStatus.RUNNING,
    "EXECUTED": PilotStatus.RUNNING,
    "FINISHING": PilotStatus.RUNNING,
    "FINISHED": PilotStatus.DONE,
    "FAILED": PilotStatus.FAILED,
    "KILLING": PilotStatus.RUNNING,
    "KILLED": PilotStatus.ABORTED,
    "WIPED": PilotStatus.ABORTED,
    "DELETED": PilotStatus.ABORTED,
}


def arc_status(state: str | None) -> PilotStatus:
    """A-REX REST state -> pilot status; a job A-REX no longer knows (None) is Aborted."""
    if state is None:
        return PilotStatus.ABORTED
    return _ARC.get(state.upper(), PilotStatus.UNKNOWN)


# HTCondor JobStatus codes
HTCONDOR_IDLE = 1
HTCONDOR_RUNNING = 2
HTCONDOR_REMOVED = 3
HTCONDOR_COMPLETED = 4
HTCONDOR_HELD = 5
HTCONDOR_TRANSFERRING_OUTPUT = 6
HTCONDOR_SUSPENDED = 7
HTCONDOR_HOLD_SPOOLING = 16
"""HoldReasonCode of a job waiting for its input sandbox to be spooled."""


def htcondor_status(job_status: int, hold_reason_code: int | None = None) -> PilotStatus:
    """HTCondor JobStatus -> pilot status, as DIRAC's HTCondorCEComputingElement maps it.

    Held is Aborted, except hold code 16 (input still spooling), which is Waiting.
    """
    if job_status == HTCONDOR_HELD:
        if hold_reason_code == HTCONDOR_HOLD_SPOOLING:
            return PilotStatus.WAITING
        return PilotStatus.ABORTED
    return {
        HTCONDOR_IDLE: PilotStatus.WAITING,
        HTCONDOR_RUNNING: PilotStatus.RUNNING,
        HTCONDOR_REMOVED: PilotStatus.ABORTED,
        HTCONDOR_COMPLETED: PilotStatus.DONE,
        HTCONDOR_TRANSFERRING_OUTPUT: PilotStatus.RUNNING,
        HTCONDOR_SUSPENDED: PilotStatus.RUNNING,
    }.get(job_status, PilotStatus.UNKNOWN)


def local_status(started: bool, exit_code: int | None, killed: bool) -> PilotStatus:
    """A local process -> pilot status: its exit code says Done or Failed, a kill Aborted."""
    if killed:
        return PilotStatus.ABORTED
    if not started:
        return PilotStatus.WAITING
    if exit_code is None:
        return PilotStatus.RUNNING
    return PilotStatus.DONE if exit_code == 0 else PilotStatus.FAILED
