"""Reading a meter over Modbus: plan the fewest requests, decode values, reconnect by itself.

`meter` knows nothing of the buffer: `Meter.read()` returns a `Reading` or raises
a `MeterError`; the service decides what to store.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from .config import MeterConfig, bus_budgets
from .errors import MeterBadAnswer, MeterError, MeterExceptionResponse, MeterTimeout
from .profiles import FUNCTION_CODE, MAX_REGISTERS_PER_READ, Register

log = logging.getLogger(__name__)

_DATATYPE = ModbusTcpClient.DATATYPE
_DATATYPES = {
    "int16": _DATATYPE.INT16,
    "uint16": _DATATYPE.UINT16,
    "int32": _DATATYPE.INT32,
    "uint32": _DATATYPE.UINT32,
    "float32": _DATATYPE.FLOAT32,
    "int64": _DATATYPE.INT64,
    "uint64": _DATATYPE.UINT64,
    "float64": _DATATYPE.FLOAT64,
}


@dataclass(frozen=True)
class ReadRequest:
    """One Modbus read: a function, a start address, a count, and the registers it covers."""

    function: str
    address: int
    count: int
    registers: tuple[Register, ...]


def plan_requests(
    registers: Iterable[Register],
    bridge_gaps: bool = False,
    max_gap: int = 0,
    max_count: int = MAX_REGISTERS_PER_READ,
) -> list[ReadRequest]:
    """Coalesce registers into the fewest reads: contiguous values share a request.

    A request never starts or ends inside a value. It spans a gap of unlisted
    addresses only if `bridge_gaps` is set and the gap is at most `max_gap`
    registers, since some meters refuse reads over undocumented addresses.
    """
    ordered = sorted(registers, key=lambda r: (r.function, r.address))
    requests: list[ReadRequest] = []
    group: list[Register] = []

    def flush() -> None:
        if group:
            start = group[0].address
            requests.append(ReadRequest(group[0].function, start, group[-1].end - start, tuple(group)))
            group.clear()

    for reg in ordered:
        if group:
            last = group[-1]
            gap = reg.address - last.end
            joinable = reg.function == last.function and (gap == 0 or (bridge_gaps and 0 < gap <= max_gap))
            if not joinable or reg.end - group[0].address > max_count:
                flush()
        group.append(reg)
    flush()
    return requests


def decode(request: ReadRequest, words: Sequence[int]) -> dict[str, float | None]:
    """Turn the words of one response into scaled values. NaN and ±inf become None."""
    if len(words) != request.count:
        raise MeterBadAnswer(
            f"bad answer: the {request.function} read at {request.address} got {len(words)} "
            f"registers, expected {request.count}"
        )
    values: dict[str, float | None] = {}
    for reg in request.registers:
        offset = reg.address - request.address
        raw = ModbusTcpClient.convert_from_registers(
            list(words[offset : offset + reg.width]),
            _DATATYPES[reg.type],
            word_order=reg.word_order,
        )
        value = float(raw) * reg.scale  # type: ignore[arg-type]
        values[reg.name] = value if math.isfinite(value) else None
    return values


#: Modbus exception codes (Modbus application protocol v1.1b3, 7), named as in the spec.
EXCEPTION_NAMES = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "device failure",
    0x05: "acknowledge",
    0x06: "device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target failed to respond",
}


def exception_text(code: int) -> str:
    """`exception 02 illegal data address`: the code as the spec writes it, and its name."""
    return f"exception {code:02X} {EXCEPTION_NAMES.get(code, 'not defined by Modbus')}"


class _HoldingAnswer(ModbusPDU):
    """The answer to a register read (FC 0x03), decoded without trusting its byte count:
    the count and the bytes that came are kept, and `Bus.read` checks them. Registered
    with the client (pymodbus' documented `register()` for custom responses) in place
    of pymodbus' own class, which ignores an odd or too small byte count."""

    function_code = 0x03
    rtu_byte_count_pos = 2  # the RTU framer finds the frame's length there
    byte_count = -1
    payload_bytes = 0

    def decode(self, data: bytes) -> None:
        self.byte_count = data[0] if data else -1
        self.payload_bytes = max(len(data) - 1, 0)
        usable = min(max(self.byte_count, 0), self.payload_bytes)
        self.registers = [int.from_bytes(data[1 + i : 3 + i], "big") for i in range(0, usable - 1, 2)]


class _InputAnswer(_HoldingAnswer):
    """The answer to an input register read (FC 0x04)."""

    function_code = 0x04


def serial_device_problem(device: str) -> str:
    """Why the serial client could not open `device`, found by opening it once more here
    (pymodbus keeps the reason to itself): the errno, in an operator's words."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return f"{device} does not exist (USB adapter unplugged?)"
        if exc.errno == errno.EPERM:  # a device cgroup: edgelog.service's DevicePolicy/DeviceAllow
            return (
                f"{device}: not permitted by the service's device policy (DeviceAllow= of "
                "edgelog.service allows ttyUSB, ttyACM, ttyAMA, ttyS; a driver loaded after the "
                "service started is allowed once it restarts: systemctl restart edgelog)"
            )
        if exc.errno in (errno.ENXIO, errno.ENODEV):  # a device node with no device behind it
            return f"{device}: no device behind it (USB adapter unplugged, or its driver not loaded)"
        if exc.errno == errno.EACCES:
            return f"{device}: permission denied (is the service user in the group dialout?)"
        if exc.errno == errno.EBUSY:
            return f"{device}: busy (another program holds it)"
        return f"cannot use {device}: {exc.strerror or exc}"
    os.close(fd)
    return f"cannot use {device} as a serial line (unplugged for a moment, or not a serial device)"


class Bus:
    """One connection (an RS485 line or a TCP gateway) shared by the meters on it.

    Requests on one bus are serialised by a lock. After a failed request the
    connection is closed, so the next request opens it again: that is how the
    client reconnects after the meter, the USB adapter or the link comes back.

    Every answer is checked against its request (function code, unit, byte count)
    and every failure is one `MeterError` whose message starts with its cause and
    carries nothing of the library's own wording.
    """

    def __init__(self, meter: MeterConfig):
        self.lock = threading.Lock()
        self.requests_sent = 0
        self.timeout_s, self.retries = meter.timeout_s, meter.retries
        self.label = meter.bus_label()
        self.device = meter.device if meter.transport == "rtu" else None
        self._heard = 0  # bytes received while waiting for the current answer
        if meter.transport == "rtu":
            self.client: ModbusSerialClient | ModbusTcpClient = ModbusSerialClient(
                port=meter.device or "",
                framer=FramerType.RTU,
                baudrate=meter.baudrate,
                bytesize=meter.bytesize,
                parity=meter.parity,
                stopbits=meter.stopbits,
                timeout=meter.timeout_s,
                retries=meter.retries,
                trace_packet=self._trace,
            )
        else:
            self.client = ModbusTcpClient(
                meter.host or "",
                port=meter.port,
                timeout=meter.timeout_s,
                retries=meter.retries,
                trace_packet=self._trace,
            )
        self.client.register(_HoldingAnswer)
        self.client.register(_InputAnswer)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus' packet hook: note whether anything came back at all."""
        if not sending:
            self._heard = max(self._heard, len(data))
        return data

    def read(self, request: ReadRequest, unit_id: int) -> list[int]:
        """Send one read request and return its registers, or raise a MeterError."""
        read = (
            self.client.read_holding_registers
            if request.function == "holding"
            else self.client.read_input_registers
        )
        with self.lock:
            self.requests_sent += 1
            self._heard = 0
            try:
                response = read(request.address, count=request.count, device_id=unit_id)
            except ConnectionException:
                self.client.close()
                raise MeterTimeout(f"no connection: {self._unreachable()}") from None
            except ModbusIOException:
                self.client.close()
                raise self._nothing_valid(unit_id) from None
            except OSError as exc:  # the serial device vanished, a socket error
                self.client.close()
                raise MeterTimeout(f"no connection: {self.label}: {exc.strerror or exc}") from None
            except Exception as exc:  # ModbusException, or a library bug on a strange frame
                self.client.close()
                raise MeterBadAnswer(
                    f"bad answer: unit {unit_id} on {self.label}: an answer the Modbus library "
                    f"could not decode ({type(exc).__name__})"
                ) from None
        return self._check(response, request, unit_id)

    def _unreachable(self) -> str:
        if self.device is None:
            return (
                f"cannot connect to {self.label}, or the connection broke (refused, host down or unreachable)"
            )
        if "://" in self.device:
            return f"cannot use {self.label} (unplugged, busy, or no permission)"
        return serial_device_problem(self.device)

    def _nothing_valid(self, unit_id: int) -> MeterError:
        tries = f" ({1 + self.retries} tries)" if self.retries else ""
        if self._heard:
            return MeterBadAnswer(
                f"bad answer: {self._heard} bytes on {self.label} but no valid answer from unit "
                f"{unit_id} within {self.timeout_s:g} s{tries} (a CRC error, line noise, or "
                "another unit answering)"
            )
        return MeterTimeout(
            f"timeout: no answer from unit {unit_id} on {self.label} within {self.timeout_s:g} s{tries}"
        )

    def _check(self, response: ModbusPDU, request: ReadRequest, unit_id: int) -> list[int]:
        """The answer is the one asked for, or a MeterError saying how it is not."""
        fc = FUNCTION_CODE[request.function]
        what = f"function 0x{fc:02x} at {request.address} (count {request.count})"
        answered = response.function_code & 0x7F
        if response.dev_id != unit_id:
            problem = f"an answer from unit {response.dev_id} to a request for unit {unit_id}"
        elif answered != fc:
            problem = f"unit {unit_id} answered function 0x{answered:02x} to {what}"
        elif response.isError():
            raise MeterExceptionResponse(
                f"{exception_text(response.exception_code)}: unit {unit_id} on {self.label} refused {what}"
            )
        elif not isinstance(response, _HoldingAnswer):
            problem = f"unit {unit_id} answered {what} with a {type(response).__name__}"
        elif response.byte_count != response.payload_bytes:
            problem = (
                f"unit {unit_id}: byte count {response.byte_count} but {response.payload_bytes} "
                f"bytes follow, answering {what}"
            )
        elif response.byte_count != 2 * request.count:
            expected = 2 * request.count
            problem = f"unit {unit_id}: byte count {response.byte_count} answering {what} (not {expected})"
        else:
            return list(response.registers)
        with self.lock:
            self.client.close()  # whatever answers this way: start the next poll afresh
        raise MeterBadAnswer(f"bad answer: {problem}, on {self.label}")

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class Reading:
    """The decoded values of one poll and when it was answered (wall clock, UTC seconds)."""

    meter: str
    measured_at: float
    values: dict[str, float | None]


class Meter:
    """A meter on a bus: its register plan, read in as few requests as the profile allows."""

    def __init__(self, config: MeterConfig, bus: Bus):
        self.config = config
        self.bus = bus
        self.plan = plan_requests(config.registers, config.bridge_gaps, config.max_gap)

    @property
    def name(self) -> str:
        return self.config.name

    def read(self) -> Reading:
        values: dict[str, float | None] = {}
        for request in self.plan:
            values.update(decode(request, self.bus.read(request, self.config.unit_id)))
        return Reading(self.config.name, time.time(), values)


def open_meters(configs: Iterable[MeterConfig]) -> list[Meter]:
    """Build meters (in the order given), giving meters on the same line or gateway one
    shared Bus. A shared bus waits as long as the most patient of its meters (longest
    timeout_s, most retries): one client serves them all (config.BusBudget)."""
    configs = list(configs)
    buses: dict[int, Bus] = {}
    for budget in bus_budgets(configs):
        bus = Bus(replace(budget.meters[0], timeout_s=budget.timeout_s, retries=budget.retries))
        buses.update((id(cfg), bus) for cfg in budget.meters)
    return [Meter(cfg, buses[id(cfg)]) for cfg in configs]


def close_meters(meters: Iterable[Meter]) -> None:
    for bus in {id(m.bus): m.bus for m in meters}.values():
        bus.close()
