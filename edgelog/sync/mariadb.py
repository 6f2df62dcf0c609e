"""The MariaDB sink, through PyMySQL.

Idempotence: the table has ``UNIQUE (site, buffer_id, seq)`` and rows are written
with ``INSERT ... ON DUPLICATE KEY UPDATE seq = seq``, so replaying a batch that
MariaDB already committed (the logger died before it could record that) changes
nothing. Unlike ``INSERT IGNORE``, this keeps strict mode's errors for bad values.

Two paths, one statement. A batch of at least `BINARY_MIN_ROWS` rows takes the
*fast path*: a prepared multi-row INSERT (the same statement, strict mode and ON
DUPLICATE KEY clause) whose values travel in the binary protocol, pipelined (see
`wire`): several times faster than the text INSERT. Smaller batches (live syncs),
and every batch once the fast path is off, take the *plain path*: PyMySQL's
public ``executemany`` of the text INSERT. The fast path is off when
`[mariadb] fast_path = false`, when the installed PyMySQL lacks a private name it
needs (checked at the first connection), or after it failed in a way no batch
explains (a protocol surprise, an AttributeError or TypeError from the library):
then the batch's connection is dropped, so nothing of it is committed, the batch
is written by the plain path at once, the failure is logged once, and
`sync_path` (which the worker records for `sync-status`) says why. It stays off
for the life of the process: the cause is the installed library, which a new
connection does not change; a restart tries again.

Every connection comes from `connect.connect()`: timeouts, TLS per ssl_mode, the
password guard, and no LOCAL INFILE.

Clusters: with `[mariadb] hosts` the sink writes through one node at a time and
moves on to the next at once when the node fails (`nodes.Nodes.run`); a
certification conflict (1213) is tried again at once. A batch refused for its
size (`TOO_LARGE`) raises `SinkTooLarge`, and the worker writes it in halves. The
sink never sends a packet larger than the server's max_allowed_packet (read on
every new connection): the text INSERT is cut into statements that fit, and a
prepared execution that would not fit is refused before it is sent (as 1153, so
the batch is halved). So a lost connection (2006, 2013) is always taken for what
it is, a node failure, never for a packet too large.

Schema: with `[mariadb] manage_schema = false` the sink runs no DDL; it checks
that the table has every column and raises `SchemaMismatch` naming the ALTER.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pymysql

from ..clock import utc_text
from ..config import MariaDBConfig
from ..errors import EdgelogError, SchemaMismatch, SinkRejected, SinkTooLarge, SinkUnavailable
from . import wire
from .connect import connect, describe
from .nodes import Conflict, Node, NodeNotReady, Nodes, Session, nodes_of, probe
from .schema import KNOWN_TYPES, SAFE_TYPE, live_columns, type_warnings
from .wire import CHUNK_ROWS, RowPacker, chunk_sizes, close_statement, prepare, read_ok, send_execute

log = logging.getLogger(__name__)

#: Server errors caused by the rows themselves: sending them again will not help.
REJECTED_CODES = frozenset(
    {
        1048,  # column cannot be null
        1054,  # unknown column
        1136,  # column count doesn't match
        1264,  # out of range value
        1265,  # data truncated
        1292,  # incorrect datetime value
        1366,  # incorrect value
        1406,  # data too long
        3819,  # check constraint violated (MySQL)
        4025,  # CONSTRAINT ... failed (MariaDB CHECK constraint)
    }
)

#: Errors for the size of a batch (code, and a text the message must hold, if the
#: code is a generic one): smaller batches go in (`SinkTooLarge`).
TOO_LARGE = {
    1180: "wsrep_max_ws_rows",  # ER_ERROR_DURING_COMMIT: "wsrep_max_ws_rows exceeded"
    1105: "writeset size",  # ER_UNKNOWN_ERROR: "Maximum writeset size exceeded"
    1153: "",  # ER_NET_PACKET_TOO_LARGE: bigger than max_allowed_packet
}
#: ER_LOCK_DEADLOCK: a deadlock, or a Galera certification conflict; tried again at once.
CONFLICT = 1213
#: PyMySQL's own cap on the statements its executemany() builds.
TEXT_STATEMENT_MAX = 1_024_000
#: Room left under max_allowed_packet for a packet's header and a statement's slack.
PACKET_SLACK = 1024

#: Columns of every row, before the register columns (the buffer's FIXED_COLUMNS,
#: with site and buffer_id added by the sink).
INSERT_COLUMNS = ("site", "meter", "buffer_id", "seq", "measured_at", "clock_ok", "error")
ERROR_MAX = 255
#: Batches this big go through the prepared binary INSERT; smaller ones (live syncs)
#: as one text INSERT: one round trip, nothing to prepare.
BINARY_MIN_ROWS = 32
#: Prepared statements kept per connection (shapes: CHUNK_ROWS and powers of two).
MAX_STATEMENTS = 32


def quote(identifier: str) -> str:
    """Backtick-quote an identifier that config validation already restricted."""
    if not identifier or "`" in identifier or "\0" in identifier:
        raise ValueError(f"unsafe SQL identifier {identifier!r}")
    return f"`{identifier}`"


def comment(text: str) -> str:
    """A SQL string literal the same under every sql_mode: quotes doubled (backslash
    escaping means nothing under NO_BACKSLASH_ESCAPES); a backslash or a control
    character, which config validation refuses in a unit, is an error here too."""
    if "\\" in text or not text.isprintable():
        raise ValueError(f"unsafe column comment {text!r}")
    return "'" + text.replace("'", "''") + "'"


def column_sql(name: str, unit: str, sql_type: str = SAFE_TYPE) -> str:
    if sql_type not in KNOWN_TYPES:
        raise ValueError(f"unknown column type {sql_type!r}")
    return f"{quote(name)} {sql_type} NULL COMMENT {comment(unit)}"


def create_table_sql(table: str, columns: Mapping[str, str], types: Mapping[str, str] | None = None) -> str:
    """The DDL of the readings table for these register columns (name -> unit), each of
    its type in `types` (`schema.column_types`; DOUBLE for a column not there)."""
    types = types or {}
    lines = [
        "`id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT",
        "`site` VARCHAR(64) NOT NULL COMMENT 'logger that took the reading (site in edgelog.toml)'",
        "`meter` VARCHAR(64) NOT NULL COMMENT 'meter name in edgelog.toml'",
        "`buffer_id` CHAR(16) NOT NULL COMMENT 'identity: the logger buffer that stored the reading'",
        "`seq` BIGINT UNSIGNED NOT NULL COMMENT 'identity: reading number within that buffer'",
        "`measured_at` DATETIME(3) NOT NULL COMMENT 'UTC'",
        "`clock_ok` BOOLEAN NOT NULL DEFAULT 1 COMMENT '0: logger clock was not synchronised'",
        f"`error` VARCHAR({ERROR_MAX}) NULL COMMENT 'poll failed: a gap, values are NULL'",
        *(column_sql(name, unit, types.get(name, SAFE_TYPE)) for name, unit in columns.items()),
        "PRIMARY KEY (`id`)",
        "UNIQUE KEY `uq_reading` (`site`, `buffer_id`, `seq`)",
        "KEY `ix_meter_time` (`site`, `meter`, `measured_at`)",
    ]
    body = ",\n  ".join(lines)
    return (
        f"CREATE TABLE IF NOT EXISTS {quote(table)} (\n  {body}\n)"
        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
    )


def alter_table_sql(
    table: str,
    columns: Mapping[str, str],
    database: str | None = None,
    types: Mapping[str, str] | None = None,
) -> str:
    """One ALTER TABLE adding these register columns (name -> unit), each of its type in
    `types` (DOUBLE for a column not there)."""
    name = f"{quote(database)}.{quote(table)}" if database else quote(table)
    types = types or {}
    adds = [f"ADD COLUMN {column_sql(c, u, types.get(c, SAFE_TYPE))}" for c, u in columns.items()]
    return f"ALTER TABLE {name} " + ", ".join(adds)


def _table_columns(cur, database: str, table: str) -> set[str]:
    cur.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (database, table),
    )
    return {row[0] for row in cur.fetchall()}


class MariaDBSink:
    """Writes batches into `[mariadb] table`; one connection, reopened after any error."""

    def __init__(
        self,
        config: MariaDBConfig,
        site: str,
        binary: bool | None = None,
        types: Mapping[str, str] | None = None,
    ):
        self.config = config
        self.site = site
        #: SQL type of each register column it creates (`schema.column_types`); DOUBLE for others
        self.types = dict(types or {})
        #: the fast path for backlog batches (None: `[mariadb] fast_path`); False: every
        #: batch by the plain path
        self.binary = config.fast_path if binary is None else binary
        #: how backlog batches travel: "binary", or "plain (why)"; the worker records it
        self.sync_path = "binary" if self.binary else "plain (fast_path = false)"
        self._checked = not self.binary
        self.conn: pymysql.connections.Connection | None = None
        self.nodes = Nodes(nodes_of(config))
        self._session: Session | None = None  # what the probe of `conn` found
        #: statements prepared on `conn`: (table, columns, rows) -> (statement id, parameters)
        self._statements: dict[tuple[Any, ...], tuple[int, int]] = {}
        self._known_columns: set[str] | None = None
        #: batches written each way (binary: prepared statements; text: executemany), and
        #: binary batches written again as text (a value the binary protocol cannot carry)
        self.stats = {"binary": 0, "text": 0, "binary_fallback": 0}

    # -- connection ----------------------------------------------------------------

    def _connection(self) -> pymysql.connections.Connection:
        if self.conn is None:
            try:
                self.conn = connect(self.nodes.current.config(self.config))
            except pymysql.MySQLError as exc:
                raise SinkUnavailable(f"MariaDB {self.where}: {describe(exc)}") from None
            except (OSError, ValueError) as exc:
                raise SinkUnavailable(f"MariaDB {self.where}: {exc}") from None
            if not self._checked:  # the first connection: can the fast path run here?
                self._checked = True
                problem = wire.fast_path_problem()
                if problem:
                    self._fall_back(f"fast path unavailable: {problem}")
        return self.conn

    def _fall_back(self, reason: str) -> None:
        """The plain path for every batch from now on (this process); said once."""
        self.binary = False
        self.sync_path = f"plain ({reason})"
        log.warning(
            "sync: %s; backlog batches take the plain INSERT path from now on "
            "(nothing is lost, it is slower; a restart tries the fast path again)",
            reason,
        )

    @property
    def where(self) -> str:
        return self._at(self.nodes.current)

    def _at(self, node: Node) -> str:
        return f"{self.config.user}@{node.label}/{self.config.database}"

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                log.debug("closing a broken MariaDB connection", exc_info=True)
            self.conn = None
        self._statements = {}
        self._session = None
        self._known_columns = None

    # -- running work on the nodes -------------------------------------------------

    def _run(self, work):
        """Run `work(cursor)` in one transaction on the node in use; when the node fails,
        at once on the next (`Nodes.run`): SinkUnavailable only once every node failed in
        this round; SinkRejected (and SinkTooLarge) at once: other nodes say the same."""
        return self.nodes.run(lambda: self._run_once(work), prefix=lambda node: f"MariaDB {self._at(node)}: ")

    def _run_once(self, work):
        """Run `work(cursor)` in one transaction on the current node; classify any failure.

        A connection given up on a timeout may live on in the server (a partition eats
        the FIN too) with its transaction open, holding locks on the very rows the
        retry sends, until wait_timeout (8 h by default). So its session is KILLed
        (a user may kill its own) first thing once a new connection to the same node
        works: a thread id means nothing on another node."""
        conn = self._connection()
        node = self.nodes.current
        try:
            if self._session is None:
                self._kill_orphan(conn, node)
                self._session = probe(conn)
            with conn.cursor() as cursor:
                result = work(cursor)
            conn.commit()
            return result
        except NodeNotReady as exc:
            self.close()
            raise self._unavailable(str(exc)) from None
        except pymysql.MySQLError as exc:
            if "timed out" in str(exc):
                self.nodes.orphan(node, conn.thread_id())
            self.close()
            raise self._classify(exc) from None
        except (TimeoutError, OSError) as exc:
            self.nodes.orphan(node, conn.thread_id())
            self.close()
            raise self._unavailable(str(exc)) from None

    def _kill_orphan(self, conn: pymysql.connections.Connection, node: Node) -> None:
        orphan = self.nodes.take_orphan(node, conn.thread_id())
        if orphan is None:
            return
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"KILL {int(orphan)}")
            log.info("killed MariaDB session %d on %s, given up on a timeout", orphan, node.label)
        except pymysql.MySQLError as exc:  # gone already (1094 unknown thread): it holds no locks
            log.debug("MariaDB session %d on %s not killed: %s", orphan, node.label, describe(exc))

    def _classify(self, exc: pymysql.MySQLError) -> EdgelogError:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code in REJECTED_CODES:
            return SinkRejected(f"MariaDB {self.where} rejected rows: {describe(exc)}")
        if code in TOO_LARGE and TOO_LARGE[code] in str(exc.args[-1]):
            return SinkTooLarge(f"MariaDB {self.where} refused a batch this large: {describe(exc)}")
        if code == CONFLICT:
            return Conflict(f"MariaDB {self.where}: {describe(exc)}")
        return self._unavailable(describe(exc))

    def _unavailable(self, cause: str) -> SinkUnavailable:
        return SinkUnavailable(f"MariaDB {self.where}: {cause}")

    def node_state(self) -> tuple[str | None, str]:
        """(the node last written through, the nodes whose last try failed as JSON)."""
        return self.nodes.state()

    def _fits(self, n_bytes: int, what: str) -> None:
        """Refuse (as 1153) to send a packet the server would not read: its answer would
        be a lost connection, not to be told from a node failure."""
        limit = self._session.max_packet if self._session else None
        if limit is not None and n_bytes + PACKET_SLACK > limit:
            raise pymysql.err.OperationalError(
                1153, f"{what} of {n_bytes} bytes exceeds the server's max_allowed_packet ({limit}): not sent"
            )

    def _text_statement_max(self) -> int:
        limit = self._session.max_packet if self._session else TEXT_STATEMENT_MAX
        return max(PACKET_SLACK, min(TEXT_STATEMENT_MAX, limit - PACKET_SLACK))

    def transaction(self, work: Callable[[Any], Any]) -> Any:
        """Run `work(cursor)` in one transaction on the sink's connection (errors as `_run`)."""
        return self._run(work)

    def grants(self) -> list[str]:
        """The logged-in user's SHOW GRANTS lines (for `edgelog doctor`)."""

        def work(cur) -> list[str]:
            cur.execute("SHOW GRANTS")
            return [row[0] for row in cur.fetchall()]

        return self._run(work)

    def ping(self) -> None:
        """Raise SinkUnavailable unless a login and a trivial query work."""
        self._run(lambda cur: cur.execute("SELECT 1"))

    # -- the Sink interface --------------------------------------------------------

    def ensure_table(self, columns: Mapping[str, str]) -> None:
        if not self.config.manage_schema:
            self._known_columns = self.check_table(columns)
            return
        table = self.config.table

        def work(cur) -> set[str]:
            live = live_columns(cur, self.config.database, table)
            existing = set(live)
            if not existing:
                log.info("creating table %s.%s", self.config.database, table)
                cur.execute(create_table_sql(table, columns, self.types))
                return set(INSERT_COLUMNS) | set(columns)
            for line in type_warnings(live, {c: self.types[c] for c in columns if c in self.types}):
                log.warning("table %s: %s", table, line)
            missing = {name: unit for name, unit in columns.items() if name not in existing}
            if missing:  # one ALTER (on a Galera cluster, one total order operation)
                log.info("adding column(s) %s to %s", ", ".join(missing), table)
                cur.execute(alter_table_sql(table, missing, types=self.types))
                existing |= set(missing)
            return existing

        self._known_columns = self._run(work)

    def table_columns(self) -> set[str]:
        """The columns the table has now (empty: there is no table)."""
        return self._run(lambda cur: _table_columns(cur, self.config.database, self.config.table))

    def check_table(self, columns: Mapping[str, str]) -> set[str]:
        """The table's columns; SchemaMismatch, naming the DDL to run, unless it has every
        column edgelog writes (its own and `columns`). Runs no DDL."""
        existing = self.table_columns()
        name = f"{self.config.database}.{self.config.table}"
        if not existing:
            raise SchemaMismatch(
                f"table {name} does not exist and [mariadb] manage_schema = false: "
                "have the DBA create it (`edgelog schema` prints the CREATE TABLE)"
            )
        own = [c for c in INSERT_COLUMNS if c not in existing]
        if own:
            raise SchemaMismatch(f"table {name} lacks edgelog's column(s) {', '.join(own)}: not its table")
        missing = {c: unit for c, unit in columns.items() if c not in existing}
        if missing:
            alter = alter_table_sql(self.config.table, missing, self.config.database, self.types)
            raise SchemaMismatch(
                f"table {name} lacks column(s) {', '.join(missing)} and [mariadb] manage_schema = false: "
                f"have the DBA run `{alter};` "
                "(`edgelog schema --alter` prints it)"
            )
        return existing

    def high_water(self, buffer_id: str) -> int:
        def work(cur) -> int:
            cur.execute(
                f"SELECT MAX(seq) FROM {quote(self.config.table)} WHERE site = %s AND buffer_id = %s",
                (self.site, buffer_id),
            )
            (value,) = cur.fetchone()
            return int(value or 0)

        return self._run(work)

    def write_batch(self, buffer_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.binary and len(rows) >= BINARY_MIN_ROWS and self._binary_batch(buffer_id, columns, rows):
            self.stats["binary"] += 1
            return
        self.stats["text"] += 1
        self._insert_batch(buffer_id, columns, rows)

    def _insert_batch(self, buffer_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        names = ", ".join(quote(c) for c in (*INSERT_COLUMNS, *columns))
        marks = ", ".join(["%s"] * (len(INSERT_COLUMNS) + len(columns)))
        sql = (
            f"INSERT INTO {quote(self.config.table)} ({names}) VALUES ({marks}) "
            "ON DUPLICATE KEY UPDATE seq = seq"
        )
        site = self.site
        params = [
            (site, meter, buffer_id, seq, utc_text(at), ok, _clip(err), *values)
            for seq, meter, at, ok, err, *values in rows
        ]

        def work(cur) -> None:
            cur.max_stmt_length = self._text_statement_max()  # multi-row INSERTs that fit a packet
            cur.executemany(sql, params)

        self._run(work)

    def _insert_sql(self, columns: Sequence[str], n_rows: int) -> str:
        names = ", ".join(quote(c) for c in (*INSERT_COLUMNS, *columns))
        row = "(" + ", ".join(["?"] * (len(INSERT_COLUMNS) + len(columns))) + ")"
        return (
            f"INSERT INTO {quote(self.config.table)} ({names}) VALUES {', '.join([row] * n_rows)} "
            "ON DUPLICATE KEY UPDATE seq = seq"
        )

    def _statement(self, conn: Any, columns: Sequence[str], n_rows: int) -> int:
        """The id of the prepared INSERT of `n_rows` rows on this connection."""
        statements = self._statements
        key = (self.config.table, tuple(columns), n_rows)
        known = statements.get(key)
        if known is None:
            if len(statements) >= MAX_STATEMENTS:
                for stmt_id, _ in statements.values():
                    close_statement(conn, stmt_id)
                statements.clear()
            sql = self._insert_sql(columns, n_rows)
            self._fits(len(sql.encode()) + 1, "a PREPARE")
            known = statements[key] = prepare(conn, sql)
            expected = n_rows * (len(INSERT_COLUMNS) + len(columns))
            if known[1] != expected:
                raise wire.FastPathError(0, f"prepared INSERT has {known[1]} parameters, not {expected}")
        return known[0]

    def _binary_batch(self, buffer_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bool:
        """Write `rows` by the prepared INSERT in one transaction, executions pipelined.
        False (nothing committed) if the plain path must write them: a row holds a value
        the binary protocol cannot carry, or the fast path failed (then it is off)."""
        packer = RowPacker(self.site, buffer_id, len(columns), ERROR_MAX)

        def work(cur) -> None:
            conn = cur.connection
            try:
                wire.check_connection(conn)
                sizes = chunk_sizes(len(rows), CHUNK_ROWS)
                ids = {n: self._statement(conn, columns, n) for n in set(sizes)}  # before any EXECUTE
                start = 0
                for n in sizes:  # each execution goes out as soon as it is packed ...
                    try:
                        body = packer.execute_body(ids[n], rows[start : start + n])
                    except (TypeError, ValueError, OverflowError) as exc:
                        raise _Unpackable(str(exc)) from None
                    self._fits(len(body) + 1, "an EXECUTE")
                    send_execute(conn, body)
                    start += n
                for _ in sizes:  # ... then the answers, in order; the first error raises
                    read_ok(conn)
            except (_Unpackable, OSError):
                raise
            except pymysql.MySQLError as exc:
                if isinstance(exc, wire.FastPathError) or not (exc.args and isinstance(exc.args[0], int)):
                    raise _FastPathFailed(f"{type(exc).__name__}: {describe(exc)}") from exc
                raise  # the server's answer: the same as the plain path would get
            except Exception as exc:  # the library changed under the fast path
                raise _FastPathFailed(f"{type(exc).__name__}: {exc}") from exc

        try:
            self._run(work)
        except _Unpackable as exc:
            # Nothing committed: the connection is dropped, so its transaction rolls back.
            log.info(
                "a batch holds a value the binary protocol cannot carry (%s); using the text INSERT", exc
            )
            self.close()
            self.stats["binary_fallback"] += 1
            return False
        except _FastPathFailed as exc:
            self.close()  # its transaction rolls back: nothing of the batch is committed
            self._fall_back(f"fast path failed: {_one_line(str(exc))}")
            return False
        return True


def cause(error: str) -> str:
    """A sink error without the server it names (for a screen that names it elsewhere):
    "MariaDB user@host:port/db: (2003) Can't connect ..." -> "(2003) Can't connect ..."."""
    return error.partition(": ")[2] if error.startswith("MariaDB") else error


class _Unpackable(Exception):
    """A row holds a value the binary protocol cannot carry as its column's type."""


class _FastPathFailed(Exception):
    """The fast path failed for a reason no row explains: the library, not the batch."""


def _clip(error: str | None) -> str | None:
    return error if error is None or len(error) <= ERROR_MAX else error[: ERROR_MAX - 1] + "…"


def _one_line(text: str, limit: int = 200) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
