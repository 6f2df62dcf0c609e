"""Fault 6: the buffer fills up, at `[buffer] max_mb` or because the disk is full.

`max_mb` (MariaDB unreachable, so every row stays unsent): the buffer holds at
its bound, and the `when_full` policy decides what goes: `drop_oldest` (the
default) deletes the oldest unsent rows and keeps logging, `drop_newest` keeps
the backlog and refuses new readings. Either way each dropped reading is counted
in sync-status's `dropped_total`, and when MariaDB returns the buffer drains and
takes new readings again. The accounting is exact: every poll is either in
MariaDB (once) or counted as dropped.

ENOSPC: the buffer lives on an 8 MiB tmpfs, and a file fills it up. With MariaDB
reachable the sent rows are pruned and nothing is lost; unreachable, the oldest
unsent rows go (drop_oldest). The process never stops, logs the condition once
(plus a count at 10/100/1000), and recovers when the space comes back.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    COLUMNS,
    MIB,
    buffer_rows,
    max_seq,
    meta,
    meter_toml,
    prefill,
    query,
    remote_count,
    remote_rows,
    skipped_slots,
    wait_for,
    wait_rows,
)

PREFILL = 3000


@pytest.mark.parametrize("when_full", ["drop_oldest", "drop_newest"])
def test_max_mb_holds_and_when_full_decides_what_is_dropped_all_counted(
    tmp_path: Path, when_full: str, logger_db, proxy, simulator, logger_factory
) -> None:
    buffer_path = tmp_path / "buffer.sqlite3"
    size_mb = prefill(buffer_path, PREFILL)  # MariaDB has been away a while ...
    max_mb = round(size_mb * 1.02, 4)  # ... and the buffer is 2 % short of its bound
    max_bytes = max_mb * MIB
    proxy.refuse = True  # MariaDB unreachable: nothing can be sent, so nothing pruned as sent
    logger = logger_factory(
        logger_db.fault_toml(port=proxy.port),
        meter_toml(simulator.port, interval_s=0.05),
        buffer={"max_mb": max_mb, "when_full": when_full},
    )
    polls_before = len(simulator.sim.served)
    with logger.running():
        full = wait_for(
            lambda: (s := logger.status())["dropped_total"] >= 10 and s, timeout=60, what="dropped readings"
        )
        sizes = []
        for _ in range(4):
            time.sleep(0.3)
            status = logger.status()
            sizes.append(status["size_bytes"])
            assert logger.alive()
        assert max(sizes) <= max_bytes + 64 * 1024, (sizes, max_bytes)  # + at most a few WAL pages
        assert status["dropped_total"] >= full["dropped_total"]
        first_left = min(r for (r,) in _seqs(buffer_path))
        newest = max_seq(buffer_path)
        if when_full == "drop_oldest":
            ((count, first, last),) = query(buffer_path, "SELECT COUNT(*), MIN(seq), MAX(seq) FROM readings")
            assert first > 1 and count == last - first + 1  # the oldest went, and only they
            assert newest - PREFILL >= polls_so_far(simulator, polls_before) - 1  # every new reading is in
        else:
            assert first_left == 1  # the backlog stays whole ...
            assert newest > PREFILL and status["unsent"] == newest  # ... with what fitted after it ...
            assert status["dropped_total"] > full["dropped_total"]  # ... and each refused one counted
            time.sleep(1)
            assert max_seq(buffer_path) == newest  # ... while no new reading gets in
        # MariaDB comes back: the backlog drains, and the buffer takes new readings again
        proxy.refuse = False
        wait_for(lambda: logger.status()["unsent"] <= 3, timeout=60, what="the backlog drained")
        seq_after_drain = max_seq(buffer_path)
        wait_for(lambda: max_seq(buffer_path) >= seq_after_drain + 5, timeout=30, what="new readings stored")
    logger.drain()

    status = logger.status()
    polls = len(simulator.sim.served) - polls_before
    buffer_id = meta(buffer_path, "buffer_id")
    remote = [
        r["seq"] for r in remote_rows(logger_db, columns="buffer_id, seq") if r["buffer_id"] == buffer_id
    ]
    assert len(remote) == len(set(remote))
    dropped = status["dropped_total"]
    rows = polls + skipped_slots(logger)  # a slot skipped on this loaded machine is a row too
    assert len(remote) + dropped == PREFILL + rows, (len(remote), dropped, PREFILL, polls, rows)
    if when_full == "drop_oldest":
        assert remote == list(range(dropped + 1, PREFILL + rows + 1))  # exactly the oldest went
    else:
        assert remote == sorted(remote) and remote[:PREFILL] == list(range(1, PREFILL + 1))  # whole
    assert len(logger.lines("buffer full")) == 1  # logged once ...
    assert len(logger.lines("such events so far")) <= 3  # ... and at 10, 100, 1000 events


def polls_so_far(simulator, before: int) -> int:
    return len(simulator.sim.served) - before


def _seqs(path: Path) -> list[tuple[int]]:
    return query(path, "SELECT seq FROM readings")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, mounted for this test (root only)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill_disk(disk: Path, leave: int) -> Path:
    """Fill the file system of `disk` with a file, leaving about `leave` bytes free."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def free_bytes(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize


