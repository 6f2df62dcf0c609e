"""TLS to MariaDB, mode by mode: a second, real mariadbd started with a certificate made
for this test (names 127.0.0.1 and localhost; it also listens on 127.0.0.2, a name the
certificate does not hold); the logger's user is created with REQUIRE SSL.

What each mode must do (docs/guarantees.md §10): verify-identity checks the CA and the
name, verify-ca the CA only, required encrypts without checking, disabled sends no TLS;
and a server without TLS is refused, before anything is sent, by every mode but
disabled. The rogue-server side (a server asking for the password in cleartext, on a
non-loopback address) is tests/test_rogue_server.py."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
from helpers import LoggerDB, edgelog, meter_toml, write_config
from tlspki import make_pki

from edgelog.config import MariaDBConfig, parse
from edgelog.errors import ConfigError, SinkUnavailable
from edgelog.sync import MariaDBSink, connect

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")


# -- the config: which mode is in force -----------------------------------------------------


def _mariadb(text: str) -> MariaDBConfig:
    doc = f'site = "s"\n[mariadb]\nuser = "edgelog"\n{text}\n' + meter_toml(5020)
    return parse(tomllib.loads(doc), source="edgelog.toml").mariadb


@pytest.mark.parametrize(
    "text, mode",
    [
        ('host = "db.example.org"', "verify-identity"),  # remote: verified, system CA store
        ('host = "198.18.0.1"', "verify-identity"),
        ('host = "10.0.0.5"\nssl_ca = "/etc/edgelog/ca.pem"', "verify-identity"),
        ('host = "db.example.org"\nssl_mode = "disabled"', "disabled"),  # only when written
        ('host = "db.example.org"\nssl_mode = "required"', "required"),
        ('host = "db.example.org"\nssl_mode = "verify-ca"\nssl_ca = "/ca.pem"', "verify-ca"),
        ("", "disabled"),  # localhost
        ('host = "127.0.0.1"', "disabled"),
        ('host = "127.3.2.1"', "disabled"),
        ('host = "::1"', "disabled"),
        ('host = "127.0.0.1"\nssl_ca = "/ca.pem"', "verify-identity"),  # a CA given: TLS, verified
        ('unix_socket = "/run/mysqld/mysqld.sock"', "disabled"),
        # the old key: only ever mattered with ssl_ca/ssl_cert
        ('host = "db.example.org"\nssl_ca = "/ca.pem"\nssl_verify_identity = false', "verify-ca"),
        ('host = "db.example.org"\nssl_ca = "/ca.pem"\nssl_verify_identity = true', "verify-identity"),
        ('host = "db.example.org"\nssl_verify_identity = false', "verify-identity"),
    ],
)
def test_the_tls_mode_in_force(text: str, mode: str) -> None:
    cfg = _mariadb(text)
    assert cfg.tls_mode == mode
    assert cfg.ssl_mode_from_legacy_key == ("ssl_verify_identity" in text)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'ssl_mode = "preferred"',
            "ssl_mode: must be one of 'disabled', 'required', 'verify-ca', 'verify-identity'",
        ),
        ('host = "h"\nssl_mode = "verify-ca"', 'ssl_mode: "verify-ca" needs ssl_ca'),
        (
            'host = "h"\nssl_mode = "required"\nssl_ca = "/ca.pem"',
            'ssl_mode: "required" checks no certificate',
        ),
        (
            'host = "h"\nssl_mode = "disabled"\nssl_ca = "/ca.pem"',
            'ssl_mode: "disabled", but ssl_ca/ssl_cert',
        ),
        ('unix_socket = "/s"\nssl_mode = "verify-identity"', "ssl_mode: 'verify-identity' is for TCP"),
        ('ssl_mode = "required"\nssl_verify_identity = true', "ssl_verify_identity: give ssl_mode only"),
        ('host = "h"\nssl_key = "/k.pem"', "ssl_key: given without ssl_cert"),
        ("fast_path = 1", "fast_path: must be true or false"),
    ],
)
def test_contradictory_tls_settings_are_one_line_errors_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _mariadb(text)
    assert str(info.value).startswith("edgelog.toml: [mariadb] ") and message in str(info.value)


# -- a real server with TLS ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[dict]:
    d = tmp_path_factory.mktemp("tls")
    make_pki(d, "good", "IP:127.0.0.1,DNS:localhost")
    make_pki(d, "other", "IP:127.0.0.1")  # a CA that did not sign the server
    data, port, sock = d / "data", _free_port(), str(d / "tls.sock")
    subprocess.run(
        [
            "mariadb-install-db",
            "--user=root",
            f"--datadir={data}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [
            "mariadbd",
            "--user=root",
            f"--datadir={data}",
            f"--port={port}",
            "--bind-address=127.0.0.1,127.0.0.2",
            f"--socket={sock}",
            f"--pid-file={d / 'tls.pid'}",
            f"--log-error={d / 'tls.log'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=32M",
            f"--ssl-ca={d / 'good-ca.pem'}",
            f"--ssl-cert={d / 'good-server.pem'}",
            f"--ssl-key={d / 'good-server.key'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            root = pymysql.connect(unix_socket=sock, user="root", autocommit=True)
            break
        except pymysql.MySQLError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((d / "tls.log").read_text()) from None
            time.sleep(0.2)
    password = secrets.token_urlsafe(16)
    with root.cursor() as cur:
        cur.execute("CREATE DATABASE chapada_imperial")
        for host in ("127.0.0.1", "127.0.0.2"):
            cur.execute(f"CREATE USER 'edgelog'@'{host}' IDENTIFIED BY %s REQUIRE SSL", (password,))
            cur.execute(
                "GRANT SELECT, INSERT, UPDATE, CREATE, ALTER, INDEX ON chapada_imperial.* "
                f"TO 'edgelog'@'{host}'"
            )
    (d / "pw").write_text(password)
    (d / "pw").chmod(0o600)
    yield {"dir": d, "port": port, "root": root}
    root.close()
    proc.terminate()
    proc.wait(60)


def _config(server: dict, host: str = "127.0.0.1", **kw) -> MariaDBConfig:
    d = server["dir"]
    return MariaDBConfig(
        user="edgelog", host=host, port=server["port"], password_file=d / "pw", connect_timeout_s=5, **kw
    )


def _tls_in_use(cfg: MariaDBConfig) -> tuple[str, str]:
    """(Ssl_version, Ssl_cipher) of a session opened by the product's connect()."""
    conn = connect(cfg)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
            status = dict(cur.fetchall())
    finally:
        conn.close()
    return status["Ssl_version"], status["Ssl_cipher"]


