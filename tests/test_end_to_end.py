"""`edgelog run` as a real process: simulator -> buffer -> real MariaDB, value by value."""

from __future__ import annotations

import math
import sqlite3

from helpers import COLUMNS, edgelog, running_logger, wait_for


def test_run_delivers_every_reading_exactly_once_with_the_served_values(
    tmp_path, simulator, logger_db, run_config
):
    with running_logger(run_config):
        wait_for(lambda: len(simulator.sim.served) >= 15, what="15 polls")
        wait_for(lambda: logger_db.query(f"SHOW TABLES IN `{logger_db.database}`"), what="table")
        wait_for(lambda: len(logger_db.rows()) >= 10, what="rows in MariaDB")
    # after a clean stop, drain whatever the worker had not sent yet
    edgelog("sync", "--drain", config=run_config, check=True)

    buffer = sqlite3.connect(tmp_path / "buffer.sqlite3")
    local = buffer.execute(
        f"SELECT seq, meter, error, {', '.join(COLUMNS)} FROM readings ORDER BY seq"
    ).fetchall()
    remote = logger_db.rows()
    assert [r["seq"] for r in remote] == [r[0] for r in local]  # each reading exactly once
    assert len({(r["buffer_id"], r["seq"]) for r in remote}) == len(remote)
    assert all(r[2] is None for r in local), "no failed polls expected"
    served = simulator.sim.served
    # one request per poll, so the k-th reading is the k-th answer the meter served
    assert len(local) <= len(served)
    for row, answer, (seq, _meter, _err, *values) in zip(remote, served, local, strict=False):
        assert row["site"] == "test-site" and row["meter"] == "pac1"
        for name, value in zip(COLUMNS, values, strict=True):
            assert math.isclose(value, answer[name], rel_tol=0, abs_tol=0), (seq, name)
            assert row[name] == value, (seq, name)
    assert simulator.sim.requests == len(served)
