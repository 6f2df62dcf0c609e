"""The MariaDB nodes the sink writes through: one at a time, and when to move on.

A site names one server (`[mariadb] host`/`port`, or `unix_socket`) or the nodes
of a MariaDB Galera cluster (`[mariadb] hosts = ["db1:3306", "db2", "[::1]:3307"]`).
Every node of a Galera cluster takes writes, and every row of a site is written
through one node at a time (`Nodes.current`), so a site's own batches never
conflict with each other on two nodes.

Moving on. The sink leaves the node in use and tries the next one *at once* (no
backoff between nodes) when the node fails: the connection is refused or lost
(2002, 2003, 2006, 2013, a timeout), the node answers 1047 (WSREP has not yet
prepared node for application use: it lost quorum), or a new connection finds it
not `wsrep_ready = ON` and `wsrep_local_state_comment = Synced` (a joiner, a
donor, a node cut off from the primary component). The caller backs off only
after a full round of failures: every node tried once. The sink then stays on
the node that worked (it does not fall back to the first one of the list).

Conflicts. A deadlock or a Galera certification conflict (1213: the logger meets
one only when a batch replayed on a second node meets the first node's copy of it
still being applied) is tried again at once on the same node, up to
`CONFLICT_TRIES` times, then counts as that node's failure.

Health is checked only where wsrep is on (`@@wsrep_on`): a plain MariaDB, or a
server without the variable, has no cluster state and counts as ready.

Reads that decide the position. Galera applies another node's writes
asynchronously: a node can answer a SELECT before it has applied a batch that
another node already committed. On every connection to a node with wsrep on, the
session sets ``wsrep_sync_wait = 1`` (the READ bit: SELECT and BEGIN wait until
the node has applied everything the cluster committed before them), so
`high_water()` never under-reports what the cluster has. Writes do not wait (the
bit for INSERT is not set).

Sessions left behind. After a timeout the sink KILLs its old session once a new
connection works (see `MariaDBSink._run`). A thread id means something only on
the server that gave it, so the orphan is remembered with its node and KILLed only
over a connection to that same node. (Behind a proxy that spreads connections over
several servers, one address is not one server: do not put such a proxy in
`hosts`; name the nodes.)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pymysql

from ..errors import SinkUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Buffer meta keys the sync worker keeps for `sync-status`: the node it last wrote
#: through, and the nodes whose last try failed (JSON: label -> {"error", "at"}).
NODE_KEY = "sync_node"
NODES_FAILED_KEY = "sync_nodes_failed"

#: The wsrep status a node must show to take writes.
READY = {"wsrep_ready": "ON", "wsrep_local_state_comment": "Synced"}
#: MariaDB's answer to a variable it does not have (a server built without wsrep).
UNKNOWN_SYSTEM_VARIABLE = 1193
#: Tries of one operation on one node while it ends in a `Conflict`.
CONFLICT_TRIES = 3


class Conflict(SinkUnavailable):
    """A deadlock or a Galera certification conflict (1213): the same write may go in at
    once. Tried again on the same node, then (as a node failure) on the next."""


@dataclass(frozen=True)
class Node:
    """One server: a TCP address, or a unix socket."""

    host: str = "localhost"
    port: int = 3306
    unix_socket: str | None = None

    @property
    def label(self) -> str:
        """How logs and sync-status name it: '/run/mysqld/mysqld.sock', 'db1:3306', '[::1]:3306'."""
        if self.unix_socket:
            return self.unix_socket
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def config(self, config: Any) -> Any:
        """`config` (a MariaDBConfig) aimed at this node alone: what `connect.connect()`
        takes; its TLS mode and name check follow this node's host."""
        return replace(config, host=self.host, port=self.port, unix_socket=self.unix_socket, hosts=())


def nodes_of(config: Any) -> tuple[Node, ...]:
    """The nodes of a `MariaDBConfig`: `hosts`, else its one server."""
    if config.hosts:
        return tuple(Node(host, port) for host, port in config.hosts)
    if config.unix_socket:
        return (Node(unix_socket=config.unix_socket),)
    return (Node(config.host, config.port),)


