"""What the tools read from the buffer: sync-status, tail, export and report.

Nothing here writes. Rows come in seq order (the order they were taken, whatever
the clock said); the newest ones are found from the end of the rowid b-tree, so
no index is needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from peewee import fn

from .schema import (
    CORRUPT_BUFFERS,
    DROPPED_TOTAL,
    LAST_ERROR,
    LAST_ERROR_AT,
    LAST_SYNC_AT,
    SYNC_RATE,
)

if TYPE_CHECKING:
    from .store import Buffer


@dataclass(frozen=True)
class BufferStatus:
    path: str
    buffer_id: str
    unsent: int
    oldest_unsent_at: float | None
    readings_total: int
    failed_polls_unsent: int
    last_reading_at: float | None
    sent_upto: int
    last_sync_at: float | None
    last_error: str | None
    last_error_at: float | None
    dropped_total: int
    size_bytes: int
    #: rows MariaDB refused for good, kept in the buffer's quarantine table
    #: (`edgelog sync --retry-quarantined` sends them again)
    quarantined: int = 0
    #: buffer files found corrupt at start and moved aside (kept, never deleted)
    corrupt_buffers: tuple[str, ...] = ()


class Latest(NamedTuple):
    """A meter's newest row (a reading, or a failed poll with `error` set)."""

    measured_at: float
    error: str | None
    clock_ok: bool
    values: dict[str, float | None]


class Poll(NamedTuple):
    """One row, reading or failed poll (`error` set), as sync-status counts them."""

    meter: str
    measured_at: float
    error: str | None


@dataclass(frozen=True)
class Span:
    """Rows measured in [start, end) (unix seconds), of one meter or all, with or
    without the failed polls."""

    start: float
    end: float
    meter: str | None = None
    gaps: bool = True


def status(buffer: Buffer) -> BufferStatus:
    R, meta = buffer.tables.Reading, buffer.meta
    with buffer.db.atomic():  # one consistent snapshot
        position = buffer.sent_upto
        unsent = R.select().where(R.seq > position)
        first = unsent.order_by(R.seq).limit(1).tuples().first()
        last = R.select(fn.MAX(R.measured_at)).where(R.error.is_null()).scalar()
        return BufferStatus(
            path=str(buffer.path),
            buffer_id=buffer.buffer_id,
            unsent=unsent.count(),
            oldest_unsent_at=first[2] if first else None,
            readings_total=buffer.readings_total(),
            failed_polls_unsent=unsent.where(R.error.is_null(False)).count(),
            last_reading_at=last,
            sent_upto=position,
            last_sync_at=meta.get_float(LAST_SYNC_AT),
            last_error=meta.get(LAST_ERROR),
            last_error_at=meta.get_float(LAST_ERROR_AT),
            dropped_total=meta.get_int(DROPPED_TOTAL),
            size_bytes=buffer.size_bytes(),
            quarantined=buffer.quarantined_count(),
            corrupt_buffers=tuple(buffer.corrupt_buffers()),
        )


def sync_rate(buffer: Buffer) -> float | None:
    """Rows/s of the sync worker's last batch; None if unknown or not a positive number."""
    text = buffer.meta.get(SYNC_RATE)
    try:
        rate = float(text) if text is not None else None
    except ValueError:
        return None
    return rate if rate is not None and 0 < rate < float("inf") else None


def corrupt_buffers(buffer: Buffer) -> list[str]:
    return list(json.loads(buffer.meta.get(CORRUPT_BUFFERS) or "[]"))


def newest(buffer: Buffer, meter: str, good_only: bool = False) -> Latest | None:
    R = buffer.tables.Reading
    where = R.meter == meter
    if good_only:
        where &= R.error.is_null()
    row = (
        R.select(R.measured_at, R.error, R.clock_ok, *buffer.tables.values())
        .where(where)
        .order_by(R.seq.desc())
        .limit(1)
        .tuples()
        .first()
    )
    if row is None:
        return None
    at, error, ok, *values = row
    return Latest(at, error, bool(ok), dict(zip(buffer.value_columns, values, strict=True)))


def recent_polls(buffer: Buffer, limit: int) -> list[Poll]:
    R = buffer.tables.Reading
    query = R.select(R.meter, R.measured_at, R.error).order_by(R.seq.desc()).limit(limit)
    return [Poll(*row) for row in query.tuples()]


def newest_trusted_at(buffer: Buffer) -> float | None:
    R = buffer.tables.Reading
    return R.select(R.measured_at).where(R.clock_ok).order_by(R.seq.desc()).limit(1).scalar()


def _where(buffer: Buffer, span: Span) -> Any:
    R = buffer.tables.Reading
    where = (R.measured_at >= span.start) & (R.measured_at < span.end)
    if span.meter is not None:
        where &= R.meter == span.meter
    if not span.gaps:
        where &= R.error.is_null()
    return where


def count_between(buffer: Buffer, span: Span) -> int:
    R = buffer.tables.Reading
    return int(R.select().where(_where(buffer, span)).count())


def between(buffer: Buffer, span: Span, chunk: int) -> Iterator[list[tuple[Any, ...]]]:
    R = buffer.tables.Reading
    columns = [R.seq, R.measured_at, R.meter, R.clock_ok, R.error, *buffer.tables.values()]
    where, after = _where(buffer, span), 0
    while True:
        query = R.select(*columns).where(where & (R.seq > after)).order_by(R.seq).limit(chunk)
        rows = list(query.tuples())
        if not rows:
            return
        after = rows[-1][0]
        out = [(at, meter, bool(ok), error, *values) for _seq, at, meter, ok, error, *values in rows]
        del rows  # hold one chunk at a time, not two
        yield out
        del out
