"""The SQLite buffer, in WAL mode, through peewee.

Durability guarantee
--------------------
`Buffer.append()` returns only after SQLite has committed the reading *and*
fsync()ed the write-ahead log (``journal_mode=WAL`` + ``synchronous=FULL``;
with ``NORMAL`` a WAL commit is not synced until the next checkpoint, so a power
cut could lose the last second(s) of readings). The poll loop appends each
reading before it schedules the next poll, so a power cut loses at most the
reading in flight. Every open runs ``PRAGMA quick_check``.

Identity
--------
A reading is identified by ``(buffer_id, seq)``: ``buffer_id`` is a random id
made when the buffer file is created, ``seq`` an ``AUTOINCREMENT`` rowid that
SQLite never reuses, even after rows are deleted. Neither depends on the wall
clock, so two readings taken while the clock restarted in the past stay two
readings.

Sync position
-------------
Every row with ``seq <= sent_upto`` has been committed by the destination.
The position moves forward only after the destination confirmed a batch, in a
single small write (not one UPDATE per row: SD cards wear out).
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class Buffer:
    """The readings waiting to be forwarded (and, for a while, those already sent)."""

    def __init__(self, path: Path, columns: Iterable[str] = (), create: bool = True):
        self.path = Path(path)
        if not create and not self.path.exists():
            raise BufferError(f"buffer {self.path}: no such file (has `edgelog run` started?)")
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BufferError(f"buffer {self.path}: cannot create directory: {exc.strerror}") from None
        self.db = SqliteDatabase(str(self.path), pragmas=PRAGMAS, timeout=BUSY_TIMEOUT_S)
        try:
            self._open(list(columns), create)
        except (DatabaseError, sqlite3.DatabaseError) as exc:
            # sqlite3's own error too: rows fetched from a cursor (quick_check on a
            # corrupt page) raise it unwrapped by peewee.
            self.db.close()
            raise BufferError(f"buffer {self.path}: {exc}") from None
        except BufferError:
            self.db.close()
            raise

    # -- opening -------------------------------------------------------------------

    def _open(self, columns: list[str], create: bool) -> None:
        self.db.connect(reuse_if_open=True)
        check = self.db.execute_sql("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            # One line: the report is "*** in database main ***" then one line a problem.
            problems = [p for p in check.splitlines() if p and not p.startswith("***")] or [check]
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise BufferError(f"buffer {self.path}: quick_check failed: {problems[0]}{more}")
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
        self.db.close()

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
        row: dict[str, Any] = {
            "meter": meter,
            "measured_at": measured_at,
            "clock_ok": clock_ok,
            "error": error,
        }
        fields = self.Reading._meta.columns  # column name -> field
        for name, value in (values or {}).items():
            row[fields[name].name] = value
        try:
            with self.db.atomic():
                return self.Reading.insert(**row).execute()
        except DatabaseError as exc:
            raise BufferError(f"buffer {self.path}: cannot store reading: {exc}") from None

    # -- the sync position ---------------------------------------------------------

    @property
    def sent_upto(self) -> int:
        return int(self.get_meta("sent_upto") or 0)

    def unsent(self, limit: int, after: int | None = None) -> list[tuple[Any, ...]]:
        """The oldest unsent rows: FIXED_COLUMNS then `value_columns`, ordered by seq."""
        position = self.sent_upto if after is None else after
        R = self.Reading
        return list(R.select().where(R.seq > position).order_by(R.seq).limit(limit).tuples())

    def mark_sent(self, upto_seq: int, at: float | None = None) -> None:
        """Move the position forward (never back) after the destination committed."""
        with self.db.atomic("IMMEDIATE"):  # read-then-write: take the write lock first
            if upto_seq > self.sent_upto:
                self.set_meta("sent_upto", str(upto_seq))
            self.set_meta("last_sync_at", repr(at if at is not None else time.time()))

    def record_sync_error(self, message: str | None, at: float | None = None) -> None:
        """Remember the last sync error (None clears it), for sync-status."""
        if message == self.get_meta("last_error"):
            return  # no write for an unchanged state: SD cards wear out
        with self.db.atomic():
            self.set_meta("last_error", message)
            self.set_meta("last_error_at", repr(at if at is not None else time.time()))

    # -- reading the state ---------------------------------------------------------

    def readings_total(self) -> int:
        """Rows ever written to this buffer (readings and failed polls), pruned ones included."""
        row = self.db.execute_sql("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        return int(row[0]) if row else 0

    def size_bytes(self) -> int:
        """Bytes in use by the database (free pages excluded) plus the WAL file."""
        page_size = self.db.execute_sql("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute_sql("PRAGMA page_count").fetchone()[0]
        free = self.db.execute_sql("PRAGMA freelist_count").fetchone()[0]
        wal = self.path.with_name(self.path.name + "-wal")
        wal_size = wal.stat().st_size if wal.exists() else 0
        return (pages - free) * page_size + wal_size

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
            )

    # -- housekeeping --------------------------------------------------------------

    def prune(self, keep_sent_s: float, max_bytes: int, now: float | None = None) -> int:
        """Delete sent rows older than `keep_sent_s`; then, while over `max_bytes`,
        the oldest sent rows, and as a last resort the oldest unsent rows (counted
        in `dropped_total`). Returns the number of rows deleted."""
        now = time.time() if now is None else now
        R = self.Reading
        position = self.sent_upto
        deleted = R.delete().where((R.seq <= position) & (R.measured_at < now - keep_sent_s)).execute()
        while self.size_bytes() > max_bytes:
            # The WAL counts in size_bytes but deleting rows does not shrink it:
            # checkpoint first, and delete only if the database itself is too big.
            self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            if self.size_bytes() <= max_bytes:
                break
            # Sent rows first; unsent ones only when no sent row is left.
            oldest_sent = R.select(R.seq).where(R.seq <= position).order_by(R.seq).limit(1000)
            seqs = [s for (s,) in oldest_sent.tuples()]
            if not seqs:
                seqs = [s for (s,) in R.select(R.seq).order_by(R.seq).limit(1000).tuples()]
            if not seqs:
                break
            dropped = [s for s in seqs if s > position]
            with self.db.atomic():
                R.delete().where(R.seq.in_(seqs)).execute()
                if dropped:
                    total = int(self.get_meta("dropped_total") or 0) + len(dropped)
                    self.set_meta("dropped_total", str(total))
            if dropped:
                log.warning(
                    "buffer over %d bytes: dropped %d oldest unsent readings",
                    max_bytes,
                    len(dropped),
                )
            deleted += len(seqs)
        return deleted
