"""The systemd side: the unit passes `systemd-analyze verify`, allows the clock check's
system calls, and `edgelog run` speaks the notify protocol: READY=1 once, WATCHDOG=1
while every bus thread makes progress, and no pings while one hangs (so systemd's
WatchdogSec= would restart it). The unit under a real systemd as PID 1:
tests/test_systemd_boot.py."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, meter_toml, running_logger, write_config

UNIT = ROOT / "systemd" / "edgelog.service"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this venv's edgelog.
    edgelog_bin = Path(sys.executable).parent / "edgelog"
    unit = tmp_path / "edgelog.service"
    unit.write_text(UNIT.read_text().replace("/opt/edgelog/venv/bin/edgelog", str(edgelog_bin)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        # verify runs outside a booted system here; only lines about our unit count
        if "edgelog.service" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_every_unit_setting_has_a_comment_saying_why() -> None:
    lines = UNIT.read_text().splitlines()

    def is_setting(line: str) -> bool:
        return "=" in line and not line.startswith("#")

    for i, line in enumerate(lines):
        if is_setting(line):
            j = i - 1
            while j >= 0 and is_setting(lines[j]):  # a group of settings shares one comment
                j -= 1
            assert j >= 0 and lines[j].startswith("#"), f"no comment above: {line}"


def test_unit_essentials() -> None:
    text = UNIT.read_text()
    for setting in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "User=edgelog",
        "SupplementaryGroups=dialout",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/edgelog",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
    ):
        assert setting in text, setting
    assert "mariadb.service" not in text.split("[Service]")[0], "must not need MariaDB to start"


def _settings(name: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(f"{name}=")]


def test_system_call_filter_allows_the_clock_check_but_not_setting_the_clock() -> None:
    """adjtimex() (clock_adjtime/clock_adjtime64 underneath) is in @clock, not @system-service:
    without them systemd 252 killed the service with SIGSYS at its first reading. No
    SystemCallErrorNumber=: a refused call must kill, never fail quietly (the clock check
    would then switch itself off). Without CAP_SYS_TIME the calls can only read the clock.
    tests/test_systemd_boot.py runs the unit under a real systemd."""
    allowed = " ".join(_settings("SystemCallFilter")).split()
    assert "@system-service" in allowed
    assert {"adjtimex", "clock_adjtime", "clock_adjtime64"} <= set(allowed)
    assert not any(s.startswith("~") or s == "@clock" for s in allowed), allowed  # no deny list, no settime
    assert _settings("SystemCallErrorNumber") == []
    assert _settings("CapabilityBoundingSet") == [""] and _settings("AmbientCapabilities") == [""]
    assert _settings("ProtectClock") == []  # it would also block the read-only adjtimex()


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def _messages(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        got.append((time.monotonic(), data.decode()))
    return got


def test_run_sends_ready_and_watchdog_and_stops_pinging_while_a_bus_hangs(
    tmp_path, simulator, sim2, logger_db
):
    """Two buses. A poll that hangs on one of them (a driver blocking for good: injected by
    tests/inject/sitecustomize.py, as pymodbus itself bounds every request) stops the pings
    once it is stuck beyond what a poll may take, though the other bus goes on polling;
    the pings resume when it moves again."""
    notify = tmp_path / "notify.sock"
    sock = _listen(notify)
    hang = tmp_path / "hang"
    config = write_config(
        tmp_path,
        logger_db.toml(),
        meter_toml(simulator.port, interval_s=0.5),
        meter_toml(sim2.port, name="pac2", interval_s=0.5),
    )
    watchdog = {"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "1000000"}
    with running_logger(config, fault=f"hang:{hang}", env=watchdog, timeout=60) as logger:
        try:
            healthy = _messages(sock, 4.0)
            texts = [m for _, m in healthy]
            assert any(m.startswith("READY=1") for m in texts), texts
            pings = [t for t, m in healthy if m == "WATCHDOG=1"]
            assert len(pings) >= 5, texts
            # never a gap as long as WATCHDOG_USEC (1 s): systemd would kill the service
            assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0

            # pac2's poll hangs: its bus stops moving. The stall limit is a poll's bound
            # (2 × 0.375 s) + 0.5 s + 5 s of slack: the pings stop within ~6.3 s of its last
            # beat and stay stopped, while pac1, on the other bus, goes on polling.
            hang.write_text("pac2\n")
            hung_at = time.monotonic()
            served = len(simulator.sim.served)
            during = [t for t, m in _messages(sock, 10.0) if m == "WATCHDOG=1"]
            last = max(during, default=hung_at)
            assert last - hung_at < 8.0, "pings went on while a bus hung"
            assert time.monotonic() - last > 2.0, "pings resumed while the bus still hung"
            assert len(simulator.sim.served) - served >= 15, "the other bus must keep polling (0.5 s)"
            text = logger.text()
            assert f"bus 127.0.0.1:{sim2.port}: no progress for" in text and "watchdog pings withheld" in text
            assert f"bus 127.0.0.1:{simulator.port}: no progress" not in text

            hang.unlink()
            again = [m for _, m in _messages(sock, 3.0) if m == "WATCHDOG=1"]
            assert len(again) >= 2, "the pings resume once the bus moves again"
            assert "progresses again; watchdog pings resume" in logger.text()
            assert logger.alive(), logger.text()
        finally:
            hang.unlink(missing_ok=True)
    stop_msgs = [m for _, m in _messages(sock, 0.5)]
    sock.close()
    assert "STOPPING=1" in stop_msgs or logger.proc.returncode == 0
