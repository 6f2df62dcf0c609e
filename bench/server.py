"""A private MariaDB for the bench: `mariadb-install-db` into a temp dir, then `mariadbd`.

Like the tests (pytest-mysql), it never touches the system's MariaDB service:
its own data directory, unix socket and a free TCP port on 127.0.0.1, started
with ``--no-defaults`` so /etc/mysql does not change the figures.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

MARIADBD = shutil.which("mariadbd", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
#: The README's grant for the logger's user: no DELETE, no DROP, no FILE.
PRIVILEGES = "SELECT, INSERT, UPDATE, CREATE, ALTER, INDEX"

#: Server settings, the same for every measurement of a run (they are in the report).
SERVER_PARAMS = (
    "--innodb-buffer-pool-size=1G",
    "--innodb-log-file-size=512M",
    "--max-allowed-packet=64M",
    "--skip-name-resolve",
    "--local-infile=1",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoggerAccount:
    database: str
    user: str
    password_file: Path


class ServerFiles:
    """Where a private mariadbd keeps its files: all below `base`."""

    base: Path

    @property
    def socket(self) -> str:
        return str(self.base / "mariadb.sock")

    @property
    def datadir(self) -> Path:
        return self.base / "data"


@dataclass
class PrivateMariaDB(ServerFiles):
    base: Path
    params: tuple[str, ...] = SERVER_PARAMS
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> PrivateMariaDB:
        self.base.mkdir(parents=True, exist_ok=True)
        user = ["--user=root"] if os.geteuid() == 0 else []
        subprocess.run(
            [INSTALL_DB, "--no-defaults", *user, f"--datadir={self.datadir}", "--skip-test-db"],
            check=True,
            capture_output=True,
        )
        log = (self.base / "mariadbd.log").open("ab")
        self.proc = subprocess.Popen(
            [
                MARIADBD,
                "--no-defaults",
                *user,
                f"--datadir={self.datadir}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.base / 'mariadbd.pid'}",
                f"--tmpdir={self.base}",
                f"--log-error={self.base / 'mariadbd.err'}",
                *self.params,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited: see {self.base / 'mariadbd.err'}")
            try:
                self.root().close()
                return self
            except pymysql.MySQLError:
                time.sleep(0.2)
        raise RuntimeError("mariadbd did not start in time")

    def root(self, **kwargs: Any) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=self.socket, user="root", autocommit=True, **kwargs)

    def version(self) -> str:
        conn = self.root()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                return str(cur.fetchone()[0])
        finally:
            conn.close()

    def logger_account(self, name: str, secrets_dir: Path) -> LoggerAccount:
        """A database and a user holding only the README's privileges."""
        password = secrets.token_urlsafe(18)
        conn = self.root()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}`")
                for host in ("localhost", "127.0.0.1"):
                    cur.execute(f"CREATE USER '{name}'@'{host}' IDENTIFIED BY %s", (password,))
                    cur.execute(f"GRANT {PRIVILEGES} ON `{name}`.* TO '{name}'@'{host}'")
        finally:
            conn.close()
        secrets_dir.mkdir(parents=True, exist_ok=True)
        path = secrets_dir / f"{name}.password"
        path.write_text(password + "\n")
        path.chmod(0o600)
        return LoggerAccount(database=name, user=name, password_file=path)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # mariadbd shuts down cleanly on SIGTERM
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
