"""Room: the buffer within ``[buffer] max_mb`` and within the disk, and what is dropped
when there is none.

* `Space.store()` is how `edgelog run` commits readings: it checks the room first
  (pruning if needed), appends, and on a full disk makes room and retries. It says
  what happened in a `Stored`, so the caller only logs.
* `Space.housekeeping()` is one step of the minute's prune: sent rows older than
  ``keep_sent_days``, a range of seqs a step, then the ``max_mb`` bound.
* The bound counts the pages in use plus the WAL. Over it, the oldest *sent* rows
  go first, whatever their age; then, with every row unsent, ``when_full``
  decides: ``drop_oldest`` deletes the oldest unsent rows, ``drop_newest`` refuses
  new readings. Every reading dropped either way is added to ``dropped_total``.
* A write refused for lack of space (`BufferFull`): the *reserve* (a file of a
  WAL's worth of bytes held beside the buffer: without it SQLite could not even
  checkpoint, which needs the main file to grow) is given back, the WAL is
  checkpointed and restarted in place, `MAKE_ROOM_SHARE` of the rows are deleted
  (sent ones first) and the write is retried. From then on the pages in use may
  not grow past their size then (the *disk cap*), as if max_mb were reached,
  until the disk has room again; then the reserve is taken again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peewee import fn

from ..errors import BufferError
from .errors import BufferCorrupt, BufferFull, one_line
from .schema import DROPPED_TOTAL, SENT_UPTO, WAL_BYTES_MIN

if TYPE_CHECKING:
    from .store import Buffer, NewReading

log = logging.getLogger(__name__)

#: What to drop when the buffer is full of unsent rows (``[buffer] when_full``).
WHEN_FULL = ("drop_oldest", "drop_newest")
#: Seqs looked at per step of the time-based prune (one short transaction each).
PRUNE_CHUNK = 20_000
#: After a disk-full error, make_room() frees this share of the rows (sent ones first).
MAKE_ROOM_SHARE = 0.10
#: The reserve holds the WAL's bound plus this (the WAL frames of a prune).
RESERVE_EXTRA = 256 * 1024
#: While capped after a disk-full error, look this often for free space.
DISK_CHECK_EVERY_S = 1.0
#: A full-buffer episode is over after this long without one (the reserve is taken again).
QUIET_S = 60.0


@dataclass(frozen=True)
class Stored:
    """What `Space.store()` did with readings (or a housekeeping step found)."""

    stored: int = 0  # readings committed
    #: readings lost: new ones refused or not written, or old unsent ones deleted to
    #: make room; every one is counted in dropped_total
    dropped: int = 0
    #: the buffer was full or a write failed: what happened, for the log
    full: str | None = None
    #: the file is corrupt (the readings are lost): stop, the next start moves it aside
    corrupt: str | None = None


@dataclass(frozen=True)
class Shrunk:
    deleted: int  # rows deleted
    dropped: int  # of which unsent
    over: bool  # still over the limit (nothing more may be deleted)


# -- sizes -----------------------------------------------------------------------------


def db_bytes(buffer: Buffer) -> int:
    """Bytes of database pages in use (free pages excluded; the WAL not counted)."""
    db = buffer.db
    return (db.pragma("page_count") - db.pragma("freelist_count")) * db.pragma("page_size")


def wal_bytes(buffer: Buffer) -> int:
    try:
        return buffer.path.with_name(buffer.path.name + "-wal").stat().st_size
    except FileNotFoundError:
        return 0


def size_bytes(buffer: Buffer) -> int:
    """Bytes in use by the database (free pages excluded) plus the WAL file."""
    return db_bytes(buffer) + wal_bytes(buffer)


class Space:
    """Keeps one buffer within `max_bytes` and the disk (see the module docstring)."""

    def __init__(
        self,
        buffer: Buffer,
        max_bytes: int,
        when_full: str = "drop_oldest",
        clock: Callable[[], float] = time.monotonic,
    ):
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full must be one of {WHEN_FULL}, not {when_full!r}")
        self.buffer = buffer
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.clock = clock
        #: after a disk-full error: the pages in use may not grow past this
        self.disk_cap: int | None = None
        self._disk_checked = 0.0
        self._full_at: float | None = None

    # -- the policy ----------------------------------------------------------------------

    def store(self, readings: Sequence[NewReading]) -> Stored:
        """Commit `readings` in one transaction, making room per `when_full` if needed.
        Never raises for a full or failing buffer: the result says what was lost."""
        n = len(readings)
        now = self.clock()
        try:
            result = self._store(readings, now)
        except BufferCorrupt as exc:
            return Stored(corrupt=str(exc))
        except BufferError as exc:
            what = "reading" if n == 1 else f"{n} readings"
            result = Stored(dropped=self._drop(n), full=f"write failed, {what} lost: {exc}")
        if result.full:
            self._full_at = now
        elif self._full_at is not None and now - self._full_at >= QUIET_S:
            self._full_at = None
            self.keep_reserve()  # for the next time the disk fills up
        return result

    def _store(self, readings: Sequence[NewReading], now: float) -> Stored:
        n = len(readings)
        self._check_disk(now)
        dropped = 0
        try:
            room, dropped = self._room()
            if not room:
                return Stored(
                    dropped=self._drop(n),
                    full="full: max_mb or the disk, with every row unsent; new readings dropped "
                    "(when_full = drop_newest)",
                )
            self.buffer.append_many(readings)
        except BufferFull as exc:
            return self._disk_full(readings, exc, now, dropped)
        if dropped:
            return Stored(
                stored=n,
                dropped=dropped,
                full="full: max_mb or the disk, with every row unsent; dropping the oldest unsent "
                "readings (when_full = drop_oldest)",
            )
        return Stored(stored=n)

    def _disk_full(self, readings: Sequence[NewReading], exc: BufferFull, now: float, dropped: int) -> Stored:
        """The disk (not max_mb) is full: use the reserve, prune, retry once; from now on
        the buffer is capped at its size, as if max_mb were reached."""
        n = len(readings)
        try:
            dropped += self.make_room()
            self.disk_cap = db_bytes(self.buffer)
            self._disk_checked = now
            self.buffer.append_many(readings)
        except BufferFull:
            return Stored(
                dropped=dropped + self._drop(n), full=f"full: {exc}; readings dropped until there is room"
            )
        return Stored(
            stored=n,
            dropped=dropped,
            full=f"full: {exc}; made room, and the buffer stays at its size until the disk has room "
            f"again (when_full = {self.when_full})",
        )

    def _drop(self, n: int) -> int:
        """Count `n` readings that could not be stored: now if the buffer takes the write,
        else with the next write that succeeds."""
        self.buffer.count_dropped(n)
        return n

    def _check_disk(self, now: float) -> None:
        """While capped after a disk-full error: lift the cap once the disk has room again."""
        if self.disk_cap is None or now - self._disk_checked < DISK_CHECK_EVERY_S:
            return
        self._disk_checked = now
        try:
            free = self.disk_free()
        except OSError:
            return
        if free >= 2 * self.reserve_bytes():
            self.disk_cap = None
            self.keep_reserve()
            log.warning("buffer: the disk has room again (%d bytes free); the buffer may grow", free)

    def housekeeping(self, keep_sent_s: float, now: float, after: int = 0) -> tuple[int | None, Stored]:
        """One step of the prune: the sent rows older than `keep_sent_s` among a chunk of
        seqs; after the last step, the max_mb bound. Returns (the `after` of the next
        step, or None after the last, and what the bound dropped)."""
        _, after_next = self.prune_old_sent(keep_sent_s, now, after)
        if after_next is not None:
            return after_next, Stored()
        with one_line(self.buffer.path, "cannot prune"):
            shrunk = self._shrink(self.max_bytes)
        if not shrunk.dropped:
            return None, Stored()
        self._full_at = self.clock()
        mib = self.max_bytes / 1024 / 1024
        return None, Stored(
            dropped=shrunk.dropped,
            full=f"full: over max_mb = {mib:g}; dropped the oldest unsent readings (drop_oldest)",
        )

    # -- pruning -------------------------------------------------------------------------

    def prune(self, keep_sent_s: float, now: float | None = None) -> int:
        """Every step of the housekeeping at once (sent rows older than `keep_sent_s`,
        then the max_mb bound). Returns the number of rows deleted."""
        deleted, after = 0, 0
        while after is not None:
            n, after = self.prune_old_sent(keep_sent_s, now, after)
            deleted += n
        return deleted + self.fit()

    def prune_old_sent(
        self, keep_sent_s: float, now: float | None = None, after: int = 0, chunk: int = PRUNE_CHUNK
    ) -> tuple[int, int | None]:
        """One step of the time-based prune: delete the sent rows older than `keep_sent_s`
        among seqs (after, after + chunk], in one short transaction (a rowid range: the
        step costs the same however many rows the buffer keeps). Returns (rows deleted,
        the `after` of the next step, or None once every sent row was looked at)."""
        now = time.time() if now is None else now
        b = self.buffer
        R = b.tables.Reading
        with b.write("cannot prune"):
            position = b.meta.get_int(SENT_UPTO)
            first = R.select(fn.MIN(R.seq)).scalar() or 0
            after = max(after, first - 1)
            end = min(after + chunk, position)
            if end <= after:
                return 0, None
            old = (R.seq > after) & (R.seq <= end) & (R.measured_at < now - keep_sent_s)
            deleted = R.delete().where(old).execute()
        return deleted, (end if end < position else None)

    def fit(self) -> int:
        """While over max_bytes: delete the oldest sent rows, then (`drop_oldest`) the
        oldest unsent ones, counted in dropped_total. Returns the rows deleted."""
        with one_line(self.buffer.path, "cannot prune"):
            return self._shrink(self.max_bytes).deleted

    def has_room(self) -> bool:
        """Before an append: within max_bytes (after pruning if needed)? False only with
        `drop_newest` and a buffer full of unsent rows."""
        return self._room()[0]

    def _room(self) -> tuple[bool, int]:
        """(room for an append, unsent rows dropped to make it). With a disk cap, the pages
        in use are also kept within it, so the file need not grow."""
        dropped = 0
        with one_line(self.buffer.path, "cannot prune"):
            if self.disk_cap is not None and db_bytes(self.buffer) > self.disk_cap:
                shrunk = self._shrink(self.disk_cap, wal_counts=False)
                dropped += shrunk.dropped
                if shrunk.over:
                    return False, dropped
            if size_bytes(self.buffer) <= self.max_bytes:
                return True, dropped
            shrunk = self._shrink(self.max_bytes)
            return not shrunk.over, dropped + shrunk.dropped

    def _shrink(self, max_bytes: int, wal_counts: bool = True) -> Shrunk:
        """Delete the oldest rows (sent first) until within `max_bytes`."""
        b = self.buffer
        R = b.tables.Reading
        deleted = dropped = 0
        while True:
            if wal_counts:
                if size_bytes(b) <= max_bytes:
                    return Shrunk(deleted, dropped, False)
                # The WAL counts in the size but deleting rows does not shrink it:
                # checkpoint first, and delete only if the database itself is too big.
                b.db.pragma("wal_checkpoint", "TRUNCATE")
                wal = wal_bytes(b)
            else:
                wal = 0
            data = db_bytes(b)
            if data + wal <= max_bytes:
                return Shrunk(deleted, dropped, False)
            # A WAL a reader keeps from truncating: allow it up to a quarter of the limit
            # rather than delete rows that would not make it any smaller.
            target = max_bytes - min(wal, max_bytes // 4)
            if data <= target:
                return Shrunk(deleted, dropped, False)
            # Choose and delete under the write lock: the position the choice is based on
            # cannot move meanwhile (the sync worker takes the same lock to move it).
            with b.write("cannot prune"):
                position = b.meta.get_int(SENT_UPTO)
                first, last = R.select(fn.MIN(R.seq), fn.MAX(R.seq)).tuples().first() or (None, None)
                if first is None:
                    return Shrunk(deleted, dropped, True)
                # About as many rows as the excess is of the data (seqs are nearly contiguous).
                n = max(16, min(10_000, math.ceil((last - first + 1) * (data - target) / data * 1.1)))
                seqs = [
                    s for (s,) in R.select(R.seq).where(R.seq <= position).order_by(R.seq).limit(n).tuples()
                ]
                if not seqs and self.when_full == "drop_oldest":
                    seqs = [s for (s,) in R.select(R.seq).order_by(R.seq).limit(n).tuples()]
                if not seqs:
                    return Shrunk(deleted, dropped, True)
                unsent = sum(1 for s in seqs if s > position)
                R.delete().where(R.seq.in_(seqs)).execute()
                if unsent:
                    b.meta.set(DROPPED_TOTAL, str(b.meta.get_int(DROPPED_TOTAL) + unsent))
            if unsent:  # the caller logs it, once with a count
                log.debug("buffer over %d bytes: dropped %d oldest unsent rows", max_bytes, unsent)
            deleted += len(seqs)
            dropped += unsent

    # -- a full disk ---------------------------------------------------------------------

    @property
    def reserve_path(self) -> Path:
        return self.buffer.path.with_name(self.buffer.path.name + "-reserve")

    def reserve_bytes(self) -> int:
        """Enough for a checkpoint of a full WAL (the main file grows by at most the WAL)
        plus the WAL frames of a prune."""
        return self.buffer.wal_bytes_bound + RESERVE_EXTRA

    def keep_reserve(self) -> bool:
        """Hold reserve_bytes() of disk in a file beside the buffer. False: no room now."""
        size = self.reserve_bytes()
        try:
            if self.reserve_path.exists() and self.reserve_path.stat().st_size >= size:
                return True
            fd = os.open(self.reserve_path, os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)  # blocks really allocated, not a sparse file
            finally:
                os.close(fd)
            return True
        except OSError:
            with suppress(OSError):
                self.reserve_path.unlink(missing_ok=True)
            return False

    def disk_free(self) -> int:
        """Bytes free for us on the buffer's file system."""
        st = os.statvfs(self.buffer.path.parent)
        return st.f_bavail * st.f_frsize

    def make_room(self) -> int:
        """After a disk-full error: give the reserve back, checkpoint (the WAL is restarted
        in place, its blocks kept for the writes to come), keep the WAL small from now on,
        and free MAKE_ROOM_SHARE of the rows (sent first; unsent ones with drop_oldest).
        Returns the unsent rows dropped."""
        try:
            self.reserve_path.unlink(missing_ok=True)
        except OSError as exc:
            log.debug("cannot remove the reserve: %s", exc)
        db = self.buffer.db
        with one_line(self.buffer.path, "cannot make room"):
            db.pragma("wal_autocheckpoint", WAL_BYTES_MIN // db.pragma("page_size"))
            db.pragma("wal_checkpoint", "RESTART")
            target = int(db_bytes(self.buffer) * (1 - MAKE_ROOM_SHARE))
            return self._shrink(target, wal_counts=False).dropped
