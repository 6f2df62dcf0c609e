"""The buffer's face (`edgelog.buffer.Buffer`, and `Space` for room), method by method,
on real SQLite files: one test class, one docstring per contract, in the manner of
huey's storage tests. A file written by the previous layout (edgelog before layout 2)
is built here with the exact SQL that version ran, and must keep working."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from edgelog.buffer import (
    FIXED_COLUMNS,
    Buffer,
    BufferCorrupt,
    NewReading,
    Space,
    Span,
    schema,
)
from edgelog.errors import BufferError

COLUMNS = ["voltage_l1", "current_l1", "active_power"]


def values(i: int) -> dict[str, float | None]:
    return {"voltage_l1": 220.0 + i / 1000, "current_l1": i * 0.5, "active_power": i * 2.0}


def reading(i: int, meter: str = "pac1", start: float = 1_800_000_000.0, **kw: object) -> NewReading:
    return NewReading(meter, start + i, values(i), **kw)  # type: ignore[arg-type]


def fill(buffer: Buffer, n: int, start: float = 1_800_000_000.0, meter: str = "pac1") -> list[int]:
    """n readings in one commit."""
    return buffer.append_many([reading(i, meter, start) for i in range(n)])


def on_disk(path: Path, sql: str, *params: object) -> list[tuple]:
    """What another process sees: a plain read-only connection of its own."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        return conn.execute(sql, params).fetchall()


def meta_on_disk(path: Path, key: str) -> str | None:
    rows = on_disk(path, "SELECT value FROM meta WHERE key = ?", key)
    return rows[0][0] if rows else None


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buffer.sqlite3"


@pytest.fixture
def buffer(path: Path) -> Iterator[Buffer]:
    b = Buffer(path, COLUMNS)
    yield b
    b.close()


# -- a file as edgelog wrote it before layout 2 -------------------------------------------

#: The schema edgelog created before layout 2 (`sqlite3 buffer.sqlite3 .schema`), with
#: peewee's quoting, and the quarantine table it made when it first needed one.
LAYOUT_1 = [
    'CREATE TABLE "meta" ("key" TEXT NOT NULL PRIMARY KEY, "value" TEXT)',
    'CREATE TABLE "readings" ("seq" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "meter" TEXT NOT NULL, '
    '"measured_at" REAL NOT NULL, "clock_ok" INTEGER NOT NULL, "error" TEXT, "voltage_l1" REAL, '
    '"current_l1" REAL, "active_power" REAL)',
    "CREATE TABLE quarantine (seq INTEGER PRIMARY KEY, row TEXT NOT NULL, reason TEXT, "
    "attempts INTEGER NOT NULL DEFAULT 0, quarantined_at REAL)",
]


