"""What every scenario of the bench shares: its MariaDB, accounts and tables, configs,
built backlogs, simulators, and the machine it ran on.

A `Bench` holds one private MariaDB (bench/server.py) and a work directory. Each
measurement gets its own database and least-privilege user (`account()`), a table
made as the logger makes it and already holding another logger's rows
(`prepare_table()`), a config (`config_text()`), and a copy of a backlog built once
(`built()`, bench/data.py). `settle()` lets MariaDB finish the previous
measurement's background work first.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from edgelog.config import Config, MariaDBConfig, parse
from edgelog.profiles import PAC3100
from edgelog.sync import MariaDBSink, create_table_sql
from edgelog.sync.mariadb import INSERT_COLUMNS, quote
from edgelog.timings import ENV_VAR as TIMINGS_ENV

from .data import BuiltBuffer, build_buffer, profile_columns, read_rows
from .loaddata import TsvFormatter, load_bytes, open_loading
from .plan import Plan
from .procs import cpu_seconds
from .server import LoggerAccount, PrivateMariaDB
from .sim import BusSimulator

ROOT = Path(__file__).resolve().parent.parent
SITE = "chapada-imperial"
#: The site of the rows a measurement's table holds before it starts (another logger's).
HISTORY_SITE = "outra-usina"
TABLE = "medicoes"
BATCH = 2000  # [mariadb] batch_size default
#: Where the bench works unless --workdir: not /tmp if it is a tmpfs (write_bytes and
#: fsync must hit a real disk).
WORK_BASE = Path(os.environ.get("EDGELOG_BENCH_TMP", "/var/tmp"))  # noqa: S108 - mkdtemp under it
#: Where the timings logs of the processes go while they run: a tmpfs, so that writing
#: them does not count in the process's write_bytes (edgelog/timings.py).
TIMINGS_BASE = Path("/dev/shm")  # noqa: S108 - a mkdtemp (0700) under it

Say = Callable[[str], None]


def env() -> dict[str, str]:
    """The environment of an `edgelog` subprocess: this checkout first, no config or
    systemd notify socket or timings log inherited."""
    out = dict(os.environ)
    for name in ("EDGELOG_CONFIG", "NOTIFY_SOCKET", TIMINGS_ENV):
        out.pop(name, None)
    out["PYTHONPATH"] = str(ROOT) + (os.pathsep + out["PYTHONPATH"] if out.get("PYTHONPATH") else "")
    return out


def remove_buffer(path: Path) -> None:
    """A buffer file and the files SQLite and edgelog keep beside it."""
    for ext in ("", "-wal", "-shm", "-reserve"):
        Path(f"{path}{ext}").unlink(missing_ok=True)


def copy_buffer(src: Path, dst: Path) -> Path:
    remove_buffer(dst)
    shutil.copyfile(src, dst)
    return dst


def say_since(started: float) -> Say:
    """Progress lines on stderr, stamped with the seconds since `started` (monotonic)."""

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {text}", file=sys.stderr, flush=True)

    return say


@contextlib.contextmanager
def timed(say: Say, what: str) -> Iterator[None]:
    t0 = time.perf_counter()
    say(f"{what} ...")
    yield
    say(f"{what}: {time.perf_counter() - t0:.1f} s")


@contextlib.contextmanager
def work_dir(keep_under: Path | None, prefix: str) -> Iterator[Path]:
    """A fresh directory under `keep_under` (kept), else a temp one under WORK_BASE (removed)."""
    if keep_under is not None:
        keep_under.mkdir(parents=True, exist_ok=True)
        yield Path(tempfile.mkdtemp(prefix=prefix, dir=keep_under))
    else:
        with tempfile.TemporaryDirectory(prefix=f"edgelog-{prefix}", dir=WORK_BASE) as tmp:
            yield Path(tmp)


class Bench:
    def __init__(self, plan: Plan, work: Path, say: Say):
        self.plan = plan
        self.work = work
        self.say = say
        self.db = PrivateMariaDB(work / "mariadb")
        self.sim: BusSimulator | None = None
        self.timings_dir = Path(
            tempfile.mkdtemp(prefix="edgelog-bench-", dir=TIMINGS_BASE if TIMINGS_BASE.is_dir() else work)
        )
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
        shutil.rmtree(self.timings_dir, ignore_errors=True)

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

    # -- accounts and tables -------------------------------------------------------------

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
                    cur.execute(create_table_sql(TABLE, self.units))
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

    def count(self, account: LoggerAccount | str) -> tuple[int, int]:
        """(rows, distinct identities) of this site in the account's table (history excluded)."""
        database = account if isinstance(account, str) else account.database
        conn = self.db.root()
        try:
            with conn.cursor() as cur:
                table = f"`{database}`.`{TABLE}`"
                cur.execute(
                    f"SELECT COUNT(*), COUNT(DISTINCT site, buffer_id, seq) FROM {table} WHERE site = %s",
                    (SITE,),
                )
                total, distinct = cur.fetchone()
                return int(total), int(distinct)
        finally:
            conn.close()

    # -- configs -------------------------------------------------------------------------

    def config_text(
        self,
        account: LoggerAccount,
        buffer: Path,
        transport: str = "socket",
        meters: Sequence[dict[str, Any]] = (),
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

    # -- backlogs and meters -----------------------------------------------------------

    def built(self, n: int, meters: Sequence[str] = ("pac1",), interval_s: float = 0.1) -> BuiltBuffer:
        """A backlog of `n` readings, built once per run (copy it before use)."""
        key = (n, tuple(meters), interval_s)
        if key not in self._built:
            path = self.work / f"backlog-{n}-{len(meters)}m-{interval_s}s.sqlite3"
            self.say(f"building a buffer of {n:,} readings ({len(meters)} meter(s))")
            self._built[key] = build_buffer(path, n, meters, interval_s)
        return self._built[key]

    def simulator(self, units: Sequence[int]) -> BusSimulator:
        """One bus of PAC3100 simulators (replacing the previous one)."""
        if self.sim is not None:
            self.sim.stop()
        self.sim = BusSimulator(units).start()
        return self.sim

    def stop_simulator(self) -> None:
        if self.sim is not None:
            self.sim.stop()
            self.sim = None


def page_size(path: Path) -> int:
    """The page size of an SQLite file, from its header (bytes 16-17, big-endian; 1 = 65536)."""
    with path.open("rb") as f:
        header = f.read(18)
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def machine(bench: Bench) -> dict[str, Any]:
    """What the run ran on: CPU, memory, file system, versions, load."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    if not cpu:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((x.split(":", 1)[1].strip() for x in cpu.splitlines() if x.startswith("Model name")), "?")
    df = subprocess.run(["df", "-T", str(bench.work)], capture_output=True, text=True).stdout.splitlines()
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
        "filesystem": df[-1] if df else "?",
        "mariadb": bench.db.version(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "pymysql": version("PyMySQL"),
        "peewee": version("peewee"),
        "pymodbus": version("pymodbus"),
        "load_average_at_start": os.getloadavg(),
    }
