"""TOML config -> validated, frozen dataclasses.

Every error names the file, the key and the problem.

Defaults -> parse -> validate: the file's tables are read with `_Table`, which
knows which keys it has handed out, so any key left over is reported as unknown
instead of being silently ignored.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import math
import os
import stat
import threading
import tomllib
from collections.abc import Sequence
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

#: The longest wait any key may ask for (sync pauses and backoffs): a day, far below
#: threading.TIMEOUT_MAX, the most `Event.wait()` accepts (past it: OverflowError).
MAX_WAIT_S = min(86_400.0, threading.TIMEOUT_MAX)
#: The smallest `[buffer] max_mb`: the WAL's bound at its smallest (16 pages) and the
#: 256 KiB the buffer keeps for a prune (buffer/store.py: RESERVE_EXTRA), the empty
#: database's own pages, and room for a few rows (tests/test_config.py checks it).
MIN_MAX_MB = 0.5
MAX_MAX_MB = 1_000_000.0  # about a terabyte
#: A meter's answer timeout: what the default is and why.
#: A PAC3100 at 19200 baud answers one 40-register read in about 60 ms (85 bytes of 11
#: bits on the wire, 49 ms, plus its turnaround), so 0.3 s is five times that, and
#: three meters on one line fit in a 1 s interval even when all three are silent.
DEFAULT_TIMEOUT_S = 0.3


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

    @property
    def max_bytes(self) -> int:
        """`max_mb` in bytes."""
        return int(self.max_mb * 1024 * 1024)


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
    #: TLS towards a TCP host: "disabled", "required", "verify-ca" or "verify-identity"
    #: (MySQL's names); None: the default for the host (`tls_mode`).
    ssl_mode: str | None = None
    ssl_ca: Path | None = None
    ssl_cert: Path | None = None
    ssl_key: Path | None = None
    #: ssl_mode came from the old `ssl_verify_identity` key (doctor says what to write instead)
    ssl_mode_from_legacy_key: bool = False
    #: backlog batches through the prepared binary INSERT (False: the plain executemany path)
    fast_path: bool = True
    #: The nodes of a cluster, (host, port) each, written through one at a time
    #: (edgelog/sync/nodes.py); empty: the one server of host/port or unix_socket.
    hosts: tuple[tuple[str, int], ...] = ()
    #: False: the logger never runs DDL; it checks the table and names the ALTER to run.
    manage_schema: bool = True
    #: keep the per-minute and per-15-minute tables `<table>_1min`, `<table>_15min` (sync/aggregates.py)
    aggregates: bool = True

    def __repr__(self) -> str:  # never show the password in logs or tracebacks
        shown = "***" if self.password else None
        where = f"hosts={list(self.hosts)!r}" if self.hosts else f"host={self.host!r}, port={self.port}"
        return f"MariaDBConfig(user={self.user!r}, {where}, password={shown})"

    @property
    def is_local(self) -> bool:
        """A unix socket or a loopback address: the traffic never leaves this machine."""
        return self.unix_socket is not None or self._loopback()

    def _loopback(self) -> bool:
        """The host, or with `hosts` every node, is a loopback address."""
        return all(is_loopback(host) for host, _ in self.hosts) if self.hosts else is_loopback(self.host)

    @property
    def tls_mode(self) -> str:
        """The TLS mode in force: `ssl_mode` as written, else the default for the host:
        none over a unix socket or to a loopback address without `ssl_ca`, otherwise
        "verify-identity" (against `ssl_ca`, or the system's CA store)."""
        if self.unix_socket is not None:
            return "disabled"
        if self.ssl_mode is not None:
            return self.ssl_mode
        return "disabled" if self._loopback() and self.ssl_ca is None else "verify-identity"

    def read_password(self) -> str | None:
        """The password, read from `password_file` at each call (so it can be rotated)."""
        if self.password is not None:
            return self.password
        if self.password_file is None:
            return None
        check_private_file(self.password_file, "[mariadb] password_file", owner_only=True)
        return password_line(self.password_file)


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
class PlantConfig:
    """The plant the report's capacity figures are judged against; every key optional."""

    #: The generator's rated apparent power, kVA (0.1–10 000).
    generator_kva: float | None = None
    #: The generator's rated current per phase, A (0.1–20 000). Unset: from generator_kva at 220 V.
    rated_current_a: float | None = None
    #: The power the water gives at the generator's terminals, kW (0.1–10 000): above it an
    #: electronic load controller has no dump load left and frequency and voltage sag.
    hydraulic_kw: float | None = None

    @property
    def current_a(self) -> float | None:
        """rated_current_a, or the rated current of generator_kva at 220/127 V."""
        if self.rated_current_a is not None:
            return self.rated_current_a
        return None if self.generator_kva is None else self.generator_kva * 1000 / (3 * 127.0)


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
        """Meters with the same key share one connection (one RS485 line, one TCP gateway).
        Meters on one serial device must agree on its line settings (`parse` checks it)."""
        if self.transport == "rtu":
            return ("rtu", self.device, self.baudrate, self.bytesize, self.parity, self.stopbits)
        return ("tcp", self.host, self.port)

    def bus_label(self) -> str:
        """The bus as an operator names it: `/dev/ttyUSB0 (19200 8N2)`, `10.0.0.7:502`."""
        if self.transport == "rtu":
            return f"{self.device} ({self.baudrate} {self.bytesize}{self.parity}{self.stopbits})"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class BusBudget:
    """The meters on one bus and the longest a round of their polls can take.

    One client serves a bus, so every request on it waits as long as the most patient
    of its meters: the longest `timeout_s`, the most `retries`. A meter that does not
    answer costs that once per poll (its first unanswered request ends the poll)."""

    label: str
    meters: tuple[MeterConfig, ...]

    @property
    def timeout_s(self) -> float:
        return max(m.timeout_s for m in self.meters)

    @property
    def retries(self) -> int:
        return max(m.retries for m in self.meters)

    @property
    def worst_s(self) -> float:
        """Every meter on the bus silent: each poll waits timeout_s × (1 + retries)."""
        return len(self.meters) * self.timeout_s * (1 + self.retries)

    @property
    def shortest(self) -> MeterConfig:
        return min(self.meters, key=lambda m: m.interval_s)

    def problem(self) -> str | None:
        """Why a silent meter on this bus would cost another one (or itself) a slot, or None."""
        short = self.shortest
        if self.worst_s < short.interval_s:
            return None
        names = ", ".join(m.name for m in self.meters)
        return (
            f"bus {self.label} with {names}: {len(self.meters)} meter(s) × timeout_s {self.timeout_s:g} s "
            f"× (1 + retries {self.retries}) = {self.worst_s:g} s, which must be less than the "
            f"shortest interval_s on the bus ({short.interval_s:g} s, meter {short.name}); lower "
            "timeout_s or retries, raise interval_s, or move a meter to another bus"
        )


def bus_budgets(meters: Sequence[MeterConfig]) -> list[BusBudget]:
    """The buses of `meters`, in order of their first meter, each with its meters in order."""
    buses: dict[tuple[Any, ...], list[MeterConfig]] = {}
    for meter in meters:
        buses.setdefault(meter.bus_key(), []).append(meter)
    return [BusBudget(group[0].bus_label(), tuple(group)) for group in buses.values()]


@dataclass(frozen=True)
class Config:
    site: str
    meters: tuple[MeterConfig, ...]
    mariadb: MariaDBConfig
    buffer: BufferConfig = BufferConfig()
    sync: SyncConfig = SyncConfig()
    path: Path | None = None
    clock: ClockConfig = ClockConfig()
    plant: PlantConfig = PlantConfig()

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
    except FileNotFoundError:
        raise ConfigError(
            f"{what}: {path} does not exist; create it, readable by the service user only (chmod 600)"
        ) from None
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


def read_regular_file(path: Path, limit: int = 1 << 20) -> bytes:
    """The bytes of a small regular file. Anything else is refused before it is opened
    (a FIFO would block the read forever, a device may never end), and the file is
    opened non-blocking and checked again, so one swapped in meanwhile cannot hang us.
    Raises OSError, or ValueError saying what the path is instead."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is {_file_kind(mode)}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path} is {_file_kind(mode)}, not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a file")


def password_line(path: Path, what: str = "[mariadb] password_file") -> str:
    """The first line of a password file (the rest may be comments): never empty."""
    try:
        text = read_regular_file(path, limit=64 * 1024).decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # UnicodeDecodeError is one too
        problem = (
            "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc).removeprefix(f"{path} ")
        )
        raise ConfigError(f"{what}: {path} {problem}") from None
    line = text.split("\n", 1)[0].rstrip("\r")  # the first line, as documented
    if not line:
        raise ConfigError(f"{what}: {path} has an empty first line; the password must be on it")
    return line


def load(path: Path) -> Config:
    """Read and validate the config file at `path`."""
    try:
        raw = read_regular_file(path, limit=16 << 20)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse(data, source=str(path))
    if config.mariadb.password is not None:
        check_private_file(path, f"{path}: [mariadb] password")
    if config.mariadb.password_file is not None:
        _check_password_file(config.mariadb.password_file, f"{path}: [mariadb] password_file")
    return replace(config, path=path)


def _check_password_file(path: Path, what: str) -> None:
    """At load, what no retry can fix: not a regular file, or no password on its first
    line. A missing or too open file is not refused here: `run` keeps logging meanwhile,
    and the sync worker and sync-status report it (DEGRADED, with the fix)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what}: {path} is {_file_kind(mode)}, not a regular file")
    if os.access(path, os.R_OK):
        password_line(path, what)


