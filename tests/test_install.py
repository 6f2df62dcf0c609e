"""The installers, run for real: schema/install-mariadb against a real MariaDB
server, scripts/install into a throwaway root directory (with exactly the versions
of requirements/runtime.lock). Under a real systemd: tests/test_systemd_boot.py."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import pymysql
import pytest
from helpers import ROOT

INSTALL_DB = ROOT / "schema" / "install-mariadb"
INSTALL = ROOT / "scripts" / "install"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
TEST_LOCK = ROOT / "requirements" / "test.lock"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _pins(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a lock file."""
    return {_name(n): v for n, v in re.findall(r"^([A-Za-z0-9][\w.-]*)==(\S+)", lock.read_text(), re.M)}


def _frozen(venv: Path) -> dict[str, str]:
    """name -> version installed in a venv, but pip itself (the venv's) and edgelog."""
    out = subprocess.run(
        [str(venv / "bin/pip"), "freeze", "--all", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = dict(line.split("==", 1) for line in out.splitlines() if "==" in line)
    assert any(line.startswith("edgelog @ ") for line in out.splitlines()), out
    return {_name(n): v for n, v in found.items() if _name(n) != "pip"}


def test_locks_pin_every_package_with_hashes_and_ci_tests_what_the_pi_gets() -> None:
    for lock in (RUNTIME_LOCK, TEST_LOCK):
        entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n", 1)[1])
        pinned = [e for e in entries if re.match(r"[A-Za-z0-9][\w.-]*==", e)]
        assert pinned and all("--hash=sha256:" in e for e in pinned), lock
    runtime, test = _pins(RUNTIME_LOCK), _pins(TEST_LOCK)
    assert {"pymysql", "peewee", "pymodbus", "pyserial", "schedule", "tqdm", "setuptools"} <= set(runtime)
    assert {n: test.get(n) for n in runtime} == runtime, "test.lock must hold runtime.lock's versions"


@pytest.fixture
def installed_db(mysql_proc, mariadb_root, tmp_path: Path):
    """Run install-mariadb against the test server, after making it as unsafe as
    the seed left it (a remote root login, an anonymous user)."""
    db = f"chapada_imperial_{secrets.token_hex(3)}"
    with mariadb_root.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY 'pico_central_hidro'")
        cur.execute("GRANT ALL ON *.* TO 'root'@'%'")
        cur.execute("CREATE USER IF NOT EXISTS ''@'localhost'")
    env = dict(
        os.environ,
        EDGELOG_ETC=str(tmp_path / "etc"),
        MARIADB_SOCKET=mysql_proc.unixsocket,
        EDGELOG_DB=db,
        SKIP_APT="1",
    )
    runs = [
        subprocess.run([str(INSTALL_DB)], env=env, capture_output=True, text=True, timeout=120)
        for _ in range(2)
    ]  # twice: the second run must change nothing and break nothing
    yield db, tmp_path / "etc", runs, env
    with mariadb_root.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        cur.execute("DROP USER IF EXISTS 'edgelog'@'localhost', 'analise'@'%'")


def _login(mysql_proc, user: str, password_file: Path, **kw):
    return pymysql.connect(
        unix_socket=mysql_proc.unixsocket, user=user, password=password_file.read_text().strip(), **kw
    )


def _denied(conn, sql: str) -> int:
    with conn.cursor() as cur, pytest.raises(pymysql.MySQLError) as err:
        cur.execute(sql)
    return err.value.args[0]


def test_install_mariadb_secures_the_server_and_creates_least_privilege_users(
    installed_db, mysql_proc, mariadb_root
):
    db, etc, runs, _env = installed_db
    for run in runs:
        assert run.returncode == 0, run.stderr
    logger_pw, analyst_pw = etc / "mariadb.password", etc / "analise.password"
    assert _mode(logger_pw) == 0o600 and _mode(analyst_pw) == 0o600
    assert len(logger_pw.read_text().strip()) == 24
    # passwords are never printed
    for run in runs:
        assert logger_pw.read_text().strip() not in run.stdout + run.stderr
        assert analyst_pw.read_text().strip() not in run.stdout + run.stderr

    with mariadb_root.cursor() as cur:
        cur.execute("SELECT Host FROM mysql.global_priv WHERE User = 'root'")
        assert {h for (h,) in cur.fetchall()} <= {"localhost", "127.0.0.1", "::1"}
        cur.execute("SELECT COUNT(*) FROM mysql.global_priv WHERE User = ''")
        assert cur.fetchone()[0] == 0
        cur.execute("SHOW DATABASES LIKE 'test'")
        assert cur.fetchall() == ()
        cur.execute("SHOW GRANTS FOR 'edgelog'@'localhost'")
        grants = " ".join(g for (g,) in cur.fetchall())
        cur.execute("CREATE DATABASE IF NOT EXISTS other_db")
        cur.execute("CREATE TABLE IF NOT EXISTS other_db.t (x INT)")
    assert f"GRANT SELECT, INSERT, UPDATE, CREATE, INDEX, ALTER ON `{db}`.*" in grants
    assert "DELETE" not in grants and "DROP" not in grants

    # root can no longer log in from a non-local host (the seed enabled it)
    with pytest.raises(pymysql.MySQLError) as err:
        pymysql.connect(
            host="127.0.0.1",
            port=mysql_proc.port,
            user="root",
            password="pico_central_hidro",
            bind_address="127.0.0.2",
            connect_timeout=5,
        )
    assert err.value.args[0] in (1045, 1130)

    logger = _login(mysql_proc, "edgelog", logger_pw, database=db)
    with logger.cursor() as cur:
        cur.execute(
            "INSERT INTO medicoes (site, meter, buffer_id, seq, measured_at) "
            "VALUES ('s', 'm', '0123456789abcdef', 1, '2026-11-26 12:00:00.000')"
        )
        logger.commit()
        cur.execute("SELECT COUNT(*) FROM medicoes")
        assert cur.fetchone()[0] == 1
    assert _denied(logger, "DROP TABLE medicoes") == 1142
    assert _denied(logger, "DELETE FROM medicoes") == 1142
    assert _denied(logger, "ALTER TABLE other_db.t ADD COLUMN y INT") in (1142, 1044)
    assert _denied(logger, "SELECT * FROM mysql.global_priv") == 1142
    logger.close()

    analyst = _login(mysql_proc, "analise", analyst_pw, database=db)
    with analyst.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM medicoes")
        assert cur.fetchone()[0] == 1
    assert _denied(analyst, "INSERT INTO medicoes (site) VALUES ('x')") == 1142
    analyst.close()


def test_install_mariadb_remote_prints_sql_without_passwords(installed_db, mysql_proc, mariadb_root):
    db, etc, _runs, env = installed_db
    out = subprocess.run(
        [str(INSTALL_DB), "--remote"],
        env=dict(env, EDGELOG_LOGGER_HOST="127.0.0.1"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    password = (etc / "mariadb.password").read_text().strip()
    assert password not in out and "IDENTIFIED BY PASSWORD '*" in out
    # an admin runs it on "the central server": the logger's password file then works over TCP
    subprocess.run(
        ["mariadb", f"--socket={mysql_proc.unixsocket}", "-u", "root"],
        input=out,
        text=True,
        check=True,
        timeout=60,
    )
    conn = pymysql.connect(
        host="127.0.0.1", port=mysql_proc.port, user="edgelog", password=password, database=db
    )
    conn.close()
    with mariadb_root.cursor() as cur:
        cur.execute("DROP USER IF EXISTS 'edgelog'@'127.0.0.1'")


def test_install_into_a_throwaway_root_then_upgrade_then_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = dict(os.environ, ROOT=str(root))
    first = subprocess.run([str(INSTALL)], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    etc, state = root / "etc/edgelog", root / "var/lib/edgelog"
    assert _mode(etc) == 0o750 and _mode(etc / "edgelog.toml") == 0o640 and _mode(state) == 0o750
    assert (root / "etc/systemd/system/edgelog.service").read_text() == (
        ROOT / "systemd/edgelog.service"
    ).read_text()
    assert os.readlink(root / "usr/local/bin/edgelog") == "/opt/edgelog/venv/bin/edgelog"
    # the USB serial drivers load at boot, before the unit resolves DeviceAllow=char-ttyUSB
    modules = root / "etc/modules-load.d/edgelog.conf"
    assert _mode(modules) == 0o644
    loaded = [x for x in modules.read_text().splitlines() if x and not x.startswith("#")]
    assert loaded == ["usbserial", "cdc_acm"]
    # exactly the locked versions, nothing more, nothing less
    assert _frozen(root / "opt/edgelog/venv") == _pins(RUNTIME_LOCK)
    edgelog_bin = root / "opt/edgelog/venv/bin/edgelog"
    version = subprocess.run([str(edgelog_bin), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("edgelog ")
    # the installed example config is valid as shipped
    schema = subprocess.run(
        [str(edgelog_bin), "--config", str(etc / "edgelog.toml"), "schema"], capture_output=True, text=True
    )
    assert schema.returncode == 0, schema.stderr

    # an upgrade keeps the operator's config and the buffer
    (etc / "edgelog.toml").write_text(
        (etc / "edgelog.toml").read_text().replace("chapada-imperial", "site-b")
    )
    (state / "buffer.sqlite3").write_bytes(b"pretend buffer")
    again = subprocess.run([str(INSTALL)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert 'site = "site-b"' in (etc / "edgelog.toml").read_text()
    assert (state / "buffer.sqlite3").read_bytes() == b"pretend buffer"
    assert len(list((root / "opt/edgelog/releases").iterdir())) == 2

    gone = subprocess.run([str(INSTALL), "--uninstall"], env=env, capture_output=True, text=True)
    assert gone.returncode == 0, gone.stderr
    assert not (root / "opt/edgelog").exists() and not (root / "etc/systemd/system/edgelog.service").exists()
    assert not (root / "usr/local/bin/edgelog").is_symlink() and not modules.exists()
    assert (state / "buffer.sqlite3").exists() and (etc / "edgelog.toml").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_install_mariadb_without_a_server_or_systemd_says_what_to_do(tmp_path: Path) -> None:
    """Installed but stopped, on a machine without systemd: a clear line, nothing half done.
    (With systemd it starts the server: tests/test_systemd_boot.py.) An empty /run in a
    private mount namespace hides systemd, whatever the test machine runs."""
    env = dict(
        os.environ,
        EDGELOG_ETC=str(tmp_path / "etc"),
        MARIADB_SOCKET=str(tmp_path / "no.sock"),
        SKIP_APT="1",
    )
    hide_run = 'mount -t tmpfs tmpfs /run && exec "$@"'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide_run, "sh", str(INSTALL_DB)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install-mariadb: no MariaDB socket at"), lines
    assert "installed but not running" in lines[0] and "service mariadb start" in lines[0], lines
