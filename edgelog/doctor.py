"""`edgelog doctor`: one command an operator runs on site. Each check prints
OK / WARN / FAIL, what it saw, and for a failure what to do about it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import clock, human
from . import config as config_mod
from .buffer import Buffer
from .errors import EdgelogError, MeterBadAnswer, MeterError, MeterExceptionResponse
from .meter import close_meters, open_meters
from .sync import MariaDBSink, aggregates, wire
from .sync.connect import pymysql_version
from .sync.mariadb import cause
from .sync.worker import SYNC_PATH_KEY

#: Privileges the logger's MariaDB user needs, and ones it must not have.
NEEDED = {"SELECT", "INSERT", "UPDATE", "CREATE", "ALTER", "INDEX"}
#: What the DDL needs: not asked for with `[mariadb] manage_schema = false`.
DDL = {"CREATE", "ALTER", "INDEX"}
TOO_MUCH = {"DELETE", "DROP", "ALL PRIVILEGES", "GRANT OPTION", "SUPER", "FILE"}
T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    status: str  # "OK" | "WARN" | "FAIL"
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<16} {self.detail}"
        return text + (f"\n      {'':<16} -> {self.fix}" if self.fix else "")


def ok(name: str, detail: str) -> Check:
    return Check("OK", name, detail)


def warn(name: str, detail: str, fix: str = "") -> Check:
    return Check("WARN", name, detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check("FAIL", name, detail, fix)


def run(path: Path) -> Iterator[Check]:
    """All checks, in the order an operator would walk them."""
    try:
        cfg = config_mod.load(path)
    except EdgelogError as exc:
        yield fail("config", str(exc), "fix the file (see README, Configuration reference)")
        return
    yield ok("config", f"{path}: site {cfg.site!r}, {len(cfg.meters)} meter(s)")
    yield from _serial(cfg)
    yield from _meters(cfg)
    yield from _buffer(cfg)
    yield from _tls(cfg.mariadb)
    yield from _mariadb(cfg)  # and the aggregate tables
    yield _sync_path(cfg)
    yield _clock()
    yield _service()


def _serial(cfg: config_mod.Config) -> Iterator[Check]:
    devices = [m.device or "" for m in cfg.meters if m.transport == "rtu" and "://" not in (m.device or "")]
    for device in dict.fromkeys(devices):  # each once, in the config's order
        yield _serial_device(Path(device))


def _serial_device(device: Path) -> Check:
    if not device.exists():
        fix = "plug the RS485 adapter in; `ls /dev/ttyUSB* /dev/serial/by-id/` lists adapters"
        return fail("serial device", f"{device} does not exist", fix)
    if not os.access(device, os.R_OK | os.W_OK):
        fix = "the service user must be in group dialout: usermod -aG dialout edgelog"
        return fail("serial device", f"{device}: no read/write permission", fix)
    return ok("serial device", f"{device} present and accessible")


def _meters(cfg: config_mod.Config) -> Iterator[Check]:
    meters = open_meters(cfg.meters)
    try:
        for meter in meters:
            try:
                reading = meter.read()
            except MeterError as exc:
                yield fail(f"meter {meter.name}", str(exc), meter_fix(meter.config, exc))
                continue
            shown = ", ".join(
                f"{k}={v:.1f}"
                for k, v in reading.values.items()
                if v is not None and k in ("tensao_l1_n", "corrente_l1", "frequencia")
            )
            answered = f"answered {len(reading.values)} values in {len(meter.plan)} request(s): {shown}"
            yield ok(f"meter {meter.name}", answered)
    finally:
        close_meters(meters)


def meter_fix(c: config_mod.MeterConfig, exc: MeterError) -> str:
    """What to check for a failed poll: an exception answer means the line works."""
    if isinstance(exc, MeterExceptionResponse):
        return (
            f"the meter answered, so wiring and line settings work; check the register map "
            f"(profile {c.profile!r}, [[meters.registers]] addresses and function) and that "
            f"unit id {c.unit_id} is this meter"
        )
    line = (
        f"unit id {c.unit_id}, {c.baudrate} baud, parity {c.parity}, {c.stopbits} stop bits "
        "(on the PAC3100 front panel)"
    )
    if isinstance(exc, MeterBadAnswer):
        where = "" if c.transport == "rtu" else f" behind {c.host}:{c.port}"
        return (
            f"something answered{where}, but not validly: line noise or missing termination, "
            f"two devices with unit id {c.unit_id}, or a device that is not a {c.profile}"
        )
    if c.transport == "rtu":
        return f"no answer: check A/B wiring and termination (120 Ω at both ends), then {line}"
    return (
        f"no answer: check that {c.host}:{c.port} is reachable and speaks Modbus TCP, and unit id "
        f"{c.unit_id}; for a meter behind a serial gateway, also its wiring, termination, baud, "
        "parity and stop bits"
    )


def _buffer(cfg: config_mod.Config) -> Iterator[Check]:
    path, limit = cfg.buffer.path, cfg.buffer.max_bytes
    if not path.exists():
        yield warn("buffer", f"{path} does not exist yet", "it is created by `edgelog run`")
    else:
        try:
            s = _open(path, lambda buffer: buffer.status())
        except EdgelogError as exc:
            yield fail("buffer", str(exc), "see docs/guarantees.md, 'Corrupt buffer'")
        else:
            seen = f"quick_check ok, {human.size(s.size_bytes)} of {human.size(limit)}, {s.unsent} unsent"
            status = "WARN" if s.size_bytes > 0.8 * limit else "OK"
            yield Check(status, "buffer", f"{seen}, {s.dropped_total} dropped")
    free = shutil.disk_usage(path.parent if path.parent.exists() else "/").free
    if free > 2 * limit:
        yield ok("disk", f"{human.size(free)} free for the buffer")
    else:
        yield warn("disk", f"{human.size(free)} free for the buffer", "free space, or lower [buffer] max_mb")


def _open(path: Path, read: Callable[[Buffer], T]) -> T:
    """`read(buffer)` on the buffer at `path`, opened for reading only."""
    buffer = Buffer(path, create=False)
    try:
        return read(buffer)
    finally:
        buffer.close()


def _recorded(path: Path, key: str) -> str | None:
    """What a running logger recorded in the buffer under `key` (None: nothing, or no
    buffer to read: the buffer check says why)."""
    if not path.exists():
        return None
    try:
        return _open(path, lambda buffer: buffer.get_meta(key))
    except EdgelogError:
        return None


def _mariadb(cfg: config_mod.Config) -> Iterator[Check]:
    """The login and the user's privileges, then the aggregate tables, on one connection."""
    sink = MariaDBSink(cfg.mariadb, cfg.site)
    try:
        try:
            grants = sink.grants()
        except EdgelogError as exc:
            fix = "readings wait in the buffer meanwhile; check the server, the network, the password file"
            yield fail("mariadb", str(exc), fix)
            yield _aggregates(cfg, None)
            return
        yield _privileges_check(cfg.mariadb, sink.where, _privileges(grants, cfg.mariadb.database))
        yield _aggregates(cfg, sink)
    finally:
        sink.close()


