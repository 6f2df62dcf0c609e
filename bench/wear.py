"""Card wear: the bytes `edgelog run` writes to storage per reading, at 1 Hz, with the
default settings and MariaDB reachable.

    python -m bench.wear [--seconds 600] [--workdir DIR] [--out FILE]

runs this measurement alone (`python -m bench` runs it with the others: section 7).

Measured on the real process from outside, no probe: ``write_bytes`` of
``/proc/<pid>/io`` (what the process caused to be written to storage, in file-system
pages: the WAL frames, the pages of the ``-shm`` index the kernel writes back, the
database pages a checkpoint copies) over a window that starts after a warm-up, and
the readings committed in that window (from the buffer). A checkpoint copies the WAL
into the database file once every 4 MiB of WAL, about once an hour at 1 Hz, so a
10-minute window may hold none: its share is reported apart, as the database file's
bytes per reading after the run (the final checkpoint at the stop writes every page
there once), and the total is the sum of the two.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgelog.buffer import Buffer, Span
from edgelog.profiles import PAC3100

from .procs import terminate, write_bytes
from .run import ROOT, Bench, Plan, _env

INTERVAL_S = 1.0


def card_wear(bench: Bench, seconds: float, warmup_s: float) -> dict[str, Any]:
    """`edgelog run` polling one PAC3100 at 1 Hz for `warmup_s` + `seconds`."""
    sim = bench.simulator([PAC3100.unit_id])
    account = bench.account("wear")
    bench.prepare_table(account)
    buffer = bench.work / "wear.sqlite3"
    for ext in ("", "-wal", "-shm", "-reserve"):
        Path(f"{buffer}{ext}").unlink(missing_ok=True)
    meters = [{"name": "pac1", "port": sim.port, "unit_id": PAC3100.unit_id, "interval_s": INTERVAL_S}]
    # [buffer] and [sync] left at their defaults
    config = bench.write_config("wear", bench.config_text(account, buffer, meters=meters))
    bench.settle()
    log = (bench.work / "wear.log").open("wb")
    cmd = [sys.executable, "-m", "edgelog", "--config", str(config), "run"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    try:
        _alive_for(proc, warmup_s)
        t0, w0 = time.time(), write_bytes(proc.pid)
        _alive_for(proc, seconds)
        t1, w1 = time.time(), write_bytes(proc.pid)
    finally:
        terminate(proc)
        log.close()
    if w0 is None or w1 is None:
        raise RuntimeError("/proc/<pid>/io has no write_bytes here")
    reader = Buffer(buffer, create=False)
    try:
        readings = reader.count_between(Span(t0, t1))
        failed = readings - reader.count_between(Span(t0, t1, gaps=False))
        total = reader.readings_total()
        page_size = reader.db.pragma("page_size")
    finally:
        reader.close()
    window = (w1 - w0) / readings if readings else None
    checkpoint = buffer.stat().st_size / total if total else None
    mariadb_rows, _ = bench.count(account)
    bench.drop(account)
    return {
        "interval_s": INTERVAL_S,
        "seconds": t1 - t0,
        "warmup_s": warmup_s,
        "readings": readings,
        "failed_polls": failed,
        "write_bytes": w1 - w0,
        "write_bytes_per_reading": window,
        "checkpoint_bytes_per_reading": checkpoint,
        "total_bytes_per_reading": window + checkpoint if window and checkpoint else None,
        "page_size": page_size,
        "mariadb_rows": mariadb_rows,
        "readings_total": total,
        "exit_status": proc.returncode,
    }


def _alive_for(proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edgelog run exited early ({proc.returncode}); see wear.log")
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wear", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=Plan.make(False).wear_s, help="measured window")
    parser.add_argument("--workdir", type=Path, help="keep the work files here (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="also write the figures here, as JSON")
    args = parser.parse_args(argv)
    plan = Plan.make(False)
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s] {text}", file=sys.stderr, flush=True)

    def measure(work: Path) -> dict[str, Any]:
        bench = Bench(plan, work, say)
        bench.start()
        try:
            return card_wear(bench, args.seconds, plan.wear_warmup_s)
        finally:
            bench.stop()

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = measure(Path(tempfile.mkdtemp(prefix="wear-", dir=args.workdir)))
    else:
        # not /tmp if it is a tmpfs: write_bytes must count a real disk
        with tempfile.TemporaryDirectory(prefix="edgelog-wear-", dir="/var/tmp") as tmp:
            result = measure(Path(tmp))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
