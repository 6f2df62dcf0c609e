"""The sync position: which rows the destination has, the hold, sync errors, and the
rows it refused for good (quarantine).

Every row with ``seq <= sent_upto`` has been committed by the destination, or was
refused by it for good and copied to the ``quarantine`` table (see the sync
worker). The position moves forward only after the destination confirmed a
batch, never back, in one small write (not one UPDATE per row: SD cards wear out).

Written without an fsync of its own
-----------------------------------
A confirmed position is committed at once, so every process sees it, but with
``synchronous = NORMAL`` for that one transaction: its WAL frame is not fsync()ed
then, it becomes durable with the next reading's commit (whose fsync of the WAL
covers every frame before it) or the next checkpoint. In `edgelog run` that saves
an fsync, and the file-system page it would dirty, at every sync round. A power
cut may lose the newest confirmations: the worker then sends those rows again,
which the destination ignores (identity keys), and at start it moves the
position to the destination's high-water mark anyway. The position on disk can
lag, never lead. The hold and the quarantine are written with an fsync.

``sync_hold`` is a seq the position must not pass yet: a row the destination
rejected while rows after it were written, until it is resolved.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .schema import (
    DROPPED_TOTAL,
    FIXED_COLUMNS,
    LAST_ERROR,
    LAST_ERROR_AT,
    LAST_SYNC_AT,
    QUARANTINED_TOTAL,
    SENT_UPTO,
    SYNC_HOLD,
    SYNC_RATE,
)

if TYPE_CHECKING:
    from .store import Buffer

Row = tuple[Any, ...]


class SyncPosition:
    """What the destination has, read and moved by the sync worker."""

    def __init__(self, buffer: Buffer):
        self.buffer = buffer

    @property
    def sent_upto(self) -> int:
        return self.buffer.meta.get_int(SENT_UPTO)

    def unsent(self, limit: int, after: int | None = None) -> list[Row]:
        position = self.sent_upto if after is None else after
        # batch.py: tuples built by the sqlite3 driver; in position order, the next batch read ahead
        return self.buffer.reader.read(position, limit, read_ahead=after is None)

    def mark_sent(
        self, upto: int, at: float | None, rate: float | None, batch: tuple[int, int] | None
    ) -> None:
        b = self.buffer
        R, meta = b.tables.Reading, b.meta
        # read-then-write under the write lock: a prune for space cannot delete rows of
        # the batch as "dropped" between the count below and the move of the position
        with b.write("cannot record the sync position", durable=False):
            if upto > meta.get_int(SENT_UPTO):
                meta.set(SENT_UPTO, str(upto))
            meta.set(LAST_SYNC_AT, repr(time.time() if at is None else at))
            if rate is not None:
                meta.set(SYNC_RATE, f"{rate:.1f}")
            if batch is not None:
                first, n = batch
                gone = n - R.select().where((R.seq >= first) & (R.seq <= upto)).count()
                if gone > 0:
                    meta.set(DROPPED_TOTAL, str(max(0, meta.get_int(DROPPED_TOTAL) - gone)))

    @property
    def hold(self) -> int | None:
        value = self.buffer.meta.get(SYNC_HOLD)
        return int(value) if value else None

    def set_hold(self, seq: int | None) -> None:
        if seq != self.hold:
            with self.buffer.write("cannot record the sync hold"):
                self.buffer.meta.set(SYNC_HOLD, None if seq is None else str(seq))

    def record_error(self, message: str | None, at: float | None) -> None:
        meta = self.buffer.meta
        if message == meta.get(LAST_ERROR):
            return  # no write for an unchanged state: SD cards wear out
        with self.buffer.write("cannot record the sync error", durable=False):
            meta.set(LAST_ERROR, message)
            meta.set(LAST_ERROR_AT, repr(time.time() if at is None else at))


class Quarantine:
    """Rows the destination refused for good, kept as JSON (the columns of their day)."""

    def __init__(self, buffer: Buffer):
        self.buffer = buffer
        self.Q = buffer.tables.Quarantined

    def _names(self) -> list[str]:
        return [*FIXED_COLUMNS, *self.buffer.value_columns]

    def _exists(self) -> bool:
        return bool(self.buffer.db.table_exists("quarantine"))  # layout 1 made it when needed

    def add(
        self, entries: Sequence[tuple[Sequence[Any], str]], upto: int, hold: int | None, at: float
    ) -> None:
        b, names = self.buffer, self._names()
        with b.write("cannot quarantine rows"):
            b.db.create_tables([self.Q], safe=True)
            for row, reason in entries:
                record = json.dumps(dict(zip(names, row, strict=True)))
                self.Q.replace(seq=row[0], row=record, reason=reason, attempts=0, quarantined_at=at).execute()
            if entries:
                b.meta.set(QUARANTINED_TOTAL, str(b.meta.get_int(QUARANTINED_TOTAL) + len(entries)))
            if upto > b.meta.get_int(SENT_UPTO):
                b.meta.set(SENT_UPTO, str(upto))
                b.meta.set(LAST_SYNC_AT, repr(at))
            b.meta.set(SYNC_HOLD, None if hold is None else str(hold))

    def rows(self, limit: int, after: int = 0) -> list[tuple[Row, str]]:
        if not self._exists():
            return []
        names, Q = self._names(), self.Q
        query = Q.select(Q.row, Q.reason).where(Q.seq > after).order_by(Q.seq).limit(limit)
        out = []
        for text, reason in query.tuples():
            stored = json.loads(text)
            out.append((tuple(stored.get(name) for name in names), reason))
        return out

    def release(self, seqs: Sequence[int]) -> None:
        if seqs:
            with self.buffer.write("cannot update the quarantine"):
                self.Q.delete().where(self.Q.seq.in_(list(seqs))).execute()

    def refused_again(self, entries: Sequence[tuple[int, str]]) -> None:
        if entries:
            with self.buffer.write("cannot update the quarantine"):
                for seq, reason in entries:
                    self.Q.update(reason=reason, attempts=self.Q.attempts + 1).where(
                        self.Q.seq == seq
                    ).execute()

    def count(self) -> int:
        return int(self.Q.select().count()) if self._exists() else 0
