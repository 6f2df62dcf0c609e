"""Reading a meter over Modbus: plan the fewest requests, decode values, reconnect by itself.

`meter` knows nothing of the buffer: `Meter.read()` returns a `Reading` or raises
a `MeterError`; the service decides what to store.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from .config import MeterConfig
from .errors import MeterError, MeterExceptionResponse, MeterTimeout
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
        raise MeterError(
            f"answer to {request.function} read at {request.address} has {len(words)} "
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


class Bus:
    """One connection (an RS485 line or a TCP gateway) shared by the meters on it.

    Requests on one bus are serialised by a lock. After a failed request the
    connection is closed, so the next request opens it again: that is how the
    client reconnects after the meter, the USB adapter or the link comes back.
    """

    def __init__(self, meter: MeterConfig):
        self.lock = threading.Lock()
        self.requests_sent = 0
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
            )
            self.label = f"{meter.device} ({meter.baudrate} {meter.bytesize}{meter.parity}{meter.stopbits})"
        else:
            self.client = ModbusTcpClient(
                meter.host or "", port=meter.port, timeout=meter.timeout_s, retries=meter.retries
            )
            self.label = f"{meter.host}:{meter.port}"

    def read(self, request: ReadRequest, unit_id: int) -> list[int]:
        """Send one read request and return its registers, or raise a MeterError."""
        read = (
            self.client.read_holding_registers
            if request.function == "holding"
            else self.client.read_input_registers
        )
        with self.lock:
            self.requests_sent += 1
            try:
                response = read(request.address, count=request.count, device_id=unit_id)
            except (ConnectionException, ModbusIOException) as exc:
                self.client.close()
                raise MeterTimeout(f"no answer from unit {unit_id} on {self.label}: {_short(exc)}") from None
            except ModbusException as exc:
                self.client.close()
                raise MeterError(f"bad answer from unit {unit_id} on {self.label}: {_short(exc)}") from None
            except OSError as exc:  # the serial device vanished, a socket error
                self.client.close()
                raise MeterTimeout(f"{self.label}: {exc.strerror or exc}") from None
        if response.isError():
            code = getattr(response, "exception_code", "?")
            raise MeterExceptionResponse(
                f"unit {unit_id} answered exception {code} to function "
                f"0x{FUNCTION_CODE[request.function]:02x} at {request.address} (count {request.count})"
            )
        return list(response.registers)

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
    """Build meters, giving meters on the same line or gateway one shared Bus.
    A shared bus waits as long as the most patient of its meters (longest timeout_s,
    most retries): one client serves them all."""
    configs = list(configs)
    buses: dict[tuple[object, ...], Bus] = {}
    meters = []
    for cfg in configs:
        key = cfg.bus_key()
        if key not in buses:
            same = [c for c in configs if c.bus_key() == key]
            buses[key] = Bus(
                replace(cfg, timeout_s=max(c.timeout_s for c in same), retries=max(c.retries for c in same))
            )
        bus = buses[key]
        meters.append(Meter(cfg, bus))
    return meters


def close_meters(meters: Iterable[Meter]) -> None:
    for bus in {id(m.bus): m.bus for m in meters}.values():
        bus.close()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
