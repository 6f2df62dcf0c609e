"""The report's input from the per-minute table `<table>_1min`, raw rows only where needed.

A week at 1 Hz is 600,000 raw rows, a month 2.6 million; the logger's per-minute
table (sync/aggregates.py) holds, per minute, what a bin of `report.data` holds:
sum (avg x count), count, minimum and maximum of every register and every derived
series, the readings outside each frequency band, the rows and failed polls. So a
week or a month is read from it, and the raw rows are read only for:

* the period's first rows (up to `SEED_ROWS`): the sampling interval is the median
  spacing of successive readings, and the event detector's spacing too, exactly as
  the raw path computes them;
* minutes whose aggregate row is missing or stale (its `samples` differ from the raw
  rows of the minute: the logger has not summarised them yet, or rows came late);
* minutes that may hold an interrupted reading (a phase-neutral voltage minimum below
  `limits.INTERRUPTION_PU` of nominal): the report leaves an interrupted reading out
  of every series, the table does not;
* minutes that may hold a sample of an event (`report.events`): a frequency outside
  59.5-60.5 Hz (`limits.FREQ_RECOVERY`, the widest band any event rule tests); an
  event needs runs of samples, not minutes. Between two such stretches separated
  by minutes with readings the detector's runs are closed, as those readings would.

Read so, every figure equals the raw path's up to rounding (a sum is avg x count):
tests/test_report_minutes.py compares the two on a simulated month-like week. The
raw path stays for a day (86,400 rows are read in a few seconds), for `--raw`, for
the buffer, and whenever the table lacks a column the report needs.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..clock import utc_text
from ..config import Config
from ..export import CHUNK_ROWS, MariaDBSource, Query
from ..sync import series as ser
from ..sync.aggregates import STATS, runs
from ..sync.mariadb import quote
from ..sync.schema import live_columns, select_expr
from . import limits
from .data import BIN_S, FREQ_FLAGS, Aggregator, MinuteBins, Period, _col
from .events import SPACING_N

log = logging.getLogger(__name__)

#: Raw rows read for the sampling interval (its spacings come in whole chunks of CHUNK_ROWS).
SEED_ROWS = 30_000
#: Minute ranges per raw read (an OR of index ranges).
RANGES_PER_QUERY = 500
#: The report's derived series -> the per-minute table's columns (sync/series.py).
DERIVED_COLUMNS = {
    "p_total": "potencia_ativa_total",
    "q_total": "potencia_reativa_total",
    "s_total": "potencia_aparente_total",
    "v_mean": "tensao_fn_media",
    "i_mean": "corrente_media",
    "i_dev": "corrente_desvio_max",
    "fd": "desequilibrio_tensao",
    "i1": "corrente_seq_positiva",
    "i2": "corrente_seq_negativa",
    "in_est": "corrente_neutro_estimada",
}
FLAG_COLUMNS = {name: band.name for (name, _, _), band in zip(FREQ_FLAGS, ser.BANDS, strict=True)}
VOLTS = [_col("tensao", k) for k in (1, 2, 3)]


@dataclass
class Loaded:
    agg: Aggregator
    label: str
    minutes_from_table: int
    raw_rows: int  # raw rows read (the first rows included)


class _Rows(MariaDBSource):
    """The raw rows of the query's meter in some minute ranges, read as the raw path reads
    them (the same SELECT, order and types), over the connection of `src`."""

    def __init__(self, src: MariaDBSource, ranges: list[tuple[int, int]]):
        self.__dict__.update(src.__dict__)  # its connection, query and columns
        self.ranges = ranges

    def _where(self) -> tuple[str, list[Any]]:
        where, params = super()._where()
        spans = " OR ".join(["(measured_at >= %s AND measured_at < %s)"] * len(self.ranges))
        return f"{where} AND ({spans})", params + [utc_text(m * BIN_S) for r in self.ranges for m in r]


def load(
    cfg: Config, period: Period, meter: str, progress: Callable[[int], None] | None = None
) -> Loaded | None:
    """The period's minute bins of `meter` from the per-minute table and the raw rows it
    cannot replace; None when the table cannot serve (missing, lacking a column, a
    period of few rows): then the caller reads the raw rows."""
    query = Query(period.start_ts, period.end_ts, cfg.site, meter, gaps=True)
    src = MariaDBSource(cfg.mariadb, query)
    try:
        return _load(cfg, src, period, progress or (lambda _n: None))
    finally:
        src.close()


def _load(cfg: Config, src: MariaDBSource, period: Period, progress: Callable[[int], None]) -> Loaded | None:
    table = f"{cfg.mariadb.table}_1min"
    with src.conn.cursor() as cur:
        live = live_columns(cur, cfg.mariadb.database, table)
    names = _table_names(src.columns, live)
    if names is None:
        return None
    agg = Aggregator(period.start_ts, period.end_ts, src.columns)
    seed = _seed(src, agg)
    if seed is None:
        return None
    counts = _raw_counts(src)
    rows = _table_rows(src, table, live, names, counts)
    raw_minutes = sorted(set(counts) - set(rows))
    agg.add_bins(_bins(agg, rows, names))
    agg.total_rows += sum(int(r[0]) for r in rows.values())
    agg.bad_clock += sum(int(r[2]) for r in rows.values())
    read = _raw(src, agg, raw_minutes, counts, progress)
    label = f"MariaDB {cfg.mariadb.database}.{table} + {cfg.mariadb.table}"
    return Loaded(agg, label, len(rows), seed + read)


def _table_names(columns: list[str], live: dict[str, tuple[str, str]]) -> dict[str, str] | None:
    """Report series -> table column prefix (or count column for a flag); None if one is missing."""
    if not live:
        return None
    names: dict[str, str] = {c: c for c in columns}
    for series in ser.SERIES:
        if set(series.needs) <= set(columns):
            report = next(k for k, v in DERIVED_COLUMNS.items() if v == series.name)
            names[report] = series.name
    if "frequencia" in columns:
        names.update(FLAG_COLUMNS)
    for report, column in names.items():
        missing = [c for c in _columns(report, column) if c not in live]
        if missing:
            log.info("report: the per-minute table lacks %s; reading the raw rows", missing[0])
            return None
    return names


def _columns(report: str, column: str) -> list[str]:
    """The table's columns of a report series: a flag's count, else avg, min, max, cnt."""
    return [column] if report in FLAG_COLUMNS else [f"{column}_{s}" for s in STATS]


def _seed(src: MariaDBSource, agg: Aggregator) -> int | None:
    """Feed the period's first rows' times to the interval and the event detector's spacing,
    in the chunks the raw path reads; None when the period has too few rows to bother."""
    rows = _select_raw(src, "UNIX_TIMESTAMP(measured_at)", f"ORDER BY measured_at, seq LIMIT {SEED_ROWS}")
    times = np.array([float(at) for (at,) in rows])
    if len(times) < SEED_ROWS:
        return None  # a small period: the raw path is as quick
    for start in range(0, len(times), CHUNK_ROWS):
        if not agg.note_spacing(times[start : start + CHUNK_ROWS]):
            break
    else:
        return None  # not enough distinct times to emulate the raw path's interval
    first = agg.first_diffs(SPACING_N)
    if len(first) < SPACING_N:
        return None
    agg.events.fix_spacing(first)
    return len(times)


def _raw_counts(src: MariaDBSource) -> dict[int, int]:
    """Raw rows per unix minute of the period."""
    rows = _select_raw(src, "FLOOR(UNIX_TIMESTAMP(measured_at) / 60), COUNT(*)", "GROUP BY 1")
    return {int(m): int(n) for m, n in rows}


def _select_raw(src: MariaDBSource, select: str, tail: str) -> tuple[tuple[Any, ...], ...]:
    """`SELECT select` over the period's raw rows, then `tail` (ORDER BY, GROUP BY, LIMIT)."""
    where, params = src._where()
    with src.conn.cursor() as cur:
        cur.execute(f"SELECT {select} FROM {quote(src.config.table)} WHERE {where} {tail}", params)
        return cur.fetchall()


