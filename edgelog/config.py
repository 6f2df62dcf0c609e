"""TOML config -> validated, frozen dataclasses.

Every error names the file, the key and the problem.

Defaults -> parse -> validate: the file's tables are read with `_Table`, which
knows which keys it has handed out, so any key left over is reported as unknown
instead of being silently ignored.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .profiles import (
    FUNCTION_CODE,
    MAX_REGISTERS_PER_READ,
    PROFILES,
    REGISTER_WIDTH,
    Profile,
    Register,
    check_identifier,
)

DEFAULT_PATH = Path("/etc/edgelog/edgelog.toml")
ENV_VAR = "EDGELOG_CONFIG"
_REQUIRED = object()


@dataclass(frozen=True)
class BufferConfig:
    path: Path = Path("/var/lib/edgelog/buffer.sqlite3")
    #: Upper bound for the buffer file (database + WAL), in MiB.
    max_mb: float = 512.0
    #: Sent rows are kept this long for local inspection, then pruned.
    keep_sent_days: float = 7.0
    #: Full of unsent rows (max_mb or the disk): "drop_oldest" unsent rows to keep
    #: logging, or "drop_newest" (keep the backlog, refuse new readings). Both counted.
    when_full: str = "drop_oldest"
    #: Commit the readings of this many seconds together (one fsync a group) instead of
    #: each on its own (0, the default). A power cut then loses up to this many seconds
    #: of readings (docs/guarantees.md); meant for sites sampling faster than 1 Hz.
    commit_every_s: float = 0.0


@dataclass(frozen=True)
class MariaDBConfig:
    user: str
    host: str = "localhost"
    port: int = 3306
    unix_socket: str | None = None
    password_file: Path | None = None
    password: str | None = None
    database: str = "chapada_imperial"
    table: str = "medicoes"
    batch_size: int = 2000
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    write_timeout_s: float = 30.0
    ssl_ca: Path | None = None
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    ssl_verify_identity: bool = True

    def __repr__(self) -> str:  # never show the password in logs or tracebacks
        shown = "***" if self.password else None
        return f"MariaDBConfig(user={self.user!r}, host={self.host!r}, port={self.port}, password={shown})"

    def read_password(self) -> str | None:
        """The password, read from `password_file` at each call (so it can be rotated)."""
        if self.password is not None:
            return self.password
        if self.password_file is None:
            return None
        check_private_file(self.password_file, "[mariadb] password_file", owner_only=True)
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"[mariadb] password_file: cannot read {self.password_file}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"[mariadb] password_file: {self.password_file} is not UTF-8 text") from None
        return text.split("\n", 1)[0].rstrip("\r")  # the first line, as documented


@dataclass(frozen=True)
class SyncConfig:
    #: Seconds between sync rounds while there is nothing left to send.
    interval_s: float = 5.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    #: A row MariaDB rejects in this many sync rounds (while rows around it go in) is quarantined.
    quarantine_after: int = 3


@dataclass(frozen=True)
class ClockConfig:
    #: clock_ok = 0 while the kernel says the clock is not synchronised (NTP/chrony). Set false
    #: only where the time comes from elsewhere (an RTC, no time sync): then only implausible
    #: times and backward steps (see docs/guarantees.md) mark readings clock_ok = 0.
    require_sync: bool = True


@dataclass(frozen=True)
class MeterConfig:
    name: str
    transport: str  # "rtu" | "tcp"
    profile: str
    registers: tuple[Register, ...]
    unit_id: int
    interval_s: float
    timeout_s: float
    device: str | None = None
    baudrate: int = 19200
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    host: str | None = None
    port: int = 502
    bridge_gaps: bool = False
    max_gap: int = 0
    retries: int = 0

    def bus_key(self) -> tuple[Any, ...]:
        """Meters with the same key share one connection (one RS485 line, one TCP gateway)."""
        if self.transport == "rtu":
            return ("rtu", self.device, self.baudrate, self.bytesize, self.parity, self.stopbits)
        return ("tcp", self.host, self.port)


@dataclass(frozen=True)
class Config:
    site: str
    meters: tuple[MeterConfig, ...]
    mariadb: MariaDBConfig
    buffer: BufferConfig = BufferConfig()
    sync: SyncConfig = SyncConfig()
    path: Path | None = None
    clock: ClockConfig = ClockConfig()

    def columns(self) -> dict[str, str]:
        """Every register column any meter writes, name -> unit, in first-seen order."""
        columns: dict[str, str] = {}
        for meter in self.meters:
            for register in meter.registers:
                columns.setdefault(register.name, register.unit)
        return columns


def resolve_path(cli_value: str | None) -> Path:
    """`--config`, else `$EDGELOG_CONFIG`, else /etc/edgelog/edgelog.toml."""
    if cli_value:
        return Path(cli_value)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return DEFAULT_PATH


def check_private_file(path: Path, what: str, owner_only: bool = False) -> None:
    """Refuse a secret that other users can read. With `owner_only` (a password
    file), the group may not read it either: only the service user may."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
    if mode & stat.S_IROTH:
        who = "every user"
    elif owner_only and mode & stat.S_IRGRP:
        who = "its group"
    else:
        return
    raise ConfigError(
        f"{what}: {path} is readable by {who} (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
    )


