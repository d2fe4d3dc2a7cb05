"""FakeSchedd: a stand-in for `htcondor2.Schedd` where the real pool cannot show a behaviour.

The real pool (tests/infra/htcondor-setup.sh) covers the normal life of jobs. What it cannot
produce on demand: a CE's job router states, a refused credential, a rejected submission, a
schedd that stops answering, a permission-denied removal. This fake mirrors exactly the methods
`director.ce.htcondor.HTCondorCE` calls (submit, spool, query, history, act, edit, retrieve) with
their real signatures, evaluates constraints with the real ClassAd library, and raises the
bindings' own `HTCondorException` with the messages HTCondor gives.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import classad2
import htcondor2

JobKey = tuple[int, int]
_JOB_ID = re.compile(r"^(\d+)(?:\.(\d+))?$")
_MACRO = re.compile(r"\$\((\w+)\)")


@dataclass
class FakeSubmitResult:
    """Mirrors `htcondor2.SubmitResult`'s accessors."""

    _cluster: int
    _first_proc: int
    _num_procs: int

    def cluster(self) -> int:
        return self._cluster

    def first_proc(self) -> int:
        return self._first_proc

    def num_procs(self) -> int:
        return self._num_procs


@dataclass
class FakeSchedd:
    """An in-memory schedd: a queue, a history, and switches to make it misbehave."""

    queue: dict[JobKey, dict[str, Any]] = field(default_factory=dict)
    history_ads: list[dict[str, Any]] = field(default_factory=list)
    next_cluster: int = 100
    fail: dict[str, Exception] = field(default_factory=dict)
    """method name -> exception raised by every call of that method."""
    permission_denied: set[JobKey] = field(default_factory=set)
    """jobs whose removal the schedd refuses."""
    release_refused: set[JobKey] = field(default_factory=set)
    """held jobs the schedd does not release."""
    hang: threading.Event | None = None
    """when set to an Event, query() blocks until the Event is set (a schedd that went silent)."""
    calls: list[str] = field(default_factory=list)
    wrapper_modes: dict[str, int] = field(default_factory=dict)
    spooled: dict[JobKey, str] = field(default_factory=dict)
    outputs: dict[JobKey, tuple[str, str]] = field(default_factory=dict)
    descriptions: list[dict[str, str]] = field(default_factory=list)

    # ------------------------------------------------------------------ helpers for tests

    def set_job(self, cluster: int, proc: int, **attributes: Any) -> None:
        """Change (or create) a queued job, as the CE's job router or batch system would."""
        ad = self.queue.setdefault((cluster, proc), {"ClusterId": cluster, "ProcId": proc})
        ad.update(attributes)

    def to_history(self, cluster: int, proc: int, **attributes: Any) -> None:
        ad = self.queue.pop((cluster, proc), {"ClusterId": cluster, "ProcId": proc})
        ad.update(attributes)
        self.history_ads.insert(0, ad)

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if method in self.fail:
            raise self.fail[method]

    def _matching(self, ads: Iterator[dict[str, Any]], constraint: Any) -> list[dict[str, Any]]:
        if constraint is None:
            return list(ads)
        expression = classad2.ExprTree(str(constraint))
        return [ad for ad in ads if expression.eval(classad2.ClassAd(ad)) is True]

    def _select(self, job_spec: Any) -> list[JobKey]:
        """Job ids ("12.3", "12", [...]) or a constraint, as the bindings accept them."""
        specs = job_spec if isinstance(job_spec, list) else [job_spec]
        keys: list[JobKey] = []
        for spec in specs:
            match = _JOB_ID.match(str(spec))
            if match and match.group(2) is not None:
                keys.append((int(match.group(1)), int(match.group(2))))
            elif match:
                keys.extend(k for k in self.queue if k[0] == int(match.group(1)))
            else:
                keys.extend(
                    (ad["ClusterId"], ad["ProcId"])
                    for ad in self._matching(iter(self.queue.values()), spec)
                )
        return keys

    @staticmethod
    def _project(ad: dict[str, Any], projection: list[str]) -> classad2.ClassAd:
        if not projection:
            return classad2.ClassAd(ad)
        return classad2.ClassAd({k: ad[k] for k in projection if k in ad})

    # ------------------------------------------------------------------ htcondor2.Schedd

    def submit(
        self,
        description: htcondor2.Submit,
        count: int = 0,
        spool: bool = False,
        itemdata: Iterator[dict[str, str]] | None = None,
        queue: str | None = None,
    ) -> FakeSubmitResult:
        self._enter("submit")
        commands = {str(k): str(v) for k, v in description.items()}
        self.descriptions.append(commands)
        items = list(itemdata) if itemdata is not None else [{}] * max(count, 1)
        cluster = self.next_cluster
        self.next_cluster += 1
        for proc, item in enumerate(items):
            wrapper = item.get("Wrapper")
            if wrapper is not None:
                self.wrapper_modes[wrapper] = stat.S_IMODE(os.stat(wrapper).st_mode)

            def expand(value: str, item: dict[str, str] = item, proc: int = proc) -> str:
                return _MACRO.sub(
                    lambda m: {**item, "Process": str(proc), "Cluster": str(cluster)}.get(
                        m.group(1), m.group(0)
                    ),
                    value,
                )

            ad: dict[str, Any] = {
                "ClusterId": cluster,
                "ProcId": proc,
                "JobStatus": 5 if spool else 1,
                "Cmd": expand(commands.get("executable", "")),
                "Iwd": f"/var/spool/condor/{cluster}/{proc}",
                "SUBMIT_Iwd": commands.get("initialdir", ""),
                "Out": expand(commands.get("output", "/dev/null")),
                "Err": expand(commands.get("error", "/dev/null")),
                "Environment": expand(commands.get("environment", "")).strip('"'),
            }
            if spool:
                ad.update(HoldReasonCode=16, HoldReason="Spooling input data files")
            for key, value in commands.items():
                if key.startswith(("+", "MY.")):  # Submit spells "+Attr" as "MY.Attr"
                    ad[key.removeprefix("+").removeprefix("MY.")] = classad2.ExprTree(
                        expand(value)
                    ).eval()
            self.queue[(cluster, proc)] = ad
        return FakeSubmitResult(cluster, 0, len(items))

    def spool(self, result: FakeSubmitResult) -> None:
        self._enter("spool")
        for proc in range(result.num_procs()):
            ad = self.queue[(result.cluster(), proc)]
            self.spooled[(result.cluster(), proc)] = Path(ad["Cmd"]).read_text(encoding="utf-8")
            ad.update(JobStatus=1)
            ad.pop("HoldReasonCode", None)
            ad.pop("HoldReason", None)

    def query(
        self,
        constraint: str = "True",
        projection: list[str] | None = None,
        callback: Any = None,
        limit: int = -1,
        opts: Any = None,
    ) -> list[classad2.ClassAd]:
        self._enter("query")
        if self.hang is not None:
            self.hang.wait()
        return [
            self._project(ad, projection or [])
            for ad in self._matching(iter(self.queue.values()), constraint)
        ]

    def history(
        self,
        constraint: str | None = None,
        projection: list[str] | None = None,
        match: int = -1,
        since: Any = None,
    ) -> list[classad2.ClassAd]:
        self._enter("history")
        found = self._matching(iter(self.history_ads), constraint)
        if match >= 0:
            found = found[:match]
        return [self._project(ad, projection or []) for ad in found]

    def act(
        self, action: htcondor2.JobAction, job_spec: Any, reason: str | None = None
    ) -> classad2.ClassAd:
        self._enter("act")
        if action == htcondor2.JobAction.Release:
            return self._release(job_spec)
        assert action == htcondor2.JobAction.Remove, f"the fake removes or releases, not {action}"
        totals = dict.fromkeys(
            (
                "TotalSuccess",
                "TotalNotFound",
                "TotalBadStatus",
                "TotalPermissionDenied",
                "TotalError",
                "TotalAlreadyDone",
            ),
            0,
        )
        for key in self._select(job_spec):
            if key not in self.queue:
                totals["TotalNotFound"] += 1
            elif key in self.permission_denied:
                totals["TotalPermissionDenied"] += 1
            elif self.queue[key].get("JobStatus") == 3:
                totals["TotalAlreadyDone"] += 1
            else:
                totals["TotalSuccess"] += 1
                self.to_history(*key, JobStatus=3, RemoveReason=reason or "")
        return classad2.ClassAd(totals)

    def _release(self, job_spec: Any) -> classad2.ClassAd:
        """condor_release: a held job goes back to Idle; its NumSystemHolds stays."""
        totals = {"TotalSuccess": 0, "TotalNotFound": 0, "TotalBadStatus": 0}
        for key in self._select(job_spec):
            ad = self.queue.get(key)
            if ad is None:
                totals["TotalNotFound"] += 1
            elif ad.get("JobStatus") != 5 or key in self.release_refused:
                totals["TotalBadStatus"] += 1
            else:
                totals["TotalSuccess"] += 1
                ad["JobStatus"] = 1
                ad["LastHoldReason"] = ad.pop("HoldReason", "")
                ad["LastHoldReasonCode"] = ad.pop("HoldReasonCode", 0)
                ad.pop("HoldReasonSubCode", None)
        return classad2.ClassAd(totals)

    def edit(self, job_spec: Any, attr: str, value: str, flags: Any = None) -> int:
        self._enter("edit")
        keys = [k for k in self._select(job_spec) if k in self.queue]
        for key in keys:
            if attr == "LeaveJobInQueue" and value == "false":
                if self.queue[key].get("JobStatus") == 4:
                    self.to_history(*key)
            else:
                self.queue[key][attr] = classad2.ExprTree(value).eval()
        return len(keys)

    def retrieve(self, job_spec: Any) -> None:
        self._enter("retrieve")
        for key in self._select(job_spec):
            ad = self.queue.get(key)
            if ad is None:
                continue
            stdout, stderr = self.outputs.get(key, ("", ""))
            folder = Path(ad["SUBMIT_Iwd"])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / ad["Out"]).write_text(stdout, encoding="utf-8")
            (folder / ad["Err"]).write_text(stderr, encoding="utf-8")
