"""1. The drain against its references: the real `edgelog sync --drain` of N readings
against the LOAD DATA ceiling (three pairs, alternated, median) and the naive loop,
into a table holding another logger's rows; the same into an empty table, and over
TCP. The drained table is compared with the ceiling's row by row, and a sample of it
with the buffer file, value for value."""

from __future__ import annotations

from statistics import median
from typing import Any

from edgelog.clock import utc_text
from edgelog.sync.mariadb import quote

from .ceiling import ceiling, naive
from .data import BuiltBuffer, sample_rows
from .kit import SITE, TABLE, Bench, timed
from .logger import cli_drain
from .table import Line, n, target

TITLE = "drain vs LOAD DATA ceiling vs naive loop"
PAIRS = 3


def run(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    plan = bench.plan
    built = bench.built(plan.n_drain)
    out: dict[str, Any] = {
        "buffer": {
            "rows": built.rows,
            "file_bytes": built.file_bytes,
            "bytes_per_reading": built.file_bytes / built.rows,
            "build_s": built.seconds,
        }
    }
    with timed(
        bench.say, f"1. drain of {built.rows:,} rows vs LOAD DATA ceiling (x{PAIRS}) and the naive loop"
    ):
        out["drain"] = _pairs(bench, built)
    with timed(bench.say, f"1b. drain vs ceiling over TCP 127.0.0.1 ({plan.n_tcp:,} rows)"):
        small = bench.built(plan.n_tcp)
        c = ceiling(bench, small, transport="tcp")
        d = cli_drain(bench, small, transport="tcp", tag="drain_tcp")
        bench.drop_db(c["account"])
        bench.drop_db(d["account"])
    out["drain_tcp"] = {
        "rows": plan.n_tcp,
        "ceiling": c,
        "drain": d,
        "ratio_vs_ceiling": d["rows_per_s"] / c["rows_per_s"],
    }
    return out


def _pairs(bench: Bench, built: BuiltBuffer) -> dict[str, Any]:
    pairs = []
    keep: list[str] = []
    for i in range(PAIRS):
        # each measurement starts from a settled server (Bench.settle); the order alternates
        if i % 2 == 0:
            c = ceiling(bench, built)
            d = cli_drain(bench, built, tag=f"drain{i}")
        else:
            d = cli_drain(bench, built, tag=f"drain{i}")
            c = ceiling(bench, built)
        pairs.append({"ceiling": c, "drain": d, "ratio": d["rows_per_s"] / c["rows_per_s"]})
        if i == 0:
            keep = [c["account"], d["account"]]
        else:
            bench.drop_db(c["account"])
            bench.drop_db(d["account"])
        bench.say(f"   pair {i + 1}: drain {d['rows_per_s']:,.0f} rows/s, ceiling {c['rows_per_s']:,.0f}")
    # the same into an empty table, where MariaDB's first statement is faster
    empty_c = ceiling(bench, built, with_history=False)
    empty_d = cli_drain(bench, built, tag="drain_empty", with_history=False)
    bench.drop_db(empty_c["account"])
    bench.drop_db(empty_d["account"])
    content = compare_tables(bench, keep[0], keep[1])
    content["drain_vs_buffer_sample_mismatches"] = check_against_buffer(bench, keep[1], built)
    for db in keep:
        bench.drop_db(db)
    reference = naive(bench, built)
    drain_rate = median(p["drain"]["rows_per_s"] for p in pairs)
    ceiling_rate = median(p["ceiling"]["rows_per_s"] for p in pairs)
    return {
        "rows": built.rows,
        "transport": "unix socket",
        "pairs": pairs,
        "drain_rows_per_s": drain_rate,
        "ceiling_rows_per_s": ceiling_rate,
        "naive": reference,
        "ratio_vs_ceiling": drain_rate / ceiling_rate,
        "ratio_vs_ceiling_per_pair": [p["ratio"] for p in pairs],
        "ratio_vs_naive": drain_rate / reference["rows_per_s"],
        "content": content,
        "table_held_history_rows": bench.plan.history_rows,
        "empty_table": {
            "ceiling": empty_c,
            "drain": empty_d,
            "ratio_vs_ceiling": empty_d["rows_per_s"] / empty_c["rows_per_s"],
        },
    }


def compare_tables(bench: Bench, a: str, b: str) -> dict[str, int]:
    """Rows of two databases' tables that differ in any column (NULL-safe), by identity."""
    cols = ["meter", "measured_at", "clock_ok", "error", *bench.columns]
    same = " AND ".join(f"x.{quote(c)} <=> y.{quote(c)}" for c in cols)
    conn = bench.db.root()
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT COUNT(*), SUM(NOT ({same})) FROM `{a}`.`{TABLE}` x "
                f"JOIN `{b}`.`{TABLE}` y USING (site, buffer_id, seq) WHERE x.site = %s",
                (SITE,),
            )
            joined, differ = cur.fetchone()
    finally:
        conn.close()
    return {"joined": int(joined), "differ": int(differ or 0)}


