"""The backlog path: batches of BINARY_MIN_ROWS rows or more travel as prepared
binary INSERTs. Every value must arrive exactly as the buffer holds it: doubles
that are not float32, NULLs, failed polls, clock flags, sub-millisecond times."""

from __future__ import annotations

import random
from pathlib import Path

from edgelog.buffer import Buffer
from edgelog.clock import utc_text
from edgelog.config import MariaDBConfig
from edgelog.sync import MariaDBSink, SyncWorker
from edgelog.sync.mariadb import BINARY_MIN_ROWS

COLUMNS = ["tensao_l1_n", "energia_ativa", "fator"]


def test_a_backlog_drained_in_binary_batches_arrives_value_for_value(tmp_path: Path, logger_db) -> None:
    buffer = Buffer(tmp_path / "b.sqlite3", COLUMNS)
    rnd = random.Random(7)
    for i in range(10 * BINARY_MIN_ROWS):
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
    cfg = MariaDBConfig(
        user=logger_db.user,
        unix_socket=logger_db.socket,
        password_file=logger_db.password_file,
        database=logger_db.database,
        batch_size=4 * BINARY_MIN_ROWS,
    )
    sink = MariaDBSink(cfg, "s")
    worker = SyncWorker(buffer, sink, dict.fromkeys(COLUMNS, ""), cfg.batch_size)
    assert worker.drain() == 10 * BINARY_MIN_ROWS
    assert sink.stats["binary"] >= 2  # the binary path was really taken
    got = {r["seq"]: r for r in logger_db.rows()}
    local = buffer.unsent(100_000, after=0)
    assert len(got) == len(local)
    for seq, meter, at, ok, error, *values in local:
        row = got[seq]
        assert (row["meter"], bool(row["clock_ok"]), row["error"]) == (meter, bool(ok), error), seq
        assert row["measured_at"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] == utc_text(at), seq
        assert [row[c] for c in COLUMNS] == values, seq
    sink.close()
    buffer.close()
