"""Aggregate tables the logger keeps in MariaDB: `<table>_1min` and `<table>_15min`.

One row per site, meter and period (a minute, a quarter-hour; `period_start` in
UTC): `samples` (readings, failed polls included), `failed` (failed polls: the
gaps), `clock_unsynced` (readings taken while the clock was not synchronised;
they are in every figure, and counted here), then for each register column and
each series of `series.SERIES`: `<name>_avg`, `<name>_min`, `<name>_max` and
`<name>_cnt` over the readings that have a value, and per frequency band of
`series.BANDS` the readings outside it. min and max have the type of the raw
column (FLOAT for a float32 register); averages are DOUBLE.

When: after rows are committed. `note(rows)` records, before a batch is written,
which (meter, minute) buckets it touches; `flush()`, at the end of each drain
round of the sync worker (not after each batch), recomputes them. So a backlog of
days is aggregated once, when it has been sent, one hour of readings per
statement. Each statement is server-side and idempotent: the minutes are
computed again from every raw row of the minute (``INSERT ... SELECT ... GROUP BY
... ON DUPLICATE KEY UPDATE``: the logger's user has no DELETE), so rows that
arrive late (a backlog sent days later, readings with an earlier time after a
clock fix, quarantined rows sent again) correct their minute; the quarter-hours
are then computed from the minutes (averages weighted by counts).

What is pending survives a crash: the buckets are recorded in the buffer (meta
key `aggregates_pending`) before the batch is written, with a margin of two hours
past them, so the record is rewritten every few batches of a drain and every two
hours live, not at every sync round (the SD card); the next process recomputes
what it holds (already summarised minutes in the margin cost a little, no harm).
A failure (MariaDB down, no CREATE privilege) never stops the sync: it is
logged as an episode (`episodes.Episode`: when it starts, when its error changes,
at the 10th, 100th, every 1000th round), recorded in the buffer with the minutes
pending (meta key `aggregates_failure`, shown by sync-status and doctor, removed
once a round updates them), the buckets stay pending, the next round tries again.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..clock import utc_text
from ..episodes import Episode
from ..errors import EdgelogError, SchemaMismatch
from ..profiles import RESERVED_COLUMNS
from . import series as ser
from .mariadb import quote
from .schema import KNOWN_TYPES, SAFE_TYPE, live_columns, normalize

log = logging.getLogger(__name__)

#: (table suffix, minutes per period)
PERIODS = (("1min", 1), ("15min", 15))
#: DATETIME's first day: minute numbers counted from it are never negative (no floor trouble).
ANCHOR = "'1000-01-01 00:00:00'"
#: Each summarised series' columns: <name>_avg, _min, _max, _cnt.
STATS = ("avg", "min", "max", "cnt")
COUNTS = ("samples", "failed", "clock_unsynced")
#: Longest register name that has aggregate columns (a MariaDB identifier has 64 characters).
NAME_MAX = 64 - len("_avg")
#: Minutes recomputed per transaction (one hour: 3,600 raw rows at 1 Hz).
CHUNK_MINUTES = 60
#: Buckets less than this many minutes apart are recomputed as one range.
MERGE_GAP = 15
#: The record in the buffer reaches this far past the buckets noted, so that a drain
#: rewrites it only every few batches.
SAVE_MARGIN = 120
MAX_RANGES = 64  # per meter; beyond, the closest ranges merge
META_KEY = "aggregates_pending"
#: Buffer meta key of the aggregates' failure (`Failure`), for sync-status and doctor;
#: removed once a round updates them.
FAILURE_KEY = "aggregates_failure"
#: A derived table with a LIMIT is materialised, not merged into the query around it: each
#: value it names is computed once per reading, not again at each use further out.
MATERIALISED = " LIMIT 18446744073709551615"


def table_name(table: str, suffix: str) -> str:
    return f"{table}_{suffix}"


# -- the layout -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The aggregate tables of a readings table with these register columns (name -> SQL type)."""

    table: str
    registers: dict[str, str]  # name -> type of min/max (the raw column's)
    units: dict[str, str]
    series: tuple[ser.Series, ...]
    bands: tuple[ser.Band, ...]

    @classmethod
    def of(cls, table: str, columns: Mapping[str, tuple[str, str]]) -> Layout:
        """From the raw table's register columns: name -> (type, unit)."""
        registers = {
            name: t if (t := normalize(ctype)) in KNOWN_TYPES else SAFE_TYPE
            for name, (ctype, _unit) in columns.items()
            if len(name) <= NAME_MAX
        }
        series, bands = ser.available(registers)
        units = {name: unit for name, (_t, unit) in columns.items()} | {s.name: s.unit for s in series}
        return cls(table, registers, units, tuple(series), tuple(bands))

    @property
    def names(self) -> list[str]:
        """Every summarised series: the register columns, then the derived ones."""
        return [*self.registers, *(s.name for s in self.series)]

    def columns(self) -> dict[str, str]:
        """The aggregate table's columns after the key: name -> SQL definition."""
        from .mariadb import comment

        out = {c: "INT UNSIGNED NOT NULL DEFAULT 0 COMMENT ''" for c in COUNTS}
        for name in self.names:
            unit = comment(self.units.get(name, ""))
            minmax = self.registers.get(name, "DOUBLE")
            kinds = (
                f"DOUBLE NULL COMMENT {unit}",
                f"{minmax} NULL COMMENT {unit}",
                f"{minmax} NULL COMMENT {unit}",
            )
            out |= {f"{name}_{stat}": kind for stat, kind in zip(STATS, kinds, strict=False)}
            out[f"{name}_cnt"] = "INT UNSIGNED NOT NULL DEFAULT 0 COMMENT ''"
        for band in self.bands:
            out[band.name] = "INT UNSIGNED NOT NULL DEFAULT 0 COMMENT ''"
        return out

    def create_sql(self, suffix: str) -> str:
        lines = [
            "`site` VARCHAR(64) NOT NULL COMMENT 'logger that took the readings'",
            "`meter` VARCHAR(64) NOT NULL COMMENT 'meter name in edgelog.toml'",
            "`period_start` DATETIME NOT NULL COMMENT 'UTC'",
            *(f"{quote(name)} {definition}" for name, definition in self.columns().items()),
            "PRIMARY KEY (`site`, `meter`, `period_start`)",
        ]
        body = ",\n  ".join(lines)
        return (
            f"CREATE TABLE IF NOT EXISTS {quote(table_name(self.table, suffix))} (\n  {body}\n)"
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
        )

    def _upsert(self, suffix: str, select: str) -> str:
        names = ["site", "meter", "period_start", *self.columns()]
        updates = ", ".join(f"{quote(c)} = VALUES({quote(c)})" for c in names[3:])
        return (
            f"INSERT INTO {quote(table_name(self.table, suffix))} ({', '.join(map(quote, names))})\n"
            f"{select}\nON DUPLICATE KEY UPDATE {updates}"
        )

    def minute_sql(self) -> str:
        """Recompute the minutes [%s, %s) of (site %s, meter %s) from the raw rows.
        Parameters: site, meter, first minute, end (DATETIME text)."""
        # a failed poll's values are NULL (the sink writes them so): no blanking needed
        inner = (
            f"SELECT TIMESTAMPDIFF(MINUTE, {ANCHOR}, `measured_at`) AS `_m`, `error`, `clock_ok`, "
            + ", ".join(quote(c) for c in self.registers)
            + f" FROM {quote(self.table)}"
            " WHERE `site` = %s AND `meter` = %s AND `measured_at` >= %s AND `measured_at` < %s"
        )
        for k, level in enumerate(ser.levels(self.series)):
            exprs = ", ".join(f"{expr} AS {quote(alias)}" for alias, expr in level)
            inner = f"SELECT r{k}.*, {exprs} FROM ({inner}{MATERIALISED if k else ''}) AS r{k}"
        inner += MATERIALISED
        stats = []
        for name in self.names:
            c = f"r.{quote(name)}"
            stats += [f"AVG({c})", f"MIN({c})", f"MAX({c})", f"COUNT({c})"]
        bands = [f"COALESCE(SUM({b.condition('r.`frequencia`')}), 0)" for b in self.bands]
        select = (
            f"SELECT r.`site`, r.`meter`, TIMESTAMPADD(MINUTE, r.`_m`, {ANCHOR}), COUNT(*), "
            "SUM(r.`error` IS NOT NULL), SUM(r.`clock_ok` = 0), "
            + ", ".join(stats + bands)
            + f" FROM (SELECT %s AS `site`, %s AS `meter`, x.* FROM ({inner}) AS x) AS r"
            " GROUP BY r.`_m` ORDER BY NULL"  # no sort of the groups: the upsert needs none
        )
        return self._upsert("1min", select)

    def quarter_sql(self) -> str:
        """Recompute the quarter-hours [%s, %s) of (site, meter) from the minutes.
        Parameters: site, meter, first quarter-hour, end (DATETIME text)."""
        stats = []
        for name in self.names:
            a, n = quote(f"{name}_avg"), quote(f"{name}_cnt")
            stats += [
                f"SUM({a} * {n}) / NULLIF(SUM({n}), 0)",
                f"MIN({quote(f'{name}_min')})",
                f"MAX({quote(f'{name}_max')})",
                f"SUM({n})",
            ]
        sums = [f"SUM({quote(c)})" for c in COUNTS] + [f"SUM({quote(b.name)})" for b in self.bands]
        quarter = f"TIMESTAMPDIFF(MINUTE, {ANCHOR}, `period_start`) DIV 15"
        select = (
            f"SELECT `site`, `meter`, TIMESTAMPADD(MINUTE, {quarter} * 15, {ANCHOR}) AS `_q`, "
            + ", ".join(sums[: len(COUNTS)] + stats + sums[len(COUNTS) :])
            + f" FROM {quote(table_name(self.table, '1min'))}"
            " WHERE `site` = %s AND `meter` = %s AND `period_start` >= %s AND `period_start` < %s"
            " GROUP BY `site`, `meter`, `_q` ORDER BY NULL"
        )
        return self._upsert("15min", select)


