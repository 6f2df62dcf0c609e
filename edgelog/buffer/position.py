"""The sync position: which rows the destination has, the hold, sync errors, and the
rows it refused for good (quarantine).

Every row with ``seq <= sent_upto`` has been committed by the destination, or was
refused by it for good and copied to the ``quarantine`` table (see the sync
worker). The position moves forward only after the destination confirmed a
batch, never back.

Written with the next commit
----------------------------
A confirmation is kept in memory (`Pending`) and written by the next write
transaction of this `Buffer`: in `edgelog run` that is the next reading's commit,
a second WAL frame in a commit that is made anyway, instead of a commit (an fsync,
a file-system page) of its own at every sync round. When no reading is expected
soon (no append in the last `CARRY_WINDOW_S`, as in `edgelog sync --drain`), the
confirmation is written at once. `close()` writes what is left. Other processes
(sync-status) see the position at most that late; this process sees it at once.
A crash loses only the confirmations not yet written: the worker then sends
those rows again, which the destination ignores (identity keys), and at start it
moves the position to the destination's high-water mark anyway. The position on
disk can lag, never lead.

``sync_hold`` is a seq the position must not pass yet: a row the destination
rejected while rows after it were written, until it is resolved. It, the
quarantine and the last sync error are written at once (they are rare).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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

#: A confirmation waits for the next reading's commit when a reading was committed
#: this recently (so one is expected soon); otherwise it is written at once.
CARRY_WINDOW_S = 10.0

Row = tuple[Any, ...]


@dataclass
class Changes:
    """Meta changes waiting for a commit."""

    upto: int = 0  # the highest seq the destination confirmed
    values: dict[str, str] = field(default_factory=dict)  # last_sync_at, the sync rate
    #: (first seq, last seq, rows) of each confirmed batch: rows of it deleted as
    #: "dropped" meanwhile reached the destination after all
    batches: list[tuple[int, int, int]] = field(default_factory=list)
    dropped: int = 0  # readings lost, not yet added to dropped_total

    def __bool__(self) -> bool:
        return bool(self.upto or self.values or self.batches or self.dropped)


class Pending:
    """Changes to meta that ride on the next write transaction (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes = Changes()
        #: the highest seq ever confirmed here: the position as this process knows it,
        #: also while a transaction is writing it
        self.confirmed = 0

    def confirm(self, upto: int, at: float, rate: float | None, batch: tuple[int, int] | None) -> None:
        with self._lock:
            self.confirmed = max(self.confirmed, upto)
            c = self._changes
            c.upto = max(c.upto, upto)
            c.values[LAST_SYNC_AT] = repr(at)
            if rate is not None:
                c.values[SYNC_RATE] = f"{rate:.1f}"
            if batch is not None:
                c.batches.append((batch[0], upto, batch[1]))

    def drop(self, n: int) -> None:
        with self._lock:
            self._changes.dropped += n

    def peek(self) -> Changes:
        with self._lock:
            c = self._changes
            return Changes(c.upto, dict(c.values), list(c.batches), c.dropped)

    def take(self) -> Changes:
        with self._lock:
            taken, self._changes = self._changes, Changes()
            return taken

    def put_back(self, taken: Changes) -> None:
        """After a failed commit: keep `taken` for the next one (newer values win)."""
        with self._lock:
            c = self._changes
            c.upto = max(c.upto, taken.upto)
            c.values = {**taken.values, **c.values}
            c.batches = taken.batches + c.batches
            c.dropped += taken.dropped


def write_changes(buffer: Buffer, changes: Changes) -> None:
    """Inside a write transaction: write what `changes` holds."""
    meta, R = buffer.meta, buffer.tables.Reading
    if changes.upto > meta.get_int(SENT_UPTO):
        meta.set(SENT_UPTO, str(changes.upto))
    for key, value in changes.values.items():
        meta.set(key, value)
    gone = 0
    for first, upto, rows in changes.batches:
        gone += max(0, rows - R.select().where((R.seq >= first) & (R.seq <= upto)).count())
    if changes.dropped or gone:
        meta.set(DROPPED_TOTAL, str(max(0, meta.get_int(DROPPED_TOTAL) + changes.dropped - gone)))


class SyncPosition:
    """What the destination has, read and moved by the sync worker."""

    def __init__(self, buffer: Buffer):
        self.buffer = buffer

    @property
    def sent_upto(self) -> int:
        b = self.buffer
        return max(b.meta.get_int(SENT_UPTO), b.pending.confirmed)

    def unsent(self, limit: int, after: int | None = None) -> list[Row]:
        position = self.sent_upto if after is None else after
        # batch.py: tuples built by the sqlite3 driver; in position order, the next batch read ahead
        return self.buffer.reader.read(position, limit, read_ahead=after is None)

    def mark_sent(
        self, upto: int, at: float | None, rate: float | None, batch: tuple[int, int] | None
    ) -> None:
        b = self.buffer
        b.pending.confirm(upto, time.time() if at is None else at, rate, batch)
        if not b.appending(CARRY_WINDOW_S):
            with b.write("cannot record the sync position"):
                pass  # the write carries the confirmation

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
        with self.buffer.write("cannot record the sync error"):
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
