"""`python -m bench.layout [--rows N] [--out FILE]`: the table layout of issue 15, measured.

1. Bytes per row: the same N readings of the default profile (1 Hz), written by the
   real sink (binary path) into a table of the old layout (every register DOUBLE) and
   one of the new (FLOAT for the PAC3100's float32 registers), side by side in one
   run; then each table's data and index size (InnoDB's `data_length` and
   `index_length` after ANALYZE TABLE, and the .ibd file) per row. The per-minute and
   per-15-minute tables the logger keeps for the same readings are measured too.
2. The drain with the aggregate tables and without: the real `edgelog sync --drain`
   (bench.run's `cli_drain`, the time of SyncWorker.drain(), which includes writing
   the aggregates at its end) on copies of one buffer, alternated, median of pairs.
3. The report of a week at 1 Hz (604,800 readings) read from every raw row and from
   the per-minute table (`report.build`, the figures' input), alternated.

Figures go to docs/performance.md ("Table layout"); this prints them and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
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

from .data import build_buffer
from .run import SITE, TABLE, Bench, Plan, _copy_buffer

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
        path = _copy_buffer(built.path, bench.work / f"layout-{layout}.sqlite3")
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
            SyncWorker(buffer, sink, units, 2000, aggregates=kept).drain()
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
            r = bench.cli_drain(built, tag=f"agg{int(on)}_{i}", aggregates=on)
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
    n = 7 * 86400
    built = build_buffer(bench.work / "week.sqlite3", n, interval_s=1.0, end=period.end_ts)
    account = bench.account("report_week")
    cfg = bench.config(bench.config_text(account, built.path))
    buffer = Buffer(built.path, create=False)
    sink = MariaDBSink(cfg.mariadb, SITE, types=column_types(PAC3100.registers))
    try:
        SyncWorker(buffer, sink, cfg.columns(), 2000, aggregates=Aggregates(sink, buffer)).drain()
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
    return {"readings": n, "seconds": times, "rows_and_source": rows, "speedup": raw_s / table_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layout", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--drain-rows", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=3, help="drain pairs, alternated (median)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "layout.json"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgelog-layout-"))

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    bench = Bench(Plan.make(quick=True), work, say)
    started = time.time()
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
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    s, d = result["sizes"], result["drain"]
    per_year = s["gib_per_year_at_1hz"]
    w = result["report_week"]
    print(
        f"bytes/row (data+index): DOUBLE {s['double']['data_and_index_per_row']:.1f}, "
        f"FLOAT {s['float']['data_and_index_per_row']:.1f} "
        f"({100 * s['saved_share_data_and_index']:.1f} % less; data alone "
        f"{100 * s['saved_share_data']:.1f} % less)\n"
        f"per year at 1 Hz (GiB): {json.dumps({k: round(v, 3) for k, v in per_year.items()})}\n"
        f"drain rows/s: without aggregates {d['without_rows_per_s']:,.0f}, with {d['with_rows_per_s']:,.0f} "
        f"(ratio {d['ratio_median']:.2f})\n"
        f"report of a week, build(): raw {median(w['seconds']['raw']):.1f} s, per-minute table "
        f"{median(w['seconds']['table']):.1f} s (x{w['speedup']:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
