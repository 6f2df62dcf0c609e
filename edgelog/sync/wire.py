"""What the sink sends on the wire beyond plain PyMySQL: binary prepared statements,
and a connection that never hands a file to the server.

Binary prepared statements
--------------------------
A backlog batch is written as a few executions of one prepared multi-row
``INSERT ... ON DUPLICATE KEY UPDATE seq = seq`` (`CHUNK_ROWS` rows each, the
remainder in power-of-two pieces so a connection prepares at most a handful of
statement shapes). Parameters travel in MySQL's binary protocol: a double is its
8 IEEE bytes, so the client formats no float (``repr()`` of 22 floats is most of
the cost of a text INSERT) and the server parses none (``strtod`` of 22 numbers
is most of the cost of ``LOAD DATA``), and the value MariaDB stores is the
buffer's double bit for bit. The executions of a batch are pipelined: all are
sent, then all answers read, so a batch costs one round trip plus the COMMIT.
Strict mode, the UNIQUE key and the ON DUPLICATE KEY clause behave exactly as
for the text INSERT: a bad value is an error (never a clamped value), a row
MariaDB already has is left as it is.

PyMySQL has no prepared statements; the few packets needed (COM_STMT_PREPARE,
COM_STMT_EXECUTE, COM_STMT_CLOSE) are built here on PyMySQL's packet layer
(``_execute_command``, ``_read_packet``), which PyMySQL 1.1 and 1.2 share.

LOCAL INFILE
------------
With ``LOAD DATA LOCAL`` the *server* names the file the client sends (the
statement only suggests it). A rogue or compromised server, or anyone in the
middle of an unencrypted link, can answer *any* query with such a request for
``/etc/edgelog/mariadb.password`` or ``~/.ssh/id_ed25519``, and PyMySQL's own
handler opens and sends whatever path it is given when ``local_infile`` is on.
edgelog's sink never uses LOAD DATA and its connections never negotiate the
capability; on top of that, every connection made here is a `GuardedConnection`,
whose results answer any LOCAL INFILE request without touching the file system:

* it sends data only while `offering()` is arming it for one statement (only the
  bench's LOAD DATA reference uses that, on a connection opened with
  ``local_infile=True``), only if the name the server asks for is byte for byte
  the random ``edgelog-batch-…`` name of that statement, and then only the bytes
  of the in-memory stream it was given;
* any other request gets an empty file and fails with `LocalInfileRefused`;
* PyMySQL's own handler is disarmed (``_local_infile`` cleared once the handshake
  is done), so a code path that bypasses the guarded result (PyMySQL's
  ``show_warnings()``) raises instead of opening a file.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pymysql
from pymysql.connections import MySQLResult
from pymysql.constants import CLIENT, COMMAND, CR, FIELD_TYPE
from pymysql.protocol import LoadLocalPacketWrapper

#: Rows per execution of the prepared INSERT (MariaDB's limit is 65535 parameters a
#: statement; 128 rows of the pac3100 profile are 3,712). Measured on MariaDB 10.11:
#: 32 to 256 rows per execution ingest alike, 512 is slower.
CHUNK_ROWS = 128
#: Largest data packet sent for LOAD DATA LOCAL.
MAX_DATA_PACKET = 1 << 20
NULL = "\\N"


# -- a connection that never sends a file it was not given --------------------------------


class LocalInfileRefused(pymysql.err.OperationalError):
    """The server asked for a local file we did not offer. Nothing was read or sent."""


@dataclass
class Outgoing:
    """What the client offers to send for one LOAD DATA LOCAL statement."""

    name: bytes
    chunks: Iterable[bytes]
    bytes_sent: int = 0


class GuardedResult(MySQLResult):
    """A query result whose LOCAL INFILE request handling never touches the file system."""

    def _read_load_local_packet(self, first_packet: Any) -> None:
        conn: GuardedConnection = self.connection
        requested = bytes(LoadLocalPacketWrapper(first_packet).filename)
        outgoing, conn._outgoing = conn._outgoing, None  # one request per offer, at most
        refused: str | None = None
        if outgoing is None:
            refused = "no LOAD DATA LOCAL statement of ours is running"
        elif requested != outgoing.name:
            refused = f"our statement offered {outgoing.name.decode(errors='replace')!r}"
        try:
            if outgoing is not None and refused is None:
                for chunk in outgoing.chunks:
                    for start in range(0, len(chunk), MAX_DATA_PACKET):
                        conn.write_packet(chunk[start : start + MAX_DATA_PACKET])
                    outgoing.bytes_sent += len(chunk)
        finally:
            conn.write_packet(b"")  # end of the data (an empty file when refused)
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


class GuardedConnection(pymysql.connections.Connection):
    """A PyMySQL connection whose every query result is a `GuardedResult`."""

    _outgoing: Outgoing | None = None
    #: statements prepared on this connection: key -> (statement id, parameters)
    statements: dict[tuple[Any, ...], tuple[int, int]]

    @classmethod
    def open(cls, args: dict[str, Any], local_infile: bool = False) -> GuardedConnection:
        """Connect with PyMySQL's `args`; negotiate CLIENT_LOCAL_FILES only if asked."""
        conn = cls(**{**args, "local_infile": local_infile, "defer_connect": True})
        conn._local_infile = False  # PyMySQL's own handler would open any path: disarm it
        conn.statements = {}
        conn.connect()
        return conn

    @property
    def can_load_local(self) -> bool:
        return bool(self.client_flag & CLIENT.LOCAL_FILES)

    def _read_query_result(self, unbuffered: bool = False) -> int:
        # PyMySQL's Connection._read_query_result (1.1, 1.2) with GuardedResult for MySQLResult.
        self._result = None
        result = GuardedResult(self)
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

    @contextmanager
    def offering(self, name: bytes, chunks: Iterable[bytes]) -> Iterator[Outgoing]:
        """Arm the connection for one LOAD DATA LOCAL statement sending `chunks` as `name`."""
        if not self.can_load_local:
            raise pymysql.err.ProgrammingError("this connection did not negotiate LOCAL INFILE")
        outgoing = Outgoing(name, chunks)
        self._outgoing = outgoing
        try:
            yield outgoing
        finally:
            self._outgoing = None


