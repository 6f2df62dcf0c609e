"""`[mariadb] hosts`, batches too large, `manage_schema = false`, against real servers.

The Galera cluster itself is in tests/galera/; here: the host list's config, moving
on past a dead server at once, the packets the sink sends never exceeding the
server's max_allowed_packet, and a table the logger may not change. The servers are
the session's mariadbd and closed ports of 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from helpers import (
    COLUMNS,
    EXTRA,
    EXTRA_TOML,
    UNITS,
    LoggerDB,
    edgelog,
    failed_sync,
    free_port,
    meter_toml,
    parse_config,
    running_logger,
    wait_for,
    write_config,
)

from edgelog.buffer import Buffer
from edgelog.buffer.store import NewReading
from edgelog.config import Config, MariaDBConfig
from edgelog.errors import ConfigError, SchemaMismatch
from edgelog.sync import MariaDBSink, SyncWorker, create_table_sql
from edgelog.sync.connect import first_node
from edgelog.sync.fit import BatchFit
from edgelog.sync.nodes import NODE_KEY, NODES_FAILED_KEY, Node, Nodes, nodes_of, parse_failed

SITE = "nodes-site"


def parse(mariadb: str, extra_register: bool = False) -> Config:
    meter = meter_toml(5020) + (EXTRA_TOML if extra_register else "")
    return parse_config(f'[mariadb]\nuser = "edgelog"\n{mariadb}\n', meter, site=SITE)


def cluster_of(logger_db: LoggerDB, hosts: list[str], **extra: Any) -> Config:
    """A config for `logger_db` (the session server, over TCP) with this host list."""
    return parse_config(
        logger_db.toml(hosts=hosts, connect_timeout_s=2, **extra), meter_toml(5020), site=SITE
    )


def values(k: int) -> dict[str, float]:
    return {name: (k + 1) / 7 + i for i, name in enumerate(COLUMNS)}


def fill(buffer: Buffer, n: int) -> None:
    for start in range(0, n, 1000):
        stop = min(n, start + 1000)
        buffer.append_many([NewReading("pac1", 1_700_000_000.0 + k, values(k)) for k in range(start, stop)])


# -- the host list in the config ---------------------------------------------------------


def test_hosts_take_a_port_or_the_default_and_ipv6_in_brackets() -> None:
    cfg = parse('hosts = ["db1:3307", "db2", "[2001:db8::7]:3308", "[::1]", "10.0.0.3:3306"]')
    assert cfg.mariadb.hosts == (
        ("db1", 3307),
        ("db2", 3306),
        ("2001:db8::7", 3308),
        ("::1", 3306),
        ("10.0.0.3", 3306),
    )
    labels = [n.label for n in nodes_of(cfg.mariadb)]
    assert labels == ["db1:3307", "db2:3306", "[2001:db8::7]:3308", "[::1]:3306", "10.0.0.3:3306"]
    assert "db1" in repr(cfg.mariadb) and "password" in repr(cfg.mariadb)
    assert parse("").mariadb.hosts == () and parse("").mariadb.manage_schema is True
    assert nodes_of(parse('unix_socket = "/run/mysqld/mysqld.sock"').mariadb) == (
        Node(unix_socket="/run/mysqld/mysqld.sock"),
    )
    assert parse("manage_schema = false").mariadb.manage_schema is False


def test_tls_follows_each_node_a_remote_node_is_verified_by_default() -> None:
    remote = parse('hosts = ["db1.example.org", "127.0.0.1:3307"]').mariadb
    assert remote.tls_mode == "verify-identity" and not remote.is_local
    first, second = (node.config(remote) for node in nodes_of(remote))
    assert (first.host, first.port, first.hosts, first.tls_mode) == (
        "db1.example.org",
        3306,
        (),
        "verify-identity",
    )
    assert (second.host, second.port, second.tls_mode) == ("127.0.0.1", 3307, "disabled")
    assert first_node(remote) == first and first_node(first) is first
    local = parse('hosts = ["127.0.0.1:3307", "[::1]:3308"]').mariadb
    assert local.tls_mode == "disabled" and local.is_local
    pinned = parse('hosts = ["127.0.0.1:3307"]\nssl_mode = "required"').mariadb
    assert nodes_of(pinned)[0].config(pinned).tls_mode == "required"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('hosts = ["db1"]\nhost = "db0"', "[mariadb] hosts: give either hosts or host, not both"),
        ('hosts = ["db1"]\nport = 3307', "[mariadb] hosts: give either hosts or port, not both"),
        ('hosts = ["db1"]\nunix_socket = "/s"', "give either hosts or unix_socket, not both"),
        ("hosts = []", "[mariadb] hosts: must name 1–16 nodes, got 0"),
        ('hosts = "db1,db2"', 'hosts: must be an array of "host:port" strings, got "db1,db2"'),
        ("hosts = [3306]", 'hosts: must be an array of "host:port" strings, got 3306'),
        ('hosts = ["db1:0"]', "a port must be 1–65535"),
        ('hosts = ["db1:99999"]', "a port must be 1–65535"),
        ('hosts = ["db1:port"]', "a port must be 1–65535"),
        ('hosts = ["2001:db8::1"]', "an IPv6 address goes in brackets: [2001:db8::1]:3306"),
        ('hosts = ["[::1"]', "an IPv6 address goes in brackets"),
        ('hosts = ["[::1]x"]', "an IPv6 address goes in brackets"),
        ('hosts = [":3306"]', "each must be a host name or address"),
        ('hosts = ["db 1"]', "each must be a host name or address"),
        ('hosts = ["user@db1"]', "each must be a host name or address"),
        ('hosts = ["db1", "db1:3306"]', '"db1:3306" is listed twice'),
        ('manage_schema = "no"', "[mariadb] manage_schema: must be true or false"),
    ],
)
def test_bad_host_lists_are_one_line_naming_the_key(line: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(line)
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)


# -- moving on between nodes ---------------------------------------------------------------


def test_the_node_ring_stays_on_the_node_that_works_and_kills_orphans_only_where_they_live() -> None:
    a, b, c = Node("a"), Node("b"), Node("c")
    ring = Nodes([a, b, c], clock=lambda: 100.0)
    assert [n.label for n in ring.round()] == ["a:3306", "b:3306", "c:3306"]
    assert ring.current == a  # after a full round of failures: where the round started
    for node in ring.round():
        if node == b:
            ring.worked(node)
            break
        ring.failure(node, "down")
    assert ring.current == b and ring.used == b
    assert [n.label for n in ring.round()] == ["b:3306", "c:3306", "a:3306"]
    assert ring.state() == ("b:3306", json.dumps({"a:3306": {"at": 100.0, "error": "down"}}))
    ring.orphan(a, 41)
    assert ring.take_orphan(b, 7) is None  # thread 41 of node a means nothing on node b
    assert ring.take_orphan(a, 41) is None  # the new session got the same id: never KILL it
    ring.orphan(a, 41)
    assert ring.take_orphan(a, 9) == 41 and ring.take_orphan(a, 9) is None
    ring.worked(a)
    assert parse_failed(ring.state()[1]) == {}
    assert parse_failed("not json") == {} and parse_failed(None) == {}


def test_batch_fit_keeps_the_size_that_worked() -> None:
    fit = BatchFit(2000)
    assert fit.size == 2000
    fit.refused(2000)
    assert fit.size == 1000
    fit.refused(1000)
    fit.worked(500)
    fit.worked(500)
    fit.worked(37)  # a short tail does not shrink it
    assert fit.size == 500
    fit.refused(1)
    assert fit.size == 1
    fit.reset()
    assert fit.size == 2000


def test_a_dead_node_first_in_the_list_is_passed_at_once_and_recorded(
    logger_db: LoggerDB, buffer: Buffer, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    live = f"127.0.0.1:{logger_db.port}"
    cfg = cluster_of(logger_db, [dead, live])
    worker = SyncWorker(buffer, MariaDBSink(cfg.mariadb, SITE), UNITS, 100, cfg.sync)
    fill(buffer, 250)
    started = time.monotonic()
    try:
        assert worker.drain() == 250
    finally:
        worker.sink.close()
    assert time.monotonic() - started < 5  # no backoff: straight to the next node
    assert worker.failures == 0
    assert buffer.get_meta(NODE_KEY) == live
    failed = parse_failed(buffer.get_meta(NODES_FAILED_KEY))
    assert list(failed) == [dead] and "(2003)" in failed[dead]["error"]
    assert logger_db.query(f"SELECT COUNT(DISTINCT seq) FROM `{logger_db.database}`.medicoes")[0][0] == 250

    # sync-status shows both, read from the buffer (another process: the real command)
    (tmp_path / "run").mkdir()
    config = write_config(
        tmp_path / "run",
        logger_db.toml(hosts=[dead, live]),
        meter_toml(5020),
        buffer={"path": buffer.path},
    )
    result = edgelog("sync-status", "--json", config=config)
    data = json.loads(result.stdout)
    assert data["mariadb_node"] == live and data["mariadb_reachable"] is True
    assert list(data["mariadb_nodes_failed"]) == [dead]
    failure = data["mariadb_nodes_failed"][dead]
    assert "(2003)" in failure["error"] and failure["since"]
    screen = edgelog("sync-status", config=config).stdout
    assert f"sync writes through {live}" in screen and f"{dead} failed" in screen


def test_every_node_down_is_one_error_naming_each_after_one_round(buffer: Buffer) -> None:
    ports = [free_port(), free_port()]
    cfg = MariaDBConfig(user="edgelog", password="pw", hosts=tuple(("127.0.0.1", p) for p in ports))
    worker, message, took = failed_sync(buffer, cfg)
    assert took < 3
    assert message.startswith("MariaDB: all 2 nodes failed: ") and "\n" not in message
    for port in ports:
        assert f"127.0.0.1:{port} (2003)" in message
    assert worker.sink.nodes.current == worker.sink.nodes.nodes[0]  # the next round starts there again
    assert buffer.sent_upto == 0


def test_a_plain_mariadb_counts_as_ready_and_reads_do_not_wait(logger_db: LoggerDB) -> None:
    cfg = cluster_of(logger_db, [f"127.0.0.1:{logger_db.port}"])
    sink = MariaDBSink(cfg.mariadb, SITE)
    try:
        sink.ping()

        def sync_wait(cur) -> int:
            cur.execute("SELECT @@session.wsrep_sync_wait")
            return int(cur.fetchone()[0])

        assert sink._run(sync_wait) == 0  # wsrep is off: nothing set
        assert sink._session is not None and sink._session.wsrep is False
    finally:
        sink.close()


# -- packets and max_allowed_packet ----------------------------------------------------------


@pytest.fixture
def small_packets(logger_db: LoggerDB) -> Iterator[int]:
    """The session server reads packets of at most 16 KiB (for new connections)."""
    (before,) = logger_db.query("SELECT @@global.max_allowed_packet")[0]
    logger_db.query("SET GLOBAL max_allowed_packet = 16384")
    try:
        yield 16384
    finally:
        logger_db.query("SET GLOBAL max_allowed_packet = %s", (before,))


@pytest.mark.parametrize("binary", [True, False])
def test_no_packet_exceeds_max_allowed_packet_a_batch_too_large_is_split(
    logger_db: LoggerDB, buffer: Buffer, small_packets: int, binary: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = cluster_of(logger_db, [f"127.0.0.1:{logger_db.port}"])
    sink = MariaDBSink(cfg.mariadb, SITE, binary=binary)
    worker = SyncWorker(buffer, sink, UNITS, 2000, cfg.sync)
    fill(buffer, 3000)
    caplog.set_level("INFO")
    try:
        assert worker.drain() == 3000
    finally:
        sink.close()
    assert logger_db.query(f"SELECT COUNT(DISTINCT seq) FROM `{logger_db.database}`.medicoes")[0][0] == 3000
    assert buffer.status().unsent == 0
    if binary:  # 128-row executions (about 30 KB) cannot fit: the batch is halved until one fits
        assert sink.stats["binary"] >= 1 and worker.fit.size < 128
        assert "too large; writing it in halves" in caplog.text
        assert "(1153)" in caplog.text and "not sent" in caplog.text
    else:  # PyMySQL's multi-row INSERTs are cut to fit: no batch refused
        assert sink.stats["text"] >= 2 and worker.fit.size == 2000
        assert "too large" not in caplog.text


# -- manage_schema = false ---------------------------------------------------------------------


def test_manage_schema_false_runs_no_ddl_and_names_the_alter_to_run(
    logger_db: LoggerDB, tmp_path: Path, mariadb_root: Any
) -> None:
    db, user = logger_db.database, logger_db.user
    for host in ("localhost", "127.0.0.1"):  # SELECT, INSERT, UPDATE: all it needs now
        logger_db.query(f"REVOKE CREATE, ALTER, INDEX ON `{db}`.* FROM '{user}'@'{host}'")
    buffer = Buffer(tmp_path / "buffer.sqlite3", [*COLUMNS, EXTRA])
    for k in range(5):
        buffer.append("pac1", 1_700_000_000.0 + k, {**values(k), EXTRA: k * 1.5})
    buffer.close()
    config = write_config(
        tmp_path,
        logger_db.toml(manage_schema=False),
        meter_toml(5020) + EXTRA_TOML,
        buffer={"path": buffer.path},
    )

    missing = edgelog("sync", "--drain", config=config)
    assert missing.returncode == 2, missing.stderr
    assert f"table {db}.medicoes does not exist and [mariadb] manage_schema = false" in missing.stderr
    assert "`edgelog schema` prints the CREATE TABLE" in missing.stderr
    assert not logger_db.query(f"SHOW TABLES IN `{db}`")  # nothing created
    printed = edgelog("schema", "--alter", config=config, check=True).stdout
    assert (
        f"`{db}`.`medicoes` does not exist" in printed and "CREATE TABLE IF NOT EXISTS `medicoes`" in printed
    )

    # the DBA creates the table of an older config (without the extra register)
    logger_db.query(f"USE `{db}`")
    logger_db.query(create_table_sql("medicoes", UNITS))
    lacking = edgelog("sync", "--drain", config=config)
    assert lacking.returncode == 2
    # a float32 register: FLOAT (edgelog/sync/schema.py)
    alter = f"ALTER TABLE `{db}`.`medicoes` ADD COLUMN `{EXTRA}` FLOAT NULL COMMENT 'kWh'"
    line = lacking.stderr.strip().splitlines()[-1]
    assert line.startswith("edgelog: error: ") and f"lacks column(s) {EXTRA}" in line
    assert f"have the DBA run `{alter};`" in line and "`edgelog schema --alter` prints it" in line
    printed = edgelog("schema", "--alter", config=config, check=True).stdout.strip()
    assert printed == f"{alter};"

    logger_db.query(printed)
    assert "nothing to alter" in edgelog("schema", "--alter", config=config, check=True).stdout
    drained = edgelog("sync", "--drain", config=config)
    assert drained.returncode == 0, drained.stderr
    assert "sent 5 rows" in drained.stdout
    rows = logger_db.rows()
    assert [r[EXTRA] for r in rows] == [k * 1.5 for k in range(5)]
    doctor = edgelog("doctor", config=config).stdout
    mariadb = [line for line in doctor.splitlines() if line.split()[1:2] == ["mariadb"]]
    assert len(mariadb) == 1 and mariadb[0].startswith("OK"), doctor  # no DDL privileges asked for
    assert "exactly the privileges it needs" in mariadb[0]


def test_manage_schema_false_in_process_raises_schema_mismatch(logger_db: LoggerDB, buffer: Buffer) -> None:
    cfg = cluster_of(logger_db, [f"127.0.0.1:{logger_db.port}"], manage_schema=False)
    sink = MariaDBSink(cfg.mariadb, SITE)
    worker = SyncWorker(buffer, sink, UNITS, 100, cfg.sync)
    fill(buffer, 3)
    try:
        with pytest.raises(SchemaMismatch):
            worker.sync_once()
    finally:
        sink.close()
    assert buffer.sent_upto == 0
    assert not logger_db.query(f"SHOW TABLES IN `{logger_db.database}`")


# -- conflicts: 1213 ----------------------------------------------------------------------------


def test_a_deadlock_victim_is_written_again_at_once_not_after_a_backoff(
    logger_db: LoggerDB, buffer: Buffer, caplog: pytest.LogCaptureFixture
) -> None:
    """A real InnoDB deadlock (what a Galera certification conflict also answers: 1213).
    A big transaction holds the key of the batch's last row and then asks for its first:
    InnoDB rolls back the smaller one, the sink's. The sink writes the batch again at once."""
    db = logger_db.database
    cfg = cluster_of(logger_db, [f"127.0.0.1:{logger_db.port}"])
    sink = MariaDBSink(cfg.mariadb, SITE, binary=False)  # one multi-row INSERT: rows in seq order
    worker = SyncWorker(buffer, sink, UNITS, 100, cfg.sync)
    fill(buffer, 11)
    buffer_id = buffer.buffer_id
    row = (
        f"INSERT INTO `{db}`.medicoes (site, meter, buffer_id, seq, measured_at) "
        "VALUES (%s, 'pac1', %s, %s, '2026-01-01')"
    )
    sink.ensure_table(UNITS)
    logger_db.query(f"CREATE TABLE `{db}`.ballast (n INT PRIMARY KEY) ENGINE=InnoDB")
    blocker = pymysql.connect(unix_socket=logger_db.socket, user="root", autocommit=False)

    def waiting() -> int:
        (n,) = logger_db.query(
            "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
        )[0]
        return int(n)

    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(sent=worker.sync_once()))
    caplog.set_level("INFO")
    try:
        with blocker.cursor() as cur:
            cur.executemany(f"INSERT INTO `{db}`.ballast VALUES (%s)", [(n,) for n in range(2000)])
            cur.execute(row, (SITE, buffer_id, 11))  # the batch's last row
        thread.start()
        wait_for(lambda: waiting() == 1, timeout=20, what="the sink to wait for the blocker's row")
        with blocker.cursor() as cur:
            cur.execute(row, (SITE, buffer_id, 1))  # the batch's first row: a deadlock
        wait_for(lambda: "trying again" in caplog.text and waiting() == 1, timeout=20, what="the retry")
        blocker.rollback()
        thread.join(30)
    finally:
        blocker.close()
        sink.close()
    assert result["sent"] == 11
    assert "(1213) Deadlock found" in caplog.text and "trying again (2 of 3)" in caplog.text
    assert worker.failures == 0 and buffer.sent_upto == 11
    seqs = [r[0] for r in logger_db.query(f"SELECT seq FROM `{db}`.medicoes ORDER BY seq")]
    assert seqs == list(range(1, 12))


