"""2. A backlog drained by `edgelog run`'s own sync thread while it polls at 10 Hz: the
drain rate, the readings taken meanwhile, missed grid instants (and what kept the poll
thread from each), grid instant -> durable, RSS at 10/50/90 % of the backlog sent, and
beside the logger the disk's own fsync latency. Then the time-based prune (edgelog run's
housekeeping) is timed step by step on the buffer the drain left."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgelog.buffer import Buffer, Space
from edgelog.profiles import PAC3100

from .kit import Bench, copy_buffer, remove_buffer, timed
from .logger import run_logger
from .procs import Sample
from .stats import median, missed, stats_ms
from .table import Line, n, target
from .timelog import TimingLog, gap_causes

TITLE = "edgelog run at 10 Hz draining a backlog"


def run(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    plan = bench.plan
    with timed(bench.say, f"2. `edgelog run` at 10 Hz draining a backlog of {plan.n_live:,} rows"):
        return {"live_drain": live_drain(bench)}


def live_drain(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    interval = plan.live_interval_s
    built = bench.built(plan.n_live, interval_s=interval)
    buffer = copy_buffer(built.path, bench.work / "live.sqlite3")
    sim = bench.simulator([PAC3100.unit_id])
    meters = [{"name": "pac1", "port": sim.port, "unit_id": PAC3100.unit_id, "interval_s": interval}]
    backlog = built.rows  # seqs 1..n

    def drained(_elapsed: float, log: TimingLog) -> bool:
        return log.sent_upto >= backlog

    run = run_logger(bench, "live", buffer, meters, drained, plan.after_drain_s, max_s=3600)
    log, t0 = run.log, run.t0
    drained_at = log.sent_at(backlog)
    drain_start = log.drains[0][0] if log.drains else None
    live = log.readings(interval)
    window = [x for x in live if drained_at and drain_start and drain_start <= x.poll <= drained_at]
    drain_s = drained_at - drain_start if drained_at and drain_start else None
    samples = run.samples
    during = [
        s.rss_kib / 1024
        for s in samples
        if drain_start and drained_at and drain_start - t0 <= s.t <= drained_at - t0
    ]
    after = [s.rss_kib / 1024 for s in samples if drained_at and s.t > drained_at - t0]
    progress = _rss_at_progress(samples, log.sent, backlog, t0, (0.1, 0.5, 0.9))
    within = [x.grid_to_durable < interval for x in window]
    result = {
        "backlog_rows": backlog,
        "interval_s": interval,
        "drain_s": drain_s,
        "process_start_to_drained_s": (drained_at - t0) if drained_at else None,
        "rows_per_s": backlog / drain_s if drain_s else None,
        "live_readings_during_drain": len(window),
        "missed_during_drain": missed([x.slot for x in window]),
        "missed_during_drain_by_cause": gap_causes(window, log.tasks, interval),
        "housekeeping_passes": [{"at_s": round(a - t0, 3), "seconds": round(b - a, 3)} for a, b in log.tasks],
        "missed_whole_run": missed([x.slot for x in live]),
        "skipped_rows": log.skipped,
        "cadence_counters": log.cadence,
        "sink_stats": log.sink_stats,
        "grid_to_durable_during_drain": stats_ms([x.grid_to_durable for x in window]),
        "response_to_durable_during_drain": stats_ms([x.response_to_durable for x in window]),
        "within_one_interval": all(within),
        "durable_within_one_interval_share": sum(within) / len(within) if within else None,
        # the disk's own fsync latency meanwhile, measured beside the logger
        "disk_fsync_during_drain": _fsync_stats(
            run.fsync_probe.between(drain_start or 0.0, drained_at or 0.0), interval
        ),
        "rss_mib_during_drain": {
            "at_10_percent": progress[0],
            "at_50_percent": progress[1],
            "at_90_percent": progress[2],
            "max": max(during) if during else None,
            "samples": len(during),
        },
        "rss_mib_after_drain_median": median(after),
        "mariadb_rows": run.mariadb_rows,
        "mariadb_distinct": run.mariadb_distinct,
        "exit_status": run.exit_status,
    }
    result["housekeeping_with_backlog_sent"] = time_prune(buffer)
    remove_buffer(buffer)
    return result


def time_prune(path: Path) -> dict[str, Any]:
    """The time-based prune as `edgelog run`'s housekeeping runs it (every 60 s, in steps
    on the buffer writer thread), on the buffer the live drain left: every backlog row
    sent, none old enough to delete. How long does one step hold a commit up?"""
    buffer = Buffer(path, create=False)
    space = Space(buffer, 1 << 62)
    try:
        rows = buffer.readings_total()
        steps: list[float] = []
        after: int | None = 0
        while after is not None:
            t0 = time.perf_counter()
            _, after = space.prune_old_sent(7 * 86400, after=after)
            steps.append(time.perf_counter() - t0)
        return {"rows_in_buffer": rows, "steps": len(steps), "seconds": max(steps), "total_s": sum(steps)}
    finally:
        buffer.close()


def _fsync_stats(latencies: Sequence[float], interval: float) -> dict[str, Any]:
    return {**stats_ms(latencies), "longer_than_interval": sum(x > interval for x in latencies)}


def _rss_at_progress(
    samples: Sequence[Sample],
    sent: Sequence[tuple[float, int]],
    total: int,
    t0: float,
    points: Sequence[float],
) -> list[float | None]:
    """RSS (MiB) of the first sample taken after the drain had sent each share of `total`."""
    out: list[float | None] = []
    for share in points:
        at = next((t for t, upto in sent if upto >= share * total), None)
        sample = next((s for s in samples if at is not None and s.t >= at - t0), None)
        out.append(sample.rss_kib / 1024 if sample else None)
    return out


def lines(r: dict[str, Any]) -> list[Line]:
    live = r["live_drain"]
    g = live["grid_to_durable_during_drain"]
    out = [
        (
            "2 live",
            f"edgelog run 10 Hz + backlog {live['backlog_rows']:,}: drain",
            f"{n(live['rows_per_s'])} rows/s in {n(live['drain_s'], 1)} s",
        ),
        (
            "2 live",
            "during the drain: readings, missed, grid->durable p50/p99/max ms",
            f"{live['live_readings_during_drain']}, {live['missed_during_drain']}, "
            f"{n(g['p50_ms'], 1)}/{n(g['p99_ms'], 1)}/{n(g['max_ms'], 1)}",
        ),
    ]
    for cause, count in live["missed_during_drain_by_cause"].items():
        out.append(("2 live", f"  missed because of: {cause}", str(count)))
    share = live["durable_within_one_interval_share"]
    out.append(("2 live", "  readings durable within one interval", f"{n((share or 0) * 100, 2)} %"))
    f = live["disk_fsync_during_drain"]
    out.append(
        (
            "2 live",
            "  the disk's own fsync meanwhile (probe): p50/p99/max ms, n > interval",
            f"{n(f['p50_ms'], 1)}/{n(f['p99_ms'], 1)}/{n(f['max_ms'], 1)}, "
            f"{f['longer_than_interval']} of {f['n']}",
        )
    )
    hk = live["housekeeping_with_backlog_sent"]
    out.append(
        (
            "2 live",
            f"housekeeping (prune) with {hk['rows_in_buffer']:,} sent rows kept: steps, longest, total",
            f"{hk['steps']}, {hk['seconds'] * 1000:,.0f} ms, {hk['total_s'] * 1000:,.0f} ms",
        )
    )
    return out


def targets(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    live = r["live_drain"]
    p99 = live["grid_to_durable_during_drain"]["p99_ms"]
    limit = live["interval_s"] * 1000
    rss = live["rss_mib_during_drain"]
    first, last = rss["at_10_percent"], rss["at_90_percent"]
    flat = last <= first * 1.1 + 2 if first and last else None
    return [
        target(
            "missed samples during the drain",
            live["missed_during_drain"],
            "0",
            live["missed_during_drain"] == 0,
        ),
        target(
            "poll -> durable p99 during the drain (ms)",
            p99,
            f"< {limit:.0f}",
            p99 is not None and p99 < limit,
        ),
        target(
            "edgelog run RSS at 10% / 90% of the drain (MiB)",
            [round(v, 1) if v else v for v in (first, last)],
            "flat",
            flat,
        ),
    ]
