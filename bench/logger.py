"""The real `edgelog` commands, run as subprocesses with their timings log on
(``$EDGELOG_TIMINGS``, edgelog/timings.py) and watched from outside (/proc)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgelog.timings import ENV_VAR as TIMINGS_ENV

from .data import BuiltBuffer
from .kit import ROOT, Bench, copy_buffer, env, remove_buffer
from .procs import FsyncProbe, Sample, Sampler, terminate
from .timelog import TimingLog


def _timings(bench: Bench, tag: str) -> tuple[Path, dict[str, str]]:
    """A fresh timings log for a process (on a tmpfs), and the environment naming it."""
    path = bench.timings_dir / f"{tag}.timings.jsonl"
    path.unlink(missing_ok=True)
    return path, {**env(), TIMINGS_ENV: str(path)}


def _keep(bench: Bench, path: Path) -> None:
    """Move a timings log from the tmpfs into the work directory, once the process is gone."""
    if path.exists():
        shutil.move(path, bench.work / path.name)


def cli_drain(
    bench: Bench,
    built: BuiltBuffer,
    transport: str = "socket",
    tag: str = "drain",
    with_history: bool = True,
    aggregates: bool = False,
) -> dict[str, Any]:
    """The real `edgelog sync --drain` on a copy of `built`, timed by its own timings log
    (the drain itself, without the interpreter's start-up: the wall time is `wall_s`)."""
    account = bench.account(tag)
    bench.prepare_table(account, with_history)
    buffer = copy_buffer(built.path, bench.work / f"{tag}.sqlite3")
    bench.settle()
    text = bench.config_text(account, buffer, transport, max_mb=4096, aggregates=aggregates)
    config = bench.write_config(tag, text)
    timings, environ = _timings(bench, tag)
    cmd = [sys.executable, "-m", "edgelog", "--config", str(config), "sync", "--drain"]
    cpu0, t0 = bench.server_cpu(), time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ, cwd=ROOT
    )
    sampler = Sampler(proc.pid, every=0.1).start()
    out, err = proc.communicate(timeout=3600)
    wall = time.perf_counter() - t0
    server = bench.server_cpu() - cpu0
    sampler.stop()
    drains = TimingLog.read(timings).drains
    _keep(bench, timings)
    if proc.returncode != 0 or len(drains) != 1:
        raise RuntimeError(
            f"edgelog sync --drain failed ({proc.returncode}, {len(drains)} drains): {out} {err}"
        )
    started, ended, sent = drains[0]
    seconds = ended - started
    total, distinct = bench.count(account)
    remove_buffer(buffer)
    return {
        "what": "edgelog sync --drain (subprocess; the drain's time from its timings log)",
        "table_held_history_rows": bench.plan.history_rows if with_history else 0,
        "command_output": out.strip().splitlines()[-1:] if out.strip() else [],
        "transport": transport,
        "rows": total,
        "distinct": distinct,
        "sent": sent,
        "seconds": seconds,
        "wall_s": wall,
        "rows_per_s": sent / max(seconds, 1e-9),
        "rows_per_s_wall": sent / wall,
        "peak_rss_mib": sampler.peak_kib / 1024,
        "server_cpu_s": server,
        "server_cpu_us_per_row": server / max(sent, 1) * 1e6,
        "account": account.database,
    }


@dataclass
class Run:
    """What a run of `edgelog run` left: its timings log, and what was watched meanwhile."""

    t0: float  # wall clock when the process started
    done_at_s: float | None  # when `until` first held, seconds after t0
    exit_status: int
    log: TimingLog
    samples: list[Sample]  # RSS and write_bytes; Sample.t in seconds after t0
    fsync_probe: FsyncProbe
    mariadb_rows: int
    mariadb_distinct: int


def run_logger(
    bench: Bench,
    tag: str,
    buffer: Path,
    meters: Sequence[dict[str, Any]],
    until: Callable[[float, TimingLog], bool],
    after_s: float,
    max_s: float,
    sample_every: float = 0.25,
) -> Run:
    """`edgelog run` until `until(elapsed, timings so far)` holds, then `after_s` more
    seconds, then SIGTERM (as systemd stops it)."""
    account = bench.account(tag)
    bench.prepare_table(account)
    config = bench.write_config(tag, bench.config_text(account, buffer, meters=meters, max_mb=4096))
    timings, environ = _timings(bench, tag)
    log = (bench.work / f"{tag}.log").open("wb")
    cmd = [sys.executable, "-m", "edgelog", "--config", str(config), "run"]
    bench.settle()
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=ROOT)
    sampler = Sampler(proc.pid, every=sample_every).start()
    fsync_probe = FsyncProbe(buffer.parent).start()
    so_far = TimingLog()
    done_at: float | None = None
    try:
        while True:
            elapsed = time.time() - t0
            if proc.poll() is not None:
                raise RuntimeError(f"edgelog run exited early ({proc.returncode}); see {log.name}")
            if done_at is None and until(elapsed, so_far.follow(timings)):
                done_at = elapsed
            if done_at is not None and elapsed >= done_at + after_s:
                break
            if elapsed > max_s:
                bench.say(f"{tag}: stopping after {max_s:.0f} s (condition not reached)")
                break
            time.sleep(0.1)
    finally:
        terminate(proc)
        sampler.stop()
        fsync_probe.stop()
        log.close()
    result = TimingLog.read(timings)
    _keep(bench, timings)
    total, distinct = bench.count(account)
    bench.drop(account)
    status = proc.returncode if proc.returncode is not None else -1
    return Run(t0, done_at, status, result, sampler.samples, fsync_probe, total, distinct)
