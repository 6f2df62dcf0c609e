"""`edgelog run`: meters -> buffer on the sampling grid, with the sync worker beside it.

Threads: the main thread runs the cadence (polls and housekeeping, in order,
so meters on one RS485 line never talk at once); one thread runs the sync
worker, so a slow or absent MariaDB never delays a poll.

SIGTERM / SIGINT: the poll in flight finishes and is committed, the sync
worker finishes (commits or rolls back) the batch in flight, and the process
exits 0. A reading is never half-written: the buffer commits whole rows.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field

from . import clock
from .buffer import Buffer
from .cadence import Cadence, Clock
from .config import Config
from .errors import EdgelogError, MeterError
from .meter import Meter, close_meters, open_meters
from .notify import Notifier
from .sync import MariaDBSink, SyncWorker

log = logging.getLogger(__name__)

HOUSEKEEPING_EVERY_S = 60.0


@dataclass
class FaultLog:
    """Log a meter fault once when it starts and once when it ends, with a count,
    not one line per failed poll."""

    failing: dict[str, int] = field(default_factory=dict)

    def failed(self, meter: str, message: str) -> None:
        count = self.failing.get(meter, 0) + 1
        self.failing[meter] = count
        if count == 1:
            log.warning("meter %s: poll failed: %s (recorded as a gap)", meter, message)
        elif count in (10, 100) or count % 1000 == 0:
            log.warning("meter %s: still failing, %d polls in a row: %s", meter, count, message)

    def answered(self, meter: str) -> None:
        count = self.failing.pop(meter, 0)
        if count:
            log.warning("meter %s: answers again after %d failed polls", meter, count)


class Service:
    def __init__(self, config: Config, wall: Clock | None = None):
        self.config = config
        self.clock = wall or Clock()
        self.stop = threading.Event()
        self.notifier = Notifier()
        self.faults = FaultLog()
        self.buffer = Buffer(config.buffer.path, config.columns())
        self.meters: list[Meter] = open_meters(config.meters)
        self.sink = MariaDBSink(config.mariadb, config.site)
        self.worker = SyncWorker(
            self.buffer, self.sink, config.columns(), config.mariadb.batch_size, config.sync
        )
        self.cadence = Cadence(clock=self.clock)

    def poll(self, meter: Meter) -> None:
        """Read one meter and commit the reading (or the gap) before returning."""
        ok = clock.clock_ok()
        try:
            reading = meter.read()
        except MeterError as exc:
            self.faults.failed(meter.name, str(exc))
            self._store(meter.name, self.clock.wall(), None, str(exc), ok)
        else:
            self.faults.answered(meter.name)
            self._store(meter.name, reading.measured_at, reading.values, None, ok)
        self.notifier.watchdog()

    def _store(self, meter: str, at: float, values, error: str | None, ok: bool) -> None:
        try:
            self.buffer.append(meter, at, values, error=error, clock_ok=ok)
        except EdgelogError as exc:
            log.error("meter %s: reading lost: %s", meter, exc)

    def housekeeping(self) -> None:
        b = self.config.buffer
        try:
            self.buffer.prune(b.keep_sent_days * 86400, int(b.max_mb * 1024 * 1024))
        except Exception:
            log.exception("housekeeping failed")

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info(
            "received %s: finishing the reading in flight, then stopping",
            signal.Signals(signum).name,
        )
        self.stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for meter in self.meters:
            self.cadence.every(meter.config.interval_s, lambda m=meter: self.poll(m))
        self.cadence.every(HOUSEKEEPING_EVERY_S, self.housekeeping)
        syncer = threading.Thread(target=self.worker.run, args=(self.stop,), name="sync")
        syncer.start()
        names = ", ".join(m.name for m in self.meters)
        log.info("logging %s into %s (buffer %s)", names, self.config.mariadb.table, self.buffer.path)
        self.notifier.ready(f"logging {names}")
        try:
            self.cadence.run(self.stop, max_sleep_s=0.5, on_idle=self.notifier.watchdog)
        finally:
            self.stop.set()
            self.notifier.stopping()
            syncer.join()
            close_meters(self.meters)
            self.buffer.close()
        log.info("stopped")
        return 0
