"""Fault 9: SIGTERM (systemctl stop) while a batch is in flight in MariaDB.

A root session holds `LOCK TABLES medicoes WRITE`, so the worker's INSERT waits in
the server: the batch is provably in flight when SIGTERM arrives. Then either
the lock is released (the batch commits, the position records it, the process
exits 0), or it is not (the INSERT times out after read_timeout_s, MariaDB rolls
the transaction back, the position stays, the process exits 0 all the same).
Either way the position equals what MariaDB holds at exit, and the next start
continues exactly there: every reading in MariaDB once, in seq order.
"""

from __future__ import annotations

import time

import pymysql
import pytest
from helpers import (
    assert_exactly_once,
    assert_oldest_first,
    max_seq,
    meta,
    meter_toml,
    remote_max_seq,
    sent_upto,
    wait_for,
    wait_rows,
)

READ_TIMEOUT = 3.0


def insert_waiting(db) -> bool:
    rows = db.query(
        "SELECT state, info FROM information_schema.processlist WHERE user = %s AND info LIKE 'INSERT%%'",
        (db.user,),
    )
    return any("lock" in (state or "").lower() for state, _ in rows)


@pytest.mark.parametrize("outcome", ["commits", "rolls_back"])
def test_sigterm_during_a_batch_commits_or_rolls_back_and_the_next_start_continues_there(
    outcome: str, logger_db, simulator, logger_factory
) -> None:
    logger = logger_factory(
        logger_db.fault_toml(socket_path=True, read_timeout_s=READ_TIMEOUT),
        meter_toml(simulator.port, interval_s=0.2),
        sync={"interval_s": 1.0},
    )
    logger.start()
    wait_rows(logger_db, 10)
    buffer_id = meta(logger.buffer, "buffer_id") or ""
    locker = pymysql.connect(unix_socket=logger_db.socket, user="root", autocommit=True)
    try:
        with locker.cursor() as cur:
            cur.execute(f"LOCK TABLES `{logger_db.database}`.`medicoes` WRITE")
        wait_for(lambda: insert_waiting(logger_db), timeout=15, every=0.05, what="an INSERT waiting")
        before = sent_upto(logger.buffer)
        assert max_seq(logger.buffer) > before  # rows in that batch
        stopped_at = time.monotonic()
        logger.proc.send_signal(15)
        if outcome == "commits":
            time.sleep(0.5)
            with locker.cursor() as cur:
                cur.execute("UNLOCK TABLES")
        rc = logger.proc.wait(READ_TIMEOUT + 30)
        took = time.monotonic() - stopped_at
    finally:
        with locker.cursor() as cur:
            cur.execute("UNLOCK TABLES")
        locker.close()
    assert rc == 0, logger.text()[-2000:]
    time.sleep(0.5)  # the server finishes the session the client left
    after = sent_upto(logger.buffer)
    in_mariadb = remote_max_seq(logger_db, buffer_id)
    assert after == in_mariadb  # the position is exactly what MariaDB holds
    if outcome == "commits":
        assert after > before and took < READ_TIMEOUT  # the batch in flight went in
    else:
        assert after == before and took < READ_TIMEOUT + 10  # nothing of it went in

    # the next start continues there
    seq = max_seq(logger.buffer)
    with logger.running():
        wait_for(lambda: max_seq(logger.buffer) >= seq + 5, timeout=30, what="readings after the restart")
        wait_for(lambda: logger.status()["unsent"] <= 2, timeout=30, what="the rest sent")
    logger.drain()
    assert_exactly_once(logger.buffer, logger_db)
    assert_oldest_first(logger_db)
    assert not logger.lines("destination already has rows")  # no batch committed but unrecorded
