"""`python -m bench --catchup [--quick]`: the catch-up after a shared WAN outage.

Many sites report into one central MariaDB. When the link they share comes back
after a day, every logger drains its backlog at once. This scenario measures that
catch-up: `loggers` buffers of `rows` readings each (24 h at 1 Hz: 86,400), one
real `edgelog sync --drain` process per site, all started together, first into one
MariaDB server, then into a 3-node Galera cluster (bench/galera.py), each site
with its own least-privilege user, over TCP. In the cluster the sites are spread
over the nodes (site i writes through node i mod 3 first), as docs/scale-out.md
advises.

Reported: total rows/s (all rows / time until the last logger is done), each
logger's time to catch up, the ratio cluster/single, and the bytes Galera
replicated per row (`wsrep_replicated_bytes`: what `wsrep_max_ws_size` counts).
Both targets get the same InnoDB settings (bench/server.py's SERVER_PARAMS, and
innodb_flush_log_at_trx_commit = 1 on the cluster too), so the ratio is the cost
of the cluster itself. Every row is counted at the end: all of them, once.

Nothing here is a timed test; the figures go to docs/performance.md. On the
2-core bench machine the loggers, the servers and the bench share the cores:
the figures are this machine's, not a central server's.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import pymysql

from edgelog.profiles import PAC3100
from edgelog.sync import create_table_sql

from . import galera
from .data import BuiltBuffer, build_buffer
from .kit import WORK_BASE, copy_buffer, env, say_since
from .server import SERVER_PARAMS, PrivateMariaDB

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "catchup.json"
DATABASE = "central"
BATCH = 2000  # [mariadb] batch_size default
SENT = re.compile(r"sent (\d+) rows in ([\d.]+) s; (\d+) unsent")


@dataclass(frozen=True)
class Plan:
    quick: bool
    loggers: int
    rows: int  # per logger

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(quick=True, loggers=4, rows=5_000) if quick else cls(quick=False, loggers=20, rows=86_400)


@dataclass
class Site:
    name: str
    buffer: BuiltBuffer  # the backlog as built, every row unsent; each target drains a copy
    path: Path  # the copy the logger drains
    user: str
    password_file: Path

    def fresh_copy(self) -> None:
        copy_buffer(self.buffer.path, self.path)


def build_sites(plan: Plan, work: Path, say: Callable[[str], None]) -> list[Site]:
    """One buffer (a day at 1 Hz, distinct values) and one user name per site."""
    sites = []
    started = time.monotonic()
    for i in range(plan.loggers):
        name = f"site{i + 1:02d}"
        built = build_buffer(work / f"{name}.built.sqlite3", plan.rows, interval_s=1.0)
        sites.append(
            Site(name, built, work / f"{name}.sqlite3", f"edgelog_{name}", work / f"{name}.password")
        )
    say(f"   {plan.loggers} backlogs of {plan.rows:,} rows built in {time.monotonic() - started:.0f} s")
    return sites


def prepare(root: pymysql.connections.Connection, sites: Sequence[Site]) -> None:
    """The central table, created by the DBA, and a user per site (SELECT, INSERT, UPDATE)."""
    columns = {r.name: r.unit for r in PAC3100.registers}
    with root.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{DATABASE}`")
        cur.execute(f"CREATE DATABASE `{DATABASE}`")
        cur.execute(f"USE `{DATABASE}`")
        cur.execute(create_table_sql("medicoes", columns))
        for site in sites:
            password = secrets.token_urlsafe(18)
            cur.execute(f"DROP USER IF EXISTS '{site.user}'@'127.0.0.1'")
            cur.execute(f"CREATE USER '{site.user}'@'127.0.0.1' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT SELECT, INSERT, UPDATE ON `{DATABASE}`.* TO '{site.user}'@'127.0.0.1'")
            site.password_file.write_text(password + "\n")
            site.password_file.chmod(0o600)


def write_config(site: Site, hosts: Sequence[str], work: Path) -> Path:
    text = (
        f'site = "{site.name}"\n\n[buffer]\npath = "{site.path}"\n\n'
        f'[mariadb]\nuser = "{site.user}"\npassword_file = "{site.password_file}"\n'
        f'database = "{DATABASE}"\nhosts = {json.dumps(list(hosts))}\nmanage_schema = false\n'
        f"batch_size = {BATCH}\nread_timeout_s = 120\nwrite_timeout_s = 120\n"
        "aggregates = false\n\n"  # the readings' catch-up alone (bench/layout.py measures aggregates)
        '[[meters]]\nname = "pac1"\ntransport = "tcp"\nhost = "127.0.0.1"\nport = 1\ninterval_s = 1\n'
    )
    path = work / f"{site.name}.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def drain_all(configs: Sequence[Path], work: Path) -> list[dict[str, Any]]:
    """Start one `edgelog sync --drain` per config at once; each one's time to catch up."""
    cmd = [sys.executable, "-m", "edgelog"]
    started = time.monotonic()
    procs = []
    for config in configs:
        log = (work / f"{config.stem}.log").open("wb")
        args = [*cmd, "--config", str(config), "sync", "--drain"]
        procs.append((config, log, subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env())))
    results = []
    pending = {id(p): (config, log, p) for config, log, p in procs}
    done: dict[int, float] = {}
    while pending:
        for key, (_config, log, proc) in list(pending.items()):
            if proc.poll() is not None:
                done[key] = time.monotonic() - started
                log.close()
                del pending[key]
        time.sleep(0.05)
    for config, _log, proc in procs:
        text = (work / f"{config.stem}.log").read_text(errors="replace")
        match = SENT.search(text)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"{config.stem}: sync --drain exited {proc.returncode}: {text[-1500:]}")
        results.append(
            {
                "site": config.stem,
                "rows": int(match[1]),
                "drain_s": float(match[2]),  # as the command reports it (after its start-up)
                "catch_up_s": done[id(proc)],  # from the common start to its exit
                "unsent": int(match[3]),
            }
        )
    return results


