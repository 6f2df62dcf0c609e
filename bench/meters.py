"""6b. Meters per bus: `edgelog run` with 1, 8 and 32 meters at 1 Hz, at most four on a
bus (one pymodbus TCP server per bus, unit ids 1..4: each bus has its poll thread and
its meters share its second within the time budget), draining a backlog of those
meters' readings meanwhile. Reported per run and per bus: missed samples and grid
instant -> durable (p99); the drain rate and peak RSS."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .kit import Bench, copy_buffer, remove_buffer, timed
from .logger import run_logger
from .sim import BusSimulator
from .stats import missed, stats_ms
from .table import Line, n
from .timelog import TimingLog

TITLE = "meters on buses of up to four"
#: At most this many meters on one bus (a PAC3100 line at 1 Hz).
METERS_PER_BUS = 4


def run(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    out = []
    with timed(bench.say, "6b. meters on buses of up to four"):
        for m in bench.plan.meters:
            out.append(meters_on_buses(bench, m))
            last = out[-1]
            bench.say(
                f"   {m} meter(s) on {last['buses']} bus(es): {last['rows_per_s'] or 0:,.0f} rows/s, "
                f"{last['missed']} missed, worst bus p99 {last['worst_bus_p99_ms']} ms"
            )
    return {"scaling_meters": out}


def meters_on_buses(bench: Bench, m: int) -> dict[str, Any]:
    plan = bench.plan
    interval = plan.meters_interval_s
    names = [f"pac{k:02d}" for k in range(1, m + 1)]
    built = bench.built(plan.meters_backlog, names, interval_s=interval)
    buffer = copy_buffer(built.path, bench.work / f"meters{m}.sqlite3")
    bench.stop_simulator()
    groups = [names[i : i + METERS_PER_BUS] for i in range(0, m, METERS_PER_BUS)]
    buses = [BusSimulator(list(range(1, len(group) + 1))).start() for group in groups]
    timeout_s = round(0.8 * interval / METERS_PER_BUS, 3)
    meters = [
        {"name": name, "port": bus.port, "unit_id": k, "interval_s": interval, "timeout_s": timeout_s}
        for group, bus in zip(groups, buses, strict=True)
        for k, name in enumerate(group, start=1)
    ]

    def drained(_elapsed: float, log: TimingLog) -> bool:
        return log.sent_upto >= built.rows

    try:
        run = run_logger(bench, f"meters{m}", buffer, meters, drained, plan.meters_run_s, max_s=1800)
        requests = sum(bus.requests for bus in buses)
    finally:
        for bus in buses:
            bus.stop()
    log = run.log
    drained_at = log.sent_at(built.rows)
    drain_start = log.drains[0][0] if log.drains else None
    drain_s = drained_at - drain_start if drained_at and drain_start else None
    live = log.readings(interval)
    slots: dict[str, list[int]] = defaultdict(list)
    for x in live:
        slots[x.meter].append(x.slot)
    per_bus = []
    for i, group in enumerate(groups):
        mine = [x for x in live if x.meter in group]
        per_bus.append(
            {
                "bus": i + 1,
                "meters": len(group),
                "readings": len(mine),
                "missed": sum(missed(slots[name]) for name in group),
                "grid_to_durable": stats_ms([x.grid_to_durable for x in mine]),
            }
        )
    p99s = [b["grid_to_durable"]["p99_ms"] for b in per_bus if b["grid_to_durable"]["p99_ms"] is not None]
    remove_buffer(buffer)
    return {
        "meters": m,
        "buses": len(groups),
        "meters_per_bus": METERS_PER_BUS,
        "timeout_s": timeout_s,
        "backlog_rows": built.rows,
        "drain_s": drain_s,
        "rows_per_s": built.rows / drain_s if drain_s else None,
        "peak_rss_mib": max((max(s.rss_kib, s.hwm_kib) for s in run.samples), default=0) / 1024,
        "readings": len(live),
        "missed": sum(missed(s) for s in slots.values()),
        "skipped_rows": log.skipped,
        "requests_per_poll": requests / len(live) if live else None,
        "grid_to_durable": stats_ms([x.grid_to_durable for x in live]),
        "per_bus": per_bus,
        "worst_bus_p99_ms": max(p99s) if p99s else None,
        "failed_polls": sum(1 for x in live if x.error),
    }


def lines(r: dict[str, Any]) -> list[Line]:
    return [_line(m) for m in r["scaling_meters"]]


def _line(m: dict[str, Any]) -> Line:
    per_bus = "/".join(n(b["grid_to_durable"]["p99_ms"], 1) for b in m["per_bus"])
    what = f"{m['meters']} meter(s), {m['buses']} bus(es), 1 Hz: drain rows/s, RSS MiB, missed, "
    p99 = n(m["grid_to_durable"]["p99_ms"], 1)
    value = f"{n(m['rows_per_s'])}, {m['peak_rss_mib']:.1f}, {m['missed']}, {p99}; {per_bus}"
    return ("6 scaling", what + "p99 ms (all; per bus)", value)


def targets(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return []
