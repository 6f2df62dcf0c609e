"""Fault 3: the link to MariaDB fails like a network does, through a real TCP proxy
between `edgelog run` and the real server: it gets slow, it black-holes (accepts,
then forwards nothing and never resets), it cuts a batch in the middle, it loses
the answer to a COMMIT. Connections frozen by the proxy stay frozen, so the
worker only recovers if its timeouts fire. Throughout, a watcher checks that the
buffer's position never counts a row MariaDB does not have.
"""

from __future__ import annotations

import time

from helpers import (
    InvariantWatch,
    assert_exactly_once,
    assert_failures_logged_sparingly,
    assert_oldest_first,
    assert_polls_on_grid,
    meta,
    meter_toml,
    remote_count,
    remote_max_seq,
    sent_upto,
    wait_for,
    wait_rows,
)

INTERVAL = 0.2
TIMEOUTS = {"connect_timeout_s": 1.5, "read_timeout_s": 2, "write_timeout_s": 2}


def test_slow_link_and_black_hole_partition_time_out_retry_and_lose_nothing(
    logger_db, proxy, simulator, logger_factory
) -> None:
    logger = logger_factory(
        logger_db.fault_toml(port=proxy.port, **TIMEOUTS), meter_toml(simulator.port, interval_s=INTERVAL)
    )
    with logger.running():
        wait_rows(logger_db, 10)
        watch = InvariantWatch(logger.buffer, logger_db)

        # A slow link (150 ms each way, per packet): slower, but it keeps up and fails nothing.
        proxy.latency_s = 0.15
        before = remote_count(logger_db)
        time.sleep(3.5)
        slow = logger.status()
        assert remote_count(logger_db) >= before + 10
        assert slow["last_error"] is None and slow["unsent"] < 15
        proxy.latency_s = 0.0

        # A partition: the proxy accepts, then forwards nothing, with no reset.
        proxy.blackhole = True
        hole_at = time.time()
        wait_for(
            lambda: "timed out" in (logger.status()["last_error"] or ""),
            timeout=30,
            what="a timeout in sync-status",
        )
        time.sleep(max(0.0, hole_at + 6 - time.time()))
        during = logger.status()
        assert during["unsent"] >= 20 and during["mariadb_reachable"] is False
        healed_at = time.time()
        proxy.blackhole = False
        wait_for(
            lambda: logger.status()["unsent"] <= 2, timeout=30, what="the backlog drained after the partition"
        )
        recovered_s = time.time() - healed_at
        watch.close()
    logger.drain()

    assert_exactly_once(logger.buffer, logger_db)
    assert_polls_on_grid(logger.buffer, INTERVAL, hole_at, healed_at)
    assert_oldest_first(logger_db)
    # connections stuck in the hole were given up (timeouts), else nothing would have drained
    assert recovered_s < 15, recovered_s
    assert [x for x in proxy.links if x.frozen]
    assert [x for x in logger.lines("sync: ") if "timed out" in x]
    assert_failures_logged_sparingly(logger.text())  # when it starts, not at every retry


def test_a_half_sent_batch_is_never_counted_as_sent(logger_db, proxy, simulator, logger_factory) -> None:
    logger = logger_factory(
        logger_db.fault_toml(port=proxy.port, **TIMEOUTS),
        meter_toml(simulator.port, interval_s=INTERVAL),
        sync={"interval_s": 1.0},  # batches of ~5 rows
    )
    with logger.running():
        wait_rows(logger_db, 10)
        watch = InvariantWatch(logger.buffer, logger_db)
        buffer_id = meta(logger.buffer, "buffer_id") or ""

        # 1. The link dies in the middle of an INSERT: MariaDB gets half a packet.
        position = sent_upto(logger.buffer)
        proxy.cut_next_request = True
        wait_for(lambda: proxy.cuts == 1, timeout=15, what="a batch cut in the middle")
        time.sleep(1.0)  # the worker is waiting for an answer that never comes
        assert sent_upto(logger.buffer) == position, "a half-sent batch was counted"
        assert remote_max_seq(logger_db, buffer_id) == position
        wait_for(lambda: sent_upto(logger.buffer) > position, timeout=20, what="the batch sent again")

        # 2. The COMMIT gets through, its answer is lost: committed, not counted, then
        #    counted once (from MariaDB's high-water mark or a harmless replay).
        proxy.lose_commit_reply = True
        wait_for(lambda: proxy.lost_replies == 1, timeout=15, what="a COMMIT whose answer is lost")
        # The proxy has passed the COMMIT on; the worker waits for its answer until its
        # read timeout (2 s), so the position cannot move before then. MariaDB applies the
        # COMMIT a moment later (under load, after this thread reads): wait for both facts
        # at one instant, the rows in and the position still where it was.
        position = sent_upto(logger.buffer)

        def committed_but_not_counted() -> int:
            committed = remote_max_seq(logger_db, buffer_id)
            return committed if committed > position == sent_upto(logger.buffer) else 0

        committed = wait_for(committed_but_not_counted, timeout=5, what="the commit in, not counted")
        wait_for(lambda: sent_upto(logger.buffer) >= committed, timeout=20, what="the position catching up")
        wait_for(lambda: logger.status()["unsent"] <= 2, timeout=20, what="caught up")
        watch.close()
    logger.drain()

    assert_exactly_once(logger.buffer, logger_db)
    assert_oldest_first(logger_db)
