"""Every MariaDB connection edgelog makes, through one door: `connect()`.

The sink, `export`, `report`, `sync-status` and `doctor` all connect here, so
each connection has:

* **timeouts**: the TCP connect, the server's greeting, the login and the
  session setup together take at most `connect_timeout_s` (a listener that
  accepts and never answers fails in that time); then every read and write
  waits at most `read_timeout_s` / `write_timeout_s` (PyMySQL's own, given to
  its constructor: a server that hangs mid-query cannot hang the caller);
* **TLS** per `ssl_mode`, and the **password guard**: the password never leaves
  in cleartext except over verified TLS or a unix socket (`tls.py`);
* **no LOCAL INFILE**: the capability is never negotiated, and a request for a
  local file (a rogue server can send one in answer to any query) is answered
  with an empty file and fails with `LocalInfileRefused`; nothing is opened.

Only public PyMySQL arguments are used (`ssl` as an SSLContext, `auth_plugin_map`,
`read_timeout`, `local_infile`, `defer_connect`, and `connect(sock)` with a socket
opened here, which is how the login gets its deadline). The LOCAL INFILE guard
overrides two private methods; `guard_problem()` checks at start that they are
there, and without them connections are PyMySQL's own, whose `local_infile=False`
refuses such a request too (it raises instead of answering it).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pymysql
from pymysql.connections import Connection, MySQLResult
from pymysql.constants import CR
from pymysql.protocol import LoadLocalPacketWrapper

from ..config import MariaDBConfig
from . import tls
from .nodes import Node

log = logging.getLogger(__name__)

#: Every session: times in UTC, strict mode (a bad value is an error, never clamped).
INIT_COMMAND = "SET SESSION time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"


class LocalInfileRefused(pymysql.err.OperationalError):
    """The server asked for a local file. Nothing was read or sent."""


class GuardedResult(MySQLResult):
    """A query result that answers any LOCAL INFILE request with an empty file, then fails."""

    def _read_load_local_packet(self, first_packet: Any) -> None:
        conn = self.connection
        requested = bytes(LoadLocalPacketWrapper(first_packet).filename)
        try:
            refused = self.refusing(requested)
        finally:
            conn.write_packet(b"")  # end of the data: an empty file (when refused)
            ok_packet = conn._read_packet()  # raises the server's error, if any
        if refused is not None:
            raise LocalInfileRefused(
                CR.CR_UNKNOWN_ERROR,
                f"server asked for local file {requested.decode(errors='replace')!r}: refused "
                f"({refused}); nothing was read or sent",
            )
        if not ok_packet.is_ok_packet():
            raise pymysql.err.OperationalError(CR.CR_COMMANDS_OUT_OF_SYNC, "Commands Out of Sync")
        self._read_ok_packet(ok_packet)

    def refusing(self, requested: bytes) -> str | None:
        """Send what the request may have, and say why the rest is refused (None: nothing
        refused). Here: every request is refused, nothing sent."""
        return "edgelog never sends local files"


class GuardedConnection(Connection):
    """A PyMySQL connection whose query results are `result_class` (a `GuardedResult`)."""

    #: negotiate CLIENT_LOCAL_FILES (only the bench's LOAD DATA subclass does)
    local_infile = False
    result_class: type[GuardedResult] = GuardedResult

    def _read_query_result(self, unbuffered: bool = False) -> int:
        # PyMySQL's Connection._read_query_result (1.1, 1.2) with result_class for MySQLResult.
        self._result = None
        result = self.result_class(self)
        if unbuffered:
            result.init_unbuffered_query()
        else:
            result.read()
        self._result = result
        if result.server_status is not None:
            self.server_status = result.server_status
        return result.affected_rows

    def show_warnings(self) -> Any:
        raise NotImplementedError("use a cursor: SHOW WARNINGS")  # its MySQLResult is not guarded

    def ping(self, reconnect: bool = False) -> Any:
        # never PyMySQL's own reconnect: it would skip connect()'s greeting check and deadline
        return super().ping(reconnect=False)


def _problem(owner: type, name: str, *args: Any) -> str | None:
    """None if `owner.name` is a function callable with `args` (after self), else what is wrong."""
    member = getattr(owner, name, None)
    if not callable(member):
        return f"{owner.__name__}.{name} is missing"
    try:
        inspect.signature(member).bind(None, *args)
    except (TypeError, ValueError):
        return f"{owner.__name__}.{name} has another signature"
    return None


def pymysql_version() -> str:
    try:
        return importlib.metadata.version("PyMySQL")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed as a package
        return "?"


def private_names_problem(needs: list[tuple[type, str, tuple[Any, ...]]]) -> str | None:
    """The first of `needs` (owner, private method, example arguments) this PyMySQL lacks."""
    for owner, name, args in needs:
        problem = _problem(owner, name, *args)
        if problem:
            return f"PyMySQL {pymysql_version()}: {problem}"
    return None


#: What GuardedConnection overrides or calls beyond PyMySQL's public face.
_GUARD_NEEDS: list[tuple[type, str, tuple[Any, ...]]] = [
    (Connection, "_read_query_result", ()),
    (Connection, "_read_packet", ()),
    (Connection, "write_packet", (b"",)),
    (MySQLResult, "_read_load_local_packet", (None,)),
    (MySQLResult, "_read_ok_packet", (None,)),
    (MySQLResult, "read", ()),
    (MySQLResult, "init_unbuffered_query", ()),
]


def guard_problem() -> str | None:
    """Why the LOCAL INFILE guard cannot be used with this PyMySQL (None: it can)."""
    return private_names_problem(_GUARD_NEEDS)


_GUARD_PROBLEM = guard_problem()
_warned: set[str] = set()


def _connection_class() -> type[Connection]:
    """GuardedConnection, or PyMySQL's own where the guard's private names are missing
    (said once a process)."""
    if _GUARD_PROBLEM is None:
        return GuardedConnection
    if _GUARD_PROBLEM not in _warned:  # pragma: no cover - depends on the installed PyMySQL
        _warned.add(_GUARD_PROBLEM)
        log.warning(
            "%s: the LOCAL INFILE guard is off; PyMySQL's own refusal (local_infile=False) remains",
            _GUARD_PROBLEM,
        )
    return Connection


def where(config: MariaDBConfig) -> str:
    """user@host:port/database (or the socket path): how errors name a server."""
    config = first_node(config)
    place = config.unix_socket or f"{config.host}:{config.port}"
    return f"{config.user}@{place}/{config.database}"


def connect(
    config: MariaDBConfig, *, autocommit: bool = False, cls: type[Connection] | None = None
) -> Connection:
    """A logged-in connection to `config`'s server, or a pymysql.MySQLError (one line,
    no password: see `describe`). `cls` (a GuardedConnection) is for the bench's LOAD DATA.
    With `[mariadb] hosts`, the first node (the sink moves between them: `nodes`)."""
    config = first_node(config)
    cls = cls or _connection_class()
    deadline = time.monotonic() + config.connect_timeout_s
    conn = cls(**_arguments(config, autocommit, getattr(cls, "local_infile", False)))
    sock = _open_socket(config, deadline)
    late = pymysql.err.OperationalError(
        CR.CR_SERVER_LOST, f"no complete login within connect_timeout_s ({config.connect_timeout_s:g} s)"
    )
    try:
        tls.check_greeting(tls.peek_greeting(sock, deadline), config)
        with _Deadline(sock, deadline) as expired:
            try:
                conn.connect(sock)
            except pymysql.MySQLError:
                if expired():
                    raise late from None
                raise
        if expired():  # it fired as the login ended: the socket is shut down
            conn.close()
            raise late
    except BaseException:
        sock.close()
        raise
    return conn


def first_node(config: MariaDBConfig) -> MariaDBConfig:
    """`config` itself, or with `hosts` aimed at the first node of the list."""
    return Node(*config.hosts[0]).config(config) if config.hosts else config


def _arguments(config: MariaDBConfig, autocommit: bool, local_infile: bool) -> dict[str, Any]:
    try:
        ctx = tls.context(config)
    except OSError as exc:  # ssl.SSLError included
        raise pymysql.err.OperationalError(
            CR.CR_SSL_CONNECTION_ERROR, f"cannot load ssl_ca/ssl_cert/ssl_key: {exc}"
        ) from None
    args: dict[str, Any] = {
        "user": config.user,
        "password": config.read_password() or "",
        "database": config.database,
        "host": config.host,
        "port": config.port,
        "charset": "utf8mb4",
        "autocommit": autocommit,
        "connect_timeout": config.connect_timeout_s,
        "read_timeout": config.read_timeout_s,
        "write_timeout": config.write_timeout_s,
        "local_infile": local_infile,
        "init_command": INIT_COMMAND,
        "defer_connect": True,
    }
    if ctx is None:
        args["ssl_disabled"] = True  # else PyMySQL tries TLS it does not verify ("preferred")
    else:
        args["ssl"] = ctx
    if not tls.password_may_travel(config):
        args["auth_plugin_map"] = tls.refusing_plugins(config)
    return args


def _open_socket(config: MariaDBConfig, deadline: float) -> socket.socket:
    """The TCP (or unix) socket, connected by `deadline`; errors as PyMySQL words them."""
    timeout = max(deadline - time.monotonic(), 0.001)
    try:
        if config.unix_socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(config.unix_socket)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((config.host, config.port), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock
    except OSError as exc:
        raise pymysql.err.OperationalError(
            CR.CR_CONN_HOST_ERROR,
            f"Can't connect to MySQL server on {config.unix_socket or config.host!r} ({exc})",
        ) from None


class _Deadline:
    """Shuts the socket down at `deadline` unless the block ended first (the login is done).

    PyMySQL sets the socket's timeout to read_timeout_s before it reads the greeting,
    so the login's own bound comes from here: a thread that shuts the socket down
    (through a duplicate of it, which stays valid when TLS wraps the original)."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._watch = sock.dup()
        self._lock = threading.Lock()
        self._done = self._fired = False
        self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._fired = True
            with contextlib.suppress(OSError):  # closed by the server already
                self._watch.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Callable[[], bool]:
        self._timer.start()
        return lambda: self._fired

    def __exit__(self, *exc_info: Any) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
        self._watch.close()


def describe(exc: pymysql.MySQLError) -> str:
    """One line: '(code) message' from a PyMySQL error, without the password."""
    if len(exc.args) >= 2:
        return f"({exc.args[0]}) {str(exc.args[1]).splitlines()[0]}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
