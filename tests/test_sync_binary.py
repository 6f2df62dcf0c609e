"""The backlog path: batches of BINARY_MIN_ROWS rows or more travel as prepared
binary INSERTs (the fast path), or, with `[mariadb] fast_path = false` or once the fast
path is off, by the plain executemany INSERT. Every value must arrive exactly as the
buffer holds it on either path: doubles that are not float32, NULLs, failed polls,
clock flags, sub-millisecond times. And when the fast path breaks under a library
upgrade, every reading still arrives exactly once, and sync-status says so."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import LoggerDB, edgelog, meter_toml, write_config
from pymysql.connections import Connection
from pymysql.protocol import MysqlPacket

from edgelog.buffer import Buffer
from edgelog.clock import utc_text
from edgelog.config import MariaDBConfig
from edgelog.sync import MariaDBSink, SyncWorker, wire
from edgelog.sync.connect import private_names_problem
from edgelog.sync.mariadb import BINARY_MIN_ROWS
from edgelog.sync.worker import SYNC_PATH_KEY

COLUMNS = ["tensao_l1_n", "energia_ativa", "fator"]


def _backlog(path: Path, n: int) -> Buffer:
    buffer = Buffer(path, COLUMNS)
    rnd = random.Random(7)
    for i in range(n):
        values = {
            "tensao_l1_n": rnd.uniform(100, 140),  # a double, not a float32
            "energia_ativa": 1_250_000.123456789 + i * 3.3,
            "fator": None if i % 11 == 0 else rnd.uniform(-1, 1) * 10 ** rnd.randint(-30, 30),
        }
        error = "no answer from unit 126" if i % 17 == 0 else None
        buffer.append(
            "pac1",
            1_764_000_000 + i + rnd.random(),
            None if error else values,
            error=error,
            clock_ok=i % 3 != 0,
        )
    return buffer


def _config(logger_db: LoggerDB, fast_path: bool = True) -> MariaDBConfig:
    return logger_db.config(batch_size=4 * BINARY_MIN_ROWS, fast_path=fast_path)


def _assert_exactly_as_buffered(buffer: Buffer, logger_db: LoggerDB) -> None:
    rows = logger_db.rows()
    got = {r["seq"]: r for r in rows}
    local = buffer.unsent(100_000, after=0)
    assert len(rows) == len(got) == len(local)  # each reading once
    for seq, meter, at, ok, error, *values in local:
        row = got[seq]
        assert (row["meter"], bool(row["clock_ok"]), row["error"]) == (meter, bool(ok), error), seq
        assert row["measured_at"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] == utc_text(at), seq
        assert [row[c] for c in COLUMNS] == values, seq


@pytest.mark.parametrize("fast_path", [True, False], ids=["binary", "plain"])
def test_a_backlog_arrives_value_for_value_on_either_path(
    tmp_path: Path, logger_db: LoggerDB, fast_path: bool
) -> None:
    buffer = _backlog(tmp_path / "b.sqlite3", 10 * BINARY_MIN_ROWS)
    cfg = _config(logger_db, fast_path)
    sink = MariaDBSink(cfg, "s")
    worker = SyncWorker(buffer, sink, dict.fromkeys(COLUMNS, ""), cfg.batch_size)
    assert worker.drain() == 10 * BINARY_MIN_ROWS
    if fast_path:
        assert sink.stats["binary"] >= 2 and sink.sync_path == "binary"  # the binary path was really taken
    else:
        assert sink.stats["binary"] == 0 and sink.stats["text"] >= 3
        assert sink.sync_path == "plain (fast_path = false)"
    assert buffer.get_meta(SYNC_PATH_KEY) == sink.sync_path
    _assert_exactly_as_buffered(buffer, logger_db)
    sink.close()
    buffer.close()


def _name_gone(conn: Connection) -> None:
    """A private name the fast path needs is not there (renamed by an upgrade)."""
    del conn._next_seq_id


def _fails_mid_batch(conn: Connection) -> None:
    """The library fails under the fast path after part of a pipelined batch went in:
    the second answer's read raises, as a changed PyMySQL internal would."""
    real, calls = conn._read_packet, []

    def read_packet(*args: object) -> MysqlPacket:
        calls.append(1)
        if len(calls) == 2:
            raise AttributeError("'MysqlPacket' object has no attribute 'read_ok_packet'")
        return real(*args)

    conn._read_packet = read_packet  # type: ignore[method-assign]


