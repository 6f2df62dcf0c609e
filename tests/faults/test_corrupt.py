"""Fault 7: the buffer file is corrupt when `edgelog run` starts (an SD card that
lost pages in a power cut).

The file fails `quick_check`; `edgelog run` moves it aside with its -wal and -shm
(a timestamped name, nothing deleted), starts a new buffer (a new buffer_id) and
logs on; `sync-status` names the file moved aside. Identities stay unique across
the two buffers: MariaDB's `(site, buffer_id, seq)` never repeats although both
buffers count seq from 1. Then the salvage recipe of docs/guarantees.md: `sqlite3
.dump` of the old file into a new one, and `edgelog sync --drain` of the copy sends its readings that
MariaDB did not have yet, under the old buffer_id, without duplicates.
(The recipe uses `.dump`: Debian's sqlite3 is built without `.recover`.)
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import (
    FAST_SYNC,
    corrupt_middle_pages,
    edgelog,
    max_seq,
    meta,
    meter_toml,
    prefill,
    query,
    remote_rows,
    wait_for,
    wait_rows,
    write_config,
)


def test_a_corrupt_buffer_is_moved_aside_logging_goes_on_and_identities_stay_unique(
    tmp_path: Path, logger_db, proxy, simulator, logger_factory
) -> None:
    buffer = tmp_path / "buffer.sqlite3"
    prefill(buffer, 1500)  # enough pages to lose some in the middle
    logger = logger_factory(logger_db.fault_toml(port=proxy.port), meter_toml(simulator.port, interval_s=0.2))
    logger.start()
    wait_rows(logger_db, 1510)
    old_id = meta(buffer, "buffer_id")
    proxy.cut()  # MariaDB away: the newest readings stay unsent ...
    seq = max_seq(buffer)
    wait_for(lambda: max_seq(buffer) >= seq + 10, timeout=30, what="unsent readings")
    logger.kill9()  # ... and the power goes: the WAL and -shm stay behind
    position = int(meta(buffer, "sent_upto") or 0)
    old_unsent = [s for (s,) in query(buffer, "SELECT seq FROM readings WHERE seq > ?", position)]
    assert len(old_unsent) >= 10
    in_mariadb_before = len(remote_rows(logger_db, columns="seq"))
    assert Path(f"{buffer}-wal").exists()
    corrupt_middle_pages(buffer)

    proxy.refuse = False
    with logger.running():
        wait_for(lambda: meta(buffer, "buffer_id") not in (None, old_id), timeout=30, what="a new buffer")
        new_id = meta(buffer, "buffer_id")
        wait_for(
            lambda: sum(r["buffer_id"] == new_id for r in remote_rows(logger_db, columns="buffer_id")) >= 10,
            timeout=30,
            what="readings of the new buffer in MariaDB",
        )
        status = logger.status()
    logger.drain()

    # moved aside, with its WAL and shared memory, under a timestamped name; nothing deleted
    (aside,) = tmp_path.glob("buffer.corrupt-*.sqlite3")
    assert status["corrupt_buffers"] == [str(aside)]
    assert Path(f"{aside}-wal").exists() and Path(f"{aside}-shm").exists()
    assert status["buffer_id"] == new_id != old_id
    moved = logger.lines("moved aside to")
    assert len(moved) == 1 and "quick_check failed" in moved[0] and str(aside) in moved[0]
    # identities unique across both buffers, though both count seq from 1
    rows = remote_rows(logger_db, columns="site, buffer_id, seq")
    keys = [(r["site"], r["buffer_id"], r["seq"]) for r in rows]
    assert len(keys) == len(set(keys))
    new_seqs = sorted(r["seq"] for r in rows if r["buffer_id"] == new_id)
    assert new_seqs[0] == 1 and new_seqs == list(range(1, len(new_seqs) + 1))
    assert sum(r["buffer_id"] == old_id for r in rows) == in_mariadb_before  # old rows untouched
    assert new_seqs == [s for (s,) in query(buffer, "SELECT seq FROM readings ORDER BY seq")]

    # the salvage recipe (docs/guarantees.md): recover what can be read, drain it as it was
    if shutil.which("sqlite3") is None:
        pytest.skip("sqlite3 (the command) is not installed: salvage not tried")
    salvaged = tmp_path / "salvaged.sqlite3"
    # `.dump` (not `.recover`: Debian's sqlite3 is built without it) reads what it can,
    # past the damaged pages; the rows those held fail to load, and are lost
    dump = subprocess.run(["sqlite3", str(aside), ".dump"], capture_output=True, text=True, check=True)
    subprocess.run(["sqlite3", str(salvaged)], input=dump.stdout, capture_output=True, text=True)
    assert meta(salvaged, "buffer_id") == old_id
    recovered = {s for (s,) in query(salvaged, "SELECT seq FROM readings")}
    assert set(old_unsent) <= recovered  # the newest pages were intact
    salvage_config = write_config(
        tmp_path,
        logger_db.fault_toml(port=proxy.port),
        meter_toml(simulator.port, interval_s=0.2),
        buffer={"path": salvaged},
        sync=FAST_SYNC,
        name="salvage.toml",
    )
    result = edgelog("sync", "--drain", config=salvage_config, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = remote_rows(logger_db, columns="site, buffer_id, seq")
    keys = [(r["site"], r["buffer_id"], r["seq"]) for r in rows]
    assert len(keys) == len(set(keys))
    old_now = {r["seq"] for r in rows if r["buffer_id"] == old_id}
    assert set(old_unsent) <= old_now  # the readings unsent at the power cut arrived ...
    assert len(old_now) == in_mariadb_before + len(old_unsent)  # ... and nothing twice


def test_corrupt_file_names_never_overwrite(tmp_path: Path) -> None:
    """Two corrupt buffers in the same second get two names."""
    from edgelog.buffer.corrupt import corrupt_name

    path = tmp_path / "buffer.sqlite3"
    first = corrupt_name(path, 1_800_000_000.0)
    first.write_bytes(random.randbytes(10))
    second = corrupt_name(path, 1_800_000_000.0)
    assert first != second and first.name.startswith("buffer.corrupt-20270115T") and not second.exists()
