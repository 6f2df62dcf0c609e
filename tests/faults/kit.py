"""Tools that inject faults for real: the `edgelog run` process, a TCP proxy that
black-holes or slows the link to MariaDB, and checks of "exactly once".

Nothing here fakes MariaDB or Modbus. The only fake is the wall clock of the
logger process (libfaketime), in test_clock.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import ROOT, LoggerDB, edgelog, wait_for

from edgelog.meter import plan_requests
from edgelog.profiles import PAC3100

COLUMNS = [r.name for r in PAC3100.registers]
SITE = "fault-site"


# -- config ----------------------------------------------------------------------------


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def _table(name: str, keys: Mapping[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {_value(v)}\n" for k, v in keys.items())


def mariadb_toml(db: LoggerDB, *, port: int | None = None, socket_path: bool = False, **extra: Any) -> str:
    """[mariadb] for `db`, over TCP (to `port`, e.g. a proxy's, else the server's) or its socket."""
    keys: dict[str, Any] = {"user": db.user, "password_file": str(db.password_file), "database": db.database}
    if socket_path:
        keys["unix_socket"] = db.socket
    else:
        keys.update(host="127.0.0.1", port=port or db.port)
    keys.update({"connect_timeout_s": 2, "read_timeout_s": 3, "write_timeout_s": 3, **extra})
    if os.environ.get("EDGELOG_TEST_FAST_PATH") == "false":  # .ci/run: the faults on the plain path
        keys.setdefault("fast_path", False)
    return _table("mariadb", keys)


def meter(name: str, port: int, interval_s: float = 0.2, **extra: Any) -> str:
    keys = {"name": name, "transport": "tcp", "host": "127.0.0.1", "port": port, "interval_s": interval_s}
    keys.setdefault("timeout_s", round(min(0.5, 0.75 * interval_s), 3))  # the bus's time budget
    keys.update(extra)
    return _table("[meters]", keys)


def write_config(
    tmp_path: Path,
    mariadb: str,
    *meters: str,
    buffer: Mapping[str, Any] | None = None,
    sync: Mapping[str, Any] | None = None,
    clock: Mapping[str, Any] | None = None,
    name: str = "edgelog.toml",
) -> Path:
    buf = {"path": str(tmp_path / "buffer.sqlite3"), **(buffer or {})}
    syn = {"interval_s": 0.2, "backoff_initial_s": 0.2, "backoff_max_s": 1.0, **(sync or {})}
    parts = [f"site = {_value(SITE)}\n", _table("buffer", buf), _table("sync", syn), mariadb, *meters]
    if clock:
        parts.append(_table("clock", clock))
    path = tmp_path / name
    path.write_text("\n".join(parts))
    path.chmod(0o600)
    return path


# -- the logger process ----------------------------------------------------------------


@dataclass
class Logger:
    """`edgelog run` as the real process, started and killed as often as a test likes."""

    config: Path
    log: Path
    buffer: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        full = {**os.environ, "PYTHONPATH": str(ROOT), **self.env, **env}
        for key in ("EDGELOG_CONFIG", "NOTIFY_SOCKET"):
            full.pop(key, None)
        cmd = [sys.executable, "-m", "edgelog", "--config", str(self.config), "run"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full)
        self.starts += 1
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def term(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

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


SKIPPED_IN_ALL = re.compile(r"meter \S+: (\d+) slot\(s\) skipped in all")


def skipped_slots(logger: Logger) -> int:
    """Slots `edgelog run` skipped (its bus too busy: a loaded machine at a short interval),
    each stored as a gap row `skipped: poll overran`: rows that are no poll. From the summary
    every run logs at its stop."""
    return sum(int(m[1]) for m in map(SKIPPED_IN_ALL.search, logger.text().splitlines()) if m)


def started_logger(tmp_path: Path, config: Path, buffer: Path | None = None) -> Logger:
    return Logger(config=config, log=tmp_path / "run.log", buffer=buffer or tmp_path / "buffer.sqlite3")


# -- the buffer, read behind the logger's back -----------------------------------------


def _connect(buffer: Path) -> sqlite3.Connection:
    """Read-only: the test never writes to the buffer, and (being the last connection to
    close after a kill) must not checkpoint and delete the WAL the kill left behind."""
    return sqlite3.connect(f"file:{buffer}?mode=ro", uri=True, timeout=30)


def _retrying(read):
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
    def read(connect) -> list[tuple[Any, ...]]:
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
    def read(connect) -> list[dict[str, Any]]:
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


def buffer_count(buffer: Path) -> int:
    if not buffer.exists():
        return 0
    try:
        return query(buffer, "SELECT COUNT(*) FROM readings")[0][0]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # not created yet
            return 0
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


# -- MariaDB ---------------------------------------------------------------------------


def remote_rows(db: LoggerDB, columns: str = "*") -> list[dict[str, Any]]:
    try:
        return db.rows(columns=columns)
    except Exception as exc:  # the table does not exist yet
        if "doesn't exist" in str(exc):
            return []
        raise


def remote_count(db: LoggerDB) -> int:
    try:
        return db.query(f"SELECT COUNT(*) FROM `{db.database}`.`medicoes`")[0][0]
    except Exception as exc:
        if "doesn't exist" in str(exc):
            return 0
        raise


def remote_max_seq(db: LoggerDB, buffer_id: str) -> int:
    try:
        rows = db.query(
            f"SELECT COALESCE(MAX(seq), 0) FROM `{db.database}`.`medicoes` WHERE buffer_id = %s", (buffer_id,)
        )
    except Exception as exc:
        if "doesn't exist" in str(exc):
            return 0
        raise
    return int(rows[0][0])


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
        import pymysql

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


# -- cadence ---------------------------------------------------------------------------


#: Scheduling noise the cadence checks tolerate on a loaded 2-core CI machine: a few
#: slots missed in a row (< 1 s) and a few percent in all. A poll loop that waited for
#: the sync side would miss a connect/read timeout's worth (>= 1.5 s) at every retry.
NOISE_RUN_S = 1.0
NOISE_SHARE = 0.05


def assert_cadence(times: list[float], interval: float, start: float, end: float) -> None:
    """The polls stamped `times` (between `start` and `end`) kept the grid, but for noise."""
    times = [t for t in times if start <= t <= end]
    slots = (end - start) / interval
    missed, longest = missed_slots(times, interval)
    assert longest * interval < NOISE_RUN_S, f"{longest} slots in a row without a poll"
    assert missed <= max(2, NOISE_SHARE * slots), f"{missed} of {slots:.0f} slots without a poll"
    assert len(times) <= int(end // interval) - int(start // interval) + 1, "more polls than slots: a burst"


def missed_slots(times: list[float], interval: float) -> tuple[int, int]:
    """(missed grid slots, longest run of missed slots) between the first and last time.
    A poll runs at k*interval and is stamped a little later, so floor() finds its slot."""
    slots = sorted({int(t // interval) for t in times})
    if len(slots) < 2:
        return 0, 0
    gaps = [b - a - 1 for a, b in itertools.pairwise(slots)]
    return sum(gaps), max(gaps)


# -- a TCP proxy that can fail like a network --------------------------------------------


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket | None):
        self.client, self.upstream = client, upstream
        self.frozen = False  # nothing more is forwarded, either way (no RST: a black hole)
        self.replies_frozen = False  # server -> client stops (the request got through)

    def close(self, upstream: bool = True) -> None:
        # shutdown(), not only close(): a thread blocked in recv() on the socket keeps
        # the connection open (no FIN) until it returns, and shutdown() makes it return.
        for s in (self.client, self.upstream) if upstream else (self.client,):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()


class TcpProxy:
    """127.0.0.1:<port> -> target, through threads that can stop forwarding without a
    reset (`blackhole`), delay every chunk (`latency_s`), cut the next big request in the
    middle (`cut_next_request`), or let a COMMIT through and lose its answer
    (`lose_commit_reply`). Frozen connections stay frozen; new ones follow the current mode."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.blackhole = False
        self.refuse = False
        self.latency_s = 0.0
        self.cut_next_request = False
        self.lose_commit_reply = False
        self.cuts = 0
        self.lost_replies = 0
        self.accepted = 0
        self.links: list[_Link] = []
        self._closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.refuse:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # RST
                client.close()
                continue
            upstream = None
            if not self.blackhole:
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
            link = _Link(client, upstream)
            link.frozen = upstream is None
            with self._lock:
                self.links.append(link)
            threading.Thread(target=self._pump, args=(link, True), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(link, False), daemon=True).start()

    def _pump(self, link: _Link, up: bool) -> None:
        src = link.client if up else link.upstream
        dst = link.upstream if up else link.client
        assert src is not None
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.blackhole:
                    link.frozen = True  # an existing connection goes silent too
                if link.frozen or (not up and link.replies_frozen):
                    continue  # read and drop: the sender sees no error, the peer nothing
                if self.latency_s:
                    time.sleep(self.latency_s)
                assert dst is not None
                # an INSERT (text protocol) or an EXECUTE of a prepared one (binary: 0x17)
                insert = b"INSERT INTO" in data or data[4:5] == b"\x17"
                if up and self.cut_next_request and insert:
                    self.cut_next_request = False
                    dst.sendall(data[: len(data) // 2])
                    link.frozen = True
                    self.cuts += 1
                    continue
                if up and self.lose_commit_reply and b"COMMIT" in data:
                    self.lose_commit_reply = False
                    link.replies_frozen = True
                    dst.sendall(data)
                    self.lost_replies += 1
                    continue
                dst.sendall(data)
        except OSError:
            pass
        # One side closed: close both, so the server rolls back what it has. Unless the
        # link is frozen: a partition eats the FIN too, the server keeps the session.
        link.close(upstream=not link.frozen)

    def cut(self) -> None:
        """MariaDB gone: reset every open connection, refuse new ones (until refuse = False)."""
        self.refuse = True
        with self._lock:
            for link in self.links:
                link.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            for link in self.links:
                link.close()


# -- libfaketime ------------------------------------------------------------------------


def faketime_library() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    return found[0] if found else None


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < seconds, f"{what} took {elapsed:.1f} s (limit {seconds} s)"


def wait_rows(db: LoggerDB, n: int, timeout: float = 30) -> None:
    wait_for(lambda: remote_count(db) >= n, timeout=timeout, what=f"{n} rows in MariaDB")
