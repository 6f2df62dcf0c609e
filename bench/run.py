"""The measurements of `python -m bench` (see bench/__main__.py and docs/performance.md)."""

from __future__ import annotations

import contextlib
import cProfile
import functools
import io
import itertools
import json
import os
import pstats
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from edgelog.buffer import Buffer, Space
from edgelog.buffer.batch import UnsentReader
from edgelog.clock import utc_text
from edgelog.config import Config, MariaDBConfig, SyncConfig, parse
from edgelog.meter import plan_requests
from edgelog.profiles import PAC3100
from edgelog.sync import MariaDBSink, SyncWorker, connect, wire
from edgelog.sync import mariadb as sink_module
from edgelog.sync.connect import GuardedConnection
from edgelog.sync.mariadb import INSERT_COLUMNS, quote

from .data import BuiltBuffer, build_buffer, profile_columns, read_rows, sample_rows
from .loaddata import LoadDataSink, TsvFormatter, load_bytes, open_loading
from .procs import FsyncProbe, Sampler, cpu_seconds, median, percentile, terminate
from .server import LoggerAccount, PrivateMariaDB
from .sim import BusSimulator

ROOT = Path(__file__).resolve().parent.parent
SITE = "chapada-imperial"
#: The site of the rows a measurement's table holds before it starts (another logger's).
HISTORY_SITE = "outra-usina"
TABLE = "medicoes"
BATCH = 2000  # [mariadb] batch_size default
#: The multi-meter scenario puts at most this many meters on one bus (a PAC3100 line at 1 Hz).
METERS_PER_BUS = 4


