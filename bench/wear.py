"""Card wear: the bytes `edgelog run` writes to storage per reading, at 1 Hz, with the
default settings and MariaDB reachable.

    python -m bench.wear [--seconds 600] [--workdir DIR] [--out FILE]

runs this measurement alone (`python -m bench` runs it with the others: section 7;
`python -m bench --only wear` too).

Measured on the real process from outside, its timings log off: ``write_bytes`` of
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
import time
from pathlib import Path
from typing import Any

from edgelog.buffer import Buffer, Span
from edgelog.profiles import PAC3100

from .kit import ROOT, Bench, env, page_size, remove_buffer, say_since, timed, work_dir
from .plan import Plan
from .procs import terminate, write_bytes
from .table import Line, n, target

TITLE = "bytes written per reading at 1 Hz (card wear)"
INTERVAL_S = 1.0


def run(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    plan = bench.plan
    with timed(bench.say, f"7. `edgelog run` at 1 Hz for {plan.wear_s:.0f} s: bytes written per reading"):
        return {"card_wear": card_wear(bench, plan.wear_s, plan.wear_warmup_s)}


def card_wear(bench: Bench, seconds: float, warmup_s: float) -> dict[str, Any]:
    """`edgelog run` polling one PAC3100 at 1 Hz for `warmup_s` + `seconds`."""
    sim = bench.simulator([PAC3100.unit_id])
    account = bench.account("wear")
    bench.prepare_table(account)
    buffer = bench.work / "wear.sqlite3"
    remove_buffer(buffer)
    meters = [{"name": "pac1", "port": sim.port, "unit_id": PAC3100.unit_id, "interval_s": INTERVAL_S}]
    # [buffer] and [sync] left at their defaults
    config = bench.write_config("wear", bench.config_text(account, buffer, meters=meters))
    bench.settle()
    log = (bench.work / "wear.log").open("wb")
    cmd = [sys.executable, "-m", "edgelog", "--config", str(config), "run"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=ROOT)
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
        "page_size": page_size(buffer),
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


def lines(r: dict[str, Any]) -> list[Line]:
    cw = r["card_wear"]
    return [
        (
            "7 wear",
            f"edgelog run 1 Hz, {cw['seconds']:.0f} s: readings, bytes written per reading",
            f"{cw['readings']:,}, {n(cw['write_bytes_per_reading'])}",
        ),
        (
            "7 wear",
            f"  + checkpoint share (database file per reading, {cw['page_size']}-byte pages) = total",
            f"{n(cw['checkpoint_bytes_per_reading'])} = {n(cw['total_bytes_per_reading'])}",
        ),
    ]


def targets(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    w = r["card_wear"]["total_bytes_per_reading"]
    kib = None if w is None else round(w / 1024, 2)
    return [target("bytes written per reading at 1 Hz (KiB)", kib, "<= 6", w is not None and w <= 6 * 1024)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wear", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=Plan.make(False).wear_s, help="measured window")
    parser.add_argument("--workdir", type=Path, help="keep the work files here (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="also write the figures here, as JSON")
    args = parser.parse_args(argv)
    plan = Plan.make(False)
    with work_dir(args.workdir, "wear-") as work:
        bench = Bench(plan, work, say_since(time.monotonic()))
        bench.start()
        try:
            result = card_wear(bench, args.seconds, plan.wear_warmup_s)
        finally:
            bench.stop()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
