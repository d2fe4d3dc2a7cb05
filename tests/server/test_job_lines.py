"""The JobAgent's "Received" line, as DIRAC prints it, names the job the pilot took; nothing
else does. The lines are the messages of `JobAgent.execute` in DIRAC v7r3, v8.0 and v9.0
(`self.log.info("Received", f"JobID=..., JobType=..., Owner[DN]=..., JobGroup=...")`) in
DIRAC's log format `<time> <component>[/<sub>] [<thread>] <level>: <message> <varmessage>`."""

from __future__ import annotations

import pytest

from server.logic.job_lines import received_job_ids

V9 = (
    "2024-10-17T12:34:56,123456Z WorkloadManagement/JobAgent INFO: "
    "Received JobID=123, JobType=User, Owner=alice, JobGroup=lhcb_user"
)
V8 = (
    "2023-05-02 08:01:02 UTC WorkloadManagement/JobAgent INFO: Received JobID=77, "
    "JobType=MCSimulation, OwnerDN=/DC=ch/DC=cern/CN=prod, JobGroup=00012345"
)
THREAD = (
    "2024-10-17T12:34:56,123456Z WorkloadManagement/JobAgent [140231] INFO: "
    "Received JobID=5, JobType=User, Owner=bob, JobGroup=g"
)
SUBLOGGER = (
    "2024-10-17T12:34:56,123456Z WorkloadManagement/JobAgent/Pool INFO: "
    "Received JobID=6, JobType=User, Owner=bob, JobGroup=g"
)


@pytest.mark.parametrize(
    ("line", "job"),
    [(V9, 123), (V8, 77), (THREAD, 5), (SUBLOGGER, 6)],
    ids=["v9", "v8", "thread", "sublogger"],
)
def test_the_jobagent_received_line_names_the_job(line: str, job: int) -> None:
    assert received_job_ids([line]) == [job]


def test_several_lines_in_one_message_and_repeats_count_once() -> None:
    chunk = "\n".join([V9, "some other output", V8, V9])
    assert received_job_ids([chunk, V8]) == [77, 123]


@pytest.mark.parametrize(
    "line",
    [
        # the JobAgent finding nothing, stopping, or failing to match (same source)
        "2024-10-17T12:34:56,1Z WorkloadManagement/JobAgent NOTICE: "
        "Job request OK, but no match found No match found",
        "2024-10-17T12:34:56,1Z WorkloadManagement/JobAgent INFO: JobAgent will stop "
        'with message "No match found", execution complete.',
        # the same words from somebody else, or at another level, or malformed
        "Received JobID=99, JobType=User, Owner=mallory, JobGroup=g",
        "2024-10-17 WorkloadManagement/PushJobAgent INFO: Received JobID=9, JobType=User",
        "2024-10-17 WorkloadManagement/JobAgent DEBUG: Received JobID=9, JobType=User",
        "2024-10-17 WorkloadManagement/JobAgent INFO: Received JobID=abc, JobType=User",
        "2024-10-17 WorkloadManagement/JobAgent INFO: Received JobID=0, JobType=User",
        "2024-10-17 WorkloadManagement/JobAgent INFO: Received JobID=1234567890123456789, "
        "JobType=User",  # past BIGINT
        "",
    ],
)
def test_other_lines_name_no_job(line: str) -> None:
    assert received_job_ids([line]) == []