@pytest.mark.parametrize("breakage", [_name_gone, _fails_mid_batch], ids=["name-gone", "mid-batch"])
def test_a_fast_path_broken_by_the_library_falls_back_and_loses_nothing(
    tmp_path: Path, logger_db: LoggerDB, caplog: pytest.LogCaptureFixture, breakage
) -> None:
    """The fast path breaks while the logger runs (on the live connection: PyMySQL's own
    use of its internals stays intact, as after a real upgrade): the batch in flight
    rolls back, goes by the plain path, and so does every later batch; one log line;
    sync-status (another process) shows why. Every reading arrives exactly once."""
    n = 15 * BINARY_MIN_ROWS
    buffer = _backlog(tmp_path / "buffer.sqlite3", n)
    cfg = replace(_config(logger_db), batch_size=7 * BINARY_MIN_ROWS)  # executions of 128, 64, 32
    sink = MariaDBSink(cfg, "s")
    worker = SyncWorker(buffer, sink, dict.fromkeys(COLUMNS, ""), cfg.batch_size)
    assert worker.sync_once() == cfg.batch_size  # by the fast path, while it works
    assert sink.stats["binary"] == 1 and sink.conn is not None
    breakage(sink.conn)
    with caplog.at_level("WARNING"):
        assert worker.drain() == n - cfg.batch_size
    assert sink.stats["binary"] == 1 and sink.stats["text"] == 2  # the failed batch, and the last
    assert sink.sync_path.startswith("plain (fast path failed: AttributeError: ")
    said = [r.getMessage() for r in caplog.records if "fast path failed" in r.getMessage()]
    assert len(said) == 1, said  # once, not once a batch
    sink.close()
    _assert_exactly_as_buffered(buffer, logger_db)
    assert buffer.sent_upto == n
    assert buffer.get_meta(SYNC_PATH_KEY) == sink.sync_path
    buffer.close()

    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020), site="s")
    result = edgelog("sync-status", "--json", "--max-silence", "1e9", config=config)
    data = json.loads(result.stdout)
    assert data["sync_path"] == sink.sync_path
    assert any("plain (fast path failed" in w for w in data["warnings"])
    screen = edgelog("sync-status", "--max-silence", "1e9", config=config).stdout
    assert "fast path failed: AttributeError" in screen


def test_a_private_name_missing_at_start_means_the_plain_path_from_the_first_batch(
    tmp_path: Path, logger_db: LoggerDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start check: a name the fast path needs is not in the installed PyMySQL (the
    list of needs gains one no PyMySQL has: the one thing faked here)."""
    monkeypatch.setattr(wire, "_NEEDS", [*wire._NEEDS, (Connection, "_renamed_in_pymysql_9", ())])
    buffer = _backlog(tmp_path / "b.sqlite3", 4 * BINARY_MIN_ROWS)
    sink = MariaDBSink(_config(logger_db), "s")
    worker = SyncWorker(buffer, sink, dict.fromkeys(COLUMNS, ""), 1000)
    assert worker.drain() == 4 * BINARY_MIN_ROWS
    assert sink.stats["binary"] == 0 and sink.stats["text"] == 1
    assert sink.sync_path.startswith("plain (fast path unavailable: PyMySQL ")
    assert "Connection._renamed_in_pymysql_9 is missing" in sink.sync_path
    assert buffer.get_meta(SYNC_PATH_KEY) == sink.sync_path
    _assert_exactly_as_buffered(buffer, logger_db)
    sink.close()
    buffer.close()


def test_the_start_check_sees_missing_names_and_changed_signatures() -> None:
    assert wire.fast_path_problem() is None  # the PyMySQL CI installs has everything

    class Changed:
        def _read_packet(self, packet_type, timeout): ...  # a new required argument

    changed = private_names_problem([(Changed, "_read_packet", ())])
    assert changed is not None and "Changed._read_packet has another signature" in changed
    missing = private_names_problem([(Changed, "_execute_command", ())])
    assert missing is not None and "Changed._execute_command is missing" in missing
