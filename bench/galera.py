"""A private 3-node MariaDB Galera cluster on 127.0.0.1, for the tests and the bench.

Each node is Debian's `mariadbd` with `wsrep_on` and Galera 4
(`/usr/lib/galera/libgalera_smm.so`, package galera-4), on its own SQL, gcomm,
IST and SST ports, with its own data directory and option file under one base
directory. The first node bootstraps the cluster (`--wsrep-new-cluster`); the
others join it and receive the data by rsync SST. The nodes run as user `mysql`
(rsync SST refuses to run as root), so the base directory is made traversable
for that user and the data directories belong to it: it must not sit under a
directory `mysql` cannot enter (e.g. /root, or pytest's 0700 temp dirs).

Never the system's MariaDB: `--defaults-file` is the node's own option file
(the SST script reads the same file), sockets and pid files are in the base
directory. `stop()` ends every node it started by its pid, and `kill -9`s any
that does not stop in time; and a node gets SIGKILL from the kernel when the
process that started it dies, however it dies (no stray mariadbd after a crashed
or killed test run).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from .server import INSTALL_DB, MARIADBD, ServerFiles, free_port

PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
RUN_AS = "mysql"
#: gcomm timeouts shorter than Galera's defaults (5 s suspect, 15 s inactive), so a
#: killed or stopped node is evicted in a few seconds (keepalive <= check <= suspect <= inactive).
FAST_EVICTION = (
    "evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S;"
    "evs.suspect_timeout=PT3S;evs.inactive_timeout=PT5S;evs.install_timeout=PT5S"
)


def missing() -> str | None:
    """Why a cluster cannot start on this machine, or None."""
    if os.geteuid() != 0:
        return f"the nodes run as user {RUN_AS}: only root can start them so"
    if not PROVIDER.exists():
        return f"{PROVIDER} not found (apt-get install galera-4)"
    if not shutil.which("rsync"):
        return "rsync not found (apt-get install rsync): the nodes' SST method"
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        return f"no user {RUN_AS!r} to run the nodes as (it comes with mariadb-server)"
    return None


def _die_with_parent() -> None:
    """In the child, before mariadbd starts: SIGKILL it when the process that started it
    dies, even by kill -9 (Linux PR_SET_PDEATHSIG; set after the switch to `mysql`,
    which would clear it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Node(ServerFiles):
    """One mariadbd of the cluster."""

    index: int
    base: Path
    port: int = field(default_factory=free_port)
    gcomm_port: int = field(default_factory=free_port)
    ist_port: int = field(default_factory=free_port)
    sst_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False  # SIGSTOPped by `Cluster.kill`

    @property
    def name(self) -> str:
        return f"node{self.index + 1}"

    @property
    def address(self) -> str:
        """'127.0.0.1:port', as `[mariadb] hosts` takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def cnf(self) -> Path:
        return self.base / "node.cnf"

    @property
    def error_log(self) -> Path:
        return self.base / "mariadbd.err"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def running(self) -> bool:
        return self.pid is not None

    def root(self, sync_wait: bool = True, **kwargs: Any) -> pymysql.connections.Connection:
        """root over the socket. With `sync_wait` its reads wait until the node has applied
        everything the cluster committed before them (without, a count can be short of
        rows other nodes committed a moment ago; the node must be in the primary component)."""
        kwargs.setdefault("connect_timeout", 5)
        kwargs.setdefault("read_timeout", 30)
        if sync_wait:
            kwargs.setdefault("init_command", "SET SESSION wsrep_sync_wait = 1")
        return pymysql.connect(unix_socket=self.socket, user="root", autocommit=True, **kwargs)

    def query(self, sql: str, params: Any = None, sync_wait: bool = True) -> list[tuple[Any, ...]]:
        conn = self.root(sync_wait=sync_wait)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def status(self) -> dict[str, str]:
        """wsrep_* status variables (empty if the node does not answer)."""
        try:
            rows = self.query("SHOW GLOBAL STATUS LIKE 'wsrep%%'", sync_wait=False)
        except pymysql.MySQLError:
            return {}
        return {str(k): str(v) for k, v in rows}

    def synced(self, size: int | None = None) -> bool:
        s = self.status()
        ok = s.get("wsrep_ready") == "ON" and s.get("wsrep_local_state_comment") == "Synced"
        return ok and (size is None or s.get("wsrep_cluster_size") == str(size))


class Cluster:
    """Three (or `size`) Galera nodes under `base`; start(), then kill, pause, restart nodes."""

    def __init__(self, base: Path, size: int = 3, options: Sequence[str] = (), name: str = "edgelog"):
        self.base = base
        self.name = name
        self.options = tuple(options)
        self.nodes = [Node(i, base / f"node{i + 1}") for i in range(size)]

    # -- configuration -----------------------------------------------------------------

    def _write_cnf(self, node: Node) -> None:
        peers = ",".join(f"127.0.0.1:{n.gcomm_port}" for n in self.nodes)
        provider_options = (
            f"base_host=127.0.0.1;base_port={node.gcomm_port};"
            f"gmcast.listen_addr=tcp://127.0.0.1:{node.gcomm_port};"
            f"ist.recv_addr=127.0.0.1:{node.ist_port};gcache.size=128M;{FAST_EVICTION}"
        )
        lines = [
            "[mysqld]",
            f"user={RUN_AS}",
            f"datadir={node.datadir}",
            f"socket={node.socket}",
            f"port={node.port}",
            "bind-address=127.0.0.1",
            f"pid-file={node.base / 'mariadbd.pid'}",
            f"tmpdir={node.base}",
            f"log-error={node.error_log}",
            "skip-name-resolve",
            "innodb-buffer-pool-size=256M",
            "innodb-log-file-size=64M",
            "innodb-flush-log-at-trx-commit=2",  # Galera's usual: durability is the cluster's
            "max-allowed-packet=64M",
            "binlog_format=ROW",
            "default-storage-engine=InnoDB",
            "innodb_autoinc_lock_mode=2",
            "wsrep_on=ON",
            f"wsrep_provider={PROVIDER}",
            f"wsrep_cluster_name={self.name}",
            f"wsrep_cluster_address=gcomm://{peers}",
            f"wsrep_node_name={node.name}",
            f"wsrep_node_address=127.0.0.1:{node.gcomm_port}",
            f"wsrep_node_incoming_address=127.0.0.1:{node.port}",
            f"wsrep_sst_receive_address=127.0.0.1:{node.sst_port}",
            "wsrep_sst_method=rsync",
            f'wsrep_provider_options="{provider_options}"',
            *(o.removeprefix("--") for o in self.options),
        ]
        node.cnf.write_text("\n".join(lines) + "\n")

    def _prepare_dirs(self) -> None:
        user = pwd.getpwnam(RUN_AS)
        self.base.mkdir(parents=True, exist_ok=True)
        for path in (self.base, *self.base.parents):
            if path == Path("/"):
                break
            mode = path.stat().st_mode
            if not mode & 0o001:
                raise RuntimeError(f"{path} is not traversable by user {RUN_AS}: put the cluster elsewhere")
        os.chown(self.base, user.pw_uid, user.pw_gid)
        for node in self.nodes:
            node.base.mkdir(parents=True, exist_ok=True)
            os.chown(node.base, user.pw_uid, user.pw_gid)
            self._write_cnf(node)

    # -- life cycle ----------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> Cluster:
        """Bootstrap node 1, then join the others one by one (rsync SST); all Synced."""
        self._prepare_dirs()
        first = self.nodes[0]
        subprocess.run(
            [
                INSTALL_DB,
                f"--defaults-file={first.cnf}",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ],
            check=True,
            capture_output=True,
        )
        try:
            self.start_node(0, bootstrap=True, timeout=timeout)
            for i in range(1, len(self.nodes)):
                self.start_node(i, timeout=timeout)
            self.wait_synced(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, i: int, bootstrap: bool = False, timeout: float = 120.0) -> None:
        """Start node `i` (again): it joins the cluster (IST, or SST if it must) and is Synced."""
        node = self.nodes[i]
        assert not node.running(), f"{node.name} is running"
        node.datadir.mkdir(exist_ok=True)
        user = pwd.getpwnam(RUN_AS)
        os.chown(node.datadir, user.pw_uid, user.pw_gid)
        args = [MARIADBD, f"--defaults-file={node.cnf}"]
        if bootstrap:
            args.append("--wsrep-new-cluster")
        with (node.base / "stdout.log").open("ab") as out:
            node.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=user.pw_uid,  # as mysql from the start (rsync SST refuses root) ...
                group=user.pw_gid,
                extra_groups=[],
                preexec_fn=_die_with_parent,  # ... and gone if the tests or the bench die
            )
        self._wait(lambda: node.synced(), timeout, f"{node.name} to be Synced", node)

    def wait_synced(self, timeout: float = 60.0) -> None:
        """Every node running, Synced, in one cluster of all of them."""
        size = len(self.nodes)
        for node in self.nodes:
            self._wait(
                lambda n=node: n.synced(size), timeout, f"{node.name} Synced in a cluster of {size}", node
            )

    def _wait(self, ready: Any, timeout: float, what: str, node: Node) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited ({node.proc.returncode}): {self._tail(node)}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}: {self._tail(node)}")

    @staticmethod
    def _tail(node: Node) -> str:
        try:
            lines = node.error_log.read_text(errors="replace").splitlines()
        except OSError:
            return f"no {node.error_log}"
        errors = [line for line in lines if "ERROR" in line]
        return " | ".join((errors or lines)[-3:])

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to node `i` (SIGKILL: it dies at once; SIGSTOP/SIGCONT: freeze, thaw)."""
        node = self.nodes[i]
        assert node.proc is not None
        node.proc.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            node.paused = sig == signal.SIGSTOP
        if sig == signal.SIGKILL:
            node.proc.wait(30)

    def heal(self, timeout: float = 120.0) -> None:
        """Thaw frozen nodes, start dead ones again: every node Synced in one cluster."""
        for i, node in enumerate(self.nodes):
            if node.paused:
                self.kill(i, signal.SIGCONT)
        for i, node in enumerate(self.nodes):
            if not node.running():
                self.start_node(i, timeout=timeout)
        self.wait_synced(timeout=timeout)

    def stop(self) -> None:
        """Stop every node this cluster started (by pid): SIGTERM, then SIGKILL. Never raises."""
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGCONT)  # a frozen node cannot shut down
                node.proc.terminate()
        deadline = time.monotonic() + 30
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.kill()
                node.proc.wait(30)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- accounts --------------------------------------------------------------------------

    def hosts(self) -> list[str]:
        return [n.address for n in self.nodes]

    def running_node(self) -> Node:
        return next(n for n in self.nodes if n.running() and n.synced())
