"""Shared fixtures: a real MariaDB (pytest-mysql), a real Modbus server, config files.

Nothing here is a fake: the MariaDB is Debian's mariadbd started for this test
session, the meter is pymodbus's server running the PAC3100 simulator.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

from edgelog.profiles import PAC3100_ENERGIA
from edgelog.simulate import Pac3100Simulator, SimulatorThread

ROOT = Path(__file__).resolve().parent.parent
PRIVILEGES = "SELECT, INSERT, UPDATE, CREATE, ALTER, INDEX"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With EDGELOG_NO_SKIPS=1 (CI sets it) a skipped test fails: there every tool a test
    needs is installed by scripts/setup, so a skip means a fault goes untested."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("EDGELOG_NO_SKIPS") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped where skips are not allowed (EDGELOG_NO_SKIPS=1): {reason}"


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

    def toml(self, transport: str = "socket", **extra: Any) -> str:
        lines = [
            "[mariadb]",
            f'user = "{self.user}"',
            f'password_file = "{self.password_file}"',
            f'database = "{self.database}"',
        ]
        if transport == "socket":
            lines.append(f'unix_socket = "{self.socket}"')
        else:
            lines += [f'host = "{self.host}"', f"port = {self.port}"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in extra.items()]
        return "\n".join(lines) + "\n"

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


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


@pytest.fixture(scope="session")
def mariadb_root(mysql_proc) -> Iterator[Any]:
    conn = pymysql.connect(unix_socket=mysql_proc.unixsocket, user="root", autocommit=True)
    yield conn
    conn.close()


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


@pytest.fixture
def logger_db(mysql_proc, mariadb_root, tmp_path: Path) -> Iterator[LoggerDB]:
    """`create_logger_db` on the session's MariaDB, dropped afterwards."""
    db = create_logger_db(mariadb_root, mysql_proc.unixsocket, mysql_proc.port, tmp_path / "mariadb.password")
    yield db
    database, user = db.database, db.user
    with mariadb_root.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        for host in ("localhost", "127.0.0.1"):
            cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")


@pytest.fixture
def simulator() -> Iterator[SimulatorThread]:
    """A PAC3100 simulator on a free TCP port of 127.0.0.1."""
    thread = SimulatorThread(Pac3100Simulator()).start()
    yield thread
    thread.stop()


@pytest.fixture
def simulator_energia() -> Iterator[SimulatorThread]:
    """A PAC3100 simulator that also serves the energy counters (profile pac3100-energia)."""
    thread = SimulatorThread(Pac3100Simulator(profile=PAC3100_ENERGIA)).start()
    yield thread
    thread.stop()


def meter_toml(port: int, name: str = "pac1", interval_s: float = 1.0, **extra: Any) -> str:
    lines = [
        "[[meters]]",
        f'name = "{name}"',
        'transport = "tcp"',
        'host = "127.0.0.1"',
        f"port = {port}",
        f"interval_s = {interval_s}",
        # within the bus's time budget (timeout_s < interval_s), as the config requires
        f"timeout_s = {round(min(0.5, 0.75 * interval_s), 3)}",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def write_config(
    tmp_path: Path,
    *sections: str,
    site: str = "test-site",
    buffer: Path | None = None,
    sync_interval_s: float = 0.5,
) -> Path:
    buffer = buffer or tmp_path / "buffer.sqlite3"
    text = (
        f'site = "{site}"\n\n[buffer]\npath = "{buffer}"\n\n'
        f"[sync]\ninterval_s = {sync_interval_s}\nbackoff_initial_s = 0.2\nbackoff_max_s = 2\n\n"
        + "\n".join(sections)
    )
    path = tmp_path / "edgelog.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def edgelog(
    *args: str, config: Path | None = None, timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real `edgelog` command line in a subprocess."""
    cmd = [sys.executable, "-m", "edgelog"]
    if config is not None:
        cmd += ["--config", str(config)]
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=_env())
    if check and result.returncode != 0:
        raise AssertionError(f"edgelog {args} exited {result.returncode}: {result.stderr}")
    return result


#: tests/inject/sitecustomize.py: test-only faults injected inside an `edgelog` process.
INJECT = ROOT / "tests" / "inject"


def start_edgelog(
    *args: str, config: Path, log: Path, fault: str | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`edgelog --config CONFIG ARGS` in the background, its output appended to `log`.
    `fault` (even "") puts tests/inject first on PYTHONPATH with EDGELOG_TEST_FAULT=fault."""
    cmd = [sys.executable, "-m", "edgelog", "--config", str(config), *args]
    full = _env()
    if fault is not None:
        full["PYTHONPATH"] = f"{INJECT}{os.pathsep}{ROOT}"
        full["EDGELOG_TEST_FAULT"] = fault
    full.update(env or {})
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=full)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout)


def wait_for(predicate, timeout: float = 20, every: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("EDGELOG_CONFIG", None)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = str(ROOT)
    return env


# -- one row per slot ---------------------------------------------------------------------


def rows_by_meter(buffer: Path) -> dict[str, list[tuple[float, str | None]]]:
    """(measured_at, error) of every row of the buffer, per meter, in seq order (read-only)."""
    with closing(sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute("SELECT meter, measured_at, error FROM readings ORDER BY seq").fetchall()
    out: dict[str, list[tuple[float, str | None]]] = defaultdict(list)
    for meter, at, error in rows:
        out[meter].append((at, error))
    return out


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
