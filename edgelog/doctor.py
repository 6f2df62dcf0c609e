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

from . import clock
from . import config as config_mod
from .buffer import Buffer
from .errors import EdgelogError, MeterBadAnswer, MeterError, MeterExceptionResponse
from .meter import close_meters, open_meters
from .sync import MariaDBSink, wire
from .sync.connect import pymysql_version
from .sync.worker import SYNC_PATH_KEY

#: Privileges the logger's MariaDB user needs, and ones it must not have.
NEEDED = {"SELECT", "INSERT", "UPDATE", "CREATE", "ALTER", "INDEX"}
#: What the DDL needs: not asked for with `[mariadb] manage_schema = false`.
DDL = {"CREATE", "ALTER", "INDEX"}
TOO_MUCH = {"DELETE", "DROP", "ALL PRIVILEGES", "GRANT OPTION", "SUPER", "FILE"}


@dataclass(frozen=True)
class Check:
    status: str  # "OK" | "WARN" | "FAIL"
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<16} {self.detail}"
        return text + (f"\n      {'':<16} -> {self.fix}" if self.fix else "")


def run(path: Path) -> Iterator[Check]:
    """All checks, in the order an operator would walk them."""
    try:
        cfg = config_mod.load(path)
    except EdgelogError as exc:
        yield Check("FAIL", "config", str(exc), "fix the file (see README, Configuration reference)")
        return
    yield Check("OK", "config", f"{path}: site {cfg.site!r}, {len(cfg.meters)} meter(s)")
    yield from _serial(cfg)
    yield from _meters(cfg)
    yield from _buffer(cfg)
    yield from _tls(cfg.mariadb)
    yield from _mariadb(cfg)
    yield _sync_path(cfg)
    yield _clock()
    yield _service()


def _serial(cfg: config_mod.Config) -> Iterator[Check]:
    seen = set()
    for m in cfg.meters:
        if m.transport != "rtu" or m.device in seen or "://" in (m.device or ""):
            continue
        seen.add(m.device)
        device = Path(m.device or "")
        if not device.exists():
            yield Check(
                "FAIL",
                "serial device",
                f"{device} does not exist",
                "plug the RS485 adapter in; `ls /dev/ttyUSB* /dev/serial/by-id/` lists adapters",
            )
        elif not os.access(device, os.R_OK | os.W_OK):
            yield Check(
                "FAIL",
                "serial device",
                f"{device}: no read/write permission",
                "the service user must be in group dialout: usermod -aG dialout edgelog",
            )
        else:
            yield Check("OK", "serial device", f"{device} present and accessible")


def _meters(cfg: config_mod.Config) -> Iterator[Check]:
    meters = open_meters(cfg.meters)
    try:
        for meter in meters:
            try:
                reading = meter.read()
            except MeterError as exc:
                yield Check("FAIL", f"meter {meter.name}", str(exc), meter_fix(meter.config, exc))
                continue
            shown = ", ".join(
                f"{k}={v:.1f}"
                for k, v in reading.values.items()
                if v is not None and k in ("tensao_l1_n", "corrente_l1", "frequencia")
            )
            yield Check(
                "OK",
                f"meter {meter.name}",
                f"answered {len(reading.values)} values in {len(meter.plan)} request(s): {shown}",
            )
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
    path = cfg.buffer.path
    if not path.exists():
        yield Check("WARN", "buffer", f"{path} does not exist yet", "it is created by `edgelog run`")
    else:
        try:
            buffer = Buffer(path, create=False)
            try:
                s = buffer.status()
            finally:
                buffer.close()
        except EdgelogError as exc:
            yield Check("FAIL", "buffer", str(exc), "see docs/guarantees.md, 'Corrupt buffer'")
        else:
            limit = cfg.buffer.max_mb * 1024 * 1024
            status = "WARN" if s.size_bytes > 0.8 * limit else "OK"
            yield Check(
                status,
                "buffer",
                f"quick_check ok, {_mib(s.size_bytes)} of {_mib(limit)}, {s.unsent} unsent, "
                f"{s.dropped_total} dropped",
            )
    free = shutil.disk_usage(path.parent if path.parent.exists() else "/").free
    status = "OK" if free > 2 * cfg.buffer.max_mb * 1024 * 1024 else "WARN"
    yield Check(
        status,
        "disk",
        f"{_mib(free)} free for the buffer",
        "" if status == "OK" else "free space, or lower [buffer] max_mb",
    )


