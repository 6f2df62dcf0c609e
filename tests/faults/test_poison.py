"""Fault 8: rows MariaDB refuses for good, while `edgelog run` runs.

An administrator changes `tensao_l1_n` to DECIMAL(5,1); two (or three) readings carry
1e9 there (a meter glitch), which the column cannot hold (error 1264). The batch
holding them is bisected, the rows around them go in, and after
`quarantine_after` (3) refusals the two rows move to the buffer's quarantine
table, counted in sync-status. The readings behind them are never held up for
long. `edgelog sync --retry-quarantined` sends them again: refused while the
column is unchanged (exit 1), delivered once after the column is fixed.
"""

from __future__ import annotations

import time

from helpers import (
    COLUMNS,
    InvariantWatch,
    buffer_rows,
    edgelog,
    meta,
    meter_toml,
    query,
    remote_max_seq,
    remote_rows,
    wait_for,
    wait_rows,
)

POISON = 1e9  # exact in float32


def test_rows_mariadb_refuses_are_quarantined_the_rest_flows_and_retry_delivers_them_once(
    logger_db, simulator, logger_factory
) -> None:
    logger = logger_factory(
        logger_db.fault_toml(socket_path=True, batch_size=50),
        meter_toml(simulator.port, interval_s=0.2),
        sync={"interval_s": 0.5},
    )
    with logger.running():
        wait_rows(logger_db, 10)
        watch = InvariantWatch(logger.buffer, logger_db)
        table = f"`{logger_db.database}`.`medicoes`"
        logger_db.query(f"ALTER TABLE {table} MODIFY `tensao_l1_n` DECIMAL(5,1) NULL")

        served = len(simulator.sim.served)
        simulator.sim.override = {"tensao_l1_n": POISON}
        wait_for(lambda: len(simulator.sim.served) >= served + 2, timeout=10, what="two glitched polls")
        simulator.sim.override = {}
        served = len(simulator.sim.served)
        wait_for(lambda: len(simulator.sim.served) >= served + 2, timeout=10, what="two good polls after")
        time.sleep(0.3)  # the last of them stored
        poison = [r["seq"] for r in buffer_rows(logger.buffer, "tensao_l1_n = ?", POISON)]
        assert 2 <= len(poison) <= 3  # (a poll in flight when the glitch ended may carry it too)
        status = wait_for(
            lambda: (s := logger.status())["quarantined"] == len(poison) and s, timeout=30, what="quarantine"
        )
        # the rows behind them flowed: MariaDB has later rows, nothing is waiting behind them
        buffer_id = meta(logger.buffer, "buffer_id") or ""
        wait_for(
            lambda: remote_max_seq(logger_db, buffer_id) > max(poison) + 5, timeout=20, what="later rows"
        )
        wait_for(lambda: logger.status()["unsent"] <= 3, timeout=20, what="caught up")
        assert status["sent_upto"] >= max(poison)  # the position moved past them
        remote = {r["seq"] for r in remote_rows(logger_db, columns="seq")}
        assert not remote & set(poison)
        quarantined = query(logger.buffer, "SELECT seq, reason FROM quarantine ORDER BY seq")
        assert [q[0] for q in quarantined] == poison
        assert all("(1264)" in q[1] and "tensao_l1_n" in q[1] for q in quarantined)
        lines = logger.lines("quarantined")
        assert len(lines) == len(poison) and all("refused by the destination 3 times" in x for x in lines)

        # retry before the cause is fixed: refused again, kept, exit 1
        result = edgelog("sync", "--retry-quarantined", config=logger.config)
        assert (
            result.returncode == 1
            and f"sent 0 quarantined rows; {len(poison)} still refused" in result.stdout
        )
        assert logger.status()["quarantined"] == len(poison)

        logger_db.query(f"ALTER TABLE {table} MODIFY `tensao_l1_n` DOUBLE NULL")  # the cause fixed
        result = edgelog("sync", "--retry-quarantined", config=logger.config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"sent {len(poison)} quarantined rows; 0 still refused" in result.stdout
        assert logger.status()["quarantined"] == 0
        time.sleep(1)
        watch.close()
    logger.drain()

    # exactly once, the poison rows with their value
    rows = remote_rows(logger_db)
    seqs = [r["seq"] for r in rows]
    assert len(seqs) == len(set(seqs))
    local = buffer_rows(logger.buffer)
    assert seqs == [r["seq"] for r in local]
    by_seq = {r["seq"]: r for r in rows}
    for seq in poison:
        assert by_seq[seq]["tensao_l1_n"] == POISON
    for row in local:  # (tensao_l1_n of the others was rounded by the DECIMAL(5,1) meanwhile)
        assert all(by_seq[row["seq"]][c] == row[c] for c in COLUMNS if c != "tensao_l1_n")
    # a second retry has nothing left to send
    again = edgelog("sync", "--retry-quarantined", config=logger.config)
    assert again.returncode == 0 and "sent 0 quarantined rows; 0 still refused" in again.stdout