def summary(results: list[dict[str, Any]], verify: dict[str, int]) -> dict[str, Any]:
    rows = sum(r["rows"] for r in results)
    wall = max(r["catch_up_s"] for r in results)
    times = [r["catch_up_s"] for r in results]
    return {
        "rows": rows,
        "wall_s": wall,
        "rows_per_s": rows / wall,
        "catch_up_s": {"min": min(times), "median": median(times), "max": max(times)},
        "per_logger": results,
        "verify": verify,
    }


def count(root: pymysql.connections.Connection) -> dict[str, int]:
    with root.cursor() as cur:
        cur.execute(
            f"SELECT COUNT(*), COUNT(DISTINCT site, buffer_id, seq), COUNT(DISTINCT site) "
            f"FROM `{DATABASE}`.medicoes"
        )
        total, distinct, sites = cur.fetchone()
    return {"rows": int(total), "distinct": int(distinct), "sites": int(sites)}


def table_bytes(root: pymysql.connections.Connection) -> dict[str, int]:
    """InnoDB's size of the table (data, and the secondary indexes), after fresh statistics."""
    with root.cursor() as cur:
        cur.execute(f"ANALYZE TABLE `{DATABASE}`.medicoes")
        cur.fetchall()
        cur.execute(
            "SELECT data_length, index_length FROM information_schema.tables "
            "WHERE table_schema = %s AND table_name = 'medicoes'",
            (DATABASE,),
        )
        data, index = cur.fetchone()
    return {"data": int(data), "index": int(index)}


def single(sites: Sequence[Site], work: Path) -> dict[str, Any]:
    server = PrivateMariaDB(work / "single")
    server.start()
    try:
        root = server.root()
        prepare(root, sites)
        configs = [write_config(s, [f"127.0.0.1:{server.port}"], work) for s in sites]
        results = drain_all(configs, work)
        verify = count(root)
        size = table_bytes(root)
        root.close()
        out = {"server": server.version(), **summary(results, verify), "table_bytes": size}
        out["table_bytes_per_row"] = (size["data"] + size["index"]) / max(1, verify["rows"])
        return out
    finally:
        server.stop()


