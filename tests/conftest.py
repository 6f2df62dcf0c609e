"""The fixtures of every test directory: a real MariaDB (pytest-mysql, or a private
mariadbd a test may stop, or a 3-node Galera cluster), real Modbus servers, `edgelog run`
handles, a TCP proxy that fails like a network. The helpers they build on are in helpers.py.

Nothing here is a fake: the MariaDB is Debian's mariadbd started for this test
session, the meter is pymodbus's server running the PAC3100 simulator.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pymysql
import pytest
from faults.proxy import TcpProxy
from helpers import (
    COLUMNS,
    FAST_SYNC,
    Account,
    Logger,
    LoggerDB,
    OwnMariaDB,
    create_logger_db,
    drop_logger_db,
    free_port,
    meter_toml,
    write_config,
)

from edgelog.buffer import Buffer
from edgelog.profiles import PAC3100_ENERGIA
from edgelog.simulate import Pac3100Simulator, SimulatorThread

if TYPE_CHECKING:
    from bench import galera


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """With EDGELOG_NO_SKIPS=1 (CI sets it) a skipped test fails: there every tool a test
    needs is installed by scripts/setup, so a skip means a fault goes untested."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and os.environ.get("EDGELOG_NO_SKIPS") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped where skips are not allowed (EDGELOG_NO_SKIPS=1): {reason}"


# -- MariaDB -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mariadb_root(mysql_proc) -> Iterator[Any]:
    conn = pymysql.connect(unix_socket=mysql_proc.unixsocket, user="root", autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def logger_db(mysql_proc, mariadb_root, tmp_path: Path) -> Iterator[LoggerDB]:
    """`create_logger_db` on the session's MariaDB, dropped afterwards."""
    db = create_logger_db(mariadb_root, mysql_proc.unixsocket, mysql_proc.port, tmp_path / "mariadb.password")
    yield db

    def as_root(sql: str) -> None:
        with mariadb_root.cursor() as cur:
            cur.execute(sql)

    drop_logger_db(as_root, db)


@pytest.fixture
def own_mariadb(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OwnMariaDB]:
    """A private mariadbd this test may stop and start (the session one must stay up:
    every test shares it)."""
    from pytest_mysql.config import get_config
    from pytest_mysql.executor import MySQLExecutor

    config = get_config(request)
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
        port=free_port(),
        install_db=config.install_db,
    )
    executor.start()
    try:
        yield OwnMariaDB(executor)
    finally:
        if executor.running():
            executor.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def proxy(mysql_proc, logger_db) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the session MariaDB (closed before logger_db drops its
    database: sessions the proxy left open in the server would block the DROP)."""
    p = TcpProxy(mysql_proc.port)
    yield p
    p.close()


# -- Galera --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster() -> Iterator[galera.Cluster]:
    """A real 3-node Galera cluster for the session (bench/galera.py starts it, as for the
    bench), under /var/tmp, which the nodes' user `mysql` can traverse (pytest's own temp
    directories are 0700). At the end every node is stopped by its pid, killed if it must."""
    from bench import galera

    why = galera.missing()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="edgelog-galera-", dir="/var/tmp"))
    base.chmod(0o755)  # the nodes run as mysql
    started = galera.Cluster(base / "cluster")
    try:
        started.start()
        yield started
    finally:
        started.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def healthy(cluster: galera.Cluster) -> galera.Cluster:
    """The session's cluster, every node running and Synced (frozen nodes thawed, killed
    ones started again)."""
    cluster.heal()
    return cluster


@pytest.fixture
def account(healthy: galera.Cluster, tmp_path: Path) -> Iterator[Account]:
    """A database and a least-privilege user of its own on the cluster."""
    first = healthy.nodes[0]
    db = create_logger_db(first.root(), first.socket, first.port, tmp_path / "galera.password")
    yield Account(db, healthy)
    db.root.close()
    healthy.heal()
    drop_logger_db(healthy.running_node().query, db)


# -- meters and the logger -----------------------------------------------------------------


def _simulator(sim: Pac3100Simulator) -> Iterator[SimulatorThread]:
    thread = SimulatorThread(sim).start()
    yield thread
    thread.stop()


@pytest.fixture
def simulator() -> Iterator[SimulatorThread]:
    """A PAC3100 simulator on a free TCP port of 127.0.0.1."""
    yield from _simulator(Pac3100Simulator())


@pytest.fixture
def sim2() -> Iterator[SimulatorThread]:
    """A second PAC3100 simulator (a second meter, on its own port)."""
    yield from _simulator(Pac3100Simulator())


@pytest.fixture
def simulator_energia() -> Iterator[SimulatorThread]:
    """A PAC3100 simulator that also serves the energy counters (profile pac3100-energia)."""
    yield from _simulator(Pac3100Simulator(profile=PAC3100_ENERGIA))


@pytest.fixture
def run_config(tmp_path: Path, simulator: SimulatorThread, logger_db: LoggerDB) -> Path:
    """tmp_path/edgelog.toml: the test's MariaDB over its socket, the simulator polled every 0.2 s."""
    return write_config(tmp_path, logger_db.toml(), meter_toml(simulator.port, interval_s=0.2))


@pytest.fixture
def offline_config(tmp_path: Path, simulator: SimulatorThread, logger_db: LoggerDB) -> Path:
    """`run_config` with MariaDB unreachable (a port of 127.0.0.1 where nothing listens)."""
    return write_config(tmp_path, logger_db.unreachable_toml(), meter_toml(simulator.port, interval_s=0.2))


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[Buffer]:
    """A buffer of the pac3100's columns, tmp_path/buffer.sqlite3, open for the test."""
    b = Buffer(tmp_path / "buffer.sqlite3", COLUMNS)
    yield b
    b.close()


@pytest.fixture
def logger_factory(tmp_path: Path) -> Iterator[Callable[..., Logger]]:
    """Make `Logger` handles of the fault tests: `edgelog run` on a config of these sections
    (`write_config` in tmp_path, the sync faster: FAST_SYNC updated by `sync`), with `env`,
    its output in tmp_path/`log`. Any process still running at the end is killed."""
    made: list[Logger] = []

    def make(
        *sections: str,
        sync: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        log: str = "run.log",
        **keys: Any,
    ) -> Logger:
        config = write_config(tmp_path, *sections, sync={**FAST_SYNC, **(sync or {})}, **keys)
        logger = Logger(config=config, log=tmp_path / log, env=dict(env or {}))
        made.append(logger)
        return logger

    yield make
    for logger in made:
        logger.ensure_stopped()
