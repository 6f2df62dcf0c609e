"""The installed service under a real systemd (PID 1), as on the Pi.

This machine boots itself as a container: `systemd-nspawn -b` on an overlay whose
lower layer is `/` and whose upper layer is a tmpfs this module mounts (so the upper
layer, the container's "SD card", survives a reboot of the container). Inside,
the README's steps run unchanged: `schema/install-mariadb` (on a MariaDB found
stopped), `scripts/install` (from a copy of this checkout), then the shipped
example config with its meter pointed at `edgelog simulate`. Then: 60 s up with
no restart and watchdog pings, `kill -9` of the main process, a reboot, and every
reading in `chapada_imperial.medicoes` exactly once.

What nspawn needs here, found by trying (systemd 252, Debian 12, a host without
systemd as PID 1 and with /run on disk):

* `--register=no --keep-unit`: otherwise nspawn asks the host's system bus for a
  scope and machine registration and stops ("Failed to open system bus").
  So there is no `machinectl` / `systemd-run -M` here.
* A private mount namespace (`unshare -m`) with a tmpfs on /run/systemd/nspawn:
  nspawn clears /run/systemd/nspawn/propagate/<machine> and refuses to where /run
  is not a tmpfs ("Attempted to remove disk file system ... we can't allow
  that"). The overlay is mounted inside that namespace too, so both vanish with
  nspawn; only the upper-layer tmpfs lives on the host, removed at the end.
* `--system-call-filter="adjtimex clock_adjtime clock_adjtime64"`: nspawn's own
  seccomp filter answers clock_adjtime with EPERM; this makes the container
  behave like the Pi, where only the unit's own filter applies.
* `--link-journal=no`: the container has the host's machine id.

Commands reach the container as `nsenter -t <its PID 1> -a systemd-run --wait
--pipe --quiet -- CMD`: nsenter enters every namespace of the container's PID 1,
systemd-run makes the command a transient unit of the container's systemd (a
clean environment, its cgroup; `--uid=edgelog` for the service user).

Kept apart from the host: timers, systemd-timesyncd and PostgreSQL (enabled in
this machine image) are masked; the container's MariaDB gets `skip-networking`
(the network is the host's: its 127.0.0.1:3306 could be taken) and edgelog
reaches it on its unix socket, as the example config does; the simulator listens
on a port found free on the host.

Skips (CI's EDGELOG_NO_SKIPS=1 then fails) only where a container cannot boot:
not root, no systemd-nspawn/unshare/nsenter, no overlayfs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, wait_for, wait_or_kill

UNIT_FILE = ROOT / "systemd" / "edgelog.service"
SRC = "/edgelog-src"  # the copy of this checkout inside the container
CONFIG = "/etc/edgelog/edgelog.toml"
BUFFER = "/var/lib/edgelog/buffer.sqlite3"
ROWS_SQL = "SELECT seq, measured_at, error IS NULL FROM readings"
EDGELOG = "/opt/edgelog/venv/bin/edgelog"
SIM_UNIT = "edgelog-sim"
STEADY_S = 60.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Lines that must never appear in the service's journal: a system call the filter refused, a
#: missed watchdog, a unit-file setting systemd ignored ("…/edgelog.service:12: Unknown key …",
#: "Failed to parse system call, ignoring"), a sandboxing setting that stopped the start.
BAD_JOURNAL = re.compile(
    r"status=31/SYS|SIGSYS|[Ww]atchdog timeout|code=killed, status=6/ABRT"
    r"|edgelog\.service[^ ]*:\d+: |Failed at step|Failed to set up"
)
#: Masked besides every timer: the clock stays the host's; PostgreSQL is enabled on this machine image.
MASKED = ("systemd-timesyncd.service", "postgresql.service")
SKIP_NETWORKING = (
    "[mysqld]\n# this container shares the host's network: only the unix socket\nskip-networking\n"
)
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "build", ".demo", ".soak"
)

# unshare -m: a private mount namespace for nspawn's propagate tmpfs and the overlay ($1: layers, $2: name).
BOOT_SCRIPT = """
set -e
mkdir -p /run/systemd/nspawn
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
mount -t overlay overlay -o lowerdir=/,upperdir="$1/upper",workdir="$1/work" "$1/root"
exec systemd-nspawn --directory="$1/root" --boot --machine="$2" --register=no --keep-unit \
    --link-journal=no --console=pipe --system-call-filter="adjtimex clock_adjtime clock_adjtime64"
