"""One poll thread per bus: a silent meter never costs another meter a sample, and every
slot of every meter leaves a row (a reading, or a gap saying why).

The silent meters are real TCP servers that accept the connection and read the
request but never answer (a meter powered but mute, a gateway whose serial side is
dead): each poll waits its whole timeout. Ports where nothing listens (the
connection refused at once) are the other kind of silence.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    LoggerDB,
    common_slots,
    edgelog,
    meter_toml,
    one_row_per_slot,
    rows_by_meter,
    running_logger,
    wait_for,
    write_config,
)

from edgelog.simulate import SimulatorThread


class SilentServers:
    """`n` TCP ports on 127.0.0.1 that accept and read, and never write a byte."""

    def __init__(self, n: int):
        self.selector = selectors.DefaultSelector()
        self.listeners = []
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, "listen")
            self.listeners.append(sock)
        self.ports = [s.getsockname()[1] for s in self.listeners]
        self.accepted = 0
        self.requests = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "listen":
                    conn, _ = sock.accept()
                    conn.setblocking(False)
                    self.selector.register(conn, selectors.EVENT_READ, "conn")
                    self.accepted += 1
                    continue
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    self.requests += 1  # heard, and left unanswered
                else:
                    self.selector.unregister(sock)
                    sock.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


@pytest.fixture
def silent() -> Iterator[SilentServers]:
    servers = SilentServers(10)
    yield servers
    servers.close()


def closed_ports(n: int) -> list[int]:
    """Ports where nothing listens: a connection is refused at once."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_one_healthy_meter_and_ten_silent_ones_on_their_own_buses_at_1_hz(
    tmp_path: Path, simulator: SimulatorThread, logger_db: LoggerDB, silent: SilentServers
) -> None:
    refused = closed_ports(2)
    # every timing key at its default (1 Hz, timeout_s 0.3)
    meters = [meter_toml(simulator.port, "healthy", interval_s=None)]
    meters += [meter_toml(port, f"silent{i:02d}", interval_s=None) for i, port in enumerate(silent.ports)]
    meters += [meter_toml(port, f"refused{i}", interval_s=None) for i, port in enumerate(refused)]
    config = write_config(tmp_path, logger_db.toml(), *meters)
    with running_logger(config) as logger:
        time.sleep(32)
        assert logger.alive(), logger.text()

    rows = rows_by_meter(tmp_path / "buffer.sqlite3")
    assert len(rows) == 13
    slots = common_slots(rows, 1.0)
    assert len(slots) >= 28, slots
    healthy = one_row_per_slot(rows.pop("healthy"), slots, 1.0)
    assert healthy == [None] * len(slots), "the healthy meter has a reading in every slot"
    for name, meter_rows in rows.items():
        errors = one_row_per_slot(meter_rows, slots, 1.0)
        if name.startswith("silent"):
            port = silent.ports[int(name.removeprefix("silent"))]
            expected = f"timeout: no answer from unit 126 on 127.0.0.1:{port} within 0.3 s"
            assert errors == [expected] * len(slots), name
        else:
            refused_ok = [e is not None and e.startswith("no connection: cannot connect to") for e in errors]
            assert all(refused_ok), name
    assert silent.requests >= 10 * len(slots)  # each slot's request reached its silent server
    assert "skipped" not in logger.text()


def test_a_poll_that_overruns_leaves_a_skipped_gap_row_in_each_slot_it_cost(
    tmp_path: Path, simulator: SimulatorThread, sim2: SimulatorThread, logger_db: LoggerDB
) -> None:
    """pac1 and pac2 share a bus, pac3 has its own. One poll of pac1 hangs 2.2 s (a driver
    blocking: tests/inject/sitecustomize.py). Each slot it cost pac1 and pac2 is a gap row
    `skipped: poll overran` at the slot's grid instant; pac3 loses nothing; sync-status
    counts them per meter."""
    hang = tmp_path / "hang"
    meters = [
        meter_toml(simulator.port, "pac1", interval_s=None) + "interval_s = 0.5\ntimeout_s = 0.2\n",
        meter_toml(simulator.port, "pac2", interval_s=None) + "interval_s = 0.5\ntimeout_s = 0.2\n",
        meter_toml(sim2.port, "pac3", interval_s=None) + "interval_s = 0.5\n",
    ]
    config = write_config(tmp_path, logger_db.toml(), *meters)
    with running_logger(config, fault=f"hang:{hang}") as logger:
        try:
            wait_for(lambda: len(sim2.sim.served) >= 6, what="polls")
            hang.write_text("pac1\n")
            time.sleep(2.2)
            hang.unlink()
            time.sleep(3)
            status = edgelog("sync-status", "--json", config=config)
            assert logger.alive(), logger.text()
        finally:
            hang.unlink(missing_ok=True)

    rows = rows_by_meter(tmp_path / "buffer.sqlite3")
    slots = common_slots(rows, 0.5)
    skipped = {}
    for name in ("pac1", "pac2", "pac3"):
        errors = one_row_per_slot(rows[name], slots, 0.5)  # one row in every slot, for each
        skipped[name] = [at for at, e in rows[name] if e == "skipped: poll overran"]
        assert all(e in (None, "skipped: poll overran") for e in errors), (name, errors)
        assert all((at / 0.5).is_integer() for at in skipped[name]), "at the slot's grid instant"
    assert len(skipped["pac1"]) >= 3 and len(skipped["pac2"]) >= 3, skipped
    assert skipped["pac3"] == [] and all(e is None for _, e in rows["pac3"]), "the other bus lost nothing"
    meters_status = json.loads(status.stdout)["meters"]
    for name in ("pac1", "pac2"):
        assert meters_status[name]["skipped_last_hour"] == len(skipped[name])
        assert meters_status[name]["gaps_last_hour"] == {"skipped": len(skipped[name])}
    assert meters_status["pac3"]["gaps_last_hour"] == {} and meters_status["pac3"]["skipped_last_hour"] == 0
    assert "meter pac1: " in logger.text() and "slot(s) skipped so far" in logger.text()