def parse(data: dict[str, Any], source: str = "<config>") -> Config:
    """Validate an already-parsed TOML document."""
    top = _Table(source, "", data)
    site = top.get("site", str, check=_identifier_like)
    buffer = _parse_buffer(top.table("buffer"))
    mariadb = _parse_mariadb(top.table("mariadb", required=True))
    sync = _parse_sync(top.table("sync"))
    clock = _parse_clock(top.table("clock"))
    plant = _parse_plant(top.table("plant"))
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
    _check_lines(source, meters)
    for budget in bus_budgets(meters):
        if problem := budget.problem():
            raise ConfigError(f"{source}: [meters] {problem}")
    return Config(
        site=site, meters=meters, mariadb=mariadb, buffer=buffer, sync=sync, clock=clock, plant=plant
    )


def _parse_buffer(t: _Table) -> BufferConfig:
    d = BufferConfig()
    cfg = BufferConfig(
        path=Path(t.get("path", str, d.path.as_posix(), check=_non_empty)),
        max_mb=t.get("max_mb", float, d.max_mb, check=_range(MIN_MAX_MB, MAX_MAX_MB)),
        keep_sent_days=t.get("keep_sent_days", float, d.keep_sent_days, check=_range(0, 3650)),
        when_full=t.get("when_full", str, d.when_full, check=_one_of("drop_oldest", "drop_newest")),
        commit_every_s=t.get("commit_every_s", float, d.commit_every_s, check=_range(0, 60)),
    )
    t.done()
    return cfg


