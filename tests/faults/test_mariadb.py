"""Fault 2: MariaDB away while `edgelog run` polls: the server stopped, the login
refused, the table locked. Polling keeps its 5 Hz grid throughout, sync-status
shows the backlog grow and then drain, the backlog goes in oldest first, and
every reading arrives exactly once.

The stopped server is a private mariadbd (`own_mariadb`): the session server
is shared by every test and stays up.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path

import pymysql
from helpers import (
    COLUMNS,
    SITE,
    assert_exactly_once,
    assert_failures_logged_sparingly,
    assert_oldest_first,
    assert_polls_on_grid,
    meter_toml,
    query,
    sampled_invariant,
    wait_for,
    wait_rows,
)

from edgelog.buffer import Buffer
from edgelog.config import MariaDBConfig
from edgelog.sync import MariaDBSink, SyncWorker, create_table_sql

INTERVAL = 0.2


class UnsentSampler:
    """`unsent` as sync-status computes it, read from the buffer every few milliseconds
    (sync-status itself takes longer than the drain of a short backlog)."""

    def __init__(self, buffer: Path):
        self.buffer = buffer
        self.series: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.002):
            (n,) = query(
                self.buffer,
                "SELECT COUNT(*) FROM readings WHERE seq > "
                "(SELECT COALESCE(CAST(value AS INTEGER), 0) FROM meta WHERE key = 'sent_upto')",
            )[0]
            if not self.series or self.series[-1] != n:
                self.series.append(n)

    def close(self) -> list[int]:
        self.stop.set()
        self.thread.join(5)
        return self.series


def test_mariadb_stopped_polling_goes_on_and_the_backlog_drains_oldest_first(
    tmp_path: Path, own_mariadb, simulator, logger_factory
) -> None:
    db = own_mariadb.logger_db(tmp_path)
    logger = logger_factory(db.fault_toml(batch_size=5), meter_toml(simulator.port, interval_s=INTERVAL))
    with logger.running():
        wait_rows(db, 10)

        down_at = time.time()
        own_mariadb.stop()
        during = []
        while time.time() - down_at < 6:
            during.append(logger.status())
            time.sleep(0.4)
        up_at = time.time()
        sampler = UnsentSampler(logger.buffer)
        own_mariadb.start()
        db.root = own_mariadb.root()
        after = [logger.status()]
        while after[-1]["unsent"] > 0:
            assert time.time() - up_at < 60, "the backlog did not drain"
            time.sleep(0.3)
            after.append(logger.status())
        draining = sampler.close()
        sampled_invariant(logger.buffer, db)
    logger.drain()

    backlog = [s["unsent"] for s in during]
    assert backlog == sorted(backlog) and backlog[-1] >= backlog[0] + 15, backlog  # grows, 5/s
    assert not any(s["mariadb_reachable"] for s in during)
    assert all(s["last_error"] for s in during[2:]), [s["last_error"] for s in during]
    # then shrinks, batch after batch (batch_size 5), down to 0
    peak = draining.index(max(draining))
    assert draining[peak] >= backlog[-1] and 0 in draining[peak:], draining
    steps = draining[peak : draining.index(0, peak) + 1]
    assert len([n for n in steps if 0 < n < steps[0]]) >= 3, draining
    assert after[-1]["unsent"] == 0
    assert after[-1]["last_error"] is None and after[-1]["mariadb_reachable"] is True
    assert_polls_on_grid(logger.buffer, INTERVAL, down_at + 0.5, up_at)
    local = assert_exactly_once(logger.buffer, db)
    assert len(local) >= 40
    assert_oldest_first(db)
    # the outage is logged once (and every 10th failure), not once a retry
    assert assert_failures_logged_sparingly(logger.text()) >= 1
    assert len(logger.lines("sync: working again")) == 1


def _set_password(db, password: str) -> None:
    for host in ("localhost", "127.0.0.1"):
        db.query(f"ALTER USER '{db.user}'@'{host}' IDENTIFIED BY %s", (password,))


def _kill_sessions(db) -> int:
    ids = [
        r[0] for r in db.query("SELECT id FROM information_schema.processlist WHERE user = %s", (db.user,))
    ]
    for i in ids:
        with contextlib.suppress(pymysql.MySQLError):  # already gone
            db.query(f"KILL {int(i)}")
    return len(ids)


def test_login_refused_then_fixed_loses_and_duplicates_nothing(logger_db, simulator, logger_factory) -> None:
    logger = logger_factory(
        logger_db.fault_toml(socket_path=True), meter_toml(simulator.port, interval_s=INTERVAL)
    )
    with logger.running():
        wait_rows(logger_db, 10)
        real = logger_db.password_file.read_text().strip()
        wrong = "changed-by-the-dba-" + real[:4]

        _set_password(logger_db, wrong)
        refused_at = time.time()
        assert _kill_sessions(logger_db) >= 1  # the worker must log in again
        refused = wait_for(
            lambda: (s := logger.status())["last_error"] and "Access denied" in s["last_error"] and s,
            timeout=20,
            what="the refused login in sync-status",
        )
        time.sleep(2)
        later = logger.status()
        assert later["unsent"] > refused["unsent"] and "Access denied" in later["last_error"]
        assert later["mariadb_reachable"] is False
        fixed_at = time.time()
        _set_password(logger_db, real)
        wait_for(lambda: logger.status()["unsent"] == 0, timeout=30, what="the backlog drained")
    logger.drain()

    assert_exactly_once(logger.buffer, logger_db)
    assert_polls_on_grid(logger.buffer, INTERVAL, refused_at, fixed_at)
    assert_oldest_first(logger_db)
    text = logger.text()
    assert real not in text and wrong not in text
    assert assert_failures_logged_sparingly(text) >= 1
    assert len([x for x in logger.lines("Access denied") if "failure" in x]) >= 1


def test_table_locked_beyond_the_read_timeout_is_retried_without_loss(
    logger_db, simulator, logger_factory
) -> None:
    logger = logger_factory(
        logger_db.fault_toml(socket_path=True, read_timeout_s=1.5),
        meter_toml(simulator.port, interval_s=INTERVAL),
    )
    with logger.running():
        wait_rows(logger_db, 10)
        locker = pymysql.connect(unix_socket=logger_db.socket, user="root", autocommit=True)
        try:
            with locker.cursor() as cur:
                cur.execute(f"LOCK TABLES `{logger_db.database}`.`medicoes` WRITE")
            locked_at = time.time()
            first = wait_for(
                lambda: (s := logger.status())["last_error"] and "timed out" in s["last_error"] and s,
                timeout=20,
                what="a timed-out write in sync-status",
            )
            time.sleep(3.5)  # several read timeouts and retries
            second = logger.status()
            assert second["unsent"] > first["unsent"]
            unlocked_at = time.time()
        finally:
            with locker.cursor() as cur:
                cur.execute("UNLOCK TABLES")
            locker.close()
        wait_for(lambda: logger.status()["unsent"] == 0, timeout=30, what="the backlog drained")
        sampled_invariant(logger.buffer, logger_db)
    logger.drain()

    assert_exactly_once(logger.buffer, logger_db)
    assert_polls_on_grid(logger.buffer, INTERVAL, locked_at, unlocked_at)
    assert_oldest_first(logger_db)


def _same_account_on(server, db) -> None:
    """`db`'s database, user and password (and an empty table) on another server."""
    password = db.password_file.read_text().strip()
    root = server.root()
    with root.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db.database}`")
        for host in ("localhost", "127.0.0.1"):
            cur.execute(f"CREATE USER '{db.user}'@'{host}' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT SELECT, INSERT, UPDATE ON `{db.database}`.* TO '{db.user}'@'{host}'")
        cur.execute(f"USE `{db.database}`")
        cur.execute(create_table_sql("medicoes", {c: "" for c in COLUMNS}))
    root.close()


def _thread_id(connect) -> int:
    conn = connect()
    try:
        return conn.thread_id()
    finally:
        conn.close()


def test_a_session_given_up_on_one_node_is_killed_on_that_node_only(
    tmp_path: Path, logger_db, own_mariadb, caplog
) -> None:
    """Node A times out; the sink moves on to node B, where the same thread id is another
    session of the same user: it must live. Back on A, the orphan is KILLed there."""
    _same_account_on(own_mariadb, logger_db)
    password = logger_db.password_file.read_text().strip()

    def on_b() -> pymysql.connections.Connection:  # the account the sink logs in as
        port = own_mariadb.port
        return pymysql.connect(host="127.0.0.1", port=port, user=logger_db.user, password=password)

    def on_a_root() -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=logger_db.socket, user="root", autocommit=True)

    b_now = _thread_id(on_b)
    while _thread_id(on_a_root) < b_now + 10:  # A's next ids are above B's
        pass
    node_a, node_b = f"127.0.0.1:{logger_db.port}", f"127.0.0.1:{own_mariadb.port}"
    cfg = MariaDBConfig(
        user=logger_db.user,
        password_file=logger_db.password_file,
        database=logger_db.database,
        hosts=(("127.0.0.1", logger_db.port), ("127.0.0.1", own_mariadb.port)),
        connect_timeout_s=2,
        read_timeout_s=1.5,
        write_timeout_s=1.5,
    )
    buffer = Buffer(tmp_path / "buffer.sqlite3", COLUMNS)
    sink = MariaDBSink(cfg, SITE)
    worker = SyncWorker(buffer, sink, {c: "" for c in COLUMNS}, 10)
    locker = on_a_root()
    victim = None
    try:
        buffer.append("pac1", time.time() - 10, dict.fromkeys(COLUMNS, 1.0))
        assert worker.sync_once() == 1  # through A (the first listed)
        orphan = sink.conn.thread_id()
        while (victim := on_b()).thread_id() < orphan:  # B's session with A's thread id
            victim.close()
        assert victim.thread_id() == orphan, "B's thread ids passed A's: cannot stage the victim"

        with locker.cursor() as cur:
            cur.execute(f"LOCK TABLES `{logger_db.database}`.`medicoes` WRITE")
        buffer.append("pac1", time.time() - 5, dict.fromkeys(COLUMNS, 2.0))
        caplog.set_level("DEBUG", logger="edgelog.sync.mariadb")
        assert worker.sync_once() == 1  # A timed out; B took the row at once
        assert sink.nodes.current.label == node_b
        assert {n.label: t for n, t in sink.nodes.orphans.items()} == {node_a: orphan}
        victim.ping(reconnect=False)  # alive: nothing was KILLed on B
        assert "killed MariaDB session" not in caplog.text
        with locker.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE id = %s", (orphan,))
            assert cur.fetchone()[0] == 1, "the orphan still waits for the lock on A"

        victim.close()
        victim = None
        own_mariadb.stop()  # B goes away: the sink returns to A, and KILLs its orphan there
        sink.ping()
        assert sink.nodes.current.label == node_a
        # KILLed there, or found gone already (1094): the server saw the FIN of the socket
        # the sink closed, and ended the session waiting for the lock by itself
        assert re.search(
            f"session {orphan} on {re.escape(node_a)} (not killed: .1094|, given up)", caplog.text
        )

        def orphan_gone() -> bool:
            with locker.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE id = %s", (orphan,))
                return cur.fetchone()[0] == 0

        wait_for(orphan_gone, timeout=10, what="the orphan session on A to be gone")
    finally:
        with locker.cursor() as cur:
            cur.execute("UNLOCK TABLES")
        locker.close()
        if victim is not None:
            victim.close()
        sink.close()
        buffer.close()