def cluster(sites: Sequence[Site], work: Path) -> dict[str, Any]:
    options = [*SERVER_PARAMS, "--innodb-flush-log-at-trx-commit=1"]
    options = [o for o in options if not o.startswith("--local-infile")]
    nodes = galera.Cluster(work / "cluster", options=options)
    nodes.start()
    try:
        first = nodes.nodes[0]
        root = first.root()
        prepare(root, sites)
        hosts = nodes.hosts()
        configs = [write_config(s, hosts[i % 3 :] + hosts[: i % 3], work) for i, s in enumerate(sites)]
        before = sum(int(n.status().get("wsrep_replicated_bytes", 0)) for n in nodes.nodes)
        results = drain_all(configs, work)
        replicated = sum(int(n.status().get("wsrep_replicated_bytes", 0)) for n in nodes.nodes) - before
        verify = count(root)
        per_node = [count(n.root()) for n in nodes.nodes]
        root.close()
        out = summary(results, verify)
        out["per_node"] = per_node
        out["replicated_bytes_per_row"] = replicated / max(1, out["rows"])
        return out
    finally:
        nodes.stop()


def run(plan: Plan, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    why = galera.missing()
    if why:
        raise SystemExit(f"bench --catchup: {why}")
    started = time.time()
    sites = build_sites(plan, work, say)
    expected = plan.loggers * plan.rows
    out: dict[str, Any] = {"mode": "quick" if plan.quick else "full", "plan": plan.__dict__}
    say(f"catch-up: {plan.loggers} loggers x {plan.rows:,} rows into one MariaDB")
    for site in sites:
        site.fresh_copy()
    out["single"] = single(sites, work)
    say(f"   {out['single']['rows_per_s']:,.0f} rows/s; slowest logger {out['single']['wall_s']:.0f} s")
    for site in sites:  # the same backlogs, unsent again
        site.fresh_copy()
    say(f"catch-up: the same into a 3-node Galera cluster ({galera.PROVIDER.name})")
    out["cluster"] = cluster(sites, work)
    say(f"   {out['cluster']['rows_per_s']:,.0f} rows/s; slowest logger {out['cluster']['wall_s']:.0f} s")
    out["ratio_cluster_vs_single"] = out["cluster"]["rows_per_s"] / out["single"]["rows_per_s"]
    for target in ("single", "cluster"):
        v = out[target]["verify"]
        ok = v["rows"] == v["distinct"] == expected and v["sites"] == plan.loggers
        out[target]["exactly_once"] = ok
        if not ok:
            raise RuntimeError(f"{target}: expected {expected} distinct rows, found {v}")
    out["load_average_at_end"] = os.getloadavg()
    out["duration_s"] = time.time() - started
    return out


def table(r: dict[str, Any]) -> str:
    s, c = r["single"], r["cluster"]
    lines = [
        f"catch-up: {r['plan']['loggers']} loggers x {r['plan']['rows']:,} rows at once ({r['mode']})",
        f"{'':10} {'rows/s':>10} {'all done s':>11} {'per logger s (min/median/max)':>32}",
    ]
    for name, t in (("single", s), ("cluster", c)):
        ct = t["catch_up_s"]
        lines.append(
            f"{name:10} {t['rows_per_s']:>10,.0f} {t['wall_s']:>11.1f} "
            f"{ct['min']:>12.1f} / {ct['median']:.1f} / {ct['max']:.1f}"
        )
    lines.append(f"ratio cluster/single: {r['ratio_cluster_vs_single']:.2f}")
    lines.append(f"Galera replicated {c['replicated_bytes_per_row']:.0f} bytes a row")
    if "table_bytes_per_row" in s:
        lines.append(f"InnoDB table (data + indexes): {s['table_bytes_per_row']:.0f} bytes a row")
    return "\n".join(lines)


def main(quick: bool = False, out: Path = DEFAULT_OUT) -> int:
    """Run the scenario (`python -m bench --catchup [--quick]`), print, write `out`."""
    say = say_since(time.monotonic())
    work = Path(tempfile.mkdtemp(prefix="edgelog-catchup-", dir=WORK_BASE))
    work.chmod(0o755)  # the Galera nodes run as mysql
    try:
        results = run(Plan.make(quick), work, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    say(f"wrote {out}")
    return 0