def _parse_mariadb(t: _Table) -> MariaDBConfig:
    password = t.get("password", str, None)
    password_file = t.get("password_file", str, None, check=_non_empty)
    if password is not None and password_file is not None:
        raise t.error("password", "give either password or password_file, not both")
    hosts = _parse_hosts(t)
    cfg = MariaDBConfig(
        user=t.get("user", str, check=_non_empty),
        host=t.get("host", str, "localhost", check=_non_empty),
        port=t.get("port", int, 3306, check=_port),
        unix_socket=t.get("unix_socket", str, None),
        password=password,
        password_file=Path(password_file) if password_file is not None else None,
        database=t.get("database", str, "chapada_imperial", check=_sql_name),
        table=t.get("table", str, "medicoes", check=_sql_name),
        batch_size=t.get("batch_size", int, 2000, check=_range(1, 100_000)),
        connect_timeout_s=t.get("connect_timeout_s", float, 10.0, check=_range(0.1, 3600)),
        read_timeout_s=t.get("read_timeout_s", float, 30.0, check=_range(0.1, 3600)),
        write_timeout_s=t.get("write_timeout_s", float, 30.0, check=_range(0.1, 3600)),
        ssl_ca=_opt_path(t.get("ssl_ca", str, None)),
        ssl_cert=_opt_path(t.get("ssl_cert", str, None)),
        ssl_key=_opt_path(t.get("ssl_key", str, None)),
        fast_path=t.get("fast_path", bool, True),
        hosts=hosts,
        manage_schema=t.get("manage_schema", bool, True),
        aggregates=t.get("aggregates", bool, True),
    )
    cfg = _parse_ssl_mode(t, cfg)
    t.done()
    return cfg