def _privileges_check(m: config_mod.MariaDBConfig, where: str, have: set[str]) -> Check:
    needed = NEEDED if m.manage_schema else NEEDED - DDL
    missing, extra = needed - have, have & TOO_MUCH
    if missing:
        grant = f"GRANT {', '.join(sorted(needed))} ON {m.database}.* TO the logger user"
        return fail("mariadb", f"logged in, but missing {', '.join(sorted(missing))}", grant)
    if extra:
        more = f"logged in; the user has more than it needs: {', '.join(sorted(extra))}"
        return warn("mariadb", more, "give the logger its own user: schema/install-mariadb")
    return ok("mariadb", f"logged in as {where} with exactly the privileges it needs")


def _aggregates(cfg: config_mod.Config, sink: MariaDBSink | None) -> Check:
    """Whether the per-minute and 15-minute tables are kept, and kept up: what the running
    logger recorded, and (with `sink`, logged in) whether MariaDB has them."""
    m = cfg.mariadb
    if not m.aggregates:
        return ok("aggregates", "off ([mariadb] aggregates = false): reports and exports read the raw rows")
    tables = f"{m.table}_1min and {m.table}_15min"
    failure = aggregates.Failure.from_json(_recorded(cfg.buffer.path, aggregates.FAILURE_KEY))
    if failure is not None:
        behind = human.duration(time.time() - failure.since)
        pending = f"{failure.pending_minutes} min pending"
        seen = f"{tables} not updated for {behind} ({pending}): {cause(failure.error)}"
        return warn("aggregates", seen, "nothing is lost: once the cause is fixed the logger recomputes them")
    if sink is None:
        return warn("aggregates", f"{tables}: not checked, MariaDB did not answer (above)")
    try:
        missing = aggregates.missing_tables(sink)
    except EdgelogError as exc:
        return warn("aggregates", f"{tables}: not checked: {exc}")
    if missing and not m.manage_schema:
        seen = f"{', '.join(missing)} missing, and [mariadb] manage_schema = false"
        return fail("aggregates", seen, "have the DBA run the CREATE TABLE for it from `edgelog schema`")
    if missing:
        return warn(
            "aggregates", f"{', '.join(missing)} not there yet", "the logger creates it at its next sync"
        )
    return ok("aggregates", f"{tables} kept by the logger, updated after each sync round")


