"""A SENTRON PAC3100 simulator: a real pymodbus server serving the pac3100 profile.

The values follow a small isolated 3-phase 127/220 V, 60 Hz pico hydro plant
whose load follows a village's day (low at night, a bump at breakfast, the
evening peak); its energy counters integrate that load (the undisturbed one:
the disturbances below leave the counters alone).

The plant has an electronic load controller (ELC): the turbine gives the
water's power (`Plant.hydraulic_w`) all the time and the controller dumps what
the village does not take into a ballast load, so the frequency stays at 60 Hz
(within ±0.05 Hz) whatever the load, as long as the load is below the water's
power. Above it there is nothing left to dump: the machine slows until the
load it feeds equals the water's power. With constant-impedance loads and a
voltage that follows the speed (V/f constant), the village's demand D against
the water's power W gives f = 60 / sqrt(D/W) Hz, voltages / sqrt(D/W) and every
power x W/D: frequency and voltage sag together.

Disturbances on a schedule (`Plant.schedule`, `parse_schedule`, `edgelog
simulate --schedule`): an outage (0 V, 0 A, 0 W, 0 Hz), an overload (the
village demands a multiple of the water's power) and a voltage held at a value
(a precarious or critical voltage), at a given time or every day; the first
listed wins where two of a kind overlap. `Plant.day_variation` makes days differ.

Like the real meter it refuses a read that starts or ends inside a value or
covers an undocumented address, and answers FC 0x03 and 0x04 alike. The values
of one poll are one snapshot, taken when a request for the first register
arrives (a meter refreshes its registers once per measuring cycle, not between
the requests of one poll). Tests use its knobs to inject faults: a slow answer
(`delay_s`), an exception response (`exception_code`), forced values
(`override`, e.g. NaN), and read `requests` / `served` to see what went out.
"""

from __future__ import annotations

import asyncio
import cmath
import datetime as dt
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

from .errors import EdgelogError
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


@dataclass(frozen=True)
class Disturbance:
    """An outage, an overload or a held voltage, once (`start`) or every day (`daily_s`)."""

    kind: str  # "outage" | "overload" | "voltage"
    duration_s: float
    start: float | None = None  # unix seconds
    daily_s: float | None = None  # seconds after local midnight, every day
    value: float | None = None  # overload: demand / water's power; voltage: phase-neutral V

    def active(self, t: float, local_offset_h: float) -> bool:
        if self.start is not None:
            return self.start <= t < self.start + self.duration_s
        assert self.daily_s is not None
        since = (t + local_offset_h * 3600.0 - self.daily_s) % 86400.0
        return since < self.duration_s


KINDS = {"outage": None, "overload": (1.0, 10.0), "voltage": (0.0, 300.0)}