@dataclass
class Nodes:
    """The node in use, the order of the others, and what each last failed with."""

    nodes: Sequence[Node]
    clock: Callable[[], float] = time.time
    index: int = 0
    #: the node the last successful operation ran on (None before the first)
    used: Node | None = None
    #: label -> (error, since): nodes whose last try failed; a node leaves once it works
    failed: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: node -> thread id of a session given up on a timeout, still to be KILLed there
    orphans: dict[Node, int] = field(default_factory=dict)

    @property
    def current(self) -> Node:
        return self.nodes[self.index]

    def round(self) -> Iterator[Node]:
        """The node in use, then each other node once, in list order (wrapping around).
        Stop iterating when one works: it stays the node in use. After a full round of
        failures the node in use is the one the round started from."""
        start = self.index
        for k in range(len(self.nodes)):
            self.index = (start + k) % len(self.nodes)
            yield self.nodes[self.index]
        self.index = start

    def run(self, attempt: Callable[[], T], prefix: Callable[[Node], str] = lambda node: "") -> T:
        """`attempt()` on the node in use; when it raises SinkUnavailable, at once on the
        next node (`attempt` connects to `current`), each node once; a Conflict first again
        on the same node. SinkUnavailable once every node failed in this round (naming
        each, without its `prefix`); any other error at once."""
        failures: list[tuple[str, SinkUnavailable]] = []  # (node and cause, error)
        for node in self.round():
            try:
                result = self._on_node(attempt)
            except SinkUnavailable as exc:
                self.failure(node, str(exc))
                failures.append((f"{node.label} {str(exc).removeprefix(prefix(node))}", exc))
                continue
            self.worked(node)
            if failures:  # once a failover, not once a failed try (the worker logs full rounds)
                causes = "; ".join(cause for cause, _ in failures)
                log.warning("sync: MariaDB node %s in use now; failed: %s", node.label, causes)
            return result
        if len(failures) == 1:
            raise failures[0][1]
        causes = "; ".join(cause for cause, _ in failures)
        raise SinkUnavailable(f"MariaDB: all {len(failures)} nodes failed: {causes}")

    @staticmethod
    def _on_node(attempt: Callable[[], T]) -> T:
        for tries in range(1, CONFLICT_TRIES):
            try:
                return attempt()
            except Conflict as exc:
                log.info("sync: %s; trying again (%d of %d)", exc, tries + 1, CONFLICT_TRIES)
        try:
            return attempt()
        except Conflict as exc:  # so many times: as a failure of this node
            raise SinkUnavailable(str(exc)) from None

    def worked(self, node: Node) -> None:
        self.used = node
        self.failed.pop(node.label, None)

    def failure(self, node: Node, error: str) -> None:
        """Remember the failure (and since when the node fails with this same error)."""
        known = self.failed.get(node.label)
        if known is None or known[0] != error:
            self.failed[node.label] = (error, self.clock())

    def orphan(self, node: Node, thread_id: int) -> None:
        self.orphans[node] = thread_id

    def take_orphan(self, node: Node, own_thread_id: int) -> int | None:
        """The session to KILL over a connection to `node` whose thread id is `own_thread_id`."""
        orphan = self.orphans.pop(node, None)
        return orphan if orphan is not None and orphan != own_thread_id else None

    def state(self) -> tuple[str | None, str]:
        """(node in use, failed nodes as JSON), as the buffer meta keeps them."""
        failed = {label: {"error": error, "at": at} for label, (error, at) in sorted(self.failed.items())}
        return (self.used.label if self.used else None, json.dumps(failed, sort_keys=True))


def parse_failed(text: str | None) -> dict[str, dict[str, Any]]:
    """`NODES_FAILED_KEY`'s JSON back (an empty dict if missing or unreadable)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- a new connection: is the node usable, and what are its limits ----------------------------


class NodeNotReady(Exception):
    """The node has wsrep on and is not ready and Synced (its status says why)."""


@dataclass(frozen=True)
class Session:
    """What the sink learnt about the server of a new connection."""

    wsrep: bool
    #: the session's max_allowed_packet: the largest packet the server reads
    max_packet: int


def probe(conn: pymysql.connections.Connection) -> Session:
    """Check a new connection's node (NodeNotReady if wsrep is on and the node is not
    ready and Synced) and, where wsrep is on, make its reads wait for the cluster."""
    with conn.cursor() as cur:
        try:
            cur.execute("SELECT @@wsrep_on, @@max_allowed_packet")
            wsrep_on, max_packet = cur.fetchone()
        except pymysql.MySQLError as exc:
            if not exc.args or exc.args[0] != UNKNOWN_SYSTEM_VARIABLE:
                raise
            cur.execute("SELECT @@max_allowed_packet")  # no wsrep on this server at all
            (wsrep_on, max_packet) = (0, *cur.fetchone())
        if not wsrep_on:
            return Session(wsrep=False, max_packet=int(max_packet))
        names = ", ".join(f"'{name}'" for name in READY)
        cur.execute(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})")
        status = {str(name).lower(): str(value) for name, value in cur.fetchall()}
        if any(status.get(name) != want for name, want in READY.items()):
            shown = ", ".join(f"{name} = {status.get(name, '?')}" for name in READY)
            raise NodeNotReady(f"Galera node not ready ({shown})")
        cur.execute("SET SESSION wsrep_sync_wait = 1")
    return Session(wsrep=True, max_packet=int(max_packet))
