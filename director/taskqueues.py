"""Which of DIRAC's task queues a director queue can serve: TaskQueueDB's matching, in memory.

DIRAC's SiteDirector describes each queue to the Matcher (`getMatchingTaskQueues`), which runs
one SQL statement per queue against the TaskQueueDB. Here the task queues are read once per
cycle (`director.taskqueue_db`) and matched against every queue in memory, with the same rules
(`matches()` states them one by one; docs/demand.md explains them):

    VO            the task queue's VO is the queue's VO
    owner group   when the queue names one (`owner_group`), the task queue's OwnerGroup is it
    CPU time      the task queue's CPUTime <= the queue's (`cpu_time`, else `max_runtime_s`);
                  a queue with neither matches nothing (the SiteDirector skips it)
    site          the task queue names no site, or names the queue's site
    banned site   the queue's site is not among the task queue's banned sites
    CE            the task queue names no CE (GridCE), or names the queue's CE
    platform      the queue has no platform (or "any"), or the task queue names none, or they
                  share one: the queue's platform plus those `platforms` maps it to
    job type      the queue lists no job types, or the task queue names none, or they share one
    tags          every tag of the task queue is a tag of the queue (unless the queue has the
                  tag "any"); the queue's tags include those its size implies: "MultiProcessor"
                  and "2Processors" .. "<n>Processors" for n processors, "2GB" .. "<m>GB" for
                  memory_mb // 1000 = m (both up to 1024), as DIRAC's Matcher adds them
    required tags every required tag of the queue is a tag of the task queue; a required tag
                  the queue does not have is a mistake DIRAC answers with an error: here the
                  queue matches nothing and `problem()` says why

`TaskQueueIndex` answers the same question for thousands of task queues and queues: each
condition is a bit set over the task queues (a Python int), so matching one queue is a few
dozen integer operations whatever the number of task queues, and its waiting jobs are summed
from bit planes of the job counts with `int.bit_count()`. `matches()` is the reference the
index is tested against.
"""

from __future__ import annotations

import bisect
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from director.config import QueueRef

_PUNCTUATION = str.maketrans("", "", string.punctuation)
SIZE_TAGS_MAX = 1024
"""DIRAC's Matcher adds "<n>Processors" and "<n>GB" tags only up to this n."""


def is_any(value: str) -> bool:
    """DIRAC's wildcard: "any", whatever its case and punctuation ("ANY", "Any.")."""
    return value.lower().translate(_PUNCTUATION) == "any"


@dataclass(frozen=True, slots=True)
class TaskQueue:
    """One task queue with waiting jobs: a row of tq_TaskQueues, its job count from tq_Jobs
    and its values from the tq_TQTo* tables (empty: no constraint of that kind)."""

    tq_id: int
    owner: str
    owner_group: str
    vo: str
    cpu_time: int
    jobs: int
    sites: frozenset[str] = frozenset()
    banned_sites: frozenset[str] = frozenset()
    grid_ces: frozenset[str] = frozenset()
    platforms: frozenset[str] = frozenset()
    job_types: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Resource:
    """A director queue as the Matcher sees it. None for platforms, job types or owner groups
    means any; `cpu_time` None means the queue states no limit and matches nothing."""

    vo: str
    site: str
    grid_ce: str
    cpu_time: int | None
    tags: frozenset[str] = frozenset()
    required_tags: frozenset[str] = frozenset()
    platforms: frozenset[str] | None = None
    job_types: frozenset[str] | None = None
    owner_groups: frozenset[str] | None = None

    @property
    def any_tag(self) -> bool:
        return any(is_any(t) for t in self.tags)


def size_tags(processors: int, memory_mb: int | None) -> set[str]:
    """The tags DIRAC's Matcher derives from NumberOfProcessors and MaxRAM."""
    tags: set[str] = set()
    if 1 < processors <= SIZE_TAGS_MAX:
        tags.update(f"{n}Processors" for n in range(2, processors + 1))
    if processors > 1:
        tags.add("MultiProcessor")
    gigabytes = (memory_mb or 0) // 1000
    if 0 < gigabytes <= SIZE_TAGS_MAX:
        tags.update(f"{n}GB" for n in range(2, gigabytes + 1))
    return tags