def new_local_name() -> bytes:
    """A name for one LOAD DATA LOCAL statement's data: random, and not a path."""
    return f"edgelog-batch-{secrets.token_hex(8)}".encode()


# -- prepared statements -------------------------------------------------------------------


def prepare(conn: pymysql.connections.Connection, sql: str) -> tuple[int, int]:
    """COM_STMT_PREPARE: (statement id, number of parameters)."""
    conn._execute_command(COMMAND.COM_STMT_PREPARE, sql)
    first = conn._read_packet()  # raises the server's error (e.g. unknown column)
    data = first.get_all_data()
    if data[:1] != b"\x00":
        raise pymysql.err.OperationalError(CR.CR_COMMANDS_OUT_OF_SYNC, "unexpected answer to PREPARE")
    stmt_id, n_columns, n_params = struct.unpack_from("<IHH", data, 1)
    # Parameter, then column definitions, each list followed by an EOF packet
    # (PyMySQL does not ask for CLIENT_DEPRECATE_EOF).
    for count in (n_params, n_columns):
        if count:
            for _ in range(count + 1):
                conn._read_packet()
    return stmt_id, n_params


def close_statement(conn: pymysql.connections.Connection, stmt_id: int) -> None:
    """COM_STMT_CLOSE (the server does not answer)."""
    conn._execute_command(COMMAND.COM_STMT_CLOSE, struct.pack("<I", stmt_id))


def send_execute(conn: pymysql.connections.Connection, body: bytes) -> None:
    """COM_STMT_EXECUTE without waiting for the answer (see `read_ok`)."""
    conn._execute_command(COMMAND.COM_STMT_EXECUTE, body)


def read_ok(conn: pymysql.connections.Connection) -> None:
    """Read the answer to one pipelined command: an OK, else raise (the server's error,
    or anything else, a LOCAL INFILE request included, as out of sync)."""
    conn._next_seq_id = 1  # every answer to a command starts at sequence 1
    packet = conn._read_packet()  # raises MySQLError for an error packet
    if not packet.is_ok_packet():
        raise pymysql.err.OperationalError(CR.CR_COMMANDS_OUT_OF_SYNC, "unexpected answer to EXECUTE")


def lenenc(data: bytes) -> bytes:
    """A length-encoded string of the binary protocol."""
    n = len(data)
    if n < 251:
        return bytes((n,)) + data
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n) + data
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3] + data
    return b"\xfe" + struct.pack("<Q", n) + data


# -- the rows --------------------------------------------------------------------------------

_MILLIS = [f"{i:03d}" for i in range(1000)]
_TWO = [f"{i:02d}" for i in range(100)]


class StampText:
    """Unix seconds -> 'YYYY-MM-DD HH:MM:SS.fff' (UTC, milliseconds rounded), the same
    text as `edgelog.clock.utc_text()`, without a strftime call per row."""

    def __init__(self) -> None:
        self._days: dict[int, str] = {}
        self._second: int | None = None
        self._second_text = ""

    def __call__(self, ts: float) -> str:
        seconds, millis = divmod(round(ts * 1000), 1000)
        if seconds != self._second:
            day, of_day = divmod(seconds, 86400)
            date = self._days.get(day)
            if date is None:
                if len(self._days) > 4096:
                    self._days.clear()
                date = self._days[day] = time.strftime("%Y-%m-%d ", time.gmtime(day * 86400))
            hours, rest = divmod(of_day, 3600)
            minutes, secs = divmod(rest, 60)
            self._second = seconds
            self._second_text = f"{date}{_TWO[hours]}:{_TWO[minutes]}:{_TWO[secs]}."
        return self._second_text + _MILLIS[millis]