def load(path: Path) -> Config:
    """Read and validate the config file at `path`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse(data, source=str(path))
    if config.mariadb.password is not None:
        check_private_file(path, f"{path}: [mariadb] password")
    return replace(config, path=path)


def parse(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate an already-parsed TOML document."""
    top = _Table(source, "", data)
    site = top.get("site", str, check=_identifier_like)
    buffer = _parse_buffer(top.table("buffer"))
    mariadb = _parse_mariadb(top.table("mariadb", required=True))
    sync = _parse_sync(top.table("sync"))
    clock = _parse_clock(top.table("clock"))
    meter_tables = top.get("meters", list)
    if not meter_tables:
        raise top.error("meters", "at least one [[meters]] table is required")
    meters = tuple(
        _parse_meter(_Table(source, f"meters[{i}]", item, expect_table=True))
        for i, item in enumerate(meter_tables)
    )
    top.done()
    names = [m.name for m in meters]
    for name in names:
        if names.count(name) > 1:
            raise top.error("meters", f"meter name {name!r} is used twice")
    _check_column_units(source, meters)
    return Config(site=site, meters=meters, mariadb=mariadb, buffer=buffer, sync=sync, clock=clock)


def _parse_buffer(t: _Table) -> BufferConfig:
    d = BufferConfig()
    cfg = BufferConfig(
        path=Path(t.get("path", str, d.path.as_posix())),
        max_mb=t.get("max_mb", float, d.max_mb, check=_positive),
        keep_sent_days=t.get("keep_sent_days", float, d.keep_sent_days, check=_non_negative),
        when_full=t.get("when_full", str, d.when_full, check=_one_of("drop_oldest", "drop_newest")),
        commit_every_s=t.get("commit_every_s", float, d.commit_every_s, check=_range(0, 60)),
    )
    t.done()
    return cfg


def _parse_mariadb(t: _Table) -> MariaDBConfig:
    password = t.get("password", str, None)
    password_file = t.get("password_file", str, None)
    if password is not None and password_file is not None:
        raise t.error("password", "give either password or password_file, not both")
    cfg = MariaDBConfig(
        user=t.get("user", str, check=_non_empty),
        host=t.get("host", str, "localhost", check=_non_empty),
        port=t.get("port", int, 3306, check=_port),
        unix_socket=t.get("unix_socket", str, None),
        password=password,
        password_file=Path(password_file) if password_file else None,
        database=t.get("database", str, "chapada_imperial", check=_sql_name),
        table=t.get("table", str, "medicoes", check=_sql_name),
        batch_size=t.get("batch_size", int, 2000, check=_range(1, 100_000)),
        connect_timeout_s=t.get("connect_timeout_s", float, 10.0, check=_positive),
        read_timeout_s=t.get("read_timeout_s", float, 30.0, check=_positive),
        write_timeout_s=t.get("write_timeout_s", float, 30.0, check=_positive),
        ssl_ca=_opt_path(t.get("ssl_ca", str, None)),
        ssl_cert=_opt_path(t.get("ssl_cert", str, None)),
        ssl_key=_opt_path(t.get("ssl_key", str, None)),
        ssl_verify_identity=t.get("ssl_verify_identity", bool, True),
    )
    t.done()
    return cfg


