"""Modbus RTU framing over a real serial line: a socat pty pair between edgelog and the simulator.

socat's hex dump (-x) shows the bytes on the line, so the frames are checked
independently of pymodbus: address, function, CRC, and the values themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import select
import shutil
import struct
import subprocess
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    LoggerDB,
    common_slots,
    edgelog,
    one_row_per_slot,
    rows_by_meter,
    rtu_config,
    running_logger,
    toml_table,
    wait_or_kill,
    write_config,
)
from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from edgelog.errors import MeterBadAnswer, MeterTimeout
from edgelog.meter import close_meters, open_meters
from edgelog.profiles import PAC3100
from edgelog.simulate import Pac3100Simulator, SimulatorThread, answer_only

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")

NAMES = [r.name for r in PAC3100.registers]
DUMP_HEADER = re.compile(r"^([<>]) \S+ \S+\s+length=(\d+)")


@dataclass
class SerialLine:
    """Two ends of a null-modem cable made by socat; `log` holds socat's hex dump."""

    a: Path  # edgelog's end
    b: Path  # the meter's end
    log: Path

    def traffic(self) -> tuple[bytes, bytes]:
        """All bytes sent a -> b and b -> a so far, from socat's -x dump."""
        sent = {">": bytearray(), "<": bytearray()}
        direction = None
        for line in self.log.read_text(errors="replace").splitlines():
            if header := DUMP_HEADER.match(line):
                direction = header[1]
            elif direction and line.startswith(" "):
                sent[direction] += bytes.fromhex(line)
                direction = None
        return bytes(sent[">"]), bytes(sent["<"])

    def wait_traffic(self, a_to_b: int, b_to_a: int, timeout: float = 3.0) -> tuple[bytes, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            out, back = self.traffic()
            if (len(out) >= a_to_b and len(back) >= b_to_a) or time.monotonic() > deadline:
                return out, back
            time.sleep(0.02)


@pytest.fixture
def line(tmp_path: Path) -> Iterator[SerialLine]:
    a, b, log = tmp_path / "ttyA", tmp_path / "ttyB", tmp_path / "socat.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                "socat",
                "-d",
                "-d",
                "-x",
                f"pty,raw,echo=0,link={a}",
                f"pty,raw,echo=0,link={b}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "socat did not create the pty links"
            time.sleep(0.02)
        yield SerialLine(a, b, log)
    finally:
        proc.terminate()
        wait_or_kill(proc, 5)
    assert proc.returncode is not None


def crc16(frame: bytes) -> bytes:
    """Modbus RTU CRC (poly 0xA001 reflected, init 0xFFFF), low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


def test_crc16_matches_the_modbus_specification_example() -> None:
    # Modbus over serial line spec, 6.2.2: 02 07 -> CRC 41 12 (sent as 0x41, 0x12)
    assert crc16(bytes([0x02, 0x07])) == bytes([0x41, 0x12])


def read_request_frame(unit: int, function: int, address: int, count: int) -> bytes:
    pdu = struct.pack(">BBHH", unit, function, address, count)
    return pdu + crc16(pdu)


def test_rtu_read_over_a_serial_line(line: SerialLine) -> None:
    server = SimulatorThread(Pac3100Simulator(), rtu_device=str(line.b)).start()
    cfg = rtu_config(line.a)
    assert (cfg.unit_id, cfg.baudrate, cfg.bytesize, cfg.parity, cfg.stopbits) == (126, 19200, 8, "N", 2)
    (meter,) = open_meters([cfg])
    try:
        reading = meter.read()
        served = server.sim.served[-1]
        assert server.sim.requests == 1
        assert reading.values == served

        # the bytes on the line: one request, one answer, both valid RTU frames
        request = read_request_frame(126, 0x03, 1, 40)
        assert request == bytes.fromhex("7E 03 00 01 00 28 1F DB")  # README's worked example
        out, back = line.wait_traffic(len(request), 3 + 80 + 2)
        assert out == request
        assert back[:3] == bytes([126, 0x03, 80])
        assert len(back) == 85 and back[-2:] == crc16(back[:-2])
        on_the_wire = struct.unpack(">20f", back[3:83])  # high word first
        assert dict(zip(NAMES, on_the_wire, strict=True)) == served
    finally:
        close_meters([meter])
        server.stop()


def test_the_simulator_stays_silent_for_other_units_on_the_line(line: SerialLine) -> None:
    server = SimulatorThread(Pac3100Simulator(), rtu_device=str(line.b)).start()
    meters = open_meters([rtu_config(line.a), rtu_config(line.a, name="wrong", unit_id=5)])
    right, wrong = meters
    try:
        started = time.monotonic()
        with pytest.raises(
            MeterTimeout, match=r"^timeout: no answer from unit 5 on .*ttyA \(19200 8N2\) within 0.3 s$"
        ):
            wrong.read()
        assert time.monotonic() - started >= 0.25
        assert server.sim.requests == 0  # the request reached the line, not the meter
        out, back = line.wait_traffic(8, 0)
        assert out == read_request_frame(5, 0x03, 1, 40) and back == b""  # nobody answered

        assert right.read().values == server.sim.served[-1]
        assert server.sim.requests == 1
    finally:
        close_meters(meters)
        server.stop()


class ServerThread:
    """A pymodbus server built by `make` (inside its own event loop) in a background thread."""

    def __init__(self, make: Callable[[], Any]):
        self.make = make
        self.server: Any = None
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    async def _serve(self) -> None:
        self.server = self.make()
        await self.server.serve_forever(background=True)
        self.ready.set()
        try:
            await self.server.serving
        finally:
            await self.server.shutdown()

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:
            self.error = exc
            self.ready.set()
        finally:
            self.loop.close()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        assert self.ready.wait(10) and self.error is None, self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_two_meters_on_one_line_share_a_bus_and_a_wrong_unit_only_times_out(line: SerialLine) -> None:
    make, sim126, sim2 = two_meter_server(line.b)
    sim2.override = {"frequencia": 50.0}  # tell the two answers apart
    with ServerThread(make):
        meters = open_meters(
            [
                rtu_config(line.a, name="pac126"),
                rtu_config(line.a, name="pac2", unit_id=2),
                rtu_config(line.a, name="absent", unit_id=7),
            ]
        )
        m126, m2, absent = meters
        try:
            assert m126.bus is m2.bus is absent.bus
            first = m126.read()
            assert first.values == sim126.served[-1]
            second = m2.read()
            assert second.values == sim2.served[-1]
            assert second.values["frequencia"] == 50.0 != first.values["frequencia"]
            assert (sim126.requests, sim2.requests) == (1, 1)

            with pytest.raises(MeterTimeout, match=r"^timeout: no answer from unit 7"):
                absent.read()
            assert (sim126.requests, sim2.requests) == (1, 1)

            again = m126.read()  # the line still works after the timeout
            assert again.values == sim126.served[-1]
            assert m2.read().values == sim2.served[-1]
            assert (sim126.requests, sim2.requests) == (2, 2)
            assert m126.bus.requests_sent == 5

            out, _ = line.wait_traffic(5 * 8, 0)
            assert out == b"".join(read_request_frame(unit, 0x03, 1, 40) for unit in (126, 2, 7, 126, 2))
        finally:
            close_meters(meters)


def test_an_rtu_meter_behind_a_tcp_serial_server_via_a_pyserial_url() -> None:
    """`device = "socket://host:port"`: RTU frames over TCP (a transparent RS485-Ethernet converter)."""
    sim = Pac3100Simulator()
    with ServerThread(
        lambda: ModbusTcpServer(sim.device(), address=("127.0.0.1", 0), framer=FramerType.RTU)
    ) as server:
        port = server.server.transport.sockets[0].getsockname()[1]
        (meter,) = open_meters([rtu_config(f"socket://127.0.0.1:{port}", timeout_s=3.0, interval_s=5)])
        try:
            for n in (1, 2):
                assert meter.read().values == sim.served[-1]
                assert sim.requests == n
        finally:
            close_meters([meter])
    # the server is gone: nobody listens on that port any more
    (gone,) = open_meters([rtu_config(f"socket://127.0.0.1:{port}")])
    try:
        with pytest.raises(MeterTimeout, match=f"socket://127.0.0.1:{port}"):
            gone.read()
    finally:
        close_meters([gone])


# -- a meter that answers wrongly on the line ------------------------------------------


class RawRtuMeter:
    """A meter written out by hand at the far end of the line: it answers each read
    request (8 bytes) as `mode` says, every frame with a valid CRC unless told."""

    def __init__(self, device: Path):
        self.fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self.mode = "ok"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def answer(self, unit: int, fc: int, count: int) -> bytes:
        data = b"".join((0x4300 + i).to_bytes(2, "big") for i in range(count))
        if self.mode == "fc":
            fc = 0x04 if fc == 0x03 else 0x03
        if self.mode == "unit":
            unit = 5
        if self.mode == "short":
            data = data[:-2]
        frame = bytes([unit, fc, len(data)]) + data
        crc = crc16(frame)
        if self.mode == "crc":
            crc = bytes([crc[0] ^ 0xFF, crc[1]])
        return frame + crc

    def _serve(self) -> None:
        pending = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            pending += os.read(self.fd, 256)
            while len(pending) >= 8:
                request, pending = pending[:8], pending[8:]
                unit, fc, _address, count = struct.unpack(">BBHH", request[:6])
                os.write(self.fd, self.answer(unit, fc, count))

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        os.close(self.fd)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("fc", r"^bad answer: unit 126 answered function 0x04 to function 0x03 at 1 \(count 40\), on .*ttyA"),
        (
            "short",
            r"^bad answer: unit 126: byte count 78 answering function 0x03 at 1 \(count 40\) \(not 80\)",
        ),
        (
            "unit",
            r"^bad answer: 85 bytes on .*ttyA \(19200 8N2\) but no valid answer from unit 126 within 0.3 s",
        ),
        ("crc", r"^bad answer: 85 bytes on .*ttyA \(19200 8N2\) but no valid answer from unit 126"),
    ],
)
def test_a_wrong_answer_on_the_line_is_a_failed_poll_with_its_reason(
    line: SerialLine, mode: str, message: str
) -> None:
    meter_end = RawRtuMeter(line.b)
    (meter,) = open_meters([rtu_config(line.a)])
    try:
        assert meter.read().values["tensao_l1_n"] is not None
        meter_end.mode = mode
        with pytest.raises(MeterBadAnswer, match=message):
            meter.read()
        meter_end.mode = "ok"
        assert meter.read().values["tensao_l1_n"] is not None  # the line recovers by itself
    finally:
        close_meters([meter])
        meter_end.close()


# -- three meters on one line under `edgelog run` ---------------------------------------


def three_on_a_line(device: Path, **extra: Any) -> str:
    """pac126 and pac2 answer; `absent` (unit 7) is on the config but not on the line."""
    return "".join(
        toml_table(
            "[[meters]]", {"name": name, "transport": "rtu", "device": device, "unit_id": unit, **extra}
        )
        for name, unit in (("pac126", 126), ("pac2", 2), ("absent", 7))
    )


def two_meter_server(
    device: Path,
) -> tuple[Callable[[], ModbusSerialServer], Pac3100Simulator, Pac3100Simulator]:
    """A factory of an RTU server on `device` with the pac3100's line settings, for units
    126 and 2 (as on RS485: no answer for another unit), and the two simulators."""
    sim126, sim2 = Pac3100Simulator(unit_id=126), Pac3100Simulator(unit_id=2)

    def make() -> ModbusSerialServer:
        return ModbusSerialServer(
            [sim126.device(), sim2.device()],
            framer=FramerType.RTU,
            port=str(device),
            trace_pdu=answer_only({126, 2}),
            **dataclasses.asdict(PAC3100.serial),
        )

    return make, sim126, sim2


def test_a_silent_meter_on_the_line_costs_the_other_two_no_slot(
    tmp_path: Path, line: SerialLine, logger_db: LoggerDB
) -> None:
    """1 s, the default timeout_s 0.3: 3 × 0.3 s < 1 s, within the bus's time budget."""
    make, sim126, sim2 = two_meter_server(line.b)
    config = write_config(tmp_path, logger_db.toml(), three_on_a_line(line.a))
    with ServerThread(make), running_logger(config) as logger:
        time.sleep(13)
        assert logger.alive(), logger.text()
    rows = rows_by_meter(tmp_path / "buffer.sqlite3")
    slots = common_slots(rows, 1.0)
    assert len(slots) >= 10
    for name in ("pac126", "pac2", "absent"):
        errors = one_row_per_slot(rows[name], slots, 1.0)
        if name == "absent":
            assert all(e is not None and e.startswith("timeout: no answer from unit 7 on ") for e in errors)
        else:
            assert errors == [None] * len(slots), name
    assert sim126.requests >= len(slots) and sim2.requests >= len(slots)


def test_a_line_over_its_time_budget_is_refused_with_the_numbers(tmp_path: Path, logger_db: LoggerDB) -> None:
    device = tmp_path / "ttyUSB0"  # never opened: the config is refused first
    config = write_config(tmp_path, logger_db.toml(), three_on_a_line(device, timeout_s=0.4))
    result = edgelog("run", config=config, timeout=30)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line == (
        f"edgelog: error: {config}: [meters] bus {device} (19200 8N2) with pac126, pac2, absent: "
        "3 meter(s) × timeout_s 0.4 s × (1 + retries 0) = 1.2 s, which must be less than the "
        "shortest interval_s on the bus (1 s, meter pac126); lower timeout_s or retries, raise "
        "interval_s, or move a meter to another bus"
    )
    assert not (tmp_path / "buffer.sqlite3").exists()