def layout_1_file(path: Path, rows: int = 30, dropped_newest: int = 5) -> dict[str, object]:
    """A buffer as the previous edgelog left it: WAL, 4 KiB pages, AUTOINCREMENT seqs, the
    newest `dropped_newest` rows deleted (so sqlite_sequence is above MAX(seq)), 10 rows
    sent, one row quarantined."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = wal")
        for statement in LAYOUT_1:
            conn.execute(statement)
        conn.execute("BEGIN")
        for i in range(rows):
            conn.execute(
                "INSERT INTO readings (meter, measured_at, clock_ok, error, voltage_l1, current_l1, "
                "active_power) VALUES (?, ?, ?, ?, ?, ?, ?)",
                ("pac1", 1_790_000_000.0 + i, 1, None, *values(i).values()),
            )
        meta = {
            "buffer_id": "00c0ffee00c0ffee",
            "created_at": "1790000000.0",
            "sent_upto": "10",
            "last_sync_at": "1790000100.0",
            "sync_rate_rows_per_s": "250.0",
            "dropped_total": "2",
            "quarantined_total": "1",
        }
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        conn.execute(
            "INSERT INTO quarantine (seq, row, reason, attempts, quarantined_at) VALUES (4, ?, ?, 0, ?)",
            (json.dumps({"seq": 4, "meter": "pac1"}), "(1264) out of range", 1790000050.0),
        )
        conn.execute("DELETE FROM readings WHERE seq > ?", (rows - dropped_newest,))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return {"meta": meta, "rows": rows - dropped_newest, "highest_seq_given": rows}


# -- the contract --------------------------------------------------------------------------


class TestBufferContract:
    """Each test states one method's contract and checks it on a real file."""

    # opening

    def test_open_creates_what_is_missing(self, tmp_path: Path) -> None:
        """Buffer(path, columns): makes the directory and the file (WAL mode, synchronous
        FULL, small pages, layout 2) with a random 16-hex-digit buffer_id."""
        path = tmp_path / "new" / "dir" / "b.sqlite3"
        b = Buffer(path, COLUMNS)
        try:
            assert b.value_columns == COLUMNS
            assert len(b.buffer_id) == 16 and int(b.buffer_id, 16) >= 0
            assert b.db.pragma("journal_mode") == "wal" and b.db.pragma("synchronous") == 2
            assert b.db.pragma("page_size") == schema.PAGE_SIZE
            assert meta_on_disk(path, "layout_version") == str(schema.LAYOUT)
            (sql,) = on_disk(path, "SELECT sql FROM sqlite_master WHERE name = 'readings'")[0]
            assert "AUTOINCREMENT" not in sql
            (sql,) = on_disk(path, "SELECT sql FROM sqlite_master WHERE name = 'meta'")[0]
            assert sql.endswith("WITHOUT ROWID")
        finally:
            b.close()

    def test_open_without_create_changes_nothing(self, path: Path) -> None:
        """Buffer(path, create=False): the file must exist (else a one-line BufferError
        naming it); columns of the file, whatever the caller passes; nothing written."""
        with pytest.raises(BufferError, match="no such file"):
            Buffer(path, create=False)
        assert not path.exists()
        Buffer(path, COLUMNS).close()
        before = path.read_bytes()
        reader = Buffer(path, ["voltage_l1", "frequency"], create=False)
        try:
            assert reader.value_columns == COLUMNS
            reader.status()
        finally:
            reader.close()
        assert path.read_bytes() == before

    def test_open_refuses_a_foreign_database(self, path: Path) -> None:
        """A database that is not an edgelog buffer (no buffer_id): BufferError, one line."""
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE something (x)")
        with pytest.raises(BufferError, match="not an edgelog buffer") as info:
            Buffer(path, create=False)
        assert "\n" not in str(info.value)

    def test_open_adds_new_register_columns_only(self, path: Path) -> None:
        """Opening with create and more columns adds them (nullable REAL) after the old ones;
        a column the config dropped is kept."""
        Buffer(path, ["voltage_l1", "current_l1"]).close()
        b = Buffer(path, ["current_l1", "frequency"])
        try:
            assert b.value_columns == ["voltage_l1", "current_l1", "frequency"]
        finally:
            b.close()

    def test_open_or_replace_moves_a_corrupt_file_aside(self, path: Path) -> None:
        """Buffer.open_or_replace(): a file that is not a database (or fails quick_check) is
        renamed aside, never deleted, and a new buffer remembers where it went."""
        path.write_bytes(b"not a database at all " * 100)
        b = Buffer.open_or_replace(path, COLUMNS, now=1_800_000_000.0)
        try:
            (aside,) = b.corrupt_buffers()
            assert Path(aside).read_bytes() == b"not a database at all " * 100
            assert b.status().corrupt_buffers == (aside,)
        finally:
            b.close()

    def test_check_file_reads_only(self, path: Path) -> None:
        """Buffer.check_file(): quick_check through a read-only connection: BufferCorrupt for
        a damaged file, nothing written either way."""
        Buffer(path, COLUMNS).close()
        Buffer.check_file(path)
        path.write_bytes(path.read_bytes()[:100] + b"\xff" * 3000)
        with pytest.raises(BufferCorrupt):
            Buffer.check_file(path)

    # appending

    def test_append_returns_increasing_seqs(self, buffer: Buffer) -> None:
        """append(): one reading (or a failed poll, `error` set, values NULL) committed on
        its own; returns its seq, higher than any seq given before."""
        a = buffer.append("pac1", 5.0, values(1))
        b = buffer.append("pac1", 5.0, None, error="timeout")  # same time: another reading
        assert b > a
        rows = buffer.unsent(10)
        assert rows[1][:5] == (b, "pac1", 5.0, True, "timeout")
        assert rows[1][len(FIXED_COLUMNS) :] == (None, None, None)

    def test_append_many_is_one_transaction_in_order(self, buffer: Buffer) -> None:
        """append_many(): the readings in one commit, in order; their seqs returned."""
        seqs = fill(buffer, 5)
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        assert [r[0] for r in buffer.unsent(10)] == seqs

    def test_seqs_are_never_given_twice(self, buffer: Buffer, path: Path) -> None:
        """A seq is never given again, whoever deleted the newest rows (a prune, a full
        buffer, anyone's DELETE), also in another Buffer object and after a crash: the
        floor is written in the transaction that deletes."""
        first = fill(buffer, 10)
        with closing(sqlite3.connect(path)) as conn, conn:  # behind the buffer's back
            conn.execute("DELETE FROM readings WHERE seq > ?", (first[4],))
        assert meta_on_disk(path, "seq_floor") == str(first[-1])
        other = Buffer(path, COLUMNS)
        try:
            assert other.append("pac1", 1.0, values(0)) == first[-1] + 1
        finally:
            other.close()
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("DELETE FROM readings")
        assert buffer.append("pac1", 1.0, values(0)) == first[-1] + 2
        assert buffer.readings_total() == first[-1] + 2

    def test_count_dropped(self, buffer: Buffer, path: Path) -> None:
        """count_dropped(n): adds n to dropped_total, written at once when it can be."""
        buffer.count_dropped(3)
        buffer.count_dropped(0)
        assert meta_on_disk(path, "dropped_total") == "3"
        assert buffer.status().dropped_total == 3

    # the sync position

    def test_unsent_and_sent_upto(self, buffer: Buffer) -> None:
        """unsent(limit, after=None): rows after the position (or `after`), by seq, as
        FIXED_COLUMNS + value_columns tuples with clock_ok a bool; sent_upto: the position."""
        seqs = fill(buffer, 6)
        assert buffer.sent_upto == 0
        assert [r[0] for r in buffer.unsent(4)] == seqs[:4]
        assert [r[0] for r in buffer.unsent(10, after=seqs[3])] == seqs[4:]
        assert all(len(r) == len(FIXED_COLUMNS) + 3 and r[3] is True for r in buffer.unsent(10))

    def test_mark_sent_never_moves_back(self, buffer: Buffer) -> None:
        """mark_sent(upto): the position moves forward only; a late confirmation of an older
        batch changes nothing."""
        seqs = fill(buffer, 6)
        buffer.mark_sent(seqs[4])
        buffer.mark_sent(seqs[1])
        assert buffer.sent_upto == seqs[4]
        assert [r[0] for r in buffer.unsent(10)] == seqs[5:]

    def test_mark_sent_is_committed_at_once_without_an_fsync(self, buffer: Buffer, path: Path) -> None:
        """mark_sent(): committed at once (another process sees it), time and rate included,
        with synchronous NORMAL for that commit only (no fsync of its own: the next
        reading's makes it durable); readings are still committed with FULL."""
        seqs = fill(buffer, 4)
        buffer.mark_sent(seqs[2], at=1234.5, rate=99.0)
        assert meta_on_disk(path, "sent_upto") == str(seqs[2])
        assert meta_on_disk(path, "last_sync_at") == "1234.5"
        assert buffer.sync_rate() == 99.0 and buffer.status().last_sync_at == 1234.5
        assert buffer.db.pragma("synchronous") == 2  # FULL again for what follows
        buffer.append("pac1", 9.0, values(9))
        assert buffer.db.pragma("synchronous") == 2

    def test_mark_sent_takes_rows_dropped_in_flight_off_dropped_total(self, path: Path) -> None:
        """mark_sent(batch=(first, rows)): rows of the batch deleted as dropped while it was
        in flight reached the destination after all: dropped_total counts them no more."""
        b = Buffer(path, COLUMNS)
        try:
            seqs = fill(b, 20)
            batch = b.unsent(10)
            # while the batch is in flight, the buffer fills up and drops the 5 oldest unsent
            with b.write("test"):
                R = b.tables.Reading
                R.delete().where(R.seq <= seqs[4]).execute()
                b.meta.set(schema.DROPPED_TOTAL, "5")
            b.mark_sent(batch[-1][0], batch=(batch[0][0], len(batch)))
            assert b.status().dropped_total == 0
        finally:
            b.close()

    def test_hold(self, buffer: Buffer, path: Path) -> None:
        """hold / set_hold(seq): a seq the position must not pass, written at once (None
        clears it)."""
        assert buffer.hold is None
        buffer.set_hold(7)
        assert buffer.hold == 7 and meta_on_disk(path, "sync_hold") == "7"
        buffer.set_hold(None)
        assert buffer.hold is None

    def test_record_sync_error_writes_only_on_change(self, buffer: Buffer, path: Path) -> None:
        """record_sync_error(message, at): the last error and its time; the same message
        again writes nothing; None clears it."""
        buffer.record_sync_error("refused", at=10.0)
        buffer.record_sync_error("refused", at=20.0)
        assert meta_on_disk(path, "last_error_at") == "10.0"
        buffer.record_sync_error(None, at=30.0)
        s = buffer.status()
        assert (s.last_error, s.last_error_at) == (None, 30.0)

    # the quarantine

    def test_quarantine_and_what_follows(self, buffer: Buffer) -> None:
        """quarantine(entries, upto, hold): in one transaction, the rows copied with their
        reason, the position moved, the hold set; quarantined(): them, as unsent() gives
        rows; requarantine(): a new reason, attempts + 1; release_quarantined(): gone."""
        seqs = fill(buffer, 5)
        row = buffer.unsent(5)[1]
        buffer.quarantine([(row, "out of range")], upto=seqs[2], hold=None, at=100.0)
        assert buffer.sent_upto == seqs[2] and buffer.quarantined_count() == 1
        assert buffer.quarantined(10) == [(row, "out of range")]
        buffer.requarantine([(row[0], "still out of range")])
        assert buffer.quarantined(10, after=0)[0][1] == "still out of range"
        assert buffer.quarantined(10, after=row[0]) == []
        buffer.release_quarantined([row[0]])
        assert buffer.quarantined_count() == 0 and buffer.status().quarantined == 0

    # reading

    def test_status(self, buffer: Buffer) -> None:
        """status(): backlog, failed polls in it, newest reading, position, totals, size;
        one consistent snapshot."""
        seqs = fill(buffer, 4, start=100.0)
        buffer.append("pac1", 200.0, None, error="timeout")
        buffer.mark_sent(seqs[1], at=300.0)
        s = buffer.status()
        assert (s.unsent, s.failed_polls_unsent, s.oldest_unsent_at) == (3, 1, 102.0)
        assert (s.last_reading_at, s.sent_upto, s.last_sync_at) == (103.0, seqs[1], 300.0)
        assert (s.readings_total, s.dropped_total, s.quarantined) == (5, 0, 0)
        assert s.size_bytes == buffer.size_bytes() > buffer.db_bytes() > 0
        assert s.buffer_id == buffer.buffer_id and s.path == str(buffer.path)

    def test_newest(self, buffer: Buffer) -> None:
        """newest(meter, good_only): the meter's newest row, or its newest reading that is
        not a failed poll; None for a meter without one."""
        fill(buffer, 3, start=10.0)
        buffer.append("pac1", 20.0, None, error="timeout", clock_ok=False)
        last, good = buffer.newest("pac1"), buffer.newest("pac1", good_only=True)
        assert last is not None and (last.measured_at, last.error, last.clock_ok) == (20.0, "timeout", False)
        assert good is not None and good.measured_at == 12.0 and good.values == values(2)
        assert buffer.newest("pac9") is None

    def test_recent_polls(self, buffer: Buffer) -> None:
        """recent_polls(limit): the newest rows, newest first, as (meter, measured_at, error)."""
        fill(buffer, 2, start=10.0)
        buffer.append("pac2", 30.0, None, error="x")
        assert [tuple(p) for p in buffer.recent_polls(2)] == [("pac2", 30.0, "x"), ("pac1", 11.0, None)]

    def test_newest_trusted_at(self, buffer: Buffer) -> None:
        """newest_trusted_at(): measured_at of the newest reading stored with clock_ok."""
        assert buffer.newest_trusted_at() is None
        buffer.append("pac1", 50.0, values(1))
        buffer.append("pac1", 10.0, values(2), clock_ok=False)
        assert buffer.newest_trusted_at() == 50.0

    def test_between_and_count_between(self, buffer: Buffer) -> None:
        """between(span, chunk) / count_between(span): rows measured in [start, end), of one
        meter or all, with or without failed polls, in seq order, `chunk` at a time."""
        fill(buffer, 10, start=0.0)
        fill(buffer, 3, start=4.0, meter="pac2")
        buffer.append("pac1", 5.5, None, error="timeout")
        span = Span(2.0, 6.0)
        assert buffer.count_between(span) == 4 + 2 + 1
        chunks = list(buffer.between(Span(2.0, 6.0, meter="pac1", gaps=False), chunk=3))
        assert [len(c) for c in chunks] == [3, 1]
        assert [row[0] for c in chunks for row in c] == [2.0, 3.0, 4.0, 5.0]
        assert chunks[0][0][:4] == (2.0, "pac1", True, None)
        assert buffer.count_between(Span(2.0, 6.0, meter="pac1")) == 5

    def test_readings_total_counts_pruned_rows(self, buffer: Buffer) -> None:
        """readings_total(): rows ever written, pruned ones included."""
        seqs = fill(buffer, 8, start=0.0)
        buffer.mark_sent(seqs[-1])
        assert Space(buffer, 1 << 30).prune(keep_sent_s=0, now=1000.0) == 8
        assert buffer.readings_total() == 8


