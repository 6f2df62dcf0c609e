"""Reading a meter: the request plan, decoding, and real Modbus TCP against the simulator.

No Modbus mocks: the server is pymodbus's, running the PAC3100 simulator, and
`mbpoll` (an independent C client, libmodbus) cross-checks what it serves.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, child_env, rtu_config, toml_table, write_config
from pymodbus.client import ModbusTcpClient
from pymodbus.constants import ExcCodes

from edgelog import config
from edgelog.errors import MeterBadAnswer, MeterError, MeterExceptionResponse, MeterTimeout
from edgelog.meter import Meter, ReadRequest, close_meters, decode, open_meters, plan_requests
from edgelog.profiles import PAC3100, REGISTER_WIDTH, Register
from edgelog.simulate import Pac3100Simulator, SimulatorThread

NAMES = [r.name for r in PAC3100.registers]


def tcp_meter_config(port: int, registers: Sequence[dict[str, Any]] = (), **extra: Any) -> config.MeterConfig:
    """A meter config through the real parser, as a [[meters]] table would give it."""
    meter = {"name": "pac1", "transport": "tcp", "host": "127.0.0.1", "port": port, "timeout_s": 0.3}
    meter.update(extra)
    if registers:
        meter["registers"] = list(registers)
    return config.parse({"site": "test", "mariadb": {"user": "u"}, "meters": [meter]}).meters[0]


_OPENED: list[Meter] = []


def tcp_meter(port: int, registers: Sequence[dict[str, Any]] = (), **extra: Any) -> Meter:
    (meter,) = open_meters([tcp_meter_config(port, registers, **extra)])
    _OPENED.append(meter)
    return meter


@pytest.fixture(autouse=True)
def _close_meters() -> Iterator[None]:
    yield
    close_meters(_OPENED)
    _OPENED.clear()


@pytest.fixture
def meter(simulator: SimulatorThread) -> Meter:
    return tcp_meter(simulator.port)


# -- plan_requests ---------------------------------------------------------------------


def test_pac3100_is_one_request_for_all_twenty_values() -> None:
    (request,) = plan_requests(PAC3100.registers, PAC3100.bridge_gaps, PAC3100.max_gap)
    assert (request.function, request.address, request.count) == ("holding", 1, 40)
    assert request.registers == PAC3100.registers


def test_a_gap_splits_the_request_unless_bridging_is_allowed_and_the_gap_small_enough() -> None:
    regs = [Register("a", 10), Register("b", 12), Register("c", 17, type="uint16")]  # gap of 3 at 14..16
    split = plan_requests(regs)
    assert [(r.address, r.count, [x.name for x in r.registers]) for r in split] == [
        (10, 4, ["a", "b"]),
        (17, 1, ["c"]),
    ]
    assert plan_requests(regs, bridge_gaps=False, max_gap=10) == split  # max_gap alone does nothing
    assert plan_requests(regs, bridge_gaps=True, max_gap=2) == split  # gap too big
    (bridged,) = plan_requests(regs, bridge_gaps=True, max_gap=3)
    assert (bridged.address, bridged.count) == (10, 8)
    assert [r.name for r in bridged.registers] == ["a", "b", "c"]


def test_holding_and_input_registers_are_never_merged() -> None:
    regs = [
        Register("h1", 0, function="holding"),
        Register("i1", 2, function="input"),  # contiguous with h1, but another function
        Register("h2", 2, function="holding"),
        Register("i2", 0, function="input"),
    ]
    plan = plan_requests(regs, bridge_gaps=True, max_gap=125)
    assert [(r.function, r.address, r.count, [x.name for x in r.registers]) for r in plan] == [
        ("holding", 0, 4, ["h1", "h2"]),
        ("input", 0, 4, ["i2", "i1"]),
    ]


@pytest.mark.parametrize("type_", ["uint16", "float32", "float64"])
def test_no_request_asks_for_more_than_125_registers(type_: str) -> None:
    width = REGISTER_WIDTH[type_]
    regs = [Register(f"v{i}", 100 + i * width, type=type_) for i in range(300 // width)]  # 300 registers
    plan = plan_requests(regs)
    assert all(r.count <= 125 for r in plan)
    full = 125 // width * width  # the most whole values that fit in 125 registers
    assert [r.count for r in plan] == [full, full, 300 - 2 * full]
    assert [x for r in plan for x in r.registers] == regs


def check_plan(regs: list[Register], plan: list[ReadRequest], bridge_gaps: bool, max_gap: int) -> None:
    """Every invariant a plan must keep (see plan_requests' docstring)."""
    assert sorted((x for r in plan for x in r.registers), key=lambda x: x.name) == sorted(
        regs, key=lambda x: x.name
    ), "each register in exactly one request"
    for request in plan:
        members = request.registers
        assert request.count <= 125
        assert {x.function for x in members} == {request.function}
        # starts at the first value's first register and ends at the last value's end:
        # never inside a value
        assert request.address == members[0].address
        assert request.address + request.count == members[-1].end
        for a, b in itertools.pairwise(members):
            gap = b.address - a.end
            assert gap >= 0
            assert gap == 0 or (bridge_gaps and gap <= max_gap)
    # fewest requests: no two neighbours could have been one
    for a, b in itertools.pairwise(plan):
        if a.function == b.function:
            gap = b.address - (a.address + a.count)
            too_far = gap > 0 and not (bridge_gaps and gap <= max_gap)
            assert too_far or b.address + b.count - a.address > 125


@pytest.mark.parametrize("seed", range(40))
def test_random_register_maps_give_valid_minimal_plans(seed: int) -> None:
    rng = random.Random(seed)
    regs: list[Register] = []
    for function in ("holding", "input"):
        address = rng.randrange(0, 50)
        for i in range(rng.randrange(1, 80)):
            type_ = rng.choice(list(REGISTER_WIDTH))
            regs.append(Register(f"{function}_{i}", address, type=type_, function=function))  # type: ignore[arg-type]
            address += REGISTER_WIDTH[type_] + rng.choice([0, 0, 0, 1, 2, 5, 40])
    rng.shuffle(regs)
    bridge_gaps, max_gap = rng.choice([(False, 0), (True, 1), (True, 2), (True, 10)])
    check_plan(regs, plan_requests(regs, bridge_gaps, max_gap), bridge_gaps, max_gap)


# -- decode ----------------------------------------------------------------------------

FORMATS = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "int64": ">q",
    "uint64": ">Q",
    "float64": ">d",
}


