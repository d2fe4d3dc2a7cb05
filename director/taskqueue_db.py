"""Reading DIRAC's TaskQueueDB: every task queue with waiting jobs, in three statements.

The tables mirror `diracx.db.sql.task_queue.schema` of diracx-db 0.7.0 column for column
(names, types, keys, indexes), so the tests build the real schema from them; the director only
reads (a read-only account is enough), and only columns that DIRAC's own TaskQueueDB has too.
diracx-db is not a dependency: it would bring DiracX's server stack to every director host for
eight table definitions.

One cycle reads, in one read-only transaction (one consistent snapshot on MySQL/MariaDB):

1. the task queues of the director's VOs (tq_TaskQueues);
2. the job count of every task queue (tq_Jobs, grouped; those without jobs want no pilot,
   as DIRAC's `retrieveTaskQueues`, an inner join, leaves them out too);
3. the values of the six tq_TQTo* tables, in one UNION ALL.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from director.taskqueues import TaskQueue

metadata = MetaData()

task_queues = Table(
    "tq_TaskQueues",
    metadata,
    Column("TQId", Integer, primary_key=True),
    Column("Owner", String(255), nullable=False),
    Column("OwnerGroup", String(32), nullable=False),
    Column("VO", String(32), nullable=False),
    Column("CPUTime", BigInteger, nullable=False),
    Column("Priority", Double, nullable=False),
    Column("Enabled", Boolean, nullable=False, default=0),
    Index("TQOwner", "Owner", "OwnerGroup", "CPUTime"),
)

jobs = Table(
    "tq_Jobs",
    metadata,
    Column(
        "TQId",
        Integer,
        ForeignKey("tq_TaskQueues.TQId", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("JobId", Integer, primary_key=True),
    Column("Priority", Integer, nullable=False),
    Column("RealPriority", Double, nullable=False),
    Index("TaskIndex", "TQId"),
)


def _values_table(name: str, index_prefix: str, value_index: str) -> Table:
    return Table(
        f"tq_TQTo{name}",
        metadata,
        Column(
            "TQId",
            Integer,
            ForeignKey("tq_TaskQueues.TQId", ondelete="CASCADE"),
            primary_key=True,
        ),
        Column("Value", String(64), primary_key=True),
        Index(f"{index_prefix}TaskIndex", "TQId"),
        Index(value_index, "Value"),
    )


VALUE_TABLES: dict[str, Table] = {
    "sites": _values_table("Sites", "Sites", "SitesIndex"),
    "grid_ces": _values_table("GridCEs", "GridCEs", "GridCEsValueIndex"),
    "banned_sites": _values_table("BannedSites", "BannedSites", "BannedSitesValueIndex"),
    "platforms": _values_table("Platforms", "Platforms", "PlatformsValueIndex"),
    "job_types": _values_table("JobTypes", "JobTypes", "JobTypesValueIndex"),
    "tags": _values_table("Tags", "Tags", "TagsValueIndex"),
}
"""TaskQueue field -> its tq_TQTo* table."""


async def read_task_queues(conn: AsyncConnection, vos: Sequence[str]) -> list[TaskQueue]:
    """Every task queue of these VOs that holds waiting jobs, with its job count and values."""
    if conn.dialect.name in ("mysql", "mariadb"):
        # applies to the transaction the first SELECT opens: one snapshot, no writes
        await conn.exec_driver_sql("SET TRANSACTION READ ONLY")
    t = task_queues
    heads = {
        int(r[0]): (str(r[1]), str(r[2]), str(r[3]), int(r[4]))
        for r in await conn.execute(
            select(t.c.TQId, t.c.Owner, t.c.OwnerGroup, t.c.VO, t.c.CPUTime).where(
                t.c.VO.in_(list(vos))
            )
        )
    }
    counts: dict[int, int] = {}
    values: dict[int, dict[str, set[str]]] = {}
    if heads:
        # no join with tq_TaskQueues in these two: it costs MariaDB more than the rows of the
        # other VOs cost here
        for tq_id, count in await conn.execute(
            select(jobs.c.TQId, func.count()).group_by(jobs.c.TQId)
        ):
            if tq_id in heads:
                counts[tq_id] = int(count)
        parts = [
            select(literal(name).label("field"), table.c.TQId, table.c.Value)
            for name, table in VALUE_TABLES.items()
        ]
        for name, tq_id, value in await conn.execute(union_all(*parts)):
            if tq_id in counts and value and value.strip():
                values.setdefault(tq_id, {}).setdefault(name, set()).add(value)
    await conn.rollback()  # nothing to keep: ends the read-only transaction
    empty: dict[str, set[str]] = {}
    result = []
    for tq_id, count in counts.items():
        owner, group, vo, cpu_time = heads[tq_id]
        v = values.get(tq_id, empty)
        result.append(
            TaskQueue(
                tq_id=tq_id,
                owner=owner,
                owner_group=group,
                vo=vo,
                cpu_time=cpu_time,
                jobs=count,
                sites=frozenset(v.get("sites", ())),
                banned_sites=frozenset(v.get("banned_sites", ())),
                grid_ces=frozenset(v.get("grid_ces", ())),
                platforms=frozenset(v.get("platforms", ())),
                job_types=frozenset(v.get("job_types", ())),
                tags=frozenset(v.get("tags", ())),
            )
        )
    return result
