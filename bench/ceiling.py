"""What the drain is compared with: the server's own ingest of a ready-made file
(`LOAD DATA LOCAL`, the ceiling) and the naive loop (one INSERT a row, autocommit)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgelog.clock import utc_text
from edgelog.sync import connect
from edgelog.sync.mariadb import INSERT_COLUMNS, quote

from .data import BuiltBuffer, read_rows
from .kit import SITE, TABLE, Bench
from .loaddata import TsvFormatter, load_bytes, open_loading


def ready_file(bench: Bench, built: BuiltBuffer) -> Path:
    """The ceiling's ready-made file: the buffer's rows as LOAD DATA text (made once)."""
    path = built.path.with_suffix(".tsv")
    if not path.exists():
        formatter = TsvFormatter(SITE, built.buffer_id, len(bench.columns))
        with path.open("wb") as out:
            after = 0
            while rows := read_rows(built.path, after, 50_000):
                out.write(formatter.lines(rows).encode())
                after = rows[-1][0]
    return path


def ceiling(
    bench: Bench, built: BuiltBuffer, transport: str = "socket", with_history: bool = True
) -> dict[str, Any]:
    """LOAD DATA LOCAL INFILE of the ready-made file, one statement, as the logger's user."""
    ready = ready_file(bench, built)
    account = bench.account("ceiling")
    bench.prepare_table(account, with_history)
    cfg = bench.config(bench.config_text(account, built.path, transport))
    bench.settle()
    conn = open_loading(cfg.mariadb)

    def chunks() -> Iterator[bytes]:
        with ready.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    try:
        cpu0, t0 = bench.server_cpu(), time.perf_counter()
        warnings = load_bytes(conn, TABLE, [*INSERT_COLUMNS, *bench.columns], chunks())
        conn.commit()
        elapsed = time.perf_counter() - t0
        server = bench.server_cpu() - cpu0
    finally:
        conn.close()
    total, distinct = bench.count(account)
    return {
        "what": "LOAD DATA LOCAL INFILE of a ready-made file, one statement",
        "transport": transport,
        "table_held_history_rows": bench.plan.history_rows if with_history else 0,
        "rows": total,
        "distinct": distinct,
        "warnings": warnings,
        "file_bytes": ready.stat().st_size,
        "seconds": elapsed,
        "rows_per_s": built.rows / elapsed,
        "server_cpu_s": server,
        "server_cpu_us_per_row": server / built.rows * 1e6,
        "account": account.database,
    }


def naive(bench: Bench, built: BuiltBuffer, transport: str = "socket") -> dict[str, Any]:
    """One INSERT per row, autocommit, on a sample; rows/s extrapolated."""
    account = bench.account("naive")
    bench.prepare_table(account)
    cfg = bench.config(bench.config_text(account, built.path, transport))
    rows = read_rows(built.path, 0, bench.plan.naive_sample)
    names = ", ".join(quote(c) for c in (*INSERT_COLUMNS, *bench.columns))
    marks = ", ".join(["%s"] * (len(INSERT_COLUMNS) + len(bench.columns)))
    sql = f"INSERT INTO {quote(TABLE)} ({names}) VALUES ({marks}) ON DUPLICATE KEY UPDATE seq = seq"
    bench.settle()
    conn = connect(cfg.mariadb, autocommit=True)
    try:
        with conn.cursor() as cur:
            t0 = time.perf_counter()
            for seq, meter, at, ok, error, *values in rows:
                cur.execute(sql, (SITE, meter, built.buffer_id, seq, utc_text(at), ok, error, *values))
            elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    bench.drop(account)
    return {
        "what": "one INSERT per row, autocommit (a sample, extrapolated)",
        "transport": transport,
        "sample_rows": len(rows),
        "seconds": elapsed,
        "rows_per_s": len(rows) / elapsed,
    }
