"""The tests' helper layer: config files, the real `edgelog` process, waits, the buffer and
MariaDB read behind the logger's back, and the checks of "exactly once" and of the cadence.

Fixtures are in conftest.py. Tools that are one thing each live in modules of their own
(tests/faults/proxy.py, tests/rogue_server.py, tests/powercut/, tests/plantdata.py).
Nothing here fakes MariaDB or Modbus. `pyproject.toml` puts tests/ on the import path:
`from helpers import ...` works from every test directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import json
import math
import os
import re
import secrets
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymysql
import pytest

from edgelog import config
from edgelog.buffer import Buffer
from edgelog.config import Config, MariaDBConfig
from edgelog.errors import SinkUnavailable
from edgelog.meter import plan_requests
from edgelog.profiles import PAC3100
from edgelog.simulate import plant_values
from edgelog.sync import MariaDBSink, SyncWorker

if TYPE_CHECKING:
    from bench import galera

ROOT = Path(__file__).resolve().parent.parent
#: tests/inject/sitecustomize.py: test-only faults injected inside an `edgelog` process.
INJECT = ROOT / "tests" / "inject"
INSTALL = ROOT / "scripts" / "install"
INSTALL_DB = ROOT / "schema" / "install-mariadb"
COLUMNS = [r.name for r in PAC3100.registers]
UNITS = {r.name: r.unit for r in PAC3100.registers}
SITE = "test-site"
#: Modbus requests per poll of a pac3100 (a poll killed between two of them is lost).
PER_POLL = len(plan_requests(PAC3100.registers))
#: The [sync] of a test config, and the faster one of the fault and Galera suites.
SYNC = {"interval_s": 0.5, "backoff_initial_s": 0.2, "backoff_max_s": 2}
FAST_SYNC = {"interval_s": 0.2, "backoff_initial_s": 0.2, "backoff_max_s": 1.0}
#: What the README asks for the logger's MariaDB user (no DELETE, no DROP).
PRIVILEGES = "SELECT, INSERT, UPDATE, CREATE, ALTER, INDEX"


def child_env() -> dict[str, str]:
    """The environment of an `edgelog` child: this checkout first, no config or systemd socket
    of the machine's."""
    out = dict(os.environ)
    out.pop("EDGELOG_CONFIG", None)
    out.pop("NOTIFY_SOCKET", None)
    out["PYTHONPATH"] = str(ROOT)
    return out


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on (a connection is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def file_mode(path: Path) -> int:
    """The permission bits of `path` itself (a link's own)."""
    return stat.S_IMODE(path.lstat().st_mode)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20, every: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- config files ------------------------------------------------------------------------


def toml_value(v: Any) -> str:
    """`v` as a TOML value: a bool, a number, a string (a Path too) or a list of those."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str | list | tuple):
        return json.dumps(v)
    return repr(v)


def toml_table(header: str, keys: Mapping[str, Any]) -> str:
    """`[table]` or `[[array]]` with these keys, in order."""
    return f"{header}\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())


def meter_toml(port: int, name: str = "pac1", interval_s: float | None = 1.0, **extra: Any) -> str:
    """A Modbus TCP meter on 127.0.0.1:`port`; `interval_s` None leaves the timings at their
    defaults, else timeout_s stays within the bus's time budget (< interval_s) unless given."""
    keys: dict[str, Any] = {"name": name, "transport": "tcp", "host": "127.0.0.1", "port": port}
    if interval_s is not None:
        keys.update(interval_s=interval_s, timeout_s=round(min(0.5, 0.75 * interval_s), 3))
    return toml_table("[[meters]]", {**keys, **extra})


#: A register some configs add to the pac3100 profile, and its [[meters.registers]] table.
EXTRA = "energia_extra"
EXTRA_TOML = f'\n[[meters.registers]]\nname = "{EXTRA}"\naddress = 801\nunit = "kWh"\n'


def rtu_config(device: str | Path, name: str = "pac1", **extra: Any) -> config.MeterConfig:
    """An rtu meter through the real parser: PAC3100 factory line settings unless told."""
    meter = {"name": name, "transport": "rtu", "device": str(device), "timeout_s": 0.3, **extra}
    return config.parse({"site": "test", "mariadb": {"user": "u"}, "meters": [meter]}).meters[0]


def parse_config(*sections: str, site: str = SITE) -> Config:
    """The validated config of these sections ([mariadb], [[meters]], ...), as `edgelog.toml`
    would give it (no file: for tests of the library)."""
    text = f"site = {toml_value(site)}\n\n" + "\n".join(sections)
    return config.parse(tomllib.loads(text), source="test.toml")


def write_config(
    tmp_path: Path,
    *sections: str,
    site: str = SITE,
    buffer: Mapping[str, Any] | None = None,
    sync: Mapping[str, Any] | None = None,
    clock: Mapping[str, Any] | None = None,
    name: str = "edgelog.toml",
) -> Path:
    """`tmp_path/name` (0600): the site, [buffer] (path: tmp_path/buffer.sqlite3 unless given),
    [sync] (SYNC unless given; none for {}), [clock] if given, then `sections` ([mariadb],
    [[meters]], ...)."""
    parts = [
        f"site = {toml_value(site)}\n",
        toml_table("[buffer]", {"path": tmp_path / "buffer.sqlite3", **(buffer or {})}),
    ]
    sync = SYNC if sync is None else sync
    if sync:
        parts.append(toml_table("[sync]", sync))
    if clock:
        parts.append(toml_table("[clock]", clock))
    path = tmp_path / name
    path.write_text("\n".join([*parts, *sections]))
    path.chmod(0o600)
    return path


# -- the edgelog process -----------------------------------------------------------------


def edgelog(
    *args: str, config: Path | None = None, timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real `edgelog` command line in a subprocess."""
    cmd = [sys.executable, "-m", "edgelog"]
    if config is not None:
        cmd += ["--config", str(config)]
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=child_env())
    if check and result.returncode != 0:
        raise AssertionError(f"edgelog {args} exited {result.returncode}: {result.stderr}")
    return result


def start_edgelog(
    *args: str, config: Path, log: Path, fault: str | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`edgelog --config CONFIG ARGS` in the background, its output appended to `log`.
    `fault` (even "") puts tests/inject first on PYTHONPATH with EDGELOG_TEST_FAULT=fault."""
    cmd = [sys.executable, "-m", "edgelog", "--config", str(config), *args]
    full = child_env()
    if fault is not None:
        full["PYTHONPATH"] = f"{INJECT}{os.pathsep}{ROOT}"
        full["EDGELOG_TEST_FAULT"] = fault
    full.update(env or {})
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout)


def wait_or_kill(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Let `proc` end within `timeout` seconds, else SIGKILL it (and reap it)."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class Logger:
    """`edgelog run` as the real process, started and killed as often as a test likes.
    `env` and `fault` go to every start (see `start_edgelog`)."""

    config: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    fault: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def buffer(self) -> Path:
        """The buffer file the config names."""
        return Path(tomllib.loads(self.config.read_text())["buffer"]["path"])

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = start_edgelog(
            "run", config=self.config, log=self.log, fault=self.fault, env={**self.env, **env}
        )
        self.starts += 1
        return self.proc

    @contextlib.contextmanager
    def running(self, timeout: float = 60, sig: int = signal.SIGTERM, **env: str) -> Iterator[Logger]:
        """Started for the block, then stopped by `sig`: it must exit 0 within `timeout`
        (the log is the message). A block that fails kills it."""
        self.start(**env)
        try:
            yield self
        except BaseException:
            self.ensure_stopped()
            raise
        code = self.term(timeout, sig)
        assert code == 0, f"edgelog run exited {code}:\n{self.text()}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def term(self, timeout: float = 60, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        return stop(self.proc, sig, timeout)

    def ensure_stopped(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.text().splitlines() if needle in line]

    def status(self) -> dict[str, Any]:
        result = edgelog("sync-status", "--json", config=self.config)
        assert result.stdout.strip(), result.stderr
        return json.loads(result.stdout)

    def drain(self) -> str:
        result = edgelog("sync", "--drain", config=self.config, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout


def running_logger(
    config: Path,
    log: Path | None = None,
    *,
    timeout: float = 30,
    sig: int = signal.SIGTERM,
    fault: str | None = None,
    env: Mapping[str, str] | None = None,
) -> contextlib.AbstractContextManager[Logger]:
    """`with running_logger(config) as logger:` `edgelog run` for the block, its output in
    `log` (run.log beside the config), then SIGTERM (or `sig`), and it must exit 0 within
    `timeout` (`Logger.running`)."""
    logger = Logger(config, log or config.with_name("run.log"), env=dict(env or {}), fault=fault)
    return logger.running(timeout, sig)


SKIPPED_IN_ALL = re.compile(r"meter \S+: (\d+) slot\(s\) skipped in all")


def skipped_slots(logger: Logger) -> int:
    """Slots `edgelog run` skipped (its bus too busy: a loaded machine at a short interval),
    each stored as a gap row `skipped: poll overran`: rows that are no poll. From the summary
    every run logs at its stop."""
    return sum(int(m[1]) for m in map(SKIPPED_IN_ALL.search, logger.text().splitlines()) if m)


def polled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of polls, without the gap rows of slots skipped (the bus too busy, on a
    loaded machine): those are rows, but no poll reached a meter for them."""
    return [r for r in rows if r["error"] != "skipped: poll overran"]


def served_polls(sims: Mapping[str, Any]) -> dict[str, int]:
    """Polls that reached each meter (a poll counts from its first request), by name of
    its SimulatorThread."""
    return {name: math.ceil(sim.sim.requests / PER_POLL) for name, sim in sims.items()}


def faketime_library() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    return found[0] if found else None


# -- MariaDB -------------------------------------------------------------------------------


@dataclass
class LoggerDB:
    """A fresh database and a least-privilege user for one test."""

    database: str
    user: str
    password_file: Path
    socket: str
    host: str
    port: int
    root: Any  # pymysql connection as root

    def toml(
        self,
        transport: str = "socket",
        *,
        port: int | None = None,
        hosts: list[str] | None = None,
        **extra: Any,
    ) -> str:
        """[mariadb] for this account: over the server's socket, over TCP (to `port`, e.g. a
        proxy's or one where nothing listens, else the server's), or to a list of `hosts`."""
        keys: dict[str, Any] = {
            "user": self.user,
            "password_file": self.password_file,
            "database": self.database,
        }
        if hosts is not None:
            keys["hosts"] = hosts
        elif transport == "socket" and port is None:
            keys["unix_socket"] = self.socket
        else:
            keys.update(host=self.host, port=port or self.port)
        return toml_table("[mariadb]", {**keys, **extra})

    def unreachable_toml(self) -> str:
        """[mariadb] for this account on a port of 127.0.0.1 where nothing listens."""
        return self.toml(port=free_port(), connect_timeout_s=1)

    def fault_toml(self, *, port: int | None = None, socket_path: bool = False, **extra: Any) -> str:
        """`toml` with the fault suite's timeouts (2 s to connect, 3 s to read or write), over
        TCP (to `port`) or the socket; with EDGELOG_TEST_FAST_PATH=false (.ci/run), on the
        sink's plain path."""
        keys: dict[str, Any] = {"connect_timeout_s": 2, "read_timeout_s": 3, "write_timeout_s": 3, **extra}
        if os.environ.get("EDGELOG_TEST_FAST_PATH") == "false":
            keys.setdefault("fast_path", False)
        return self.toml("socket" if socket_path else "tcp", port=port, **keys)

    def config(self, **extra: Any) -> MariaDBConfig:
        """The [mariadb] config of this account over the server's socket."""
        return MariaDBConfig(
            user=self.user,
            password_file=self.password_file,
            unix_socket=self.socket,
            database=self.database,
            **extra,
        )

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.root.cursor() as cur:
            cur.execute(sql, params)
            rows = list(cur.fetchall())
        self.root.commit()
        return rows

    def rows(self, table: str = "medicoes", columns: str = "*") -> list[dict[str, Any]]:
        """The table's rows by seq; "*": every column, a FLOAT one as the exact float32 value
        (MariaDB's text protocol would give 6 digits: edgelog/sync/schema.py)."""
        if columns == "*":
            types = self.query(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                (self.database, table),
            )
            columns = ", ".join(
                f"CAST(`{name}` AS DOUBLE) AS `{name}`" if kind == "float" else f"`{name}`"
                for name, kind in types
            )
        with self.root.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(f"SELECT {columns} FROM `{self.database}`.`{table}` ORDER BY seq")
            rows = list(cur.fetchall())
        self.root.commit()
        return rows

    def count(self) -> tuple[int, int]:
        """(rows, distinct (site, buffer_id, seq)) of `medicoes`."""
        ((total, distinct),) = self.query(
            f"SELECT COUNT(*), COUNT(DISTINCT site, buffer_id, seq) FROM `{self.database}`.`medicoes`"
        )
        return int(total), int(distinct)


def create_logger_db(root: Any, socket: str, port: int, password_file: Path) -> LoggerDB:
    """A database named like the real one plus a suffix, and a user holding only
    the privileges the README asks for (no DELETE, no DROP), on the server `root`
    is logged in to; the user's password goes to `password_file` (0600)."""
    suffix = secrets.token_hex(4)
    database, user = f"chapada_imperial_{suffix}", f"edgelog_{suffix}"
    password = secrets.token_urlsafe(18)
    with root.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}`")
        for host in ("localhost", "127.0.0.1"):
            cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT {PRIVILEGES} ON `{database}`.* TO '{user}'@'{host}'")
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return LoggerDB(database, user, password_file, socket, "127.0.0.1", port, root)


def drop_logger_db(query: Callable[[str], Any], db: LoggerDB) -> None:
    """Drop what `create_logger_db` made, through `query` (a root session's)."""
    query(f"DROP DATABASE IF EXISTS `{db.database}`")
    for host in ("localhost", "127.0.0.1"):
        query(f"DROP USER IF EXISTS '{db.user}'@'{host}'")


class OwnMariaDB:
    """A private mariadbd a test may stop and start (the `own_mariadb` fixture): the
    session one must stay up, every test shares it."""

    def __init__(self, executor: Any):
        self.executor = executor  # pytest_mysql's MySQLExecutor
        self.port = executor.port
        self.socket = executor.unixsocket

    def root(self) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=self.socket, user="root", autocommit=True)

    def stop(self) -> None:
        self.executor.stop()

    def start(self) -> None:
        self.executor.start()

    def logger_db(self, tmp_path: Path) -> LoggerDB:
        """Like the `logger_db` fixture, on this server."""
        return create_logger_db(self.root(), self.socket, self.port, tmp_path / "own.password")


@dataclass
class Account:
    """A database and a logger user on a Galera cluster (the `account` fixture), reached
    through `db.root` on its first node."""

    db: LoggerDB
    cluster: galera.Cluster

    def toml(self, hosts: list[str] | None = None, **extra: Any) -> str:
        """[mariadb] for the account, to every node of the cluster (or these `hosts`)."""
        timeouts = {"connect_timeout_s": 2, "read_timeout_s": 20, "write_timeout_s": 20}
        return self.db.toml(hosts=hosts or self.cluster.hosts(), **{**timeouts, **extra})

    def on(self, node: galera.Node) -> LoggerDB:
        """The same account, read through `node` (root over its socket)."""
        return dataclasses.replace(self.db, socket=node.socket, port=node.port, root=node.root())

    def count(self, node: galera.Node, where: str = "1") -> tuple[int, int]:
        """(rows, distinct (site, buffer_id, seq)) of the table as `node` has it."""
        try:
            rows = node.query(
                f"SELECT COUNT(*), COUNT(DISTINCT site, buffer_id, seq) FROM `{self.db.database}`.medicoes "
                f"WHERE {where}"
            )
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] == 1146:  # the table does not exist yet
                return 0, 0
            raise
        return int(rows[0][0]), int(rows[0][1])

    def sessions(self, node: galera.Node) -> int:
        """The logger user's sessions on `node`."""
        rows = node.query(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE user = %s", (self.db.user,)
        )
        return int(rows[0][0])


def _unless_no_table(read: Callable[[], Any], empty: Any) -> Any:
    """`read()`, or `empty` while the table does not exist yet."""
    try:
        return read()
    except Exception as exc:
        if "doesn't exist" in str(exc):
            return empty
        raise


def remote_rows(db: LoggerDB, columns: str = "*") -> list[dict[str, Any]]:
    return _unless_no_table(lambda: db.rows(columns=columns), [])


def remote_count(db: LoggerDB) -> int:
    return _unless_no_table(lambda: db.query(f"SELECT COUNT(*) FROM `{db.database}`.`medicoes`")[0][0], 0)


def remote_max_seq(db: LoggerDB, buffer_id: str | None = None) -> int:
    """The highest seq in `medicoes` (of `buffer_id`, if given)."""
    sql = f"SELECT COALESCE(MAX(seq), 0) FROM `{db.database}`.`medicoes`"
    if buffer_id is None:
        return int(_unless_no_table(lambda: db.query(sql)[0][0], 0))
    return int(_unless_no_table(lambda: db.query(sql + " WHERE buffer_id = %s", (buffer_id,))[0][0], 0))


def wait_rows(db: LoggerDB, n: int, timeout: float = 30) -> None:
    wait_for(lambda: remote_count(db) >= n, timeout=timeout, what=f"{n} rows in MariaDB")


# -- the buffer, read behind the logger's back ---------------------------------------------


def _connect(buffer: Path) -> sqlite3.Connection:
    """Read-only: the test never writes to the buffer, and (being the last connection to
    close after a kill) must not checkpoint and delete the WAL the kill left behind."""
    return sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=30)


def _retrying(read: Callable[[Callable[[Path], sqlite3.Connection]], Any]) -> Any:
    """Run `read`; a file caught while the logger creates it, or while its WAL files
    change hands, is read again a moment later (then through a read-write connection)."""
    for _ in range(20):
        try:
            return read(_connect)
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc):
                raise
            time.sleep(0.05)
    return read(lambda b: sqlite3.connect(b, timeout=30))


def query(buffer: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    def read(connect: Callable[[Path], sqlite3.Connection]) -> list[tuple[Any, ...]]:
        with closing(connect(buffer)) as conn:
            return conn.execute(sql, params).fetchall()

    return _retrying(read)


def meta(buffer: Path, key: str) -> str | None:
    """A meta value of the buffer; None also while the logger is still creating the file."""
    try:
        rows = query(buffer, "SELECT value FROM meta WHERE key = ?", key)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return rows[0][0] if rows else None


def buffer_rows(buffer: Path, where: str = "1", *params: Any) -> list[dict[str, Any]]:
    def read(connect: Callable[[Path], sqlite3.Connection]) -> list[dict[str, Any]]:
        with closing(connect(buffer)) as conn:
            conn.row_factory = sqlite3.Row
            return [
                dict(r) for r in conn.execute(f"SELECT * FROM readings WHERE {where} ORDER BY seq", params)
            ]

    try:
        return _retrying(read)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # a start killed before it created the table
            return []
        raise


def max_seq(buffer: Path) -> int:
    if not buffer.exists():
        return 0
    try:
        return query(buffer, "SELECT COALESCE(MAX(seq), 0) FROM readings")[0][0]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # the logger is still creating the file
            return 0
        raise


def sent_upto(buffer: Path) -> int:
    return int(meta(buffer, "sent_upto") or 0)


def reading_values(k: int) -> dict[str, float | None]:
    """Distinct, awkward doubles of the pac3100's columns for reading `k` (every one must
    survive the trip to MariaDB exactly)."""
    return {name: (k + 1) / 3 + i * 1e-7 - 1e5 * (i % 3 == 0) for i, name in enumerate(COLUMNS)}


#: Doubles a lossy path would change (a decimal fraction, a third, a tiny one, the largest
#: one), and a NULL (NaN/inf from the meter are stored as NULL).
TRICKY = {
    "tensao_l1_n": 0.1,
    "tensao_l2_n": 1 / 3,
    "tensao_l3_n": -1e-300,
    "corrente_l1": 123456789.12345679,
    "corrente_l2": 1.7976931348623157e308,
    "frequencia": None,
}


def failed_sync(buffer: Buffer, mariadb: MariaDBConfig) -> tuple[SyncWorker, str, float]:
    """One sync round of two new readings to a MariaDB that cannot be reached, which must
    raise SinkUnavailable: (the worker, the error's message, the seconds it took)."""
    worker = SyncWorker(buffer, MariaDBSink(mariadb, SITE), UNITS, 100)
    for k in range(2):
        buffer.append("pac1", 1_700_000_000.0 + k, reading_values(k))
    started = time.monotonic()
    with pytest.raises(SinkUnavailable) as info:
        worker.sync_once()
    return worker, str(info.value), time.monotonic() - started


MIB = 1024 * 1024


def prefill(path: Path, n: int) -> float:
    """A buffer of `n` unsent readings (as if MariaDB had been away); returns its MiB."""
    buffer = Buffer(path, COLUMNS)
    try:
        with buffer.db.atomic():
            for k in range(n):
                t = time.time() - 3600 + k
                buffer.append("pac1", t, {c: v for c, v in plant_values(t).items() if c in COLUMNS})
        buffer.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return buffer.size_bytes() / MIB
    finally:
        buffer.close()


def page_size(path: Path) -> int:
    """The page size in the SQLite file header (big-endian at offset 16; 1 means 65536)."""
    with path.open("rb") as f:
        f.seek(16)
        size = int.from_bytes(f.read(2), "big")
    return 65536 if size == 1 else size


#: The first byte of a table b-tree leaf page (the pages that hold the rows).
LEAF = 13


def corrupt_middle_pages(path: Path) -> None:
    """Zeros over the cells of the middle third of the leaf pages (headers intact), as in
    tests/test_buffer.py: quick_check reports the lost rows. Leaves only: a zeroed
    interior page loses its whole subtree, and `.dump` then ends in ROLLBACK."""
    page_bytes = page_size(path)
    pages = path.stat().st_size // page_bytes
    assert pages >= 12
    with path.open("r+b") as f:
        for page in range(pages // 3, 2 * pages // 3):
            f.seek(page * page_bytes)
            if f.read(1) != bytes([LEAF]):
                continue
            f.seek(page * page_bytes + 100)
            f.write(b"\0" * (page_bytes * 3 // 4))


def rows_by_meter(buffer: Path) -> dict[str, list[tuple[float, str | None]]]:
    """(measured_at, error) of every row of the buffer, per meter, in seq order (read-only)."""
    out: dict[str, list[tuple[float, str | None]]] = defaultdict(list)
    for meter, at, error in query(buffer, "SELECT meter, measured_at, error FROM readings ORDER BY seq"):
        out[meter].append((at, error))
    return out


# -- one row per slot, the cadence -----------------------------------------------------------


def common_slots(rows: dict[str, list[tuple[float, Any]]], interval: float) -> range:
    """The slots every meter was polled through: from the latest first slot to the
    earliest last one (the threads start, and stop, a moment apart)."""
    first = max(min(math.floor(at / interval) for at, _ in r) for r in rows.values())
    last = min(max(math.floor(at / interval) for at, _ in r) for r in rows.values())
    return range(first, last + 1)


def one_row_per_slot(meter_rows: list[tuple[float, Any]], slots: range, interval: float) -> list[Any]:
    """The `error` of the meter's row in each slot; fails unless there is exactly one."""
    by_slot: dict[int, list[Any]] = defaultdict(list)
    for at, error in meter_rows:
        by_slot[math.floor(at / interval)].append(error)
    missing = [k for k in slots if k not in by_slot]
    doubled = [k for k in slots if len(by_slot.get(k, [])) > 1]
    assert not missing and not doubled, (missing, doubled)
    return [by_slot[k][0] for k in slots]


#: Scheduling noise the cadence checks tolerate on a loaded 2-core CI machine: a few
#: slots missed in a row (< 1 s) and a few percent in all. A poll loop that waited for
#: the sync side would miss a connect/read timeout's worth (>= 1.5 s) at every retry.
NOISE_RUN_S = 1.0
NOISE_SHARE = 0.05


def assert_cadence(times: list[float], interval: float, start: float, end: float) -> None:
    """The polls stamped `times` (between `start` and `end`) kept the grid, but for noise."""
    times = [t for t in times if start <= t <= end]
    slots = (end - start) / interval
    missed, longest = _missed_slots(times, interval)
    assert longest * interval < NOISE_RUN_S, f"{longest} slots in a row without a poll"
    assert missed <= max(2, NOISE_SHARE * slots), f"{missed} of {slots:.0f} slots without a poll"
    assert len(times) <= int(end // interval) - int(start // interval) + 1, "more polls than slots: a burst"


def assert_polls_on_grid(buffer: Path, interval: float, start: float, end: float) -> None:
    """The polls the buffer holds between `start` and `end` kept the grid (`assert_cadence`):
    the poll loop went on while the sync side was failing."""
    rows = buffer_rows(buffer, "measured_at BETWEEN ? AND ?", start, end)
    assert_cadence([r["measured_at"] for r in rows], interval, start, end)


def _missed_slots(times: list[float], interval: float) -> tuple[int, int]:
    """(missed grid slots, longest run of missed slots) between the first and last time.
    A poll runs at k*interval and is stamped a little later, so floor() finds its slot."""
    slots = sorted({int(t // interval) for t in times})
    if len(slots) < 2:
        return 0, 0
    gaps = [b - a - 1 for a, b in itertools.pairwise(slots)]
    return sum(gaps), max(gaps)


# -- exactly once ----------------------------------------------------------------------------


def assert_exactly_once(buffer: Path, db: LoggerDB, *, values: bool = True) -> list[dict[str, Any]]:
    """After a drain: every row of the buffer is in MariaDB once, with its values, and
    MariaDB has nothing else for this buffer. Returns the buffer's rows."""
    local = buffer_rows(buffer)
    buffer_id = meta(buffer, "buffer_id")
    remote = [r for r in remote_rows(db) if r["buffer_id"] == buffer_id]
    keys = [(r["site"], r["buffer_id"], r["seq"]) for r in remote]
    assert len(keys) == len(set(keys)), "a reading is in MariaDB twice"
    assert [r["seq"] for r in remote] == [r["seq"] for r in local], "MariaDB and the buffer differ"
    assert int(meta(buffer, "sent_upto") or 0) >= (local[-1]["seq"] if local else 0)
    if values:
        for mine, theirs in zip(local, remote, strict=True):
            assert (mine["meter"], mine["error"], bool(mine["clock_ok"])) == (
                theirs["meter"],
                theirs["error"],
                bool(theirs["clock_ok"]),
            ), mine["seq"]
            for name in COLUMNS:
                assert mine[name] == theirs[name], (mine["seq"], name)
    return local


def sampled_invariant(buffer: Path, db: LoggerDB) -> None:
    """The position never runs ahead of MariaDB: every seq <= sent_upto is there.
    (Reads the position first: MariaDB only grows, so a later count can only help.)"""
    position = sent_upto(buffer)
    buffer_id = meta(buffer, "buffer_id")
    if not position or buffer_id is None:
        return
    quarantined = 0
    with contextlib.suppress(sqlite3.OperationalError):
        quarantined = query(buffer, "SELECT COUNT(*) FROM quarantine WHERE seq <= ?", position)[0][0]
    pruned_below = query(buffer, "SELECT COALESCE(MIN(seq), 1) FROM readings")[0][0] - 1
    there = db.query(
        f"SELECT COUNT(*) FROM `{db.database}`.`medicoes` WHERE buffer_id = %s AND seq <= %s AND seq > %s",
        (buffer_id, position, pruned_below),
    )[0][0]
    expected = position - pruned_below - quarantined
    # More is fine (a quarantined row retried between the two reads); fewer is a row
    # counted as sent that MariaDB lacks. Duplicates cannot exist (UNIQUE key).
    assert there >= expected, f"sent_upto {position} but MariaDB has {there} of {expected} rows up to it"


class InvariantWatch:
    """Checks `sampled_invariant` every 20 ms in a thread (with its own root connection)
    and counts the moments MariaDB held rows the position had not counted yet."""

    def __init__(self, buffer: Path, db: LoggerDB):
        self.buffer = buffer
        root = pymysql.connect(unix_socket=db.socket, user="root", autocommit=True)
        self.db = dataclasses.replace(db, root=root)
        self.violations: list[str] = []
        self.checks = 0
        self.ahead = 0  # samples with MariaDB's max seq > sent_upto (committed, not yet counted)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            if not self.buffer.exists() or meta(self.buffer, "buffer_id") is None:
                continue
            try:
                position = sent_upto(self.buffer)
                sampled_invariant(self.buffer, self.db)
                if remote_max_seq(self.db, meta(self.buffer, "buffer_id") or "") > position:
                    self.ahead += 1
            except AssertionError as exc:
                self.violations.append(str(exc))
            except Exception as exc:  # the table not created yet, a busy buffer: try again
                if "doesn't exist" not in str(exc) and "locked" not in str(exc):
                    self.violations.append(f"watch error: {exc}")
            self.checks += 1

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.db.root.close()
        assert not self.violations, self.violations[:3]
        assert self.checks > 0


def assert_served(rows: list[dict[str, Any]], served: list[dict[str, float]]) -> None:
    """Every reading's values are, bit for bit, values the meter served: checked per
    request of the poll (the simulator snapshots its registers at the first request of a
    poll, and a late answer to a timed-out poll can take a new snapshot in between)."""
    for request in plan_requests(PAC3100.registers):
        names = [r.name for r in request.registers]
        answers = {tuple(v[n] for n in names) for v in served}
        for row in rows:
            if row["error"] is None:
                assert tuple(row[n] for n in names) in answers, (row["seq"], names[0])


def assert_oldest_first(db: LoggerDB) -> None:
    """MariaDB's auto-increment id follows seq: the backlog went in oldest first."""
    rows = remote_rows(db, columns="id, seq")
    by_id = [r["seq"] for r in sorted(rows, key=lambda r: r["id"])]
    assert by_id == sorted(by_id)


FAILURE_LINE = re.compile(r"sync: (.*) \(failure (\d+) in a row; next try in")


def assert_failures_logged_sparingly(log_text: str) -> int:
    """The sync worker's policy: a line when a streak of failures starts, for each new
    error in it, and every 10th failure; never one line a retry. Returns the lines."""
    lines = [(m[1], int(m[2])) for m in map(FAILURE_LINE.search, log_text.splitlines()) if m]
    seen: set[str] = set()
    for message, n in lines:
        kind = "".join(c for c in message if not c.isdigit())
        if n == 1:
            seen = set()
        assert n == 1 or n % 10 == 0 or kind not in seen, f"logged again at failure {n}: {message}"
        seen.add(kind)
    worst = max((n for _, n in lines), default=0)
    if worst >= 5:
        assert len(lines) < worst, f"{len(lines)} lines for {worst} failures"
    return len(lines)
