"""The sync path against the real MariaDB: buffer -> SyncWorker -> MariaDBSink -> table.

Every test talks to the private mariadbd of this session as the least-privilege
user of `logger_db` (no DELETE, no DROP); root is used only to look at the result
or to break things on purpose (lock a table, change a column type).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pymysql
import pytest
from helpers import (
    COLUMNS,
    EXTRA,
    EXTRA_TOML,
    TRICKY,
    UNITS,
    LoggerDB,
    failed_sync,
    free_port,
    meter_toml,
    parse_config,
    reading_values,
    toml_table,
    wait_for,
)

from edgelog.buffer import Buffer
from edgelog.config import Config, MariaDBConfig, SyncConfig
from edgelog.errors import SinkRejected, SinkUnavailable
from edgelog.sync import MariaDBSink, SyncWorker
from edgelog.sync.mariadb import INSERT_COLUMNS

SITE = "chapada-imperial"


# -- helpers ---------------------------------------------------------------------------


def config_for(logger_db: LoggerDB, *, extra_register: bool = False, **mariadb: Any) -> Config:
    """A validated config for `logger_db` (over its unix socket), as `edgelog.toml` would give."""
    return parse_config(
        toml_table("[sync]", {"interval_s": 0.1, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}),
        logger_db.toml(**mariadb),
        meter_toml(5020)  # never polled here: only its registers matter
        + (EXTRA_TOML if extra_register else ""),
        site=SITE,
    )


def worker_for(buffer: Buffer, cfg: Config, batch_size: int = 1000) -> SyncWorker:
    return SyncWorker(buffer, MariaDBSink(cfg.mariadb, cfg.site), cfg.columns(), batch_size, cfg.sync)


def sending_worker(buffer: Buffer, cfg: Config, n: int) -> SyncWorker:
    """A worker for `cfg` that has sent `n` new readings: its table made, its session open."""
    worker = worker_for(buffer, cfg)
    fill(buffer, n)
    assert worker.drain() == n
    return worker


def fill(buffer: Buffer, n: int, start: float = 1_700_000_000.0) -> list[int]:
    return [buffer.append("pac1", start + k, reading_values(k)) for k in range(n)]


def remote_rows(logger_db: LoggerDB) -> list[dict[str, Any]]:
    return logger_db.rows()


def table_columns(logger_db: LoggerDB) -> list[tuple[str, str, str, str]]:
    """(name, column_type, is_nullable, comment) of `medicoes`, in table order."""
    return [
        tuple(row)
        for row in logger_db.query(
            "SELECT column_name, column_type, is_nullable, column_comment "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name = 'medicoes' "
            "ORDER BY ordinal_position",
            (logger_db.database,),
        )
    ]


# -- the table and the values ----------------------------------------------------------


def test_ensure_table_creates_medicoes_and_rows_arrive_with_the_buffered_values(
    logger_db: LoggerDB, buffer: Buffer
) -> None:
    cfg = config_for(logger_db)
    tricky = {**reading_values(0), **TRICKY, "corrente_neutro": None}
    long_error = "x" * 400
    seqs = [
        buffer.append("pac1", 1_700_000_000.123, tricky),
        buffer.append("pac2", 1_700_000_001.5, reading_values(1), clock_ok=False),
        buffer.append("pac1", 1_700_000_002.007, None, error=long_error),  # a failed poll: a gap
    ]
    worker = worker_for(buffer, cfg)

    assert worker.drain() == 3
    worker.sink.close()

    # the table: the columns of create_table_sql, in order, with their types
    columns = table_columns(logger_db)
    assert [c[0] for c in columns] == ["id", *INSERT_COLUMNS, *COLUMNS]
    types = {name: (ctype, nullable, comment) for name, ctype, nullable, comment in columns}
    assert types["measured_at"][0] == "datetime(3)"
    assert types["seq"][0] == "bigint(20) unsigned"
    for name in COLUMNS:
        assert types[name] == ("double", "YES", UNITS[name]), name
    unique = logger_db.query(
        "SELECT index_name, column_name FROM information_schema.statistics "
        "WHERE table_schema = %s AND table_name = 'medicoes' AND non_unique = 0 "
        "ORDER BY index_name, seq_in_index",
        (logger_db.database,),
    )
    assert [c for i, c in unique if i == "uq_reading"] == ["site", "buffer_id", "seq"]

    # the rows: exactly the buffer's
    rows = remote_rows(logger_db)
    assert [r["seq"] for r in rows] == seqs
    assert {r["site"] for r in rows} == {SITE}
    assert {r["buffer_id"] for r in rows} == {buffer.buffer_id}
    assert [r["meter"] for r in rows] == ["pac1", "pac2", "pac1"]
    assert [r["clock_ok"] for r in rows] == [1, 0, 1]
    assert [r["measured_at"] for r in rows] == [
        dt.datetime(2023, 11, 14, 22, 13, 20, 123000),  # UTC, milliseconds kept
        dt.datetime(2023, 11, 14, 22, 13, 21, 500000),
        dt.datetime(2023, 11, 14, 22, 13, 22, 7000),
    ]
    for name in COLUMNS:
        assert rows[0][name] == tricky[name], name  # floats exact, None -> NULL
        assert rows[1][name] == reading_values(1)[name], name
        assert rows[2][name] is None, name
    assert rows[0]["frequencia"] is None and rows[0]["corrente_l2"] == 1.7976931348623157e308
    assert rows[0]["error"] is None and rows[1]["error"] is None
    assert len(rows[2]["error"]) == 255 and rows[2]["error"].startswith("xxx")
    assert rows[2]["error"].endswith("…")  # clipped to VARCHAR(255)
    assert buffer.sent_upto == seqs[-1] and buffer.status().unsent == 0


def test_a_new_register_adds_a_nullable_column_and_a_removed_one_is_never_dropped(
    logger_db: LoggerDB, tmp_path: Path
) -> None:
    path = tmp_path / "buffer.sqlite3"
    before = config_for(logger_db)
    buffer = Buffer(path, before.columns())
    fill(buffer, 2)
    assert worker_for(buffer, before).drain() == 2
    buffer.close()
    assert EXTRA not in [c[0] for c in table_columns(logger_db)]

    # the config gains a register: the buffer and the table gain a column
    grown = config_for(logger_db, extra_register=True)
    assert list(grown.columns()) == [*COLUMNS, EXTRA]
    buffer = Buffer(path, grown.columns())
    seq = buffer.append("pac1", 1_700_000_100.0, {**reading_values(5), EXTRA: 42.5})
    assert worker_for(buffer, grown).drain() == 1
    buffer.close()
    columns = table_columns(logger_db)
    assert columns[-1] == (EXTRA, "double", "YES", "kWh")
    rows = remote_rows(logger_db)
    assert [r[EXTRA] for r in rows] == [None, None, 42.5]
    assert rows[-1]["seq"] == seq and rows[-1]["tensao_l1_n"] == reading_values(5)["tensao_l1_n"]

    # the register is removed again: ensure_table leaves the column (and its data) alone
    shrunk = config_for(logger_db)
    sink = MariaDBSink(shrunk.mariadb, shrunk.site)
    sink.ensure_table(shrunk.columns())
    sink.close()
    assert table_columns(logger_db) == columns
    fresh = Buffer(tmp_path / "other.sqlite3", shrunk.columns())  # a new logger without the register
    fill(fresh, 2)
    assert worker_for(fresh, shrunk).drain() == 2
    fresh.close()
    assert table_columns(logger_db) == columns
    rows = remote_rows(logger_db)
    assert len(rows) == 5
    assert sorted(r[EXTRA] for r in rows if r[EXTRA] is not None) == [42.5]


# -- idempotence -----------------------------------------------------------------------


def test_a_crash_between_mariadb_commit_and_mark_sent_duplicates_nothing(
    logger_db: LoggerDB, buffer: Buffer
) -> None:
    cfg = config_for(logger_db)
    seqs = fill(buffer, 10)

    # the logger commits a batch in MariaDB and dies before recording it in the buffer
    sink = MariaDBSink(cfg.mariadb, cfg.site)
    sink.ensure_table(cfg.columns())
    sink.write_batch(buffer.buffer_id, buffer.value_columns, buffer.unsent(4))
    sink.close()
    assert buffer.sent_upto == 0 and buffer.status().unsent == 10
    assert logger_db.count() == (4, 4)

    # the next start: the worker learns from high_water that seq 1..4 are there
    worker = worker_for(buffer, cfg, batch_size=3)
    assert worker.sink.high_water(buffer.buffer_id) == seqs[3]
    assert worker.drain() == 6  # only what MariaDB did not have; nothing sent twice
    worker.sink.close()
    assert logger_db.count() == (10, 10)
    assert [r["seq"] for r in remote_rows(logger_db)] == seqs
    assert buffer.sent_upto == seqs[-1] and buffer.status().unsent == 0
    assert buffer.status().last_sync_at is not None


def test_replaying_a_batch_changes_nothing(logger_db: LoggerDB, buffer: Buffer) -> None:
    cfg = config_for(logger_db)
    fill(buffer, 6)
    sink = MariaDBSink(cfg.mariadb, cfg.site)
    sink.ensure_table(cfg.columns())
    first = buffer.unsent(4)
    sink.write_batch(buffer.buffer_id, buffer.value_columns, first)
    sink.write_batch(buffer.buffer_id, buffer.value_columns, first)
    assert logger_db.count() == (4, 4)

    # a replay never overwrites what MariaDB has, even if the row differs
    changed = [(*row[:5], *([-1.0] * len(COLUMNS))) for row in first]
    sink.write_batch(buffer.buffer_id, buffer.value_columns, changed)
    # an overlapping batch adds only the new rows
    sink.write_batch(buffer.buffer_id, buffer.value_columns, buffer.unsent(10, after=2))
    sink.close()
    assert logger_db.count() == (6, 6)
    rows = remote_rows(logger_db)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for k, row in enumerate(rows):
        assert [row[c] for c in COLUMNS] == [reading_values(k)[c] for c in COLUMNS]


# -- least privilege -------------------------------------------------------------------


def test_the_least_privilege_user_creates_extends_and_fills_the_table(
    logger_db: LoggerDB, tmp_path: Path
) -> None:
    grants = " ".join(
        g for (g,) in logger_db.query(f"SHOW GRANTS FOR '{logger_db.user}'@'localhost'")
    ).upper()
    assert f"ON `{logger_db.database}`.*".upper() in grants
    for needed in ("SELECT", "INSERT", "UPDATE", "CREATE", "ALTER", "INDEX"):
        assert needed in grants
    for absent in ("DELETE", "DROP", "ALL PRIVILEGES", "SUPER", "GRANT OPTION"):
        assert absent not in grants

    # record every statement the user sends while the worker does everything it ever does
    ((log_output,),) = logger_db.query("SELECT @@GLOBAL.log_output")
    logger_db.query("TRUNCATE TABLE mysql.general_log")
    logger_db.query("SET GLOBAL log_output = 'TABLE', general_log = 1")
    try:
        path = tmp_path / "buffer.sqlite3"
        cfg = config_for(logger_db)
        buffer = Buffer(path, cfg.columns())
        fill(buffer, 3)
        assert worker_for(buffer, cfg).drain() == 3  # CREATE TABLE + INSERT
        sink = MariaDBSink(cfg.mariadb, cfg.site)
        sink.write_batch(buffer.buffer_id, buffer.value_columns, buffer.unsent(3, after=0))  # replay
        sink.close()
        buffer.close()
        grown = config_for(logger_db, extra_register=True)
        buffer = Buffer(path, grown.columns())
        buffer.append("pac1", 1_700_000_010.0, {EXTRA: 1.0})
        assert worker_for(buffer, grown).drain() == 1  # ALTER TABLE + INSERT
        buffer.close()
    finally:
        logger_db.query("SET GLOBAL general_log = 0, log_output = %s", (log_output,))
    statements = [
        str(arg.decode() if isinstance(arg, bytes) else arg).strip().upper()
        for (arg,) in logger_db.query(
            "SELECT argument FROM mysql.general_log WHERE command_type = 'Query' AND user_host LIKE %s",
            (f"{logger_db.user}[%",),
        )
    ]
    logger_db.query("TRUNCATE TABLE mysql.general_log")
    verbs = {s.split()[0] for s in statements}
    assert any(s.startswith("CREATE TABLE") for s in statements)
    assert any(s.startswith("ALTER TABLE") for s in statements)
    assert sum(s.startswith("INSERT INTO") for s in statements) >= 3
    assert not verbs & {"DELETE", "DROP", "TRUNCATE", "REPLACE", "GRANT", "RENAME"}, verbs
    assert logger_db.count() == (4, 4)


# -- MariaDB unavailable, slow, or refusing ------------------------------------------------


def test_a_closed_port_is_unavailable_at_once(buffer: Buffer) -> None:
    port = free_port()
    cfg = MariaDBConfig(user="edgelog", password="pw", host="127.0.0.1", port=port, connect_timeout_s=5)
    _, message, took = failed_sync(buffer, cfg)
    assert took < 2
    assert f"127.0.0.1:{port}" in message and "\n" not in message
    assert buffer.sent_upto == 0 and buffer.status().unsent == 2


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP listener that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed
            accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()
    for conn in accepted:
        conn.close()


def test_a_server_that_accepts_and_never_answers_fails_within_connect_timeout(
    silent_server: tuple[int, list[socket.socket]],
) -> None:
    port, accepted = silent_server
    # read_timeout stays at its 30 s default: connect_timeout_s alone must bound the login
    cfg = MariaDBConfig(user="edgelog", password="pw", host="127.0.0.1", port=port, connect_timeout_s=1)
    sink = MariaDBSink(cfg, SITE)
    started = time.monotonic()
    with pytest.raises(SinkUnavailable) as info:
        sink.ping()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5, elapsed
    assert accepted, "the client never reached the listener"
    assert "\n" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)
    assert sink.conn is None


@pytest.fixture
def table_lock(logger_db: LoggerDB) -> Iterator[Any]:
    """A separate root session that can hold LOCK TABLES ... WRITE on `medicoes`."""
    conn = pymysql.connect(unix_socket=logger_db.socket, user="root", autocommit=True)
    yield conn
    conn.close()  # releases any lock still held


def test_a_server_that_hangs_mid_query_raises_and_nothing_is_marked_sent(
    logger_db: LoggerDB, buffer: Buffer, table_lock: Any
) -> None:
    worker = sending_worker(buffer, config_for(logger_db, read_timeout_s=1, write_timeout_s=1), 3)
    seqs = [buffer.append("pac1", 1_700_000_100.0 + k, reading_values(k)) for k in range(3)]

    with table_lock.cursor() as cur:
        cur.execute(f"LOCK TABLES `{logger_db.database}`.`medicoes` WRITE")
    started = time.monotonic()
    with pytest.raises(SinkUnavailable) as info:
        worker.sync_once()  # the INSERT waits for the lock; the read timeout ends the wait
    assert time.monotonic() - started < 5
    assert "\n" not in str(info.value)
    assert buffer.sent_upto == 3 and buffer.status().unsent == 3
    with table_lock.cursor() as cur:
        cur.execute("UNLOCK TABLES")

    assert logger_db.count() == (3, 3)
    assert worker.drain() == 3  # the same batch, once the server answers again
    worker.sink.close()
    assert logger_db.count() == (6, 6)
    assert buffer.sent_upto == seqs[-1]


def test_a_query_longer_than_connect_timeout_but_within_read_timeout_succeeds(
    logger_db: LoggerDB, buffer: Buffer, table_lock: Any
) -> None:
    worker = sending_worker(buffer, config_for(logger_db, connect_timeout_s=1, read_timeout_s=10), 1)
    fill(buffer, 2)
    with table_lock.cursor() as cur:
        cur.execute(f"LOCK TABLES `{logger_db.database}`.`medicoes` WRITE")
    unlock = threading.Timer(2.0, lambda: table_lock.cursor().execute("UNLOCK TABLES"))
    unlock.start()
    started = time.monotonic()
    try:
        assert worker.drain() == 2
    finally:
        unlock.join()
        worker.sink.close()
    assert time.monotonic() - started >= 1.5  # it did wait for the lock, past connect_timeout
    assert logger_db.count() == (3, 3)


def test_a_wrong_password_is_one_line_without_the_password(
    logger_db: LoggerDB, tmp_path: Path, buffer: Buffer
) -> None:
    real = logger_db.password_file.read_text().strip()
    wrong = "Wr0ng-s3cret-Passw0rd"
    bad = tmp_path / "wrong.password"
    bad.write_text(wrong + "\n")
    bad.chmod(0o600)
    for transport in ("socket", "tcp"):
        cfg = config_for(logger_db, transport=transport)
        cfg_bad = replace(cfg.mariadb, password_file=bad)
        worker = SyncWorker(buffer, MariaDBSink(cfg_bad, SITE), UNITS, 100)
        fill(buffer, 1)
        with pytest.raises(SinkUnavailable) as info:
            worker.sync_once()
        message = str(info.value)
        assert "(1045)" in message and "Access denied" in message, message
        assert "\n" not in message
        assert wrong not in message and real not in message
        assert buffer.sent_upto == 0


# -- retrying ----------------------------------------------------------------------------


def test_backoff_grows_exponentially_and_is_capped(buffer: Buffer) -> None:
    sink = MariaDBSink(MariaDBConfig(user="edgelog"), SITE)  # never connects here
    worker = SyncWorker(buffer, sink, UNITS, 1, SyncConfig(backoff_initial_s=0.5, backoff_max_s=20.0))
    ceilings = [0.5, 1, 2, 4, 8, 16, 20, 20, 20, 20]
    means = []
    for failures, ceiling in enumerate(ceilings, start=1):
        worker.failing.count = failures
        draws = [worker.backoff_s() for _ in range(400)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in draws), (failures, min(draws), max(draws))
        assert max(draws) > ceiling * 0.95 and min(draws) < ceiling * 0.55  # jitter spans the range
        means.append(statistics.fmean(draws))
    for a, b in itertools.pairwise(means[:6]):
        assert 1.6 < b / a < 2.5  # doubles while under the cap
    assert max(means[6:]) < 20 * 0.85
    for failures in (100, 10_000, 10**9):  # no overflow, still capped
        worker.failing.count = failures
        assert all(10 <= worker.backoff_s() <= 20 for _ in range(50))


def test_run_keeps_retrying_until_mariadb_lets_it_in_then_delivers_everything(
    logger_db: LoggerDB, tmp_path: Path, buffer: Buffer
) -> None:
    real = logger_db.password_file.read_text()
    password_file = tmp_path / "rotating.password"
    password_file.write_text("not-yet-the-password\n")
    password_file.chmod(0o600)
    cfg = config_for(logger_db)
    cfg = replace(cfg, mariadb=replace(cfg.mariadb, password_file=password_file))
    worker = worker_for(buffer, cfg, batch_size=4)
    fill(buffer, 5)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        error = wait_for(lambda: buffer.status().last_error, timeout=10, what="last_error")
        assert "Access denied" in error and "not-yet-the-password" not in error
        wait_for(lambda: worker.failures >= 3, timeout=10, what="several retries")
        assert buffer.status().unsent == 5
        # the poll loop keeps buffering meanwhile
        fill(buffer, 4, start=1_700_000_100.0)
        assert buffer.status().unsent == 9 and thread.is_alive()

        password_file.write_text(real)  # the admin fixes the password (read at every login)
        wait_for(lambda: buffer.status().unsent == 0, timeout=10, what="everything delivered")
        wait_for(lambda: buffer.status().last_error is None, timeout=5, what="last_error cleared")
        assert worker.failures == 0
        fill(buffer, 2, start=1_700_000_200.0)  # later readings follow at interval_s
        wait_for(lambda: buffer.status().unsent == 0, timeout=10, what="new readings delivered")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert logger_db.count() == (11, 11)
    assert [r["seq"] for r in remote_rows(logger_db)] == list(range(1, 12))
    assert buffer.status().last_sync_at is not None
    assert worker.sink.conn is None  # run() closes the connection when it stops


def test_a_value_the_table_refuses_is_rejected_not_unavailable(logger_db: LoggerDB, buffer: Buffer) -> None:
    cfg = config_for(logger_db)
    worker = worker_for(buffer, cfg, batch_size=1)
    buffer.append("pac1", 1_700_000_000.0, {**reading_values(0), "tensao_l1_n": 126.9})
    assert worker.drain() == 1
    logger_db.query(f"ALTER TABLE `{logger_db.database}`.`medicoes` MODIFY `tensao_l1_n` DECIMAL(5,1) NULL")
    good = buffer.append("pac1", 1_700_000_010.0, {**reading_values(1), "tensao_l1_n": 127.4})
    poison = buffer.append("pac1", 1_700_000_011.0, {**reading_values(2), "tensao_l1_n": 1e9})

    assert worker.sync_once() == 1  # a value that fits DECIMAL(5,1) still goes through
    with pytest.raises(SinkRejected) as info:
        worker.sync_once()
    assert not isinstance(info.value, SinkUnavailable)
    assert "(1264)" in str(info.value) and "tensao_l1_n" in str(info.value)
    assert buffer.sent_upto == good  # the poison row stays unsent
    seqs = [r["seq"] for r in remote_rows(logger_db)]
    assert good in seqs and poison not in seqs
    (value,) = logger_db.query(
        f"SELECT tensao_l1_n FROM `{logger_db.database}`.`medicoes` WHERE seq = %s", (good,)
    )[0]
    assert math.isclose(float(value), 127.4)
    worker.sink.close()
