"""Fault 1b: power cuts. `edgelog run` with its buffer on a file system that forgets
what was not fsync'ed (tests/powercut/lazyfs.py), cut at random moments, the process
SIGKILLed in the same instant, restarted on what survived.

kill -9 alone proves little about a power cut: the killed process's writes are in the
page cache and reach the disk anyway. Here they do not: a cut keeps file data only up
to its last fsync and directory entries only up to the directory's last fsync, and in
one cut in three the unsynced sectors are torn (a random part of them kept), in one in
three the metadata reached the disk but not the data (sizes and names as in memory,
unsynced contents zeros or old).

Each cut lands at one of these moments, chosen at random: any time; during a commit
(at the n-th WAL write, or at the n-th WAL fsync, before it took effect); during a
checkpoint (at the n-th write to the main file); right after MariaDB committed a batch
(the position commit); around housekeeping (the wall-clock minute, when the prune
runs); during start-up. MariaDB is unreachable during one run in four. After each cut,
on a copy of what survived:

* the buffer passes quick_check (it opens; never a crash loop: each start runs);
* every reading a reader saw committed before the cut (a snapshot read through the
  mount just before it) is there, with its values;
* per meter, the readings the meter served and the buffer lacks are 0 or 1 (more only
  in a run that logged a commit slower than the interval, as for kill -9);
* the sync position does not run ahead of MariaDB.

At the end, after a drain: every reading is in MariaDB exactly once with its values;
a (buffer_id, seq) never named two different readings over the whole run (a seq seen
committed, lost by a cut and given again would); the clock rules hold (every row
clock_ok, each meter's times rising with seq).

The regular suite does 50 cuts (POWERCUT_CUTS); `scripts/soak --powercut` does a
thousand or more (POWERCUT_SECONDS, POWERCUT_SEED, POWERCUT_REPORT as for the kill -9
soak).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import random
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    COLUMNS,
    buffer_rows,
    max_seq,
    meta,
    meter_toml,
    remote_max_seq,
    remote_rows,
    sampled_invariant,
    sent_upto,
    served_polls,
    wait_for,
)
from powercut.fs import PowerCutFS, missing, mounted

from edgelog.poller import SLOW_COMMIT

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

CUTS = int(os.environ.get("POWERCUT_CUTS") or 50)  # stop after this many cuts ...
SECONDS = float(os.environ.get("POWERCUT_SECONDS") or 0)  # ... or (> 0) after this long
SOAK = bool(SECONDS) or CUTS > 50
MOMENTS = ("anytime", "wal-write", "commit", "checkpoint", "sync", "startup")
BUFFER = "buffer.sqlite3"


def _values(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["meter"], row["measured_at"], row["error"], bool(row["clock_ok"]), *(row[c] for c in COLUMNS))


def _survivor(fs: PowerCutFS, scratch: Path) -> Path | None:
    """A copy of the buffer as the cut left it, recovered (its WAL replayed) and checked."""
    copy = fs.snapshot(scratch)
    buffer = copy / BUFFER
    if not buffer.exists():
        return None
    with closing(sqlite3.connect(buffer)) as conn:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
    assert check == "ok", f"the buffer is corrupt after the cut: {check}"
    return buffer


class Ledger:
    """Every reading seen committed (before a cut, or after one on the disk), by
    (buffer_id, seq): a seq must never name two different readings."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], tuple[Any, ...]] = {}

    def add(self, buffer_id: str, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            key, values = (buffer_id, row["seq"]), _values(row)
            assert self.seen.setdefault(key, values) == values, f"seq {row['seq']} reused for another reading"

    def check_remote(self, buffer_id: str, rows: list[dict[str, Any]]) -> None:
        """MariaDB's rows (the pruned ones too) are readings seen committed, each the same."""
        for row in rows:
            seen = self.seen.get((buffer_id, row["seq"]))
            assert seen is not None, f"seq {row['seq']} in MariaDB was never seen committed"
            at = row["measured_at"].replace(tzinfo=dt.UTC).timestamp()  # DATETIME(3), UTC
            values = _values({**row, "measured_at": seen[1]})
            assert values == seen and abs(at - seen[1]) < 0.002, (
                f"seq {row['seq']}: another reading in MariaDB"
            )


def test_power_cuts_at_random_moments_lose_at_most_the_reading_in_flight(
    tmp_path: Path, logger_db, simulator, sim2, logger_factory, proxy
) -> None:
    seed = int(os.environ.get("POWERCUT_SEED") or random.randrange(2**32))
    rnd = random.Random(seed)
    sims = {"pac1": simulator, "pac2": sim2}
    for sim in sims.values():
        sim.sim.keep_served = 10
        sim.sim.delay_s = 0.03  # an RS485 round trip: a cut can land while a poll is in flight
    with mounted(tmp_path / "fs") as fs:
        logger = logger_factory(
            logger_db.fault_toml(port=proxy.port, batch_size=7),
            meter_toml(simulator.port, interval_s=0.2),
            meter_toml(sim2.port, name="pac2", interval_s=0.2),
            # small: a checkpoint every ~16 WAL pages, and the oldest sent rows pruned
            # before appends once over max_mb; sent rows older than 20 s pruned each minute
            buffer={"path": fs.mount / BUFFER, "max_mb": 0.5, "keep_sent_days": 20 / 86400},
            sync={"interval_s": 0.1},
            # the floor rule (not the kernel's word) decides clock_ok, from what survived
            clock={"require_sync": False},
        )
        ledger = Ledger()
        report: list[dict[str, Any]] = []
        served_before = served_polls(sims)
        seq_before = 0
        started = time.monotonic()
        try:
            while len(report) < CUTS and not (SECONDS and time.monotonic() - started >= SECONDS):
                entry = _one_cut(fs, logger, logger_db, proxy, rnd, seq_before)
                served_now = served_polls(sims)
                survivor = _survivor(fs, tmp_path / "survivor")
                seq_now = max_seq(survivor) if survivor else 0
                rows = buffer_rows(survivor, "seq > ?", seq_before) if survivor else []
                buffer_id = meta(survivor, "buffer_id") if survivor else None
                committed = entry.pop("committed")
                assert buffer_id or not committed, (
                    f"seed {seed}: the buffer is gone after cut {len(report) + 1}"
                )
                if buffer_id:
                    ledger.add(buffer_id, committed)
                    ledger.add(buffer_id, rows)
                    durable = {r["seq"] for r in rows}
                    missing_rows = [r["seq"] for r in committed if r["seq"] not in durable]
                    assert not missing_rows, f"seed {seed}: committed readings lost by cut {len(report) + 1}"
                    sampled_invariant(survivor, logger_db)
                stored = {m: sum(r["meter"] == m for r in rows) for m in sims}
                entry["lost"] = {m: served_now[m] - served_before[m] - stored[m] for m in sims}
                entry["slow_commit"] = len(logger.lines(SLOW_COMMIT)) > entry.pop("slow_before")
                report.append(entry)
                served_before, seq_before = served_now, seq_now
        finally:  # the figures, also of a run that failed
            summary = _summary(seed, report)

        # The last start runs cleanly with MariaDB up, is stopped by SIGTERM, and drains.
        proxy.refuse = False
        with logger.running():
            wait_for(
                lambda: max_seq(logger.buffer) > seq_before + 4, timeout=60, what="polls after the last cut"
            )
        logger.drain()
        local = buffer_rows(logger.buffer)
        buffer_id = meta(logger.buffer, "buffer_id") or ""
        remote = [r for r in remote_rows(logger_db) if r["buffer_id"] == buffer_id]
        # exactly once: every row of the buffer in MariaDB, nothing else but the rows
        # pruned from the buffer (sent, older), each the reading seen committed
        assert len({r["seq"] for r in remote}) == len(remote), "a reading is in MariaDB twice"
        first = local[0]["seq"] if local else math.inf
        assert [r["seq"] for r in remote if r["seq"] >= first] == [r["seq"] for r in local]
        assert sent_upto(logger.buffer) >= (local[-1]["seq"] if local else 0)
        ledger.add(buffer_id, local)
        ledger.check_remote(buffer_id, remote)
        total_lost = sum(sum(e["lost"].values()) for e in report)
        served_total = sum(served_polls(sims).values())
        assert len(remote) + total_lost == served_total, (len(remote), total_lost, served_total)
        for name in sims:  # the clock rules: no jump here, so every row trusted, times rising
            mine = [r for r in remote if r["meter"] == name]
            assert all(r["clock_ok"] for r in mine)
            assert all(a["measured_at"] < b["measured_at"] for a, b in itertools.pairwise(mine))
        assert logger.lines("moved aside") == []
        assert not list(fs.mount.glob("*.corrupt-*"))
        assert logger.starts == len(report) + 1

    bad = [
        e for e in report if not all(0 <= n <= 1 or (n > 1 and e["slow_commit"]) for n in e["lost"].values())
    ]
    assert not bad, f"seed {seed}: cuts losing more than the reading in flight: {bad[:5]}"
    assert summary["cuts"] >= min(CUTS, 1)


def _one_cut(fs: PowerCutFS, logger, db, proxy, rnd: random.Random, seq_before: int) -> dict[str, Any]:
    """Start the logger on the file system as it is, cut at a random moment (the logger
    SIGKILLed in the same instant), bring the file system back. Returns what happened."""
    moment = rnd.choice(MOMENTS)
    mariadb_up = rnd.random() < 0.75
    proxy.refuse = not mariadb_up
    if not mariadb_up:
        proxy.cut()
    mode = rnd.choice(("drop", "torn", "meta"))
    cut_seed = rnd.randrange(2**32)
    slow_before = len(logger.lines(SLOW_COMMIT))
    proc = logger.start()
    buffer = logger.buffer
    committed: list[dict[str, Any]] = []
    if moment == "startup":
        time.sleep(rnd.uniform(0.05, 1.5))
        fired = fs.cut(mode, cut_seed, kill=proc.pid)
    else:
        wait_for(lambda: max_seq(buffer) > seq_before + 2, timeout=60, what="polls")
        if moment == "sync" and mariadb_up:
            n = remote_max_seq(db)
            wait_for(lambda: remote_max_seq(db) > n, timeout=30, every=0.005, what="a batch in MariaDB")
        elif moment != "sync" and 60 - time.time() % 60 < 3.0:
            moment = "housekeeping"  # the prune runs on the wall-clock minute
            time.sleep(60 - time.time() % 60 + rnd.uniform(0.0, 0.3))
        elif moment == "anytime":
            time.sleep(rnd.uniform(0.0, 1.5))
        # what a reader sees committed now must survive the cut
        committed = buffer_rows(buffer, "seq > ?", seq_before)
        assert logger.alive(), logger.text()[-2000:]
        fired = _cut_at(fs, moment, rnd, mode, cut_seed, proc.pid)
    # killed by the cut, never exited by itself before it (no crash loop)
    assert proc.wait(30) == -9, logger.text()[-2000:]
    time.sleep(0.15)  # let the simulators answer what was already on the wire
    fs.restart()
    return {
        "moment": moment,
        "mode": mode,
        "mariadb_up": mariadb_up,
        "armed_fired": fired.get("armed", True),
        "dirty_sectors": fired.get("dirty_sectors", 0),
        "dirty_dirs": fired.get("dirty_dirs", 0),
        "committed": committed,
        "slow_before": slow_before,
    }


#: moment -> (operation, file name pattern, the n-th one at most)
ARMED = {
    "wal-write": ("write", "*-wal", 12),
    "commit": ("fsync", "*-wal", 6),
    "checkpoint": ("write", BUFFER, 8),
    "sync": ("fsync", "*-wal", 2),
    "housekeeping": ("write", "*-wal", 4),
}


def _cut_at(
    fs: PowerCutFS, moment: str, rnd: random.Random, mode: str, seed: int, pid: int
) -> dict[str, Any]:
    if moment == "anytime":
        return fs.cut(mode, seed, kill=pid)
    op, pattern, most = ARMED[moment]
    fs.arm(op, pattern, rnd.randint(1, most), mode, seed, kill=pid)
    fired = fs.wait_cut(timeout=6)
    if fired["cut"]:
        return fired
    return {**fs.cut(mode, seed, kill=pid), "armed": False}  # that moment did not come


def _summary(seed: int, report: list[dict[str, Any]]) -> dict[str, Any]:
    by_moment: dict[str, int] = {}
    for e in report:
        by_moment[e["moment"]] = by_moment.get(e["moment"], 0) + 1
    summary = {
        "seed": seed,
        "cuts": len(report),
        "by_moment": by_moment,
        "torn": sum(e["mode"] == "torn" for e in report),
        "meta": sum(e["mode"] == "meta" for e in report),
        "mariadb_down": sum(not e["mariadb_up"] for e in report),
        "armed_not_reached": sum(not e["armed_fired"] for e in report),
        "readings_lost": sum(sum(e["lost"].values()) for e in report),
        "cuts_losing_a_reading": sum(any(e["lost"].values()) for e in report),
        "max_lost_per_meter_per_cut": max((max(e["lost"].values()) for e in report), default=0),
        "cuts_during_a_slow_commit": sum(e["slow_commit"] for e in report),
        "cuts_with_unsynced_data": sum(e["dirty_sectors"] > 0 for e in report),
        "per_cut": report,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "per_cut"}))
    if os.environ.get("POWERCUT_REPORT"):
        Path(os.environ["POWERCUT_REPORT"]).write_text(json.dumps(summary, indent=2))
    return summary