def test_verify_identity_encrypts_and_checks_ca_and_name(tls_server) -> None:
    d = tls_server["dir"]
    for host in ("127.0.0.1", "localhost"):  # both names are in the certificate
        cfg = _config(tls_server, host, ssl_mode="verify-identity", ssl_ca=d / "good-ca.pem")
        version, cipher = _tls_in_use(cfg)
        assert version in ("TLSv1.2", "TLSv1.3") and cipher
    # the sink, through the same connect(): a table and a row over TLS
    sink = MariaDBSink(_config(tls_server, ssl_ca=d / "good-ca.pem"), "s")  # ssl_ca: verify-identity
    assert sink.config.tls_mode == "verify-identity"
    sink.ensure_table({"tensao_l1_n": "V"})
    sink.write_batch("0123456789abcdef", ["tensao_l1_n"], [(1, "pac1", 1_780_000_000.0, True, None, 127.5)])
    sink.close()
    with tls_server["root"].cursor() as cur:
        cur.execute("SELECT seq, tensao_l1_n FROM chapada_imperial.medicoes")
        assert cur.fetchall() == ((1, 127.5),)


def test_verify_identity_refuses_another_ca_and_another_name(tls_server) -> None:
    d = tls_server["dir"]
    wrong_ca = _config(tls_server, ssl_mode="verify-identity", ssl_ca=d / "other-ca.pem")
    with pytest.raises(SinkUnavailable, match=r"certificate verify failed|CERTIFICATE_VERIFY_FAILED"):
        MariaDBSink(wrong_ca, "s").ping()
    # 127.0.0.2 reaches the same server (the login works there under verify-ca, below),
    # but the certificate does not name it
    wrong_name = _config(tls_server, "127.0.0.2", ssl_mode="verify-identity", ssl_ca=d / "good-ca.pem")
    with pytest.raises(SinkUnavailable, match=r"IP address mismatch|doesn't match|hostname mismatch"):
        MariaDBSink(wrong_name, "s").ping()
    # no ssl_ca: the system's CA store, which does not know the test CA
    with pytest.raises(SinkUnavailable, match=r"certificate verify failed|CERTIFICATE_VERIFY_FAILED"):
        MariaDBSink(_config(tls_server, ssl_mode="verify-identity"), "s").ping()


