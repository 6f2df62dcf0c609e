"""Fault 5: the wall clock of the real `edgelog run` jumps (libfaketime, with the
offset in a file the test rewrites; the monotonic clock stays real).

The Pi has no RTC: after a power cut fake-hwclock restores an old time, and
the clock jumps forward when time sync comes back. Here, with
`[clock] require_sync = false` (this container's kernel reports "not
synchronised" for ever, which would flag every reading):

  A  real time ............................ clock_ok = 1
  B  the clock jumps 3 h back ............. clock_ok = 0 (behind the floor)
  C  kill -9, restart with the clock still 3 h back: clock_ok = 0 from the
     first reading (the floor comes from the newest trusted reading in the buffer)
  D  the clock jumps forward to real time . clock_ok = 1 again

Asserted: no reading lost or merged (distinct seqs, all in MariaDB once; only the
one in flight at the kill may be missing), clock_ok is 0 exactly for the readings
stamped with the bad time, and the poll cadence holds across each jump: no burst
of catch-up polls after the jump forward, no silence after the jump back.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    assert_exactly_once,
    buffer_rows,
    faketime_library,
    max_seq,
    meter_toml,
    polled,
    wait_for,
)

from edgelog.poller import SLOW_COMMIT

LIB = faketime_library()
pytestmark = pytest.mark.skipif(
    LIB is None, reason="libfaketime is not installed (scripts/setup installs it)"
)
INTERVAL = 0.2
BACK_S = 3 * 3600


class PollClock:
    """When the simulator took each poll (real monotonic time, in the test process)."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.times: list[float] = []
        self._stop = threading.Event()
        self._seen = len(sim.served)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            n = len(self.sim.served)
            now = time.monotonic()
            self.times += [now] * (n - self._seen)
            self._seen = n

    def between(self, start: float, end: float) -> list[float]:
        return [t for t in self.times if start <= t <= end]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)


def set_offset(path: Path, offset: str) -> None:
    """Atomically: libfaketime reads the file again at most a second later
    (FAKETIME_CACHE_DURATION=1)."""
    tmp = path.with_suffix(".new")
    tmp.write_text(offset + "\n")
    os.replace(tmp, path)


def assert_steady(polls: list[float], start: float, end: float) -> None:
    """The grid goes on across a jump: no silence (a schedule on the old time would wait
    3 h) and no burst (one catching up would poll 54 000 times at once). Scheduling
    noise on a loaded CI machine aside (see helpers.NOISE_RUN_S)."""
    assert len(polls) >= 0.3 * (end - start) / INTERVAL, len(polls)
    gaps = [b - a for a, b in itertools.pairwise([start, *polls, end])]
    assert max(gaps) < 2.5, f"silence of {max(gaps):.2f} s"
    for t in polls:  # never more polls in one second than the grid has
        assert sum(t <= u < t + 1.0 for u in polls) <= 1 / INTERVAL + 1


def test_clock_jumps_back_3h_and_forward_lose_nothing_flag_bad_readings_and_keep_cadence(
    tmp_path: Path, logger_db, simulator, logger_factory
) -> None:
    offset = tmp_path / "faketime"
    set_offset(offset, "+0")
    logger = logger_factory(
        logger_db.fault_toml(socket_path=True),
        meter_toml(simulator.port, interval_s=INTERVAL),
        clock={"require_sync": False},
        env={
            "LD_PRELOAD": str(LIB),
            "FAKETIME_TIMESTAMP_FILE": str(offset),
            # Re-read the offset file every second, not at every clock call (FAKETIME_NO_CACHE):
            # with that, every hand-over between two threads costs libfaketime 5-35 ms, which
            # `edgelog run` (a poll thread handing readings to the buffer writer) would pay
            # at every poll. The test waits 3 s after each change of the offset.
            "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # only the wall clock jumps, as with a real step
        },
    )
    simulator.sim.keep_served = 10**9
    polls = PollClock(simulator.sim)
    started_at = time.time()
    try:
        logger.start()
        wait_for(lambda: max_seq(logger.buffer) >= 10, timeout=30, what="readings")

        back_at = time.monotonic()
        set_offset(offset, f"-{BACK_S}")  # A -> B: 3 h back
        time.sleep(3)
        logger.kill9()  # B -> C: a power cut while the clock is wrong ...
        slow_commit = bool(logger.lines(SLOW_COMMIT))  # then more may be in flight (guarantees.md)
        served_at_kill = len(simulator.sim.served)
        seq_at_kill = max_seq(logger.buffer)
        polled_at_kill = len(polled(buffer_rows(logger.buffer)))
        with logger.running():  # ... and a boot with the clock still 3 h back
            wait_for(
                lambda: max_seq(logger.buffer) >= seq_at_kill + 10, timeout=30, what="readings after restart"
            )

            forward_at = time.monotonic()
            set_offset(offset, "+0")  # C -> D: time sync is back, 3 h forward
            time.sleep(3)
            end_at = time.monotonic()
    finally:
        polls.close()
    logger.drain()

    rows = assert_exactly_once(logger.buffer, logger_db)
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(set(seqs))
    # nothing lost: one row per poll, but the one in flight at the kill (a slot the poll
    # thread was too busy for, on this loaded machine, is a row but no poll)
    for lost in (served_at_kill - polled_at_kill, len(simulator.sim.served) - len(polled(rows))):
        assert lost in (0, 1) or (lost > 1 and slow_commit), (
            lost,
            [r for r in rows if r not in polled(rows)],
        )
    # readings stamped with the bad time, and only those, have clock_ok = 0
    bad_time = [r["measured_at"] < started_at - BACK_S / 2 for r in rows]
    assert [not r["clock_ok"] for r in rows] == bad_time
    assert sum(bad_time) >= (3 / INTERVAL + 10) * 0.5  # phases B and C
    assert not bad_time[0] and not bad_time[-1]
    # the identity is the seq, not the time: time runs backwards along the seqs
    times = [r["measured_at"] for r in rows]
    assert any(b < a - 3600 for a, b in itertools.pairwise(times))
    # the cadence recovered at once after each jump: no burst, no silence
    assert_steady(polls.between(back_at, back_at + 3), back_at, back_at + 3)
    assert_steady(polls.between(forward_at, end_at), forward_at, end_at)
    # logged once per episode (and each process start with a bad clock is one)
    assert len(logger.lines("clock not trusted")) == 2
    # sync-status counts the two steps `run` saw: 3 h back (before the kill), 3 h forward
    data = logger.status()  # `edgelog sync-status --json`
    assert data["clock_steps"] == 2 and abs(data["last_clock_step_s"] - BACK_S) < 5, data
    assert len(logger.lines("clock trusted again")) == 1
    assert any("clock stepped by -10800" in line for line in logger.lines("clock stepped"))
    assert any("clock stepped by +10800" in line for line in logger.lines("clock stepped"))
