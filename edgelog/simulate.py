"""A SENTRON PAC3100 simulator: a real pymodbus server serving the pac3100 profile.

The values follow a small isolated 3-phase 127/220 V, 60 Hz plant whose load
follows a village's day (low at night, a bump at breakfast, the evening peak);
its energy counters integrate that load. Like the real meter it refuses a read
that starts or ends inside a value or covers an undocumented address, and
answers FC 0x03 and 0x04 alike. The values of one poll are one snapshot, taken
when a request for the first register arrives (a meter refreshes its registers
once per measuring cycle, not between the requests of one poll). Tests use its knobs to inject faults: a slow
answer (`delay_s`), an exception response (`exception_code`), forced values
(`override`, e.g. NaN), and read `requests` / `served` to see what went out.
"""

from __future__ import annotations

import asyncio
import cmath
import functools
import hashlib
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from pymodbus import FramerType
from pymodbus.client import ModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from .profiles import PAC3100, Profile

log = logging.getLogger(__name__)

_DATATYPES = {
    "int16": ModbusTcpClient.DATATYPE.INT16,
    "uint16": ModbusTcpClient.DATATYPE.UINT16,
    "int32": ModbusTcpClient.DATATYPE.INT32,
    "uint32": ModbusTcpClient.DATATYPE.UINT32,
    "float32": ModbusTcpClient.DATATYPE.FLOAT32,
    "int64": ModbusTcpClient.DATATYPE.INT64,
    "uint64": ModbusTcpClient.DATATYPE.UINT64,
    "float64": ModbusTcpClient.DATATYPE.FLOAT64,
}

NOMINAL_V = 127.0  # phase-to-neutral; 220 V between phases
NOMINAL_HZ = 60.0
PEAK_W = 9000.0  # the evening peak of the whole plant
PHASE_SHARE = (0.36, 0.33, 0.31)  # a village's loads are never balanced


def _bump(hour: float, centre: float, width: float) -> float:
    d = min(abs(hour - centre), 24 - abs(hour - centre))
    return math.exp(-0.5 * (d / width) ** 2)


def load_fraction(hour: float) -> float:
    """Share of the evening peak drawn at this local hour (0..1)."""
    return min(
        1.0,
        0.22 + 0.25 * _bump(hour, 7.0, 1.2) + 0.18 * _bump(hour, 12.5, 2.5) + 0.78 * _bump(hour, 19.5, 1.6),
    )


