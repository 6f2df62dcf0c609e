"""The SQLite buffer, in WAL mode, through peewee.

Durability guarantee
--------------------
`Buffer.append()` / `append_many()` return only after SQLite has committed the
readings *and* fsync()ed the write-ahead log (``journal_mode=WAL`` +
``synchronous=FULL``; with ``NORMAL`` a WAL commit is not synced until the next
checkpoint, so a power cut could lose the last second(s) of readings). In
`edgelog run` the buffer writer thread commits each reading, normally before the
next poll starts, so a power cut loses at most the reading in flight; see
`writer.py` for a disk slower than the interval. Every open runs
``PRAGMA quick_check``.

Identity
--------
A reading is identified by ``(buffer_id, seq)``: ``buffer_id`` is a random id
made when the buffer file is created, ``seq`` an ``AUTOINCREMENT`` rowid that
SQLite never reuses, even after rows are deleted. Neither depends on the wall
clock, so two readings taken while the clock restarted in the past stay two
readings.

Sync position
-------------
Every row with ``seq <= sent_upto`` has been committed by the destination, or
was refused by it for good and copied to the ``quarantine`` table (see the
sync worker). The position moves forward only after the destination confirmed
a batch, in a single small write (not one UPDATE per row: SD cards wear out).
``sync_hold`` (meta) is a seq the position must not pass yet: a row the
destination rejected while rows after it were written, until it is resolved.

Faults of the file itself
-------------------------
* A file that fails ``quick_check`` (or is not a database) raises
  `BufferCorrupt`; `Buffer.open_or_replace()` (used by ``edgelog run``) then
  renames it and its -wal/-shm aside with a timestamp, never deleting them, and
  starts a new buffer (a new ``buffer_id``, so identities stay unique).
* A write refused for lack of space raises `BufferFull`; `make_room()` gives back
  the *reserve* (a file of a few WAL's worth of bytes held next to the buffer:
  without it SQLite could not even checkpoint, which needs the main file to grow),
  checkpoints, and deletes sent rows, then unsent ones per the ``when_full`` policy.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from peewee import (
    BooleanField,
    DatabaseError,
    DoubleField,
    Model,
    SqliteDatabase,
    TextField,
    fn,
)
from playhouse.sqlite_ext import AutoIncrementField

from ..errors import BufferError
from .batch import UnsentReader

log = logging.getLogger(__name__)

#: The columns every reading has, in the order `unsent()` returns them,
#: followed by the register columns.
FIXED_COLUMNS = ("seq", "meter", "measured_at", "clock_ok", "error")

PRAGMAS = {
    "journal_mode": "wal",  # readers (sync, sync-status) never block the writer
    "synchronous": 2,  # FULL: fsync the WAL at every commit -> a committed reading survives a power cut
    "journal_size_limit": 8 * 1024 * 1024,  # truncate the WAL after checkpoints (bounded file)
    "cache_size": -4000,  # 4 MiB page cache: enough, and small on a Pi
    "temp_store": 2,  # MEMORY: temp b-trees never touch the SD card
}
BUSY_TIMEOUT_S = 10.0
#: Meta key: rows/s the sync worker achieved writing its last batch (read by sync-status).
SYNC_RATE_KEY = "sync_rate_rows_per_s"
#: What to drop when the buffer is full of unsent rows (``[buffer] when_full``).
WHEN_FULL = ("drop_oldest", "drop_newest")
#: Seqs looked at per step of the time-based prune (one short transaction each).
PRUNE_CHUNK = 20_000
#: After a disk-full error, make_room() frees this share of the rows (sent ones first).
MAKE_ROOM_SHARE = 0.10
#: WAL pages after which SQLite checkpoints: default 1000 (4 MiB), fewer for a small max_mb.
WAL_PAGES_MAX, WAL_PAGES_MIN = 1000, 16
#: The reserve file beside the buffer (see make_room) holds the WAL's bound plus this.
RESERVE_EXTRA = 256 * 1024

# SQLite primary result codes (the low byte of an extended code).
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26


class BufferCorrupt(BufferError):
    """The file fails its integrity check or is not an SQLite database at all."""


class BufferFull(BufferError):
    """A write was refused for lack of space (ENOSPC, or the file size limit)."""


def _sqlite_code(exc: BaseException) -> int | None:
    orig = getattr(exc, "orig", None) or exc  # peewee keeps sqlite3's exception as .orig
    code = getattr(orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _classify(path: Path, what: str, exc: BaseException) -> BufferError:
    """One-line BufferError of the right kind for an SQLite error.

    A commit refused for lack of space is rolled back by SQLite itself, and the
    ROLLBACK peewee then sends fails ("cannot rollback - no transaction is active"),
    hiding the cause: look down the chain of exceptions for it."""
    code, cause = None, exc
    seen: BaseException | None = exc
    while seen is not None:
        found = _sqlite_code(seen)
        if found in (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_FULL, _SQLITE_IOERR):
            code, cause = found, seen
            break
        seen = seen.__context__
    exc = cause
    message = f"buffer {path}: {what}{': ' if what else ''}{exc}"
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return BufferCorrupt(message)
    if code == _SQLITE_FULL or (code == _SQLITE_IOERR and "full" in str(exc).lower()):
        return BufferFull(message)
    return BufferError(message)


def corrupt_name(path: Path, now: float) -> Path:
    """Where a corrupt buffer goes: next to it, named with the UTC time, never over a file."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    for n in range(1, 1000):
        tag = f".corrupt-{stamp}" + (f"-{n}" if n > 1 else "")
        candidate = path.with_name(f"{path.stem}{tag}{path.suffix}")
        if not any(Path(f"{candidate}{x}").exists() for x in ("", "-wal", "-shm")):
            return candidate
    raise BufferError(f"buffer {path}: too many corrupt copies named {path.stem}.corrupt-{stamp}*")