@dataclass(frozen=True)
class Plan:
    quick: bool
    n_drain: int
    naive_sample: int
    n_compare: int
    n_tcp: int
    scaling_n: tuple[int, ...]
    n_live: int
    live_interval_s: float
    after_drain_s: float
    cadence_s: float
    meters: tuple[int, ...]
    meters_backlog: int
    meters_interval_s: float
    meters_run_s: float
    history_rows: int
    wear_s: float  # the measured window of the card-wear run (1 Hz), after wear_warmup_s
    wear_warmup_s: float

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(
                quick=True,
                n_drain=20_000,
                naive_sample=300,
                n_compare=10_000,
                n_tcp=10_000,
                scaling_n=(5_000, 20_000),
                n_live=50_000,
                live_interval_s=0.1,
                after_drain_s=2.0,
                cadence_s=15.0,
                meters=(1, 8, 32),
                meters_backlog=10_000,
                meters_interval_s=1.0,
                meters_run_s=4.0,
                history_rows=10_000,
                wear_s=15.0,
                wear_warmup_s=5.0,
            )
        return cls(
            quick=False,
            n_drain=1_000_000,
            naive_sample=2_000,
            n_compare=100_000,
            n_tcp=100_000,
            scaling_n=(10_000, 100_000, 1_000_000),
            n_live=1_000_000,
            live_interval_s=0.1,
            after_drain_s=10.0,
            cadence_s=600.0,
            meters=(1, 8, 32),
            meters_backlog=100_000,
            meters_interval_s=1.0,
            meters_run_s=10.0,
            history_rows=100_000,
            wear_s=600.0,
            wear_warmup_s=15.0,
        )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("EDGELOG_CONFIG", None)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _copy_buffer(src: Path, dst: Path) -> Path:
    for ext in ("", "-wal", "-shm"):
        Path(f"{dst}{ext}").unlink(missing_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _stats_ms(values: Sequence[float]) -> dict[str, float | None]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "p50_ms": ms(percentile(values, 50)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(max(values) if values else None),
        "n": len(values),
    }


class Timers:
    """Wall time (and, with `thread_cpu`, the calling thread's CPU time) spent in wrapped
    functions; per-call overhead ~1 µs, and only batch- or chunk-level functions are wrapped."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str, thread_cpu: bool = False) -> None:
        original = getattr(owner, name)
        timers = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            w0 = time.perf_counter()
            c0 = time.thread_time() if thread_cpu else 0.0
            try:
                return original(*args, **kwargs)
            finally:
                timers.wall[label] += time.perf_counter() - w0
                if thread_cpu:
                    timers.cpu[label] += time.thread_time() - c0
                timers.calls[label] += 1

        own = not isinstance(owner, type) or name in vars(owner)
        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original) if own else delattr(owner, name))

    def undo(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


class Bench:
    def __init__(self, plan: Plan, work: Path, say: Callable[[str], None]):
        self.plan = plan
        self.work = work
        self.say = say
        self.db = PrivateMariaDB(work / "mariadb")
        self.sim: BusSimulator | None = None
        self._accounts = 0
        self._built: dict[tuple[Any, ...], BuiltBuffer] = {}
        self.units = {r.name: r.unit for r in PAC3100.registers}
        self.columns = profile_columns()
        self._history: str | None = None

    # -- set-up ------------------------------------------------------------------------

    def start(self) -> None:
        self.db.start()

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()
        self.db.stop()

    def settle(self, timeout: float = 120.0) -> dict[str, float]:
        """Let MariaDB finish the previous measurement's background work (dirty pages,
        purge) before the next one starts, so no measurement pays for another's."""
        conn = self.db.root()
        t0 = time.perf_counter()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT @@GLOBAL.innodb_max_dirty_pages_pct, @@GLOBAL.innodb_io_capacity, "
                    "@@GLOBAL.innodb_io_capacity_max"
                )
                saved, capacity, capacity_max = cur.fetchone()
                # flush now, and fast (the default io_capacity of 200 pages/s would take minutes)
                cur.execute("SET GLOBAL innodb_io_capacity_max = 100000, innodb_io_capacity = 50000")
                cur.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
                try:
                    while time.perf_counter() - t0 < timeout:
                        cur.execute(
                            "SELECT variable_name, variable_value FROM information_schema.global_status "
                            "WHERE variable_name IN "
                            "('INNODB_BUFFER_POOL_PAGES_DIRTY', 'INNODB_HISTORY_LIST_LENGTH')"
                        )
                        status = {name.upper(): int(value) for name, value in cur.fetchall()}
                        if status.get("INNODB_BUFFER_POOL_PAGES_DIRTY", 0) < 100 and (
                            status.get("INNODB_HISTORY_LIST_LENGTH", 0) < 1000
                        ):
                            break
                        time.sleep(0.1)
                finally:
                    cur.execute(f"SET GLOBAL innodb_max_dirty_pages_pct = {float(saved)}")
                    cur.execute(
                        f"SET GLOBAL innodb_io_capacity = {int(capacity)}, "
                        f"innodb_io_capacity_max = {int(capacity_max)}"
                    )
        finally:
            conn.close()
        time.sleep(0.2)
        return {"seconds": time.perf_counter() - t0}

    def server_cpu(self) -> float:
        assert self.db.proc is not None
        return cpu_seconds(self.db.proc.pid)

    def account(self, tag: str) -> LoggerAccount:
        self._accounts += 1
        return self.db.logger_account(f"bench_{tag}_{self._accounts}", self.work / "secrets")

    def drop(self, account: LoggerAccount) -> None:
        self.drop_db(account.database)

    def drop_db(self, database: str) -> None:
        conn = self.db.root()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        finally:
            conn.close()

    def history(self) -> str:
        """A table of `history_rows` readings of another logger (HISTORY_SITE), copied into
        every measurement's table before it starts: the central table is never empty, and
        MariaDB inserts into an empty InnoDB table faster (no undo log per row for the
        first statement), which would flatter whichever measurement starts first."""
        if self._history is None:
            built = self.built(self.plan.history_rows, meters=("pac-outra",), interval_s=1.0)
            path = built.path.with_suffix(".history.tsv")
            path.write_bytes(
                TsvFormatter(HISTORY_SITE, built.buffer_id, len(self.columns))
                .lines(read_rows(built.path))
                .encode()
            )
            conn = self.db.root()
            try:
                with conn.cursor() as cur:
                    cur.execute("CREATE DATABASE bench_history")
                    cur.execute("USE bench_history")
                    cur.execute(sink_module.create_table_sql(TABLE, self.units))
            finally:
                conn.close()
            guarded = open_loading(
                MariaDBConfig(user="root", unix_socket=self.db.socket, database="bench_history")
            )
            try:
                load_bytes(guarded, TABLE, [*INSERT_COLUMNS, *self.columns], [path.read_bytes()])
                guarded.commit()
            finally:
                guarded.close()
            self._history = "bench_history"
        return self._history

    def prepare_table(self, account: LoggerAccount, with_history: bool = True) -> None:
        """Create the measurement's table as the logger would (MariaDBSink.ensure_table, as
        its user), then copy the history rows into it."""
        cfg = self.config(self.config_text(account, self.work / "unused.sqlite3"))
        sink = MariaDBSink(cfg.mariadb, SITE)
        sink.ensure_table(self.units)
        sink.close()
        if with_history:
            names = ", ".join(quote(c) for c in (*INSERT_COLUMNS, *self.columns))
            conn = self.db.root()
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        f"INSERT INTO `{account.database}`.`{TABLE}` ({names}) "
                        f"SELECT {names} FROM `{self.history()}`.`{TABLE}`"
                    )
            finally:
                conn.close()

    def count(self, account: LoggerAccount) -> tuple[int, int]:
        """(rows, distinct identities) of this site in the account's table (history excluded)."""
        conn = self.db.root()
        try:
            with conn.cursor() as cur:
                table = f"`{account.database}`.`{TABLE}`"
                cur.execute(
                    f"SELECT COUNT(*), COUNT(DISTINCT site, buffer_id, seq) FROM {table} WHERE site = %s",
                    (SITE,),
                )
                total, distinct = cur.fetchone()
                return int(total), int(distinct)
        finally:
            conn.close()

    def config_text(
        self,
        account: LoggerAccount,
        buffer: Path,
        transport: str = "socket",
        meters: Sequence[dict[str, Any]] = (),
        sync_interval_s: float | None = None,
        max_mb: float | None = None,
        aggregates: bool = False,
    ) -> str:
        """The config of a measurement. The aggregate tables are off unless asked for: the
        drain is compared with LOAD DATA, which writes the readings table only."""
        lines = [f'site = "{SITE}"', "", "[buffer]", f'path = "{buffer}"']
        if max_mb is not None:
            lines.append(f"max_mb = {max_mb}")
        lines += ["", "[mariadb]", f'user = "{account.user}"', f'password_file = "{account.password_file}"']
        lines.append(f'database = "{account.database}"')
        if transport == "socket":
            lines.append(f'unix_socket = "{self.db.socket}"')
        else:
            lines += ['host = "127.0.0.1"', f"port = {self.db.port}"]
        lines.append(f"aggregates = {'true' if aggregates else 'false'}")
        if sync_interval_s is not None:
            lines += ["", "[sync]", f"interval_s = {sync_interval_s}"]
        for meter in meters or [{"name": "pac1", "port": 502, "unit_id": 126, "interval_s": 1.0}]:
            lines += [
                "",
                "[[meters]]",
                f'name = "{meter["name"]}"',
                'transport = "tcp"',
                'host = "127.0.0.1"',
                f"port = {meter['port']}",
                f"unit_id = {meter['unit_id']}",
                f"interval_s = {meter['interval_s']}",
                # within the bus's time budget: timeout_s < interval_s (edgelog refuses more)
                f"timeout_s = {meter.get('timeout_s', round(min(0.5, 0.75 * meter['interval_s']), 3))}",
            ]
        return "\n".join(lines) + "\n"

    def write_config(self, name: str, text: str) -> Path:
        path = self.work / f"{name}.toml"
        path.write_text(text)
        path.chmod(0o600)
        return path

    def config(self, text: str) -> Config:
        return parse(tomllib.loads(text), source="bench.toml")

    def built(self, n: int, meters: Sequence[str] = ("pac1",), interval_s: float = 0.1) -> BuiltBuffer:
        key = (n, tuple(meters), interval_s)
        if key not in self._built:
            path = self.work / f"backlog-{n}-{len(meters)}m-{interval_s}s.sqlite3"
            self.say(f"building a buffer of {n:,} readings ({len(meters)} meter(s))")
            self._built[key] = build_buffer(path, n, meters, interval_s)
        return self._built[key]

    def ready_file(self, built: BuiltBuffer) -> Path:
        """The ceiling's ready-made file: the buffer's rows as LOAD DATA text."""
        path = built.path.with_suffix(".tsv")
        if not path.exists():
            formatter = TsvFormatter(SITE, built.buffer_id, len(self.columns))
            with path.open("wb") as out:
                after = 0
                while True:
                    rows = read_rows(built.path, after, 50_000)
                    if not rows:
                        break
                    out.write(formatter.lines(rows).encode())
                    after = rows[-1][0]
        return path

    # -- 1. the drain and its references ---------------------------------------------------

    def ceiling(
        self, built: BuiltBuffer, transport: str = "socket", with_history: bool = True
    ) -> dict[str, Any]:
        """LOAD DATA LOCAL INFILE of the ready-made file, one statement, as the logger's user."""
        ready = self.ready_file(built)
        account = self.account("ceiling")
        self.prepare_table(account, with_history)
        cfg = self.config(self.config_text(account, built.path, transport))
        self.settle()
        conn = open_loading(cfg.mariadb)

        def chunks() -> Iterator[bytes]:
            with ready.open("rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        try:
            cpu0, t0 = self.server_cpu(), time.perf_counter()
            warnings = load_bytes(conn, TABLE, [*INSERT_COLUMNS, *self.columns], chunks())
            conn.commit()
            elapsed = time.perf_counter() - t0
            server = self.server_cpu() - cpu0
        finally:
            conn.close()
        total, distinct = self.count(account)
        return {
            "what": "LOAD DATA LOCAL INFILE of a ready-made file, one statement",
            "transport": transport,
            "table_held_history_rows": self.plan.history_rows if with_history else 0,
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

    def cli_drain(
        self,
        built: BuiltBuffer,
        transport: str = "socket",
        tag: str = "drain",
        with_history: bool = True,
        aggregates: bool = False,
    ) -> dict[str, Any]:
        """The real `edgelog sync --drain` (its cli.main(), under bench.probe, which times
        SyncWorker.drain() to the microsecond) on a copy of the buffer."""
        account = self.account(tag)
        self.prepare_table(account, with_history)
        buffer = _copy_buffer(built.path, self.work / f"{tag}.sqlite3")
        self.settle()
        text = self.config_text(account, buffer, transport, max_mb=4096, aggregates=aggregates)
        config = self.write_config(tag, text)
        out_json = self.work / f"{tag}.probe.json"
        cmd = [
            sys.executable,
            "-m",
            "bench.probe",
            str(out_json),
            "--",
            "--config",
            str(config),
            "sync",
            "--drain",
        ]
        cpu0, t0 = self.server_cpu(), time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT
        )
        sampler = Sampler(proc.pid, every=0.1).start()
        out, err = proc.communicate(timeout=3600)
        wall = time.perf_counter() - t0
        server = self.server_cpu() - cpu0
        sampler.stop()
        probe = json.loads(out_json.read_text()) if out_json.exists() else {}
        if proc.returncode != 0 or len(probe.get("drains", [])) != 1:
            raise RuntimeError(f"edgelog sync --drain failed ({proc.returncode}): {out} {err}")
        started, ended, sent = probe["drains"][0]
        seconds = ended - started
        total, distinct = self.count(account)
        for ext in ("", "-wal", "-shm"):
            Path(f"{buffer}{ext}").unlink(missing_ok=True)
        return {
            "what": "edgelog sync --drain (subprocess; time of SyncWorker.drain())",
            "table_held_history_rows": self.plan.history_rows if with_history else 0,
            "command_output": out.strip().splitlines()[-1:] if out.strip() else [],
            "transport": transport,
            "rows": total,
            "distinct": distinct,
            "sent": sent,
            "seconds": seconds,
            "wall_s": wall,
            "rows_per_s": sent / max(seconds, 1e-9),
            "rows_per_s_wall": sent / wall,
            "peak_rss_mib": sampler.peak_kib / 1024,
            "server_cpu_s": server,
            "server_cpu_us_per_row": server / max(sent, 1) * 1e6,
            "account": account.database,
        }

    def compare_tables(self, a: LoggerAccount | str, b: LoggerAccount | str) -> dict[str, int]:
        """Rows of two tables that differ in any column (NULL-safe), by identity."""
        da = a if isinstance(a, str) else a.database
        db = b if isinstance(b, str) else b.database
        cols = ["meter", "measured_at", "clock_ok", "error", *self.columns]
        same = " AND ".join(f"x.{quote(c)} <=> y.{quote(c)}" for c in cols)
        conn = self.db.root()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT COUNT(*), SUM(NOT ({same})) FROM `{da}`.`{TABLE}` x "
                    f"JOIN `{db}`.`{TABLE}` y USING (site, buffer_id, seq) WHERE x.site = %s",
                    (SITE,),
                )
                joined, differ = cur.fetchone()
        finally:
            conn.close()
        return {"joined": int(joined), "differ": int(differ or 0)}

    def check_against_buffer_db(self, database: str, built: BuiltBuffer, sample: int = 2000) -> int:
        """Rows (every k-th) whose MariaDB values differ from the buffer's; 0 expected."""
        step = max(1, built.rows // sample)
        rows = sample_rows(built.path, step, sample)
        conn = self.db.root()
        bad = 0
        try:
            with conn.cursor() as cur:
                cols = ", ".join(
                    quote(c) for c in ["seq", "meter", "measured_at", "clock_ok", "error", *self.columns]
                )
                table = f"`{database}`.`{TABLE}`"
                cur.execute(
                    f"SELECT {cols} FROM {table} WHERE site = %s AND seq %% %s = 0 ORDER BY seq LIMIT %s",
                    (SITE, step, sample),
                )
                got = {r[0]: r for r in cur.fetchall()}
        finally:
            conn.close()
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

    def naive(self, built: BuiltBuffer, transport: str = "socket") -> dict[str, Any]:
        """One INSERT per row, autocommit, on a sample; rows/s extrapolated."""
        account = self.account("naive")
        self.prepare_table(account)
        cfg = self.config(self.config_text(account, built.path, transport))
        rows = read_rows(built.path, 0, self.plan.naive_sample)
        names = ", ".join(quote(c) for c in (*INSERT_COLUMNS, *self.columns))
        marks = ", ".join(["%s"] * (len(INSERT_COLUMNS) + len(self.columns)))
        sql = f"INSERT INTO {quote(TABLE)} ({names}) VALUES ({marks}) ON DUPLICATE KEY UPDATE seq = seq"
        self.settle()
        conn = connect(cfg.mariadb, autocommit=True)
        try:
            with conn.cursor() as cur:
                t0 = time.perf_counter()
                for seq, meter, at, ok, error, *values in rows:
                    cur.execute(sql, (SITE, meter, built.buffer_id, seq, utc_text(at), ok, error, *values))
                elapsed = time.perf_counter() - t0
        finally:
            conn.close()
        self.drop(account)
        return {
            "what": "one INSERT per row, autocommit (a sample, extrapolated)",
            "transport": transport,
            "sample_rows": len(rows),
            "seconds": elapsed,
            "rows_per_s": len(rows) / elapsed,
        }

    # -- write paths side by side, and where the time goes ------------------------------

    def inprocess_drain(
        self,
        built: BuiltBuffer,
        variant: str,
        timers: Timers | None = None,
        profile: bool = False,
    ) -> dict[str, Any]:
        """SyncWorker.drain() in this process with one of the write paths:
        binary (this version), text (executemany), load_data (bench/loaddata.py),
        v0.1 (peewee read + text INSERT, the previous implementation)."""
        account = self.account(variant.replace(".", ""))
        self.prepare_table(account)
        buffer_path = _copy_buffer(built.path, self.work / f"inproc-{variant}.sqlite3")
        cfg = self.config(self.config_text(account, buffer_path, max_mb=4096))
        buffer = Buffer(buffer_path, create=False)
        self.settle()
        if variant == "load_data":
            sink: MariaDBSink = LoadDataSink(cfg.mariadb, SITE)
        else:
            sink = MariaDBSink(cfg.mariadb, SITE, binary=variant == "binary")
        if variant == "v0.1":

            def legacy_unsent(limit: int, after: int | None = None) -> list[tuple[Any, ...]]:
                position = buffer.sent_upto if after is None else after
                R = buffer.tables.Reading
                return list(R.select().where(R.seq > position).order_by(R.seq).limit(limit).tuples())

            buffer.unsent = legacy_unsent  # type: ignore[method-assign]
        worker = SyncWorker(buffer, sink, cfg.columns(), BATCH, SyncConfig())
        if timers is not None:
            timers.wrap(buffer, "unsent", "unsent() in the sync thread")
            timers.wrap(buffer, "mark_sent", "mark_sent() (SQLite commit + fsync)")
        profiler = cProfile.Profile() if profile else None
        cpu0, t0, c0 = self.server_cpu(), time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        try:
            sent = worker.drain()
        finally:
            if profiler:
                profiler.disable()
        elapsed = time.perf_counter() - t0
        client = time.process_time() - c0
        server = self.server_cpu() - cpu0
        stats = dict(sink.stats)
        sink.close()
        buffer.close()
        total, distinct = self.count(account)
        result: dict[str, Any] = {
            "variant": variant,
            "rows": total,
            "distinct": distinct,
            "sent": sent,
            "seconds": elapsed,
            "rows_per_s": sent / elapsed,
            "client_cpu_s": client,
            "client_cpu_us_per_row": client / sent * 1e6,
            "server_cpu_s": server,
            "server_cpu_us_per_row": server / sent * 1e6,
            "sink_stats": stats,
            "account": account.database,
        }
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
            result["cprofile_top"] = _trim_pstats(out.getvalue())
        for ext in ("", "-wal", "-shm"):
            Path(f"{buffer_path}{ext}").unlink(missing_ok=True)
        return result

    def breakdown(self, built: BuiltBuffer, variant: str) -> dict[str, Any]:
        """Where the time of an in-process drain goes: wall time in the sync thread's
        steps, CPU of the read-ahead thread, and MariaDB's CPU."""
        timers = Timers()
        if variant == "binary":
            timers.wrap(UnsentReader, "_fetch", "SQLite read (read-ahead thread)", thread_cpu=True)
            timers.wrap(wire.RowPacker, "execute_body", "packing rows (binary protocol)")
            timers.wrap(sink_module, "send_execute", "sending EXECUTEs (blocks while MariaDB is busy)")
            timers.wrap(sink_module, "read_ok", "waiting for MariaDB (EXECUTE answers)")
            timers.wrap(sink_module, "prepare", "PREPARE (once per statement shape)")
        else:
            timers.wrap(pymysql.cursors.Cursor, "executemany", "executemany (format + send + wait)")
            timers.wrap(pymysql.connections.Connection, "query", "sending INSERTs + waiting for MariaDB")
        timers.wrap(GuardedConnection, "commit", "COMMIT")
        try:
            result = self.inprocess_drain(built, variant, timers=timers)
        finally:
            timers.undo()
        steps = {k: round(v, 3) for k, v in sorted(timers.wall.items(), key=lambda kv: -kv[1])}
        if variant != "binary":
            inner = timers.wall.get("sending INSERTs + waiting for MariaDB", 0.0)
            outer = timers.wall.get("executemany (format + send + wait)", 0.0)
            steps["formatting values (PyMySQL escaping, in executemany)"] = round(outer - inner, 3)
        result["steps_wall_s"] = steps
        result["steps_cpu_s"] = {k: round(v, 3) for k, v in timers.cpu.items()}
        result["calls"] = dict(timers.calls)
        return result

    # -- live runs of `edgelog run` under the probe -------------------------------------------

    def simulator(self, units: Sequence[int]) -> BusSimulator:
        if self.sim is not None:
            self.sim.stop()
        self.sim = BusSimulator(units).start()
        return self.sim

    def run_probe(
        self,
        tag: str,
        buffer: Path,
        meters: Sequence[dict[str, Any]],
        until: Callable[[float], bool],
        after_s: float,
        max_s: float,
        sample_every: float = 0.25,
    ) -> dict[str, Any]:
        """`edgelog run` under bench.probe until `until(elapsed)` holds, then `after_s`
        more seconds, then SIGTERM. Returns the probe's records and the samples."""
        account = self.account(tag)
        self.prepare_table(account)
        config = self.write_config(tag, self.config_text(account, buffer, meters=meters, max_mb=4096))
        out = self.work / f"{tag}.probe.json"
        out.unlink(missing_ok=True)
        log = (self.work / f"{tag}.log").open("wb")
        cmd = [sys.executable, "-m", "bench.probe", str(out), "--", "--config", str(config), "run"]
        self.settle()
        requests0 = self.sim.requests if self.sim else 0
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        sampler = Sampler(proc.pid, every=sample_every).start()
        fsync_probe = FsyncProbe(buffer.parent).start()
        done_at: float | None = None
        try:
            while True:
                elapsed = time.time() - t0
                if proc.poll() is not None:
                    raise RuntimeError(f"edgelog run exited early ({proc.returncode}); see {log.name}")
                if done_at is None and until(elapsed):
                    done_at = elapsed
                if done_at is not None and elapsed >= done_at + after_s:
                    break
                if elapsed > max_s:
                    self.say(f"{tag}: stopping after {max_s:.0f} s (condition not reached)")
                    break
                time.sleep(0.1)
        finally:
            terminate(proc)
            sampler.stop()
            fsync_probe.stop()
            log.close()
        requests = (self.sim.requests if self.sim else 0) - requests0
        probe = json.loads(out.read_text())
        total, distinct = self.count(account)
        self.drop(account)
        return {
            "t0": t0,
            "done_at_s": done_at,
            "exit_status": proc.returncode,
            "probe": probe,
            "samples": sampler.samples,
            "fsync_probe": fsync_probe,
            "modbus_requests": requests,
            "mariadb_rows": total,
            "mariadb_distinct": distinct,
        }

    def live_drain(self) -> dict[str, Any]:
        """A backlog drained by `edgelog run`'s own sync thread while it polls at 10 Hz."""
        plan = self.plan
        built = self.built(plan.n_live, interval_s=plan.live_interval_s)
        buffer = _copy_buffer(built.path, self.work / "live.sqlite3")
        sim = self.simulator([PAC3100.unit_id])
        meters = [
            {"name": "pac1", "port": sim.port, "unit_id": PAC3100.unit_id, "interval_s": plan.live_interval_s}
        ]
        last_backlog_seq = built.rows  # seqs 1..n

        def drained(_elapsed: float) -> bool:
            return _sent_upto(buffer) >= last_backlog_seq

        run = self.run_probe("live", buffer, meters, drained, plan.after_drain_s, max_s=3600)
        probe = run["probe"]
        marks = list(zip(probe["mark_sent"]["at"], probe["mark_sent"]["upto"], strict=True))
        drained_at = next((at for at, upto in marks if upto >= last_backlog_seq), None)
        drain_start = probe["drains"][0][0] if probe["drains"] else None
        live = _live_readings(probe, plan.live_interval_s)
        window = [x for x in live if drained_at is not None and drain_start <= x["poll_start"] <= drained_at]
        drain_s = (drained_at - drain_start) if drained_at and drain_start else None
        samples = run["samples"]
        t0 = run["t0"]
        during = [
            s.rss_kib / 1024
            for s in samples
            if drain_start and drained_at and drain_start - t0 <= s.t <= drained_at - t0
        ]
        after = [s.rss_kib / 1024 for s in samples if drained_at and s.t > drained_at - t0]
        progress = _rss_at_progress(samples, marks, last_backlog_seq, t0, (0.1, 0.5, 0.9))
        result = {
            "backlog_rows": built.rows,
            "interval_s": plan.live_interval_s,
            "drain_s": drain_s,
            "process_start_to_drained_s": (drained_at - t0) if drained_at else None,
            "rows_per_s": built.rows / drain_s if drain_s else None,
            "live_readings_during_drain": len(window),
            "missed_during_drain": _missed([x["slot"] for x in window]),
            "missed_during_drain_by_cause": _gap_causes(
                window, probe.get("housekeeping", []), plan.live_interval_s
            ),
            "housekeeping_passes": [
                {"at_s": round(a - t0, 3), "seconds": round(b - a, 3)}
                for a, b in probe.get("housekeeping", [])
            ],
            "missed_whole_run": _missed([x["slot"] for x in live]),
            "cadence_counters": probe["cadence"],
            "grid_to_durable_during_drain": _stats_ms([x["grid_to_durable"] for x in window]),
            "response_to_durable_during_drain": _stats_ms([x["response_to_durable"] for x in window]),
            "within_one_interval": all(x["grid_to_durable"] < plan.live_interval_s for x in window),
            "durable_within_one_interval_share": (
                sum(x["grid_to_durable"] < plan.live_interval_s for x in window) / len(window)
                if window
                else None
            ),
            # the disk's own fsync latency meanwhile, measured beside the logger
            "disk_fsync_during_drain": _fsync_stats(
                run["fsync_probe"].between(drain_start or 0.0, drained_at or 0.0), plan.live_interval_s
            ),
            "rss_mib_during_drain": {
                "at_10_percent": progress[0],
                "at_50_percent": progress[1],
                "at_90_percent": progress[2],
                "max": max(during) if during else None,
                "samples": len(during),
            },
            "rss_mib_after_drain_median": median(after),
            "mariadb_rows": run["mariadb_rows"],
            "mariadb_distinct": run["mariadb_distinct"],
            "sink_stats": probe["sink"],
            "exit_status": run["exit_status"],
        }
        result["housekeeping_with_backlog_sent"] = _time_prune(buffer)
        for ext in ("", "-wal", "-shm"):
            Path(f"{buffer}{ext}").unlink(missing_ok=True)
        return result

    def steady(self) -> dict[str, Any]:
        """`edgelog run` at 10 Hz from an empty buffer: poll path, cadence, footprint."""
        plan = self.plan
        buffer = self.work / "steady.sqlite3"
        for ext in ("", "-wal", "-shm"):
            Path(f"{buffer}{ext}").unlink(missing_ok=True)
        sim = self.simulator([PAC3100.unit_id])
        meters = [
            {"name": "pac1", "port": sim.port, "unit_id": PAC3100.unit_id, "interval_s": plan.live_interval_s}
        ]
        sizes: list[tuple[float, int]] = []

        def watch(elapsed: float) -> bool:
            if buffer.exists():
                sizes.append((elapsed, _file_bytes(buffer)))
            return elapsed >= plan.cadence_s

        run = self.run_probe(
            "steady", buffer, meters, watch, 0.0, max_s=plan.cadence_s + 120, sample_every=1.0
        )
        probe = run["probe"]
        live = _live_readings(probe, plan.live_interval_s)
        errors = [x["measured_at"] - x["slot"] * plan.live_interval_s for x in live]
        late = [x["poll_start"] - x["slot"] * plan.live_interval_s for x in live]
        drift = _drift(live, plan.live_interval_s)
        samples = run["samples"]
        duration = max((s.t for s in samples), default=0.0)
        half = [s for s in samples if s.t >= duration / 2]
        wb = [s for s in samples if s.write_bytes is not None]
        t0 = run["t0"]
        readings_in = [x for x in live if wb and wb[0].t <= x["poll_start"] - t0 <= wb[-1].t]
        write_per_reading = (
            (wb[-1].write_bytes - wb[0].write_bytes) / len(readings_in)
            if len(wb) > 1 and readings_in
            else None
        )
        growth = _growth_per_reading(sizes, live, t0)
        expected = len(plan_requests(PAC3100.registers))
        result = {
            "seconds": duration,
            "interval_s": plan.live_interval_s,
            "readings": len(live),
            "failed_polls": sum(1 for x in live if x["error"]),
            "modbus_requests": run["modbus_requests"],
            "requests_per_poll": run["modbus_requests"] / len(live) if live else None,
            "requests_per_poll_planned": expected,
            "response_to_durable": _stats_ms([x["response_to_durable"] for x in live]),
            "grid_to_durable": _stats_ms([x["grid_to_durable"] for x in live]),
            "missed": _missed([x["slot"] for x in live]),
            "missed_by_cause": _gap_causes(live, probe.get("housekeeping", []), plan.live_interval_s),
            "cadence_counters": probe["cadence"],
            "timestamp_error": _stats_ms(errors),
            "poll_start_late": _stats_ms(late),
            "drift_ms_first_to_last": drift["first_to_last_ms"],
            "drift_ms_per_hour_fit": drift["slope_ms_per_hour"],
            "drift_ms_first_vs_last_tenth_median": drift["first_vs_last_tenth_median_ms"],
            "rss_mib_steady_median": median([s.rss_kib / 1024 for s in half]),
            "rss_mib_max": max((s.rss_kib for s in samples), default=0) / 1024,
            "write_bytes_per_reading": write_per_reading,
            "buffer_bytes_per_reading_growth": growth,
            "mariadb_rows": run["mariadb_rows"],
            "exit_status": run["exit_status"],
        }
        return result

    def meters_scaling(self, m: int) -> dict[str, Any]:
        """M meters at 1 Hz, with a backlog, on buses of up to METERS_PER_BUS meters (one
        pymodbus TCP server per bus, unit ids 1..k): each bus has its poll thread, and its
        meters share its 1 s within the time budget (k × timeout_s < interval_s)."""
        plan = self.plan
        names = [f"pac{k:02d}" for k in range(1, m + 1)]
        built = self.built(plan.meters_backlog, names, interval_s=plan.meters_interval_s)
        buffer = _copy_buffer(built.path, self.work / f"meters{m}.sqlite3")
        if self.sim is not None:
            self.sim.stop()
            self.sim = None
        groups = [names[i : i + METERS_PER_BUS] for i in range(0, m, METERS_PER_BUS)]
        buses = [BusSimulator(list(range(1, len(group) + 1))).start() for group in groups]
        timeout_s = round(0.8 * plan.meters_interval_s / METERS_PER_BUS, 3)
        meters = [
            {
                "name": name,
                "port": bus.port,
                "unit_id": k,
                "interval_s": plan.meters_interval_s,
                "timeout_s": timeout_s,
            }
            for group, bus in zip(groups, buses, strict=True)
            for k, name in enumerate(group, start=1)
        ]

        def drained(_elapsed: float) -> bool:
            return _sent_upto(buffer) >= built.rows

        try:
            run = self.run_probe(f"meters{m}", buffer, meters, drained, plan.meters_run_s, max_s=1800)
            requests = sum(bus.requests for bus in buses)
        finally:
            for bus in buses:
                bus.stop()
        probe = run["probe"]
        marks = list(zip(probe["mark_sent"]["at"], probe["mark_sent"]["upto"], strict=True))
        drained_at = next((at for at, upto in marks if upto >= built.rows), None)
        drain_start = probe["drains"][0][0] if probe["drains"] else None
        drain_s = drained_at - drain_start if drained_at and drain_start else None
        live = _live_readings(probe, plan.meters_interval_s)
        per_meter: dict[str, list[int]] = defaultdict(list)
        for x in live:
            per_meter[x["meter"]].append(x["slot"])
        bus_of = {name: i for i, group in enumerate(groups) for name in group}
        per_bus = []
        for i, group in enumerate(groups):
            mine = [x for x in live if bus_of[x["meter"]] == i]
            per_bus.append(
                {
                    "bus": i + 1,
                    "meters": len(group),
                    "readings": len(mine),
                    "missed": sum(_missed(per_meter[name]) for name in group),
                    "grid_to_durable": _stats_ms([x["grid_to_durable"] for x in mine]),
                }
            )
        p99s = [b["grid_to_durable"]["p99_ms"] for b in per_bus if b["grid_to_durable"]["p99_ms"] is not None]
        result = {
            "meters": m,
            "buses": len(groups),
            "meters_per_bus": METERS_PER_BUS,
            "timeout_s": timeout_s,
            "backlog_rows": built.rows,
            "drain_s": drain_s,
            "rows_per_s": built.rows / drain_s if drain_s else None,
            "peak_rss_mib": max((max(s.rss_kib, s.hwm_kib) for s in run["samples"]), default=0) / 1024,
            "readings": len(live),
            "missed": sum(_missed(slots) for slots in per_meter.values()),
            "skipped_rows": _skipped_rows(probe),
            "requests_per_poll": requests / len(live) if live else None,
            "grid_to_durable": _stats_ms([x["grid_to_durable"] for x in live]),
            "per_bus": per_bus,
            "worst_bus_p99_ms": max(p99s) if p99s else None,
            "failed_polls": sum(1 for x in live if x["error"]),
        }
        for ext in ("", "-wal", "-shm"):
            Path(f"{buffer}{ext}").unlink(missing_ok=True)
        return result


# -- helpers over the probe's records ------------------------------------------------------


def _sent_upto(buffer: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'sent_upto'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row and row[0] else 0


def _time_prune(path: Path) -> dict[str, Any]:
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
        return {
            "rows_in_buffer": rows,
            "steps": len(steps),
            "seconds": max(steps),  # the longest step
            "total_s": sum(steps),
        }
    finally:
        buffer.close()


def _file_bytes(path: Path) -> int:
    return sum(Path(f"{path}{ext}").stat().st_size for ext in ("", "-wal") if Path(f"{path}{ext}").exists())


def _live_readings(probe: dict[str, Any], interval: float) -> list[dict[str, Any]]:
    """The readings `edgelog run` took (not the backlog, nor the gap rows it stored for
    slots it skipped): poll start, response, durable."""
    app = probe["append"]
    out = []
    for i, meter in enumerate(app["meter"]):
        poll_start = app["poll_start"][i]
        if not poll_start:
            continue  # no poll handed it over: a skipped slot's gap row (_skipped_rows)
        due = app["due"][i] if app.get("due") else 0.0
        # the grid instant the cadence ran this poll for (from GridJob.due_at)
        slot = round((due or poll_start) / interval)
        durable = app["durable_at"][i]
        measured = app["measured_at"][i]
        out.append(
            {
                "meter": meter,
                "poll_start": poll_start,
                "slot": slot,
                "measured_at": measured,
                "durable_at": durable,
                "grid_to_durable": durable - slot * interval,
                "response_to_durable": durable - measured,
                "error": bool(app["error"][i]),
            }
        )
    return out


def _skipped_rows(probe: dict[str, Any]) -> int:
    """Gap rows `edgelog run` stored for slots its bus was too busy to poll."""
    app = probe["append"]
    return sum(1 for i, start in enumerate(app["poll_start"]) if not start and app["error"][i])


def _fsync_stats(latencies: Sequence[float], interval: float) -> dict[str, Any]:
    return {**_stats_ms(latencies), "longer_than_interval": sum(x > interval for x in latencies)}


def _gap_causes(
    live: Sequence[dict[str, Any]], housekeeping: Sequence[Sequence[float]], interval: float
) -> dict[str, int]:
    """Missed samples, by what kept the poll thread from the next slot: a meter answer slower
    than the interval, a housekeeping pass at the same time (it runs on the writer thread),
    or something else (the poll thread not scheduled in time: CPU, GIL)."""
    causes: dict[str, int] = defaultdict(int)
    for before, after in itertools.pairwise(live):
        gap = after["slot"] - before["slot"] - 1
        if gap <= 0:
            continue
        if before["measured_at"] - before["poll_start"] > interval:
            causes["a meter answer slower than the interval"] += gap
        elif any(a < after["poll_start"] and b > before["poll_start"] for a, b in housekeeping):
            causes["during a housekeeping pass (prune)"] += gap
        else:
            causes["other (poll thread not scheduled in time)"] += gap
    return dict(causes)


def _missed(slots: Sequence[int]) -> int:
    if len(slots) < 2:
        return 0
    return (max(slots) - min(slots) + 1) - len(set(slots))


def _rss_at_progress(
    samples: Sequence[Any], marks: Sequence[tuple[float, int]], total: int, t0: float, points: Sequence[float]
) -> list[float | None]:
    """RSS (MiB) of the first sample taken after the drain had sent each share of `total`."""
    out: list[float | None] = []
    for share in points:
        at = next((t for t, upto in marks if upto >= share * total), None)
        sample = next((s for s in samples if at is not None and s.t >= at - t0), None)
        out.append(sample.rss_kib / 1024 if sample else None)
    return out


def _drift(live: Sequence[dict[str, Any]], interval: float) -> dict[str, float | None]:
    ok = [x for x in live if not x["error"]]
    if len(ok) < 2:
        return {"first_to_last_ms": None, "slope_ms_per_hour": None, "first_vs_last_tenth_median_ms": None}
    err = [x["measured_at"] - x["slot"] * interval for x in ok]
    ts = [x["slot"] * interval for x in ok]
    n = len(ok)
    mt, me = sum(ts) / n, sum(err) / n
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (e - me) for t, e in zip(ts, err, strict=True)) / var if var else 0.0
    tenth = max(1, n // 10)
    tenths = (median(err[-tenth:]) or 0.0) - (median(err[:tenth]) or 0.0)
    return {
        "first_to_last_ms": (err[-1] - err[0]) * 1000,
        "slope_ms_per_hour": slope * 3600 * 1000,
        "first_vs_last_tenth_median_ms": tenths * 1000,
    }


def _growth_per_reading(
    sizes: Sequence[tuple[float, int]], live: Sequence[dict[str, Any]], t0: float
) -> float | None:
    """Bytes the buffer file (+WAL) grew per reading over the second half of the run."""
    if len(sizes) < 4 or not live:
        return None
    (ta, sa), (tb, sb) = sizes[len(sizes) // 2], sizes[-1]
    n = sum(1 for x in live if ta <= x["poll_start"] - t0 <= tb)
    return (sb - sa) / n if n else None


def _trim_pstats(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    root = str(ROOT) + "/"
    venv = re.compile(r"\S*/site-packages/")
    return [venv.sub("", line.replace(root, "")) for line in lines[start:] if line.strip()]


@contextlib.contextmanager
def timed(say: Callable[[str], None], what: str) -> Iterator[None]:
    t0 = time.perf_counter()
    say(f"{what} ...")
    yield
    say(f"{what}: {time.perf_counter() - t0:.1f} s")
