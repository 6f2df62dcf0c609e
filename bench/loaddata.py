"""The bench's LOAD DATA LOCAL: the server-ceiling reference, and a sink that uses it.

edgelog's sink does not use ``LOAD DATA LOCAL`` (its prepared binary INSERT is
faster), and its connections refuse any LOCAL INFILE request
(`edgelog.sync.connect.GuardedConnection`). The bench needs it for the reference
the issue defines, the server's own ingest rate of a ready-made file, and to show
the LOAD DATA write path side by side. Both go through `LoadingConnection`, the
product's guarded connection (same timeouts, TLS and password guard, opened by
`edgelog.sync.connect.connect`) plus `offering()`:

* it sends data only while `offering()` is arming it for one statement, only if
  the name the server asks for is byte for byte the random ``edgelog-batch-…``
  name of that statement (not a path), and then only the bytes of the in-memory
  stream it was given;
* any other request gets an empty file and fails with `LocalInfileRefused`;
* PyMySQL's own handler is disarmed (``_local_infile`` cleared), so a code path
  that bypasses the guarded result (PyMySQL's ``show_warnings()``) raises
  instead of opening a file.

tests/test_wire.py proves it with a proxy that rewrites the request.

Rows are text in MariaDB's default LOAD DATA format: tab between fields, newline
after a row, ``\\N`` for NULL, backslash escapes for tab, newline, CR, NUL and
backslash. Floats with 17 significant digits (they read back as the same double).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pymysql
from pymysql.constants import CLIENT

from edgelog.config import MariaDBConfig
from edgelog.sync.connect import GuardedConnection, GuardedResult, connect
from edgelog.sync.mariadb import ERROR_MAX, INSERT_COLUMNS, MariaDBSink, quote
from edgelog.sync.wire import StampText

#: Largest data packet sent for LOAD DATA LOCAL.
MAX_DATA_PACKET = 1 << 20
NULL = "\\N"


@dataclass
class Outgoing:
    """What the client offers to send for one LOAD DATA LOCAL statement."""

    name: bytes
    chunks: Iterable[bytes]
    bytes_sent: int = 0


class OfferingResult(GuardedResult):
    """A guarded result that sends the data of the statement `offering()` armed, if the
    server asks for exactly its name; anything else refused, nothing sent."""

    def refusing(self, requested: bytes) -> str | None:
        conn: LoadingConnection = self.connection
        outgoing, conn.outgoing = conn.outgoing, None  # one request per offer, at most
        if outgoing is None:
            return "no LOAD DATA LOCAL statement of ours is running"
        if requested != outgoing.name:
            return f"our statement offered {outgoing.name.decode(errors='replace')!r}"
        for chunk in outgoing.chunks:
            for start in range(0, len(chunk), MAX_DATA_PACKET):
                conn.write_packet(chunk[start : start + MAX_DATA_PACKET])
            outgoing.bytes_sent += len(chunk)
        return None


class LoadingConnection(GuardedConnection):
    """A guarded connection that negotiates LOCAL INFILE, for `offering()` only."""

    local_infile = True
    result_class = OfferingResult
    outgoing: Outgoing | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local_infile = False  # PyMySQL's own handler would open any path: disarm it

    @property
    def can_load_local(self) -> bool:
        return bool(self.client_flag & CLIENT.LOCAL_FILES)

    @contextmanager
    def offering(self, name: bytes, chunks: Iterable[bytes]) -> Iterator[Outgoing]:
        """Arm the connection for one LOAD DATA LOCAL statement sending `chunks` as `name`."""
        if not self.can_load_local:
            raise pymysql.err.ProgrammingError("this connection did not negotiate LOCAL INFILE")
        outgoing = Outgoing(name, chunks)
        self.outgoing = outgoing
        try:
            yield outgoing
        finally:
            self.outgoing = None


def open_loading(config: MariaDBConfig) -> LoadingConnection:
    """A LoadingConnection to `config`'s server, through the product's `connect()`."""
    conn = connect(config, cls=LoadingConnection)
    assert isinstance(conn, LoadingConnection)
    return conn


def new_local_name() -> bytes:
    """A name for one LOAD DATA LOCAL statement's data: random, and not a path."""
    return f"edgelog-batch-{secrets.token_hex(8)}".encode()


#: Rows per data packet of the streamed file.
CHUNK_ROWS = 256
#: The only warning a LOAD DATA ... IGNORE batch may leave: a row MariaDB already has.
DUPLICATE_KEY = 1062
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


def field(text: str) -> str:
    return text.translate(_ESCAPES)


