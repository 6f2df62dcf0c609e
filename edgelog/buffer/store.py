"""The buffer's face (`Buffer`) and its append path.

`Buffer` is every operation the rest of edgelog performs on the buffer file, each
with its contract in its docstring (tests/test_buffer_api.py checks each one on a
real file). Nothing outside ``edgelog/buffer/`` runs SQL on the file. The concepts
behind the face, a module each:

* ``schema.py``: the file's layout (tables, pragmas, meta, the seq counter) and the
  migration of files an older edgelog wrote;
* ``store.py`` (here): opening, the append path, and the write transaction;
* ``position.py``: the sync position, the hold, sync errors, the quarantine;
* ``space.py``: pruning, max_mb, the disk reserve, the full-disk policy;
* ``read.py``: what sync-status, tail, export and report read;
* ``corrupt.py``: the integrity check and moving a corrupt file aside;
* ``batch.py``: the sync worker's fast read of unsent rows;
* ``writer.py``: the thread that commits `edgelog run`'s readings.

Durability guarantee
--------------------
`Buffer.append()` / `append_many()` return only after SQLite has committed the
readings *and* fsync()ed the write-ahead log (``journal_mode=WAL`` +
``synchronous=FULL``; with ``NORMAL`` a WAL commit is not synced until the next
checkpoint, so a power cut could lose the last second(s) of readings). In
`edgelog run` the buffer writer thread commits each reading, normally before the
next poll starts, so a power cut loses at most the reading in flight; see
`writer.py` for a disk slower than the interval, and for ``commit_every_s``.

Identity
--------
A reading is identified by ``(buffer_id, seq)``: ``buffer_id`` is a random id
made when the buffer file is created, ``seq`` a number the buffer never gives
twice, even after rows are deleted or a crash (see `schema.py`). Neither depends
on the wall clock, so two readings taken while the clock restarted in the past
stay two readings.

SQL
---
Through peewee's query builder and the models of `schema.Tables`, with two
exceptions: the trigger (DDL peewee cannot express, a named statement in
`schema.py`), and `batch.py`'s read of unsent rows, one prepared SELECT through
the sqlite3 driver, several times faster per row than peewee's model layer.
Pragmas go through ``Database.pragma()`` (``quick_check``, whose report has a row
a problem, through ``execute_sql``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from peewee import SqliteDatabase, fn

from ..errors import BufferError
from . import corrupt, read, schema, space
from .batch import UnsentReader
from .errors import BufferCorrupt, one_line
from .position import Quarantine, SyncPosition
from .read import BufferStatus, Latest, Poll, Span
from .schema import BUFFER_ID, CORRUPT_BUFFERS, DROPPED_TOTAL, FIXED_COLUMNS, MetaTable, Tables

log = logging.getLogger(__name__)

Row = tuple[Any, ...]


class NewReading(NamedTuple):
    """A reading (or, with `error` set, a failed poll) to store."""

    meter: str
    measured_at: float
    values: dict[str, float | None] | None = None
    error: str | None = None
    clock_ok: bool = True


class Buffer:
    """The readings waiting to be forwarded (and, for a while, those already sent)."""

    def __init__(
        self,
        path: Path,
        columns: Iterable[str] = (),
        create: bool = True,
        max_bytes: int | None = None,
        check: bool = True,
    ):
        """Open the buffer at `path`, running ``quick_check`` unless `check` is False.

        With `create` (what `edgelog run` does) the file and its directory are made if
        missing, a file of an older layout is converted, and `columns` missing from the
        readings table are added; without it the file must exist and nothing is
        changed. `max_bytes` (the ``max_mb`` bound) sizes the WAL between checkpoints.
        Raises BufferCorrupt (fails the check, or not a database), BufferError (cannot
        be opened, or not an edgelog buffer)."""
        self.path = Path(path)
        if not create and not self.path.exists():
            raise BufferError(f"buffer {self.path}: no such file (has `edgelog run` started?)")
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BufferError(f"buffer {self.path}: cannot create directory: {exc.strerror}") from None
        self.db = SqliteDatabase(str(self.path), pragmas=schema.PRAGMAS, timeout=schema.BUSY_TIMEOUT_S)
        #: the WAL's size between two checkpoints
        self.wal_bytes_bound = schema.wal_bytes_bound(max_bytes)
        #: dropped readings not yet added to dropped_total (the write failed): added by
        #: the next write that succeeds
        self._uncounted = 0
        self._uncounted_lock = threading.Lock()
        try:
            with one_line(self.path, ""):
                self._open(list(columns), create, check)
        except BufferError:
            self.db.close()
            raise
        self.reader = UnsentReader(self.path, [*FIXED_COLUMNS, *self.value_columns], schema.BUSY_TIMEOUT_S)
        self._position = SyncPosition(self)
        self._quarantine = Quarantine(self)

    def _open(self, columns: list[str], create: bool, check: bool) -> None:
        self.db.connect(reuse_if_open=True)
        if check:
            corrupt.check(self.path, self.db)
        existing = schema.value_columns_of(self.db)
        new = [c for c in columns if c not in existing] if create else []
        self.value_columns: list[str] = existing + new
        self.tables = Tables(self.db, self.value_columns)
        self.meta = MetaTable(self.tables)
        if create:
            self._bring_up_to_date(existing)
        self.layout = schema.layout_of(self.db, self.meta)
        buffer_id = self.meta.get(BUFFER_ID) if self.layout else None
        if not buffer_id:
            raise BufferError(f"buffer {self.path}: not an edgelog buffer (no buffer_id)")
        self.buffer_id: str = buffer_id
        pages = max(16, self.wal_bytes_bound // self.db.pragma("page_size"))
        self.db.pragma("wal_autocheckpoint", pages, permanent=True)

    def _bring_up_to_date(self, existing: list[str]) -> None:
        """A new file gets the tables; an older layout is converted; new registers get
        their column."""
        with self.db.atomic("IMMEDIATE"):
            if schema.layout_of(self.db, self.meta) == 0:
                schema.create(self.tables)
                return
        if schema.layout_of(self.db, self.meta) < schema.LAYOUT:
            try:
                with one_line(self.path, "cannot convert it to the new layout"), self.db.atomic("IMMEDIATE"):
                    schema.migrate_layout_1(self.tables)
                log.info("buffer %s: converted to layout %d", self.path, schema.LAYOUT)
            except BufferCorrupt:
                raise
            except BufferError as exc:
                log.warning("%s; it keeps working as it is, and the next start tries again", exc)
        with self.db.atomic("IMMEDIATE"):
            schema.add_columns(self.tables, existing)

    @classmethod
    def open_or_replace(
        cls,
        path: Path,
        columns: Iterable[str] = (),
        max_bytes: int | None = None,
        now: float | None = None,
    ) -> Buffer:
        """Open the buffer for `edgelog run`. A corrupt file is moved aside (with its -wal
        and -shm, never deleted) and a new buffer started, which remembers where the old
        one went (`corrupt_buffers`)."""
        columns = list(columns)
        path = Path(path)
        try:
            if path.exists():
                corrupt.check_file(path)
            buffer = cls(path, columns, max_bytes=max_bytes, check=False)
            buffer.note_unnoted_corrupt()
            return buffer
        except BufferCorrupt as exc:
            aside = corrupt.move_aside(path, exc, time.time() if now is None else now)
            log.error("%s; moved aside to %s (kept, never deleted); starting a new buffer", exc, aside)
            buffer = cls(path, columns, max_bytes=max_bytes)
            buffer.note_corrupt(str(aside))
            return buffer

    @staticmethod
    def check_file(path: Path) -> None:
        """``quick_check`` through a read-only connection (changes nothing, not even the
        WAL); raises BufferCorrupt, or BufferError if the file cannot be read."""
        corrupt.check_file(path)

    def connect(self) -> None:
        """Open the calling thread's connection now (each thread has its own)."""
        self.db.connect(reuse_if_open=True)

    def disconnect(self) -> None:
        """Close the calling thread's connection."""
        self.db.close()

    def close(self) -> None:
        """Count the dropped readings not counted yet (if the file takes the write; else
        logged), stop the unsent reader, close this thread's connection."""
        if self._uncounted:
            try:
                with self.write("cannot count dropped readings"):
                    pass
            except BufferError as exc:
                log.error("%d dropped readings not counted in dropped_total: %s", self._uncounted, exc)
        self.reader.close()
        self.db.close()

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def write(self, what: str, durable: bool = True) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE: the write lock from the start); SQLite
        errors become one-line BufferErrors (BufferFull, BufferCorrupt) starting with
        `what`. Not `durable`: committed without an fsync of the WAL (visible to every
        reader at once, durable with the next fsync'ed commit or checkpoint), for what
        may be lost to a power cut (see position.py). Dropped readings not counted yet
        are counted in it."""
        relaxed = not durable and not self.db.in_transaction()
        with one_line(self.path, what):
            if relaxed:
                self.db.pragma("synchronous", 1)  # NORMAL: this connection, this commit
            taken = 0
            try:
                with self.db.atomic("IMMEDIATE"):
                    with self._uncounted_lock:  # taken under the write lock: by one at a time
                        taken, self._uncounted = self._uncounted, 0
                    if taken:
                        self.meta.set(DROPPED_TOTAL, str(self.meta.get_int(DROPPED_TOTAL) + taken))
                    yield
            except BaseException:
                with self._uncounted_lock:
                    self._uncounted += taken  # not committed: the next write counts them
                raise
            finally:
                if relaxed:
                    self.db.pragma("synchronous", 2)

    def append(
        self,
        meter: str,
        measured_at: float,
        values: dict[str, float | None] | None = None,
        error: str | None = None,
        clock_ok: bool = True,
    ) -> int:
        """Commit one reading (or one failed poll, with `error` set) durably; return its seq."""
        return self.append_many([NewReading(meter, measured_at, values, error, clock_ok)])[0]

    def append_many(self, readings: Sequence[NewReading]) -> list[int]:
        """Commit readings in one transaction (one fsync), in order; return their seqs,
        each higher than any seq this buffer ever gave. Raises BufferFull (no room on
        the disk), BufferCorrupt, BufferError; then nothing of them is stored."""
        R = self.tables.Reading
        fields = R._meta.columns  # column name -> field
        with self.write("cannot store reading"):
            top = R.select(fn.MAX(R.seq)).scalar() or 0
            seq = max(top, schema.seq_floor(self.tables, self.meta, self.layout))
            seqs = []
            for r in readings:
                seq += 1
                row: dict[Any, Any] = {
                    R.seq: seq,
                    R.meter: r.meter,
                    R.measured_at: r.measured_at,
                    R.clock_ok: r.clock_ok,
                    R.error: r.error,
                }
                for name, value in (r.values or {}).items():
                    row[fields[name]] = value
                R.insert(row).execute()
                seqs.append(seq)
        return seqs

    def count_dropped(self, n: int) -> None:
        """Add `n` readings that could not be stored to dropped_total: now if the file
        takes the write, else with the next write that succeeds. Never raises."""
        if n:
            with self._uncounted_lock:
                self._uncounted += n
            try:
                with self.write("cannot count dropped readings"):
                    pass
            except BufferError as exc:
                log.debug("%s (counted with the next write)", exc)

    def get_meta(self, key: str) -> str | None:
        """A text value another part keeps in the buffer under `key` (the sync worker's
        facts for sync-status: how it writes, the node in use; the aggregates' pending
        minutes), or None."""
        return self.meta.get(key)

    def set_meta(self, key: str, value: str | None) -> None:
        """Keep `value` under `key`, committed and fsync()ed at once (the aggregates' pending
        minutes must survive a power cut); callers write only on a change."""
        with self.write(f"cannot record {key}"):
            self.meta.set(key, value)

    def note_corrupt(self, moved_to: str) -> None:
        """Remember a corrupt buffer moved aside at start (shown by sync-status)."""
        with self.write("cannot record the corrupt buffer"):
            self.meta.set(CORRUPT_BUFFERS, json.dumps([*self.corrupt_buffers(), moved_to]))

    def note_unnoted_corrupt(self) -> None:
        """Note the corrupt copies beside the buffer that it does not know of: a power cut
        between a move aside and its note keeps the file, not the note."""
        for aside in corrupt.unnoted(self.path, self.corrupt_buffers()):
            log.error("buffer %s: a corrupt buffer was moved aside to %s (kept)", self.path, aside)
            self.note_corrupt(str(aside))

    # -- the sync position (position.py) -----------------------------------------------

    @property
    def sent_upto(self) -> int:
        """Every row with seq <= sent_upto is in the destination (or quarantined)."""
        return self._position.sent_upto

    def unsent(self, limit: int, after: int | None = None) -> list[Row]:
        """Up to `limit` rows with seq > `after` (default: the position), by seq, as
        tuples: FIXED_COLUMNS (clock_ok a bool) then `value_columns`. Read in position
        order, the next batch is read ahead while the caller sends this one."""
        return self._position.unsent(limit, after)

    def mark_sent(
        self,
        upto_seq: int,
        at: float | None = None,
        rate: float | None = None,
        batch: tuple[int, int] | None = None,
    ) -> None:
        """Move the position to `upto_seq` (never back) after the destination committed,
        with the time and the rows/s of that batch (`rate`, for sync-status); committed
        at once, fsync()ed with the next reading (position.py).

        `batch` = (first seq, row count) of the rows just committed: any of them pruned
        as "dropped" while they were in flight reached the destination after all, and
        are taken off dropped_total again (it counts readings lost, nothing else)."""
        self._position.mark_sent(upto_seq, at, rate, batch)

    @property
    def hold(self) -> int | None:
        """A seq the position must not pass (a rejected row not yet resolved), or None."""
        return self._position.hold

    def set_hold(self, seq: int | None) -> None:
        """Set (or with None clear) the hold; written at once, and only if it changes."""
        self._position.set_hold(seq)

    def record_sync_error(self, message: str | None, at: float | None = None) -> None:
        """Remember the last sync error (None clears it), for sync-status; written only
        when it changes (SD cards wear out)."""
        self._position.record_error(message, at)

    # -- the quarantine (position.py) ----------------------------------------------------

    def quarantine(
        self,
        entries: Sequence[tuple[Sequence[Any], str]],
        upto: int,
        hold: int | None,
        at: float | None = None,
    ) -> None:
        """In one transaction: copy each (row, reason) to the quarantine, move the
        position to `upto` (never back) and set the hold."""
        self._quarantine.add(entries, upto, hold, time.time() if at is None else at)

    def quarantined(self, limit: int, after: int = 0) -> list[tuple[Row, str]]:
        """Quarantined (row, reason) with seq > `after`, by seq; rows as `unsent()` gives
        them (today's columns: NULL for a register added since)."""
        return self._quarantine.rows(limit, after)

    def release_quarantined(self, seqs: Sequence[int]) -> None:
        """Forget quarantined rows the destination has now committed."""
        self._quarantine.release(seqs)

    def requarantine(self, entries: Sequence[tuple[int, str]]) -> None:
        """Record a new refusal (seq, reason) of rows still in quarantine."""
        self._quarantine.refused_again(entries)

    def quarantined_count(self) -> int:
        """Rows in the quarantine."""
        return self._quarantine.count()

    # -- reading (read.py) -----------------------------------------------------------------

    def status(self) -> BufferStatus:
        """Every figure sync-status and doctor show, from one consistent snapshot."""
        return read.status(self)

    def readings_total(self) -> int:
        """Rows ever written to this buffer (readings and failed polls), pruned ones included."""
        R = self.tables.Reading
        top = R.select(fn.MAX(R.seq)).scalar() or 0
        return max(top, schema.seq_floor(self.tables, self.meta, self.layout))

    def sync_rate(self) -> float | None:
        """Rows/s of the sync worker's last batch (None until it recorded one)."""
        return read.sync_rate(self)

    def corrupt_buffers(self) -> list[str]:
        """Where corrupt predecessors of this buffer were moved (oldest first)."""
        return read.corrupt_buffers(self)

    def newest(self, meter: str, good_only: bool = False) -> Latest | None:
        """`meter`'s newest row (with `good_only`, its newest reading that is not a failed
        poll), or None."""
        return read.newest(self, meter, good_only)

    def recent_polls(self, limit: int) -> list[Poll]:
        """The newest `limit` rows, newest first: (meter, measured_at, error)."""
        return read.recent_polls(self, limit)

    def newest_trusted_at(self) -> float | None:
        """measured_at of the newest reading stored with clock_ok (the clock guard's floor)."""
        return read.newest_trusted_at(self)

    def count_between(self, span: Span) -> int:
        """How many rows `span` selects."""
        return read.count_between(self, span)

    def between(self, span: Span, chunk: int = 5000) -> Iterator[list[Row]]:
        """The rows `span` selects, in seq order, `chunk` at a time: (measured_at, meter,
        clock_ok, error, *values in `value_columns` order)."""
        return read.between(self, span, chunk)

    def size_bytes(self) -> int:
        """Bytes in use: database pages (free ones excluded) plus the WAL file."""
        return space.size_bytes(self)

    def db_bytes(self) -> int:
        """Bytes of database pages in use (free pages excluded; the WAL not counted)."""
        return space.db_bytes(self)