def _tls(m: config_mod.MariaDBConfig) -> Iterator[Check]:
    """How the link to MariaDB is protected (docs/guarantees.md §10), and the risk if it is not."""
    if m.ssl_mode_from_legacy_key:
        mode = m.tls_mode
        fix = (
            f'write ssl_mode = "{mode}" instead (same meaning)'
            if m.ssl_mode is not None
            else "remove it: without ssl_ca it changed nothing (the default below applies)"
        )
        yield warn("tls", "[mariadb] ssl_verify_identity is the old form of ssl_mode (still understood)", fix)
    yield _tls_mode(m)


def _tls_mode(m: config_mod.MariaDBConfig) -> Check:
    mode = m.tls_mode
    host = ", ".join(h for h, _ in m.hosts) if m.hosts else m.host  # with hosts: every node
    if m.unix_socket is not None:
        return ok("tls", f"unix socket {m.unix_socket}: local, needs no TLS")
    if mode == "disabled" and m.is_local:
        return ok("tls", f"{host} is this machine (loopback): the traffic never leaves it")
    if mode == "disabled":
        risk = (
            f'ssl_mode = "disabled" towards {host}: readings and the login cross the network '
            "unencrypted to a server nobody verified; anyone on the path can read or change them, "
            "or pose as the server (edgelog still never sends it the password in cleartext)"
        )
        fix = 'enable TLS on the server, then set ssl_mode = "verify-identity" (docs/guarantees.md §10)'
        return warn("tls", risk, fix)
    if mode == "required":
        risk = (
            f"TLS to {host} without checking its certificate: an eavesdropper reads nothing, "
            "but a man in the middle reads and changes everything"
        )
        fix = 'set ssl_ca (the CA of the server\'s certificate) and ssl_mode = "verify-identity"'
        return warn("tls", risk, fix)
    against = m.ssl_ca or "the system's CA store"
    what = "certificate and host name" if mode == "verify-identity" else "certificate (not the host name)"
    return ok("tls", f"{mode}: {host}'s {what} checked against {against}")


def _sync_path(cfg: config_mod.Config) -> Check:
    """Whether backlogs can take the fast path, and whether the running logger fell back."""
    if not cfg.mariadb.fast_path:
        return ok("sync path", "plain INSERT path ([mariadb] fast_path = false)")
    problem = wire.fast_path_problem()
    if problem:
        seen = f"fast path unavailable ({problem}): backlogs take the plain path, slower, nothing lost"
        return warn("sync path", seen, "install the tested versions again: sudo scripts/install")
    recorded = _recorded(cfg.buffer.path, SYNC_PATH_KEY)
    if recorded and recorded.startswith("plain (fast path"):
        fix = "nothing is lost; journalctl -u edgelog shows the failure; a restart tries the fast path again"
        return warn("sync path", f"the logger uses the {recorded}", fix)
    return ok("sync path", f"binary fast path available (PyMySQL {pymysql_version()})")


def _privileges(grants: list[str], database: str) -> set[str]:
    have: set[str] = set()
    for grant in grants:
        head, _, target = grant.partition(" ON ")
        target = target.split(" TO ")[0].replace("`", "").strip()
        if target not in ("*.*", f"{database}.*"):
            continue
        privs = head.removeprefix("GRANT ").split(",")
        have |= {p.strip().upper() for p in privs if p.strip().upper() != "USAGE"}
        if "WITH GRANT OPTION" in grant:
            have.add("GRANT OPTION")
    if "ALL PRIVILEGES" in have:
        have |= NEEDED | {"DELETE", "DROP"}
    return have


def _clock() -> Check:
    now = time.time()
    synced = clock.kernel_synchronised()
    when = human.instant(now)
    if now < clock.EARLIEST_PLAUSIBLE:
        fix = "readings are kept (flagged clock_ok=0); restore time sync (NTP/chrony) or set the date"
        return fail("clock", f"{when} is before 2026: the clock restarted in the past", fix)
    if synced is False:
        fix = "enable time sync: systemctl enable --now systemd-timesyncd (needs network)"
        return warn("clock", f"{when}, not synchronised (readings flagged clock_ok=0)", fix)
    return ok("clock", f"{when}, synchronised" if synced else f"{when} (sync state unknown)")


def _service(run_cmd: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> Check:
    if not shutil.which("systemctl") or not Path("/run/systemd/system").is_dir():
        return warn("service", "systemd is not running here: cannot tell")
    state = run_cmd(["systemctl", "is-active", "edgelog.service"], capture_output=True, text=True)
    active = state.stdout.strip()
    if active == "active":
        return ok("service", "edgelog.service is active")
    fix = "journalctl -u edgelog -n 50 shows why; systemctl restart edgelog"
    return fail("service", f"edgelog.service is {active or 'unknown'}", fix)
