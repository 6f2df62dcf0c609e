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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pymysql

from ..clock import utc_text
from ..config import MariaDBConfig
from ..errors import SinkRejected, SinkUnavailable
from . import wire
from .connect import connect, describe, where
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


def column_sql(name: str, unit: str) -> str:
    return f"{quote(name)} DOUBLE NULL COMMENT {comment(unit)}"


def create_table_sql(table: str, columns: Mapping[str, str]) -> str:
    """The DDL of the readings table for these register columns (name -> unit)."""
    lines = [
        "`id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT",
        "`site` VARCHAR(64) NOT NULL COMMENT 'logger that took the reading (site in edgelog.toml)'",
        "`meter` VARCHAR(64) NOT NULL COMMENT 'meter name in edgelog.toml'",
        "`buffer_id` CHAR(16) NOT NULL COMMENT 'identity: the logger buffer that stored the reading'",
        "`seq` BIGINT UNSIGNED NOT NULL COMMENT 'identity: reading number within that buffer'",
        "`measured_at` DATETIME(3) NOT NULL COMMENT 'UTC'",
        "`clock_ok` BOOLEAN NOT NULL DEFAULT 1 COMMENT '0: logger clock was not synchronised'",
        f"`error` VARCHAR({ERROR_MAX}) NULL COMMENT 'poll failed: a gap, values are NULL'",
        *(column_sql(name, unit) for name, unit in columns.items()),
        "PRIMARY KEY (`id`)",
        "UNIQUE KEY `uq_reading` (`site`, `buffer_id`, `seq`)",
        "KEY `ix_meter_time` (`site`, `meter`, `measured_at`)",
    ]
    body = ",\n  ".join(lines)
    return (
        f"CREATE TABLE IF NOT EXISTS {quote(table)} (\n  {body}\n)"
        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
    )


class MariaDBSink:
    """Writes batches into `[mariadb] table`; one connection, reopened after any error."""

    def __init__(self, config: MariaDBConfig, site: str, binary: bool | None = None):
        self.config = config
        self.site = site
        #: the fast path for backlog batches (None: `[mariadb] fast_path`); False: every
        #: batch by the plain path
        self.binary = config.fast_path if binary is None else binary
        #: how backlog batches travel: "binary", or "plain (why)"; the worker records it
        self.sync_path = "binary" if self.binary else "plain (fast_path = false)"
        self._checked = not self.binary
        self.conn: pymysql.connections.Connection | None = None
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
                self.conn = connect(self.config)
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
        return where(self.config)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                log.debug("closing a broken MariaDB connection", exc_info=True)
            self.conn = None
        self._statements = {}
        self._known_columns = None

    def _run(self, work):
        """Run `work(cursor)` in one transaction; classify any failure.

        A connection given up on a timeout may live on in the server (a partition eats
        the FIN too) with its transaction open, holding locks on the very rows the
        retry sends, until wait_timeout (8 h by default). So its session is KILLed
        (a user may kill its own) first thing once a new connection works."""
        conn = self._connection()
        orphan = getattr(self, "_orphan", None)
        if orphan is not None and orphan != conn.thread_id():
            self._orphan = None
            try:
                with conn.cursor() as cursor:
                    cursor.execute(f"KILL {int(orphan)}")
                log.info("killed MariaDB session %d, given up on a timeout", orphan)
            except pymysql.MySQLError:
                pass  # gone already (1094 unknown thread): nothing holds its locks
        try:
            with conn.cursor() as cursor:
                result = work(cursor)
            conn.commit()
            return result
        except pymysql.MySQLError as exc:
            if "timed out" in str(exc):
                self._orphan = conn.thread_id()
            self.close()
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            if code in REJECTED_CODES:
                raise SinkRejected(f"MariaDB {self.where} rejected rows: {describe(exc)}") from None
            raise SinkUnavailable(f"MariaDB {self.where}: {describe(exc)}") from None
        except (TimeoutError, OSError) as exc:
            self._orphan = conn.thread_id()
            self.close()
            raise SinkUnavailable(f"MariaDB {self.where}: {exc}") from None

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
        table = self.config.table

        def work(cur) -> set[str]:
            cur.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                (self.config.database, table),
            )
            existing = {row[0] for row in cur.fetchall()}
            if not existing:
                log.info("creating table %s.%s", self.config.database, table)
                cur.execute(create_table_sql(table, columns))
                return set(INSERT_COLUMNS) | set(columns)
            for name, unit in columns.items():
                if name not in existing:
                    log.info("adding column %s to %s", name, table)
                    cur.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {column_sql(name, unit)}")
                    existing.add(name)
            return existing

        self._known_columns = self._run(work)

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
        self._run(lambda cur: cur.executemany(sql, params))

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
            known = statements[key] = prepare(conn, self._insert_sql(columns, n_rows))
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


class _Unpackable(Exception):
    """A row holds a value the binary protocol cannot carry as its column's type."""


class _FastPathFailed(Exception):
    """The fast path failed for a reason no row explains: the library, not the batch."""


def _clip(error: str | None) -> str | None:
    return error if error is None or len(error) <= ERROR_MAX else error[: ERROR_MAX - 1] + "…"


def _one_line(text: str, limit: int = 200) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
