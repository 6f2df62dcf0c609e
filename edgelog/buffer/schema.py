"""The buffer file's layout: pragmas, tables, meta, the seq counter, and older files
brought up to date.

Layout 2
--------
* ``readings``: one row per poll: ``seq INTEGER PRIMARY KEY`` (the rowid), ``meter``,
  ``measured_at``, ``clock_ok``, ``error``, then one REAL column per register (a
  register added to the config adds a column; none is ever removed).
* ``meta``: text values by key, ``WITHOUT ROWID`` (one b-tree, so changing a value
  writes one page, not a table page and an index page).
* ``quarantine``: rows the destination refused for good (see `position.py`).
* the trigger ``readings_top_deleted`` (the seq counter's floor, below).

Pages are `PAGE_SIZE` (512) bytes: a commit of one reading writes one WAL frame of
536 bytes (two rows fit a page; every other commit also writes the new page's parent
and page 1), where 4 KiB pages wrote a 4,120-byte frame that always straddles two
file-system pages. docs/performance.md has the bytes written per reading.

The seq counter
---------------
A reading's identity is ``(buffer_id, seq)``, so a seq is never given twice, not
even after a crash. The next seq is one more than the larger of ``MAX(seq)`` and
the meta value ``seq_floor``; whenever the newest row is deleted (a prune of every
sent row, a full buffer dropping everything, anyone's DELETE), the trigger records
its seq as the floor in the same transaction. SQLite's AUTOINCREMENT does the same
by rewriting the ``sqlite_sequence`` page at every insert: a second WAL frame per
commit, which is what layout 1 paid.

Layout 1 (edgelog before layout 2, no ``layout_version`` in meta)
-----------------------------------------------------------------
``seq`` AUTOINCREMENT, ``meta`` with a rowid and an index, 4 KiB pages. `migrate()`
converts it in one transaction when `edgelog run` opens it: the AUTOINCREMENT
keyword is taken out of the table's definition (SQLite's documented procedure for
schema changes that leave the stored rows as they are: ``writable_schema``, see
https://sqlite.org/lang_altertable.html#otheralter), so no row is copied however
big the buffer; ``sqlite_sequence``'s value becomes ``seq_floor``; ``meta`` is
copied into a WITHOUT ROWID table. The page size stays (changing it rewrites the
whole file). Readers (sync-status, tail, export) read either layout and change
nothing; if the conversion fails (a full disk) the buffer keeps working in layout
1 and the next start tries again.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from peewee import (
    BooleanField,
    DoubleField,
    IntegerField,
    Model,
    SqliteDatabase,
    TextField,
)
from playhouse.migrate import SqliteMigrator, migrate

from ..errors import BufferError

log = logging.getLogger(__name__)

#: The columns every reading has, in the order `unsent()` returns them,
#: followed by the register columns.
FIXED_COLUMNS = ("seq", "meter", "measured_at", "clock_ok", "error")
#: The layout this version writes (meta ``layout_version``; absent = 1).
LAYOUT = 2
#: Bytes per page of a new buffer file.
PAGE_SIZE = 512

PRAGMAS = {
    "page_size": PAGE_SIZE,  # only takes effect on a new, empty file: hence first
    "journal_mode": "wal",  # readers (sync, sync-status) never block the writer
    "synchronous": 2,  # FULL: fsync the WAL at every commit -> a committed reading survives a power cut
    "journal_size_limit": 8 * 1024 * 1024,  # truncate the WAL after checkpoints (bounded file)
    "cache_size": -4000,  # 4 MiB page cache: enough, and small on a Pi
    "temp_store": 2,  # MEMORY: temp b-trees never touch the SD card
}
BUSY_TIMEOUT_S = 10.0
#: The WAL between two checkpoints: 1/16 of max_mb, within these bounds. A large WAL
#: means each page reaches the database file once (a checkpoint copies the newest
#: version of each page in the WAL), not once per few commits.
WAL_BYTES_MAX, WAL_BYTES_MIN = 4 * 1024 * 1024, 64 * 1024

# Meta keys.
BUFFER_ID = "buffer_id"
CREATED_AT = "created_at"
LAYOUT_VERSION = "layout_version"
SEQ_FLOOR = "seq_floor"
SENT_UPTO = "sent_upto"
LAST_SYNC_AT = "last_sync_at"
#: rows/s the sync worker achieved writing its last batch (shown by sync-status)
SYNC_RATE = "sync_rate_rows_per_s"
SYNC_HOLD = "sync_hold"
LAST_ERROR = "last_error"
LAST_ERROR_AT = "last_error_at"
DROPPED_TOTAL = "dropped_total"
QUARANTINED_TOTAL = "quarantined_total"
CORRUPT_BUFFERS = "corrupt_buffers"

#: The seq counter's floor (see the module docstring). NOT EXISTS is a seek to the
#: end of the rowid b-tree: about half the cost of a row's deletion.
TOP_DELETED_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS readings_top_deleted AFTER DELETE ON readings
WHEN NOT EXISTS (SELECT 1 FROM readings WHERE seq > OLD.seq)
BEGIN
    INSERT INTO meta (key, value) VALUES ('seq_floor', OLD.seq)
    ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER));
END
"""