def _table_rows(
    src: MariaDBSource,
    table: str,
    live: dict[str, tuple[str, str]],
    names: dict[str, str],
    counts: dict[int, int],
) -> dict[int, tuple[Any, ...]]:
    """Minute -> the table's row (samples, failed, clock_unsynced, then per series its
    columns), for the minutes it can serve: current, no interrupted reading, no event."""
    columns = [c for report, column in names.items() for c in _columns(report, column)]
    exprs = ", ".join(select_expr(quote(c), live[c][0]) for c in columns)
    q = src.query
    sql = (
        f"SELECT UNIX_TIMESTAMP(period_start) DIV 60, samples, failed, clock_unsynced, {exprs} "
        f"FROM {quote(table)} WHERE site = %s AND meter = %s AND period_start >= %s AND period_start < %s"
    )
    index = {c: 4 + i for i, c in enumerate(columns)}
    dead_v = limits.INTERRUPTION_PU * limits.PHASE_NEUTRAL_127.nominal
    f_lo, f_hi = limits.FREQ_RECOVERY
    out = {}
    with src.conn.cursor() as cur:
        cur.execute(sql, (q.site, q.meter, utc_text(q.start), utc_text(q.end)))
        for row in cur.fetchall():
            minute = int(row[0])
            if counts.get(minute) != row[1]:
                continue  # stale or not summarised: raw
            if all(v in names for v in VOLTS) and any(
                (lo := row[index[f"{v}_min"]]) is not None and lo < dead_v for v in VOLTS
            ):
                continue  # may hold an interrupted reading
            if "frequencia" in names:
                lo, hi = row[index["frequencia_min"]], row[index["frequencia_max"]]
                if lo is not None and (lo < f_lo or hi > f_hi):
                    continue  # may hold a sample of an event
            out[minute] = row[1:]
    return out