def parse_schedule(text: str) -> tuple[Disturbance, ...]:
    """`KIND@WHEN+DURATION[=VALUE]`, comma-separated. WHEN: an ISO date-time (UTC unless it
    has a zone) or HH:MM (local, every day); DURATION: 90s, 20m, 2h; VALUE: an overload's
    demand as a multiple of the water's power (1.2), a voltage's volts (114).
    E.g. "outage@2026-06-02T22:00Z+20m,overload@19:00+45m=1.25,voltage@03:00+2h=114"."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        out.append(_disturbance(item))
    return tuple(out)


def _disturbance(item: str) -> Disturbance:
    def bad(why: str) -> EdgelogError:
        return EdgelogError(f"simulate --schedule: {item!r}: {why} (say e.g. overload@19:00+45m=1.25)")

    kind, at, rest = item.partition("@")
    if kind not in KINDS or not at:
        raise bad(f"say one of {', '.join(KINDS)}, then @")
    when, plus, rest = rest.partition("+")
    duration, equals, value_text = rest.partition("=")
    if not plus:
        raise bad("no +DURATION")
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        duration_s = float(duration[:-1]) * units[duration[-1]]
        value = float(value_text) if equals else None
    except (KeyError, ValueError, IndexError):
        raise bad("DURATION is a number and s, m or h; VALUE a number") from None
    if not 0 < duration_s <= 86400 * 366 or (value is not None and not math.isfinite(value)):
        raise bad("DURATION must be positive and at most a year")
    bounds = KINDS[kind]
    if (bounds is None) != (value is None) or (bounds and not bounds[0] <= value <= bounds[1]):  # type: ignore[operator]
        raise bad(
            "an outage has no =VALUE"
            if bounds is None
            else f"{kind} needs =VALUE in {bounds[0]:g}–{bounds[1]:g}"
        )
    if len(when) == 5 and when[2] == ":":
        try:
            clock = dt.time.fromisoformat(when)
        except ValueError:
            raise bad("HH:MM is not a time of day") from None
        return Disturbance(kind, duration_s, daily_s=clock.hour * 3600.0 + clock.minute * 60.0, value=value)
    try:
        moment = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        raise bad("WHEN is an ISO date-time or HH:MM") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return Disturbance(kind, duration_s, start=moment.timestamp(), value=value)


@dataclass(frozen=True)
class Plant:
    """The simulated plant: the water's power, the village's evening peak, the disturbances."""

    hydraulic_w: float = 10_000.0
    peak_w: float = PEAK_W
    schedule: tuple[Disturbance, ...] = ()
    #: Each local day's load x (1 ± this), drawn per date, and weekends x (1 + this) at midday:
    #: days that differ, for the typical-day chart. 0: every day the same (the default).
    day_variation: float = 0.0

    def day_factor(self, t: float, local_offset_h: float) -> float:
        if not self.day_variation:
            return 1.0
        local = t + local_offset_h * 3600.0
        day = math.floor(local / 86400.0)
        hour = (local % 86400.0) / 3600.0
        weekend = dt.date.fromordinal(719163 + day).weekday() >= 5  # 719163: 1970-01-01
        return 1 + self.day_variation * (_noise(day * 86400.0, "day") + weekend * _bump(hour, 12.5, 2.5))

    def active(self, t: float, local_offset_h: float, kind: str) -> Disturbance | None:
        return next((d for d in self.schedule if d.kind == kind and d.active(t, local_offset_h)), None)


DEFAULT_PLANT = Plant()


def plant_values(t: float, local_offset_h: float = -3.0, plant: Plant = DEFAULT_PLANT) -> dict[str, float]:
    """Every PAC3100 value at unix time `t` (local time = UTC + offset, Brasília -3): the
    twenty instantaneous values and the two energy counters."""
    hour = ((t / 3600.0) + local_offset_h) % 24
    load = load_fraction(hour) * (1 + 0.03 * _noise(t, "load")) * plant.day_factor(t, local_offset_h)
    held = plant.active(t, local_offset_h, "voltage")
    parts = []
    for k, share in enumerate(PHASE_SHARE, start=1):
        p = plant.peak_w * load * share * (1 + 0.05 * _noise(t, f"p{k}"))
        pf = 0.97 - 0.08 * load + 0.01 * _noise(t, f"pf{k}")
        u = held.value if held is not None else NOMINAL_V * (1.03 - 0.07 * load)
        parts.append((p, p * math.tan(math.acos(pf)), u + 0.4 * _noise(t, f"u{k}")))
    if (over := plant.active(t, local_offset_h, "overload")) is not None:  # demand = value x water
        scale = over.value * plant.hydraulic_w / sum(p for p, _, _ in parts)  # type: ignore[operator]
        parts = [(p * scale, q * scale, u) for p, q, u in parts]
    # The electronic load controller: 60 Hz while the demand is below the water's power.
    ratio = max(1.0, sum(p for p, _, _ in parts) / plant.hydraulic_w)
    f = NOMINAL_HZ + 0.03 * math.sin(t / 37.0) + 0.02 * _noise(t, "f")
    sag = 1 / math.sqrt(ratio)  # above it: frequency and voltage sag together, powers x 1/ratio
    if plant.active(t, local_offset_h, "outage") is not None:
        sag, f = 0.0, 0.0
    v: dict[str, float] = {}
    volts, amps = [], []
    for k, (p, q, u) in enumerate(parts, start=1):
        p, q, u = p * sag**2, q * sag**2, u * sag
        s = math.hypot(p, q)
        i = s / u if u else 0.0
        angle = -2 * math.pi / 3 * (k - 1)
        volts.append(cmath.rect(u, angle))
        amps.append(cmath.rect(i, angle - math.atan2(q, p) if s else angle))
        v[f"tensao_l{k}_n"] = u
        v[f"corrente_l{k}"] = i
        v[f"potencia_aparente_l{k}"] = s
        v[f"potencia_ativa_l{k}"] = p
        v[f"potencia_reativa_l{k}"] = q
    v["tensao_l1_l2"] = abs(volts[0] - volts[1])
    v["tensao_l2_l3"] = abs(volts[1] - volts[2])
    v["tensao_l3_l1"] = abs(volts[2] - volts[0])
    v["corrente_neutro"] = abs(sum(amps))
    v["frequencia"] = f * sag if sag else 0.0
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
    plant: Plant = DEFAULT_PLANT
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
        raw = plant_values(self.clock(), plant=self.plant)
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