def _mariadb(cfg: config_mod.Config) -> Iterator[Check]:
    sink = MariaDBSink(cfg.mariadb, cfg.site)
    try:
        grants = sink.grants()
    except EdgelogError as exc:
        yield Check(
            "FAIL",
            "mariadb",
            str(exc),
            "readings wait in the buffer meanwhile; check the server, the network, the password file",
        )
        return
    finally:
        sink.close()
    have = _privileges(grants, cfg.mariadb.database)
    needed = NEEDED if cfg.mariadb.manage_schema else NEEDED - DDL
    missing, extra = needed - have, have & TOO_MUCH
    if missing:
        yield Check(
            "FAIL",
            "mariadb",
            f"logged in, but missing {', '.join(sorted(missing))}",
            f"GRANT {', '.join(sorted(needed))} ON {cfg.mariadb.database}.* TO the logger user",
        )
    elif extra:
        yield Check(
            "WARN",
            "mariadb",
            f"logged in; the user has more than it needs: {', '.join(sorted(extra))}",
            "give the logger its own user: schema/install-mariadb",
        )
    else:
        yield Check("OK", "mariadb", f"logged in as {sink.where} with exactly the privileges it needs")


def _tls(m: config_mod.MariaDBConfig) -> Iterator[Check]:
    """How the link to MariaDB is protected (docs/guarantees.md §10), and the risk if it is not."""
    mode = m.tls_mode
    host = ", ".join(h for h, _ in m.hosts) if m.hosts else m.host  # with hosts: every node
    if m.ssl_mode_from_legacy_key:
        yield Check(
            "WARN",
            "tls",
            "[mariadb] ssl_verify_identity is the old form of ssl_mode (still understood)",
            f'write ssl_mode = "{mode}" instead (same meaning)'
            if m.ssl_mode is not None
            else "remove it: without ssl_ca it changed nothing (the default below applies)",
        )
    if m.unix_socket is not None:
        yield Check("OK", "tls", f"unix socket {m.unix_socket}: local, needs no TLS")
    elif mode == "disabled" and m.is_local:
        yield Check("OK", "tls", f"{host} is this machine (loopback): the traffic never leaves it")
    elif mode == "disabled":
        yield Check(
            "WARN",
            "tls",
            f'ssl_mode = "disabled" towards {host}: readings and the login cross the network '
            "unencrypted to a server nobody verified; anyone on the path can read or change them, "
            "or pose as the server (edgelog still never sends it the password in cleartext)",
            'enable TLS on the server, then set ssl_mode = "verify-identity" (docs/guarantees.md §10)',
        )
    elif mode == "required":
        yield Check(
            "WARN",
            "tls",
            f"TLS to {host} without checking its certificate: an eavesdropper reads nothing, "
            "but a man in the middle reads and changes everything",
            'set ssl_ca (the CA of the server\'s certificate) and ssl_mode = "verify-identity"',
        )
    else:
        against = m.ssl_ca or "the system's CA store"
        what = "certificate and host name" if mode == "verify-identity" else "certificate (not the host name)"
        yield Check("OK", "tls", f"{mode}: {host}'s {what} checked against {against}")


def _sync_path(cfg: config_mod.Config) -> Check:
    """Whether backlogs can take the fast path, and whether the running logger fell back."""
    if not cfg.mariadb.fast_path:
        return Check("OK", "sync path", "plain INSERT path ([mariadb] fast_path = false)")
    problem = wire.fast_path_problem()
    if problem:
        return Check(
            "WARN",
            "sync path",
            f"fast path unavailable ({problem}): backlogs take the plain path, slower, nothing lost",
            "install the tested versions again: sudo scripts/install",
        )
    recorded = _recorded_sync_path(cfg.buffer.path)
    if recorded and recorded.startswith("plain (fast path"):
        return Check(
            "WARN",
            "sync path",
            f"the logger uses the {recorded}",
            "nothing is lost; journalctl -u edgelog shows the failure; a restart tries the fast path again",
        )
    return Check("OK", "sync path", f"binary fast path available (PyMySQL {pymysql_version()})")


def _recorded_sync_path(path: Path) -> str | None:
    if not path.exists():
        return None
    try:
        buffer = Buffer(path, create=False)
    except EdgelogError:
        return None  # the buffer check says why
    try:
        return buffer.get_meta(SYNC_PATH_KEY)
    finally:
        buffer.close()


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
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    if now < clock.EARLIEST_PLAUSIBLE:
        return Check(
            "FAIL",
            "clock",
            f"{when} is before 2026: the clock restarted in the past",
            "readings are kept (flagged clock_ok=0); restore time sync (NTP/chrony) or set the date",
        )
    if synced is False:
        return Check(
            "WARN",
            "clock",
            f"{when}, not synchronised (readings flagged clock_ok=0)",
            "enable time sync: systemctl enable --now systemd-timesyncd (needs network)",
        )
    return Check("OK", "clock", f"{when}, synchronised" if synced else f"{when} (sync state unknown)")


def _service(run_cmd: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> Check:
    if not shutil.which("systemctl") or not Path("/run/systemd/system").is_dir():
        return Check("WARN", "service", "systemd is not running here: cannot tell")
    state = run_cmd(["systemctl", "is-active", "edgelog.service"], capture_output=True, text=True)
    active = state.stdout.strip()
    if active == "active":
        return Check("OK", "service", "edgelog.service is active")
    return Check(
        "FAIL",
        "service",
        f"edgelog.service is {active or 'unknown'}",
        "journalctl -u edgelog -n 50 shows why; systemctl restart edgelog",
    )


def _mib(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"
