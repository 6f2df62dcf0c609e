"""`python -m bench [--quick]`: edgelog's benchmark suite.

Starts its own MariaDB (mariadb-install-db + mariadbd in a temp dir, as the tests
do) and its own PAC3100 simulators (pymodbus TCP), runs every measurement of
docs/performance.md, prints one table and writes the figures as JSON
(bench/results/latest.json unless --out). Figures that are compared are measured
side by side in the same run: machines are noisy, ratios less so. Nothing here
is a timed test: the targets are reported, never asserted.

--quick is the smoke-sized version CI runs (about a minute or two); the full run
(N = 1,000,000, a 10-minute cadence run at 10 Hz and a 10-minute card-wear run at
1 Hz) takes about 30 minutes on 2 cores. `python -m bench.wear` runs the card-wear
measurement alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from statistics import median
from typing import Any

from .run import Bench, Plan, timed
from .server import SERVER_PARAMS
from .wear import card_wear

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"


def machine(bench: Bench) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if not cpu:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((x.split(":", 1)[1].strip() for x in cpu.splitlines() if x.startswith("Model name")), "?")
    fs = subprocess.run(["df", "-T", str(bench.work)], capture_output=True, text=True).stdout.splitlines()[
        -1:
    ]
    mem = next((x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")), "")

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "uname": subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
        or " ".join(platform.uname()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem.split(":", 1)[-1].strip(),
        "filesystem": fs[0] if fs else "?",
        "mariadb": bench.db.version(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "pymysql": version("PyMySQL"),
        "peewee": version("peewee"),
        "pymodbus": version("pymodbus"),
        "load_average_at_start": os.getloadavg(),
    }


def run_all(plan: Plan, work: Path, say: Any) -> dict[str, Any]:
    bench = Bench(plan, work, say)
    results: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "plan": plan.__dict__,
        "server_params": list(SERVER_PARAMS),
        "batch_size": 2000,
    }
    started = time.time()
    with timed(say, "starting MariaDB"):
        bench.start()
    try:
        results["machine"] = machine(bench)
        n = plan.n_drain
        built = bench.built(n)
        results["buffer"] = {
            "rows": built.rows,
            "file_bytes": built.file_bytes,
            "bytes_per_reading": built.file_bytes / built.rows,
            "build_s": built.seconds,
        }

        # 1. drain vs its references, alternated
        pairs = []
        repeats = 3
        with timed(say, f"1. drain of {n:,} rows vs LOAD DATA ceiling (x{repeats}) and the naive loop"):
            keep: list[Any] = []
            for i in range(repeats):
                # each measurement starts from a settled server (Bench.settle); the order alternates
                if i % 2 == 0:
                    ceiling = bench.ceiling(built)
                    drain = bench.cli_drain(built, tag=f"drain{i}")
                else:
                    drain = bench.cli_drain(built, tag=f"drain{i}")
                    ceiling = bench.ceiling(built)
                pairs.append(
                    {"ceiling": ceiling, "drain": drain, "ratio": drain["rows_per_s"] / ceiling["rows_per_s"]}
                )
                if i == 0:
                    keep = [ceiling["account"], drain["account"]]
                else:
                    bench.drop_db(ceiling["account"])
                    bench.drop_db(drain["account"])
                rates = f"drain {drain['rows_per_s']:,.0f} rows/s, ceiling {ceiling['rows_per_s']:,.0f}"
                say(f"   pair {i + 1}: {rates}")
            # the same into an empty table, where MariaDB's first statement is faster
            empty_ceiling = bench.ceiling(built, with_history=False)
            empty_drain = bench.cli_drain(built, tag="drain_empty", with_history=False)
            bench.drop_db(empty_ceiling["account"])
            bench.drop_db(empty_drain["account"])
            content = bench.compare_tables(keep[0], keep[1])
            content["drain_vs_buffer_sample_mismatches"] = bench.check_against_buffer_db(keep[1], built)
            for db in keep:
                bench.drop_db(db)
            naive = bench.naive(built)
        drain_rate = median(p["drain"]["rows_per_s"] for p in pairs)
        ceiling_rate = median(p["ceiling"]["rows_per_s"] for p in pairs)
        results["drain"] = {
            "rows": n,
            "transport": "unix socket",
            "pairs": pairs,
            "drain_rows_per_s": drain_rate,
            "ceiling_rows_per_s": ceiling_rate,
            "naive": naive,
            "ratio_vs_ceiling": drain_rate / ceiling_rate,
            "ratio_vs_ceiling_per_pair": [p["ratio"] for p in pairs],
            "ratio_vs_naive": drain_rate / naive["rows_per_s"],
            "content": content,
            "table_held_history_rows": plan.history_rows,
            "empty_table": {
                "ceiling": empty_ceiling,
                "drain": empty_drain,
                "ratio_vs_ceiling": empty_drain["rows_per_s"] / empty_ceiling["rows_per_s"],
            },
        }

        # the same over TCP
        with timed(say, f"1b. drain vs ceiling over TCP 127.0.0.1 ({plan.n_tcp:,} rows)"):
            small = bench.built(plan.n_tcp)
            ceiling = bench.ceiling(small, transport="tcp")
            drain = bench.cli_drain(small, transport="tcp", tag="drain_tcp")
            bench.drop_db(ceiling["account"])
            bench.drop_db(drain["account"])
        results["drain_tcp"] = {
            "rows": plan.n_tcp,
            "ceiling": ceiling,
            "drain": drain,
            "ratio_vs_ceiling": drain["rows_per_s"] / ceiling["rows_per_s"],
        }

        # 6a. scaling with N
        scaling = []
        with timed(say, "6a. drain and memory vs N"):
            for size in plan.scaling_n:
                if size == n:
                    first = pairs[0]
                    scaling.append(_scale_row(size, first["ceiling"], first["drain"]))
                    continue
                b = bench.built(size)
                ceiling = bench.ceiling(b)
                drain = bench.cli_drain(b, tag=f"drain_n{size}")
                bench.drop_db(ceiling["account"])
                bench.drop_db(drain["account"])
                scaling.append(_scale_row(size, ceiling, drain))
        results["scaling_n"] = scaling

        # write paths side by side, and the profile
        with timed(say, f"write paths side by side ({plan.n_compare:,} rows, in-process SyncWorker.drain)"):
            b = bench.built(plan.n_compare)
            ceiling = bench.ceiling(b)
            bench.drop_db(ceiling["account"])
            paths = []
            for variant in ("binary", "load_data", "text", "v0.1"):
                r = bench.inprocess_drain(b, variant)
                bench.drop_db(r["account"])
                r["ratio_vs_ceiling"] = r["rows_per_s"] / ceiling["rows_per_s"]
                paths.append(r)
                say(f"   {variant}: {r['rows_per_s']:,.0f} rows/s")
        results["write_paths"] = {"rows": plan.n_compare, "ceiling": ceiling, "paths": paths}
        with timed(say, "profile: where the time goes"):
            profile = {}
            for variant in ("binary", "v0.1"):
                r = bench.breakdown(b, variant)
                bench.drop_db(r["account"])
                profile[variant] = r
            r = bench.inprocess_drain(b, "binary", profile=True)
            bench.drop_db(r["account"])
            profile["cprofile_binary"] = {
                "rows_per_s_under_cprofile": r["rows_per_s"],
                "top": r["cprofile_top"],
            }
        results["profile"] = profile

        # 2 + 5. a backlog drained by `edgelog run` while it polls at 10 Hz
        with timed(say, f"2. `edgelog run` at 10 Hz draining a backlog of {plan.n_live:,} rows"):
            results["live_drain"] = bench.live_drain()

        # 6b. meters on buses of up to four, one poll thread each
        meters = []
        with timed(say, "6b. meters on buses of up to four"):
            for m in plan.meters:
                meters.append(bench.meters_scaling(m))
                last = meters[-1]
                say(
                    f"   {m} meter(s) on {last['buses']} bus(es): {last['rows_per_s'] or 0:,.0f} rows/s, "
                    f"{last['missed']} missed, worst bus p99 {last['worst_bus_p99_ms']} ms"
                )
        results["scaling_meters"] = meters

        # 3 + 4 + 5. the poll path, cadence and footprint at steady state
        with timed(say, f"3-5. `edgelog run` at 10 Hz for {plan.cadence_s:.0f} s"):
            results["steady"] = bench.steady()

        # 7. card wear: bytes written per reading at 1 Hz, default settings
        with timed(say, f"7. `edgelog run` at 1 Hz for {plan.wear_s:.0f} s: bytes written per reading"):
            results["card_wear"] = card_wear(bench, plan.wear_s, plan.wear_warmup_s)
    finally:
        bench.stop()
    results["duration_s"] = time.time() - started
    results["targets"] = targets(results)
    return results


def _scale_row(n: int, ceiling: dict[str, Any], drain: dict[str, Any]) -> dict[str, Any]:
    return {
        "rows": n,
        "drain_rows_per_s": drain["rows_per_s"],
        "ceiling_rows_per_s": ceiling["rows_per_s"],
        "ratio": drain["rows_per_s"] / ceiling["rows_per_s"],
        "drain_peak_rss_mib": drain["peak_rss_mib"],
    }


def targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}

    def add(name: str, value: Any, target: str, met: bool | None) -> None:
        out[name] = {"value": value, "target": target, "met": met}

    d = r["drain"]
    add("drain / LOAD DATA ceiling", round(d["ratio_vs_ceiling"], 2), ">= 0.7", d["ratio_vs_ceiling"] >= 0.7)
    add("drain / naive loop", round(d["ratio_vs_naive"], 1), ">= 15", d["ratio_vs_naive"] >= 15)
    live = r["live_drain"]
    add("missed samples during the drain", live["missed_during_drain"], "0", live["missed_during_drain"] == 0)
    p99 = live["grid_to_durable_during_drain"]["p99_ms"]
    limit = live["interval_s"] * 1000
    add("poll -> durable p99 during the drain (ms)", p99, f"< {limit:.0f}", p99 is not None and p99 < limit)
    s = r["steady"]
    rpp = s["requests_per_poll"]
    add("Modbus requests per poll", rpp, "1", rpp is not None and abs(rpp - 1) < 0.01)
    add("missed samples, steady run", s["missed"], "0", s["missed"] == 0)
    rss = live["rss_mib_during_drain"]
    flat = None
    if rss["at_10_percent"] and rss["at_90_percent"]:
        flat = rss["at_90_percent"] <= rss["at_10_percent"] * 1.1 + 2
    values = [rss["at_10_percent"], rss["at_90_percent"]]
    add(
        "edgelog run RSS at 10% / 90% of the drain (MiB)",
        [round(v, 1) if v else v for v in values],
        "flat",
        flat,
    )
    w = r["card_wear"]["total_bytes_per_reading"]
    add(
        "bytes written per reading at 1 Hz (KiB)",
        None if w is None else round(w / 1024, 2),
        "<= 6",
        w is not None and w <= 6 * 1024,
    )
    peaks = [row["drain_peak_rss_mib"] for row in r["scaling_n"]]
    add(
        "sync --drain peak RSS vs N (MiB)",
        [round(x, 1) for x in peaks],
        "flat",
        max(peaks) <= min(peaks) * 1.25 + 2,
    )
    return out


# -- the table -------------------------------------------------------------------------------


def _n(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    d = r["drain"]
    n = d["rows"]
    where = f"N={n:,}, unix socket, table holding {d['table_held_history_rows']:,} rows"
    rows.append(("1 drain", f"edgelog sync --drain, {where}", f"{_n(d['drain_rows_per_s'])} rows/s"))
    rows.append(
        ("1 drain", "ceiling: LOAD DATA LOCAL of a ready-made file", f"{_n(d['ceiling_rows_per_s'])} rows/s")
    )
    rows.append(("1 drain", "naive: 1 INSERT/row, autocommit", f"{_n(d['naive']['rows_per_s'])} rows/s"))
    per_pair = ", ".join(f"{x:.2f}" for x in d["ratio_vs_ceiling_per_pair"])
    rows.append(("1 drain", "drain / ceiling (each pair)", f"{d['ratio_vs_ceiling']:.2f} ({per_pair})"))
    rows.append(("1 drain", "drain / naive", f"{d['ratio_vs_naive']:.1f}"))
    e = d["empty_table"]
    rows.append(
        (
            "1 drain",
            "into an empty table instead: drain / ceiling",
            f"{_n(e['drain']['rows_per_s'])} / {_n(e['ceiling']['rows_per_s'])} "
            f"= {e['ratio_vs_ceiling']:.2f}",
        )
    )
    c = d["content"]
    rows.append(
        ("1 drain", "drain == ceiling table, row by row", f"{c['joined']:,} joined, {c['differ']} differ")
    )
    t = r["drain_tcp"]
    rows.append(
        (
            "1 drain",
            f"TCP 127.0.0.1, N={t['rows']:,}: drain / ceiling",
            f"{_n(t['drain']['rows_per_s'])} / {_n(t['ceiling']['rows_per_s'])} "
            f"= {t['ratio_vs_ceiling']:.2f}",
        )
    )
    w = r["write_paths"]
    for p in w["paths"]:
        rows.append(
            (
                "1 paths",
                f"{p['variant']} (N={w['rows']:,}): rows/s, x ceiling; client/server us/row",
                f"{_n(p['rows_per_s'])}, {p['ratio_vs_ceiling']:.2f}x; "
                f"{p['client_cpu_us_per_row']:.1f}/{p['server_cpu_us_per_row']:.1f}",
            )
        )
    b = r["profile"]["binary"]
    rows.append(
        ("1 profile", "binary drain: wall s; MariaDB CPU s", f"{b['seconds']:.2f}; {b['server_cpu_s']:.2f}")
    )
    for step, seconds in list(b["steps_wall_s"].items())[:4]:
        rows.append(("1 profile", f"  {step}", f"{seconds:.2f} s"))
    live = r["live_drain"]
    rows.append(
        (
            "2 live",
            f"edgelog run 10 Hz + backlog {live['backlog_rows']:,}: drain",
            f"{_n(live['rows_per_s'])} rows/s in {_n(live['drain_s'], 1)} s",
        )
    )
    g = live["grid_to_durable_during_drain"]
    rows.append(
        (
            "2 live",
            "during the drain: readings, missed, grid->durable p50/p99/max ms",
            f"{live['live_readings_during_drain']}, {live['missed_during_drain']}, "
            f"{_n(g['p50_ms'], 1)}/{_n(g['p99_ms'], 1)}/{_n(g['max_ms'], 1)}",
        )
    )
    for cause, missed in live["missed_during_drain_by_cause"].items():
        rows.append(("2 live", f"  missed because of: {cause}", str(missed)))
    share = live.get("durable_within_one_interval_share")
    rows.append(("2 live", "  readings durable within one interval", f"{_n((share or 0) * 100, 2)} %"))
    f = live.get("disk_fsync_during_drain")
    if f:
        rows.append(
            (
                "2 live",
                "  the disk's own fsync meanwhile (probe): p50/p99/max ms, n > interval",
                f"{_n(f['p50_ms'], 1)}/{_n(f['p99_ms'], 1)}/{_n(f['max_ms'], 1)}, "
                f"{f['longer_than_interval']} of {f['n']}",
            )
        )
    hk = live["housekeeping_with_backlog_sent"]
    rows.append(
        (
            "2 live",
            f"housekeeping (prune) with {hk['rows_in_buffer']:,} sent rows kept: steps, longest, total",
            f"{hk['steps']}, {hk['seconds'] * 1000:,.0f} ms, {hk['total_s'] * 1000:,.0f} ms",
        )
    )
    s = r["steady"]
    rows.append(
        (
            "3 poll",
            "Modbus requests per poll (planned)",
            f"{_n(s['requests_per_poll'], 3)} ({s['requests_per_poll_planned']})",
        )
    )
    rd = s["response_to_durable"]
    rows.append(
        (
            "3 poll",
            "meter response -> durable in SQLite p50/p99 ms",
            f"{_n(rd['p50_ms'], 2)}/{_n(rd['p99_ms'], 2)}",
        )
    )
    te = s["timestamp_error"]
    rows.append(
        (
            "4 cadence",
            f"{s['seconds']:.0f} s at 10 Hz: readings, missed",
            f"{s['readings']:,}, {s['missed']}",
        )
    )
    for cause, missed in s["missed_by_cause"].items():
        rows.append(("4 cadence", f"  missed because of: {cause}", str(missed)))
    rows.append(
        (
            "4 cadence",
            "timestamp - grid p50/p99/max ms; drift first->last, 1st->last tenth ms",
            f"{_n(te['p50_ms'], 2)}/{_n(te['p99_ms'], 2)}/{_n(te['max_ms'], 2)}; "
            f"{_n(s['drift_ms_first_to_last'], 2)}, {_n(s['drift_ms_first_vs_last_tenth_median'], 2)}",
        )
    )
    rss = live["rss_mib_during_drain"]
    rows.append(
        (
            "5 footprint",
            "edgelog run RSS MiB: steady; at 10/50/90% of the drain",
            f"{_n(s['rss_mib_steady_median'], 1)}; {_n(rss['at_10_percent'], 1)}/"
            f"{_n(rss['at_50_percent'], 1)}/{_n(rss['at_90_percent'], 1)}",
        )
    )
    rows.append(
        (
            "5 footprint",
            "bytes written per reading; buffer bytes per reading (backlog file)",
            f"{_n(s['write_bytes_per_reading'])}; {_n(r['buffer']['bytes_per_reading'])}",
        )
    )
    for row in r["scaling_n"]:
        rows.append(
            (
                "6 scaling",
                f"N={row['rows']:,}: drain, ceiling rows/s, ratio, peak RSS MiB",
                f"{_n(row['drain_rows_per_s'])}, {_n(row['ceiling_rows_per_s'])}, {row['ratio']:.2f}, "
                f"{row['drain_peak_rss_mib']:.1f}",
            )
        )
    for m in r["scaling_meters"]:
        gm = m["grid_to_durable"]
        per_bus = "/".join(_n(b["grid_to_durable"]["p99_ms"], 1) for b in m["per_bus"])
        rows.append(
            (
                "6 scaling",
                f"{m['meters']} meter(s), {m['buses']} bus(es), 1 Hz: drain rows/s, RSS MiB, missed, "
                "p99 ms (all; per bus)",
                f"{_n(m['rows_per_s'])}, {m['peak_rss_mib']:.1f}, {m['missed']}, {_n(gm['p99_ms'], 1)}; "
                f"{per_bus}",
            )
        )
    cw = r["card_wear"]
    rows.append(
        (
            "7 wear",
            f"edgelog run 1 Hz, {cw['seconds']:.0f} s: readings, bytes written per reading",
            f"{cw['readings']:,}, {_n(cw['write_bytes_per_reading'])}",
        )
    )
    rows.append(
        (
            "7 wear",
            f"  + checkpoint share (database file per reading, {cw['page_size']}-byte pages) = total",
            f"{_n(cw['checkpoint_bytes_per_reading'])} = {_n(cw['total_bytes_per_reading'])}",
        )
    )
    for name, t in r["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "?"}[t["met"]]
        rows.append(("targets", f"{name} (target {t['target']})", f"{t['value']}: {verdict}"))
    w1 = max(len(a) for a, _, _ in rows)
    w2 = max(len(b) for _, b, _ in rows)
    lines = [f"{'':{w1}}  {'measure':{w2}}  value", f"{'-' * w1}  {'-' * w2}  {'-' * 40}"]
    lines += [f"{a:{w1}}  {b:{w2}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-sized run (CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument(
        "--workdir", type=Path, help="keep the work files here (default: a temp dir, removed)"
    )
    parser.add_argument(
        "--catchup",
        action="store_true",
        help="only the catch-up scenario: many loggers draining a day's backlog at once into one "
        "MariaDB, then into a 3-node Galera cluster (bench/catchup.py; results/catchup.json)",
    )
    args = parser.parse_args(argv)
    if args.catchup:
        from . import catchup

        return catchup.main(
            quick=args.quick, out=args.out if args.out != DEFAULT_OUT else catchup.DEFAULT_OUT
        )
    if not shutil.which("mariadbd", path="/usr/sbin:/usr/bin:/sbin:/bin"):
        print("bench: mariadbd not found (apt-get install mariadb-server)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    plan = Plan.make(args.quick)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {text}", file=sys.stderr, flush=True)

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
        results = run_all(plan, work, say)
    else:
        # not /tmp if it is a tmpfs: write_bytes and fsync must hit a real disk
        base = Path(os.environ.get("EDGELOG_BENCH_TMP", "/var/tmp"))  # noqa: S108 - mkdtemp below
        with tempfile.TemporaryDirectory(prefix="edgelog-bench-", dir=base) as tmp:
            results = run_all(plan, Path(tmp), say)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