def schema_sql(table: str, types: Mapping[str, str], units: Mapping[str, str]) -> list[str]:
    """CREATE TABLE statements of the aggregate tables for a readings table whose register
    columns have these types and units (what `edgelog schema` prints): the first in full,
    the others LIKE it (they have the same columns)."""
    layout = Layout.of(table, {name: (types.get(name, SAFE_TYPE), unit) for name, unit in units.items()})
    (first, _), *others = PERIODS
    like = quote(table_name(table, first))
    return [layout.create_sql(first)] + [
        f"CREATE TABLE IF NOT EXISTS {quote(table_name(table, suffix))} LIKE {like}" for suffix, _ in others
    ]


def ensure_tables(sink: Any) -> Layout:
    """Create the aggregate tables of the sink's readings table, or add the columns they lack
    (for the register columns the readings table has now). Returns their layout."""
    database, table = sink.config.database, sink.config.table

    def work(cur: Any) -> Layout:
        raw = live_columns(cur, database, table)
        if not raw:
            raise EdgelogError(f"no table {database}.{table} to summarise")
        layout = Layout.of(table, {n: v for n, v in raw.items() if n not in RESERVED_COLUMNS})
        for suffix, _ in PERIODS:
            name = table_name(table, suffix)
            have = live_columns(cur, database, name)
            missing = [f"ADD COLUMN {quote(c)} {d}" for c, d in layout.columns().items() if c not in have]
            if have and not missing:
                continue
            ddl = f"ALTER TABLE {quote(name)} " + ", ".join(missing) if have else layout.create_sql(suffix)
            if not sink.config.manage_schema:  # the DBA's to run
                raise SchemaMismatch(
                    f"table {database}.{name} {'lacks columns' if have else 'does not exist'} and [mariadb] "
                    "manage_schema = false: have the DBA run `edgelog schema`'s DDL for it"
                )
            log.info("%s %s.%s", "adding columns to" if have else "creating table", database, name)
            cur.execute(ddl)
        return layout

    return sink.transaction(work)


