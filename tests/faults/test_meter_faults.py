"""Fault 4: the meter misbehaves while `edgelog run` polls it.

Over Modbus TCP (the simulator's knobs, and the server itself stopped and started
again on the same port): timeouts, exception responses, the meter unplugged and
plugged back, the meter answering slowly. Over Modbus RTU (two pty pairs with a
relay in between that corrupts the meter's answers on demand): CRC errors and
line noise. In every case:

* the cadence holds: one row per grid slot (interval 0.4 s, timeout 0.25 s);
* each failed poll is a row with its reason in `error` (`timeout: …`,
  `exception 06 device busy: …`, `no connection: …`, `bad answer: …`) and NULL
  values, and no corrupted answer is ever stored as a reading;
* the logger reconnects by itself and the readings resume;
* each fault is logged once when it starts and once when it ends, with the
  number of failed polls, which matches the gap rows in the buffer.
"""

from __future__ import annotations

import os
import random
import re
import select
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    COLUMNS,
    assert_cadence,
    assert_exactly_once,
    assert_served,
    buffer_rows,
    max_seq,
    meter_toml,
    toml_table,
    wait_for,
)
from pymodbus.constants import ExcCodes

from edgelog.simulate import Pac3100Simulator, SimulatorThread

INTERVAL = 0.4
TIMEOUT = 0.25
STARTED = re.compile(r"meter (\w+): poll failed: (.*) \(recorded as a gap\)")
ENDED = re.compile(r"meter (\w+): answers again after (\d+) failed polls")


def rows_since(buffer: Path, seq: int) -> list[dict]:
    return buffer_rows(buffer, "seq > ?", seq)


def last_seq(buffer: Path) -> int:
    return max_seq(buffer) if buffer.exists() else 0


def started(buffer: Path, what: str) -> int:
    """Once the logger has stored 3 readings: the seq the phases of the test start after."""
    wait_for(lambda: last_seq(buffer) >= 3, timeout=30, what=what)
    return last_seq(buffer)


def phase(buffer: Path, seconds: float) -> list[dict]:
    """The rows stored during the next `seconds`."""
    start = last_seq(buffer)
    time.sleep(seconds)
    return rows_since(buffer, start)


def assert_fault_log(log_text: str, rows: list[dict], episodes: int) -> None:
    """Each fault: one line when it starts, one when it ends with the count of gaps."""
    started = [m.groups() for m in map(STARTED.search, log_text.splitlines()) if m]
    ended = [(m[1], int(m[2])) for m in map(ENDED.search, log_text.splitlines()) if m]
    assert len(started) == len(ended) == episodes, (started, ended)
    # failed polls (a slot skipped because a poll overran is a gap too, but no failed poll)
    gaps = sum(r["error"] is not None and not r["error"].startswith("skipped:") for r in rows)
    assert sum(n for _, n in ended) == gaps
    # a "still failing" line only at 10, 100, every 1000 polls in a row
    still = [line for line in log_text.splitlines() if "still failing" in line]
    assert len(still) <= episodes * 2, still


