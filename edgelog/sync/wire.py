"""The sink's fast path: binary prepared statements, on PyMySQL's packet layer.

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
COM_STMT_EXECUTE, COM_STMT_CLOSE) are built here on PyMySQL's *private* packet
layer (``_execute_command``, ``_read_packet``, ``_next_seq_id``), which PyMySQL
1.1 and 1.2 share. A dependency's private names are a debt, so:

* `fast_path_problem()` checks at start that each is there with the expected
  signature; without them the sink uses its plain path (PyMySQL's public
  ``executemany``) from the start;
* the sink treats any other failure of this path (`FastPathError`, a changed
  signature, an attribute gone) as the library's fault, not the batch's: it drops
  the connection (nothing committed), writes the batch by the plain path, and
  stays on it (see `MariaDBSink`).

The bench's ``LOAD DATA LOCAL`` reference lives in bench/loaddata.py; the
product's connections refuse any LOCAL INFILE request (`connect.py`).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

import pymysql
from pymysql.connections import Connection
from pymysql.constants import COMMAND, CR, FIELD_TYPE
from pymysql.protocol import MysqlPacket

from .connect import private_names_problem, pymysql_version

#: Rows per execution of the prepared INSERT (MariaDB's limit is 65535 parameters a
#: statement; 128 rows of the pac3100 profile are 3,712). 32 to 256 rows per execution
#: ingest alike, 512 is slower (docs/performance.md).
CHUNK_ROWS = 128


class FastPathError(pymysql.err.OperationalError):
    """The server's answer is not what the fast path's protocol expects (out of sync)."""


#: What the fast path calls beyond PyMySQL's public face: (owner, name, example arguments).
_NEEDS: list[tuple[type, str, tuple[Any, ...]]] = [
    (Connection, "_execute_command", (COMMAND.COM_STMT_PREPARE, b"")),
    (Connection, "_read_packet", ()),
    (MysqlPacket, "get_all_data", ()),
    (MysqlPacket, "is_ok_packet", ()),
]


def fast_path_problem() -> str | None:
    """Why the fast path cannot run with the installed PyMySQL (None: it can)."""
    return private_names_problem(_NEEDS)


def check_connection(conn: Connection) -> None:
    """The per-connection state the fast path sets; raises AttributeError if it is gone."""
    if not isinstance(getattr(conn, "_next_seq_id", None), int):
        raise AttributeError(f"PyMySQL {pymysql_version()}: Connection._next_seq_id is missing")


# -- prepared statements -------------------------------------------------------------------


def prepare(conn: Connection, sql: str) -> tuple[int, int]:
    """COM_STMT_PREPARE: (statement id, number of parameters)."""
    conn._execute_command(COMMAND.COM_STMT_PREPARE, sql)
    first = conn._read_packet()  # raises the server's error (e.g. unknown column)
    data = first.get_all_data()
    if data[:1] != b"\x00":
        raise FastPathError(CR.CR_COMMANDS_OUT_OF_SYNC, "unexpected answer to PREPARE")
    stmt_id, n_columns, n_params = struct.unpack_from("<IHH", data, 1)
    # Parameter, then column definitions, each list followed by an EOF packet
    # (PyMySQL does not ask for CLIENT_DEPRECATE_EOF).
    for count in (n_params, n_columns):
        if count:
            for _ in range(count + 1):
                conn._read_packet()
    return stmt_id, n_params


def close_statement(conn: Connection, stmt_id: int) -> None:
    """COM_STMT_CLOSE (the server does not answer)."""
    conn._execute_command(COMMAND.COM_STMT_CLOSE, struct.pack("<I", stmt_id))


def send_execute(conn: Connection, body: bytes) -> None:
    """COM_STMT_EXECUTE without waiting for the answer (see `read_ok`)."""
    conn._execute_command(COMMAND.COM_STMT_EXECUTE, body)


def read_ok(conn: Connection) -> None:
    """Read the answer to one pipelined command: an OK, else raise (the server's error,
    or anything else, a LOCAL INFILE request included, as out of sync)."""
    conn._next_seq_id = 1  # every answer to a command starts at sequence 1
    packet = conn._read_packet()  # raises MySQLError for an error packet
    if not packet.is_ok_packet():
        raise FastPathError(CR.CR_COMMANDS_OUT_OF_SYNC, "unexpected answer to EXECUTE")


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