def check_against_buffer(bench: Bench, database: str, built: BuiltBuffer, sample: int = 2000) -> int:
    """Rows (every k-th) whose MariaDB values differ from the buffer's; 0 expected."""
    step = max(1, built.rows // sample)
    rows = sample_rows(built.path, step, sample)
    conn = bench.db.root()
    try:
        with conn.cursor() as cur:
            cols = ", ".join(
                quote(c) for c in ["seq", "meter", "measured_at", "clock_ok", "error", *bench.columns]
            )
            cur.execute(
                f"SELECT {cols} FROM `{database}`.`{TABLE}` "
                "WHERE site = %s AND seq %% %s = 0 ORDER BY seq LIMIT %s",
                (SITE, step, sample),
            )
            got = {r[0]: r for r in cur.fetchall()}
    finally:
        conn.close()
    bad = 0
    for seq, meter, at, ok, error, *values in rows:
        mine = got.get(seq)
        if (
            mine is None
            or mine[1] != meter
            or mine[2].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] != utc_text(at)
            or bool(mine[3]) != bool(ok)
            or mine[4] != error
            or list(mine[5:]) != values
        ):
            bad += 1
    return bad


def lines(r: dict[str, Any]) -> list[Line]:
    d = r["drain"]
    where = f"N={d['rows']:,}, unix socket, table holding {d['table_held_history_rows']:,} rows"
    per_pair = ", ".join(f"{x:.2f}" for x in d["ratio_vs_ceiling_per_pair"])
    e, c, t = d["empty_table"], d["content"], r["drain_tcp"]
    return [
        ("1 drain", f"edgelog sync --drain, {where}", f"{n(d['drain_rows_per_s'])} rows/s"),
        ("1 drain", "ceiling: LOAD DATA LOCAL of a ready-made file", f"{n(d['ceiling_rows_per_s'])} rows/s"),
        ("1 drain", "naive: 1 INSERT/row, autocommit", f"{n(d['naive']['rows_per_s'])} rows/s"),
        ("1 drain", "drain / ceiling (each pair)", f"{d['ratio_vs_ceiling']:.2f} ({per_pair})"),
        ("1 drain", "drain / naive", f"{d['ratio_vs_naive']:.1f}"),
        (
            "1 drain",
            "into an empty table instead: drain / ceiling",
            f"{n(e['drain']['rows_per_s'])} / {n(e['ceiling']['rows_per_s'])} = {e['ratio_vs_ceiling']:.2f}",
        ),
        ("1 drain", "drain == ceiling table, row by row", f"{c['joined']:,} joined, {c['differ']} differ"),
        (
            "1 drain",
            f"TCP 127.0.0.1, N={t['rows']:,}: drain / ceiling",
            f"{n(t['drain']['rows_per_s'])} / {n(t['ceiling']['rows_per_s'])} = {t['ratio_vs_ceiling']:.2f}",
        ),
    ]


def targets(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    d = r["drain"]
    return [
        target(
            "drain / LOAD DATA ceiling",
            round(d["ratio_vs_ceiling"], 2),
            ">= 0.7",
            d["ratio_vs_ceiling"] >= 0.7,
        ),
        target("drain / naive loop", round(d["ratio_vs_naive"], 1), ">= 15", d["ratio_vs_naive"] >= 15),
    ]