"""


def _cannot_boot() -> str | None:
    if os.geteuid() != 0:
        return "booting a container needs root"
    for tool in ("systemd-nspawn", "unshare", "nsenter", "mount", "umount"):
        if not shutil.which(tool):
            return f"{tool} not installed (systemd-nspawn: package systemd-container)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "no overlayfs in this kernel"
    return None


def _unit_seconds(setting: str) -> float:
    found = re.search(rf"^{setting}=(\d+)$", UNIT_FILE.read_text(), re.M)
    assert found, f"{setting}= in {UNIT_FILE}"
    return float(found.group(1))


def _mirror_dirs(upper: Path, rel: str) -> Path:
    """REL's directories in the upper layer, each with its mode on the host: an upper directory's
    mode is what the container sees (the test's umask must not make /etc unreadable)."""
    path = upper
    path.chmod(stat.S_IMODE(Path("/").stat().st_mode))
    for part in Path(rel).parts:
        path = path / part
        path.mkdir(exist_ok=True)
        path.chmod(stat.S_IMODE((Path("/") / path.relative_to(upper)).stat().st_mode))
    return path


RESTART_SEC = _unit_seconds("RestartSec")
WATCHDOG_SEC = _unit_seconds("WatchdogSec")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Container:
    """This machine booted as a container with systemd as PID 1, on a tmpfs upper layer."""

    def __init__(self, layers: Path, logs: Path) -> None:
        self.layers, self.logs = layers, logs
        self.name = f"edgelog-test-{secrets.token_hex(4)}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.boots = 0

    def prepare(self) -> None:
        """The tmpfs upper layer with what differs from the host before the first boot."""
        self.layers.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "mode=0700,size=4g", "tmpfs", str(self.layers)], check=True
        )
        for d in ("upper", "work", "root"):
            (self.layers / d).mkdir()
        upper = self.layers / "upper"
        units = _mirror_dirs(upper, "etc/systemd/system")
        for unit in (*MASKED, *(p.name for p in Path("/lib/systemd/system").glob("*.timer"))):
            (units / unit).symlink_to("/dev/null")
        (_mirror_dirs(upper, "etc/mysql/mariadb.conf.d") / "99-edgelog-test.cnf").write_text(SKIP_NETWORKING)
        shutil.copytree(ROOT, upper / SRC.lstrip("/"), ignore=IGNORED, symlinks=True)

    def boot(self) -> None:
        self.boots += 1
        with (self.logs / f"console-{self.boots}.log").open("wb") as console:
            self.proc = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    BOOT_SCRIPT,
                    "sh",
                    str(self.layers),
                    self.name,
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        self.leader = wait_for(self._find_leader, timeout=30, what=f"systemd in container {self.name}")
        wait_for(self._booted, timeout=90, every=0.5, what="the container's boot (is-system-running)")

    def _find_leader(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"nspawn exited with {self.proc.returncode}: {self.console()}")
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return 0
        for pid in children:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return int(pid)
        return 0

    def _booted(self) -> bool:
        state = self.enter("systemctl", "is-system-running", "--wait", check=False, timeout=60).stdout.strip()
        return state in ("running", "degraded")

    def console(self) -> str:
        return "".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.logs.glob("console-*.log")))

    def enter(
        self, *cmd: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """CMD in the container's namespaces, as a child of nsenter (for systemctl, kill, cat)."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *cmd],
            env={"PATH": PATH, "LANG": "C.UTF-8"},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, (
                f"{cmd}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def run(
        self, *cmd: str, user: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """CMD as a transient unit of the container's systemd, waited for, its output piped back."""
        run = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect", "--service-type=exec"]
        if user:
            run += [f"--uid={user}", f"--gid={user}"]
        return self.enter(*run, "--", *cmd, check=check, timeout=timeout)

    def write(self, path: str, text: str) -> None:
        """Replace a file's content in place: its owner and mode stay."""
        self.enter("sh", "-c", 'cat > "$1"', "sh", path, input=text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.enter("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.enter("journalctl", "--no-pager", "--unit", unit, "--output=short-monotonic").stdout

    def shutdown(self, verb: str) -> int:
        """`systemctl poweroff`/`reboot` inside; wait for nspawn to exit."""
        assert self.proc is not None
        self.enter("systemctl", verb, check=False)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the container did not {verb} within 60 s: {self.console()}") from None

    def kill(self) -> None:
        """SIGKILL to the container's PID 1 ends its whole PID namespace; then nspawn exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.leader:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        wait_or_kill(self.proc, 20)

    def remove(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                self.shutdown("poweroff")
        self.kill()
        if self.layers.is_mount():
            subprocess.run(["umount", "--lazy", str(self.layers)], check=False)
        if self.layers.exists():
            self.layers.rmdir()


@dataclass
class Site:
    """The container after the README's install steps, with the service started on the simulator."""

    box: Container
    sim_port: int
    install_mariadb: subprocess.CompletedProcess[str]
    install: subprocess.CompletedProcess[str]
    start: subprocess.CompletedProcess[str]
    started_at: float

    def start_simulator(self) -> None:
        if self.box.enter("systemctl", "is-active", "--quiet", SIM_UNIT, check=False).returncode == 0:
            return
        self.box.enter(
            "systemd-run", f"--unit={SIM_UNIT}", "--collect", "--property=DynamicUser=yes",
            "--", EDGELOG, "simulate", "--host", "127.0.0.1", "--port", str(self.sim_port),
        )  # fmt: skip
        wait_for(self._simulator_listens, timeout=30, every=0.2, what="the simulator's port")

    def _simulator_listens(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.sim_port)) == 0

    def status(self) -> dict[str, Any]:
        """`edgelog sync-status --json` as the service user (exit 1 = degraded is fine here)."""
        out = self.box.run(EDGELOG, "--config", CONFIG, "sync-status", "--json", user="edgelog", check=False)
        assert out.stdout.strip().startswith("{"), out.stdout + out.stderr
        return json.loads(out.stdout)

    def rows(self) -> dict[int, tuple[float, bool]]:
        """seq -> (measured_at, a reading rather than a failed poll), read-only, as the service user."""
        script = (
            "import json, sqlite3, sys; db = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True); "
            "print(json.dumps(db.execute(sys.argv[2]).fetchall()))"
        )
        out = self.box.run("/opt/edgelog/venv/bin/python", "-c", script, BUFFER, ROWS_SQL, user="edgelog")
        return {seq: (at, bool(ok)) for seq, at, ok in json.loads(out.stdout)}

    def rows_on_the_card(self) -> dict[int, tuple[float, bool]]:
        """The same, read on the host from the upper layer while the container is down."""
        path = self.box.layers / "upper" / BUFFER.lstrip("/")
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return {seq: (at, bool(ok)) for seq, at, ok in db.execute(ROWS_SQL)}

    def service(self) -> dict[str, str]:
        return self.box.show(
            "edgelog.service",
            "ActiveState", "SubState", "MainPID", "NRestarts", "Result", "UnitFileState",
            "WatchdogTimestampMonotonic", "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic",
            "ExecMainStatus",
        )  # fmt: skip

    def readings_since(self, since: float) -> int:
        return sum(1 for at, ok in self.rows().values() if ok and at > since)


def _point_meter_at_simulator(text: str, port: int) -> str:
    """The shipped example's meter, switched from RTU on /dev/ttyUSB0 to the simulator over TCP."""
    edits = [
        (r'^transport = "rtu"$', 'transport = "tcp"'),
        (r"^device = .*$", f'host = "127.0.0.1"\nport = {port}'),
        (r"^(baudrate|parity|stopbits) = .*\n", ""),  # serial settings: not keys of a TCP meter
    ]
    for pattern, replacement in edits:
        text, n = re.subn(pattern, replacement, text, flags=re.M)
        assert n, f"the example config has no line matching {pattern!r}: update this test"
    return text


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    reason = _cannot_boot()
    if reason:
        pytest.skip(reason)
    logs = tmp_path_factory.mktemp("nspawn")
    box = Container(Path(tempfile.mkdtemp(prefix="edgelog-nspawn-")) / "layers", logs)
    try:
        box.prepare()
        box.boot()
        # MariaDB installed (it is in the lower layer) but stopped, as an operator may find it.
        box.enter("systemctl", "stop", "mariadb")
        install_mariadb = box.run(f"{SRC}/schema/install-mariadb", check=False, timeout=180)
        assert install_mariadb.returncode == 0, install_mariadb.stdout + install_mariadb.stderr
        install = box.run(f"{SRC}/scripts/install", check=False, timeout=600)
        assert install.returncode == 0, install.stdout + install.stderr
        box.enter("systemctl", "stop", "edgelog.service")
        config = box.enter("cat", CONFIG).stdout
        sim_port = _free_port()
        box.write(CONFIG, _point_meter_at_simulator(config, sim_port))
        s = Site(box, sim_port, install_mariadb, install, subprocess.CompletedProcess([], 0), 0.0)
        s.start_simulator()
        s.started_at = time.time()
        s.start = box.enter("systemctl", "start", "edgelog.service", check=False, timeout=120)
        yield s
    finally:
        box.remove()
        box.layers.parent.rmdir()


def _assert_clean_journal(site: Site) -> None:
    journal = site.box.journal("edgelog.service")
    bad = [line for line in journal.splitlines() if BAD_JOURNAL.search(line)]
    assert not bad, "\n".join(bad)


def test_install_mariadb_starts_a_stopped_server(site: Site) -> None:
    out = site.install_mariadb.stdout
    assert "install-mariadb: MariaDB was stopped; started it" in out, out
    assert "database chapada_imperial ready" in out, out
    assert site.box.enter("systemctl", "is-active", "mariadb").stdout.strip() == "active"


def test_service_starts_and_stays_up_a_minute_with_watchdog_pings(site: Site) -> None:
    assert site.start.returncode == 0, site.start.stderr + site.box.journal("edgelog.service")[-3000:]
    pid, pings = site.service()["MainPID"], set()
    ping_every_s = WATCHDOG_SEC / 4  # edgelog pings at a quarter of WatchdogSec
    while time.time() < site.started_at + STEADY_S:
        now = site.service()
        up = (now["ActiveState"], now["SubState"], now["MainPID"], now["NRestarts"]) == (
            "active",
            "running",
            pid,
            "0",
        )
        assert up, f"{now}\n{site.box.journal('edgelog.service')[-3000:]}"
        # WATCHDOG=1 keeps arriving: systemd's timestamp of the last ping is never older than
        # the ping period (plus slack for a loaded machine)
        age_s = time.monotonic() - int(now["WatchdogTimestampMonotonic"]) / 1e6
        assert age_s < ping_every_s + 5, f"last watchdog ping {age_s:.1f} s ago"
        pings.add(now["WatchdogTimestampMonotonic"])
        time.sleep(2)
    assert len(pings) >= STEADY_S / ping_every_s - 1, pings
    readings = site.readings_since(site.started_at)
    assert readings >= STEADY_S * 0.75, f"{readings} readings in {STEADY_S} s at one per second"
    status = site.status()
    assert status["meters"]["pac3100"]["last_poll_error"] is None, status
    assert status["readings_total"] >= readings
    _assert_clean_journal(site)


def test_hardening_is_in_force_on_the_running_process(site: Site) -> None:
    """The settings of the unit really apply (systemd would skip some silently in a container)."""
    pid = site.service()["MainPID"]
    proc = dict(
        line.split(":\t", 1) for line in site.box.enter("cat", f"/proc/{pid}/status").stdout.splitlines()
    )
    assert proc["Seccomp"].strip() == "2"  # a seccomp filter
    assert proc["NoNewPrivs"].strip() == "1"
    assert int(proc["CapBnd"], 16) == 0 and int(proc["CapEff"], 16) == 0 and int(proc["CapAmb"], 16) == 0
    uid = site.box.enter("id", "-u", "edgelog").stdout.strip()
    assert proc["Uid"].split()[0] == uid
    mounts = {
        fields[4]: fields[5]
        for fields in (
            line.split() for line in site.box.enter("cat", f"/proc/{pid}/mountinfo").stdout.splitlines()
        )
    }
    assert mounts["/"].startswith("ro"), mounts["/"]  # ProtectSystem=strict
    assert mounts["/var/lib/edgelog"].startswith("rw"), mounts.get("/var/lib/edgelog")
    assert mounts["/tmp"].startswith("rw")  # PrivateTmp: its own /tmp, mounted over
    assert mounts["/home"].startswith("ro") or mounts["/root"].startswith("ro")  # ProtectHome


def test_kill_9_restarts_after_restart_sec_keeping_every_committed_reading(site: Site) -> None:
    site.start_simulator()
    before = site.service()
    assert before["ActiveState"] == "active", before
    killed_at = time.time()
    site.box.enter("kill", "-9", before["MainPID"])
    dead = wait_for(
        lambda: (s := site.service())["ExecMainStatus"] == "9" and s["MainPID"] == "0" and s,
        timeout=10,
        what="systemd to see the kill",
    )
    committed = site.rows()  # the process is dead: this is exactly what it had committed
    last = max(at for at, ok in committed.values() if ok)
    assert last >= killed_at - 3.0, f"newest committed reading {killed_at - last:.1f} s before the kill"

    after = wait_for(
        lambda: (s := site.service())["SubState"] == "running" and s["MainPID"] != "0" and s,
        timeout=RESTART_SEC + 60,
        every=0.5,
        what="the automatic restart",
    )
    assert after["NRestarts"] == str(int(before["NRestarts"]) + 1), after
    assert after["MainPID"] != before["MainPID"]
    delay_s = (
        int(after["ExecMainStartTimestampMonotonic"]) - int(dead["ExecMainExitTimestampMonotonic"])
    ) / 1e6
    assert RESTART_SEC - 0.5 <= delay_s <= RESTART_SEC + 30, f"restarted {delay_s:.1f} s after the kill"

    wait_for(
        lambda: site.readings_since(killed_at + RESTART_SEC) >= 3,
        timeout=30,
        what="readings after the restart",
    )
    rows = site.rows()
    assert {seq: rows.get(seq) for seq in committed} == committed, "a committed reading changed or vanished"
    assert min(seq for seq in rows if seq not in committed) > max(committed)
    _assert_clean_journal(site)


def test_reboot_brings_the_service_back_with_its_buffer(site: Site) -> None:
    site.start_simulator()
    wait_for(lambda: site.readings_since(time.time() - 5) >= 2, timeout=30, what="readings before the reboot")
    site.box.shutdown("reboot")
    before = site.rows_on_the_card()  # nothing runs now: the buffer as the reboot left it, on the upper layer
    booted_at = time.time()
    site.box.boot()
    # nobody starts it: enabled at install, it comes back with the boot
    state = wait_for(
        lambda: (s := site.service())["SubState"] == "running" and s,
        timeout=60,
        every=0.5,
        what="edgelog.service after the reboot",
    )
    assert state["UnitFileState"] == "enabled" and state["NRestarts"] == "0", state
    site.start_simulator()  # a transient unit: gone with the reboot
    wait_for(lambda: site.readings_since(booted_at) >= 3, timeout=60, what="readings after the reboot")
    rows = site.rows()
    assert {seq: rows.get(seq) for seq in before} == before, "the reboot lost or changed buffered readings"
    assert max(rows) > max(before)
    _assert_clean_journal(site)


def test_every_reading_reaches_mariadb_exactly_once(site: Site) -> None:
    """The sync worker forwards the whole buffer (before the kill, before the reboot, since)."""
    target = max(site.rows())  # every reading buffered by now: before the kill, the reboot, since
    status = wait_for(
        lambda: (s := site.status())["sent_upto"] >= target and s,
        timeout=90,
        every=1,
        what=f"the sync position to pass seq {target}",
    )
    assert status["quarantined"] == 0, status
    query = "SELECT seq, COUNT(*) FROM chapada_imperial.medicoes GROUP BY seq"
    out = site.box.run("mariadb", "--batch", "--skip-column-names", "-e", query).stdout
    counts = {int(seq): int(n) for seq, n in (line.split("\t") for line in out.splitlines())}
    buffered = {seq for seq in site.rows() if seq <= target}
    arrived = {seq for seq in counts if seq <= target}
    assert arrived == buffered, (
        f"missing: {sorted(buffered - arrived)[:20]}, extra: {sorted(arrived - buffered)[:20]}"
    )
    assert set(counts.values()) == {1}, "a reading arrived twice"
    measured = "SELECT COUNT(*) FROM chapada_imperial.medicoes WHERE tensao_l1_n IS NOT NULL"
    readings = int(site.box.run("mariadb", "--batch", "--skip-column-names", "-e", measured).stdout)
    assert readings >= STEADY_S * 0.75, f"{readings} rows with values"
