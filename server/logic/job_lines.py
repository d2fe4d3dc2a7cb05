"""Which jobs a pilot ran, read from the JobAgent's own log lines as the pilot ships them.

DIRAC's JobAgent does not tell DiracX which job it got: in DIRAC v9 the Matcher service
records it in DIRAC's PilotAgentsDB (`setCurrentJobID`, `setJobForPilot`), and DiracX has the
logic (`assign_jobs_to_pilot`) but no route a pilot calls. What does reach this server is the
JobAgent's output: the pilot's LaunchAgent command runs `dirac-agent WorkloadManagement/JobAgent`
and copies its stdout into the pilot's log stream (`executeAndGetOutput`), and our wrapper ships
every line the pilot prints. So log ingestion looks for the line the JobAgent writes when it
takes a job, and records the job in JobToPilotMapping like `PATCH /api/pilots/jobs` does.

The line, from `JobAgent.execute` (DIRAC v9.0.0a31 and integration of 2024-10, unchanged in
substance since v7r3; only `OwnerDN=` became `Owner=`):

    self.log.info("Received", f"JobID={jobID}, JobType={jobType}, Owner={owner}, "
                              f"JobGroup={jobGroup}")  # one line in the source

which DIRAC's BaseFormatter prints as `<time> <component> <level>: <message> <varmessage>`:

    2024-10-17T12:34:56,123456Z WorkloadManagement/JobAgent INFO: Received JobID=123,
    JobType=User, Owner=alice, JobGroup=grp   (one line, split here)

One log message may hold several such lines (the pilot's remote logger ships output chunks).
The test is a substring first, so nearly every line costs one `in`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: What every line we look for contains: a cheap filter before the regex.
_MARKER = "Received JobID="

# The component (a LocalSubLogger may append "/name"), an optional "[thread] ", the level,
# then the JobAgent's message with the job's ID (18 digits fit JobID's BIGINT).
_RECEIVED = re.compile(
    r"WorkloadManagement/JobAgent(?:/\S+)?[ \t]+(?:\[\d+\][ \t]+)?INFO:[ \t]+"
    r"Received JobID=(\d{1,18}),[ \t]*JobType="
)


def received_job_ids(messages: Iterable[str]) -> list[int]:
    """The job IDs the JobAgent reports it received in these log messages, sorted, once each."""
    found: set[int] = set()
    for message in messages:
        if _MARKER not in message:
            continue
        found.update(int(m[1]) for m in _RECEIVED.finditer(message))
    found.discard(0)
    return sorted(found)
