"""`python -m bench.layout [--rows N] [--out FILE]`: the table layout of issue 15, measured.

1. Bytes per row: the same N readings of the default profile (1 Hz), written by the
   real sink (binary path) into a table of the old layout (every register DOUBLE) and
   one of the new (FLOAT for the PAC3100's float32 registers), side by side in one
   run; then each table's data and index size (InnoDB's `data_length` and
   `index_length` after ANALYZE TABLE, and the .ibd file) per row. The per-minute and
   per-15-minute tables the logger keeps for the same readings are measured too.
2. The drain with the aggregate tables and without: the real `edgelog sync --drain`
   (bench/logger.py's `cli_drain`: the drain's time from its timings log, which
   includes writing the aggregates at its end) on copies of one buffer, alternated,
   median of pairs.
3. The report of a week at 1 Hz (604,800 readings) read from every raw row and from
   the per-minute table (`report.build`, the figures' input), alternated.

Figures go to docs/performance.md ("Table layout"); this prints them and writes JSON.
`python -m bench --only layout [--quick]` runs 1 and 2 (and 3 unless --quick) with the
bench's plan and prints them in its table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

from edgelog.buffer import Buffer
from edgelog.config import MariaDBConfig
from edgelog.profiles import PAC3100
from edgelog.sync import MariaDBSink, SyncWorker
from edgelog.sync.aggregates import Aggregates
from edgelog.sync.schema import column_types
from edgelog.timings import Timings

from .data import build_buffer
from .kit import SITE, TABLE, Bench, copy_buffer, say_since, timed, work_dir
from .logger import cli_drain
from .plan import Plan
from .table import Line, n

TITLE = "table layout: bytes per row, the aggregates' cost, a week's report"

YEAR_S = 365 * 86400


def table_bytes(bench: Bench, database: str, table: str) -> dict[str, Any]:
    conn = bench.db.root()
    try:
        with conn.cursor() as cur:
            cur.execute(f"ANALYZE TABLE `{database}`.`{table}`")
            cur.fetchall()
            cur.execute(f"SELECT COUNT(*) FROM `{database}`.`{table}`")
            (rows,) = cur.fetchone()
            cur.execute(
                "SELECT data_length, index_length, avg_row_length FROM information_schema.tables "
                "WHERE table_schema = %s AND table_name = %s",
                (database, table),
            )
            data, index, avg = cur.fetchone()
    finally:
        conn.close()
    ibd = bench.db.datadir / database / f"{table}.ibd"
    file_bytes = ibd.stat().st_size if ibd.exists() else None
    return {
        "rows": int(rows),
        "data_length": int(data),
        "index_length": int(index),
        "avg_row_length": int(avg),
        "data_per_row": data / rows,
        "data_and_index_per_row": (data + index) / rows,
        "ibd_file_bytes": file_bytes,
        "ibd_per_row": file_bytes / rows if file_bytes else None,
    }


def sizes(bench: Bench, n: int) -> dict[str, Any]:
    """The same rows into the old and the new layout (and the aggregate tables of the new)."""
    built = bench.built(n, interval_s=1.0)
    units = {r.name: r.unit for r in PAC3100.registers}
    out: dict[str, Any] = {"rows": n, "interval_s": 1.0}
    for layout, types in (("double", None), ("float", column_types(PAC3100.registers))):
        account = bench.account(f"layout_{layout}")
        path = copy_buffer(built.path, bench.work / f"layout-{layout}.sqlite3")
        cfg = MariaDBConfig(
            user=account.user,
            password_file=account.password_file,
            unix_socket=bench.db.socket,
            database=account.database,
        )
        buffer = Buffer(path, create=False)
        sink = MariaDBSink(cfg, SITE, types=types)
        kept = Aggregates(sink, buffer) if layout == "float" else None
        try:
            SyncWorker(buffer, sink, units, 2000, aggregates=kept, timings=Timings()).drain()
        finally:
            sink.close()
            buffer.close()
        bench.settle()
        out[layout] = table_bytes(bench, account.database, TABLE)
        if layout == "float":
            for suffix in ("1min", "15min"):
                out[f"float_{suffix}"] = table_bytes(bench, account.database, f"{TABLE}_{suffix}")
        bench.drop(account)
    d, f = out["double"], out["float"]
    out["saved_share_data"] = 1 - f["data_length"] / d["data_length"]
    out["saved_share_data_and_index"] = 1 - (f["data_length"] + f["index_length"]) / (
        d["data_length"] + d["index_length"]
    )
    per_year = {k: out[k]["data_and_index_per_row"] * YEAR_S for k in ("double", "float")}
    per_year["float_1min"] = out["float_1min"]["data_and_index_per_row"] * YEAR_S / 60
    per_year["float_15min"] = out["float_15min"]["data_and_index_per_row"] * YEAR_S / 900
    out["gib_per_year_at_1hz"] = {k: v / 2**30 for k, v in per_year.items()}
    return out


def drains(bench: Bench, n: int, pairs: int = 3) -> dict[str, Any]:
    """`edgelog sync --drain` of one buffer with and without the aggregate tables, alternated."""
    built = bench.built(n, interval_s=1.0)
    runs = []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        pair = {}
        for on in order:
            r = cli_drain(bench, built, tag=f"agg{int(on)}_{i}", aggregates=on)
            bench.drop_db(r["account"])
            pair["with" if on else "without"] = r
        pair["ratio"] = pair["with"]["rows_per_s"] / pair["without"]["rows_per_s"]
        runs.append(pair)
        bench.say(
            f"   pair {i + 1}: without {pair['without']['rows_per_s']:,.0f} rows/s, "
            f"with {pair['with']['rows_per_s']:,.0f} rows/s ({pair['ratio']:.2f})"
        )
    return {
        "rows": n,
        "interval_s": 1.0,
        "pairs": runs,
        "without_rows_per_s": median(p["without"]["rows_per_s"] for p in runs),
        "with_rows_per_s": median(p["with"]["rows_per_s"] for p in runs),
        "ratio_median": median(p["ratio"] for p in runs),
    }


def report_week(bench: Bench, repeats: int = 2) -> dict[str, Any]:
    """report.build() of a week at 1 Hz from the raw rows and from the per-minute table."""
    from edgelog.report import Period, build

    period = Period.parse(week="2026-06-01")
    readings = 7 * 86400
    built = build_buffer(bench.work / "week.sqlite3", readings, interval_s=1.0, end=period.end_ts)
    account = bench.account("report_week")
    cfg = bench.config(bench.config_text(account, built.path))
    buffer = Buffer(built.path, create=False)
    sink = MariaDBSink(cfg.mariadb, SITE, types=column_types(PAC3100.registers))
    try:
        aggregates = Aggregates(sink, buffer)
        SyncWorker(buffer, sink, cfg.columns(), 2000, aggregates=aggregates, timings=Timings()).drain()
    finally:
        sink.close()
        buffer.close()
    bench.settle()
    times: dict[str, list[float]] = {"raw": [], "table": []}
    rows = {}
    for i in range(repeats):
        for way in ("raw", "table") if i % 2 == 0 else ("table", "raw"):
            t0 = time.perf_counter()
            agg, _, label = build(cfg, period, aggregates=way == "table")
            times[way].append(time.perf_counter() - t0)
            rows[way] = (agg.total_rows, label)
    bench.drop(account)
    raw_s, table_s = median(times["raw"]), median(times["table"])
    return {"readings": readings, "seconds": times, "rows_and_source": rows, "speedup": raw_s / table_s}


def run(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    plan = bench.plan
    out: dict[str, Any] = {}
    with timed(bench.say, f"layout 1. bytes per row, {plan.layout_rows:,} rows, DOUBLE and FLOAT layouts"):
        out["sizes"] = sizes(bench, plan.layout_rows)
    with timed(bench.say, f"layout 2. sync --drain of {plan.layout_rows:,} rows with and without aggregates"):
        out["drain"] = drains(bench, plan.layout_rows, plan.layout_pairs)
    if not plan.quick:
        with timed(bench.say, "layout 3. report of a week at 1 Hz: every raw row vs the per-minute table"):
            out["report_week"] = report_week(bench)
    return {"layout": out}


def lines(r: dict[str, Any]) -> list[Line]:
    layout = r["layout"]
    s, d = layout["sizes"], layout["drain"]
    out = [
        (
            "8 layout",
            f"bytes per row (data + indexes), N={s['rows']:,}: DOUBLE, FLOAT; saved",
            f"{s['double']['data_and_index_per_row']:.1f}, {s['float']['data_and_index_per_row']:.1f}; "
            f"{100 * s['saved_share_data_and_index']:.1f} %",
        ),
        (
            "8 layout",
            "GiB a year at 1 Hz: DOUBLE, FLOAT; + per-minute, per-15-minute tables",
            ", ".join(
                f"{s['gib_per_year_at_1hz'][k]:.2f}" for k in ("double", "float", "float_1min", "float_15min")
            ),
        ),
        (
            "8 layout",
            f"sync --drain, N={d['rows']:,}: rows/s without, with aggregates; ratio",
            f"{n(d['without_rows_per_s'])}, {n(d['with_rows_per_s'])}; {d['ratio_median']:.2f}",
        ),
    ]
    if "report_week" in layout:
        w = layout["report_week"]
        out.append(
            (
                "8 layout",
                "report of a week: build() s from raw rows, from the per-minute table",
                f"{median(w['seconds']['raw']):.1f}, {median(w['seconds']['table']):.1f} "
                f"(x{w['speedup']:.1f})",
            )
        )
    return out


def targets(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layout", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--drain-rows", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=3, help="drain pairs, alternated (median)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "layout.json"
    )
    args = parser.parse_args(argv)
    say = say_since(time.monotonic())
    started = time.time()
    with work_dir(None, "layout-") as work:
        bench = Bench(Plan.make(quick=True), work, say)
        bench.start()
        try:
            result: dict[str, Any] = {"mariadb": bench.db.version()}
            say(f"1. bytes per row, {args.rows:,} rows, DOUBLE and FLOAT layouts")
            result["sizes"] = sizes(bench, args.rows)
            say(f"2. edgelog sync --drain of {args.drain_rows:,} rows with and without the aggregate tables")
            result["drain"] = drains(bench, args.drain_rows, args.pairs)
            say("3. report of a week at 1 Hz: every raw row vs the per-minute table")
            result["report_week"] = report_week(bench)
            result["seconds"] = time.time() - started
        finally:
            bench.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("\n".join(f"{a}  {b}: {c}" for a, b, c in lines({"layout": result})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
