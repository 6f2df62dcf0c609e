"""Register maps ("profiles") as data: which registers a meter model has, how to decode them.

Addresses are Modbus PDU addresses, the number that goes on the wire. Siemens
documents the PAC3100 by that same number (its "offset"), so `tensao_l1_n` is
at address 1 and is requested as address 1, with no -1 correction. Tools that
count registers from 1 (mbpoll, many SCADA screens) show the same register as 2:
``mbpoll -a 126 -b 19200 -P none -s 2 -t 4:float -B -r 2 -c 20 /dev/ttyUSB0``
reads the twenty float32 values of a factory-set PAC3100 (``-B``: high word first;
without it mbpoll swaps the two words of each float and prints nonsense).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64"]
Function = Literal["holding", "input"]
WordOrder = Literal["big", "little"]

#: Number of 16-bit registers each type occupies.
REGISTER_WIDTH: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}

#: Modbus function code for each register space.
FUNCTION_CODE: dict[str, int] = {"holding": 0x03, "input": 0x04}

#: The most registers one read request may ask for (Modbus application protocol, 6.3).
MAX_REGISTERS_PER_READ = 125

#: A column name must be a plain lower-case SQL identifier, not a reserved column of ours.
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
RESERVED_COLUMNS = frozenset({"id", "site", "meter", "buffer_id", "seq", "measured_at", "clock_ok", "error"})


def check_identifier(name: str) -> str | None:
    """Return why `name` is not a safe column name, or None when it is."""
    if not IDENTIFIER.match(name):
        return "must match [a-z][a-z0-9_]* (at most 63 characters)"
    if name in RESERVED_COLUMNS:
        return f"{name!r} is reserved for edgelog's own columns"
    return None


@dataclass(frozen=True)
class Register:
    """One value of a meter: where it is, how to decode it, and the column it becomes."""

    name: str
    address: int
    type: RegisterType = "float32"
    function: Function = "holding"
    word_order: WordOrder = "big"
    scale: float = 1.0
    unit: str = ""

    @property
    def width(self) -> int:
        """Registers this value occupies on the wire."""
        return REGISTER_WIDTH[self.type]

    @property
    def end(self) -> int:
        """The first address after this value."""
        return self.address + self.width


@dataclass(frozen=True)
class SerialDefaults:
    """The line settings a device ships with (used when the config does not say)."""

    baudrate: int = 19200
    bytesize: int = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1


@dataclass(frozen=True)
class Profile:
    """A meter model's register map and factory settings."""

    name: str
    registers: tuple[Register, ...]
    unit_id: int = 1
    serial: SerialDefaults = field(default_factory=SerialDefaults)
    #: Some meters answer an exception for a read that covers undocumented
    #: addresses. When False, a request never bridges a gap between registers.
    bridge_gaps: bool = False
    #: Largest gap (in registers) a request may bridge when `bridge_gaps` is True.
    max_gap: int = 0


def _pac3100_registers() -> tuple[Register, ...]:
    names_units = [
        ("tensao_l1_n", "V"),
        ("tensao_l2_n", "V"),
        ("tensao_l3_n", "V"),
        ("tensao_l1_l2", "V"),
        ("tensao_l2_l3", "V"),
        ("tensao_l3_l1", "V"),
        ("corrente_l1", "A"),
        ("corrente_l2", "A"),
        ("corrente_l3", "A"),
        ("potencia_aparente_l1", "VA"),
        ("potencia_aparente_l2", "VA"),
        ("potencia_aparente_l3", "VA"),
        ("potencia_ativa_l1", "W"),
        ("potencia_ativa_l2", "W"),
        ("potencia_ativa_l3", "W"),
        ("potencia_reativa_l1", "var"),
        ("potencia_reativa_l2", "var"),
        ("potencia_reativa_l3", "var"),
        ("corrente_neutro", "A"),
        ("frequencia", "Hz"),
    ]
    instantaneous = tuple(
        Register(name=name, address=1 + 2 * i, type="float32", unit=unit)
        for i, (name, unit) in enumerate(names_units)
    )
    # The energy counters: SENTRON PAC3100 manual A5E02385159B-01 (07/2009), appendix
    # A.2 "Modbus RTU", table of measured variables (FC 0x03/0x04), p. 132:
    #   801  4 registers  "Active energy (import, export, balance)"    Double  Wh    overflow 1.0e+12
    #   805  4 registers  "Reactive energy (import, export, balance)"  Double  varh  overflow 1.0e+12
    # The PAC3100 has one counter of each: which of import, export or balance it
    # counts is the meter's setting "Energy counting" (offset 50025, table A-11,
    # p. 135; LOWORD kWh, HIWORD kvarh: 0 import, 1 export, 2 balance).
    # Not here: per-phase power factor (the PAC3100's list has none: offsets 37 and
    # 39 are the neutral current and the frequency), and the totals/total power
    # factor, whose offsets (47..53) are only inferred from the minimum-value table
    # (p. 132: min. total apparent/active/reactive power and total power factor at
    # 155..161, 108 above their instantaneous values) and not printed on a page we
    # could check. The report computes power factors as P/S from the values above.
    return instantaneous


#: The PAC3100's energy counters (see above): a second request, so not in the default profile.
PAC3100_ENERGY_REGISTERS = (
    Register(name="energia_ativa", address=801, type="float64", unit="Wh"),
    Register(name="energia_reativa", address=805, type="float64", unit="varh"),
)


#: Siemens SENTRON PAC3100: the 20 float32 values at offsets 1..39 (high word first),
#: readable with FC 0x03 or 0x04, in ONE request per poll. Factory settings: unit 126,
#: 19200 baud, 8N2. The default profile.
PAC3100 = Profile(
    name="pac3100",
    registers=_pac3100_registers(),
    unit_id=126,
    serial=SerialDefaults(baudrate=19200, bytesize=8, parity="N", stopbits=2),
    bridge_gaps=False,
)

#: The same, plus the two float64 energy counters at 801 and 805: two requests per
#: poll (1..40 and 801..808; the addresses between them are never read). For the
#: report's energy from the meter's own counters.
PAC3100_ENERGIA = replace(
    PAC3100, name="pac3100-energia", registers=PAC3100.registers + PAC3100_ENERGY_REGISTERS
)

PROFILES: dict[str, Profile] = {p.name: p for p in (PAC3100, PAC3100_ENERGIA)}