def test_verify_ca_checks_the_ca_but_not_the_name(tls_server) -> None:
    d = tls_server["dir"]
    version, _ = _tls_in_use(_config(tls_server, "127.0.0.2", ssl_mode="verify-ca", ssl_ca=d / "good-ca.pem"))
    assert version.startswith("TLS")
    other = _config(tls_server, "127.0.0.2", ssl_mode="verify-ca", ssl_ca=d / "other-ca.pem")
    with pytest.raises(SinkUnavailable, match=r"certificate verify failed|CERTIFICATE_VERIFY_FAILED"):
        MariaDBSink(other, "s").ping()


def test_required_encrypts_without_checking_anything(tls_server) -> None:
    # a name the certificate lacks and no CA: required does not care (that is its weakness)
    version, cipher = _tls_in_use(_config(tls_server, "127.0.0.2", ssl_mode="required"))
    assert version.startswith("TLS") and cipher


def test_disabled_sends_no_tls_and_is_the_default_to_loopback_without_ssl_ca(tls_server) -> None:
    for cfg in (_config(tls_server, ssl_mode="disabled"), _config(tls_server)):
        assert cfg.tls_mode == "disabled"
        with pytest.raises(SinkUnavailable, match=r"\(1045\)"):  # REQUIRE SSL: a plaintext login is refused
            MariaDBSink(cfg, "s").ping()


def test_a_server_without_tls_is_refused_before_anything_is_sent(logger_db: LoggerDB) -> None:
    """The session's MariaDB offers no TLS: every mode but disabled refuses it, with one line
    saying so; nothing of the login is sent (the server logs no failed login)."""
    password = logger_db.password_file.read_text().strip()
    before = int(logger_db.query("SHOW GLOBAL STATUS LIKE 'Access_denied_errors'")[0][1])
    for mode in ("required", "verify-ca", "verify-identity"):
        cfg = MariaDBConfig(
            user=logger_db.user,
            host="127.0.0.1",
            port=logger_db.port,
            password_file=logger_db.password_file,
            database=logger_db.database,
            ssl_mode=mode,
            ssl_ca=Path("/etc/ssl/certs/ca-certificates.crt") if mode == "verify-ca" else None,
            connect_timeout_s=5,
        )
        with pytest.raises(SinkUnavailable) as info:
            MariaDBSink(cfg, "s").ping()
        message = str(info.value)
        assert f'does not offer TLS, and ssl_mode = "{mode}" requires it' in message, message
        assert "nothing sent" in message and "\n" not in message and password not in message
    after = int(logger_db.query("SHOW GLOBAL STATUS LIKE 'Access_denied_errors'")[0][1])
    assert after == before  # no login was attempted


def test_export_uses_the_same_guarded_connection(tls_server, tmp_path: Path) -> None:
    """`edgelog export` from MariaDB over TLS: verified works, another CA fails in one line."""
    d = tls_server["dir"]
    sink = MariaDBSink(_config(tls_server, ssl_ca=d / "good-ca.pem"), "test-site")
    sink.ensure_table({"tensao_l1_n": "V"})
    sink.write_batch("fedcba9876543210", ["tensao_l1_n"], [(7, "pac1", 1_780_000_000.0, True, None, 220.5)])
    sink.close()
    for ca, ok in (("good-ca.pem", True), ("other-ca.pem", False)):
        mariadb = (
            f'[mariadb]\nuser = "edgelog"\nhost = "127.0.0.1"\nport = {tls_server["port"]}\n'
            f'password_file = "{d / "pw"}"\nssl_mode = "verify-identity"\nssl_ca = "{d / ca}"\n'
        )
        config = write_config(tmp_path, mariadb, meter_toml(1))
        out = tmp_path / "out.csv"
        result = edgelog(
            "export", "--from", "2026-05-01", "--to", "2026-07-01", "--out", str(out), config=config
        )
        if ok:
            assert result.returncode == 0, result.stderr
            assert "220.5" in out.read_text()
        else:
            assert result.returncode != 0
            assert (
                "certificate verify failed" in result.stderr and len(result.stderr.strip().splitlines()) == 1
            )
