"""A rogue server on a non-loopback address never receives the password.

Each test makes a network namespace with 198.18.0.1 on its loopback interface and runs
both sides in it: `tests/rogue_server.py` (a real TCP listener speaking just enough of
the MySQL handshake to ask for the password in cleartext, recording every byte) and the
real `edgelog` command line. So the client sees a host that is not loopback, exactly
as on a Pi whose MariaDB is across a network, and no packet leaves this machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import COLUMNS, ROOT, child_env, meter_toml, toml_table, write_config
from tlspki import make_pki

from edgelog.buffer import Buffer

HOST = "198.18.0.1"
PORT = 3306
ROGUE = ROOT / "tests" / "rogue_server.py"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip"), reason="network namespaces need root and iproute2"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace whose loopback interface also holds 198.18.0.1; always removed."""
    name = f"edgelog-test-{secrets.token_hex(4)}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
    try:
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{HOST}/32", "dev", "lo")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


class Rogue:
    def __init__(self, record: Path):
        self.record = record

    def received(self, connections: int = 1, timeout: float = 15) -> list[bytes]:
        """What the client sent on each connection, once the rogue is done with them."""
        deadline = time.monotonic() + timeout
        while len(list(self.record.glob("conn-*.done"))) < connections:
            assert time.monotonic() < deadline, "the rogue server saw fewer connections than expected"
            time.sleep(0.05)
        paths = sorted(self.record.glob("conn-*.bin"), key=lambda p: int(p.stem.split("-")[1]))
        return [p.read_bytes() for p in paths]


#: `rogue(plugin, switch, tls)` starts one; `edgelog_in(*args, **mariadb)` runs the client.
StartRogue = Callable[..., Rogue]
EdgelogIn = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def rogue(netns: str, tmp_path: Path) -> Iterator[StartRogue]:
    """Start tests/rogue_server.py in the namespace, on 198.18.0.1:3306."""
    procs: list[subprocess.Popen[str]] = []

    def start(plugin: str = "mysql_native_password", switch: str = "", tls: Path | None = None) -> Rogue:
        record = tmp_path / f"rogue-{len(procs)}"
        record.mkdir()
        cmd = [sys.executable, str(ROGUE), "--listen", f"{HOST}:{PORT}", "--record", str(record)]
        cmd += ["--plugin", plugin] + (["--switch", switch] if switch else [])
        if tls is not None:
            cmd += ["--tls", str(tls / "rogue-server.pem"), str(tls / "rogue-server.key")]
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *cmd], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return Rogue(record)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def password(tmp_path: Path) -> tuple[str, Path]:
    secret = "pw-" + secrets.token_hex(12)
    path = tmp_path / "mariadb.password"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return secret, path


@pytest.fixture
def edgelog_in(netns: str, tmp_path: Path, password: tuple[str, Path]) -> EdgelogIn:
    """`edgelog ARGS` in the namespace, with a config whose MariaDB is the rogue's address
    (the [mariadb] keys given added) and a buffer holding one reading."""
    buffer = Buffer(tmp_path / "buffer.sqlite3", COLUMNS)
    buffer.append("pac1", 1_780_000_000.0, dict.fromkeys(COLUMNS, 1.0))
    buffer.close()

    def run(*args: str, **mariadb: str) -> subprocess.CompletedProcess[str]:
        keys = {
            "user": "edgelog",
            "host": HOST,
            "port": PORT,
            "password_file": password[1],
            "connect_timeout_s": 5,
        }
        config = write_config(
            tmp_path,
            toml_table("[mariadb]", {**keys, **mariadb}),
            meter_toml(1, interval_s=None, timeout_s=0.2),
            site="rogue-test",
            sync={},
        )
        cmd = [sys.executable, "-m", "edgelog", "--config", str(config), *args]
        return subprocess.run(
            ["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=60, env=child_env()
        )

    return run


SYNC = ("sync", "--drain")
EXPORT = ("export", "--from", "2026-01-01", "--to", "2026-01-02", "--out", "-")


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _packets(data: bytes) -> list[bytes]:
    out = []
    while len(data) >= 4:
        size = int.from_bytes(data[:3], "little")
        out.append(data[4 : 4 + size])
        data = data[4 + size :]
    return out


def test_the_rogue_gets_the_password_from_an_unguarded_client(
    netns: str, rogue: StartRogue, password: tuple[str, Path]
) -> None:
    """The control (what the issue saw): plain PyMySQL without TLS hands the password over
    in cleartext when the server switches to mysql_clear_password."""
    secret, _ = password
    server = rogue(switch="mysql_clear_password")
    code = (
        "import os, pymysql\n"
        "try:\n"
        f"    pymysql.connect(host={HOST!r}, port={PORT}, user='edgelog', password=os.environ['PW'],"
        " ssl_disabled=True, connect_timeout=5)\n"
        "except pymysql.MySQLError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**child_env(), "PW": secret},
    )
    assert "Access denied" in result.stdout, result.stderr
    assert secret.encode() + b"\0" in server.received()[0]


@pytest.mark.parametrize("command", [SYNC, EXPORT], ids=["sync", "export"])
def test_the_default_for_a_remote_host_sends_nothing_to_a_server_without_tls(
    rogue: StartRogue, password: tuple[str, Path], edgelog_in: EdgelogIn, command: tuple
) -> None:
    secret, _ = password
    server = rogue(switch="mysql_clear_password")
    result = edgelog_in(*command)
    error = _one_error_line(result)
    assert (
        f"MariaDB edgelog@{HOST}:{PORT}/chapada_imperial: (2026) the server does not offer TLS, and "
        'ssl_mode = "verify-identity" (the default for a host that is not loopback) requires it: '
        "refused, nothing sent"
    ) in error
    assert server.received() == [b""]  # not even the user name
    assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "plugin, switch",
    [
        ("mysql_native_password", "mysql_clear_password"),
        ("mysql_native_password", "dialog"),
        ("mysql_native_password", "sha256_password"),
        ("mysql_native_password", "caching_sha2_password"),
        ("mysql_clear_password", ""),
        ("sha256_password", ""),
    ],
)
def test_disabled_written_explicitly_still_never_sends_the_password(
    rogue: StartRogue,
    password: tuple[str, Path],
    edgelog_in: EdgelogIn,
    plugin: str,
    switch: str,
) -> None:
    secret, _ = password
    server = rogue(plugin=plugin, switch=switch)
    result = edgelog_in(*SYNC, ssl_mode="disabled")
    error = _one_error_line(result)
    asked = switch or plugin
    assert "the server asked for " in error and f"({asked}) over a connection without TLS" in error
    assert "refused, password not sent" in error
    (sent,) = server.received()
    assert secret.encode() not in sent
    if switch:  # the answer to the greeting (user name and a challenge's proof), nothing after
        (answer,) = _packets(sent)
        assert b"edgelog\0" in answer
    else:  # refused at the greeting: nothing at all
        assert sent == b""