def _bins(agg: Aggregator, rows: dict[int, tuple[Any, ...]], names: dict[str, str]) -> MinuteBins:
    minutes = np.array(sorted(rows), dtype=np.int64)
    bins = MinuteBins.empty(minutes, len(agg.series))
    for j, minute in enumerate(minutes):
        row = rows[int(minute)]
        bins.rows[j], bins.failed[j] = row[0], row[1]
        bins.good[j] = row[0] - row[1]
        at = 3
        f_cnt = None
        for report, _column in names.items():
            i = agg.index[report]
            if report in FLAG_COLUMNS:
                flagged, n = int(row[at]), f_cnt or 0
                at += 1
                bins.sum[j, i], bins.cnt[j, i] = flagged, n
                if n:
                    bins.min[j, i], bins.max[j, i] = float(flagged == n), float(flagged > 0)
                continue
            avg, lo, hi, n = row[at : at + 4]
            at += 4
            if report == "frequencia":
                f_cnt = n
            if n:
                bins.sum[j, i], bins.cnt[j, i] = avg * n, n
                bins.min[j, i], bins.max[j, i] = lo, hi
        if "v_mean" in names and (n := bins.cnt[j, agg.index["v_mean"]]):
            # no interrupted reading in this minute: each with three voltages is a 0
            i = agg.index["dead"]
            bins.cnt[j, i], bins.min[j, i], bins.max[j, i] = n, 0.0, 0.0
    return bins


def _raw(
    src: MariaDBSource,
    agg: Aggregator,
    minutes: list[int],
    counts: dict[int, int],
    progress: Callable[[int], None],
) -> int:
    """Bin the raw rows of `minutes` (sorted) and feed them to the event detector, closing its
    runs where minutes with readings were left out between. Returns the rows read."""
    ranges = runs(minutes)
    if not ranges:
        return 0
    starts = [lo for lo, _ in ranges]
    # a break before range r when a minute between it and range r-1 has readings
    with_rows = sorted(counts)
    breaks = [False] + [
        bisect.bisect_left(with_rows, ranges[r][0]) > bisect.bisect_left(with_rows, ranges[r - 1][1])
        for r in range(1, len(ranges))
    ]
    read = 0
    current = -1
    for group in range(0, len(ranges), RANGES_PER_QUERY):
        for chunk in _chunks(src, ranges[group : group + RANGES_PER_QUERY]):
            t = np.fromiter((r[0] for r in chunk), dtype=float, count=len(chunk))
            which = np.searchsorted(starts, np.floor(t / BIN_S), side="right") - 1
            cut = 0
            for pos in np.flatnonzero(np.diff(which, prepend=current)):
                if pos > cut:
                    agg.add(chunk[cut:pos], spacing=False)
                    cut = pos
                current = int(which[pos])
                if breaks[current]:
                    agg.events.break_runs()
            agg.add(chunk[cut:], spacing=False)
            read += len(chunk)
            progress(read)
    return read


def _chunks(src: MariaDBSource, ranges: list[tuple[int, int]]) -> Iterator[list[tuple[Any, ...]]]:
    yield from _Rows(src, ranges).chunks()
