"""1 paths and 1 profile. The write paths side by side: the same rows drained in this
process by the real `SyncWorker.drain()` with four sinks (this version's binary path,
the bench's LOAD DATA sink, the plain text INSERT, and v0.1's read plus text INSERT),
with this process's and MariaDB's CPU per row. Then where the time of a drain goes:
the binary and the v0.1 drain again under cProfile (Python's deterministic profiler,
``builtins=False``: it times every Python call, which slows Python-heavy steps such as
v0.1's formatting more than the others, so compare the steps' shares, not their
seconds with the rows/s above), and the read-ahead thread's CPU from /proc."""

from __future__ import annotations

import cProfile
import io
import pstats
import re
import threading
import time
from typing import Any

from edgelog.buffer import Buffer
from edgelog.config import SyncConfig
from edgelog.sync import MariaDBSink, SyncWorker
from edgelog.timings import Timings

from .ceiling import ceiling
from .data import BuiltBuffer
from .kit import BATCH, ROOT, SITE, Bench, copy_buffer, remove_buffer, timed
from .legacy import LegacyReads
from .loaddata import LoadDataSink
from .procs import thread_cpu_seconds
from .table import Line, n

TITLE = "write paths side by side, and where the time goes"
VARIANTS = ("binary", "load_data", "text", "v0.1")
#: The reader thread of edgelog/buffer/batch.py (a ThreadPoolExecutor's thread_name_prefix).
READ_AHEAD_THREAD = "edgelog-read"
READ_AHEAD = "SQLite read (read-ahead thread CPU)"
#: The steps of a drain under cProfile: (file, function, label); cumulative wall seconds.
STEPS = {
    "binary": [
        ("edgelog/sync/wire.py", "send_execute", "sending EXECUTEs (blocks while MariaDB is busy)"),
        ("edgelog/sync/wire.py", "read_ok", "waiting for MariaDB (EXECUTE answers)"),
        ("edgelog/sync/wire.py", "execute_body", "packing rows (binary protocol)"),
        ("edgelog/sync/wire.py", "prepare", "PREPARE (once per statement shape)"),
        ("edgelog/buffer/store.py", "unsent", "unsent() in the sync thread (waits for the read-ahead)"),
    ],
    "v0.1": [
        ("pymysql/cursors.py", "executemany", "executemany (format + send + wait)"),
        ("pymysql/connections.py", "query", "sending INSERTs + waiting for MariaDB"),
        ("bench/legacy.py", "unsent", "reading the batch through peewee's model layer"),
    ],
}
COMMON_STEPS = [
    ("pymysql/connections.py", "commit", "COMMIT"),
    ("edgelog/buffer/store.py", "mark_sent", "mark_sent() (SQLite commit)"),
]