def resource_for(ref: QueueRef, platform_map: dict[str, list[str]] | None = None) -> Resource:
    """The queue's match description from its configuration: the site and CE names as the
    TaskQueueDB knows them (DIRAC site name, CE host name), its tags and the tags its size
    implies, its platform and the platforms `platform_map` says it runs too."""
    q = ref.config
    platforms: frozenset[str] | None = None
    if q.platform is not None and not is_any(q.platform):
        platforms = frozenset([q.platform, *(platform_map or {}).get(q.platform, [])])
    job_types = (
        frozenset(q.job_types) if q.job_types and not any(map(is_any, q.job_types)) else None
    )
    required = frozenset(t for t in q.required_tags if not is_any(t))
    return Resource(
        vo=ref.vo,
        site=ref.site,
        grid_ce=ref.ce,
        cpu_time=q.cpu_time if q.cpu_time is not None else q.max_runtime_s,
        tags=frozenset(q.tags) | size_tags(q.processors, q.memory_mb),
        required_tags=required,
        platforms=platforms,
        job_types=job_types,
        owner_groups=frozenset([q.owner_group]) if q.owner_group else None,
    )


def problem(resource: Resource) -> str | None:
    """Why the queue can match no task queue at all, or None."""
    if resource.cpu_time is None:
        return "no cpu_time or max_runtime_s: DIRAC matches no job to a queue without CPUTime"
    missing = resource.required_tags - resource.tags
    if missing:
        return f"required_tags {sorted(missing)} are not among the queue's tags"
    return None


def matches(tq: TaskQueue, r: Resource) -> bool:
    """The rules of the module docstring, one line each: can a pilot of queue `r` run a job
    of task queue `tq`?"""
    if problem(r) is not None or r.cpu_time is None:
        return False
    return (
        tq.vo == r.vo
        and (r.owner_groups is None or tq.owner_group in r.owner_groups)
        and tq.cpu_time <= r.cpu_time
        and (not tq.sites or r.site in tq.sites)
        and r.site not in tq.banned_sites
        and (not tq.grid_ces or r.grid_ce in tq.grid_ces)
        and (r.platforms is None or not tq.platforms or bool(tq.platforms & r.platforms))
        and (r.job_types is None or not tq.job_types or bool(tq.job_types & r.job_types))
        and (r.any_tag or tq.tags <= r.tags)
        and r.required_tags <= tq.tags
    )


def _bits(indices: Iterable[int], nbytes: int) -> int:
    """The bit set with these bits on (built in a bytearray: one int at the end, not one per
    bit)."""
    buf = bytearray(nbytes)
    for i in indices:
        buf[i >> 3] |= 1 << (i & 7)
    return int.from_bytes(buf, "little")


def bit_indices(bits: int) -> list[int]:
    """The positions of the bits that are on, lowest first."""
    text = bin(bits)[:1:-1]  # least significant first, without "0b"
    return [i for i, c in enumerate(text) if c == "1"]


@dataclass
class _Field:
    """One multi-valued condition: which task queues name any value, and which name each."""

    named: int = 0
    by_value: dict[str, int] = field(default_factory=dict)


