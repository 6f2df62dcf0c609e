"""`edgelog export`: the readings between two instants, to CSV or Parquet, streamed.

Sources
-------
* MariaDB (default): the `[mariadb] table`, read through an *unbuffered*
  server-side cursor (PyMySQL's SSCursor): rows come off the socket as they are
  written out, a chunk at a time, so a year of 1 Hz readings never sits in
  memory. Register columns and their units come from the table itself
  (units are the columns' comments).
* the local buffer (`--source buffer`), for use on site while MariaDB is
  unreachable: read in chunks by `seq` (the rowid), which is the order the
  readings were taken in. Units come from the config.
* an aggregate table (`--every 1min` or `--every 15min`): the rows of
  `<table>_1min` or `<table>_15min` (sync/aggregates.py) whose period starts in the
  interval: period start, site, meter, the counts (readings, failed polls, clock
  unsynchronised), then per column `_avg`, `_min`, `_max` and `_cnt`, and the
  readings outside each frequency band. Rows as the logger last wrote them: the
  minutes of rows it has not sent yet are not there (see `sync-status`).

Times are UTC. An interval is half-open: `--from` included, `--to` excluded, so
consecutive exports (day by day) neither miss nor repeat a row.

Output
------
CSV: UTF-8, a header row naming each register column with its unit
(`tensao_l1_n [V]`), times as ISO-8601 UTC with milliseconds
(`2025-06-01T14:03:12.000Z`), NULL as an empty field, floats written exactly
(shortest round-trip form; a FLOAT column is read as ``CAST(col AS DOUBLE)``, the
float32 value exactly, where MariaDB's text protocol would give 6 digits). Parquet
(needs pyarrow, `pip install 'edgelog[parquet]'`): `measured_at` (`period_start`)
as timestamp[ms, UTC], each register a float64 column whose field metadata holds
its unit (counts of an aggregate table: int64). A file is written whole or not at all (`outfile.replacing`:
a random temporary name beside it, renamed when complete): an interrupted export
never leaves a truncated file under the real name, and a symlink planted at any
name is never written through.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import pymysql
import pymysql.cursors

from .buffer import Buffer, Span
from .clock import utc_iso, utc_text
from .config import Config, MariaDBConfig
from .errors import EdgelogError
from .outfile import replacing
from .profiles import RESERVED_COLUMNS
from .progress import Progress
from .sync.connect import connect, describe, where
from .sync.mariadb import quote
from .sync.nodes import NodeNotReady, nodes_of, probe
from .sync.schema import select_expr

#: Columns every exported row starts with, before the register columns.
FIXED = ("measured_at", "site", "meter", "clock_ok", "error")
#: Columns every exported row of an aggregate table (`--every`) starts with.
PERIOD_FIXED = ("period_start", "site", "meter")
#: --every: the aggregate tables the logger keeps (sync/aggregates.py)
EVERY = ("1min", "15min")
CHUNK_ROWS = 5000

Row = tuple[Any, ...]  # (measured_at: float, site, meter, clock_ok: bool, error, *values)


def parse_instant(text: str, what: str = "time") -> float:
    """ISO-8601 date or date-time -> unix seconds; without a zone it is UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise EdgelogError(
            f"{what}: {text!r} is not an ISO-8601 date or time (e.g. 2025-06-01 or 2025-06-01T12:00:00-03:00)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


@dataclass(frozen=True)
class Query:
    """Which rows: [start, end) in unix seconds, for a site, one meter or all."""

    start: float
    end: float
    site: str
    meter: str | None = None
    gaps: bool = True  # include failed polls (rows with `error` set)
    every: str | None = None  # "1min" or "15min": the rows of that aggregate table instead

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise EdgelogError(f"the interval is empty: --to ({utc_iso(self.end)}) is not after --from")
        if self.every is not None and self.every not in EVERY:
            raise EdgelogError(f"--every: {self.every!r} is not one of {', '.join(EVERY)}")
        if self.every is not None and not self.gaps:
            raise EdgelogError("--no-gaps: not with --every (an aggregate row counts its failed polls)")


class Source(Protocol):
    label: str
    columns: list[str]  # register columns
    units: dict[str, str]

    def count(self) -> int: ...

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[list[Row]]: ...

    def close(self) -> None: ...


# -- the local buffer ------------------------------------------------------------------


class BufferSource:
    """Rows of the local SQLite buffer, in the order they were taken, a chunk at a time."""

    def __init__(self, path: Path, query: Query, units: dict[str, str], site: str):
        if query.site != site:
            raise EdgelogError(f"the buffer holds the readings of site {site!r} only, not {query.site!r}")
        self.query = query
        self.site = site
        self.label = f"buffer {path}"
        self.short_label = f"buffer {Path(path).name}"
        self.buffer = Buffer(path, create=False)
        self.columns = list(self.buffer.value_columns)
        self.units = {c: units.get(c, "") for c in self.columns}
        self.span = Span(query.start, query.end, query.meter, query.gaps)

    def count(self) -> int:
        return self.buffer.count_between(self.span)

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[list[Row]]:
        for rows in self.buffer.between(self.span, size):
            out = [(at, self.site, meter, ok, err, *vals) for at, meter, ok, err, *vals in rows]
            del rows  # hold one chunk at a time, not two
            yield out
            del out

    def close(self) -> None:
        self.buffer.close()


def _filters(query: Query, sql: str, params: list[Any], mark: str) -> tuple[str, list[Any]]:
    """`sql` (the time range) plus the query's meter and gap filters; `mark` is the
    driver's placeholder."""
    if query.meter is not None:
        sql += f" AND meter = {mark}"
        params.append(query.meter)
    if not query.gaps:
        sql += " AND error IS NULL"
    return sql, params


# -- MariaDB ---------------------------------------------------------------------------


class MariaDBSource:
    """Rows of the MariaDB table through an unbuffered (server-side) cursor."""

    def __init__(self, config: MariaDBConfig, query: Query):
        self.config = config
        self.query = query
        self.label = f"MariaDB {where(config)}"
        #: what a report names as its source: short, and no socket path or user
        self.short_label = f"MariaDB {config.database}.{config.table}"
        self.conn = self._connect()
        self.units, self.types = self._register_columns()
        self.columns = list(self.units)

    def _connect(self) -> pymysql.connections.Connection:
        """The sink's guarded connection (timeouts, TLS, no LOCAL INFILE) to the first node of
        `hosts` that logs in and is ready (a Galera node: Synced, its reads waiting for the
        cluster); each node tried once, in order. An error names every node's failure."""
        failures: list[tuple[str, str]] = []  # (node, why)
        for node in nodes_of(self.config):
            conn = None
            try:
                conn = connect(node.config(self.config))
                probe(conn)
                return conn
            except pymysql.MySQLError as exc:
                failures.append((node.label, describe(exc)))
            except (OSError, ValueError, NodeNotReady) as exc:
                failures.append((node.label, str(exc)))
            if conn is not None:
                conn.close()
        if len(failures) == 1:
            raise EdgelogError(f"{self.label}: {failures[0][1]}")
        shown = "; ".join(f"{node}: {why}" for node, why in failures)
        raise EdgelogError(f"MariaDB {self.config.database}: no node of hosts answered: {shown}")

    def _run(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except pymysql.MySQLError as exc:
            raise EdgelogError(f"{self.label}: {describe(exc)}") from None

    #: the table's columns that are not values
    own: frozenset[str] = RESERVED_COLUMNS

    @property
    def table(self) -> str:
        return self.config.table

    def _missing(self) -> str:
        return f"no table {self.table!r} (has anything been synced yet?)"

    def _register_columns(self) -> tuple[dict[str, str], dict[str, str]]:
        """(name -> unit, name -> column type) of the value columns."""
        rows = self._run(
            "SELECT column_name, column_comment, column_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (self.config.database, self.table),
        )
        if not rows:
            raise EdgelogError(f"{self.label}: {self._missing()}")
        mine = [row for row in rows if row[0] not in self.own]
        return {name: unit for name, unit, _ in mine}, {name: ctype for name, _, ctype in mine}

    def _where(self) -> tuple[str, list[Any]]:
        q = self.query
        return _filters(
            q,
            "site = %s AND measured_at >= %s AND measured_at < %s",
            [q.site, utc_text(q.start), utc_text(q.end)],
            "%s",
        )

    def count(self) -> int:
        where, params = self._where()
        ((n,),) = self._run(f"SELECT COUNT(*) FROM {quote(self.table)} WHERE {where}", params)
        return int(n)

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[list[Row]]:
        where, params = self._where()
        # FLOAT as DOUBLE: the text protocol would print 6 digits (sync/schema.py)
        values = "".join(f", {select_expr(quote(c), self.types[c])}" for c in self.columns)
        # The session runs in UTC (init_command), so UNIX_TIMESTAMP reads DATETIME as UTC.
        order = "measured_at, seq" if self.query.meter is not None else "measured_at, meter, seq"
        sql = (
            f"SELECT UNIX_TIMESTAMP(measured_at), site, meter, clock_ok, error{values} "
            f"FROM {quote(self.config.table)} WHERE {where} ORDER BY {order}"
        )
        yield from self._stream(
            sql,
            params,
            size,
            lambda rows: [
                (float(at), site, meter, bool(ok), err, *vals) for at, site, meter, ok, err, *vals in rows
            ],
        )

    def _stream(
        self, sql: str, params: Sequence[Any], size: int, convert: Callable[[list[Any]], list[Row]]
    ) -> Iterator[list[Row]]:
        """`sql`'s rows through an unbuffered cursor, `size` at a time, each chunk converted."""
        cur = self.conn.cursor(pymysql.cursors.SSCursor)
        try:
            cur.execute(sql, params)
            while rows := cur.fetchmany(size):
                out = convert(rows)
                del rows  # hold one chunk at a time, not two
                yield out
                del out
        except pymysql.MySQLError as exc:
            raise EdgelogError(f"{self.label}: {describe(exc)}") from None
        finally:
            with contextlib.suppress(pymysql.MySQLError):
                cur.close()  # an unbuffered cursor reads what is left of the result first

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection: nothing to do
            self.conn.close()


class AggregateSource(MariaDBSource):
    """Rows of an aggregate table (`<table>_1min`, `<table>_15min`) whose period starts in
    [start, end): (period start, site, meter, counts and statistics...)."""

    own = frozenset(PERIOD_FIXED)

    def __init__(self, config: MariaDBConfig, query: Query):
        assert query.every is not None
        self.aggregate = f"{config.table}_{query.every}"
        super().__init__(config, query)
        self.short_label = f"MariaDB {config.database}.{self.aggregate}"
        #: columns holding counts (exported as integers)
        self.integers = {c for c, t in self.types.items() if "int" in t}

    @property
    def table(self) -> str:
        return self.aggregate

    def _missing(self) -> str:
        return (
            f"no table {self.aggregate!r}: the logger keeps it while [mariadb] aggregates = true "
            "(the default), from its first sync on"
        )

    def _where(self) -> tuple[str, list[Any]]:
        q = self.query
        sql = "site = %s AND period_start >= %s AND period_start < %s"
        return _filters(q, sql, [q.site, utc_text(q.start), utc_text(q.end)], "%s")

    def chunks(self, size: int = CHUNK_ROWS) -> Iterator[list[Row]]:
        where, params = self._where()
        values = "".join(f", {select_expr(quote(c), self.types[c])}" for c in self.columns)
        sql = (
            f"SELECT UNIX_TIMESTAMP(period_start), site, meter{values} FROM {quote(self.aggregate)} "
            f"WHERE {where} ORDER BY period_start, meter"
        )
        yield from self._stream(sql, params, size, lambda rows: [(float(at), *rest) for at, *rest in rows])


def open_source(cfg: Config, query: Query, source: str) -> Source:
    if query.every is not None:
        if source != "mariadb":
            raise EdgelogError("export --every: the aggregate tables are in MariaDB, not in the buffer")
        return AggregateSource(cfg.mariadb, query)
    if source == "buffer":
        return BufferSource(cfg.buffer.path, query, cfg.columns(), cfg.site)
    if source == "mariadb":
        return MariaDBSource(cfg.mariadb, query)
    raise EdgelogError(f"unknown source {source!r} (mariadb or buffer)")


# -- writers ---------------------------------------------------------------------------


def header(columns: Sequence[str], units: dict[str, str], fixed: Sequence[str] = FIXED) -> list[str]:
    return [f"{fixed[0]} [UTC]", *fixed[1:]] + [f"{c} [{units[c]}]" if units.get(c) else c for c in columns]


class CsvWriter:
    def __init__(
        self, stream: TextIO, columns: Sequence[str], units: dict[str, str], fixed: Sequence[str] = FIXED
    ):
        self.out = csv.writer(stream, lineterminator="\n")
        self.out.writerow(header(columns, units, fixed))
        self.periods = tuple(fixed) == PERIOD_FIXED

    def write(self, rows: list[Row]) -> None:
        if self.periods:
            self.out.writerows((utc_iso(at), *rest) for at, *rest in rows)
            return
        self.out.writerows(
            (utc_iso(at), site, meter, int(ok), err, *vals) for at, site, meter, ok, err, *vals in rows
        )

    def close(self) -> None:
        pass


class ParquetWriter:
    def __init__(
        self,
        path: Any,
        columns: Sequence[str],
        units: dict[str, str],
        fixed: Sequence[str] = FIXED,
        integers: Collection[str] = (),
    ):
        pa, pq = require_pyarrow()
        self.pa = pa
        self.columns = list(columns)
        kinds = {"site": pa.string(), "meter": pa.string(), "clock_ok": pa.bool_(), "error": pa.string()}
        self.fixed = [pa.timestamp("ms", tz="UTC"), *(kinds[c] for c in fixed[1:])]
        self.types = [pa.int64() if c in integers else pa.float64() for c in self.columns]
        fields = [pa.field(fixed[0], self.fixed[0], nullable=False)]
        fields += [pa.field(c, t) for c, t in zip(fixed[1:], self.fixed[1:], strict=True)]
        fields += [
            pa.field(c, t, metadata={"unit": units.get(c, "")})
            for c, t in zip(self.columns, self.types, strict=True)
        ]
        self.schema = pa.schema(fields, metadata={"source": "edgelog export"})
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")  # a path or a file

    def write(self, rows: list[Row]) -> None:
        pa = self.pa
        cols = list(zip(*rows, strict=True))
        arrays = [pa.array([round(t * 1000) for t in cols[0]], type=self.fixed[0])]
        arrays += [pa.array(c, t) for c, t in zip(cols[1:], self.fixed[1:] + self.types, strict=True)]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def _integers(src: Source) -> Collection[str]:
    return src.integers if isinstance(src, AggregateSource) else ()


def require_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise EdgelogError(
            "export: Parquet needs pyarrow, which is not installed: pip install 'edgelog[parquet]'"
        ) from None
    return pa, pq


# -- the command -----------------------------------------------------------------------


@dataclass
class Result:
    rows: int
    out: str
    source: str


def run(
    cfg: Config,
    query: Query,
    out: str = "-",
    fmt: str | None = None,
    source: str = "mariadb",
    stdout: TextIO | None = None,
    progress_stream: TextIO | None = None,
    progress_every_s: float = 10.0,
    chunk_rows: int = CHUNK_ROWS,
) -> Result:
    """Export the rows of `query` from `source` to `out` ('-' for stdout, CSV only)."""
    fmt = fmt or ("parquet" if out.endswith((".parquet", ".pq")) else "csv")
    if fmt == "parquet":
        if out == "-":
            raise EdgelogError("export: Parquet goes to a file: say --out FILE.parquet")
        require_pyarrow()  # before any work
    src = open_source(cfg, query, source)

    def copy(writer: CsvWriter | ParquetWriter) -> int:
        n = 0
        with Progress("export", src.count(), stream=progress_stream, every_s=progress_every_s) as progress:
            for chunk in src.chunks(chunk_rows):
                writer.write(chunk)
                n += len(chunk)
                progress.update(n)
                del chunk  # not alive while the next one is fetched
        writer.close()
        return n

    fixed = PERIOD_FIXED if query.every else FIXED
    try:
        if out == "-":
            n = copy(CsvWriter(stdout or sys.stdout, src.columns, src.units, fixed))
        else:
            with replacing(out, binary=fmt == "parquet") as stream:
                n = copy(
                    ParquetWriter(stream, src.columns, src.units, fixed, _integers(src))
                    if fmt == "parquet"
                    else CsvWriter(stream, src.columns, src.units, fixed)
                )
    except OSError as exc:
        raise EdgelogError(f"export: cannot write {out}: {exc.strerror or exc}") from None
    finally:
        src.close()
    return Result(rows=n, out=out, source=src.label)
