"""`edgelog run`: meters -> buffer on the sampling grid, with the sync worker beside it.

This module only wires the parts together, starts them and stops them; each
policy lives with its part:

* one thread per bus (`poller.py`): the meters of one RS485 line or TCP gateway,
  polled in order on their grid, so a silent meter on one bus never delays
  another bus. Every slot of every meter leaves a row: a reading, a gap for a
  failed poll, or a gap for a slot its bus was too busy to poll. Each reading's
  ``clock_ok`` comes from the clock guard (`clockguard.py`);
* the buffer writer thread (`buffer/keeper.py`, `buffer/writer.py`) commits each
  reading, waited for until the next poll of that bus is due (a slow fsync never
  costs a sample), makes room per ``when_full`` and runs the minute's housekeeping;
* one thread runs the sync worker (`sync/worker.py`), so a slow or absent MariaDB
  never delays a poll;
* the main thread (`supervisor.py`) queues the housekeeping, pings the systemd
  watchdog only while every bus thread makes progress, and fails the service
  (exit 1, so systemd restarts it) if any thread ends while it runs.

SIGTERM / SIGINT: the polls in flight finish, every reading taken is
committed, the sync worker finishes (commits or rolls back) the batch in
flight, and the process exits 0. A reading is never half-written: the buffer
commits whole rows. A buffer that fails its check at start is moved aside and
a new one started.
"""

from __future__ import annotations

import logging
import signal
import threading

from .buffer import Buffer
from .buffer.keeper import Keeper
from .cadence import Cadence, Clock
from .clockguard import ClockGuard, ClockSteps
from .config import Config, bus_budgets
from .meter import close_meters, open_meters
from .notify import Notifier
from .poller import BusPoller, SlowCommits
from .supervisor import Supervisor
from .sync import mariadb_worker

log = logging.getLogger(__name__)

HOUSEKEEPING_EVERY_S = 60.0
#: How often the main thread looks at the other threads (and may ping the watchdog).
SUPERVISE_EVERY_S = 0.25


class Service:
    def __init__(self, config: Config, wall: Clock | None = None):
        self.config = config
        self.clock = wall or Clock()
        self.stop = threading.Event()
        self.exit_status = 0
        self.notifier = Notifier()
        # the buffer, and the thread that writes it
        b = config.buffer
        self.buffer = Buffer.open_or_replace(b.path, config.columns(), max_bytes=b.max_bytes)
        self.keeper = Keeper(self.buffer, b, self.clock, on_corrupt=self._fail)
        self.writer = self.keeper.writer
        # the meters, a thread per bus
        guard = ClockGuard(self.clock, config.clock.require_sync, self.buffer.newest_trusted_at())
        steps = ClockSteps(self.clock, self.buffer, self.writer.call)
        slow = SlowCommits()
        self.meters = open_meters(config.meters)
        self.pollers = [
            BusPoller(
                budget,
                [m for m in self.meters if m.config in budget.meters],
                self.clock,
                self.writer,
                guard,
                slow,
                on_jump=steps.seen,
            )
            for budget in bus_budgets(config.meters)
        ]
        # the sync worker, on a thread of its own
        self.worker = mariadb_worker(config, self.buffer)
        self.syncer = threading.Thread(target=self.worker.run, args=(self.stop,), name="sync")
        # the main thread: housekeeping on its own grid, and the supervision
        self.cadence = Cadence(clock=self.clock)
        self.cadence.every(HOUSEKEEPING_EVERY_S, lambda: self.writer.call(self.keeper.housekeeping))
        self.supervisor = Supervisor(
            self.stop,
            self.pollers,
            {"buffer-writer": self.writer.is_alive, self.syncer.name: self.syncer.is_alive},
            self.notifier,
            self._fail,
        )

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        previous_hook = threading.excepthook
        threading.excepthook = self.supervisor.thread_died
        try:
            self.writer.start()
            self.syncer.start()
            for poller in self.pollers:
                poller.start(self.stop)
            names = ", ".join(m.name for m in self.meters)
            buses = "; ".join(p.label for p in self.pollers)
            log.info(
                "logging %s (bus: %s) into %s (buffer %s)",
                names,
                buses,
                self.config.mariadb.table,
                self.buffer.path,
            )
            self.notifier.ready(f"logging {names}")
            self.cadence.run(self.stop, max_sleep_s=SUPERVISE_EVERY_S, on_idle=self.supervisor.turn)
        finally:
            self.stop.set()
            self.notifier.stopping()
            self._shut_down()
            threading.excepthook = previous_hook
        log.info("stopped")
        return self.exit_status

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info(
            "received %s: finishing the reading in flight, then stopping",
            signal.Signals(signum).name,
        )
        self.stop.set()

    def _fail(self) -> None:
        """Stop with exit status 1 (a thread died, the buffer is corrupt): systemd restarts us."""
        self.exit_status = 1
        self.stop.set()

    def _shut_down(self) -> None:
        """After `stop`: let the polls in flight finish, commit every reading taken (if the
        writer lives), let the sync worker finish its batch, close everything."""
        for poller in self.pollers:
            if not poller.join():
                log.error(
                    "bus %s: its thread does not stop (a poll hangs); its reading is lost", poller.label
                )
        if self.writer.is_alive():
            self.writer.stop()  # every reading taken is committed
        elif self.writer.pending():
            log.error("%d readings handed over are lost: the buffer writer died", self.writer.pending())
        if self.syncer.is_alive():
            self.syncer.join()
        close_meters(self.meters)
        self.buffer.close()  # writes what is pending: the dropped readings not counted yet
