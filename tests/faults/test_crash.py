"""Fault 1: kill -9 of `edgelog run` at random moments, many times in a row.

Each kill lands in one of three moments, chosen at random: during start-up,
while polling, or right after MariaDB committed a batch (so in the middle of
the sync: between its commit and the buffer recording it, or in the next
batch). After each kill the logger is started again, like systemd would. At
the end it is stopped cleanly, the rest is drained, and:

* every reading the buffer committed is in MariaDB exactly once, with its values;
* per kill and per meter, the readings the meter served that are not in the
  buffer are 0 or 1: only the reading in flight is lost (more only if that run
  logged a commit slower than the interval: the readings waiting for the disk,
  see docs/guarantees.md);
* each buffer opening ran quick_check and found nothing to move aside.

The CI run does 15 kills in about 20 s. `scripts/soak` runs the same test for hours
(SOAK_SECONDS, SOAK_KILLS: it stops at whichever comes first; SOAK_SEED replays a
run; SOAK_REPORT names a JSON file for the per-kill figures).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from helpers import (
    COLUMNS,
    assert_exactly_once,
    assert_served,
    buffer_rows,
    max_seq,
    meta,
    meter_toml,
    polled,
    remote_count,
    remote_max_seq,
    sampled_invariant,
    sent_upto,
    served_polls,
    wait_for,
)

from edgelog.poller import SLOW_COMMIT

KILLS = int(os.environ.get("SOAK_KILLS") or 15)  # stop after this many kills ...
SECONDS = float(os.environ.get("SOAK_SECONDS") or 0)  # ... or (> 0) after this long
SOAK = bool(SECONDS) or KILLS > 50
MOMENTS = ("startup", "polling", "syncing")


def test_kill9_at_random_moments_loses_at_most_the_reading_in_flight(
    tmp_path: Path, logger_db, simulator, sim2, logger_factory
) -> None:
    seed = int(os.environ.get("SOAK_SEED") or random.randrange(2**32))
    rnd = random.Random(seed)
    sims = {"pac1": simulator, "pac2": sim2}
    for sim in sims.values():
        # the whole history, to compare with the buffer (a soak keeps the last 100 000)
        sim.sim.keep_served = 100_000 if SOAK else 10**9
        sim.sim.delay_s = 0.03  # an RS485 round trip: a kill can land while a poll is in flight
    logger = logger_factory(
        logger_db.fault_toml(socket_path=True, batch_size=7),
        meter_toml(simulator.port, interval_s=0.2),
        meter_toml(sim2.port, name="pac2", interval_s=0.2),
        sync={"interval_s": 0.1},
    )
    buffer = logger.buffer
    report: list[dict[str, Any]] = []
    served_before = served_polls(sims)
    seq_before = 0
    started = time.monotonic()
    i = 0
    while i < KILLS and not (SECONDS and time.monotonic() - started >= SECONDS):
        moment = rnd.choice(MOMENTS)
        rows_at_start = max_seq(buffer)
        stalls_before = len(logger.lines(SLOW_COMMIT))
        logger.start()
        if moment == "startup":
            time.sleep(rnd.uniform(0.05, 1.2))
        elif moment == "polling":
            wait_for(lambda n=rows_at_start: max_seq(buffer) > n + 2, timeout=30, what="polls")
            time.sleep(rnd.uniform(0.0, 2.0))
        else:  # within milliseconds of a batch committed in MariaDB
            wait_for(lambda n=rows_at_start: max_seq(buffer) > n + 2, timeout=30, what="polls")
            time.sleep(rnd.uniform(0.0, 1.0))
            n = remote_count(logger_db)
            wait_for(lambda n=n: remote_count(logger_db) > n, timeout=30, every=0.002, what="a batch")
            time.sleep(rnd.uniform(0.0, 0.004))
        assert logger.alive(), logger.text()[-2000:]
        logger.kill9()
        time.sleep(0.15)  # let the simulators answer what was already on the wire
        served_now = served_polls(sims)
        seq_now = max_seq(buffer)
        rows = buffer_rows(buffer, "seq > ? AND seq <= ?", seq_before, seq_now)
        stored = {m: sum(r["meter"] == m for r in polled(rows)) for m in sims}
        lost = {m: served_now[m] - served_before[m] - stored[m] for m in sims}
        buffer_id = meta(buffer, "buffer_id") if buffer.exists() else None
        position = sent_upto(buffer) if buffer_id else 0
        remote_max = remote_max_seq(logger_db, buffer_id) if buffer_id else 0
        report.append(
            {
                "kill": i + 1,
                "moment": moment,
                "lost": lost,
                "stored": stored,
                # the disk was slower than the interval: readings waited in memory
                "slow_commit": len(logger.lines(SLOW_COMMIT)) > stalls_before,
                # a batch MariaDB committed whose position the buffer had not recorded yet
                "committed_not_marked": remote_max > position,
            }
        )
        if buffer_id:
            sampled_invariant(buffer, logger_db)
        served_before, seq_before = served_now, seq_now
        i += 1

    # The last start runs cleanly and is stopped by SIGTERM: nothing lost there.
    with logger.running():
        wait_for(lambda: max_seq(buffer) > seq_before + 4, timeout=30, what="polls after the last restart")
    logger.drain()

    summary = {
        "seed": seed,
        "kills": len(report),
        "readings_lost": sum(sum(e["lost"].values()) for e in report),
        "kills_losing_a_reading": sum(any(e["lost"].values()) for e in report),
        "max_lost_per_meter_per_kill": max((max(e["lost"].values()) for e in report), default=0),
        "kills_during_a_slow_commit": sum(e["slow_commit"] for e in report),
        "kills_between_commit_and_mark": sum(e["committed_not_marked"] for e in report),
        "per_kill": report,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "per_kill"}))
    for entry in report[:50]:
        print(json.dumps(entry))
    if os.environ.get("SOAK_REPORT"):
        Path(os.environ["SOAK_REPORT"]).write_text(json.dumps(summary, indent=2))

    # 1. exactly once, values included
    local = polled(assert_exactly_once(buffer, logger_db))
    assert all(r["error"] is None for r in local), "a kill never shows up as a failed poll"
    # 2. only the reading in flight: at most one per meter per kill (or, in a run that
    # logged a commit slower than the interval, the readings that waited for it)
    bad = [
        e for e in report if not all(0 <= n <= 1 or (n > 1 and e["slow_commit"]) for n in e["lost"].values())
    ]
    assert not bad, f"seed {seed}: kills losing more than the reading in flight: {bad}"
    total_lost = sum(sum(e["lost"].values()) for e in report)
    served_total = sum(served_polls(sims).values())
    assert len(local) + total_lost == served_total, (len(local), total_lost, served_total)
    # every stored reading is, in order, one the meter served (none changed, none invented)
    for name, sim in sims.items():
        mine = [r for r in local if r["meter"] == name]
        if SOAK:  # the simulator kept only the newest answers
            assert_served(mine[-len(sim.sim.served) // 2 :], sim.sim.served)
            continue
        answers = iter(sim.sim.served)
        for row in mine:
            want = [row[c] for c in COLUMNS]
            assert any(want == [a[c] for c in COLUMNS] for a in answers), (name, row["seq"])
    # 3. every start opened the buffer, checked it, and found it sound
    assert logger.lines("moved aside") == []
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert logger.starts == len(report) + 1