SSL_MODES = ("disabled", "required", "verify-ca", "verify-identity")


def _parse_ssl_mode(t: _Table, cfg: MariaDBConfig) -> MariaDBConfig:
    """`ssl_mode`, or the old `ssl_verify_identity` mapped onto it, checked against the
    other keys: a contradiction is an error, never a silent downgrade."""
    mode = t.get("ssl_mode", str, None, check=_one_of(*SSL_MODES))
    legacy = t.get("ssl_verify_identity", bool, None)
    if mode is not None and legacy is not None:
        raise t.error("ssl_verify_identity", "give ssl_mode only (it replaces this key), not both")
    if legacy is not None and cfg.unix_socket is None and (cfg.ssl_ca or cfg.ssl_cert):
        # the old key only mattered with ssl_ca/ssl_cert: TLS verified against ssl_ca
        mode = "verify-identity" if legacy else "verify-ca"
    cfg = replace(cfg, ssl_mode=mode, ssl_mode_from_legacy_key=legacy is not None)
    key = "ssl_verify_identity" if legacy is not None and mode is not None else "ssl_mode"
    if cfg.unix_socket is not None and mode not in (None, "disabled"):
        raise t.error(key, f"{mode!r} is for TCP: a unix_socket is local and uses no TLS")
    if cfg.tls_mode == "verify-ca" and cfg.ssl_ca is None:
        raise t.error(
            key,
            '"verify-ca" needs ssl_ca, the CA that signed the server\'s certificate '
            '(with the system\'s CA store, use "verify-identity")',
        )
    if cfg.unix_socket is None and cfg.tls_mode == "disabled" and (cfg.ssl_ca or cfg.ssl_cert):
        raise t.error("ssl_mode", '"disabled", but ssl_ca/ssl_cert are set: say which one you mean')
    if cfg.tls_mode == "required" and cfg.ssl_ca is not None:
        raise t.error(
            "ssl_mode", '"required" checks no certificate, but ssl_ca is set: use "verify-identity"'
        )
    if cfg.ssl_key is not None and cfg.ssl_cert is None:
        raise t.error("ssl_key", "given without ssl_cert")
    return cfg


MAX_HOSTS = 16


def _parse_hosts(t: _Table) -> tuple[tuple[str, int], ...]:
    """`[mariadb] hosts = ["db1:3306", "db2", "[::1]:3307"]`: the nodes of a cluster, in
    the order they are tried. An alternative to host/port/unix_socket, never beside them."""
    t.used.add("hosts")
    raw = t.data.get("hosts")
    if raw is None:
        return ()
    bad = raw if not isinstance(raw, list) else next((x for x in raw if not isinstance(x, str)), None)
    if bad is not None:
        raise t.error("hosts", f'must be an array of "host:port" strings, got {_show(bad)}')
    if not 1 <= len(raw) <= MAX_HOSTS:
        raise t.error("hosts", f"must name 1–{MAX_HOSTS} nodes, got {len(raw)}")
    given = [key for key in ("host", "port", "unix_socket") if key in t.data]
    if given:
        raise t.error("hosts", f"give either hosts or {'/'.join(given)}, not both")
    nodes: list[tuple[str, int]] = []
    for text in raw:
        node = parse_address(text)
        if isinstance(node, str):
            raise t.error("hosts", f"{node}, got {_show(text)}")
        if node in nodes:
            raise t.error("hosts", f"{_show(text)} is listed twice")
        nodes.append(node)
    return tuple(nodes)


