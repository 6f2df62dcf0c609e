"""`edgelog run` with timestamps taken at three points, for the bench.

    python -m bench.probe OUT.json -- --config edgelog.toml run

runs the real `edgelog.cli.main()` in this process after wrapping, without
changing what they do:

* `GridJob.run` — the grid instant the cadence is running a job for (``due_at``);
* `Service.poll` — when the poll of a meter starts (its bus's cadence fires; one
  thread per bus, so the current poll is kept per thread);
* `Service._hand_over` — which poll (start, grid instant) a reading belongs to:
  the poll thread hands it to the buffer writer thread;
* `Buffer.append_many` — the reading's ``measured_at`` (taken by `Meter.read()`
  right after the meter's response) and the moment ``append_many()`` returned on
  the writer thread, i.e. the reading is committed and fsync()ed: durable;
* `Buffer.mark_sent` — when the sync worker moved the position, and to where;
* `SyncWorker.drain` — when each drain started and ended, and the rows it sent
  (`edgelog sync --drain` is one call; `edgelog run`'s sync thread makes one per
  round);
* `Service.housekeeping` — when each pass (prune, every 60 s, on the writer
  thread) started and ended.

At exit (SIGTERM ends `edgelog run` normally) it writes them to OUT.json with
the cadence's own counters (runs and missed samples per grid job). The lists
are kept in `array`s: a 10-minute run at 10 Hz adds well under a MiB.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.poll_start = array("d")
        self.append_meter: list[str] = []
        self.append_poll_start = array("d")
        self.append_due = array("d")
        self.append_measured = array("d")
        self.append_durable = array("d")
        self.append_seq = array("q")
        self.append_error = array("b")
        self.sent_at = array("d")
        self.sent_started = array("d")
        self.sent_upto = array("q")
        self.drains: list[tuple[float, float, int]] = []
        self.housekeeping: list[tuple[float, float]] = []
        self.services: list[Any] = []
        self.lock = threading.Lock()
        #: per thread (one per bus): the poll it runs now, its start and grid instant
        self._current = threading.local()
        #: (meter, measured_at) -> (poll start, grid instant), from hand-over to commit
        self._handed: dict[tuple[str, float], tuple[float, float]] = {}

    def install(self) -> None:
        from edgelog import cadence as cadence_mod
        from edgelog import service as service_mod
        from edgelog.buffer import store
        from edgelog.sync import worker as worker_mod

        rec = self
        service_cls = service_mod.Service
        buffer_cls = store.Buffer
        init, poll = service_cls.__init__, service_cls.poll
        housekeeping = service_cls.housekeeping

        def probe_housekeeping(svc: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.time()
            try:
                return housekeeping(svc, *args, **kwargs)
            finally:
                rec.housekeeping.append((started, time.time()))

        append_many, mark_sent = buffer_cls.append_many, buffer_cls.mark_sent
        hand_over = service_cls._hand_over
        drain = worker_mod.SyncWorker.drain
        job_run = cadence_mod.GridJob.run

        def probe_job_run(job: Any, *args: Any, **kwargs: Any) -> Any:
            rec._current.job = job  # its due_at, read at hand-over: the instant this run is for
            return job_run(job, *args, **kwargs)

        def probe_drain(worker: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.time()
            sent = drain(worker, *args, **kwargs)
            rec.drains.append((started, time.time(), int(sent)))
            return sent

        def probe_init(svc: Any, *args: Any, **kwargs: Any) -> None:
            init(svc, *args, **kwargs)
            rec.services.append(svc)

        def probe_poll(svc: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.time()
            rec.poll_start.append(started)
            rec._current.start = started  # this bus thread's hand-over belongs to this poll
            return poll(svc, *args, **kwargs)

        def probe_hand_over(svc: Any, new: Any, *args: Any) -> Any:
            with rec.lock:
                job = getattr(rec._current, "job", None)
                current = (getattr(rec._current, "start", 0.0), (job.due_at or 0.0) if job else 0.0)
                rec._handed[(new.meter, new.measured_at)] = current
            return hand_over(svc, new, *args)

        def probe_append_many(buf: Any, readings: Any) -> Any:
            seqs = append_many(buf, readings)
            durable = time.time()
            with rec.lock:
                for new, seq in zip(readings, seqs, strict=True):
                    start, due = rec._handed.pop((new.meter, new.measured_at), (0.0, 0.0))
                    rec.append_meter.append(new.meter)
                    rec.append_poll_start.append(start)
                    rec.append_due.append(due)
                    rec.append_measured.append(new.measured_at)
                    rec.append_durable.append(durable)
                    rec.append_seq.append(int(seq) if seq is not None else -1)
                    rec.append_error.append(1 if new.error is not None else 0)
            return seqs

        def probe_mark_sent(buf: Any, upto_seq: int, *args: Any, **kwargs: Any) -> Any:
            started = time.time()
            result = mark_sent(buf, upto_seq, *args, **kwargs)
            with rec.lock:
                rec.sent_started.append(started)
                rec.sent_at.append(time.time())
                rec.sent_upto.append(int(upto_seq))
            return result

        service_cls.__init__ = probe_init  # type: ignore[method-assign]
        service_cls.poll = probe_poll  # type: ignore[method-assign]
        service_cls.housekeeping = probe_housekeeping  # type: ignore[method-assign]
        service_cls._hand_over = probe_hand_over  # type: ignore[method-assign]
        buffer_cls.append_many = probe_append_many  # type: ignore[method-assign]
        buffer_cls.mark_sent = probe_mark_sent  # type: ignore[method-assign]
        worker_mod.SyncWorker.drain = probe_drain  # type: ignore[method-assign]
        cadence_mod.GridJob.run = probe_job_run  # type: ignore[method-assign]

    def cadence_stats(self) -> list[dict[str, Any]]:
        out = []
        for svc in self.services:
            cadences = [p.cadence for p in getattr(svc, "pollers", [])] or [svc.cadence]
            for job in (j for c in cadences for j in c.scheduler.jobs):
                stats = getattr(job, "stats", None)
                if stats is None:
                    continue
                out.append(
                    {
                        "interval_s": getattr(job, "interval_s", None),
                        "runs": stats.runs,
                        "missed": stats.missed,
                        "clock_jumps": stats.clock_jumps,
                    }
                )
        return out

    def sink_stats(self) -> dict[str, Any]:
        for svc in self.services:
            stats = getattr(getattr(svc, "sink", None), "stats", None)
            if isinstance(stats, dict):
                return dict(stats)
        return {}

    def dump(self, path: Path, exit_status: int) -> None:
        data = {
            "exit_status": exit_status,
            "poll_start": list(self.poll_start),
            "append": {
                "meter": self.append_meter,
                "poll_start": list(self.append_poll_start),
                "due": list(self.append_due),
                "measured_at": list(self.append_measured),
                "durable_at": list(self.append_durable),
                "seq": list(self.append_seq),
                "error": list(self.append_error),
            },
            "mark_sent": {
                "at": list(self.sent_at),
                "started": list(self.sent_started),
                "upto": list(self.sent_upto),
            },
            "drains": self.drains,
            "housekeeping": self.housekeeping,
            "cadence": self.cadence_stats(),
            "sink": self.sink_stats(),
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "--":
        print("usage: python -m bench.probe OUT.json -- EDGELOG-ARGS...", file=sys.stderr)
        return 2
    out = Path(argv[0])
    recorder = Recorder()
    recorder.install()
    from edgelog.cli import main as edgelog_main

    status = 1
    try:
        status = edgelog_main(argv[2:])
    finally:
        recorder.dump(out, status)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
