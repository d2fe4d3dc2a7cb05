"""The `taskqueues` demand source on MariaDB with the TaskQueueDB schema of diracx-db 0.7.0:
task queues that exercise every matching rule, read once per cycle through `refresh()`; a
database that is down; and the dry run's plan naming the matched task queues."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from director.config import Settings, TaskQueueDemand, load_config
from director.demand import TaskQueueJobDemand, make_demand_source
from director.errors import ConfigError, DemandUnavailable
from director.loop import Director
from director.taskqueue_db import VALUE_TABLES, jobs, metadata, task_queues
from tests.conftest import missing
from tests.director.conftest import queue_block, write_config

TQ_DB = f"sdtest_tq_{os.getpid()}"
SITE, OTHER = "LCG.A.org", "LCG.B.org"
CE = "ce.a.org"

# TQId: (VO, OwnerGroup, CPUTime, jobs, {field: values}); the comment says who may run it
TASK_QUEUES: dict[int, tuple[str, str, int, int, dict[str, list[str]]]] = {
    1: ("lhcb", "lhcb_user", 3600, 5, {}),  # every lhcb queue
    2: ("dteam", "dteam_user", 3600, 50, {}),  # no lhcb queue (VO)
    3: ("lhcb", "lhcb_user", 7 * 86400, 40, {}),  # no queue: a week of CPU
    4: ("lhcb", "lhcb_user", 3600, 7, {"sites": [OTHER]}),  # queues at B only
    5: ("lhcb", "lhcb_user", 3600, 11, {"banned_sites": [SITE]}),  # anywhere but A
    6: ("lhcb", "lhcb_user", 3600, 3, {"grid_ces": ["ce2.a.org"]}),  # CE ce2.a.org only
    7: ("lhcb", "lhcb_user", 3600, 13, {"platforms": ["el9"]}),  # el9 or el9-compatible
    8: ("lhcb", "lhcb_mc", 3600, 17, {"job_types": ["MCSimulation"]}),  # MC, lhcb_mc allowed
    9: ("lhcb", "lhcb_user", 3600, 19, {"tags": ["GPU"]}),  # GPU queues
    10: ("lhcb", "lhcb_user", 3600, 23, {"tags": ["MultiProcessor", "8Processors"]}),  # 8 cores+
    11: ("lhcb", "lhcb_user", 3600, 29, {"tags": ["WholeNode"]}),  # whole-node queues
    12: ("lhcb", "lhcb_user", 3600, 0, {}),  # no waiting job: wants no pilot
}

QUEUES: dict[str, dict[str, Any]] = {
    "plain": {"cpu_time": 86400},
    "gpu": {"cpu_time": 86400, "tags": ["GPU"], "required_tags": ["GPU"]},
    "multicore": {"cpu_time": 86400, "processors": 8},
    "wholenode": {"cpu_time": 86400, "processors": 64, "tags": ["WholeNode"]},
    "el8": {"cpu_time": 86400, "platform": "el8"},
    "el9": {"cpu_time": 86400, "platform": "el9"},
    "el10": {"cpu_time": 86400, "platform": "el10"},  # runs el9 (the `platforms` map)
    "mc": {"cpu_time": 86400, "job_types": ["MCSimulation"], "owner_group": "lhcb_mc"},
    "user_only": {"cpu_time": 86400, "owner_group": "lhcb_user"},
    "no_cpu_limit": {},
}
# waiting jobs each queue can run, by task queue
EXPECTED: dict[str, set[int]] = {
    "plain": {1, 7, 8},
    "gpu": {9},  # requires GPU: nothing else
    "multicore": {1, 7, 8, 10},
    "wholenode": {1, 7, 8, 10, 11},
    "el8": {1, 8},
    "el9": {1, 7, 8},
    "el10": {1, 7, 8},
    "mc": {8},
    "user_only": {1, 7},
    "no_cpu_limit": set(),  # DIRAC matches nothing to a queue without CPUTime
}


@pytest.fixture(scope="module")
async def tq_url() -> AsyncIterator[str]:
    """A throw-away database on MariaDB with the TaskQueueDB tables, filled with TASK_QUEUES."""
    try:
        import asyncmy

        conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="")
    except (ImportError, OSError) as exc:
        missing(f"MariaDB on 127.0.0.1:3306: {exc}")
    async with conn.cursor() as cur:
        await cur.execute(f"DROP DATABASE IF EXISTS {TQ_DB}")
        await cur.execute(f"CREATE DATABASE {TQ_DB} CHARACTER SET utf8mb4")
    url = f"mysql+asyncmy://root@127.0.0.1:3306/{TQ_DB}?charset=utf8mb4"
    engine = create_async_engine(url)
    async with engine.begin() as db:
        await db.run_sync(metadata.create_all)
        job_id = 0
        for tq_id, (vo, group, cpu, count, values) in TASK_QUEUES.items():
            await db.execute(
                insert(task_queues).values(
                    TQId=tq_id,
                    Owner="alice",
                    OwnerGroup=group,
                    VO=vo,
                    CPUTime=cpu,
                    Priority=1.0,
                    Enabled=True,
                )
            )
            for _ in range(count):
                job_id += 1
                await db.execute(
                    insert(jobs).values(TQId=tq_id, JobId=job_id, Priority=1, RealPriority=1.0)
                )
            for name, names in values.items():
                for value in names:
                    await db.execute(insert(VALUE_TABLES[name]).values(TQId=tq_id, Value=value))
    await engine.dispose()
    yield url
    async with conn.cursor() as cur:
        await cur.execute(f"DROP DATABASE IF EXISTS {TQ_DB}")
    conn.close()


def _config(tmp_path: Path, url: str, **queue_overrides: Any) -> tuple[Path, str]:
    return write_config(
        tmp_path,
        server_url="https://127.0.0.1:9",
        ca_file=None,
        token=None,
        test_wrapper=False,
        site=SITE,
        ce_name=CE,
        slots=20,
        director={"demand": {"source": "taskqueues", "url": url, "platforms": {"el10": ["el9"]}}},
        queues={
            name: queue_block(
                max_total_pilots=20, max_waiting_pilots=20, pilots_per_cycle=20, **values
            )
            for name, values in QUEUES.items()
        },
    )


def _settings(tmp_path: Path, url: str) -> Settings:
    path, _ = _config(tmp_path, url)
    return load_config(path, require_token=False)


async def test_each_queue_wants_the_jobs_it_can_run_minus_its_waiting_pilots(
    tq_url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, tq_url)
    source = make_demand_source(settings)
    assert isinstance(source, TaskQueueJobDemand)
    try:
        await source.refresh()
        for ref in settings.queues():
            jobs_expected = sum(TASK_QUEUES[i][3] for i in EXPECTED[ref.queue])
            assert source.demand(ref, 0) == jobs_expected, ref.queue
            assert source.demand(ref, 2) == max(0, jobs_expected - 2), ref.queue
        plain = next(r for r in settings.queues() if r.queue == "plain")
        source.demand(plain, 4)
        assert source.explain(plain) == "35 waiting jobs in 3 task queues - 4 waiting pilots"
        assert source.explain(plain, detail=True).endswith("(TQ 8: 17, TQ 7: 13, TQ 1: 5)")
        unlimited = next(r for r in settings.queues() if r.queue == "no_cpu_limit")
        assert "no cpu_time or max_runtime_s" in source.explain(unlimited)
    finally:
        await source.aclose()


async def test_the_queue_key_at_another_site_sees_that_site(tq_url: str, tmp_path: Path) -> None:
    path, _ = write_config(
        tmp_path,
        server_url="https://127.0.0.1:9",
        ca_file=None,
        token=None,
        test_wrapper=False,
        site=OTHER,
        ce_name="ce.b.org",
        director={"demand": {"source": "taskqueues", "url": tq_url}},
        queues={"plain": queue_block(cpu_time=86400)},
    )
    settings = load_config(path, require_token=False)
    source = make_demand_source(settings)
    try:
        await source.refresh()
        ref = next(settings.queues())
        assert source.demand(ref, 0) == 5 + 7 + 11 + 13 + 17  # TQs 1, 4, 5, 7, 8
    finally:
        await source.aclose()


async def test_a_database_that_is_down_wants_nothing_and_says_why(tmp_path: Path) -> None:
    url = "mysql+asyncmy://reader:s3cret-password@127.0.0.1:1/TaskQueueDB"
    settings = _settings(tmp_path, url)
    source = make_demand_source(settings)
    try:
        with pytest.raises(DemandUnavailable) as caught:
            await source.refresh()
        message = str(caught.value)
        assert "task queue database" in message
        assert "127.0.0.1:1" in message
        assert "s3cret-password" not in message
        ref = next(settings.queues())
        assert source.demand(ref, 0) == 0  # not None: never fall back to filling the slots
        assert source.explain(ref).startswith("demand unknown, none submitted: task queue")
    finally:
        await source.aclose()


def test_a_missing_driver_is_a_configuration_error() -> None:
    config = TaskQueueDemand.model_validate(
        {"source": "taskqueues", "url": "nosuchdb+nodriver://h/db"}
    )
    with pytest.raises(ConfigError, match=r"director\.demand\.url"):
        TaskQueueJobDemand(config, ["lhcb"])


async def test_dry_run_names_the_matched_task_queues_and_the_demand(
    tq_url: str, tmp_path: Path
) -> None:
    path, _ = _config(tmp_path, tq_url)
    director = Director(load_config(path, require_token=False), client=None)
    try:
        outcomes = await director.run_cycle(dry_run=True, output=tmp_path / "out")
    finally:
        await director.close()
    by_queue = {o.queue.rsplit("/", 1)[1]: o for o in outcomes}
    gpu = by_queue["gpu"]
    assert (gpu.demand, gpu.n) == (19, 19)
    assert "19 waiting jobs in 1 task queue - 0 waiting pilots (TQ 9: 19)" in gpu.why
    assert by_queue["wholenode"].demand == 5 + 13 + 17 + 23 + 29
    assert "(TQ 11: 29, TQ 10: 23, TQ 8: 17, TQ 7: 13, TQ 1: 5)" in by_queue["wholenode"].why
    assert by_queue["no_cpu_limit"].n == 0
    assert "matches no task queue" in by_queue["no_cpu_limit"].why
    assert len(list((tmp_path / "out").rglob("*.sh"))) == sum(o.n for o in outcomes)


def test_the_tables_mirror_diracx_db() -> None:
    """Where diracx-db is installed, its TaskQueueDB schema and ours give the same DDL."""
    schema = pytest.importorskip("diracx.db.sql.task_queue.schema")
    from sqlalchemy.dialects import mysql
    from sqlalchemy.schema import CreateIndex, CreateTable

    def ddl(md: Any) -> dict[str, tuple[str, list[str]]]:
        dialect = mysql.dialect()
        return {
            t.name: (
                str(CreateTable(t).compile(dialect=dialect)),
                sorted(str(CreateIndex(i).compile(dialect=dialect)) for i in t.indexes),
            )
            for t in md.sorted_tables
        }

    assert ddl(metadata) == ddl(schema.TaskQueueDBBase.metadata)
