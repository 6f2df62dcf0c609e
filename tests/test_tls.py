"""TLS to a remote MariaDB: a second, real mariadbd started with a certificate
made for this test; the logger's user is created with REQUIRE SSL."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from edgelog.config import MariaDBConfig
from edgelog.errors import SinkUnavailable
from edgelog.sync import MariaDBSink

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(d: Path, name: str, san: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name} CA",
        "-keyout",
        f"{name}-ca.key",
        "-out",
        f"{name}-ca.pem",
        cwd=d,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=mariadb-test",
        "-keyout",
        f"{name}-server.key",
        "-out",
        f"{name}-server.csr",
        cwd=d,
    )
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}-server.csr",
        "-CA",
        f"{name}-ca.pem",
        "-CAkey",
        f"{name}-ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}-server.pem",
        cwd=d,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[dict]:
    d = tmp_path_factory.mktemp("tls")
    _make_pki(d, "good", "IP:127.0.0.1,DNS:localhost")
    _make_pki(d, "other", "IP:127.0.0.1")  # a CA that did not sign the server
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
            "--bind-address=127.0.0.1",
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
        cur.execute("CREATE USER 'edgelog'@'127.0.0.1' IDENTIFIED BY %s REQUIRE SSL", (password,))
        cur.execute(
            "GRANT SELECT, INSERT, UPDATE, CREATE, ALTER, INDEX ON chapada_imperial.* "
            "TO 'edgelog'@'127.0.0.1'"
        )
    (d / "pw").write_text(password)
    (d / "pw").chmod(0o600)
    yield {"dir": d, "port": port, "root": root}
    root.close()
    proc.terminate()
    proc.wait(60)


def _config(server: dict, **kw) -> MariaDBConfig:
    d = server["dir"]
    return MariaDBConfig(
        user="edgelog",
        host="127.0.0.1",
        port=server["port"],
        password_file=d / "pw",
        connect_timeout_s=5,
        **kw,
    )


def test_tls_connection_is_encrypted_and_verified(tls_server) -> None:
    d = tls_server["dir"]
    sink = MariaDBSink(_config(tls_server, ssl_ca=d / "good-ca.pem"), "s")
    sink.ensure_table({"tensao_l1_n": "V"})
    conn = sink._connection()
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert cur.fetchone()[1] != ""
    sink.close()


def test_tls_refuses_a_server_signed_by_another_ca(tls_server) -> None:
    d = tls_server["dir"]
    sink = MariaDBSink(_config(tls_server, ssl_ca=d / "other-ca.pem"), "s")
    with pytest.raises(SinkUnavailable, match=r"certificate verify failed|CERTIFICATE_VERIFY_FAILED"):
        sink.ping()


def test_tls_checks_the_host_name_unless_told_not_to(tls_server) -> None:
    d = tls_server["dir"]
    # 'other' has no SAN for 'localhost'... use the good CA but connect by a name not in the SAN
    cfg = _config(tls_server, ssl_ca=d / "good-ca.pem")
    wrong_name = MariaDBConfig(**{**cfg.__dict__, "host": "127.0.0.2"})  # not in the certificate
    with pytest.raises(SinkUnavailable):
        MariaDBSink(wrong_name, "s").ping()


def test_the_user_requires_tls_and_unverified_tls_is_only_opportunistic(tls_server) -> None:
    d = tls_server["dir"]
    password = (d / "pw").read_text()
    # REQUIRE SSL: a plaintext login is refused by the server
    with pytest.raises(pymysql.MySQLError) as err:
        pymysql.connect(
            host="127.0.0.1",
            port=tls_server["port"],
            user="edgelog",
            password=password,
            ssl_disabled=True,
            connect_timeout=5,
        )
    assert err.value.args[0] == 1045
    # without ssl_ca, PyMySQL still encrypts (its PREFERRED mode) but verifies nothing:
    # that is why the README asks for ssl_ca with a remote server
    sink = MariaDBSink(_config(tls_server), "s")
    sink.ping()
    sink.close()