def run(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    built = bench.built(bench.plan.n_compare)
    with timed(bench.say, f"write paths side by side ({built.rows:,} rows, in-process SyncWorker.drain)"):
        c = ceiling(bench, built)
        bench.drop_db(c["account"])
        paths = []
        for variant in VARIANTS:
            r = inprocess_drain(bench, built, variant)
            bench.drop_db(r["account"])
            r["ratio_vs_ceiling"] = r["rows_per_s"] / c["rows_per_s"]
            paths.append(r)
            bench.say(f"   {variant}: {r['rows_per_s']:,.0f} rows/s")
    with timed(bench.say, "profile: where the time goes (cProfile)"):
        profile: dict[str, Any] = {}
        for variant in ("binary", "v0.1"):
            r = breakdown(bench, built, variant)
            bench.drop_db(r["account"])
            profile[variant] = r
        profile["cprofile_binary"] = {
            "rows_per_s_under_cprofile": profile["binary"]["rows_per_s"],
            "top": profile["binary"].pop("cprofile_top"),
        }
        profile["v0.1"].pop("cprofile_top")
    return {"write_paths": {"rows": built.rows, "ceiling": c, "paths": paths}, "profile": profile}


def inprocess_drain(
    bench: Bench, built: BuiltBuffer, variant: str, profiler: cProfile.Profile | None = None
) -> dict[str, Any]:
    """`SyncWorker.drain()` in this process, on a copy of `built`, with one of the write paths:
    binary (this version), text (executemany), load_data (bench/loaddata.py), v0.1 (v0.1's
    peewee read, bench/legacy.py, and the text INSERT)."""
    account = bench.account(variant.replace(".", ""))
    bench.prepare_table(account)
    path = copy_buffer(built.path, bench.work / f"inproc-{variant}.sqlite3")
    cfg = bench.config(bench.config_text(account, path, max_mb=4096))
    buffer = Buffer(path, create=False)
    source: Any = LegacyReads(buffer) if variant == "v0.1" else buffer
    bench.settle()
    sink: Any
    if variant == "load_data":
        sink = LoadDataSink(cfg.mariadb, SITE)
    else:
        sink = MariaDBSink(cfg.mariadb, SITE, binary=variant == "binary")
    worker = SyncWorker(source, sink, cfg.columns(), BATCH, SyncConfig(), timings=Timings())
    cpu0, t0, c0 = bench.server_cpu(), time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    try:
        sent = worker.drain()
    finally:
        if profiler:
            profiler.disable()
    elapsed = time.perf_counter() - t0
    client = time.process_time() - c0
    server = bench.server_cpu() - cpu0
    read_ahead = _thread_cpu(READ_AHEAD_THREAD)
    stats = dict(sink.stats)
    sink.close()
    if source is not buffer:
        source.close()
    buffer.close()
    total, distinct = bench.count(account)
    remove_buffer(path)
    return {
        "variant": variant,
        "rows": total,
        "distinct": distinct,
        "sent": sent,
        "seconds": elapsed,
        "rows_per_s": sent / elapsed,
        "client_cpu_s": client,
        "client_cpu_us_per_row": client / sent * 1e6,
        "read_ahead_cpu_s": read_ahead,
        "server_cpu_s": server,
        "server_cpu_us_per_row": server / sent * 1e6,
        "sink_stats": stats,
        "account": account.database,
    }


def breakdown(bench: Bench, built: BuiltBuffer, variant: str) -> dict[str, Any]:
    """An in-process drain under cProfile: the cumulative wall time of its steps (the sync
    thread), the read-ahead thread's CPU, and the functions with the most own time."""
    profiler = cProfile.Profile(builtins=False)
    result = inprocess_drain(bench, built, variant, profiler)
    stats = pstats.Stats(profiler)
    steps: dict[str, float] = {}
    calls: dict[str, int] = {}
    for suffix, function, label in STEPS[variant] + COMMON_STEPS:
        found = _cumulative(stats, suffix, function)
        if found is not None:
            steps[label], calls[label] = round(found[0], 3), found[1]
    if variant == "v0.1":
        outer = steps.get("executemany (format + send + wait)", 0.0)
        inner = steps.get("sending INSERTs + waiting for MariaDB", 0.0)
        steps["formatting values (PyMySQL escaping, in executemany)"] = round(outer - inner, 3)
    result["steps_cpu_s"] = {}
    if result["read_ahead_cpu_s"] is not None:
        steps[READ_AHEAD] = result["steps_cpu_s"][READ_AHEAD] = round(result["read_ahead_cpu_s"], 3)
    result["steps_wall_s"] = dict(sorted(steps.items(), key=lambda kv: -kv[1]))
    result["calls"] = calls
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
    result["cprofile_top"] = _trim_pstats(out.getvalue())
    return result


def _cumulative(stats: pstats.Stats, suffix: str, function: str) -> tuple[float, int] | None:
    """Cumulative seconds and calls of the function `function` defined in a file ending in
    `suffix` (None: never called)."""
    found = [
        (row[3], row[1])
        for (filename, _line, name), row in stats.stats.items()  # type: ignore[attr-defined]
        if name == function and filename.endswith(suffix)
    ]
    return (sum(x[0] for x in found), sum(x[1] for x in found)) if found else None


def _thread_cpu(prefix: str) -> float | None:
    """CPU seconds of this process's threads named `prefix`... (None: no such thread)."""
    threads = [t for t in threading.enumerate() if t.name.startswith(prefix) and t.native_id]
    return sum(thread_cpu_seconds(t.native_id) for t in threads) if threads else None  # type: ignore[arg-type]


def _trim_pstats(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    root = str(ROOT) + "/"
    venv = re.compile(r"\S*/site-packages/")
    return [venv.sub("", line.replace(root, "")) for line in lines[start:] if line.strip()]


def lines(r: dict[str, Any]) -> list[Line]:
    w = r["write_paths"]
    out = [
        (
            "1 paths",
            f"{p['variant']} (N={w['rows']:,}): rows/s, x ceiling; client/server us/row",
            f"{n(p['rows_per_s'])}, {p['ratio_vs_ceiling']:.2f}x; "
            f"{p['client_cpu_us_per_row']:.1f}/{p['server_cpu_us_per_row']:.1f}",
        )
        for p in w["paths"]
    ]
    b = r["profile"]["binary"]
    out.append(
        (
            "1 profile",
            "binary drain under cProfile: wall s; MariaDB CPU s",
            f"{b['seconds']:.2f}; {b['server_cpu_s']:.2f}",
        )
    )
    for step, seconds in list(b["steps_wall_s"].items())[:4]:
        out.append(("1 profile", f"  {step}", f"{seconds:.2f} s"))
    return out


def targets(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return []