def assert_every_slot_has_one_row(rows: list[dict]) -> None:
    """One row per grid slot, failed polls included: the faults cost no sample."""
    times = [r["measured_at"] for r in rows]
    slots = [int(t // INTERVAL) for t in times]
    assert len(slots) == len(set(slots)), "two polls in one slot: a burst"
    assert_cadence(times, INTERVAL, times[0], times[-1])


def test_tcp_meter_timeouts_exceptions_unplugged_and_slow(logger_db, logger_factory) -> None:
    sim = Pac3100Simulator()
    server = SimulatorThread(sim).start()
    port = server.port
    logger = logger_factory(
        logger_db.fault_toml(socket_path=True), meter_toml(port, interval_s=INTERVAL, timeout_s=TIMEOUT)
    )
    buffer = logger.buffer
    try:
        with logger.running():
            first = started(buffer, "readings")

            ok1 = phase(buffer, 1.5)
            sim.delay_s = 1.0  # answers after the timeout: each poll times out
            timeouts = phase(buffer, 2.5)
            sim.delay_s = 0.0
            ok2 = phase(buffer, 1.5)
            sim.exception_code = ExcCodes.DEVICE_BUSY  # exception response 6
            exceptions = phase(buffer, 2.5)
            sim.exception_code = None
            ok3 = phase(buffer, 1.5)
            server.stop()  # unplugged: nothing listens on the port any more
            unplugged = phase(buffer, 2.5)
            server = SimulatorThread(sim, port=port).start()  # plugged back, same port
            ok4 = phase(buffer, 1.5)
            sim.delay_s = 0.12  # slow, but within timeout_s
            slow = phase(buffer, 2.5)
            sim.delay_s = 0.0
    finally:
        server.stop()
    logger.drain()
    everything = assert_exactly_once(buffer, logger_db)
    rows = [r for r in everything if r["seq"] > first]

    def gaps(rs: list[dict]) -> list[dict]:
        return [r for r in rs if r["error"] is not None]

    # the faults show up as gaps with their reason, the good phases have none
    for good in (ok1, ok2[1:], ok3[1:], ok4[2:], slow):
        assert good and not gaps(good), [r["error"] for r in gaps(good)]
    assert len(gaps(timeouts)) >= 4
    assert all(r["error"].startswith("timeout: no answer from unit 126 on ") for r in gaps(timeouts))
    assert len(gaps(exceptions)) >= 4
    assert all(r["error"].startswith("exception 06 device busy: ") for r in gaps(exceptions))
    assert len(gaps(unplugged)) >= 4
    assert all(r["error"].startswith(("no connection: ", "timeout: ")) for r in gaps(unplugged))
    for r in gaps(rows):  # the library's own wording never reaches the data
        assert "continue with next request" not in r["error"] and "ERROR" not in r["error"]
    for r in gaps(rows):
        assert all(r[c] is None for c in COLUMNS)
    # readings resumed after each fault, by themselves
    for after in (ok2, ok3, ok4):
        assert [r for r in after if r["error"] is None]
    # the cadence held through all of it, slow meter included
    assert_every_slot_has_one_row(rows)
    assert_fault_log(logger.text(), rows, episodes=3)
    # every reading is what the meter served, unchanged
    assert_served(rows, sim.served)


# -- RTU: a relay that corrupts the line -----------------------------------------------


class CorruptingLine:
    """edgelog <-> pty A <-> relay <-> pty B <-> meter. The relay forwards bytes both
    ways; on demand it flips a bit in each answer (a CRC error) or adds line noise
    before it."""

    def __init__(self) -> None:
        self.a_master, a_slave = os.openpty()
        self.b_master, b_slave = os.openpty()
        for fd in (a_slave, b_slave, self.a_master, self.b_master):
            tty.setraw(fd)
        self.a_path, self.b_path = os.ttyname(a_slave), os.ttyname(b_slave)
        self._slaves = (a_slave, b_slave)  # kept open: a master never sees EIO
        self.flip = False
        self.noise = False
        self.corrupted = 0
        self.rnd = random.Random(7)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.a_master, self.b_master], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if fd == self.a_master:  # request: edgelog -> meter
                    os.write(self.b_master, data)
                    continue
                if self.flip:  # answer: meter -> edgelog
                    data = bytearray(data)
                    data[len(data) // 2] ^= 0x10  # a single-bit error: the CRC catches it
                    data = bytes(data)
                    self.corrupted += 1
                elif self.noise:
                    data = self.rnd.randbytes(self.rnd.randint(3, 12)) + data
                    self.corrupted += 1
                os.write(self.a_master, data)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for fd in (self.a_master, self.b_master, *self._slaves):
            os.close(fd)


@pytest.fixture
def corrupting_line() -> Iterator[CorruptingLine]:
    line = CorruptingLine()
    yield line
    line.close()


def test_rtu_crc_errors_and_line_noise_are_gaps_never_readings(
    logger_db, logger_factory, corrupting_line: CorruptingLine
) -> None:
    sim = Pac3100Simulator()
    server = SimulatorThread(sim, rtu_device=corrupting_line.b_path).start()
    rtu = {"name": "pac1", "transport": "rtu", "interval_s": INTERVAL, "timeout_s": TIMEOUT}
    logger = logger_factory(
        logger_db.fault_toml(socket_path=True),
        toml_table("[[meters]]", {**rtu, "device": corrupting_line.a_path}),
    )
    buffer = logger.buffer
    try:
        with logger.running():
            first = started(buffer, "readings over RTU")
            ok1 = phase(buffer, 1.5)
            corrupting_line.flip = True
            crc = phase(buffer, 2.5)
            corrupting_line.flip = False
            ok2 = phase(buffer, 2)
            corrupting_line.noise = True
            noisy = phase(buffer, 2.5)
            corrupting_line.noise = False
            ok3 = phase(buffer, 2)
    finally:
        server.stop()
    logger.drain()
    everything = assert_exactly_once(buffer, logger_db)
    rows = [r for r in everything if r["seq"] > first]

    assert ok1 and all(r["error"] is None for r in ok1)
    crc_gaps = [r for r in crc if r["error"] is not None]
    assert len(crc_gaps) >= 4, [r["error"] for r in crc]  # a corrupted answer is never a reading
    # something came back, but nothing valid: a bad answer, not silence
    assert all(r["error"].startswith("bad answer: ") for r in crc_gaps), [r["error"] for r in crc_gaps]
    assert all(r["error"] is None for r in crc if r not in crc_gaps) is True
    assert [r for r in ok2 if r["error"] is None], "readings resumed after the CRC errors"
    assert [r for r in ok3 if r["error"] is None], "readings resumed after the noise"
    assert all(r["error"] is None for r in ok3[2:])
    assert corrupting_line.corrupted >= 8
    # whatever got through the noise is a real answer, bit for bit; the rest are gaps
    assert_served(rows, sim.served)
    assert all(r[c] is None for r in rows if r["error"] is not None for c in COLUMNS)
    assert_every_slot_has_one_row(rows)
    episodes = len([m for m in map(STARTED.search, logger.text().splitlines()) if m])
    assert episodes >= 1
    assert_fault_log(logger.text(), rows, episodes=episodes)
    assert len(noisy) >= 5