def wal_bytes_bound(max_bytes: int | None) -> int:
    """How big the WAL may grow between two checkpoints, for a buffer of `max_bytes`."""
    if max_bytes is None:
        return WAL_BYTES_MAX
    return max(WAL_BYTES_MIN, min(WAL_BYTES_MAX, max_bytes // 16))


class Tables:
    """The peewee models of one buffer file, bound to its database. Made per buffer
    (not module-level and re-bound) so that threads never race on which database a
    model points to."""

    def __init__(self, db: SqliteDatabase, value_columns: Sequence[str]):
        self.db = db
        self.value_columns = list(value_columns)
        self.Reading = self._reading_model()

        class KV(Model):
            key = TextField(primary_key=True)
            value = TextField(null=True)

            class Meta:
                database = db
                table_name = "meta"
                without_rowid = True

        class Quarantined(Model):
            seq = IntegerField(primary_key=True)
            row = TextField()  # the row as JSON: {column: value}
            reason = TextField(null=True)
            attempts = IntegerField(default=0)
            quarantined_at = DoubleField(null=True)

            class Meta:
                database = db
                table_name = "quarantine"

        class SqliteSequence(Model):  # layout 1's AUTOINCREMENT counter
            name = TextField()
            seq = IntegerField()

            class Meta:
                database = db
                table_name = "sqlite_sequence"
                primary_key = False

        class SqliteSchema(Model):
            type = TextField()
            name = TextField()
            sql = TextField(null=True)

            class Meta:
                database = db
                table_name = "sqlite_master"
                primary_key = False

        self.KV, self.Quarantined = KV, Quarantined
        self.SqliteSequence, self.SqliteSchema = SqliteSequence, SqliteSchema

    def _reading_model(self) -> type[Model]:
        db = self.db

        class Reading(Model):
            seq = IntegerField(primary_key=True)
            meter = TextField()
            measured_at = DoubleField()
            clock_ok = BooleanField(default=True)
            error = TextField(null=True)

            class Meta:
                database = db
                table_name = "readings"

        for i, name in enumerate(self.value_columns):
            # Attribute names are positional so a register called e.g. "save" cannot
            # shadow a Model method; the SQL column keeps the register's name.
            Reading._meta.add_field(f"v{i}", DoubleField(null=True, column_name=name))
        return Reading

    def values(self) -> list[Any]:
        """The register fields of Reading, in column order."""
        return [getattr(self.Reading, f"v{i}") for i in range(len(self.value_columns))]


class MetaTable:
    """The meta table: a text value (or NULL) per key."""

    def __init__(self, tables: Tables):
        self.KV = tables.KV

    def get(self, key: str) -> str | None:
        row = self.KV.get_or_none(self.KV.key == key)
        return row.value if row else None

    def set(self, key: str, value: str | None) -> None:
        self.KV.replace(key=key, value=value).execute()

    def get_int(self, key: str) -> int:
        return int(self.get(key) or 0)

    def get_float(self, key: str) -> float | None:
        value = self.get(key)
        return float(value) if value is not None else None


# -- opening ---------------------------------------------------------------------------


def value_columns_of(db: SqliteDatabase) -> list[str]:
    """The register columns of an existing readings table, in their order."""
    if not db.table_exists("readings"):
        return []
    return [c.name for c in db.get_columns("readings") if c.name not in FIXED_COLUMNS]


def layout_of(db: SqliteDatabase, meta: MetaTable) -> int:
    """0 for a file without tables yet, else the layout the file has."""
    if not db.table_exists("meta"):
        return 0
    return int(meta.get(LAYOUT_VERSION) or 1)


def create(tables: Tables) -> None:
    """Make a new, empty buffer of this layout (inside the caller's transaction)."""
    tables.db.create_tables([tables.KV, tables.Reading, tables.Quarantined])
    tables.db.execute_sql(TOP_DELETED_TRIGGER)
    meta = MetaTable(tables)
    meta.set(BUFFER_ID, secrets.token_hex(8))
    meta.set(CREATED_AT, repr(time.time()))
    meta.set(LAYOUT_VERSION, str(LAYOUT))


def add_columns(tables: Tables, existing: Sequence[str]) -> None:
    """ALTER TABLE for the registers the config gained (nullable REAL columns)."""
    new = [c for c in tables.value_columns if c not in existing]
    if new:
        migrator = SqliteMigrator(tables.db)
        fields = dict(zip(tables.value_columns, tables.values(), strict=True))
        migrate(*(migrator.add_column("readings", name, fields[name]) for name in new))


def migrate_layout_1(tables: Tables) -> None:
    """Layout 1 -> 2, inside the caller's (IMMEDIATE) transaction. Raises BufferError
    (nothing changed) if the file is not what layout 1 wrote."""
    db, S = tables.db, tables.SqliteSchema
    meta = MetaTable(tables)
    definition = S.select(S.sql).where((S.type == "table") & (S.name == "readings")).scalar() or ""
    marker = '"seq" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT'
    if definition.count(marker) != 1:
        raise BufferError(f"readings table not as layout 1 wrote it: {definition[:200]!r}")
    floor = (
        tables.SqliteSequence.select(tables.SqliteSequence.seq)
        .where(tables.SqliteSequence.name == "readings")
        .scalar()
    )
    # meta: copied into a WITHOUT ROWID table (a few rows)
    old_meta = [(row.key, row.value) for row in tables.KV.select()]
    db.drop_tables([tables.KV])
    db.create_tables([tables.KV])
    for key, value in old_meta:
        meta.set(key, value)
    db.create_tables([tables.Quarantined], safe=True)
    # readings: the stored rows stay as they are; only the definition loses AUTOINCREMENT
    version = db.pragma("schema_version")
    db.pragma("writable_schema", 1)
    try:
        S.update(sql=definition.replace(marker, marker.removesuffix(" AUTOINCREMENT"))).where(
            (S.type == "table") & (S.name == "readings")
        ).execute()
        db.pragma("schema_version", version + 1)
    finally:
        db.pragma("writable_schema", "RESET")  # off, and the schema read again: errors show now
    tables.SqliteSequence.delete().where(tables.SqliteSequence.name == "readings").execute()
    db.execute_sql(TOP_DELETED_TRIGGER)
    if floor:
        meta.set(SEQ_FLOOR, str(floor))
    meta.set(LAYOUT_VERSION, str(LAYOUT))


def seq_floor(tables: Tables, meta: MetaTable, layout: int) -> int:
    """The highest seq ever given that may no longer be in the table."""
    floor = meta.get_int(SEQ_FLOOR)
    if layout < 2 and tables.db.table_exists("sqlite_sequence"):
        Seq = tables.SqliteSequence
        floor = max(floor, Seq.select(Seq.seq).where(Seq.name == "readings").scalar() or 0)
    return floor
