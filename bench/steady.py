"""3 poll path, 4 cadence, 5 footprint: one run of `edgelog run` at 10 Hz from an empty
buffer, MariaDB reachable (the sync thread forwards live), seen three ways:

3. Modbus requests per poll (the simulator's count over the readings stored, and what
   `plan_requests()` plans), and the meter's response -> durable in SQLite;
4. missed grid instants, ``measured_at`` minus its grid instant, and its drift;
5. RSS at steady state (and, from the live drain, during a drain), bytes written to
   storage per reading (/proc/<pid>/io), and buffer bytes per reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgelog.meter import plan_requests
from edgelog.profiles import PAC3100

from .kit import Bench, remove_buffer, timed
from .logger import run_logger
from .stats import median, missed, stats_ms
from .table import Line, n, target
from .timelog import Reading, TimingLog, gap_causes

TITLE = "edgelog run at 10 Hz, steady: poll path, cadence, footprint"


def run(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    with timed(bench.say, f"3-5. `edgelog run` at 10 Hz for {bench.plan.cadence_s:.0f} s"):
        return {"steady": steady(bench)}


def steady(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    interval = plan.live_interval_s
    buffer = bench.work / "steady.sqlite3"
    remove_buffer(buffer)
    sim = bench.simulator([PAC3100.unit_id])
    meters = [{"name": "pac1", "port": sim.port, "unit_id": PAC3100.unit_id, "interval_s": interval}]
    sizes: list[tuple[float, int]] = []

    def watch(elapsed: float, _log: TimingLog) -> bool:
        if buffer.exists():
            sizes.append((elapsed, _file_bytes(buffer)))
        return elapsed >= plan.cadence_s

    requests0 = sim.requests
    run = run_logger(
        bench, "steady", buffer, meters, watch, 0.0, max_s=plan.cadence_s + 120, sample_every=1.0
    )
    requests = sim.requests - requests0
    live = run.log.readings(interval)
    errors = [x.answer - x.slot * interval for x in live]
    late = [x.poll - x.slot * interval for x in live]
    drift = _drift(live, interval)
    samples = run.samples
    duration = max((s.t for s in samples), default=0.0)
    half = [s for s in samples if s.t >= duration / 2]
    wb = [s for s in samples if s.write_bytes is not None]
    t0 = run.t0
    readings_in = [x for x in live if wb and wb[0].t <= x.poll - t0 <= wb[-1].t]
    write_per_reading = (
        (wb[-1].write_bytes - wb[0].write_bytes) / len(readings_in)  # type: ignore[operator]
        if len(wb) > 1 and readings_in
        else None
    )
    remove_buffer(buffer)
    return {
        "seconds": duration,
        "interval_s": interval,
        "readings": len(live),
        "failed_polls": sum(1 for x in live if x.error),
        "modbus_requests": requests,
        "requests_per_poll": requests / len(live) if live else None,
        "requests_per_poll_planned": len(plan_requests(PAC3100.registers)),
        "response_to_durable": stats_ms([x.response_to_durable for x in live]),
        "grid_to_durable": stats_ms([x.grid_to_durable for x in live]),
        "missed": missed([x.slot for x in live]),
        "missed_by_cause": gap_causes(live, run.log.tasks, interval),
        "skipped_rows": run.log.skipped,
        "cadence_counters": run.log.cadence,
        "timestamp_error": stats_ms(errors),
        "poll_start_late": stats_ms(late),
        "drift_ms_first_to_last": drift["first_to_last_ms"],
        "drift_ms_per_hour_fit": drift["slope_ms_per_hour"],
        "drift_ms_first_vs_last_tenth_median": drift["first_vs_last_tenth_median_ms"],
        "rss_mib_steady_median": median([s.rss_kib / 1024 for s in half]),
        "rss_mib_max": max((s.rss_kib for s in samples), default=0) / 1024,
        "write_bytes_per_reading": write_per_reading,
        "buffer_bytes_per_reading_growth": _growth_per_reading(sizes, live, t0),
        "mariadb_rows": run.mariadb_rows,
        "exit_status": run.exit_status,
    }


def _file_bytes(path: Path) -> int:
    return sum(Path(f"{path}{ext}").stat().st_size for ext in ("", "-wal") if Path(f"{path}{ext}").exists())


def _drift(live: Sequence[Reading], interval: float) -> dict[str, float | None]:
    """How `measured_at` minus its grid instant moves over the run: last minus first, the
    median of the last tenth minus that of the first, and a least-squares slope."""
    ok = [x for x in live if not x.error]
    if len(ok) < 2:
        return {"first_to_last_ms": None, "slope_ms_per_hour": None, "first_vs_last_tenth_median_ms": None}
    err = [x.answer - x.slot * interval for x in ok]
    ts = [x.slot * interval for x in ok]
    count = len(ok)
    mt, me = sum(ts) / count, sum(err) / count
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (e - me) for t, e in zip(ts, err, strict=True)) / var if var else 0.0
    tenth = max(1, count // 10)
    tenths = (median(err[-tenth:]) or 0.0) - (median(err[:tenth]) or 0.0)
    return {
        "first_to_last_ms": (err[-1] - err[0]) * 1000,
        "slope_ms_per_hour": slope * 3600 * 1000,
        "first_vs_last_tenth_median_ms": tenths * 1000,
    }


def _growth_per_reading(
    sizes: Sequence[tuple[float, int]], live: Sequence[Reading], t0: float
) -> float | None:
    """Bytes the buffer file (+WAL) grew per reading over the second half of the run."""
    if len(sizes) < 4 or not live:
        return None
    (ta, sa), (tb, sb) = sizes[len(sizes) // 2], sizes[-1]
    count = sum(1 for x in live if ta <= x.poll - t0 <= tb)
    return (sb - sa) / count if count else None


def lines(r: dict[str, Any]) -> list[Line]:
    s = r["steady"]
    rd, te = s["response_to_durable"], s["timestamp_error"]
    out = [
        (
            "3 poll",
            "Modbus requests per poll (planned)",
            f"{n(s['requests_per_poll'], 3)} ({s['requests_per_poll_planned']})",
        ),
        (
            "3 poll",
            "meter response -> durable in SQLite p50/p99 ms",
            f"{n(rd['p50_ms'], 2)}/{n(rd['p99_ms'], 2)}",
        ),
        (
            "4 cadence",
            f"{s['seconds']:.0f} s at 10 Hz: readings, missed",
            f"{s['readings']:,}, {s['missed']}",
        ),
    ]
    for cause, count in s["missed_by_cause"].items():
        out.append(("4 cadence", f"  missed because of: {cause}", str(count)))
    out.append(
        (
            "4 cadence",
            "timestamp - grid p50/p99/max ms; drift first->last, 1st->last tenth ms",
            f"{n(te['p50_ms'], 2)}/{n(te['p99_ms'], 2)}/{n(te['max_ms'], 2)}; "
            f"{n(s['drift_ms_first_to_last'], 2)}, {n(s['drift_ms_first_vs_last_tenth_median'], 2)}",
        )
    )
    rss = r.get("live_drain", {}).get("rss_mib_during_drain", {})
    drain_rss = "/".join(n(rss.get(f"at_{p}_percent"), 1) for p in (10, 50, 90))
    out.append(
        (
            "5 footprint",
            "edgelog run RSS MiB: steady; at 10/50/90% of the drain",
            f"{n(s['rss_mib_steady_median'], 1)}; {drain_rss}",
        )
    )
    backlog = r.get("buffer", {}).get("bytes_per_reading")
    out.append(
        (
            "5 footprint",
            "bytes written per reading; buffer bytes per reading (backlog file)",
            f"{n(s['write_bytes_per_reading'])}; {n(backlog)}",
        )
    )
    return out


def targets(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    s = r["steady"]
    rpp = s["requests_per_poll"]
    return [
        target("Modbus requests per poll", rpp, "1", rpp is not None and abs(rpp - 1) < 0.01),
        target("missed samples, steady run", s["missed"], "0", s["missed"] == 0),
    ]