def to_words(type_: str, value: float, word_order: str = "big") -> list[int]:
    """Encode with struct (independently of pymodbus): high word first, then maybe reversed."""
    raw = struct.pack(FORMATS[type_], value)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if word_order == "big" else words[::-1]


CASES = [
    ("int16", -12345),
    ("uint16", 65535),
    ("int32", -2_000_000_000),
    ("uint32", 4_000_000_000),
    ("float32", -1.5),
    ("int64", -(2**52) - 7),
    ("uint64", 2**53 - 1),
    ("float64", 123456.78901234),
]


@pytest.mark.parametrize("word_order", ["big", "little"])
def test_decode_every_type_in_both_word_orders(word_order: str) -> None:
    regs, words, address = [], [], 100
    for type_, value in CASES:
        regs.append(Register(type_, address, type=type_, word_order=word_order))  # type: ignore[arg-type]
        words += to_words(type_, value, word_order)
        address += REGISTER_WIDTH[type_]
    (request,) = plan_requests(regs)
    assert request.count == len(words) == 20
    assert decode(request, words) == {type_: float(value) for type_, value in CASES}


def test_word_order_matters_for_multi_register_values() -> None:
    words = to_words("float32", 230.5)
    big = ReadRequest("holding", 0, 2, (Register("v", 0),))
    little = ReadRequest("holding", 0, 2, (Register("v", 0, word_order="little"),))
    assert decode(big, words) == {"v": 230.5}
    assert decode(little, words[::-1]) == {"v": 230.5}
    assert decode(little, words) != {"v": 230.5}


def test_readme_worked_example_two_registers_high_word_first_are_127_21_volts() -> None:
    (request,) = plan_requests([PAC3100.registers[0]])
    assert (request.address, request.count) == (1, 2)
    assert decode(request, [0x42FE, 0x6B85])["tensao_l1_n"] == pytest.approx(127.21, abs=0.005)