def test_disk_full_enospc_prunes_sent_rows_then_drops_oldest_keeps_running_and_recovers(
    small_disk: Path, logger_db, proxy, simulator, sim2, logger_factory
) -> None:
    buffer_path = small_disk / "buffer.sqlite3"
    logger = logger_factory(
        logger_db.fault_toml(port=proxy.port),
        meter_toml(simulator.port, interval_s=0.05),
        meter_toml(sim2.port, name="pac2", interval_s=0.05),
        buffer={"path": buffer_path, "max_mb": 2},  # its disk reserve: 384 KiB
    )
    polls_before = len(simulator.sim.served) + len(sim2.sim.served)
    with logger.running():
        wait_rows(logger_db, 20)

        # 1. The disk fills up while MariaDB is reachable: sent rows make room, nothing lost.
        filler = fill_disk(small_disk, leave=96 * 1024)
        wait_for(lambda: logger.lines("buffer full"), timeout=30, what="the disk-full condition")
        time.sleep(1.5)
        assert logger.alive()
        assert logger.status()["dropped_total"] == 0
        seq = max_seq(buffer_path)
        wait_for(lambda: max_seq(buffer_path) > seq + 20, timeout=20, what="readings while the disk is full")

        # 2. ... and MariaDB goes away: unsent rows only, the oldest are dropped, counted.
        proxy.cut()
        dropped = wait_for(
            lambda: logger.status()["dropped_total"], timeout=60, what="oldest unsent rows dropped"
        )
        seq = max_seq(buffer_path)
        wait_for(lambda: max_seq(buffer_path) > seq + 20, timeout=20, what="readings still stored")
        assert logger.alive() and not logger.lines("buffer: the disk has room again")  # still capped

        # 3. Space comes back, MariaDB too: everything left drains, nothing more is dropped.
        filler.unlink()
        proxy.refuse = False
        wait_for(lambda: logger.status()["unsent"] <= 5, timeout=60, what="the backlog drained")
        settled = logger.status()["dropped_total"]
        time.sleep(2)
        assert logger.status()["dropped_total"] == settled >= dropped
    logger.drain()

    polls = len(simulator.sim.served) + len(sim2.sim.served) - polls_before
    status = logger.status()
    remote = remote_count(logger_db)
    rows = polls + skipped_slots(logger)  # a slot skipped on this loaded machine is a row too
    assert remote + status["dropped_total"] == rows, (remote, status["dropped_total"], polls, rows)
    # exactly once: no duplicate, and what the buffer still holds (sent rows were pruned
    # to make room) is all in MariaDB, with its values
    seqs = [r["seq"] for r in remote_rows(logger_db, columns="seq")]
    assert len(seqs) == len(set(seqs)) == remote
    remote_by_seq = {r["seq"]: r for r in remote_rows(logger_db)}
    for row in buffer_rows(buffer_path):
        assert all(remote_by_seq[row["seq"]][c] == row[c] for c in COLUMNS), row["seq"]
    assert "Traceback" not in logger.text()
    assert len(logger.lines("buffer full:")) == 1  # logged once ...
    assert len(logger.lines("such events so far")) <= 3  # ... and at 10, 100, 1000 events
