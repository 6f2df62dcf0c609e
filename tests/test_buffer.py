"""The SQLite buffer, on real files: durability pragmas, identity, sync position, pruning,
schema evolution, a real SIGKILL, and the poll/sync threads sharing one Buffer."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from edgelog.buffer import FIXED_COLUMNS, Buffer, Space
from edgelog.buffer.schema import PAGE_SIZE as PAGE
from edgelog.errors import BufferError

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["voltage_l1", "current_l1", "active_power"]


def values(i: int) -> dict[str, float | None]:
    return {"voltage_l1": 220.0 + i / 1000, "current_l1": i * 0.5, "active_power": i * 2.0}


def fill(buffer: Buffer, n: int, start: float = 1_000_000.0) -> list[int]:
    """Append n readings in one transaction (test setup: one fsync instead of n)."""
    with buffer.db.atomic():
        return [buffer.append("pac1", start + i, values(i)) for i in range(n)]


def sql(path: Path, statement: str, *params: object) -> list[tuple]:
    """Run one statement on a plain sqlite3 connection of its own (behind the Buffer's back)."""
    with closing(sqlite3.connect(path, timeout=10)) as conn, conn:
        return conn.execute(statement, params).fetchall()


def prune(buffer: Buffer, keep_sent_s: float, max_bytes: int, now: float) -> int:
    """Every step of `edgelog run`'s housekeeping at once; returns the rows deleted."""
    return Space(buffer, max_bytes).prune(keep_sent_s, now)


def meta(path: Path, key: str) -> str | None:
    rows = sql(path, "SELECT value FROM meta WHERE key = ?", key)
    return rows[0][0] if rows else None


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "buffer.sqlite3"


@pytest.fixture
def buffer(path: Path):
    b = Buffer(path, COLUMNS)
    yield b
    b.close()


# -- opening ---------------------------------------------------------------------------


def test_open_creates_a_wal_file_with_full_sync_on_every_connection(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "buffer.sqlite3"
    b = Buffer(path, COLUMNS)
    try:
        assert path.is_file()
        assert b.db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert b.db.execute_sql("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        # WAL is recorded in the file header (bytes 18 and 19 are 2 in WAL mode) ...
        with path.open("rb") as f:
            header = f.read(20)
        assert header[:16] == b"SQLite format 3\x00"
        assert (header[18], header[19]) == (2, 2)
        # ... but synchronous is per connection: the sync thread's own connection has it too.
        seen: dict[str, object] = {}

        def other_thread() -> None:
            seen["synchronous"] = b.db.execute_sql("PRAGMA synchronous").fetchone()[0]
            seen["journal_mode"] = b.db.execute_sql("PRAGMA journal_mode").fetchone()[0]
            b.db.close()

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert seen == {"synchronous": 2, "journal_mode": "wal"}
    finally:
        b.close()


def test_open_without_create_needs_an_existing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite3"
    with pytest.raises(BufferError, match="no such file"):
        Buffer(missing, create=False)
    assert not missing.exists()


def _corrupt(path: Path, how: str) -> None:
    """Overwrite the middle pages of a real buffer file."""
    size = path.stat().st_size
    pages = size // PAGE
    assert pages >= 12, "the buffer must be big enough to have middle pages"
    rnd = random.Random(1234)
    with path.open("r+b") as f:
        for page in range(pages // 3, 2 * pages // 3):
            if how == "garbage":
                f.seek(page * PAGE)
                f.write(rnd.randbytes(PAGE))
            else:  # zeros over the cells, page headers intact: quick_check reports rows
                f.seek(page * PAGE + 100)
                f.write(b"\0" * (PAGE * 3 // 4))


@pytest.mark.parametrize("how", ["garbage", "zeros"])
def test_corrupt_file_is_refused_with_one_line(path: Path, how: str) -> None:
    b = Buffer(path, COLUMNS)
    fill(b, 3000)
    b.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    b.close()
    _corrupt(path, how)
    with pytest.raises(BufferError) as info:
        Buffer(path, COLUMNS)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    assert len(message) < 300
    if how == "zeros":
        assert "quick_check failed" in message


def test_non_sqlite_file_is_refused(path: Path) -> None:
    path.write_bytes(b"this is not a database, just some text\n" * 200)
    for create in (True, False):
        with pytest.raises(BufferError) as info:
            Buffer(path, COLUMNS, create=create)
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)
    assert path.read_bytes() == b"this is not a database, just some text\n" * 200


# -- identity --------------------------------------------------------------------------


def test_seq_increases_and_same_measured_at_is_two_rows(buffer: Buffer) -> None:
    a = buffer.append("pac1", 1_800_000_000.0, values(1))
    b = buffer.append("pac1", 1_800_000_001.0, values(2))
    # the clock restarted in the past: the same timestamp again, twice
    c = buffer.append("pac1", 1_700_000_000.0, values(3), clock_ok=False)
    d = buffer.append("pac1", 1_700_000_000.0, values(4), clock_ok=False)
    assert a < b < c < d
    rows = buffer.unsent(10)
    assert [r[0] for r in rows] == [a, b, c, d]
    assert rows[2][2] == rows[3][2] == 1_700_000_000.0
    assert rows[2][3] is False and rows[0][3] is True


def test_seq_is_never_reused_after_delete(buffer: Buffer, path: Path) -> None:
    seqs = fill(buffer, 50)
    sql(path, "DELETE FROM readings")
    assert buffer.unsent(100) == []
    new = buffer.append("pac1", 2_000_000.0, values(0))
    assert new > max(seqs)
    assert buffer.readings_total() == 51


def test_buffer_id_is_stable_and_per_file(tmp_path: Path) -> None:
    first = Buffer(tmp_path / "a.sqlite3", COLUMNS)
    buffer_id = first.buffer_id
    first.close()
    assert re.fullmatch(r"[0-9a-f]{16}", buffer_id)
    again = Buffer(tmp_path / "a.sqlite3", COLUMNS)
    reader = Buffer(tmp_path / "a.sqlite3", create=False)
    other = Buffer(tmp_path / "b.sqlite3", COLUMNS)
    try:
        assert again.buffer_id == buffer_id == reader.buffer_id
        assert again.status().buffer_id == buffer_id
        assert re.fullmatch(r"[0-9a-f]{16}", other.buffer_id)
        assert other.buffer_id != buffer_id
    finally:
        for b in (again, reader, other):
            b.close()


def test_failed_poll_is_a_row_with_null_registers(buffer: Buffer) -> None:
    ok = buffer.append("pac1", 100.0, values(1))
    gap = buffer.append("pac1", 101.0, None, error="timeout: no answer in 0.5 s")
    row = buffer.unsent(10)[1]
    assert row[0] == gap
    assert row[4] == "timeout: no answer in 0.5 s"
    assert row[len(FIXED_COLUMNS) :] == (None, None, None)
    status = buffer.status()
    assert status.unsent == 2
    assert status.failed_polls_unsent == 1
    assert status.last_reading_at == 100.0  # a gap is not a reading
    buffer.mark_sent(ok)
    assert buffer.status().failed_polls_unsent == 1
    buffer.mark_sent(gap)
    assert buffer.status().failed_polls_unsent == 0


# -- sync position and status ----------------------------------------------------------


def test_unsent_rows_and_mark_sent(buffer: Buffer) -> None:
    assert buffer.status().unsent == 0
    assert buffer.status().oldest_unsent_at is None
    seqs = fill(buffer, 10, start=500.0)
    rows = buffer.unsent(4)
    assert [r[0] for r in rows] == seqs[:4]
    assert rows[0] == (seqs[0], "pac1", 500.0, True, None, 220.0, 0.0, 0.0)
    assert all(len(r) == len(FIXED_COLUMNS) + len(buffer.value_columns) for r in rows)
    assert buffer.value_columns == COLUMNS
    assert [r[0] for r in buffer.unsent(100, after=seqs[7])] == seqs[8:]

    buffer.mark_sent(seqs[5], at=1234.5)
    assert [r[0] for r in buffer.unsent(100)] == seqs[6:]
    buffer.mark_sent(seqs[2], at=1240.0)  # late/duplicate confirmation: never backwards
    assert buffer.sent_upto == seqs[5]
    assert [r[0] for r in buffer.unsent(100)] == seqs[6:]

    status = buffer.status()
    assert status.unsent == 4
    assert status.sent_upto == seqs[5]
    assert status.oldest_unsent_at == 506.0
    assert status.last_reading_at == 509.0
    assert status.last_sync_at == 1240.0
    assert status.readings_total == 10
    assert status.dropped_total == 0
    assert status.size_bytes > 0


def test_readings_total_survives_pruning(buffer: Buffer) -> None:
    seqs = fill(buffer, 20, start=1000.0)
    buffer.mark_sent(seqs[-1], at=2000.0)
    deleted = prune(buffer, 0, 1 << 30, 5000.0)
    assert deleted == 20
    status = buffer.status()
    assert (status.unsent, status.readings_total, status.oldest_unsent_at) == (0, 20, None)
    assert status.sent_upto == seqs[-1]


def test_record_sync_error_writes_only_on_change(buffer: Buffer, path: Path) -> None:
    buffer.record_sync_error("mariadb: connection refused", at=100.0)
    assert meta(path, "last_error") == "mariadb: connection refused"
    assert meta(path, "last_error_at") == "100.0"
    buffer.record_sync_error("mariadb: connection refused", at=200.0)
    assert meta(path, "last_error_at") == "100.0"  # unchanged message: no write
    assert buffer.status().last_error_at == 100.0
    buffer.record_sync_error("mariadb: access denied", at=300.0)
    assert meta(path, "last_error_at") == "300.0"
    buffer.record_sync_error(None, at=400.0)
    status = buffer.status()
    assert (status.last_error, status.last_error_at) == (None, 400.0)
    buffer.record_sync_error(None, at=500.0)
    assert meta(path, "last_error_at") == "400.0"


# -- schema evolution ------------------------------------------------------------------


def test_reopen_with_a_new_register_adds_a_nullable_column(path: Path) -> None:
    b = Buffer(path, ["voltage_l1", "current_l1"])
    old = b.append("pac1", 1.0, {"voltage_l1": 230.0, "current_l1": 5.0})
    b.close()

    b = Buffer(path, ["voltage_l1", "current_l1", "frequency"])
    try:
        assert b.value_columns == ["voltage_l1", "current_l1", "frequency"]
        info = {r[1]: r for r in sql(path, "PRAGMA table_info(readings)")}
        assert info["frequency"][2] == "REAL" and info["frequency"][3] == 0  # nullable
        new = b.append("pac1", 2.0, {"voltage_l1": 231.0, "current_l1": 6.0, "frequency": 60.0})
        rows = b.unsent(10)
        assert rows[0][0] == old and rows[0][len(FIXED_COLUMNS) :] == (230.0, 5.0, None)
        assert rows[1][0] == new and rows[1][len(FIXED_COLUMNS) :] == (231.0, 6.0, 60.0)
    finally:
        b.close()


def test_reopen_without_a_register_keeps_its_column(path: Path) -> None:
    b = Buffer(path, ["voltage_l1", "current_l1"])
    b.append("pac1", 1.0, {"voltage_l1": 230.0, "current_l1": 5.0})
    b.close()

    b = Buffer(path, ["voltage_l1"])
    try:
        assert b.value_columns == ["voltage_l1", "current_l1"]
        names = [r[1] for r in sql(path, "PRAGMA table_info(readings)")]
        assert "current_l1" in names
        b.append("pac1", 2.0, {"voltage_l1": 231.0})
        rows = b.unsent(10)
        assert [r[len(FIXED_COLUMNS) :] for r in rows] == [(230.0, 5.0), (231.0, None)]
    finally:
        b.close()


# -- durability and concurrency across processes ---------------------------------------

CHILD_WRITER = """
import sys
from pathlib import Path
from edgelog.buffer import Buffer
b = Buffer(Path(sys.argv[1]), ["voltage_l1", "current_l1", "active_power"])
print("open", flush=True)
for i in range(100000):
    seq = b.append("pac1", 1000.0 + i, {"voltage_l1": 230.0, "current_l1": float(i)})
    print(seq, flush=True)
"""


def test_every_acknowledged_append_survives_sigkill(path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert proc.stdout is not None
    printed: list[int] = []
    try:
        assert proc.stdout.readline().strip() == "open"
        while len(printed) < 300:
            line = proc.stdout.readline()
            assert line, f"writer died early (exit {proc.poll()})"
            printed.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        # lines printed before the kill landed (the pipe is still readable)
        printed += [int(line) for line in proc.stdout.read().split() if line.strip()]
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    b = Buffer(path, COLUMNS)  # quick_check passes: the killed writer left no corruption
    try:
        stored = {r[0] for r in b.unsent(1_000_000)}
        assert set(printed) <= stored
        assert printed == sorted(printed) and len(set(printed)) == len(printed)
        # at most the reading in flight was committed but not printed
        assert len(stored) - len(printed) in (0, 1)
    finally:
        b.close()


CHILD_READER = """
import sys, time
from pathlib import Path
from edgelog.buffer import Buffer
t = time.monotonic()
b = Buffer(Path(sys.argv[1]), create=False)
s = b.status()
print(s.unsent, s.readings_total, round(time.monotonic() - t, 3))
"""


def test_readers_are_not_blocked_by_a_write_transaction(buffer: Buffer, path: Path) -> None:
    fill(buffer, 10)
    with buffer.db.atomic("IMMEDIATE"):  # the writer holds the write lock ...
        buffer.append("pac1", 5.0, values(5))  # ... with an uncommitted row
        # another process: opens (quick_check) and reads status without waiting
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", CHILD_READER, str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
        )
        took = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        unsent, total, open_and_read_s = out.stdout.split()
        assert (int(unsent), int(total)) == (10, 10)  # the committed snapshot
        assert float(open_and_read_s) < 2.0 and took < 9.0  # busy timeout is 10 s

        # another connection in this process, from another thread
        seen: list[int] = []

        def read() -> None:
            reader = Buffer(path, create=False)
            try:
                seen.append(reader.status().unsent)
            finally:
                reader.close()

        t = threading.Thread(target=read)
        t.start()
        t.join(5)
        assert not t.is_alive() and seen == [10]
    assert buffer.status().unsent == 11


# -- pruning ---------------------------------------------------------------------------


def test_prune_old_sent_goes_in_short_steps_of_seqs(buffer: Buffer) -> None:
    """What `edgelog run`'s housekeeping does, a step at a time on the writer thread."""
    old = fill(buffer, 25, start=1000.0)
    recent = fill(buffer, 10, start=9000.0)
    unsent = fill(buffer, 5, start=1100.0)  # old, but not sent yet
    buffer.mark_sent(recent[-1])
    space = Space(buffer, 1 << 30)
    steps, after, deleted = [], 0, 0
    while after is not None:
        n, after = space.prune_old_sent(3600.0, now=10_000.0, after=after, chunk=10)
        steps.append((n, after))
        deleted += n
    assert deleted == 25
    # 35 sent seqs in steps of 10; the last step ends at the position
    assert steps == [(10, 10), (10, 20), (5, 30), (0, None)]
    assert [r[0] for r in buffer.unsent(100, after=0)] == recent + unsent
    # a new pass starts at the oldest row left, not at seq 1
    assert space.prune_old_sent(3600.0, now=10_000.0, chunk=10) == (0, None)  # 26..35: one step
    assert not set(old) & {r[0] for r in buffer.unsent(100, after=0)}


def test_prune_deletes_old_sent_rows_only(buffer: Buffer) -> None:
    old = fill(buffer, 10, start=1000.0)  # measured at 1000..1009
    recent = fill(buffer, 10, start=9000.0)  # measured at 9000..9009
    old_unsent = fill(buffer, 5, start=1100.0)  # old, but not sent yet
    buffer.mark_sent(recent[-1])
    deleted = prune(buffer, 3600.0, 1 << 30, 10_000.0)
    assert deleted == 10
    left = [r[0] for r in buffer.unsent(100, after=0)]
    assert left == recent + old_unsent
    assert not set(old) & set(left)
    status = buffer.status()
    assert status.dropped_total == 0
    assert status.unsent == 5 and status.readings_total == 25


def _db_bytes(path: Path) -> int:
    """Bytes of the database proper (as a reader sees it: WAL content included), no free pages."""
    pages = sql(path, "PRAGMA page_count")[0][0]
    free = sql(path, "PRAGMA freelist_count")[0][0]
    return (pages - free) * PAGE


def test_prune_over_max_bytes_drops_sent_first_then_oldest_unsent(
    buffer: Buffer, path: Path, tmp_path: Path
) -> None:
    seqs = fill(buffer, 6000)
    buffer.mark_sent(seqs[1499])  # 1500 sent, 4500 unsent
    buffer.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    full = buffer.size_bytes()

    # Measure, on a copy, the size once the 1000 and then all 1500 sent rows are gone.
    copy = tmp_path / "copy.sqlite3"
    shutil.copy(path, copy)
    sql(copy, "DELETE FROM readings WHERE seq <= ?", seqs[999])
    after_1000 = _db_bytes(copy)
    sql(copy, "DELETE FROM readings WHERE seq <= ?", seqs[1499])
    after_sent = _db_bytes(copy)
    assert full > after_1000 > after_sent

    # Over the limit by more than 1000 rows but less than all sent rows: only sent rows go.
    max_bytes = after_sent + PAGE // 2
    assert after_1000 > max_bytes
    deleted = prune(buffer, 1e12, max_bytes, 2_000_000.0)
    assert 1000 < deleted <= 1500  # about as many rows as the excess: sent ones only
    sent_left = 1500 - deleted
    status = buffer.status()
    assert status.dropped_total == 0
    assert status.unsent == 4500
    assert [r[0] for r in buffer.unsent(10_000)] == seqs[1500:]
    assert status.size_bytes <= max_bytes

    # Far over the limit with nothing sent left: the oldest unsent rows are dropped, counted.
    max_bytes = after_sent // 3
    deleted = prune(buffer, 1e12, max_bytes, 2_000_000.0)
    left = [r[0] for r in buffer.unsent(10_000)]
    status = buffer.status()
    assert 0 < len(left) < 4500
    assert left == seqs[-len(left) :]  # the newest survive, in order
    assert deleted == 4500 - len(left) + sent_left  # the last sent rows went first
    assert status.dropped_total == 4500 - len(left)
    assert status.unsent == len(left)
    assert status.readings_total == 6000
    assert status.size_bytes <= max_bytes
    assert status.sent_upto == seqs[1499]


def test_prune_does_not_drop_rows_for_the_wal(buffer: Buffer, path: Path) -> None:
    # One commit per append (as in service): the WAL grows far beyond the data.
    for i in range(200):
        buffer.append("pac1", 1000.0 + i, values(i))
    wal = path.with_name(path.name + "-wal").stat().st_size
    data = _db_bytes(path)
    assert wal > 2 * data
    max_bytes = data + 2 * PAGE
    assert buffer.size_bytes() > max_bytes
    assert prune(buffer, 0, max_bytes, 5000.0) == 0
    status = buffer.status()
    assert (status.unsent, status.dropped_total) == (200, 0)
    assert status.size_bytes <= max_bytes


# -- the poll thread and the sync thread on one Buffer ---------------------------------


def test_poll_and_sync_threads_share_one_buffer(buffer: Buffer) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    appended: list[int] = []
    synced: list[int] = []

    def poll() -> None:
        try:
            i = 0
            while not stop.is_set():
                if i % 10 == 9:
                    appended.append(buffer.append("pac1", 1000.0 + i, None, error="timeout"))
                else:
                    appended.append(buffer.append("pac1", 1000.0 + i, values(i)))
                i += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            buffer.db.close()  # this thread's connection

    def sync() -> None:
        try:
            while not stop.is_set():
                rows = buffer.unsent(50)
                if rows:
                    synced.extend(r[0] for r in rows)
                    buffer.mark_sent(rows[-1][0])
                buffer.status()
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)
        finally:
            buffer.db.close()

    threads = [threading.Thread(target=poll), threading.Thread(target=sync)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    assert len(appended) > 50
    assert appended == sorted(set(appended))
    assert len(synced) > 0
    assert synced == appended[: len(synced)]  # in order, no duplicate, no hole

    rest = [r[0] for r in buffer.unsent(1_000_000)]
    assert synced + rest == appended
    status = buffer.status()
    assert status.unsent == len(rest)
    assert status.sent_upto == synced[-1]
    assert status.readings_total == len(appended) == appended[-1]
    assert status.failed_polls_unsent == sum(1 for r in buffer.unsent(1_000_000) if r[4] is not None)