@pytest.fixture
def rogue_pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    make_pki(d, "rogue", f"IP:{HOST}")
    return d


@pytest.mark.parametrize(
    "plugin, switch", [("mysql_native_password", "mysql_clear_password"), ("sha256_password", "")]
)
def test_required_tls_is_not_enough_for_the_password(
    rogue: StartRogue,
    password: tuple[str, Path],
    edgelog_in: EdgelogIn,
    rogue_pki: Path,
    plugin: str,
    switch: str,
) -> None:
    """TLS without checking the certificate: anyone in the middle can be that server.
    (sha256_password as the greeting's choice would put the password in PyMySQL's very
    first answer, inside that TLS.)"""
    secret, _ = password
    server = rogue(plugin=plugin, switch=switch, tls=rogue_pki)
    result = edgelog_in(*SYNC, ssl_mode="required")
    error = _one_error_line(result)
    assert f"({switch or plugin}) over TLS whose certificate is not verified" in error
    (sent,) = server.received()  # decrypted by the rogue
    assert secret.encode() not in sent


def test_verified_tls_carries_the_password_and_the_default_checks_the_system_store(
    rogue: StartRogue,
    password: tuple[str, Path],
    edgelog_in: EdgelogIn,
    rogue_pki: Path,
) -> None:
    secret, _ = password
    server = rogue(switch="mysql_clear_password", tls=rogue_pki)
    # the default (verify-identity against the system's CA store) does not know this CA
    error = _one_error_line(edgelog_in(*SYNC))
    assert "certificate verify failed" in error
    # told the CA, the server has proved who it is: a cleartext plugin (PAM) may have it
    error = _one_error_line(edgelog_in(*SYNC, ssl_ca=str(rogue_pki / "rogue-ca.pem")))
    assert "(1045) Access denied" in error
    first, second = server.received(2)
    assert secret.encode() not in first  # the refused handshake: the SSLRequest at most
    assert secret.encode() + b"\0" in second


def test_doctor_names_the_risk_of_disabled_towards_a_remote_host(
    rogue: StartRogue, password: tuple[str, Path], edgelog_in: EdgelogIn
) -> None:
    secret, _ = password
    rogue(switch="mysql_clear_password")
    result = edgelog_in("doctor", ssl_mode="disabled")
    lines = result.stdout.splitlines()
    tls = next(line for line in lines if line.split()[1:2] == ["tls"])
    assert tls.startswith("WARN") and f'ssl_mode = "disabled" towards {HOST}' in tls
    assert "anyone on the path can read or change them" in tls
    mariadb = next(line for line in lines if line.split()[1:2] == ["mariadb"])
    assert mariadb.startswith("FAIL") and "(mysql_clear_password)" in mariadb
    assert secret not in result.stdout + result.stderr
    assert result.returncode == 1