class TestSpaceContract:
    """Room for readings: `Space(buffer, max_bytes, when_full)`."""

    def test_store_commits_and_says_so(self, buffer: Buffer) -> None:
        """store(readings): committed in one transaction; Stored(stored=n), nothing else."""
        result = Space(buffer, 1 << 30).store([reading(i) for i in range(3)])
        assert (result.stored, result.dropped, result.full, result.corrupt) == (3, 0, None, None)
        assert buffer.status().unsent == 3

    def test_store_drop_newest_refuses_and_counts(self, buffer: Buffer) -> None:
        """store() with drop_newest and a buffer full of unsent rows: the new readings are
        refused, counted in dropped_total, and the result says so."""
        fill(buffer, 300)
        buffer.db.pragma("wal_checkpoint", "TRUNCATE")
        space = Space(buffer, buffer.size_bytes() // 2, when_full="drop_newest")
        result = space.store([reading(1000)])
        assert (result.stored, result.dropped) == (0, 1) and "drop_newest" in (result.full or "")
        assert buffer.status().dropped_total == 1 and buffer.status().unsent == 300

    def test_store_drop_oldest_makes_room_and_counts(self, buffer: Buffer) -> None:
        """store() with drop_oldest over max_bytes: the oldest unsent rows go, counted; the
        new reading is stored."""
        fill(buffer, 300)
        buffer.db.pragma("wal_checkpoint", "TRUNCATE")
        space = Space(buffer, buffer.size_bytes() // 2)
        result = space.store([reading(1000)])
        assert result.stored == 1 and result.dropped > 0 and "drop_oldest" in (result.full or "")
        s = buffer.status()
        assert s.dropped_total == result.dropped and s.unsent == 301 - result.dropped

    def test_store_reports_a_failed_write(self, buffer: Buffer, path: Path) -> None:
        """store() when the write fails for another reason: nothing raised; the readings are
        counted as dropped (with the next write that succeeds) and the result says why."""
        with closing(sqlite3.connect(path, timeout=0.1)) as blocker:
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock ...
            buffer.db.pragma("busy_timeout", 100)  # ... for longer than we wait
            result = Space(buffer, 1 << 30).store([reading(1)])
            blocker.rollback()
        assert result.stored == 0 and result.dropped == 1 and "write failed" in (result.full or "")
        buffer.db.pragma("busy_timeout", 10_000)
        buffer.append("pac1", 1.0, values(1))
        assert buffer.status().dropped_total == 1

    def test_housekeeping_steps(self, buffer: Buffer) -> None:
        """housekeeping(keep_sent_s, now, after): one step of the prune; returns the `after`
        of the next step (None after the last) and what the max_mb bound dropped."""
        seqs = fill(buffer, 30, start=0.0)
        buffer.mark_sent(seqs[-1])
        space = Space(buffer, 1 << 30)
        after, result = space.housekeeping(10.0, now=1000.0, after=0)
        while after is not None:
            after, result = space.housekeeping(10.0, now=1000.0, after=after)
        assert result.dropped == 0 and result.full is None
        assert buffer.status().unsent == 0 and buffer.unsent(100, after=0) == []

    def test_keep_reserve(self, buffer: Buffer) -> None:
        """keep_reserve(): a file beside the buffer holding reserve_bytes() of disk."""
        space = Space(buffer, 1 << 30)
        assert space.keep_reserve()
        assert space.reserve_path.stat().st_size == space.reserve_bytes() > 0

    def test_when_full_is_checked(self, buffer: Buffer) -> None:
        """Space() refuses a when_full it does not know."""
        with pytest.raises(ValueError):
            Space(buffer, 1 << 30, when_full="drop_everything")


# -- a buffer from the previous layout -------------------------------------------------------


class TestLayout1Buffers:
    """Files edgelog wrote before layout 2 keep working."""

    def test_readers_read_it_as_it_is(self, path: Path) -> None:
        """A reader (sync-status, tail, export: create=False) reads a layout-1 file and
        converts nothing."""
        old = layout_1_file(path)
        reader = Buffer(path, create=False)
        try:
            s = reader.status()
            assert s.readings_total == old["highest_seq_given"]
            assert (s.unsent, s.sent_upto, s.dropped_total, s.quarantined) == (old["rows"] - 10, 10, 2, 1)
            assert reader.sync_rate() == 250.0
        finally:
            reader.close()
        assert meta_on_disk(path, "layout_version") is None
        (sql,) = on_disk(path, "SELECT sql FROM sqlite_master WHERE name = 'readings'")[0]
        assert "AUTOINCREMENT" in sql

    def test_edgelog_run_converts_it_in_one_transaction(self, path: Path) -> None:
        """Opened with create (edgelog run): converted to layout 2; every row, meta value and
        quarantined row kept; the old counter becomes the floor, so the next seq is above
        every seq the old file gave; appends no longer touch sqlite_sequence."""
        old = layout_1_file(path)
        before = on_disk(path, "SELECT * FROM readings ORDER BY seq")
        b = Buffer(path, COLUMNS)
        try:
            assert b.layout == 2
            assert on_disk(path, "SELECT * FROM readings ORDER BY seq") == before
            for key, value in old["meta"].items():  # type: ignore[attr-defined]
                assert meta_on_disk(path, key) == value
            assert meta_on_disk(path, "seq_floor") == str(old["highest_seq_given"])
            assert b.quarantined_count() == 1
            seq = b.append("pac1", 1.0, values(1))
            assert seq == old["highest_seq_given"] + 1  # type: ignore[operator]
            assert on_disk(path, "SELECT * FROM sqlite_sequence") == []
            (sql,) = on_disk(path, "SELECT sql FROM sqlite_master WHERE name = 'readings'")[0]
            assert "AUTOINCREMENT" not in sql
            (sql,) = on_disk(path, "SELECT sql FROM sqlite_master WHERE name = 'meta'")[0]
            assert sql.endswith("WITHOUT ROWID")
            assert on_disk(path, "PRAGMA quick_check") == [("ok",)]
            assert on_disk(path, "PRAGMA page_size") == [(4096,)]  # pages stay as they were
        finally:
            b.close()


@pytest.fixture
def unrecognised_layout_1(path: Path) -> Path:
    """A layout-1 file whose readings table was made by hand (seq declared differently)."""
    layout_1_file(path)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.execute('ALTER TABLE readings RENAME TO "readings_old"')
        conn.execute(LAYOUT_1[1].replace('"seq" INTEGER NOT NULL PRIMARY KEY', '"seq" INTEGER PRIMARY KEY'))
        conn.execute("INSERT INTO readings SELECT * FROM readings_old")
        conn.execute("DROP TABLE readings_old")
        conn.execute("DELETE FROM readings WHERE seq > 20")  # the counter stays above MAX(seq)
        conn.execute("COMMIT")
    return path


def test_unrecognised_layout_1_stays_layout_1_and_never_reuses_a_seq(
    unrecognised_layout_1: Path, caplog
) -> None:
    """A layout-1 file the conversion does not recognise stays as it is (a warning, no
    change) and keeps working: the old counter still keeps seqs unique."""
    path = unrecognised_layout_1
    highest = on_disk(path, "SELECT seq FROM sqlite_sequence WHERE name = 'readings'")[0][0]
    assert highest > on_disk(path, "SELECT MAX(seq) FROM readings")[0][0]
    b = Buffer(path, COLUMNS)
    try:
        assert b.layout == 1
        assert "keeps working as it is" in caplog.text
        assert b.append("pac1", 1.0, values(1)) == highest + 1
        s = b.status()
        assert s.readings_total == highest + 1
    finally:
        b.close()
    assert meta_on_disk(path, "layout_version") is None