def test_run_with_manage_schema_false_keeps_polling_names_the_alter_and_resumes_after_it(
    logger_db: LoggerDB, tmp_path: Path, simulator
) -> None:
    db = logger_db.database
    logger_db.query(f"USE `{db}`")
    logger_db.query(create_table_sql("medicoes", UNITS))  # the DBA's table, of an older config
    config = write_config(
        tmp_path, logger_db.toml(manage_schema=False), meter_toml(simulator.port, interval_s=0.2) + EXTRA_TOML
    )
    with running_logger(config) as logger:
        wait_for(lambda: logger.lines("have the DBA run `ALTER TABLE"), what="the ALTER in the log")
        first = json.loads(edgelog("sync-status", "--json", config=config).stdout)
        time.sleep(1)
        later = json.loads(edgelog("sync-status", "--json", config=config).stdout)
        assert later["unsent"] > first["unsent"] > 0  # readings keep buffering
        assert "lacks column(s) energia_extra" in later["last_error"]
        assert logger.alive()
        logger_db.query(edgelog("schema", "--alter", config=config, check=True).stdout)
        wait_for(
            lambda: json.loads(edgelog("sync-status", "--json", config=config).stdout)["unsent"] == 0,
            timeout=30,
            what="the backlog to drain once the column is there",
        )
    text = logger.text()
    assert "creating table" not in text and "adding column" not in text  # no DDL of its own
    assert logger_db.query(f"SELECT COUNT(*) FROM `{db}`.medicoes")[0][0] >= 10
