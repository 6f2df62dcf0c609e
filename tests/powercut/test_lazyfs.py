"""The power-cut file system itself: it forgets exactly what POSIX lets a power cut forget."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fs import PowerCutFS, missing, mounted

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[PowerCutFS]:
    with mounted(tmp_path) as f:
        yield f


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes, sync: bool = False) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())


def _durable_file(fs: PowerCutFS, name: str, data: bytes) -> Path:
    path = fs.mount / name
    _write(path, data, sync=True)
    _fsync(fs.mount)
    return path


def test_a_write_without_fsync_is_lost(fs: PowerCutFS) -> None:
    path = _durable_file(fs, "f", b"old" * 1000)
    with path.open("r+b") as f:
        f.write(b"new")
    assert path.read_bytes()[:3] == b"new"  # the page cache has it
    report = fs.cut()
    assert report["dirty_sectors"] == 1
    fs.restart()
    assert path.read_bytes() == b"old" * 1000


def test_a_write_and_fsync_survive(fs: PowerCutFS) -> None:
    path = _durable_file(fs, "f", b"old")
    _write(path, b"new and longer", sync=True)
    fs.cut()
    fs.restart()
    assert path.read_bytes() == b"new and longer"


def test_a_file_fsynced_in_a_directory_never_fsynced_is_gone(fs: PowerCutFS) -> None:
    (fs.mount / "d").mkdir()
    _fsync(fs.mount)
    _write(fs.mount / "d" / "f", b"data", sync=True)
    _write(fs.mount / "g", b"data", sync=True)
    fs.cut()
    fs.restart()
    assert os.listdir(fs.mount) == ["d"]
    assert os.listdir(fs.mount / "d") == []


def test_a_directory_fsync_keeps_the_name_not_the_unsynced_data(fs: PowerCutFS) -> None:
    _write(fs.mount / "f", b"data")
    _fsync(fs.mount)
    fs.cut()
    fs.restart()
    assert (fs.mount / "f").read_bytes() == b""  # the classic empty file after a crash


@pytest.mark.parametrize(
    ("fsync_dir", "after_the_cut"),
    [(False, b"old"), (True, b"new")],
    ids=["without_a_directory_fsync_leaves_the_old_name", "then_a_directory_fsync_survives"],
)
def test_a_rename(fs: PowerCutFS, fsync_dir: bool, after_the_cut: bytes) -> None:
    _durable_file(fs, "config", b"old")
    _write(fs.mount / "config.tmp", b"new", sync=True)
    os.replace(fs.mount / "config.tmp", fs.mount / "config")
    assert (fs.mount / "config").read_bytes() == b"new"
    if fsync_dir:
        _fsync(fs.mount)
    fs.cut()
    fs.restart()
    assert sorted(os.listdir(fs.mount)) == ["config"]
    assert (fs.mount / "config").read_bytes() == after_the_cut


def test_an_unlink_without_a_directory_fsync_comes_back(fs: PowerCutFS) -> None:
    _durable_file(fs, "f", b"data")
    (fs.mount / "f").unlink()
    fs.cut()
    fs.restart()
    assert (fs.mount / "f").read_bytes() == b"data"


def test_a_chmod_is_durable_only_with_the_file_fsync(fs: PowerCutFS) -> None:
    path = _durable_file(fs, "secret", b"pw")
    path.chmod(0o644)
    _fsync(path)
    path.chmod(0o600)
    fs.cut()
    fs.restart()
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    _fsync(path)
    fs.cut()
    fs.restart()
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_torn_cut_keeps_some_sectors_of_a_pending_write_and_nothing_else(fs: PowerCutFS) -> None:
    sectors = 64
    old = bytes(range(256)) * 2 * sectors
    path = _durable_file(fs, "f", old)
    with path.open("r+b") as f:
        f.write(b"\xee" * 512 * sectors)
    fs.cut(mode="torn", seed=7)
    fs.restart()
    data = path.read_bytes()
    assert len(data) == len(old)
    kept = [data[i * 512 : (i + 1) * 512] for i in range(sectors)]
    assert all(s in (b"\xee" * 512, old[i * 512 : (i + 1) * 512]) for i, s in enumerate(kept)), (
        "not per sector"
    )
    new = sum(s == b"\xee" * 512 for s in kept)
    assert 0 < new < sectors, f"{new} of {sectors} sectors: not torn"


def test_a_torn_cut_may_keep_a_prefix_of_an_append(fs: PowerCutFS) -> None:
    path = _durable_file(fs, "log", b"a" * 512)
    with path.open("ab") as f:
        f.write(b"b" * 512 * 8)
    sizes = set()
    for seed in range(6):
        fs.cut(mode="torn", seed=seed)
        fs.restart()
        data = path.read_bytes()
        sizes.add(len(data))
        assert data[:512] == b"a" * 512
        assert set(data[512:]) <= {ord("b"), 0}
        _write(path, b"a" * 512, sync=True)
        with path.open("ab") as f:
            f.write(b"b" * 512 * 8)
    assert sizes == {512, 512 * 9}, sizes


def test_sqlite_wal_full_survives_a_cut_and_normal_does_not(fs: PowerCutFS) -> None:
    db = fs.mount / "b.sqlite3"
    for sync, expected in (("FULL", 50), ("NORMAL", 50)):
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {sync}")
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        for i in range(50):
            with conn:
                conn.execute("INSERT INTO t VALUES (?)", (i,))
        # a second connection reads the WAL index through the shared mmap of -shm
        other = sqlite3.connect(db)
        assert other.execute("SELECT COUNT(*) FROM t").fetchone()[0] == expected + (sync == "NORMAL") * 50
        other.close()
        fs.cut(kill=None)
        conn.close()
        fs.restart()
        with sqlite3.connect(db) as check:
            assert check.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            assert check.execute("SELECT COUNT(*) FROM t").fetchone()[0] == expected
        check.close()


def test_posix_locks_work_across_processes(fs: PowerCutFS) -> None:
    db = fs.mount / "b.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("BEGIN IMMEDIATE")
    code = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=0.2); c.execute('BEGIN IMMEDIATE')"
    other = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True)
    assert "database is locked" in other.stderr
    conn.execute("COMMIT")
    assert subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True).returncode == 0
    conn.close()


def test_coreutils_sync_of_a_file_and_of_a_directory_make_them_durable(fs: PowerCutFS) -> None:
    """What the shell installers use: `sync FILE DIR` fsyncs both (coreutils >= 8.24);
    `sync -f` (syncfs) and a bare `sync` never reach a FUSE file system: nothing kept."""
    _write(fs.mount / "kept", b"data")
    subprocess.run(["sync", str(fs.mount / "kept"), str(fs.mount)], check=True)
    _write(fs.mount / "lost", b"data")
    subprocess.run(["sync", "-f", str(fs.mount)], check=True)
    subprocess.run(["sync"], check=True)
    fs.cut()
    fs.restart()
    assert os.listdir(fs.mount) == ["kept"]
    assert (fs.mount / "kept").read_bytes() == b"data"


def test_an_armed_cut_kills_the_writer_at_the_nth_fsync(fs: PowerCutFS, tmp_path: Path) -> None:
    code = (
        "import os,sys,itertools\n"
        "fd=os.open(sys.argv[1], os.O_WRONLY|os.O_CREAT|os.O_APPEND)\n"
        "os.fsync(os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY))\n"
        "for i in itertools.count():\n"
        "    os.write(fd, b'%08d' % i); os.fsync(fd)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(fs.mount / "log")])
    fs.arm("fsync", pattern="log", count=40, kill=proc.pid)
    report = fs.wait_cut(timeout=60)
    assert report["cut"] and report["killed"] == proc.pid
    assert proc.wait(10) == -9
    fs.restart()
    data = (fs.mount / "log").read_bytes()
    assert data == b"".join(b"%08d" % i for i in range(39))  # the 40th fsync never happened


def test_a_meta_cut_keeps_names_and_sizes_but_not_unsynced_data(fs: PowerCutFS) -> None:
    _durable_file(fs, "config", b"old")
    _write(fs.mount / "config.tmp", b"new contents")
    os.replace(fs.mount / "config.tmp", fs.mount / "config")
    fs.cut(mode="meta")
    fs.restart()
    assert os.listdir(fs.mount) == ["config"]
    assert (fs.mount / "config").read_bytes() == b"\0" * len(b"new contents")  # neither old nor new


def test_record_writes_the_state_a_cut_would_leave_before_each_operation(
    fs: PowerCutFS, tmp_path: Path
) -> None:
    fs.record(tmp_path / "states")
    path = fs.mount / "f"
    _write(path, b"data", sync=True)  # create, write, fsync
    _fsync(fs.mount)  # fsyncdir
    n = fs.stop_record()
    assert n == 5
    listing = {s: sorted(os.listdir(tmp_path / "states" / f"{s:05d}-drop")) for s in range(1, n + 1)}
    assert listing == {1: [], 2: [], 3: [], 4: [], 5: ["f"]}
    meta = [(tmp_path / "states" / f"{s:05d}-meta" / "f") for s in range(2, n + 1)]
    assert [p.read_bytes() for p in meta] == [b"", b"\0" * 4, b"data", b"data"]
    assert (tmp_path / "states/00005-drop/f").read_bytes() == b"data"
    assert path.read_bytes() == b"data"  # no cut: the file system goes on