def missing_tables(sink: Any) -> list[str]:
    """The aggregate tables of the sink's readings table that MariaDB does not have."""
    database, table = sink.config.database, sink.config.table
    names = [table_name(table, suffix) for suffix, _ in PERIODS]
    return sink.transaction(lambda cur: [name for name in names if not live_columns(cur, database, name)])


# -- what is pending ------------------------------------------------------------------------


class Pending:
    """Minutes to recompute per meter: sorted, disjoint [lo, hi) ranges of unix minutes."""

    def __init__(self, ranges: Mapping[str, Iterable[Sequence[int]]] | None = None):
        self.ranges: dict[str, list[list[int]]] = {}
        for meter, spans in (ranges or {}).items():
            for lo, hi in spans:
                self.add_range(meter, int(lo), int(hi))

    def __bool__(self) -> bool:
        return any(self.ranges.values())

    def minutes(self) -> int:
        return sum(hi - lo for spans in self.ranges.values() for lo, hi in spans)

    def add_range(self, meter: str, lo: int, hi: int) -> None:
        spans = self.ranges.setdefault(meter, [])
        i = bisect.bisect_left(spans, [lo - MERGE_GAP])
        while i > 0 and spans[i - 1][1] + MERGE_GAP >= lo:
            i -= 1
        j = i
        while j < len(spans) and spans[j][0] <= hi + MERGE_GAP:
            lo, hi = min(lo, spans[j][0]), max(hi, spans[j][1])
            j += 1
        spans[i:j] = [[lo, hi]]
        while len(spans) > MAX_RANGES:  # merge the two closest
            k = min(range(len(spans) - 1), key=lambda k: spans[k + 1][0] - spans[k][1])
            spans[k : k + 2] = [[spans[k][0], spans[k + 1][1]]]

    def covers(self, meter: str, lo: int, hi: int) -> bool:
        spans = self.ranges.get(meter, [])
        i = bisect.bisect_right(spans, [lo, float("inf")]) - 1
        return i >= 0 and spans[i][0] <= lo and hi <= spans[i][1]

    def discard(self, meter: str, lo: int, hi: int) -> None:
        """Take [lo, hi) out (done)."""
        out = []
        for a, b in self.ranges.get(meter, []):
            if b <= lo or a >= hi:
                out.append([a, b])
                continue
            if a < lo:
                out.append([a, lo])
            if hi < b:
                out.append([hi, b])
        self.ranges[meter] = out

    def chunks(self, minutes: int = CHUNK_MINUTES) -> list[tuple[str, int, int]]:
        """(meter, lo, hi) pieces of at most `minutes`, cut on quarter-hours."""
        out = []
        for meter, spans in self.ranges.items():
            for lo, hi in spans:
                start = lo
                while start < hi:
                    end = min(hi, (start // minutes + 1) * minutes)
                    out.append((meter, start, end))
                    start = end
        return out

    def to_json(self) -> str:
        return json.dumps({m: s for m, s in self.ranges.items() if s}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> Pending:
        if not text:
            return cls()
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return cls(data)


def runs(minutes: Iterable[int]) -> list[tuple[int, int]]:
    """Distinct minutes -> [lo, hi) runs of consecutive ones."""
    out: list[tuple[int, int]] = []
    for m in sorted(set(minutes)):
        if out and out[-1][1] == m:
            out[-1] = (out[-1][0], m + 1)
        else:
            out.append((m, m + 1))
    return out


# -- the worker's hooks ---------------------------------------------------------------------


class Failure(NamedTuple):
    """Why the aggregate tables are behind, as the buffer keeps it: written when the
    failures start, when their error changes, and at the 10th, 100th, every 1000th
    failed round (never more often: SD cards wear out)."""

    error: str
    since: float  # when the failed rounds began (unix seconds)
    at: float  # when this record was written
    pending_minutes: int  # minutes of readings waiting to be summarised, then
    failed_rounds: int

    def to_json(self) -> str:
        return json.dumps(self._asdict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> Failure | None:
        """The record back; None if there is none (or it cannot be read)."""
        try:
            d = json.loads(text) if text else None
            return cls(
                error=str(d["error"]),
                since=float(d["since"]),
                at=float(d["at"]),
                pending_minutes=int(d["pending_minutes"]),
                failed_rounds=int(d["failed_rounds"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


class NoAggregates:
    """What the worker calls when `[mariadb] aggregates = false`: nothing."""

    def note(self, rows: Sequence[Sequence[Any]]) -> None:
        pass

    def flush(self) -> None:
        pass


class Aggregates(NoAggregates):
    """Keeps the aggregate tables of the sink's readings table for this site."""

    def __init__(self, sink: Any, buffer: Any):
        self.sink = sink  # a MariaDBSink: config, site, transaction(work), conn
        self.buffer = buffer
        self.table = sink.config.table
        self.layout: Layout | None = None
        self._ensured_on: Any = None  # the sink connection the tables were checked on
        self._sql = ("", "")  # the layout's statements: minutes, quarter-hours
        #: failed rounds in a row, and the error of the last one (logged when it changes)
        self.failing = Episode()
        self._failing: str | None = None
        self._since = 0.0
        self._recorded = bool(buffer.get_meta(FAILURE_KEY))
        self.saved = self._load()
        self.pending = Pending(self.saved.ranges)

    def _load(self) -> Pending:
        try:
            return Pending.from_json(self.buffer.get_meta(META_KEY))
        except (ValueError, TypeError) as exc:
            log.warning("aggregates: ignoring an unreadable %s record in the buffer: %s", META_KEY, exc)
            return Pending()

    def note(self, rows: Sequence[Sequence[Any]]) -> None:
        """Before `rows` (buffer rows) are written: record the minutes they touch. The
        buffer's record is rewritten only when it does not cover them yet (it reaches
        SAVE_MARGIN minutes past what is pending: one write every few batches of a
        drain, one every two hours live)."""
        per_meter: dict[str, set[int]] = {}
        for row in rows:
            per_meter.setdefault(row[1], set()).add(round(row[2] * 1000) // 60_000)
        covered = True
        for meter, minutes in per_meter.items():
            for lo, hi in runs(minutes):
                self.pending.add_range(meter, lo, hi)
                covered = covered and self.saved.covers(meter, lo, hi)
        if not covered:
            self._save()

    def _save(self) -> None:
        """Record what is pending, with the margin, in the buffer."""
        self.saved = Pending(
            {m: [[lo, hi + SAVE_MARGIN] for lo, hi in s] for m, s in self.pending.ranges.items()}
        )
        try:
            self.buffer.set_meta(META_KEY, self.saved.to_json() if self.saved else None)
        except Exception as exc:  # the sync goes on; only a crash would lose the record
            log.warning("aggregates: cannot record the pending minutes in the buffer: %s", exc)

    def flush(self) -> None:
        """Recompute every pending bucket; on failure log it, record it for sync-status and
        keep them pending."""
        if not self.pending:
            return
        try:
            if self.layout is None or self.sink.conn is None or self.sink.conn is not self._ensured_on:
                self.layout = ensure_tables(self.sink)
                self._sql = (self.layout.minute_sql(), self.layout.quarter_sql())
                self._ensured_on = self.sink.conn
            for meter, lo, hi in self.pending.chunks():
                self.sink.transaction(lambda cur, m=meter, a=lo, b=hi: self._recompute(cur, m, a, b))
                self.pending.discard(meter, lo, hi)
        except Exception as exc:
            self._failed(str(exc) or type(exc).__name__)
            return
        if failed := self.failing.end():
            log.info("aggregates: updated again after %d failed rounds", failed)
            self._failing = None
        if self._recorded:  # by this process or an earlier one
            self._record(None)
        if self.saved.minutes() > 2 * SAVE_MARGIN:  # after a backlog: the record holds it all
            self._save()

    def _failed(self, message: str) -> None:
        """A failed round, an episode's event: logged (and recorded for sync-status, with the
        minutes pending) when it starts, when its error changes, and at its 10th, 100th,
        every 1000th round; never a reason to stop the sync."""
        now = time.time()
        worth_a_line = self.failing.add(now=now)
        if not worth_a_line and message == self._failing:
            return
        if self.failing.count == 1:
            self._since = now
        if self.failing.count == 1 or message != self._failing:
            log.warning("aggregates: not updated (tried again next round): %s", message)
        else:
            log.warning("aggregates: still not updated after %d rounds: %s", self.failing.count, message)
        self._failing = message
        self._record(Failure(message, self._since, now, self.pending.minutes(), self.failing.count))

    def _record(self, failure: Failure | None) -> None:
        try:
            self.buffer.set_meta(FAILURE_KEY, failure.to_json() if failure else None)
        except Exception as exc:  # sync-status's view only
            log.warning("aggregates: cannot record their failure in the buffer: %s", exc)
        self._recorded = failure is not None

    def _recompute(self, cur: Any, meter: str, lo: int, hi: int) -> None:
        site = self.sink.site
        minutes, quarters = self._sql
        cur.execute(minutes, (site, meter, site, meter, _at(lo), _at(hi)))
        cur.execute(quarters, (site, meter, _at(lo // 15 * 15), _at(-(-hi // 15) * 15)))


def _at(minute: int) -> str:
    return utc_text(minute * 60)
