"""A real 3-node MariaDB Galera cluster, started once for the session (about 10 s).

Three Debian `mariadbd` with wsrep on and Galera 4, on their own SQL, gcomm, IST
and SST ports of 127.0.0.1, SST by rsync, running as user `mysql` (bench/galera.py
starts them; the bench uses the same cluster). The base directory is under
/var/tmp, which `mysql` can traverse (pytest's own temp directories are 0700).
Every test starts from a healed cluster (frozen nodes thawed, killed ones started
again, all Synced) and gets its own database and least-privilege user. At the end
every node is stopped by its pid, killed if it does not stop.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
from conftest import ROOT, LoggerDB, create_logger_db

if str(ROOT) not in sys.path:  # bench/ holds the cluster launcher the bench shares
    sys.path.insert(0, str(ROOT))

from bench import galera

SITE = "galera-site"


@pytest.fixture(scope="session")
def cluster() -> Iterator[galera.Cluster]:
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
    """The session's cluster, every node running and Synced."""
    cluster.heal()
    return cluster


@dataclass
class Account:
    """A database and a logger user on the cluster, reached through `db.root` on one node."""

    db: LoggerDB
    cluster: galera.Cluster

    def toml(self, hosts: list[str] | None = None, **extra: Any) -> str:
        keys: dict[str, Any] = {
            "user": self.db.user,
            "password_file": str(self.db.password_file),
            "database": self.db.database,
            "hosts": hosts or self.cluster.hosts(),
            "connect_timeout_s": 2,
            "read_timeout_s": 20,
            "write_timeout_s": 20,
            **extra,
        }
        return "[mariadb]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())

    def on(self, node: galera.Node) -> LoggerDB:
        """The same account, read through `node` (root over its socket)."""
        return LoggerDB(
            self.db.database,
            self.db.user,
            self.db.password_file,
            node.socket,
            "127.0.0.1",
            node.port,
            node.root(),
        )

    def count(self, node: galera.Node, where: str = "1") -> tuple[int, int]:
        """(rows, distinct (site, buffer_id, seq)) of the table as `node` has it."""
        try:
            rows = node.query(
                f"SELECT COUNT(*), COUNT(DISTINCT site, buffer_id, seq) FROM `{self.db.database}`.medicoes "
                f"WHERE {where}"
            )
        except pymysql.MySQLError as exc:
            if exc.args and exc.args[0] == 1146:  # the table does not exist yet
                return 0, 0
            raise
        return int(rows[0][0]), int(rows[0][1])

    def sessions(self, node: galera.Node) -> int:
        """The logger user's sessions on `node`."""
        rows = node.query(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE user = %s", (self.db.user,)
        )
        return int(rows[0][0])


@pytest.fixture
def account(healthy: galera.Cluster, tmp_path: Path) -> Iterator[Account]:
    first = healthy.nodes[0]
    root = first.root()
    db = create_logger_db(root, first.socket, first.port, tmp_path / "galera.password")
    yield Account(db, healthy)
    db.root.close()
    healthy.heal()
    node = healthy.running_node()
    node.query(f"DROP DATABASE IF EXISTS `{db.database}`")
    for host in ("localhost", "127.0.0.1"):
        node.query(f"DROP USER IF EXISTS '{db.user}'@'{host}'")


def write_config(
    tmp_path: Path, mariadb: str, *, site: str = SITE, buffer: Path | None = None, meter: str | None = None
) -> Path:
    """A config for `site` with this [mariadb] table; the meter is a simulator's (`meter`),
    or an address nobody listens on (for `sync --drain`, which polls nothing)."""
    buffer = buffer or tmp_path / "buffer.sqlite3"
    meter = meter or '[[meters]]\nname = "pac1"\ntransport = "tcp"\nhost = "127.0.0.1"\nport = 1\n'
    text = (
        f"site = {json.dumps(site)}\n\n[buffer]\npath = {json.dumps(str(buffer))}\n\n"
        "[sync]\ninterval_s = 0.2\nbackoff_initial_s = 0.2\nbackoff_max_s = 1.0\n\n"
        f"{mariadb}\n{meter}"
    )
    path = tmp_path / f"{site}.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path
