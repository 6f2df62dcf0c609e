"""A commit that takes longer than the poll interval (a slow or busy disk).

An SD card busy with wear levelling, or a disk shared with a MariaDB ingesting a
backlog, can take hundreds of ms for one fsync. Here the buffer's commit is held
up for real, for 1.5 s (7 intervals): another process holds the SQLite write
lock, so `edgelog run`'s commit waits exactly as it would for a stalled disk.

Asserted: no reading is committed while the lock is held (the stall is real);
polling keeps the 5 Hz grid all the same; the readings taken meanwhile wait in
memory and are committed, in order, when the lock is released; the log says so
once; after SIGTERM and a drain every served reading is in MariaDB exactly once.
"""

from __future__ import annotations

import sqlite3
import time

from helpers import (
    assert_cadence,
    assert_exactly_once,
    buffer_rows,
    max_seq,
    meter_toml,
    wait_for,
)

from edgelog.poller import SLOW_COMMIT

INTERVAL = 0.2
STALL_S = 1.5


def test_a_commit_slower_than_the_interval_costs_no_sample(logger_db, simulator, logger_factory) -> None:
    logger = logger_factory(
        logger_db.fault_toml(socket_path=True),
        meter_toml(simulator.port, interval_s=INTERVAL),
        sync={"interval_s": 0.5},
    )
    with logger.running():
        wait_for(lambda: max_seq(logger.buffer) >= 5, timeout=30, what="polls")

        holder = sqlite3.connect(logger.buffer, timeout=10, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the write lock: the logger's next commit waits
            held_from = time.time()
            before = max_seq(logger.buffer)
            time.sleep(STALL_S)
            during = max_seq(logger.buffer)
            held_to = time.time()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert during == before, "a commit went through while the write lock was held"

        wait_for(lambda: max_seq(logger.buffer) > before + 2, timeout=10, what="commits after the stall")
        time.sleep(1.0)

    rows = buffer_rows(logger.buffer)
    taken_during = [r for r in rows if held_from <= r["measured_at"] <= held_to]
    # ~7 polls were taken while no commit could complete, then committed, in order
    assert len(taken_during) >= STALL_S / INTERVAL - 2, len(taken_during)
    assert all(r["seq"] > before for r in taken_during)
    times = [r["measured_at"] for r in rows]
    assert times == sorted(times), "readings committed out of order"
    assert_cadence(times, INTERVAL, held_from - 1.0, held_to + 1.0)
    assert len(logger.lines(SLOW_COMMIT)) == 1, logger.text()[-2000:]
    # nothing lost: every poll the meter answered is a row (one request per poll)
    assert len(rows) == simulator.sim.requests, (len(rows), simulator.sim.requests)
    assert all(r["error"] is None for r in rows)

    logger.drain()
    assert_exactly_once(logger.buffer, logger_db)