def parse_address(text: str, default_port: int = 3306) -> tuple[str, int] | str:
    """'host', 'host:port', '[v6]' or '[v6]:port' -> (host, port); else the problem."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            return "an IPv6 address goes in brackets: [2001:db8::1]:3306"
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        return "an IPv6 address goes in brackets: [2001:db8::1]:3306"
    else:
        host, colon, port_text = text.partition(":")
        port_text = port_text if colon else None
    if not host or any(c.isspace() or not c.isprintable() or c in "/@,;[]" for c in host):
        return "each must be a host name or address, optionally with :port"
    if port_text is None:
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return "a port must be 1–65535"
    return host, int(port_text)


def _parse_sync(t: _Table) -> SyncConfig:
    cfg = SyncConfig(
        interval_s=t.get("interval_s", float, 5.0, check=_range(0.05, MAX_WAIT_S)),
        backoff_initial_s=t.get("backoff_initial_s", float, 1.0, check=_range(0.05, MAX_WAIT_S)),
        backoff_max_s=t.get("backoff_max_s", float, 300.0, check=_range(0.05, MAX_WAIT_S)),
        quarantine_after=t.get("quarantine_after", int, 3, check=_range(1, 1000)),
    )
    t.done()
    return cfg


def _parse_clock(t: _Table) -> ClockConfig:
    cfg = ClockConfig(require_sync=t.get("require_sync", bool, True))
    t.done()
    return cfg


def _parse_plant(t: _Table) -> PlantConfig:
    cfg = PlantConfig(
        generator_kva=t.get("generator_kva", float, None, check=_range(0.1, 10_000)),
        rated_current_a=t.get("rated_current_a", float, None, check=_range(0.1, 20_000)),
        hydraulic_kw=t.get("hydraulic_kw", float, None, check=_range(0.1, 10_000)),
    )
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
        timeout_s=t.get("timeout_s", float, DEFAULT_TIMEOUT_S, check=_range(0.01, 60)),
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
            unit=rt.get("unit", str, base.unit if base else "", check=_unit),
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


def _check_lines(source: str, meters: tuple[MeterConfig, ...]) -> None:
    """Meters on one serial device share its line settings: one device, one bus."""
    first: dict[str, MeterConfig] = {}
    for meter in meters:
        if meter.transport != "rtu" or meter.device is None:
            continue
        other = first.setdefault(meter.device, meter)
        if other.bus_key() != meter.bus_key():
            raise ConfigError(
                f"{source}: [meters] meter {meter.name!r} uses {meter.bus_label()} but meter "
                f"{other.name!r} {other.bus_label()}: meters on one serial device share its "
                "baudrate, bytesize, parity and stopbits"
            )


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
        return None if lo <= v <= hi else f"must be {_num(lo)}–{_num(hi)}"

    return check


def _num(x: float) -> str:
    """A bound as a person writes it: 86400, not 86400.0; 0.05 as is."""
    return str(int(x)) if float(x).is_integer() else repr(x)


def _one_of(*choices: str):
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(map(repr, choices))}"

    return check


def _finite_nonzero(v: float) -> str | None:
    return None if v != 0 and math.isfinite(v) else "must be a finite, non-zero number"


def _non_empty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _port(v: int) -> str | None:
    return None if 1 <= v <= 65535 else "must be 1–65535"


def _baudrate(v: int) -> str | None:
    return None if 300 <= v <= 1_000_000 else "must be 300–1000000, a baud rate such as 9600 or 19200"


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


#: Longest register unit: it becomes a MariaDB column comment (and a CSV header).
UNIT_MAX = 64


def _unit(v: str) -> str | None:
    """A unit ends up in SQL text (a column comment): printable, no backslash (its meaning
    in a string literal depends on the server's sql_mode), short."""
    if len(v) > UNIT_MAX:
        return f"must be at most {UNIT_MAX} characters"
    if not v.isprintable() or "\\" in v:
        return "must be printable text without control characters or backslashes"
    return None


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (also as an IPv4-mapped address)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _opt_path(v: str | None) -> Path | None:
    return Path(v) if v else None