class NewReading(NamedTuple):
    """A reading (or, with `error` set, a failed poll) to store."""

    meter: str
    measured_at: float
    values: dict[str, float | None] | None = None
    error: str | None = None
    clock_ok: bool = True


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
        self.path = Path(path)
        self._check = check
        if not create and not self.path.exists():
            raise BufferError(f"buffer {self.path}: no such file (has `edgelog run` started?)")
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BufferError(f"buffer {self.path}: cannot create directory: {exc.strerror}") from None
        pragmas = dict(PRAGMAS)
        self.wal_pages = WAL_PAGES_MAX
        if max_bytes is not None:
            # A WAL of at most ~1/16 of max_mb between checkpoints (4 MiB for big buffers).
            pages = max_bytes // 16 // 4096
            self.wal_pages = max(WAL_PAGES_MIN, min(WAL_PAGES_MAX, pages))
            pragmas["wal_autocheckpoint"] = self.wal_pages
        self.db = SqliteDatabase(str(self.path), pragmas=pragmas, timeout=BUSY_TIMEOUT_S)
        #: unsent rows this Buffer object deleted to stay within a limit (also in dropped_total)
        self.dropped_by_prune = 0
        try:
            self._open(list(columns), create)
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            # sqlite3's own error too: rows fetched from a cursor (quick_check on a
            # corrupt page) raise it unwrapped by peewee.
            self.db.close()
            raise _classify(self.path, "", exc) from None
        except BufferError:
            self.db.close()
            raise

    @classmethod
    def open_or_replace(
        cls,
        path: Path,
        columns: Iterable[str] = (),
        max_bytes: int | None = None,
        now: float | None = None,
    ) -> Buffer:
        """Open the buffer for `edgelog run`. A corrupt file is renamed aside (with its
        -wal and -shm) and a new buffer started, which remembers where the old one went."""
        columns = list(columns)
        path = Path(path)
        try:
            if path.exists():
                # Checked through a read-only connection: closing the last read-write one
                # would checkpoint the WAL into a corrupt file and delete it.
                cls.check_file(path)
            buffer = cls(path, columns, max_bytes=max_bytes, check=False)
            buffer.note_unnoted_corrupt()
            return buffer
        except BufferCorrupt as exc:
            aside = corrupt_name(path, time.time() if now is None else now)
            try:
                for ext in ("", "-wal", "-shm"):
                    if Path(f"{path}{ext}").exists():
                        Path(f"{path}{ext}").rename(f"{aside}{ext}")
            except OSError as err:
                raise BufferError(f"{exc}; cannot move it aside: {err.strerror}") from None
            log.error("%s; moved aside to %s (kept, never deleted); starting a new buffer", exc, aside)
            buffer = cls(path, columns, max_bytes=max_bytes)
            buffer.note_corrupt(str(aside))
            return buffer

    # -- opening -------------------------------------------------------------------

    @staticmethod
    def _verdict(path: Path, check: str) -> None:
        if check != "ok":
            # One line: the report is "*** in database main ***" then one line a problem.
            problems = [p for p in check.splitlines() if p and not p.startswith("***")] or [check]
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise BufferCorrupt(f"buffer {path}: quick_check failed: {problems[0]}{more}")

    @classmethod
    def check_file(cls, path: Path) -> None:
        """PRAGMA quick_check through a read-only connection, which changes nothing in the
        file or its WAL; raises BufferCorrupt (or BufferError if it cannot be read)."""
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
            try:
                cls._verdict(path, conn.execute("PRAGMA quick_check").fetchone()[0])
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise _classify(path, "", exc) from None

    def _open(self, columns: list[str], create: bool) -> None:
        self.db.connect(reuse_if_open=True)
        if self._check:
            self._verdict(self.path, self.db.execute_sql("PRAGMA quick_check").fetchone()[0])
        # Models are made per buffer (not module-level and re-bound) so that the
        # poll and sync threads never race on which database a model points to.
        self.KV = type(
            "KV",
            (Model,),
            {
                "key": TextField(primary_key=True),
                "value": TextField(null=True),
                "Meta": type("Meta", (), {"database": self.db, "table_name": "meta"}),
            },
        )
        if create:
            self.db.create_tables([self.KV])
        existing = self._existing_value_columns()
        self.value_columns: list[str] = existing + [c for c in columns if c not in existing]
        self.Reading = self._model(self.value_columns)
        if create:
            with self.db.atomic():
                if not self.db.table_exists("readings"):
                    self.db.create_tables([self.Reading])
                else:
                    for name in self.value_columns:
                        if name not in existing:  # the config gained a register
                            self.db.execute_sql(f'ALTER TABLE readings ADD COLUMN "{name}" REAL')
                if self.get_meta("buffer_id") is None:
                    self.set_meta("buffer_id", secrets.token_hex(8))
                    self.set_meta("created_at", repr(time.time()))
        if self.get_meta("buffer_id") is None:
            raise BufferError(f"buffer {self.path}: not an edgelog buffer (no buffer_id)")
        self.buffer_id: str = self.get_meta("buffer_id") or ""
        self._reader = UnsentReader(self.path, [*FIXED_COLUMNS, *self.value_columns], BUSY_TIMEOUT_S)

    def _existing_value_columns(self) -> list[str]:
        if not self.db.table_exists("readings"):
            return []
        return [c.name for c in self.db.get_columns("readings") if c.name not in FIXED_COLUMNS]

    def _model(self, value_columns: Sequence[str]) -> type[Model]:
        attrs: dict[str, Any] = {
            "seq": AutoIncrementField(),
            "meter": TextField(),
            "measured_at": DoubleField(),
            "clock_ok": BooleanField(default=True),
            "error": TextField(null=True),
            "Meta": type("Meta", (), {"database": self.db, "table_name": "readings"}),
        }
        for i, name in enumerate(value_columns):
            # Attribute names are positional so a register called e.g. "save" cannot
            # shadow a Model method; the SQL column keeps the register's name.
            attrs[f"v{i}"] = DoubleField(null=True, column_name=name)
        return type("Reading", (Model,), attrs)

    def close(self) -> None:
        if hasattr(self, "_reader"):
            self._reader.close()
        self.db.close()

    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn SQLite errors of a write into one-line BufferError (BufferFull, BufferCorrupt)."""
        try:
            yield
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            raise _classify(self.path, what, exc) from None

    # -- meta ----------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.KV.get_or_none(self.KV.key == key)
        return row.value if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        self.KV.replace(key=key, value=value).execute()

    def _meta_float(self, key: str) -> float | None:
        value = self.get_meta(key)
        return float(value) if value is not None else None

    # -- writing readings ----------------------------------------------------------

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
        """Commit readings in one transaction (one fsync), in order; return their seqs."""
        fields = self.Reading._meta.columns  # column name -> field
        rows: list[dict[str, Any]] = []
        for r in readings:
            row: dict[str, Any] = {
                "meter": r.meter,
                "measured_at": r.measured_at,
                "clock_ok": r.clock_ok,
                "error": r.error,
            }
            for name, value in (r.values or {}).items():
                row[fields[name].name] = value
            rows.append(row)
        with self._writing("cannot store reading"), self.db.atomic():
            return [self.Reading.insert(**row).execute() for row in rows]

    # -- the sync position ---------------------------------------------------------

    @property
    def sent_upto(self) -> int:
        return int(self.get_meta("sent_upto") or 0)

    def unsent(self, limit: int, after: int | None = None) -> list[tuple[Any, ...]]:
        """The oldest unsent rows: FIXED_COLUMNS then `value_columns`, ordered by seq."""
        position = self.sent_upto if after is None else after
        # batch.py: tuples built by the sqlite3 driver; in position order, the next batch read ahead
        return self._reader.read(position, limit, read_ahead=after is None)

    def mark_sent(
        self,
        upto_seq: int,
        at: float | None = None,
        rate: float | None = None,
        batch: tuple[int, int] | None = None,
    ) -> None:
        """Move the position forward (never back) after the destination committed; `rate`
        (rows/s of that batch, for sync-status) is kept in the same write.

        `batch` = (first seq, row count) of the rows just committed: any of them pruned as
        "dropped" while they were in flight reached the destination after all, and are
        taken off dropped_total again (it counts readings lost, nothing else)."""
        with self._writing("cannot record the sync position"), self.db.atomic("IMMEDIATE"):
            # read-then-write: take the write lock first
            if upto_seq > self.sent_upto:
                self.set_meta("sent_upto", str(upto_seq))
            self.set_meta("last_sync_at", repr(at if at is not None else time.time()))
            if rate is not None:
                self.set_meta(SYNC_RATE_KEY, f"{rate:.1f}")
            if batch is not None:
                R = self.Reading
                first, n = batch
                gone = n - R.select().where((R.seq >= first) & (R.seq <= upto_seq)).count()
                if gone > 0:
                    total = int(self.get_meta("dropped_total") or 0)
                    self.set_meta("dropped_total", str(max(0, total - gone)))

    @property
    def hold(self) -> int | None:
        """A seq the position must not pass (a rejected row not yet resolved), or None."""
        value = self.get_meta("sync_hold")
        return int(value) if value else None

    def set_hold(self, seq: int | None) -> None:
        if seq != self.hold:
            with self._writing("cannot record the sync hold"):
                self.set_meta("sync_hold", None if seq is None else str(seq))

    def record_sync_error(self, message: str | None, at: float | None = None) -> None:
        """Remember the last sync error (None clears it), for sync-status."""
        if message == self.get_meta("last_error"):
            return  # no write for an unchanged state: SD cards wear out
        with self._writing("cannot record the sync error"), self.db.atomic():
            self.set_meta("last_error", message)
            self.set_meta("last_error_at", repr(at if at is not None else time.time()))

    # -- quarantine: rows the destination refuses for good ---------------------------

    def _ensure_quarantine(self) -> None:
        self.db.execute_sql(
            "CREATE TABLE IF NOT EXISTS quarantine (seq INTEGER PRIMARY KEY, row TEXT NOT NULL, "
            "reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, quarantined_at REAL)"
        )

    def _row_columns(self) -> list[str]:
        return [*FIXED_COLUMNS, *self.value_columns]

    def quarantine(
        self,
        entries: Sequence[tuple[Sequence[Any], str]],
        upto: int,
        hold: int | None,
        at: float | None = None,
    ) -> None:
        """In one transaction: copy each (row, reason) to the quarantine table, move the
        position to `upto` (never back) and set the hold."""
        at = time.time() if at is None else at
        names = self._row_columns()
        with self._writing("cannot quarantine rows"), self.db.atomic("IMMEDIATE"):
            self._ensure_quarantine()
            for row, reason in entries:
                self.db.execute_sql(
                    "INSERT OR REPLACE INTO quarantine (seq, row, reason, attempts, quarantined_at) "
                    "VALUES (?, ?, ?, 0, ?)",
                    (row[0], json.dumps(dict(zip(names, row, strict=True))), reason, at),
                )
            if entries:
                total = int(self.get_meta("quarantined_total") or 0) + len(entries)
                self.set_meta("quarantined_total", str(total))
            if upto > self.sent_upto:
                self.set_meta("sent_upto", str(upto))
                self.set_meta("last_sync_at", repr(at))
            self.set_meta("sync_hold", None if hold is None else str(hold))

    def quarantined(self, limit: int, after: int = 0) -> list[tuple[tuple[Any, ...], str]]:
        """Quarantined (row, reason), by seq; rows as `unsent()` gives them (today's columns)."""
        if not self.db.table_exists("quarantine"):
            return []
        names = self._row_columns()
        cursor = self.db.execute_sql(
            "SELECT row, reason FROM quarantine WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        )
        out = []
        for text, reason in cursor.fetchall():
            stored = json.loads(text)
            out.append((tuple(stored.get(name) for name in names), reason))
        return out

    def release_quarantined(self, seqs: Sequence[int]) -> None:
        """Forget quarantined rows the destination has now committed."""
        with self._writing("cannot update the quarantine"), self.db.atomic():
            for seq in seqs:
                self.db.execute_sql("DELETE FROM quarantine WHERE seq = ?", (seq,))

    def requarantine(self, entries: Sequence[tuple[int, str]]) -> None:
        """Record a new refusal (reason) of rows still in quarantine."""
        with self._writing("cannot update the quarantine"), self.db.atomic():
            for seq, reason in entries:
                self.db.execute_sql(
                    "UPDATE quarantine SET reason = ?, attempts = attempts + 1 WHERE seq = ?", (reason, seq)
                )

    def quarantined_count(self) -> int:
        if not self.db.table_exists("quarantine"):
            return 0
        return int(self.db.execute_sql("SELECT COUNT(*) FROM quarantine").fetchone()[0])

    # -- corrupt predecessors, dropped readings -------------------------------------

    def note_corrupt(self, moved_to: str) -> None:
        """Remember a corrupt buffer moved aside at start (shown by sync-status)."""
        paths = [*self.corrupt_buffers(), moved_to]
        with self._writing("cannot record the corrupt buffer"):
            self.set_meta("corrupt_buffers", json.dumps(paths))

    def note_unnoted_corrupt(self) -> None:
        """Note the corrupt copies beside the buffer that it does not know of: a power cut
        between a move aside and its note keeps the file, not the note."""
        known = set(self.corrupt_buffers())
        for aside in sorted(self.path.parent.glob(f"{self.path.stem}.corrupt-*{self.path.suffix}")):
            if str(aside) not in known:
                log.error("buffer %s: a corrupt buffer was moved aside to %s (kept)", self.path, aside)
                self.note_corrupt(str(aside))

    def corrupt_buffers(self) -> list[str]:
        return list(json.loads(self.get_meta("corrupt_buffers") or "[]"))

    def count_dropped(self, n: int) -> None:
        """Add readings that could not be stored (buffer full) to dropped_total."""
        if n:
            with self._writing("cannot count dropped readings"), self.db.atomic("IMMEDIATE"):
                self.set_meta("dropped_total", str(int(self.get_meta("dropped_total") or 0) + n))

    def newest_trusted_at(self) -> float | None:
        """measured_at of the newest reading stored with clock_ok (the clock guard's floor)."""
        R = self.Reading
        return R.select(R.measured_at).where(R.clock_ok).order_by(R.seq.desc()).limit(1).scalar()

    # -- reading the state ---------------------------------------------------------

    def readings_total(self) -> int:
        """Rows ever written to this buffer (readings and failed polls), pruned ones included."""
        row = self.db.execute_sql("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        return int(row[0]) if row else 0

    def db_bytes(self) -> int:
        """Bytes of database pages in use (free pages excluded; the WAL not counted)."""
        page_size = self.db.execute_sql("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute_sql("PRAGMA page_count").fetchone()[0]
        free = self.db.execute_sql("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * page_size

    def wal_bytes(self) -> int:
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            return 0

    def size_bytes(self) -> int:
        """Bytes in use by the database (free pages excluded) plus the WAL file."""
        return self.db_bytes() + self.wal_bytes()

    def status(self) -> BufferStatus:
        R = self.Reading
        with self.db.atomic():  # one consistent snapshot
            position = self.sent_upto
            unsent = R.select().where(R.seq > position)
            first = unsent.order_by(R.seq).limit(1).tuples().first()
            last = R.select(fn.MAX(R.measured_at)).where(R.error.is_null()).scalar()
            return BufferStatus(
                path=str(self.path),
                buffer_id=self.buffer_id,
                unsent=unsent.count(),
                oldest_unsent_at=first[2] if first else None,
                readings_total=self.readings_total(),
                failed_polls_unsent=unsent.where(R.error.is_null(False)).count(),
                last_reading_at=last,
                sent_upto=position,
                last_sync_at=self._meta_float("last_sync_at"),
                last_error=self.get_meta("last_error"),
                last_error_at=self._meta_float("last_error_at"),
                dropped_total=int(self.get_meta("dropped_total") or 0),
                size_bytes=self.size_bytes(),
                quarantined=self.quarantined_count(),
                corrupt_buffers=tuple(self.corrupt_buffers()),
            )

    # -- housekeeping --------------------------------------------------------------

    def prune(
        self,
        keep_sent_s: float,
        max_bytes: int,
        now: float | None = None,
        when_full: str = "drop_oldest",
    ) -> int:
        """Delete sent rows older than `keep_sent_s`; then, while over `max_bytes`, the
        oldest sent rows, and as a last resort (`when_full = "drop_oldest"`) the oldest
        unsent rows, counted in `dropped_total`. Returns the number of rows deleted."""
        deleted, after = 0, 0
        while after is not None:
            n, after = self.prune_old_sent(keep_sent_s, now, after)
            deleted += n
        return deleted + self.fit(max_bytes, when_full)

    def prune_old_sent(
        self, keep_sent_s: float, now: float | None = None, after: int = 0, chunk: int = PRUNE_CHUNK
    ) -> tuple[int, int | None]:
        """One step of the time-based prune: delete the sent rows older than `keep_sent_s`
        among seqs (after, after + chunk], in one short transaction (a rowid range: the
        step costs the same however many rows the buffer keeps). Returns (rows deleted,
        the `after` of the next step, or None once every sent row was looked at)."""
        now = time.time() if now is None else now
        R = self.Reading
        with self._writing("cannot prune"), self.db.atomic():
            position = self.sent_upto
            first = R.select(fn.MIN(R.seq)).scalar() or 0
            after = max(after, first - 1)
            end = min(after + chunk, position)
            if end <= after:
                return 0, None
            old = (R.seq > after) & (R.seq <= end) & (R.measured_at < now - keep_sent_s)
            deleted = R.delete().where(old).execute()
        return deleted, (end if end < position else None)

    def fit(self, max_bytes: int, when_full: str = "drop_oldest") -> int:
        """While over `max_bytes`: delete the oldest sent rows, then (`drop_oldest`) the
        oldest unsent ones, counted in `dropped_total`. Returns the rows deleted."""
        with self._writing("cannot prune"):
            return self._shrink(max_bytes, when_full)[0]

    def has_room(self, max_bytes: int, when_full: str = "drop_oldest", disk_cap: int | None = None) -> bool:
        """Before an append: within `max_bytes` (after pruning if needed)? False only with
        `when_full = "drop_newest"` and a buffer full of unsent rows. `disk_cap` (after a
        disk-full error) also caps the pages in use, so the file need not grow."""
        with self._writing("cannot prune"):
            capped = disk_cap is not None and self.db_bytes() > disk_cap
            if capped and self._shrink(disk_cap, when_full, wal_counts=False)[1]:
                return False
            if self.size_bytes() <= max_bytes:
                return True
            return not self._shrink(max_bytes, when_full)[1]

    def disk_free(self) -> int:
        """Bytes free for us on the buffer's file system."""
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize

    # -- a full disk -----------------------------------------------------------------

    @property
    def reserve_path(self) -> Path:
        return self.path.with_name(self.path.name + "-reserve")

    def reserve_bytes(self) -> int:
        """Enough for a checkpoint of a full WAL (the main file grows by at most the WAL)
        plus the WAL frames of a prune."""
        return self.wal_pages * 4096 + RESERVE_EXTRA

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

    def make_room(self, when_full: str = "drop_oldest") -> int:
        """After a disk-full error: give the reserve back, checkpoint (the WAL is restarted
        in place, its blocks kept for the writes to come), keep the WAL small from now on,
        and free MAKE_ROOM_SHARE of the rows (sent first; unsent ones with drop_oldest)."""
        try:
            self.reserve_path.unlink(missing_ok=True)
        except OSError as exc:
            log.debug("cannot remove the reserve: %s", exc)
        with self._writing("cannot make room"):
            self.db.execute_sql(f"PRAGMA wal_autocheckpoint = {WAL_PAGES_MIN}")
            self.db.execute_sql("PRAGMA wal_checkpoint(RESTART)")
            target = int(self.db_bytes() * (1 - MAKE_ROOM_SHARE))
            return self._shrink(target, when_full, wal_counts=False)[0]

    def _shrink(self, max_bytes: int, when_full: str, wal_counts: bool = True) -> tuple[int, bool]:
        """Delete the oldest rows (sent first) until within `max_bytes`.
        Returns (rows deleted, still over the limit)."""
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full must be one of {WHEN_FULL}, not {when_full!r}")
        R = self.Reading
        deleted = 0
        while True:
            if wal_counts:
                if self.size_bytes() <= max_bytes:
                    return deleted, False
                # The WAL counts in the size but deleting rows does not shrink it:
                # checkpoint first, and delete only if the database itself is too big.
                self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                wal = self.wal_bytes()
            else:
                wal = 0
            data = self.db_bytes()
            if data + wal <= max_bytes:
                return deleted, False
            # A WAL a reader keeps from truncating: allow it up to a quarter of the limit
            # rather than delete rows that would not make it any smaller.
            target = max_bytes - min(wal, max_bytes // 4)
            if data <= target:
                return deleted, False
            # Choose and delete under the write lock: the position the choice is based on
            # cannot move meanwhile (the sync worker takes the same lock to move it).
            with self.db.atomic("IMMEDIATE"):
                position = self.sent_upto
                first, last = R.select(fn.MIN(R.seq), fn.MAX(R.seq)).tuples().first() or (None, None)
                if first is None:
                    return deleted, True
                # About as many rows as the excess is of the data (seqs are nearly contiguous).
                n = max(16, min(10_000, math.ceil((last - first + 1) * (data - target) / data * 1.1)))
                sent = R.select(R.seq).where(R.seq <= position).order_by(R.seq).limit(n)
                seqs = [s for (s,) in sent.tuples()]
                if not seqs and when_full == "drop_oldest":
                    seqs = [s for (s,) in R.select(R.seq).order_by(R.seq).limit(n).tuples()]
                if not seqs:
                    return deleted, True
                dropped = [s for s in seqs if s > position]
                R.delete().where(R.seq.in_(seqs)).execute()
                if dropped:
                    total = int(self.get_meta("dropped_total") or 0) + len(dropped)
                    self.set_meta("dropped_total", str(total))
            if dropped:  # the service logs it, once with a count (SpaceLog)
                self.dropped_by_prune += len(dropped)
                log.debug("buffer over %d bytes: dropped %d oldest unsent rows", max_bytes, len(dropped))
            deleted += len(seqs)
