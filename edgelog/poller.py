"""One thread per bus: the meters of one RS485 line or TCP gateway, polled on their grid.

A bus is one serial device or one TCP `host:port` (`config.bus_budgets`). Its
meters are polled in order (requests on one line never overlap) by the bus's own
thread and its own `Cadence`, each meter on its own wall-clock grid. Buses do not
wait for each other, so a meter that never answers on one bus costs the meters of
another bus nothing; on its own bus it costs at most `timeout_s × (1 + retries)`
a poll, which the config's time budget keeps within the shortest interval.

The thread notes its progress (`beat`) at every turn of its loop, before every
poll and while a poll waits for its commit; `stalled_s()` tells the supervisor
(the service's main thread, which pings the systemd watchdog) how long it has
been stuck beyond what a poll may take. Before each poll it notes what the poll is
for (`polling`: its grid instant and start), which the reading carries to the
buffer writer for the timings log (`edgelog/timings.py`); when the thread ends,
the cadence's counters go to that log too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .cadence import Cadence, Clock, GridJob
from .config import BusBudget
from .meter import Meter
from .timings import Polled, from_env

log = logging.getLogger(__name__)

#: A bus's loop may turn this much later than its polls allow (a loaded CPU, the GIL)
#: before it counts as stuck and the watchdog pings stop.
STALL_SLACK_S = 5.0
#: The loop's longest sleep: it beats at least this often while idle.
MAX_SLEEP_S = 0.5


class BusPoller:
    """The thread polling the meters of one bus."""

    def __init__(
        self,
        budget: BusBudget,
        meters: list[Meter],
        clock: Clock,
        poll: Callable[[Meter, BusPoller], object],
        missed: Callable[[Meter, list[float]], object],
    ):
        self.label = budget.label
        self.meters = meters
        self.clock = clock
        #: the longest one poll may keep the thread from beating: each of its requests
        #: waits up to timeout_s × (1 + retries), and pymodbus may read one timeout
        #: past its deadline when bytes trickle in
        requests = max(len(m.plan) for m in meters)
        self.poll_limit_s = 2 * requests * budget.timeout_s * (1 + budget.retries)
        self._jobs: dict[str, GridJob] = {}
        self.cadence = Cadence(clock=clock)
        self._poll = poll
        for meter in meters:
            job = self.cadence.every(
                meter.config.interval_s,
                lambda m=meter: self._run_poll(m),
                on_missed=lambda slots, m=meter: missed(m, slots),
            )
            self._jobs[meter.name] = job
        #: the poll running now (or last): its grid instant and start, on this bus's thread
        self.polling: Polled | None = None
        self._beat = clock.monotonic()
        self.thread: threading.Thread | None = None

    def _run_poll(self, meter: Meter) -> object:
        """(On the thread.) Note what this poll is for, then poll."""
        self.polling = Polled(self._jobs[meter.name].due_at, self.clock.wall())
        return self._poll(meter, self)

    def start(self, stop: threading.Event) -> None:
        """Start the thread; it returns soon after `stop` is set (a poll in flight finishes)."""
        self._beat = self.clock.monotonic()
        self.thread = threading.Thread(
            target=self._run,
            args=(stop,),
            name=f"bus {self.label}",
            daemon=True,  # a poll hung for good must not keep the process from exiting
        )
        self.thread.start()

    def _run(self, stop: threading.Event) -> None:
        """(The thread.) The cadence until `stop`; then its counters to the timings log."""
        try:
            self.cadence.run(stop, MAX_SLEEP_S, self.beat)
        finally:
            timings = from_env()
            if timings.on:
                for name, job in self._jobs.items():
                    stats = job.stats
                    timings.cadence(name, job.interval_s, stats.runs, stats.missed, stats.clock_jumps)

    def is_alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def beat(self) -> None:
        """The thread is making progress (called on the thread itself)."""
        self._beat = self.clock.monotonic()

    def stalled_s(self) -> float:
        """Seconds the thread has gone without a beat beyond what a poll may take: 0 while it
        keeps up. (A poll longer than its limit is not possible from Modbus alone: pymodbus
        bounds each request; this catches a hung driver, a blocked hand-over, a bug.)"""
        late = self.clock.monotonic() - self._beat - self.poll_limit_s - MAX_SLEEP_S - STALL_SLACK_S
        return max(0.0, late)

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end; False if it is still running after `timeout`."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.is_alive()