def _parse_sync(t: _Table) -> SyncConfig:
    cfg = SyncConfig(
        interval_s=t.get("interval_s", float, 5.0, check=_positive),
        backoff_initial_s=t.get("backoff_initial_s", float, 1.0, check=_positive),
        backoff_max_s=t.get("backoff_max_s", float, 300.0, check=_positive),
        quarantine_after=t.get("quarantine_after", int, 3, check=_range(1, 1000)),
    )
    t.done()
    return cfg


def _parse_clock(t: _Table) -> ClockConfig:
    cfg = ClockConfig(require_sync=t.get("require_sync", bool, True))
    t.done()
    return cfg


def _parse_meter(t: _Table) -> MeterConfig:
    name = t.get("name", str, check=_identifier_like)
    profile_name = t.get("profile", str, "pac3100")
    if profile_name not in PROFILES:
        raise t.error("profile", f"unknown profile {profile_name!r} (known: {', '.join(PROFILES)})")
    profile: Profile = PROFILES[profile_name]
    transport = t.get("transport", str, check=_one_of("rtu", "tcp"))
    fields: dict[str, Any] = {}
    if transport == "rtu":
        fields["device"] = t.get("device", str, check=_non_empty)
        fields["baudrate"] = t.get("baudrate", int, profile.serial.baudrate, check=_baudrate)
        fields["bytesize"] = t.get("bytesize", int, profile.serial.bytesize, check=_range(5, 8))
        fields["parity"] = t.get("parity", str, profile.serial.parity, check=_one_of("N", "E", "O"))
        fields["stopbits"] = t.get("stopbits", int, profile.serial.stopbits, check=_range(1, 2))
    else:
        fields["host"] = t.get("host", str, check=_non_empty)
        fields["port"] = t.get("port", int, 502, check=_port)
    registers = _merge_registers(t, profile)
    cfg = MeterConfig(
        name=name,
        transport=transport,
        profile=profile_name,
        registers=registers,
        unit_id=t.get("unit_id", int, profile.unit_id, check=_range(0, 247)),
        interval_s=t.get("interval_s", float, 1.0, check=_range(0.05, 86_400)),
        timeout_s=t.get("timeout_s", float, 1.0, check=_range(0.05, 60)),
        bridge_gaps=t.get("bridge_gaps", bool, profile.bridge_gaps),
        max_gap=t.get("max_gap", int, profile.max_gap, check=_range(0, MAX_REGISTERS_PER_READ)),
        retries=t.get("retries", int, 0, check=_range(0, 5)),
        **fields,
    )
    t.done()
    return cfg


def _merge_registers(t: _Table, profile: Profile) -> tuple[Register, ...]:
    """The profile's registers, with [[meters.registers]] entries replacing or adding by name."""
    merged = {r.name: r for r in profile.registers}
    for i, item in enumerate(t.get("registers", list, [])):
        rt = _Table(t.source, f"{t.where}.registers[{i}]", item, expect_table=True)
        name = rt.get("name", str, check=_column)
        base = merged.get(name)
        register = Register(
            name=name,
            address=rt.get("address", int, base.address if base else _REQUIRED, check=_range(0, 65535)),
            type=rt.get("type", str, base.type if base else "float32", check=_one_of(*REGISTER_WIDTH)),
            function=rt.get(
                "function", str, base.function if base else "holding", check=_one_of(*FUNCTION_CODE)
            ),
            word_order=rt.get(
                "word_order",
                str,
                base.word_order if base else "big",
                check=_one_of("big", "little"),
            ),
            scale=rt.get("scale", float, base.scale if base else 1.0, check=_finite_nonzero),
            unit=rt.get("unit", str, base.unit if base else ""),
        )
        rt.done()
        if register.end > 65536:
            raise rt.error("address", f"{register.type} at {register.address} runs past 65535")
        merged[name] = register
    registers = tuple(sorted(merged.values(), key=lambda r: (r.function, r.address)))
    for a, b in itertools.pairwise(registers):
        if a.function == b.function and b.address < a.end:
            raise t.error("registers", f"{a.name!r} and {b.name!r} overlap at address {b.address}")
    return registers