def _noise(t: float, salt: str) -> float:
    """Deterministic noise in [-1, 1) for second `t` (same second -> same value)."""
    digest = hashlib.blake2b(f"{int(t)}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**63 - 1.0


#: Where the simulated energy counters start: 2024-01-01T00:00:00Z, with this much on them.
COUNTER_EPOCH = 1704067200.0
COUNTER_START_WH = 1_250_000.0
COUNTER_START_VARH = 310_000.0


def _smooth_power(hour: float) -> tuple[float, float]:
    """Total active (W) and reactive (var) power of the plant at this local hour, without noise."""
    load = load_fraction(hour)
    pf = 0.97 - 0.08 * load
    p = PEAK_W * load
    return p, p * math.tan(math.acos(pf))


@functools.cache
def _daily_integrals(steps: int = 1440) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Cumulative Wh and varh from local midnight at each minute of the day (trapezoids)."""
    wh, varh = [0.0], [0.0]
    previous = _smooth_power(0.0)
    for k in range(1, steps + 1):
        current = _smooth_power(24.0 * k / steps)
        dt_h = 24.0 / steps
        wh.append(wh[-1] + (previous[0] + current[0]) / 2 * dt_h)
        varh.append(varh[-1] + (previous[1] + current[1]) / 2 * dt_h)
        previous = current
    return tuple(wh), tuple(varh)


def energy_counters(t: float, local_offset_h: float = -3.0) -> dict[str, float]:
    """The meter's active (Wh) and reactive (varh) energy counters at unix time `t`: the
    integral of the plant's smooth load since COUNTER_EPOCH (monotonic, like a real counter)."""
    wh, varh = _daily_integrals()
    local = t + local_offset_h * 3600.0
    start = COUNTER_EPOCH + local_offset_h * 3600.0
    days = math.floor(local / 86400.0) - math.floor(start / 86400.0)
    minute, frac = divmod((local % 86400.0) / 60.0, 1.0)
    k = int(minute)
    today_wh = wh[k] + (wh[min(k + 1, 1440)] - wh[k]) * frac
    today_varh = varh[k] + (varh[min(k + 1, 1440)] - varh[k]) * frac
    start_minute = (start % 86400.0) / 60.0  # the counters start at 0 at COUNTER_EPOCH
    s = int(start_minute)
    offset_wh = wh[s] + (wh[min(s + 1, 1440)] - wh[s]) * (start_minute - s)
    offset_varh = varh[s] + (varh[min(s + 1, 1440)] - varh[s]) * (start_minute - s)
    return {
        "energia_ativa": COUNTER_START_WH + days * wh[-1] + today_wh - offset_wh,
        "energia_reativa": COUNTER_START_VARH + days * varh[-1] + today_varh - offset_varh,
    }


def plant_values(t: float, local_offset_h: float = -3.0) -> dict[str, float]:
    """Every PAC3100 value at unix time `t` (local time = UTC + offset, Brasília -3): the
    twenty instantaneous values and the two energy counters."""
    hour = ((t / 3600.0) + local_offset_h) % 24
    load = load_fraction(hour) * (1 + 0.03 * _noise(t, "load"))
    v: dict[str, float] = {}
    volts, amps = [], []
    for k, share in enumerate(PHASE_SHARE, start=1):
        p = PEAK_W * load * share * (1 + 0.05 * _noise(t, f"p{k}"))
        pf = 0.97 - 0.08 * load + 0.01 * _noise(t, f"pf{k}")
        q = p * math.tan(math.acos(pf))
        s = math.hypot(p, q)
        u = NOMINAL_V * (1.03 - 0.07 * load) + 0.4 * _noise(t, f"u{k}")
        i = s / u
        angle = -2 * math.pi / 3 * (k - 1)
        volts.append(cmath.rect(u, angle))
        amps.append(cmath.rect(i, angle - math.acos(pf)))
        v[f"tensao_l{k}_n"] = u
        v[f"corrente_l{k}"] = i
        v[f"potencia_aparente_l{k}"] = s
        v[f"potencia_ativa_l{k}"] = p
        v[f"potencia_reativa_l{k}"] = q
    v["tensao_l1_l2"] = abs(volts[0] - volts[1])
    v["tensao_l2_l3"] = abs(volts[1] - volts[2])
    v["tensao_l3_l1"] = abs(volts[2] - volts[0])
    v["corrente_neutro"] = abs(sum(amps))
    v["frequencia"] = NOMINAL_HZ + 0.12 * math.sin(t / 37.0) - 0.25 * (load - 0.5) + 0.02 * _noise(t, "f")
    v.update(energy_counters(t, local_offset_h))
    return v


def as_float32(value: float) -> float:
    """What a value becomes after the trip through two registers."""
    return struct.unpack(">f", struct.pack(">f", value))[0]


def answer_only(unit_ids: Collection[int]) -> Callable[[bool, ModbusPDU], ModbusPDU | None]:
    """A server `trace_pdu` hook that drops requests addressed to other units.

    On an RS485 line a slave stays silent when a request is for another unit, so
    the master times out. pymodbus 3.16's SimDevice server would answer them with
    exception 4 instead (its `ignore_missing_devices` does not apply to SimDevice).
    """
    ids = frozenset(unit_ids)

    def trace_pdu(sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        return pdu if sending or pdu.dev_id in ids else None

    return trace_pdu


@dataclass
class Pac3100Simulator:
    """The device behind the server. Knobs and counters are safe to touch from tests."""

    unit_id: int = PAC3100.unit_id
    profile: Profile = PAC3100
    clock: Callable[[], float] = time.time
    delay_s: float = 0.0
    exception_code: ExcCodes | None = None
    override: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    served: list[dict[str, float]] = field(default_factory=list)
    keep_served: int = 100_000
    _snapshot: dict[str, float] | None = field(default=None, repr=False)

    def device(self) -> SimDevice:
        """One block of registers per run of contiguous values; the addresses between
        runs are undocumented and answer exception 2, as on the real meter."""
        runs: list[list[int]] = []
        for reg in sorted(self.profile.registers, key=lambda r: r.address):
            if runs and runs[-1][1] == reg.address:
                runs[-1][1] = reg.end
            else:
                runs.append([reg.address, reg.end])
        return SimDevice(
            id=self.unit_id,
            simdata=[
                SimData(address=start, count=end - start, values=0, datatype=DataType.REGISTERS)
                for start, end in runs
            ],
            action=self._action,
        )

    def current_values(self) -> dict[str, float]:
        """The values as the registers hold them (float32 values rounded to float32)."""
        raw = plant_values(self.clock())
        values = {
            reg.name: as_float32(raw[reg.name]) if reg.type == "float32" else raw[reg.name]
            for reg in self.profile.registers
            if reg.name in raw
        }
        values.update(self.override)
        return values

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: object,
    ) -> ExcCodes | None:
        self.requests += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # measurements are read-only
        if self.exception_code is not None:
            return self.exception_code
        # The PAC3100 refuses a read that starts or ends inside a multi-register value.
        regs = self.profile.registers
        if address not in {r.address for r in regs} or address + count not in {r.end for r in regs}:
            return ExcCodes.ILLEGAL_ADDRESS
        # One snapshot per poll: a request for the first register starts a poll.
        if address == min(r.address for r in regs) or self._snapshot is None:
            self._snapshot = self.current_values()
            self.served.append(self._snapshot)
            del self.served[: -self.keep_served]
        values = self._snapshot
        for reg in regs:
            value = values.get(reg.name, 0.0)
            if not reg.type.startswith("float"):
                value = int(value)
            words = ModbusTcpClient.convert_to_registers(value, _DATATYPES[reg.type])
            offset = reg.address - start_address
            registers[offset : offset + reg.width] = words
        return None

    async def serve_tcp(
        self,
        host: str = "127.0.0.1",
        port: int = 5020,
        started: Callable[[ModbusTcpServer], None] | None = None,
    ) -> None:
        server = ModbusTcpServer(self.device(), address=(host, port))
        await self._serve(server, started)

    async def serve_rtu(
        self,
        device: str,
        baudrate: int | None = None,
        started: Callable[[ModbusSerialServer], None] | None = None,
    ) -> None:
        serial = self.profile.serial
        server = ModbusSerialServer(
            self.device(),
            framer=FramerType.RTU,
            port=device,
            baudrate=baudrate or serial.baudrate,
            bytesize=serial.bytesize,
            parity=serial.parity,
            stopbits=serial.stopbits,
            trace_pdu=answer_only({self.unit_id}),  # type: ignore[arg-type]
        )
        await self._serve(server, started)

    async def _serve(self, server, started) -> None:
        await server.serve_forever(background=True)
        if started:
            started(server)
        try:
            await server.serving
        finally:
            await server.shutdown()


class SimulatorThread:
    """Runs a simulator's server on an asyncio loop in a background thread."""

    def __init__(
        self,
        sim: Pac3100Simulator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rtu_device: str | None = None,
    ):
        self.sim = sim
        self.host, self.port, self.rtu_device = host, port, rtu_device
        self.loop = asyncio.new_event_loop()
        self.server = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="pac3100-sim", daemon=True)

    def _started(self, server) -> None:
        self.server = server
        if self.rtu_device is None and self.port == 0:
            sock = server.transport.sockets[0]  # the port the OS chose
            self.port = sock.getsockname()[1]
        self._ready.set()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        coro = (
            self.sim.serve_rtu(self.rtu_device, started=self._started)
            if self.rtu_device
            else self.sim.serve_tcp(self.host, self.port, started=self._started)
        )
        try:
            self.loop.run_until_complete(coro)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    def start(self, timeout: float = 10.0) -> SimulatorThread:
        self.thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise RuntimeError(f"simulator did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self.server is not None and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.thread.join(10)
