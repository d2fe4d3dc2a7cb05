"""Matching director queues to DIRAC task queues, without a database: the rules one by one as
a table (which queue matches which task queue, and why), the queue's match description from
its configuration, and the bit-set index against the one-line-per-rule reference."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from director.config import Settings
from director.taskqueues import (
    Resource,
    TaskQueue,
    TaskQueueIndex,
    bit_indices,
    is_any,
    matches,
    problem,
    resource_for,
    size_tags,
)

MULTI = ("sites", "banned_sites", "grid_ces", "platforms", "job_types", "tags")


def tq(**values: Any) -> TaskQueue:
    """A task queue with one job that every plain queue below matches, but for `values`."""
    base: dict[str, Any] = {
        "tq_id": 1,
        "owner": "alice",
        "owner_group": "lhcb_user",
        "vo": "lhcb",
        "cpu_time": 3600,
        "jobs": 1,
    }
    base.update(values)
    for name in MULTI:
        base[name] = frozenset(base.get(name, ()))
    return TaskQueue(**base)


PLAIN = Resource(vo="lhcb", site="LCG.A.org", grid_ce="ce.a.org", cpu_time=86400)


def q(**values: Any) -> Resource:
    """The plain queue (site LCG.A.org, CE ce.a.org, 1 day of CPU, no tags), but for `values`."""
    for name in ("tags", "required_tags"):
        if name in values:
            values[name] = frozenset(values[name])
    for name in ("platforms", "job_types", "owner_groups"):
        if values.get(name) is not None:
            values[name] = frozenset(values[name])
    return replace(PLAIN, **values)


# rule, task queue, queues by name, the names of the queues that match it
RULES: list[tuple[str, TaskQueue, dict[str, Resource], set[str]]] = [
    ("VO", tq(vo="lhcb"), {"lhcb": q(), "dteam": q(vo="dteam")}, {"lhcb"}),
    (
        "owner group, where a queue is restricted to one",
        tq(owner_group="lhcb_prod"),
        {
            "any group": q(),
            "lhcb_prod only": q(owner_groups=["lhcb_prod"]),
            "lhcb_user only": q(owner_groups=["lhcb_user"]),
        },
        {"any group", "lhcb_prod only"},
    ),
    (
        "CPU time at most the queue's",
        tq(cpu_time=86400),
        {
            "1 day": q(cpu_time=86400),
            "2 days": q(cpu_time=172800),
            "1 hour": q(cpu_time=3600),
            "no limit stated": q(cpu_time=None),
        },
        {"1 day", "2 days"},
    ),
    (
        "no site: any site",
        tq(),
        {"at A": q(), "at B": q(site="LCG.B.org", grid_ce="ce.b.org")},
        {"at A", "at B"},
    ),
    (
        "sites: only those",
        tq(sites=["LCG.A.org", "LCG.C.org"]),
        {"at A": q(), "at B": q(site="LCG.B.org", grid_ce="ce.b.org")},
        {"at A"},
    ),
    (
        "banned sites: any site but those",
        tq(banned_sites=["LCG.A.org"]),
        {"at A": q(), "at B": q(site="LCG.B.org", grid_ce="ce.b.org")},
        {"at B"},
    ),
    (
        "a site both named and banned: banned wins",
        tq(sites=["LCG.A.org"], banned_sites=["LCG.A.org"]),
        {"at A": q()},
        set(),
    ),
    (
        "CE (GridCE): only that CE",
        tq(grid_ces=["ce.a.org"]),
        {"ce.a": q(), "ce.a2": q(grid_ce="ce2.a.org")},
        {"ce.a"},
    ),
    (
        "platform: the queue's, or one it is compatible with",
        tq(platforms=["el9"]),
        {
            "el9": q(platforms=["el9"]),
            "el8": q(platforms=["el8"]),
            "el9 that runs el8": q(platforms=["el9", "el8"]),
            "no platform": q(platforms=None),
        },
        {"el9", "el9 that runs el8", "no platform"},
    ),
    (
        "no platform: any platform",
        tq(),
        {"el8": q(platforms=["el8"]), "no platform": q()},
        {"el8", "no platform"},
    ),
    (
        "job type",
        tq(job_types=["User"]),
        {
            "any type": q(),
            "User": q(job_types=["User"]),
            "MCSimulation": q(job_types=["MCSimulation"]),
        },
        {"any type", "User"},
    ),
    (
        "no tag: every queue",
        tq(),
        {"plain": q(), "GPU": q(tags=["GPU"])},
        {"plain", "GPU"},
    ),
    (
        "tags: only queues that have them all",
        tq(tags=["GPU", "AVX512"]),
        {
            "plain": q(),
            "GPU": q(tags=["GPU"]),
            "GPU AVX512": q(tags=["GPU", "AVX512", "SSD"]),
            "any tag": q(tags=["ANY"]),
        },
        {"GPU AVX512", "any tag"},
    ),
    (
        "NumberOfProcessors 8 and MultiProcessor: queues of 8 processors or more",
        tq(tags=["MultiProcessor", "8Processors"]),
        {
            "1 processor": q(tags=size_tags(1, None)),
            "4 processors": q(tags=size_tags(4, None)),
            "8 processors": q(tags=size_tags(8, None)),
            "16 processors": q(tags=size_tags(16, None)),
        },
        {"8 processors", "16 processors"},
    ),
    (
        "a single-core job runs on a multicore queue",
        tq(),
        {"8 processors": q(tags=size_tags(8, None))},
        {"8 processors"},
    ),
    (
        "WholeNode: only queues tagged WholeNode",
        tq(tags=["WholeNode"]),
        {
            "64 processors": q(tags=size_tags(64, None)),
            "whole node": q(tags={"WholeNode", *size_tags(64, None)}),
        },
        {"whole node"},
    ),
    (
        "GPU: only queues tagged GPU",
        tq(tags=["GPU"]),
        {"plain": q(), "GPU": q(tags=["GPU"])},
        {"GPU"},
    ),
    (
        "memory tags: 4GB needs a queue of 4000 MB or more",
        tq(tags=["4GB"]),
        {
            "2000 MB": q(tags=size_tags(1, 2000)),
            "4000 MB": q(tags=size_tags(1, 4000)),
            "16000 MB": q(tags=size_tags(1, 16000)),
        },
        {"4000 MB", "16000 MB"},
    ),
    (
        "required tags: a GPU queue takes only GPU jobs",
        tq(),
        {
            "GPU": q(tags=["GPU"]),
            "GPU, requires GPU": q(tags=["GPU"], required_tags=["GPU"]),
        },
        {"GPU"},
    ),
    (
        "required tags: the job has them",
        tq(tags=["GPU"]),
        {"GPU, requires GPU": q(tags=["GPU"], required_tags=["GPU"])},
        {"GPU, requires GPU"},
    ),
    (
        "required tags the queue lacks: a mistake, the queue matches nothing",
        tq(tags=["GPU"]),
        {"requires GPU, has none": q(required_tags=["GPU"])},
        set(),
    ),
]


@pytest.mark.parametrize(
    ("rule", "task_queue", "queues", "expected"), RULES, ids=[r[0] for r in RULES]
)
def test_which_queues_match_which_task_queue(
    rule: str, task_queue: TaskQueue, queues: dict[str, Resource], expected: set[str]
) -> None:
    assert {name for name, r in queues.items() if matches(task_queue, r)} == expected
    index = TaskQueueIndex([task_queue])
    assert {name for name, r in queues.items() if index.match(r)} == expected
    for name, r in queues.items():
        assert index.jobs(index.match(r)) == (1 if name in expected else 0)


def test_the_rules_at_once_sum_the_matching_jobs() -> None:
    task_queues = [
        tq(tq_id=1, jobs=5),
        tq(tq_id=2, jobs=7, tags=["GPU"]),
        tq(tq_id=3, jobs=11, sites=["LCG.B.org"]),
        tq(tq_id=4, jobs=13, tags=["MultiProcessor", "8Processors"]),
        tq(tq_id=5, jobs=0),  # no waiting job: not a task queue that wants a pilot
        tq(tq_id=6, jobs=4000, vo="dteam"),
    ]
    index = TaskQueueIndex(task_queues)
    assert len(index) == 5
    plain, gpu8 = q(), q(tags={"GPU", *size_tags(8, None)})
    assert index.jobs(index.match(plain)) == 5
    assert index.jobs(index.match(gpu8)) == 5 + 7 + 13
    assert [t.tq_id for t in index.members(index.match(gpu8))] == [4, 2, 1]
    assert index.jobs(index.match(q(vo="dteam"))) == 4000
    assert index.jobs(index.match(q(vo="gridpp"))) == 0


def test_size_tags_as_dirac_matcher_derives_them() -> None:
    assert size_tags(1, None) == set()
    assert size_tags(3, None) == {"2Processors", "3Processors", "MultiProcessor"}
    assert size_tags(1, 3999) == {"2GB", "3GB"}
    assert "1025Processors" not in size_tags(2048, None)
    assert "MultiProcessor" in size_tags(2048, None)


def test_any_is_dirac_wildcard() -> None:
    assert all(is_any(v) for v in ("any", "ANY", "Any."))
    assert not is_any("anything")


def test_bit_indices() -> None:
    assert bit_indices(0) == []
    assert bit_indices(0b101001) == [0, 3, 5]
    assert bit_indices(1 << 10_000) == [10_000]


def _settings(queue: dict[str, Any]) -> Settings:
    return Settings(
        server={"url": "https://server.example.org", "token": "x"},
        vos=["lhcb"],
        sites={
            "LCG.A.org": {"ces": {"ce.a.org": {"ce": {"kind": "local"}, "queues": {"q": queue}}}}
        },
    )


def test_resource_from_the_queue_configuration() -> None:
    ref = next(
        _settings(
            {
                "processors": 4,
                "memory_mb": 8000,
                "max_runtime_s": 3600,
                "cpu_time": 500_000,
                "tags": ["GPU"],
                "required_tags": ["GPU"],
                "platform": "el9",
                "job_types": ["User", "MCSimulation"],
                "owner_group": "lhcb_gpu",
            }
        ).queues()
    )
    r = resource_for(ref, {"el9": ["el8", "el7"]})
    assert (r.vo, r.site, r.grid_ce, r.cpu_time) == ("lhcb", "LCG.A.org", "ce.a.org", 500_000)
    assert r.tags == {"GPU", "MultiProcessor", "2Processors", "3Processors", "4Processors"} | {
        f"{n}GB" for n in range(2, 9)
    }
    assert r.required_tags == {"GPU"}
    assert r.platforms == frozenset({"el9", "el8", "el7"})
    assert r.job_types == frozenset({"User", "MCSimulation"})
    assert r.owner_groups == frozenset({"lhcb_gpu"})
    assert problem(r) is None


def test_resource_defaults_mean_any() -> None:
    ref = next(_settings({"max_runtime_s": 7200, "platform": "ANY", "job_types": ["any"]}).queues())
    r = resource_for(ref)
    assert r.cpu_time == 7200  # no cpu_time: max_runtime_s
    assert (r.platforms, r.job_types, r.owner_groups) == (None, None, None)
    assert r.tags == frozenset()


def test_a_queue_without_cpu_time_matches_nothing_and_says_why() -> None:
    r = resource_for(next(_settings({}).queues()))
    assert r.cpu_time is None
    assert "cpu_time" in (problem(r) or "")
    assert TaskQueueIndex([tq()]).match(r) == 0


# --- the index agrees with the reference on any task queues and queues -------------------------

names = st.sampled_from
value_sets = {
    "sites": st.frozensets(names(["S1", "S2", "S3"]), max_size=2),
    "banned_sites": st.frozensets(names(["S1", "S2"]), max_size=1),
    "grid_ces": st.frozensets(names(["C1", "C2"]), max_size=1),
    "platforms": st.frozensets(names(["el7", "el8", "el9"]), max_size=2),
    "job_types": st.frozensets(names(["User", "MC"]), max_size=1),
    "tags": st.frozensets(names(["GPU", "MultiProcessor", "4Processors", "WholeNode"]), max_size=2),
}
task_queue_strategy = st.builds(
    TaskQueue,
    tq_id=st.integers(1, 10**6),
    owner=st.just("alice"),
    owner_group=names(["g1", "g2"]),
    vo=names(["lhcb", "dteam"]),
    cpu_time=names([360, 3600, 86400]),
    jobs=st.integers(0, 5000),
    **value_sets,
)


def optional_set(values: list[str]) -> st.SearchStrategy[frozenset[str] | None]:
    return st.none() | st.frozensets(names(values), min_size=1, max_size=2)


resource_strategy = st.builds(
    Resource,
    vo=names(["lhcb", "dteam"]),
    site=names(["S1", "S2", "S3"]),
    grid_ce=names(["C1", "C2"]),
    cpu_time=st.none() | names([100, 3600, 86400, 10**6]),
    tags=st.frozensets(names(["GPU", "MultiProcessor", "4Processors", "WholeNode", "any"])),
    required_tags=st.frozensets(names(["GPU", "WholeNode"]), max_size=1),
    platforms=optional_set(["el7", "el8", "el9"]),
    job_types=optional_set(["User", "MC"]),
    owner_groups=optional_set(["g1", "g2"]),
)


@settings(max_examples=300, deadline=None)
@given(
    task_queues=st.lists(task_queue_strategy, max_size=40),
    resources=st.lists(resource_strategy, min_size=1, max_size=5),
)
def test_index_agrees_with_the_rules(
    task_queues: list[TaskQueue], resources: list[Resource]
) -> None:
    index = TaskQueueIndex(task_queues)
    for r in resources:
        expected = [t for t in index.task_queues if matches(t, r)]
        bits = index.match(r)
        assert [index.task_queues[i] for i in bit_indices(bits)] == expected
        assert index.jobs(bits) == sum(t.jobs for t in expected)