class TaskQueueIndex:
    """Task queues as bit sets per condition; `match()` gives the bit set of the task queues a
    resource can serve, `jobs()` their waiting jobs. Built once per cycle."""

    def __init__(self, task_queues: Sequence[TaskQueue]) -> None:
        # most waiting jobs first: the lowest bits of a match are its biggest task queues
        self.task_queues = sorted(
            (tq for tq in task_queues if tq.jobs > 0), key=lambda tq: (-tq.jobs, tq.tq_id)
        )
        n = len(self.task_queues)
        nbytes = (n + 7) // 8
        self.all = (1 << n) - 1
        groups: dict[str, dict[str, list[int]]] = {
            name: {}
            for name in (
                "vo",
                "owner_group",
                "sites",
                "banned_sites",
                "grid_ces",
                "platforms",
                "job_types",
                "tags",
            )
        }
        named: dict[str, list[int]] = {
            "sites": [],
            "grid_ces": [],
            "platforms": [],
            "job_types": [],
        }
        cpu: dict[int, list[int]] = {}
        for i, tq in enumerate(self.task_queues):
            groups["vo"].setdefault(tq.vo, []).append(i)
            groups["owner_group"].setdefault(tq.owner_group, []).append(i)
            cpu.setdefault(tq.cpu_time, []).append(i)
            for name in ("sites", "banned_sites", "grid_ces", "platforms", "job_types", "tags"):
                values: frozenset[str] = getattr(tq, name)
                if values and name in named:
                    named[name].append(i)
                for value in values:
                    groups[name].setdefault(value, []).append(i)
        self._vo = {k: _bits(v, nbytes) for k, v in groups["vo"].items()}
        self._owner_group = {k: _bits(v, nbytes) for k, v in groups["owner_group"].items()}
        self._banned_sites = {k: _bits(v, nbytes) for k, v in groups["banned_sites"].items()}
        self._tags = {k: _bits(v, nbytes) for k, v in groups["tags"].items()}
        self._fields = {
            name: _Field(
                named=_bits(named[name], nbytes),
                by_value={k: _bits(v, nbytes) for k, v in groups[name].items()},
            )
            for name in named
        }
        # CPU time: the task queues at or below each distinct value, cumulated in value order
        self._cpu_values = sorted(cpu)
        self._cpu_at_most: list[int] = []
        running = 0
        for cpu_time in self._cpu_values:
            running |= _bits(cpu[cpu_time], nbytes)
            self._cpu_at_most.append(running)
        # job counts as bit planes: plane k holds the task queues whose count has bit k on
        top = max((tq.jobs for tq in self.task_queues), default=0).bit_length()
        self._planes = [
            _bits((i for i, tq in enumerate(self.task_queues) if tq.jobs >> k & 1), nbytes)
            for k in range(top)
        ]
        self._untagged_cache: dict[frozenset[str], int] = {}

    def __len__(self) -> int:
        return len(self.task_queues)

    def _cpu(self, limit: int) -> int:
        position = bisect.bisect_right(self._cpu_values, limit)
        return self._cpu_at_most[position - 1] if position else 0

    def _any_of(self, name: str, values: Iterable[str]) -> int:
        """Task queues that name none of this kind, or name one of `values`."""
        f = self._fields[name]
        bits = self.all & ~f.named
        for value in values:
            bits |= f.by_value.get(value, 0)
        return bits

    def _tags_within(self, tags: frozenset[str]) -> int:
        """Task queues all of whose tags are in `tags` (cached: queues share tag sets)."""
        bits = self._untagged_cache.get(tags)
        if bits is None:
            outside = 0
            for tag, holders in self._tags.items():
                if tag not in tags:
                    outside |= holders
            bits = self.all & ~outside
            self._untagged_cache[tags] = bits
        return bits

    def match(self, r: Resource) -> int:
        """The bit set of the task queues `r` can serve (bit i: `task_queues[i]`)."""
        if r.cpu_time is None or problem(r) is not None:
            return 0
        bits = self._vo.get(r.vo, 0)
        if r.owner_groups is not None and bits:
            groups = 0
            for group in r.owner_groups:
                groups |= self._owner_group.get(group, 0)
            bits &= groups
        if bits:
            bits &= self._cpu(r.cpu_time)
        if bits:
            bits &= self._any_of("sites", (r.site,)) & ~self._banned_sites.get(r.site, 0)
            bits &= self._any_of("grid_ces", (r.grid_ce,))
        if bits and r.platforms is not None:
            bits &= self._any_of("platforms", r.platforms)
        if bits and r.job_types is not None:
            bits &= self._any_of("job_types", r.job_types)
        if bits and not r.any_tag:
            bits &= self._tags_within(r.tags)
        for tag in r.required_tags:
            bits &= self._tags.get(tag, 0)
        return bits

    def jobs(self, bits: int) -> int:
        """The waiting jobs of the task queues in `bits`."""
        return sum((plane & bits).bit_count() << k for k, plane in enumerate(self._planes))

    def members(self, bits: int, limit: int | None = None) -> list[TaskQueue]:
        """The task queues in `bits`, most waiting jobs first; the first `limit` of them cost
        `limit` steps, whatever the size of the match."""
        if limit is None:
            return [self.task_queues[i] for i in bit_indices(bits)]
        found: list[TaskQueue] = []
        while bits and len(found) < limit:
            lowest = bits & -bits
            found.append(self.task_queues[lowest.bit_length() - 1])
            bits ^= lowest
        return found
