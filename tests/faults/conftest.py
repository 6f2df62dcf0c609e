"""Fixtures of the fault-injection suite (see kit.py for the tools).

The session MariaDB of tests/conftest.py is shared by every test, so no test here
stops it: the outage test starts a private mariadbd of its own (`own_mariadb`).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest
from conftest import LoggerDB, create_logger_db
from pytest_mysql.executor import MySQLExecutor

from edgelog.simulate import Pac3100Simulator, SimulatorThread

from .kit import Logger, TcpProxy


@pytest.fixture
def sim2() -> Iterator[SimulatorThread]:
    """A second PAC3100 simulator (a second meter, on its own port)."""
    thread = SimulatorThread(Pac3100Simulator()).start()
    yield thread
    thread.stop()


@pytest.fixture
def logger_factory(tmp_path: Path) -> Iterator[Callable[..., Logger]]:
    """Make Logger handles; any process still running at the end is killed."""
    made: list[Logger] = []

    def make(config: Path, buffer: Path | None = None, log: str = "run.log", **env: str) -> Logger:
        logger = Logger(
            config=config, log=tmp_path / log, buffer=buffer or tmp_path / "buffer.sqlite3", env=env
        )
        made.append(logger)
        return logger

    yield make
    for logger in made:
        logger.ensure_stopped()


@pytest.fixture
def proxy(mysql_proc, logger_db) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the session MariaDB (closed before logger_db drops its
    database: sessions the proxy left open in the server would block the DROP)."""
    p = TcpProxy(mysql_proc.port)
    yield p
    p.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnMariaDB:
    """A private mariadbd this test may stop and start (the session one must stay up)."""

    def __init__(self, executor: MySQLExecutor):
        self.executor = executor
        self.port = executor.port
        self.socket = executor.unixsocket

    def root(self) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=self.socket, user="root", autocommit=True)

    def stop(self) -> None:
        self.executor.stop()

    def start(self) -> None:
        self.executor.start()


@pytest.fixture
def own_mariadb(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OwnMariaDB]:
    from pytest_mysql.config import get_config

    config = get_config(request)
    port = _free_port()
    base = tmp_path_factory.mktemp("own-mariadb")
    executor = MySQLExecutor(
        mysqld_safe=config.mysqld_safe,
        mysqld=config.mysqld,
        admin_exec=config.admin,
        logfile_path=str(base / "mariadb.log"),
        base_directory=base,
        params=config.params,
        user=config.user or "root",
        host="127.0.0.1",
        port=port,
        install_db=config.install_db,
    )
    executor.start()
    try:
        yield OwnMariaDB(executor)
    finally:
        if executor.running():
            executor.stop()
        shutil.rmtree(base, ignore_errors=True)


def make_logger_db(server: OwnMariaDB, tmp_path: Path) -> LoggerDB:
    """Like tests/conftest.py's logger_db, on `server`."""
    return create_logger_db(server.root(), server.socket, server.port, tmp_path / "own.password")