#: Binary-protocol types of the fixed columns (site, meter, buffer_id, seq, measured_at,
#: clock_ok, error): (type, flags); 0x80 marks an unsigned integer.
_FIXED_TYPES = (
    (FIELD_TYPE.VAR_STRING, 0),
    (FIELD_TYPE.VAR_STRING, 0),
    (FIELD_TYPE.VAR_STRING, 0),
    (FIELD_TYPE.LONGLONG, 0x80),
    (FIELD_TYPE.VAR_STRING, 0),
    (FIELD_TYPE.TINY, 0),
    (FIELD_TYPE.VAR_STRING, 0),
)
_ERROR_PARAM = 6  # the parameter NULL in a reading, set in a failed poll
_STAMP_BYTES = 23  # len('YYYY-MM-DD HH:MM:SS.fff')


class RowPacker:
    """Buffer rows (FIXED_COLUMNS + values) -> the parameters of one COM_STMT_EXECUTE of
    an INSERT of (site, meter, buffer_id, seq, measured_at, clock_ok, error, *values)."""

    def __init__(self, site: str, buffer_id: str, n_values: int, error_max: int):
        self.n_params = len(_FIXED_TYPES) + n_values
        self.error_max = error_max
        self.stamp = StampText()
        types = [*_FIXED_TYPES, *[(FIELD_TYPE.DOUBLE, 0)] * n_values]
        self.row_types = b"".join(struct.pack("<BB", t, f) for t, f in types)
        self._site = lenenc(site.encode())
        self._buffer_id = lenenc(buffer_id.encode())
        self._prefixes: dict[str, bytes] = {}
        # A reading: seq, the stamp (length byte + 23 bytes), clock_ok, error NULL, the values.
        self._reading = struct.Struct(f"<QB{_STAMP_BYTES}sb{n_values}d")
        self._reading_nulls = 1 << _ERROR_PARAM

    def _prefix(self, meter: str) -> bytes:
        prefix = self._prefixes.get(meter)
        if prefix is None:
            if not isinstance(meter, str):
                raise TypeError(f"meter name {meter!r} is not a text")
            if len(self._prefixes) > 1024:
                self._prefixes.clear()
            prefix = self._prefixes[meter] = self._site + lenenc(meter.encode()) + self._buffer_id
        return prefix

    def execute_body(self, stmt_id: int, rows: Sequence[Sequence[Any]]) -> bytes:
        """COM_STMT_EXECUTE's payload for `rows`. Raises TypeError/ValueError/OverflowError
        for a value the binary protocol cannot carry as its column's type."""
        n_params = self.n_params
        nulls = 0
        parts = []
        append = parts.append
        stamp = self.stamp
        prefixes = self._prefixes
        reading = self._reading.pack
        for r, row in enumerate(rows):
            meter = row[1]
            prefix = prefixes.get(meter) or self._prefix(meter)
            if row[4] is None:
                text = stamp(row[2]).encode()
                if len(text) == _STAMP_BYTES:
                    try:
                        append(prefix + reading(row[0], _STAMP_BYTES, text, row[3], *row[5:]))
                    except struct.error:  # a NULL value (or a value that is not a number)
                        pass
                    else:
                        nulls |= self._reading_nulls << (r * n_params)
                        continue
            data, row_nulls = self._any_row(row)
            append(prefix + data)
            nulls |= row_nulls << (r * n_params)
        null_bitmap = nulls.to_bytes((len(rows) * n_params + 7) // 8, "little")
        head = struct.pack("<IBI", stmt_id, 0, 1)  # no cursor, one iteration
        return head + null_bitmap + b"\x01" + self.row_types * len(rows) + b"".join(parts)

    def _any_row(self, row: Sequence[Any]) -> tuple[bytes, int]:
        """A row with NULLs (a failed poll, a value the meter sent as NaN): field by field."""
        seq, _meter, measured_at, clock_ok, error, *values = row
        if len(values) != self.n_params - len(_FIXED_TYPES):
            raise TypeError(f"row seq {seq}: {len(values)} values, the statement has other columns")
        try:
            pieces = [
                struct.pack("<Q", seq),
                lenenc(self.stamp(measured_at).encode()),
                struct.pack("<b", clock_ok),
            ]
        except struct.error as exc:
            raise TypeError(f"row seq {seq}: {exc}") from None
        nulls = 0
        if error is None:
            nulls |= 1 << _ERROR_PARAM
        else:
            if len(error) > self.error_max:
                error = error[: self.error_max - 1] + "…"
            pieces.append(lenenc(error.encode()))
        for i, value in enumerate(values, start=len(_FIXED_TYPES)):
            if value is None:
                nulls |= 1 << i
            elif isinstance(value, (float, int)) and not isinstance(value, bool):
                pieces.append(struct.pack("<d", value))
            else:
                raise TypeError(f"value {value!r} of seq {seq} is not a number")
        return b"".join(pieces), nulls


def chunk_sizes(n: int, chunk: int = CHUNK_ROWS) -> list[int]:
    """`n` rows as executions of at most `chunk` rows, the rest in powers of two
    (so the statements a connection prepares are few: 128, 64, 32, ... 1)."""
    sizes = [chunk] * (n // chunk)
    rest = n % chunk
    bit = 1 << max(rest.bit_length() - 1, 0)
    while rest:
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes
