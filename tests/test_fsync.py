"""Every reading's commit is fsync()ed: strace counts the syncs of the WAL made by the
real `edgelog run` process (started under strace), MariaDB reachable, default settings.

The bytes written per reading fell (docs/performance.md); this checks that the
durability did not go with them: with ``synchronous=NORMAL``, or readings committed
in groups, there would be fewer syncs of the WAL than readings. And that the sync
position, committed at every sync round, costs no fsync of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import LoggerDB, child_env, meter_toml, wait_for, write_config

from edgelog.buffer import Buffer
from edgelog.errors import BufferError
from edgelog.simulate import SimulatorThread

READINGS = 8
#: WAL syncs besides the readings' (7 seen): creating the file, the sync worker's first
#: notes (how it writes, the node in use, the aggregates' pending minutes: each written
#: once, then again only when it changes), the checkpoint at the stop. The position,
#: written at every sync round (18 times in the run), must not add to them.
EXTRA_SYNCS = 10
#: strace -y names each fd's file: fdatasync(7</path/buffer.sqlite3-wal>) = 0
WAL_SYNC = re.compile(r"\b(?:fsync|fdatasync)\(\d+<([^>]*)>\)\s+=\s+0")


def child_of(pid: int) -> int:
    """The `edgelog run` process strace (`pid`) started, or 0 while there is none. strace
    forks short-lived children of its own at start (to test ptrace): not those."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in map(int, out):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"edgelog"]:
                return child
    return 0


def stored(buffer: Path) -> int:
    """Readings in the buffer so far (0 while `edgelog run` is still creating it)."""
    try:
        b = Buffer(buffer, create=False)
    except BufferError:
        return 0
    try:
        return b.readings_total()
    finally:
        b.close()


def traced_run(tmp_path: Path, config: Path, readings_wanted: int) -> tuple[int, int]:
    """`edgelog run` under strace until the buffer holds `readings_wanted` readings, then
    SIGTERM: (readings stored, fsyncs of the WAL)."""
    buffer = tmp_path / "buffer.sqlite3"
    trace = tmp_path / "strace.txt"
    cmd = ["strace", "-f", "-y", "-e", "trace=fsync,fdatasync", "-o", str(trace)]
    cmd += [sys.executable, "-m", "edgelog", "--config", str(config), "run"]
    log = (tmp_path / "run.log").open("wb")
    # a session of their own: strace and edgelog can be killed together, whatever failed
    tracer = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
    )
    try:
        child = wait_for(lambda: child_of(tracer.pid), timeout=30, what="edgelog run under strace")
        wait_for(lambda: stored(buffer) >= readings_wanted, timeout=60, what=f"{readings_wanted} readings")
        time.sleep(0.5)
        os.kill(child, signal.SIGTERM)
        assert tracer.wait(60) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tracer.pid, signal.SIGKILL)  # nothing left if all went well
        tracer.wait(10)
        log.close()
    syncs = [m.group(1) for m in WAL_SYNC.finditer(trace.read_text())]
    return stored(buffer), sum(1 for name in syncs if name == f"{buffer}-wal")


needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed (scripts/setup)"
)


@needs_strace
def test_every_reading_is_fsynced_by_edgelog_run(
    tmp_path: Path, simulator: SimulatorThread, logger_db: LoggerDB
) -> None:
    config = write_config(tmp_path, logger_db.toml(), meter_toml(simulator.port, interval_s=1.0))
    readings, wal_syncs = traced_run(tmp_path, config, READINGS)
    assert readings >= READINGS
    # one sync of the WAL per reading at least ...
    assert wal_syncs >= readings, (wal_syncs, readings)
    # ... and the sync position, committed at every sync round (every 0.5 s here: two
    # a reading), adds none of its own
    assert wal_syncs <= readings + EXTRA_SYNCS, (wal_syncs, readings)


@needs_strace
def test_commit_every_s_commits_readings_in_groups(
    tmp_path: Path, simulator: SimulatorThread, logger_db: LoggerDB
) -> None:
    """`[buffer] commit_every_s = 1` at 5 Hz: one fsync a second, not one a reading."""
    config = write_config(
        tmp_path, logger_db.toml(), meter_toml(simulator.port, interval_s=0.2), buffer={"commit_every_s": 1}
    )
    readings, wal_syncs = traced_run(tmp_path, config, 25)
    assert readings >= 25
    assert wal_syncs <= readings / 3 + EXTRA_SYNCS, (wal_syncs, readings)
