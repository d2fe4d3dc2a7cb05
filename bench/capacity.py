"""The capacity model of one large VO: measured per-operation costs times the VO's rates.

Run: `.venv/bin/python bench/capacity.py bench/results/workers-postgres-<date>.json
[--log-lines-json logs250.json] [--lines-per-batch 20] [--retention-days 7]`

A model, not a claim (docs/performance.md, "Capacity: one large VO"): the inputs below are
assumptions, written out; the per-operation costs are medians of one worker on PostgreSQL from
`bench/workers.py` (the server's CPU, the PostgreSQL backends' CPU, the WAL bytes, the on-disk
bytes of a log line); the rest is arithmetic, printed as Markdown tables. With
`--log-lines-json` (a `bench/workers.py --workers 1 --log-lines 250` run), a log batch's cost
is split into a per-request and a per-line part, so other batch sizes can be priced.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DAY = 86_400.0


@dataclass(frozen=True)
class VO:
    """The VO of issue [6/6]; every rate derives from these."""

    live_pilots: int = 200_000
    submissions_per_day: int = 1_000_000
    ces: int = 300
    log_interval_s: float = 30.0
    lines_per_batch: int = 20
    refresh_interval_s: float = 15 * 60
    status_patches_per_pilot: float = 4.0  # Submitted -> Waiting -> Running -> Done, one stamp each
    bulk_size: int = 1000  # pilots per registration request (the director's bulk call)
    director_queries_per_s: float = 5.0  # searches: reconciliation, monitor, operators
    headroom: float = 0.5  # plan to run the cores at most this busy at the mean rate
    retention_days: float = 7.0

    def rates(self) -> dict[str, float]:
        """Requests per second of each operation."""
        per_s = self.submissions_per_day / DAY
        return {
            "logs": self.live_pilots / self.log_interval_s,
            "refresh": self.live_pilots / self.refresh_interval_s,
            "exchange": per_s,  # each pilot exchanges its secret once
            "bulk": per_s / self.bulk_size,
            "patch": per_s * self.status_patches_per_pilot,
            "search": self.director_queries_per_s,
        }


def costs(report: dict[str, Any], log250: dict[str, Any] | None, lines: int) -> dict[str, Any]:
    """op -> per-request costs (1 worker, medians) from a bench/workers.py report; the log
    batch priced for `lines` lines (a + b x lines when the 250-line run is given)."""
    ops = report["ops"]
    base = str(report["workers"][0]) + "w"
    out = {op: dict(ops[op][base]) for op in ops}
    measured = ops["logs"]["items_per_request"]
    if log250 is not None:
        big = log250["ops"]["logs"]["1w"]
        n_big = log250["ops"]["logs"]["items_per_request"]
        priced = {}
        for f in ("server_cpu_ms_per_request", "db_cpu_ms_per_request",
                  "db_background_cpu_ms_per_request", "wal_bytes_per_request"):  # fmt: skip
            per_line = (big[f] - out["logs"][f]) / (n_big - measured)
            fixed = out["logs"][f] - per_line * measured
            priced[f] = fixed + per_line * lines
            priced[f + "_fixed"] = fixed
            priced[f + "_per_line"] = per_line
        out["logs"] = {**out["logs"], **priced}
    elif lines != measured:
        raise SystemExit(
            f"the logs were measured at {measured} lines a batch: give the 250-line run"
        )
    return out


def model(vo: VO, c: dict[str, Any], line_bytes: float) -> dict[str, Any]:
    rates = vo.rates()
    rows = {}
    for op, rate in rates.items():
        cost = c[op]
        rows[op] = {
            "rate_per_s": rate,
            "server_ms": cost["server_cpu_ms_per_request"],
            "db_ms": cost["db_cpu_ms_per_request"] + cost["db_background_cpu_ms_per_request"],
            "server_cores": rate * cost["server_cpu_ms_per_request"] / 1000,
            "db_cores": rate
            * (cost["db_cpu_ms_per_request"] + cost["db_background_cpu_ms_per_request"])
            / 1000,
            "wal_mb_s": rate * cost["wal_bytes_per_request"] / 1e6,
        }
    server = sum(r["server_cores"] for r in rows.values())
    db = sum(r["db_cores"] for r in rows.values())
    wal = sum(r["wal_mb_s"] for r in rows.values())
    lines_per_s = rates["logs"] * vo.lines_per_batch
    disk_day_tb = lines_per_s * DAY * line_bytes / 1e12
    return {
        "rows": rows,
        "server_cores": server,
        "db_cores": db,
        "workers": math.ceil(server / vo.headroom),
        "db_cores_with_headroom": math.ceil(db / vo.headroom),
        "wal_mb_s": wal,
        "wal_tb_day": wal * DAY / 1e6,
        "lines_per_s": lines_per_s,
        "lines_per_day": lines_per_s * DAY,
        "log_inserts_per_s": lines_per_s,
        "log_disk_tb_day": disk_day_tb,
        "log_disk_tb_retained": disk_day_tb * vo.retention_days,
        "without_logs": {
            "server_cores": server - rows["logs"]["server_cores"],
            "db_cores": db - rows["logs"]["db_cores"],
            "wal_mb_s": wal - rows["logs"]["wal_mb_s"],
        },
    }


def label(op: str, vo: VO) -> str:
    return {
        "logs": f"log batch ({vo.lines_per_batch} lines)",
        "bulk": f"bulk registration ({vo.bulk_size:,})",
        "patch": "status patch",
    }.get(op, op)


def markdown(vo: VO, m: dict[str, Any], line_bytes: float) -> str:
    out = ["| operation | rate /s | server CPU ms each | database CPU ms each | server cores "
           "| database cores | WAL MB/s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for op, r in m["rows"].items():
        out.append(
            f"| {label(op, vo)} | {r['rate_per_s']:,.4g} | {r['server_ms']:.3f} | {r['db_ms']:.3f} "
            f"| {r['server_cores']:.2f} | {r['db_cores']:.2f} | {r['wal_mb_s']:.2f} |"
        )
    out.append(
        f"| **total** | | | | **{m['server_cores']:.1f}** | **{m['db_cores']:.1f}** "
        f"| **{m['wal_mb_s']:.1f}** |"
    )
    w = m["without_logs"]
    out += [
        "",
        f"- server: {m['server_cores']:.1f} cores busy at the mean rate; at most "
        f"{vo.headroom:.0%} busy: **{m['workers']} workers** (one a core)",
        f"- database: {m['db_cores']:.1f} cores ({m['db_cores_with_headroom']} with the same "
        f"headroom), WAL {m['wal_mb_s']:.1f} MB/s = {m['wal_tb_day']:.1f} TB a day",
        f"- log lines: {m['lines_per_s']:,.0f}/s ({vo.lines_per_batch} a batch), "
        f"{m['lines_per_day'] / 1e9:.2f} billion a day, {line_bytes:.0f} B each on disk "
        f"(heap and 3 indexes): {m['log_disk_tb_day']:.2f} TB a day, "
        f"{m['log_disk_tb_retained']:.1f} TB for {vo.retention_days:g} days' retention",
        f"- everything but the logs: {w['server_cores']:.2f} server cores, "
        f"{w['db_cores']:.2f} database cores, {w['wal_mb_s']:.2f} MB/s of WAL",
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a bench/workers.py JSON")
    parser.add_argument("--log-lines-json", type=Path, help="a --log-lines 250 run (1 worker)")
    parser.add_argument("--lines-per-batch", type=int, default=VO.lines_per_batch)
    parser.add_argument("--retention-days", type=float, default=VO.retention_days)
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    log250 = json.loads(args.log_lines_json.read_text()) if args.log_lines_json else None
    vo = VO(lines_per_batch=args.lines_per_batch, retention_days=args.retention_days)
    c = costs(report, log250, vo.lines_per_batch)
    base = str(report["workers"][0])
    tables = (log250 or report)["tables_after_last_round"]
    logs_table = tables.get("1", tables.get(base))["PilotLogs"]
    line_bytes = logs_table["bytes_per_row"]
    print(markdown(vo, model(vo, c, line_bytes), line_bytes))
    if log250 is not None:
        lg = c["logs"]
        print(
            f"\nlog batch = {lg['server_cpu_ms_per_request_fixed']:.3f} ms + "
            f"{1000 * lg['server_cpu_ms_per_request_per_line']:.1f} us a line (server), "
            f"{lg['db_cpu_ms_per_request_fixed']:.3f} ms + "
            f"{1000 * lg['db_cpu_ms_per_request_per_line']:.1f} us a line (database), "
            f"{lg['wal_bytes_per_request_fixed']:.0f} B + "
            f"{lg['wal_bytes_per_request_per_line']:.0f} B a line (WAL)"
        )


if __name__ == "__main__":
    main()