def load_sql(table: str, columns: Sequence[str], name: bytes) -> str:
    """IGNORE: rows MariaDB has stay as they are (LOCAL implies it anyway: the server
    cannot stop the client's stream). Default field and line format."""
    names = ", ".join(quote(c) for c in columns)
    return (
        f"LOAD DATA LOCAL INFILE '{name.decode()}' IGNORE INTO TABLE {quote(table)} "
        f"CHARACTER SET utf8mb4 ({names})"
    )


class TsvFormatter:
    """Buffer rows (FIXED_COLUMNS + values) -> LOAD DATA lines of
    (site, meter, buffer_id, seq, measured_at, clock_ok, error, values)."""

    def __init__(self, site: str, buffer_id: str, n_values: int, error_max: int = ERROR_MAX):
        self.site, self.buffer_id, self.n_values = site, buffer_id, n_values
        self.error_max = error_max
        self.stamp = StampText()
        self._formats: dict[str, tuple[str, str]] = {}  # meter -> (whole line, fixed part)

    def _formats_of(self, meter: str) -> tuple[str, str]:
        formats = self._formats.get(meter)
        if formats is None:
            prefix = f"{field(self.site)}\t{field(meter)}\t{field(self.buffer_id)}\t".replace("%", "%%")
            head = prefix + "%d\t%s\t%d\t%s"
            formats = self._formats[meter] = (head + "\t%.17g" * self.n_values + "\n", head)
        return formats

    def _error(self, error: str | None) -> str:
        if error is None:
            return NULL
        if len(error) > self.error_max:
            error = error[: self.error_max - 1] + "…"
        return field(error)

    def lines(self, rows: Sequence[Sequence[Any]]) -> str:
        out = []
        stamp = self.stamp
        for row in rows:
            line_format = (self._formats.get(row[1]) or self._formats_of(row[1]))[0]
            try:
                error = NULL if row[4] is None else self._error(row[4])
                out.append(line_format % (row[0], stamp(row[2]), row[3], error, *row[5:]))
            except TypeError:  # a NULL value
                head = self._formats_of(row[1])[1] % (row[0], stamp(row[2]), row[3], self._error(row[4]))
                values = "".join("\t" + (NULL if v is None else f"{v:.17g}") for v in row[5:])
                out.append(f"{head}{values}\n")
        return "".join(out)

    def chunks(self, rows: Sequence[Sequence[Any]], chunk_rows: int = CHUNK_ROWS) -> Iterator[bytes]:
        for start in range(0, len(rows), chunk_rows):
            yield self.lines(rows[start : start + chunk_rows]).encode("utf-8")


def load_bytes(conn: LoadingConnection, table: str, columns: Sequence[str], data: Iterable[bytes]) -> int:
    """One LOAD DATA LOCAL ... IGNORE of `data` (already formatted); returns the warning count."""
    name = new_local_name()
    with conn.cursor() as cur:
        with conn.offering(name, data):
            cur.execute(load_sql(table, columns, name))
        return int(cur.warning_count)


class LoadDataSink:
    """A sink (edgelog.sync.sink.Sink) writing each batch with one LOAD DATA LOCAL ... IGNORE
    streamed from memory (formatting overlaps the server's inserting) on its own
    connection, then checking the warnings: anything but a duplicate key and the batch
    is rolled back and written by `text`, the product's sink on its plain path, which
    also makes the table and answers the high-water mark."""

    def __init__(self, config: MariaDBConfig, site: str):
        self.config = config
        self.site = site
        self.text = MariaDBSink(config, site, binary=False)
        self.conn: LoadingConnection | None = None
        self.stats = {"load_data": 0, "text": 0, "binary": 0}

    def ensure_table(self, columns: Mapping[str, str]) -> None:
        self.text.ensure_table(columns)

    def high_water(self, buffer_id: str) -> int:
        return self.text.high_water(buffer_id)

    def node_state(self) -> tuple[str | None, str]:
        return self.text.node_state()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.text.close()

    def _connection(self) -> LoadingConnection:
        if self.conn is None:
            self.conn = open_loading(self.config)
            with self.conn.cursor() as cur:
                cur.execute("SET SESSION max_error_count = 65535")
        return self.conn

    def write_batch(self, buffer_id: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        conn = self._connection()
        formatter = TsvFormatter(self.site, buffer_id, len(columns))
        name = new_local_name()
        with conn.cursor() as cur:
            with conn.offering(name, formatter.chunks(rows)):
                cur.execute(load_sql(self.config.table, [*INSERT_COLUMNS, *columns], name))
            warnings, listed = cur.warning_count, []
            if warnings:
                cur.execute("SHOW WARNINGS")
                listed = list(cur.fetchall())
        clean = len(listed) == warnings and all(int(w[1]) == DUPLICATE_KEY for w in listed)
        if clean:
            conn.commit()
            self.stats["load_data"] += 1
            return
        conn.rollback()
        self.stats["text"] += 1
        self.text.write_batch(buffer_id, columns, rows)