def _check_column_units(source: str, meters: tuple[MeterConfig, ...]) -> None:
    """Two meters may share a column only if they agree on its unit."""
    seen: dict[str, tuple[str, str]] = {}
    for meter in meters:
        for reg in meter.registers:
            if reg.name in seen and seen[reg.name][0] != reg.unit:
                other_unit, other_meter = seen[reg.name]
                raise ConfigError(
                    f"{source}: [meters] column {reg.name!r} has unit {other_unit!r} on "
                    f"meter {other_meter!r} but {reg.unit!r} on meter {meter.name!r}"
                )
            seen.setdefault(reg.name, (reg.unit, meter.name))


# -- the table reader ------------------------------------------------------------------


class _Table:
    """One TOML table; remembers which keys were read so leftovers can be reported."""

    def __init__(self, source: str, where: str, data: Any, expect_table: bool = False):
        self.source = source
        self.where = where
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: [{where}]: must be a table, got {_show(data)}")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        prefix = f"[{self.where}] " if self.where else ""
        return ConfigError(f"{self.source}: {prefix}{key}: {problem}")

    def get(self, key: str, kind: type, default: Any = _REQUIRED, check: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(key, f"must be {_KIND_NAMES[kind]}, got {_show(value)}")
        if check is not None and (problem := check(value)):
            raise self.error(key, f"{problem}, got {_show(value)}")
        return value

    def table(self, key: str, required: bool = False) -> _Table:
        self.used.add(key)
        if key not in self.data and required:
            raise self.error(f"[{key}]", "table is required")
        where = f"{self.where}.{key}" if self.where else key
        return _Table(self.source, where, self.data.get(key, {}))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            key = unknown[0] if unknown[0].isprintable() else _show(unknown[0])
            raise self.error(key, "unknown key (check the spelling; see README)")


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "an array of tables",
}


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    # json.dumps escapes newlines and control characters: an error stays one line
    return repr(value) if not isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# -- checks: each returns a problem description, or None -------------------------------


def _range(lo: float, hi: float):
    def check(v: float) -> str | None:
        return None if lo <= v <= hi else f"must be {lo}–{hi}"

    return check


def _one_of(*choices: str):
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(map(repr, choices))}"

    return check


def _positive(v: float) -> str | None:
    return None if v > 0 and math.isfinite(v) else "must be a positive number"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 and math.isfinite(v) else "must be zero or more"


def _finite_nonzero(v: float) -> str | None:
    return None if v != 0 and math.isfinite(v) else "must be a finite, non-zero number"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else "must be 1–65535"


def _baudrate(v: int) -> str | None:
    return None if 300 <= v <= 1_000_000 else "must be a baud rate such as 9600 or 19200"


def _identifier_like(v: str) -> str | None:
    """Names stored as data (site, meter): printable, short, no surprises in logs."""
    if not (1 <= len(v) <= 64) or not all(c.isalnum() or c in "-_." for c in v):
        return "must be 1–64 letters, digits, '-', '_' or '.'"
    return None


def _sql_name(v: str) -> str | None:
    if not (1 <= len(v) <= 64) or not all(c.isascii() and (c.isalnum() or c == "_") for c in v):
        return "must be a SQL identifier: 1–64 ASCII letters, digits or '_'"
    return None


def _column(v: str) -> str | None:
    return check_identifier(v)


def _opt_path(v: str | None) -> Path | None:
    return Path(v) if v else None
