"""Many sites, one Galera cluster: the sink fails over between nodes by itself, splits
the batches the cluster refuses, waits out a loss of quorum, and three sites draining
into three nodes at once lose and double nothing.

Everything is real: three mariadbd with Galera 4 (the `cluster` fixture of
tests/conftest.py, started by bench/galera.py), `edgelog sync --drain`
and `edgelog run` as processes, nodes killed with SIGKILL or frozen with SIGSTOP.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from helpers import (
    FAST_SYNC,
    Account,
    assert_exactly_once,
    edgelog,
    free_port,
    meter_toml,
    running_logger,
    start_edgelog,
    wait_for,
    write_config,
)

from bench.data import build_buffer
from edgelog.sync import nodes

pytestmark = pytest.mark.slow
#: The meter of the configs of `sync --drain`, which polls nothing: nobody listens there.
UNPOLLED = meter_toml(1, interval_s=None)


def status(config: Path) -> dict:
    result = edgelog("sync-status", "--json", config=config, timeout=120)
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def finish(proc, log: Path, timeout: float = 240) -> str:
    """Wait for a `sync --drain`; its output, which must end in success."""
    code = proc.wait(timeout)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    return text


def test_the_node_in_use_killed_mid_drain_the_logger_goes_on_through_another(
    tmp_path: Path, account: Account
) -> None:
    cluster = account.cluster
    built = build_buffer(tmp_path / "buffer.sqlite3", 60_000)
    config = write_config(tmp_path, account.toml(), UNPOLLED, sync=FAST_SYNC)
    log = tmp_path / "drain.log"
    proc = start_edgelog("sync", "--drain", config=config, log=log)
    watcher = cluster.nodes[2]  # counts as rows arrive; never the node in use (the first listed)
    try:
        wait_for(lambda: account.count(watcher)[0] >= 6_000, timeout=120, what="6,000 rows in the cluster")
        in_use = [i for i, node in enumerate(cluster.nodes) if account.sessions(node)]
        assert in_use == [0], f"the logger writes through one node, the first listed: {in_use}"
        cluster.kill(0)  # kill -9 of the node in use
        killed_at = account.count(watcher)[0]
        assert killed_at < 60_000, "the drain ended before the kill: nothing was tested"
        text = finish(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "sent 60000 rows" in text and "; 0 unsent" in text, text[-2000:]
    assert f"node {cluster.nodes[1].address} in use now; failed: {cluster.nodes[0].address}" in text
    assert "failure 1 in a row" not in text, "the worker backed off: the sink did not move on by itself"

    survivor = cluster.nodes[1]
    assert account.count(survivor) == (60_000, 60_000)
    assert_exactly_once(built.path, account.on(survivor))
    seen = status(config)
    assert seen["mariadb_node"] in (cluster.nodes[1].address, cluster.nodes[2].address)
    failed = seen["mariadb_nodes_failed"]
    assert list(failed) == [cluster.nodes[0].address], failed
    assert failed[cluster.nodes[0].address]["error"] and failed[cluster.nodes[0].address]["since"]

    cluster.start_node(0)  # the killed node rejoins (IST) with every row
    cluster.wait_synced()
    assert account.count(cluster.nodes[0]) == (60_000, 60_000)


@pytest.mark.parametrize(
    ("variable", "limit"),
    [("wsrep_max_ws_rows", 1000), ("wsrep_max_ws_size", 400_000)],
)
def test_batches_larger_than_the_cluster_takes_are_split(
    tmp_path: Path, account: Account, variable: str, limit: int
) -> None:
    cluster = account.cluster
    for node in cluster.nodes:
        node.query(f"SET GLOBAL {variable} = {int(limit)}")  # a node's own setting: on every node
    try:
        built = build_buffer(tmp_path / "buffer.sqlite3", 12_000)
        config = write_config(tmp_path, account.toml(batch_size=2000), UNPOLLED, sync=FAST_SYNC)
        result = edgelog("sync", "--drain", config=config, timeout=240)
    finally:
        for node in cluster.nodes:
            node.query(f"SET GLOBAL {variable} = DEFAULT")
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    assert "sent 12000 rows" in text and "; 0 unsent" in text
    splits = [line for line in text.splitlines() if "too large; writing it in halves" in line]
    assert len(splits) == 1, splits  # once: the size that worked is kept for the next batches
    assert "(1180) wsrep_max_ws_rows exceeded" in splits[0] or "(1105) Maximum writeset size" in splits[0]
    assert account.count(cluster.nodes[1]) == (12_000, 12_000)
    assert_exactly_once(built.path, account.on(cluster.nodes[1]))


def test_loss_of_quorum_the_logger_buffers_and_drains_when_it_returns(
    tmp_path: Path, account: Account, simulator
) -> None:
    cluster = account.cluster
    config = write_config(
        tmp_path, account.toml(), meter_toml(simulator.port, interval_s=0.2), sync=FAST_SYNC
    )
    buffer = tmp_path / "buffer.sqlite3"
    with running_logger(config) as logger:
        wait_for(lambda: account.count(cluster.nodes[0])[0] >= 10, timeout=60, what="rows in the cluster")
        cluster.kill(1, signal.SIGSTOP)  # two of three nodes frozen: the first loses quorum
        cluster.kill(2, signal.SIGSTOP)
        wait_for(
            lambda: not cluster.nodes[0].synced(), timeout=30, what="node 1 to lose quorum (non-Primary)"
        )
        lost = wait_for(
            lambda: (s := status(config))["last_error"] and s, timeout=60, what="a sync error in sync-status"
        )
        time.sleep(3)
        later = status(config)
        assert later["unsent"] > lost["unsent"] > 0, (lost["unsent"], later["unsent"])  # still buffering
        assert later["mariadb_reachable"] is False
        assert cluster.nodes[0].address in later["mariadb_nodes_failed"]
        assert logger.alive(), logger.text()[-2000:]
        cluster.kill(1, signal.SIGCONT)
        cluster.kill(2, signal.SIGCONT)
        cluster.wait_synced(timeout=60)
        wait_for(lambda: status(config)["unsent"] == 0, timeout=90, what="the backlog to drain")
    text = logger.text()
    assert "(1047) WSREP has not yet prepared node" in text or "Galera node not ready" in text, text[-3000:]
    drained = edgelog("sync", "--drain", config=config, timeout=120)
    assert drained.returncode == 0, drained.stderr
    local = assert_exactly_once(buffer, account.on(cluster.nodes[0]))
    assert len(local) >= 40


def test_three_sites_draining_into_three_nodes_at_once(tmp_path: Path, account: Account) -> None:
    cluster = account.cluster
    hosts = cluster.hosts()
    runs = []
    for i in range(3):
        site = f"site-{i + 1}"
        built = build_buffer(tmp_path / f"{site}.sqlite3", 20_000)
        mine = hosts[i:] + hosts[:i]  # each site writes through its own node first
        config = write_config(
            tmp_path,
            account.toml(hosts=mine),
            UNPOLLED,
            site=site,
            buffer={"path": built.path},
            sync=FAST_SYNC,
            name=f"{site}.toml",
        )
        runs.append((site, built, config, tmp_path / f"{site}.log"))
    procs = [start_edgelog("sync", "--drain", config=config, log=log) for _, _, config, log in runs]
    try:
        texts = [finish(proc, log) for proc, (_, _, _, log) in zip(procs, runs, strict=True)]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for text in texts:
        assert "sent 20000 rows" in text and "; 0 unsent" in text, text[-2000:]
        assert "WARNING" not in text and "trying again" not in text, text[-2000:]  # no error, no conflict
    for i, (site, built, config, _) in enumerate(runs):
        assert status(config)["mariadb_node"] == hosts[i]
        assert account.count(cluster.nodes[i], f"site = '{site}'") == (20_000, 20_000)
        assert_exactly_once(built.path, account.on(cluster.nodes[(i + 1) % 3]))
    for node in cluster.nodes:
        assert account.count(node) == (60_000, 60_000)


def test_reads_that_decide_the_position_wait_for_the_cluster(account: Account) -> None:
    """Every connection to a wsrep node sets wsrep_sync_wait = 1 (and a plain MariaDB,
    tests/test_sync.py, gets no such setting)."""
    from edgelog import config as config_mod
    from edgelog.sync import MariaDBSink

    cfg = config_mod.parse(
        {
            "site": "s",
            "mariadb": {
                "user": account.db.user,
                "password_file": str(account.db.password_file),
                "database": account.db.database,
                "hosts": account.cluster.hosts(),
            },
            "meters": [{"name": "m", "transport": "tcp", "host": "127.0.0.1"}],
        }
    )
    sink = MariaDBSink(cfg.mariadb, "s")
    try:
        sink.ping()
        assert sink._session is not None and sink._session.wsrep is True
        assert sink._run(lambda cur: cur.execute("SELECT @@session.wsrep_sync_wait") and cur.fetchone()) == (
            1,
        )
        assert sink.node_state()[0] == account.cluster.nodes[0].address
        assert nodes.parse_failed(sink.node_state()[1]) == {}
    finally:
        sink.close()


def test_export_reads_through_the_first_node_that_answers(tmp_path: Path, account: Account) -> None:
    """`export` (and the report, through the same source) does not stop at a dead first node
    of `hosts`: it reads through the next one, and says which failed when none answers."""
    cluster = account.cluster
    build_buffer(tmp_path / "buffer.sqlite3", 500)
    config = write_config(tmp_path, account.toml(), UNPOLLED, sync=FAST_SYNC)
    drained = edgelog("sync", "--drain", config=config, timeout=240)
    assert drained.returncode == 0, drained.stderr[-2000:]

    dead = f"127.0.0.1:{free_port()}"
    failover = write_config(tmp_path, account.toml(hosts=[dead, *cluster.hosts()]), UNPOLLED)
    out = tmp_path / "export.csv"
    result = edgelog("export", "--from", "2000-01-01", "--out", str(out), config=failover, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 1 + 500  # the header, then every row

    nobody = write_config(tmp_path, account.toml(hosts=[dead, f"127.0.0.1:{free_port()}"]), UNPOLLED)
    result = edgelog("export", "--from", "2000-01-01", config=nobody, timeout=120)
    assert result.returncode != 0
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("edgelog: error:")]
    assert "no node of hosts answered" in line and dead in line, line
