"""Director crash trials: kill a real director process at a point of its cycle, restart one in
this process, let it run one reconciliation cycle, then check the invariants.

Shared by `tests/reliability/test_director_crash.py` (the CI variant) and
`bench/reliability_report.py` (more trials, figures for docs/reliability.md).

Invariants, checked after every trial (each broken one is a violation):

1. every job the CE holds right after the kill, and every job it holds after the restart, is
   registered exactly once: one server pilot with that stamp whose reference is that job's;
2. no non-final server pilot points at a job the CE does not have (or has no reference at all:
   registered but never submitted pilots are Aborted by the reconciliation);
3. every pilot that never reached the CE is Aborted and each secret bound to it is revoked or
   expired;
4. (the `after-kill` point) every kill request the trial made (an operator's token, for live
   pilots of the sleeping queue) is final after the restart's monitoring step (`done`,
   `already_ended`, or `failed` with its reason), none of the site is left open, and every
   pilot whose job the crashed director killed is Aborted "killed by <operator>: <reason>".

The restarted director runs the submission cycle, or (every other trial) the monitoring cycle
first and then the submission cycle, as a daemon may do after a start-up. Its clock is moved
past `submit_grace_seconds` (injected time, no sleep), so "one reconciliation" may Abort what
a crash left registered but unsubmitted. After an `after-kill` crash the restart always
includes one monitoring step (after the submission cycle when it does not start with one).
"""

from __future__ import annotations

import random
import re
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from director.client import ServerClient, ce_reference, make_client
from director.config import Settings, load_config
from director.daemon import client_for
from director.loop import Director
from server.models import (
    FINAL_STATUSES,
    KillRequest,
    PilotRequest,
    RequestState,
    ScalarSearch,
    SearchParams,
)
from tests.director.conftest import queue_block, write_config
from tests.reliability.crash_driver import POINTS

ROOT = Path(__file__).resolve().parents[2]
FINAL = {s.value for s in FINAL_STATUSES}
GRACE_SECONDS = 300.0
KILL_QUEUE = "q3"
"""The queue whose pilots sleep: live when the `after-kill` trials ask for their kills."""
KILL_REASON = "crash trial"
OPERATOR_SUB = "operator"


@dataclass
class Trial:
    index: int
    point: str
    seed: int
    monitoring_first: bool = False
    killed_at: str = ""
    log_tail: str = ""
    jobs_after_kill: int = 0
    pilots: int = 0
    kills: int = 0
    """Kill requests the trial made (the `after-kill` point)."""
    violations: list[str] = field(default_factory=list)


@dataclass
class CrashReport:
    trials: list[Trial] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        return [f"trial {t.index} ({t.killed_at}): {v}" for t in self.trials for v in t.violations]

    def by_point(self) -> dict[str, dict[str, int]]:
        rows: dict[str, dict[str, int]] = {}
        for t in self.trials:
            row = rows.setdefault(
                t.point, {"trials": 0, "violations": 0, "jobs_after_kill": 0, "kills": 0}
            )
            row["trials"] += 1
            row["violations"] += len(t.violations)
            row["jobs_after_kill"] += t.jobs_after_kill
            row["kills"] += t.kills
        return rows


def crash_config(folder: Path, *, server_url: str, ca_file: Path | None, token: str) -> Path:
    """Two queues on one local CE whose pilots exit at once, so monitoring has work every
    round, and a third (`KILL_QUEUE`) whose few pilots sleep, for the kill requests."""
    block = {
        "max_total_pilots": 6,
        "max_waiting_pilots": 6,
        "pilots_per_cycle": 3,
        "environment": {"TEST_PILOT_SLEEP": "0", "TEST_PILOT_EXIT": "0"},
    }
    path, _ = write_config(
        folder,
        server_url=server_url,
        ca_file=ca_file,
        token=token,
        slots=11,
        director={
            "submit_grace_seconds": GRACE_SECONDS,
            "backoff": {"initial_seconds": 1, "max_seconds": 2},
            "queue_timeout_seconds": 30,
        },
        queues={
            "q1": queue_block(**block),
            "q2": queue_block(**block),
            KILL_QUEUE: queue_block(
                max_total_pilots=3,
                max_waiting_pilots=3,
                pilots_per_cycle=3,
                environment={"TEST_PILOT_SLEEP": "900", "TEST_PILOT_EXIT": "0"},
            ),
        },
    )
    return path