def test_decode_applies_the_scale() -> None:
    regs = (
        Register("tensao", 0, type="uint16", scale=0.1),
        Register("energia", 1, type="int32", scale=0.001),
        Register("potencia", 3, type="int16", scale=-2.0),
    )
    words = to_words("uint16", 2275) + to_words("int32", -1_234_567) + to_words("int16", 300)
    values = decode(ReadRequest("holding", 0, 4, regs), words)
    assert values["tensao"] == pytest.approx(227.5, abs=1e-9)
    assert values["energia"] == pytest.approx(-1234.567, abs=1e-9)
    assert values["potencia"] == -600.0


@pytest.mark.parametrize("type_", ["float32", "float64"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_become_none(type_: str, bad: float) -> None:
    width = REGISTER_WIDTH[type_]
    regs = (Register("bad", 0, type=type_), Register("good", width, type=type_))  # type: ignore[arg-type]
    values = decode(ReadRequest("holding", 0, 2 * width, regs), to_words(type_, bad) + to_words(type_, 60.0))
    assert values == {"bad": None, "good": 60.0}


def test_a_finite_value_scaled_to_infinity_becomes_none() -> None:
    reg = Register("huge", 0, type="float64", scale=1e300)
    assert decode(ReadRequest("holding", 0, 4, (reg,)), to_words("float64", 1e300)) == {"huge": None}


def test_an_answer_of_the_wrong_length_is_a_meter_error() -> None:
    request = plan_requests(PAC3100.registers)[0]
    with pytest.raises(MeterError, match=r"^bad answer: the holding read at 1 got 38 registers, expected 40"):
        decode(request, [0] * 38)


# -- against the simulator over TCP ----------------------------------------------------


def test_one_poll_is_one_request_and_returns_the_served_values(
    simulator: SimulatorThread, meter: Meter
) -> None:
    before = time.time()
    reading = meter.read()
    assert simulator.sim.requests == 1
    assert meter.bus.requests_sent == 1
    assert reading.meter == "pac1"
    assert before <= reading.measured_at <= time.time()
    assert list(reading.values) == NAMES
    assert reading.values == simulator.sim.served[-1]  # exact: float32 -> float is lossless

    second = meter.read()
    assert simulator.sim.requests == 2 and len(simulator.sim.served) == 2
    assert second.values == simulator.sim.served[-1]


def test_values_are_those_of_a_plausible_127_220_v_60_hz_plant(meter: Meter) -> None:
    v = meter.read().values
    for k in (1, 2, 3):
        assert 110 < v[f"tensao_l{k}_n"] < 140  # type: ignore[operator]
        assert v[f"potencia_aparente_l{k}"] == pytest.approx(
            math.hypot(v[f"potencia_ativa_l{k}"], v[f"potencia_reativa_l{k}"]),  # type: ignore[arg-type]
            rel=1e-5,
        )
    assert 190 < v["tensao_l1_l2"] < 240  # type: ignore[operator]
    assert 59 < v["frequencia"] < 61  # type: ignore[operator]


@dataclass
class RecordingSimulator(Pac3100Simulator):
    """The same simulator, also noting the function code of every request it handles."""

    function_codes: list[int] = field(default_factory=list)

    async def _action(self, function_code: int, *args: Any) -> ExcCodes | None:
        self.function_codes.append(function_code)
        return await super()._action(function_code, *args)


@pytest.fixture
def recording_simulator() -> Iterator[SimulatorThread]:
    thread = SimulatorThread(RecordingSimulator()).start()
    yield thread
    thread.stop()


def test_input_registers_are_read_with_function_4(recording_simulator: SimulatorThread) -> None:
    sim = recording_simulator.sim
    assert isinstance(sim, RecordingSimulator)
    holding = tcp_meter(recording_simulator.port)
    as_input = tcp_meter(recording_simulator.port, [{"name": n, "function": "input"} for n in NAMES])
    assert [(r.function, r.address, r.count) for r in as_input.plan] == [("input", 1, 40)]

    assert holding.read().values == sim.served[-1]
    reading = as_input.read()
    assert sim.function_codes == [0x03, 0x04]
    assert reading.values == sim.served[-1]


def test_the_simulator_refuses_a_read_starting_inside_a_value(simulator: SimulatorThread) -> None:
    client = ModbusTcpClient("127.0.0.1", port=simulator.port, timeout=1)
    try:
        assert client.connect()
        misaligned = client.read_holding_registers(2, count=2, device_id=126)
        assert misaligned.isError() and misaligned.exception_code == ExcCodes.ILLEGAL_ADDRESS == 2
        ends_inside = client.read_holding_registers(1, count=3, device_id=126)
        assert ends_inside.isError() and ends_inside.exception_code == 2
        aligned = client.read_holding_registers(3, count=2, device_id=126)
        assert not aligned.isError()
        assert (
            client.convert_from_registers(aligned.registers, client.DATATYPE.FLOAT32)
            == (simulator.sim.served[-1]["tensao_l2_n"])
        )
    finally:
        client.close()
    assert simulator.sim.requests == 3 and len(simulator.sim.served) == 1


def test_a_register_override_inside_a_value_gets_an_exception_response(simulator: SimulatorThread) -> None:
    # the second word of frequencia (39-40) as if it were a value of its own
    m = tcp_meter(simulator.port, [{"name": "frequencia", "address": 40, "type": "uint16"}])
    assert [(r.address, r.count) for r in m.plan] == [(1, 38), (40, 1)]
    with pytest.raises(
        MeterExceptionResponse,
        match=r"^exception 02 illegal data address: unit 126 on .* refused function 0x03 at 40 \(count 1\)$",
    ):
        m.read()
    assert simulator.sim.requests == 2


def test_an_exception_code_from_the_meter_is_a_meter_exception_response(
    simulator: SimulatorThread, meter: Meter
) -> None:
    simulator.sim.exception_code = ExcCodes.DEVICE_BUSY
    with pytest.raises(
        MeterExceptionResponse,
        match=r"^exception 06 device busy: unit 126 .* function 0x03 at 1 \(count 40\)",
    ):
        meter.read()
    simulator.sim.exception_code = None
    assert meter.read().values == simulator.sim.served[-1]
    assert simulator.sim.requests == 2


def test_a_slow_meter_is_a_timeout_and_the_next_poll_works(simulator: SimulatorThread, meter: Meter) -> None:
    sim = simulator.sim
    sim.delay_s = 0.8  # timeout_s is 0.3
    started = time.monotonic()
    with pytest.raises(
        MeterTimeout, match=r"^timeout: no answer from unit 126 on 127\.0\.0\.1:\d+ within 0.3 s$"
    ):
        meter.read()
    assert 0.25 < time.monotonic() - started < 0.75
    sim.delay_s = 0.0
    deadline = time.monotonic() + 5
    while not sim.served and time.monotonic() < deadline:  # the late answer goes out meanwhile
        time.sleep(0.02)
    assert len(sim.served) == 1
    reading = meter.read()  # gets its own answer, not the late one
    assert len(sim.served) == 2 and sim.requests == 2
    assert reading.values == sim.served[-1]


def test_nan_from_the_meter_becomes_none(simulator: SimulatorThread, meter: Meter) -> None:
    simulator.sim.override = {"frequencia": math.nan, "corrente_neutro": -math.inf}
    values = meter.read().values
    assert values["frequencia"] is None and values["corrente_neutro"] is None
    served = simulator.sim.served[-1]
    assert math.isnan(served["frequencia"])
    assert {k: v for k, v in values.items() if v is not None} == {
        k: v for k, v in served.items() if k not in ("frequencia", "corrente_neutro")
    }


def test_the_meter_reconnects_by_itself_when_the_server_comes_back() -> None:
    first = SimulatorThread(Pac3100Simulator()).start()
    port = first.port
    m = tcp_meter(port)
    second: SimulatorThread | None = None
    try:
        assert m.read().values == first.sim.served[-1]
        first.stop()
        for _ in range(2):  # the open connection is gone, then nobody listens
            with pytest.raises(MeterTimeout, match=f"127.0.0.1:{port}"):
                m.read()
        second = SimulatorThread(Pac3100Simulator(), port=port).start()
        assert second.port == port
        reading = m.read()  # the same Meter, no reconnect call
        assert reading.values == second.sim.served[-1]
        assert second.sim.requests == 1
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_meters_on_one_gateway_share_one_bus(simulator: SimulatorThread) -> None:
    base = tcp_meter_config(simulator.port)
    other_port = tcp_meter_config(simulator.port + 1 if simulator.port < 65535 else 1)
    meters = open_meters([base, replace(base, name="pac2"), other_port])
    _OPENED.extend(meters)
    assert meters[0].bus is meters[1].bus
    assert meters[2].bus is not meters[0].bus
    assert meters[0].read().values == simulator.sim.served[-1]
    assert meters[1].read().values == simulator.sim.served[-1]
    assert meters[0].bus.requests_sent == 2


# -- cross-check with mbpoll, an independent client ------------------------------------

MBPOLL = shutil.which("mbpoll")
MBPOLL_LINE = re.compile(r"^\[(\d+)\]:\s+(\S+)\s*$")


def mbpoll(port: int, *extra: str) -> dict[int, float]:
    """`mbpoll -t 4:float -r 2 -c 20`: twenty floats from reference 2 (= PDU address 1)."""
    assert MBPOLL is not None
    cmd = [MBPOLL, "-m", "tcp", "-a", "126", "-p", str(port), "-t", "4:float", "-r", "2", "-c", "20"]
    result = subprocess.run([*cmd, "-1", *extra, "127.0.0.1"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stdout + result.stderr
    values = {}
    for line in result.stdout.splitlines():
        if match := MBPOLL_LINE.match(line):
            values[int(match[1])] = float(match[2])
    assert list(values) == list(range(2, 42, 2)), result.stdout
    return values


@pytest.mark.skipif(MBPOLL is None, reason="mbpoll is not installed")
def test_mbpoll_reads_the_same_values_with_big_endian_word_order(simulator: SimulatorThread) -> None:
    # -B: high word first, as the PAC3100 sends it; mbpoll's default is the other way
    values = mbpoll(simulator.port, "-B")
    assert simulator.sim.requests == 1  # twenty floats in one request
    served = simulator.sim.served[-1]
    by_name = {name: values[2 + 2 * i] for i, name in enumerate(NAMES)}
    for name in NAMES:
        assert by_name[name] == pytest.approx(served[name], rel=1e-5), name  # mbpoll prints 6 digits
    for k in (1, 2, 3):
        assert 110 < by_name[f"tensao_l{k}_n"] < 140
        assert 0 < by_name[f"corrente_l{k}"] < 100
    assert 59 < by_name["frequencia"] < 61


@pytest.mark.skipif(MBPOLL is None, reason="mbpoll is not installed")
def test_mbpoll_without_B_swaps_the_words(simulator: SimulatorThread) -> None:
    """The command without -B (as first documented) prints nonsense: each float word-swapped."""
    values = mbpoll(simulator.port)
    served = simulator.sim.served[-1]
    for i, name in enumerate(NAMES):
        words = to_words("float32", served[name])
        swapped = struct.unpack(">f", struct.pack(">HH", words[1], words[0]))[0]
        got = values[2 + 2 * i]
        if math.isnan(swapped):
            assert math.isnan(got), name
        else:
            assert got == pytest.approx(swapped, rel=1e-5), name
    assert not 110 < values[2] < 140  # tensao_l1_n is not plausible that way


# -- a meter that answers wrongly: a raw Modbus TCP server, no library in between ------


class RawTcpMeter:
    """A Modbus TCP server written out by hand, so it can answer what no correct server
    would: another function code, another unit, a wrong byte count, an exception code.
    `answer(tid, unit, fc, address, count)` -> the bytes sent back (or b"" for none)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.mode = "ok"
        self.values = [0x4300 + i for i in range(125)]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def answer(self, tid: int, unit: int, fc: int, count: int) -> bytes:
        data = b"".join(v.to_bytes(2, "big") for v in self.values[:count])
        mode = self.mode
        if mode.startswith("exception:"):
            pdu = bytes([fc | 0x80, int(mode.split(":")[1], 16)])
        elif mode == "fc":
            pdu = bytes([0x04 if fc == 0x03 else 0x03, len(data)]) + data
        elif mode == "short":  # byte count and data agree, but one register short
            pdu = bytes([fc, len(data) - 2]) + data[:-2]
        elif mode == "odd":
            pdu = bytes([fc, len(data) + 1]) + data + b"\x00"
        elif mode == "lying":  # the byte count promises more than follows
            pdu = bytes([fc, len(data)]) + data[:-2]
        else:
            pdu = bytes([fc, len(data)]) + data
        if mode == "unit":
            unit += 1
        if mode == "tid":
            tid += 1
        return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.1)
                while not self._stop.is_set():
                    try:
                        request = conn.recv(12)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if len(request) < 12:
                        break
                    tid, _, _, unit, fc, _address, count = struct.unpack(">HHHBBHH", request)
                    conn.sendall(self.answer(tid, unit, fc, count))

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.listener.close()


@pytest.fixture
def raw_meter() -> Iterator[RawTcpMeter]:
    server = RawTcpMeter()
    yield server
    server.close()


WHAT = r"function 0x03 at 1 \(count 40\)"


@pytest.mark.parametrize(
    ("mode", "kind", "message"),
    [
        (
            "fc",
            MeterBadAnswer,
            rf"^bad answer: unit 126 answered function 0x04 to {WHAT}, on 127\.0\.0\.1:\d+$",
        ),
        ("short", MeterBadAnswer, rf"^bad answer: unit 126: byte count 78 answering {WHAT} \(not 80\)"),
        ("odd", MeterBadAnswer, rf"^bad answer: unit 126: byte count 81 answering {WHAT} \(not 80\)"),
        (
            "lying",
            MeterBadAnswer,
            rf"^bad answer: unit 126: byte count 80 but 78 bytes follow, answering {WHAT}",
        ),
        (
            "unit",
            MeterBadAnswer,
            r"^bad answer: \d+ bytes on 127\.0\.0\.1:\d+ but no valid answer from unit 126 ",
        ),
        (
            "tid",
            MeterBadAnswer,
            r"^bad answer: \d+ bytes on 127\.0\.0\.1:\d+ but no valid answer from unit 126 ",
        ),
        (
            "exception:01",
            MeterExceptionResponse,
            rf"^exception 01 illegal function: unit 126 on .* refused {WHAT}$",
        ),
        ("exception:02", MeterExceptionResponse, r"^exception 02 illegal data address: "),
        ("exception:03", MeterExceptionResponse, r"^exception 03 illegal data value: "),
        ("exception:04", MeterExceptionResponse, r"^exception 04 device failure: "),
        ("exception:0A", MeterExceptionResponse, r"^exception 0A gateway path unavailable: "),
        ("exception:0B", MeterExceptionResponse, r"^exception 0B gateway target failed to respond: "),
        ("exception:0C", MeterExceptionResponse, r"^exception 0C not defined by Modbus: "),
    ],
)
def test_an_answer_that_does_not_match_the_request_is_a_failed_poll_with_its_reason(
    raw_meter: RawTcpMeter, mode: str, kind: type[MeterError], message: str
) -> None:
    m = tcp_meter(raw_meter.port)
    assert m.read().values["tensao_l1_n"] is not None  # a correct answer first
    raw_meter.mode = mode
    with pytest.raises(kind, match=message) as info:
        m.read()
    text = str(info.value)
    assert "\n" not in text and "continue with next request" not in text and "ERROR" not in text
    raw_meter.mode = "ok"
    assert m.read().values["tensao_l1_n"] is not None  # and the next poll works again


def test_a_timeout_message_carries_no_library_phrase(simulator: SimulatorThread, meter: Meter) -> None:
    simulator.sim.delay_s = 0.8  # timeout_s 0.3
    with pytest.raises(MeterTimeout) as info:
        meter.read()
    text = str(info.value)
    assert text == f"timeout: no answer from unit 126 on 127.0.0.1:{simulator.port} within 0.3 s"
    for phrase in ("continue with next request", "No response received", "retries", "ERROR"):
        assert phrase not in text


def test_a_refused_connection_is_no_connection_not_a_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = tcp_meter(port)
    started = time.monotonic()
    with pytest.raises(MeterTimeout, match=rf"^no connection: cannot connect to 127\.0\.0\.1:{port}"):
        m.read()
    assert time.monotonic() - started < 0.3  # refused at once, no timeout waited


def test_retries_are_counted_in_the_timeout_message(simulator: SimulatorThread) -> None:
    m = tcp_meter(simulator.port, retries=1, timeout_s=0.2)
    simulator.sim.delay_s = 1.0
    started = time.monotonic()
    with pytest.raises(MeterTimeout, match=r"within 0.2 s \(2 tries\)$"):
        m.read()
    assert time.monotonic() - started >= 0.35  # two tries of 0.2 s


def usb_serial_node(path: Path) -> Path:
    """A real device node of the USB serial major (188): no driver behind it on this machine."""
    os.mknod(path, 0o660 | stat.S_IFCHR, os.makedev(188, 0))
    return path


@pytest.mark.parametrize(
    ("device", "reason"),
    [
        ("{tmp}/ttyNOPE0", r"{tmp}/ttyNOPE0 does not exist \(USB adapter unplugged\?\)"),
        ("{tmp}", r"cannot use {tmp}: Is a directory"),
        ("/dev/null", r"cannot use /dev/null as a serial line \(.*not a serial device\)"),
        (
            "{tmp}/ttyUSB0",
            r"{tmp}/ttyUSB0: no device behind it \(USB adapter unplugged, or its driver not loaded\)",
        ),
    ],
)
def test_a_serial_device_that_cannot_be_used_is_named_with_why(
    tmp_path: Path, device: str, reason: str
) -> None:
    """pymodbus only says it could not connect; the message says why, from the device itself."""
    device = device.format(tmp=tmp_path)
    if device.endswith("ttyUSB0"):
        usb_serial_node(Path(device))
    (meter,) = open_meters([rtu_config(device)])
    _OPENED.append(meter)
    with pytest.raises(
        MeterTimeout, match="^no connection: " + reason.format(tmp=re.escape(str(tmp_path))) + "$"
    ):
        meter.read()


DEVICES_CGROUP = Path("/sys/fs/cgroup/devices")


@pytest.mark.skipif(
    os.geteuid() != 0 or not DEVICES_CGROUP.is_dir(), reason="needs root and cgroup v1 devices"
)
def test_a_serial_device_the_device_policy_refuses_is_named_as_such(tmp_path: Path) -> None:
    """The unit's DevicePolicy=closed + DeviceAllow=char-ttyUSB allows the ttyUSB major only if
    its driver was loaded when the service started; otherwise the kernel refuses the open with
    EPERM. Here a devices cgroup that denies the ttyUSB major does the same to a real
    `edgelog poll`, whose answer names the device policy and the cure."""
    node = usb_serial_node(tmp_path / "ttyUSB0")
    meters = toml_table("[[meters]]", {"name": "pac1", "transport": "rtu", "device": node})
    cfg = write_config(tmp_path, toml_table("[mariadb]", {"user": "u"}), meters)
    group = DEVICES_CGROUP / f"edgelog-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "devices.deny").write_text("c 188:* rwm")
        into_group = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
        poll = subprocess.run(
            [
                "sh",
                "-c",
                into_group,
                str(group),
                sys.executable,
                "-m",
                "edgelog",
                "--config",
                str(cfg),
                "poll",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
        )
    finally:
        group.rmdir()
    assert poll.returncode == 1, poll
    assert f"no connection: {node}: not permitted by the service's device policy" in poll.stdout, poll
    assert "systemctl restart edgelog" in poll.stdout, poll
    # the groups it says the unit allows are the unit's own
    unit = (ROOT / "systemd/edgelog.service").read_text()
    allowed = re.findall(r"^DeviceAllow=char-(\S+) rw$", unit, flags=re.M)
    said = re.search(r"edgelog\.service allows ([^;]+);", poll.stdout)
    assert said and sorted(said.group(1).split(", ")) == sorted(allowed), (allowed, poll.stdout)