class Killer:
    """The crash driver in --serve mode: one interpreter, one forked director per trial."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.crash_driver", "--serve"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def kill_once(self, config: Path, point: str, seed: int) -> tuple[str, str]:
        """Run one crashing director; returns where it died ('' when it was not killed by
        SIGKILL) and the tail of its log."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        log_path = self.folder / f"driver-{seed}.log"
        self.process.stdin.write(f"{config} {point} {seed} {log_path}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        log_text = log_path.read_text() if log_path.exists() else ""
        found = re.findall(r"^KILLED (\S+)$", log_text, re.MULTILINE)
        if answer != str(signal.SIGKILL.value) or not found:
            return "", log_text[-3000:]
        return found[-1], log_text[-3000:]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def ce_jobs(director: Director) -> dict[str, str]:
    """stamp -> reference of every job the CE holds, over the director's queues."""
    jobs: dict[str, str] = {}
    for ref in director.queues:
        for job in await director.ce_for(ref).list_jobs(director.spec_for(ref)):
            jobs[job.stamp] = job.reference
    return jobs


async def site_pilots(director: Director, site: str) -> list[dict[str, Any]]:
    assert director.client is not None
    return await director.client.search(
        SearchParams(search=[ScalarSearch(parameter="GridSite", operator="eq", value=site)])
    )


async def secrets_by_stamp(server_url: str, admin_token: str, ca: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    async with httpx.AsyncClient(
        base_url=server_url, headers={"Authorization": f"Bearer {admin_token}"}, verify=ca
    ) as http:
        page = 1
        while True:
            r = await http.get("/api/pilots/secrets", params={"page": page, "per_page": 10_000})
            r.raise_for_status()
            rows = r.json()
            for row in rows:
                for stamp in row["pilot_stamps"]:
                    out.setdefault(stamp, []).append(row)
            if len(rows) < 10_000:
                return out
            page += 1


def check(
    snapshot: dict[str, str],
    jobs: dict[str, str],
    pilots: list[dict[str, Any]],
    secrets: dict[str, list[Any]],
    now: float,
) -> list[str]:
    """The three invariants of the module docstring; pure, so it is tested on its own."""
    problems: list[str] = []
    by_stamp = {str(p["PilotStamp"]): p for p in pilots}
    references = Counter(r for p in pilots if (r := ce_reference(p)) is not None)
    for stamp, reference in {**snapshot, **jobs}.items():
        pilot = by_stamp.get(stamp)
        if pilot is None:
            problems.append(f"CE job {reference} has no server record")
        elif ce_reference(pilot) != reference:
            problems.append(
                f"CE job {reference}: pilot's reference is {pilot.get('PilotJobReference')}"
            )
        elif references[reference] != 1:
            problems.append(f"CE job {reference} is registered {references[reference]} times")
    live_refs = set(jobs.values())
    for stamp, pilot in by_stamp.items():
        own = ce_reference(pilot)
        status = str(pilot.get("Status"))
        if status not in FINAL and (own is None or own not in live_refs):
            problems.append(f"pilot {stamp} is {status} and points at a missing job {own}")
        if own is None and stamp not in snapshot:
            if status != "Aborted":
                problems.append(f"pilot {stamp} never reached the CE but is {status}")
            for secret in secrets.get(stamp, []):
                expired = secret["expires_at"] is not None and secret["expires_at"] <= now
                if not (secret["revoked"] or expired):
                    problems.append(f"pilot {stamp} never ran: its secret is still usable")
    return problems


def check_kills(
    requests: list[PilotRequest],
    open_of_site: list[PilotRequest],
    pilots: list[dict[str, Any]],
    killed: set[str],
) -> list[str]:
    """Invariant 4 of the module docstring: `requests` as they stand after the restart's
    monitoring step, the site's kill requests still open, the site's pilots, and the stamps
    whose jobs the crashed director killed at the CE. Pure, so it is tested on its own."""
    problems: list[str] = []
    by_stamp = {str(p["PilotStamp"]): p for p in pilots}
    expected = f"killed by {OPERATOR_SUB}: {KILL_REASON}"
    for request in requests:
        stamp, state = request.pilot_stamp, request.state
        if state not in (RequestState.DONE, RequestState.ALREADY_ENDED, RequestState.FAILED):
            problems.append(f"kill request {request.request_id} of {stamp} is {state.value}")
        elif state == RequestState.FAILED and not request.last_error:
            problems.append(f"kill request {request.request_id} of {stamp} failed with no reason")
        pilot = by_stamp.get(stamp)
        status = None if pilot is None else pilot.get("Status")
        why = None if pilot is None else pilot.get("StatusReason")
        if (stamp in killed or state == RequestState.DONE) and (
            status != "Aborted" or why != expected
        ):
            problems.append(f"killed pilot {stamp} is {status} ({why!r}), not Aborted {expected!r}")
    for request in open_of_site:
        problems.append(
            f"kill request {request.request_id} of {request.pilot_stamp} still "
            f"{request.state.value} after the monitoring step"
        )
    return problems


async def ask_kills(
    config: Path, site: str, operator: ServerClient, rng: random.Random
) -> list[PilotRequest]:
    """Kill requests for 1-3 live pilots of `KILL_QUEUE` (submitted first when it has none)."""
    settings = load_config(config)
    director = Director(settings, client=client_for(settings))
    try:
        [ref] = [r for r in director.queues if r.queue == KILL_QUEUE]
        ce, spec = director.ce_for(ref), director.spec_for(ref)
        live: list[str] = []
        for _ in range(2):
            running = {
                j.reference for j in await ce.list_jobs(spec) if j.status not in FINAL_STATUSES
            }
            live = sorted(
                str(p["PilotStamp"])
                for p in await site_pilots(director, site)
                if str(p.get("Status")) not in FINAL and ce_reference(p) in running
            )
            if live:
                break
            await director.run_cycle()  # the queue has no live pilot yet: submit some
    finally:
        await director.close()
        if director.client is not None:
            await director.client.aclose()
    if not live:
        return []
    stamps = rng.sample(live, rng.randint(1, min(3, len(live))))
    return await operator.request_kills(KillRequest(pilot_stamps=stamps, reason=KILL_REASON))


async def run_trial(
    index: int,
    point: str,
    seed: int,
    *,
    killer: Killer,
    config: Path,
    site: str,
    server_url: str,
    admin_token: str,
    ca_file: Path | None,
    operator: ServerClient,
) -> Trial:
    trial = Trial(index, point, seed, monitoring_first=index % 2 == 1)
    asked: list[PilotRequest] = []
    if point == "after-kill":
        asked = await ask_kills(config, site, operator, random.Random(seed))
        trial.kills = len(asked)
        if not asked:
            trial.violations.append(f"no live pilot of {KILL_QUEUE} to kill")
    trial.killed_at, trial.log_tail = killer.kill_once(config, point, seed)
    if not trial.killed_at:
        trial.violations.append("the driver was not killed")
    settings: Settings = load_config(config)
    shift = GRACE_SECONDS + 5
    director = Director(settings, client=client_for(settings), clock=lambda: time.time() + shift)
    try:
        snapshot = await ce_jobs(director)
        trial.jobs_after_kill = len(snapshot)
        # the restarted director: one reconciliation (a daemon may start with either cycle)
        errors: list[tuple[str, str | None]] = []
        if trial.monitoring_first:
            errors += [(m.queue, m.error) for m in await director.monitor_cycle()]
        errors += [(o.queue, o.error) for o in await director.run_cycle()]
        if asked and not trial.monitoring_first:  # a kill is carried out by monitoring
            errors += [(m.queue, m.error) for m in await director.monitor_cycle()]
        for queue, error in errors:
            if error:
                trial.violations.append(f"restart cycle of {queue}: {error}")
        jobs = await ce_jobs(director)
        pilots = await site_pilots(director, site)
        trial.pilots = len(pilots)
        verify: Any = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        secrets = await secrets_by_stamp(server_url, admin_token, verify)
        trial.violations += check(snapshot, jobs, pilots, secrets, time.time())
        if asked:
            ids = {r.request_id for r in asked}
            now = [
                r
                for a in asked
                for r in await operator.list_requests("kill", pilot_stamp=a.pilot_stamp)
                if r.request_id in ids
            ]
            if len(now) != len(asked):
                trial.violations.append(f"{len(asked) - len(now)} kill requests lost")
            still_open = [
                r for r in await operator.list_requests("kill", state="open") if r.site == site
            ]
            fired = trial.killed_at.startswith("after-kill:")
            killed = {r.pilot_stamp for r in asked} if fired else set()
            trial.violations += check_kills(now, still_open, pilots, killed)
    finally:
        await director.close()
        if director.client is not None:
            await director.client.aclose()
    return trial


async def run_crash_trials(
    folder: Path,
    *,
    trials: int,
    server_url: str,
    director_token: str,
    admin_token: str,
    operator_token: str,
    ca_file: Path | None = None,
    seed: int = 0,
) -> CrashReport:
    """`trials` kills, the points taken in turn, all on one site whose state carries over;
    `operator_token` (the Operator property) asks for the kills of the `after-kill` trials."""
    folder.mkdir(parents=True, exist_ok=True)
    config = crash_config(folder, server_url=server_url, ca_file=ca_file, token=director_token)
    site = next(iter(load_config(config).sites))
    report = CrashReport()
    killer = Killer(folder)
    operator = make_client(
        server_url,
        token_file=None,
        token=SecretStr(operator_token),
        ca_bundle=ca_file,
        timeout=30.0,
    )
    try:
        for i in range(trials):
            point = POINTS[i % len(POINTS)]
            report.trials.append(
                await run_trial(
                    i,
                    point,
                    seed * 100_000 + i,
                    killer=killer,
                    config=config,
                    site=site,
                    server_url=server_url,
                    admin_token=admin_token,
                    ca_file=ca_file,
                    operator=operator,
                )
            )
    finally:
        await operator.aclose()
        killer.close()
        await kill_leftovers(config)
    return report


async def kill_leftovers(config: Path) -> None:
    """End whatever pilot processes the trials left on the local CE."""
    settings = load_config(config)
    director = Director(settings, client=None)
    try:
        for ref in director.queues:
            ce = director.ce_for(ref)
            jobs = await ce.list_jobs(director.spec_for(ref))
            await ce.kill([j.reference for j in jobs])
    finally:
        await director.close()
