"""One thread per bus: the meters of one RS485 line or TCP gateway, polled on their grid,
each reading (or gap) handed to the buffer writer.

A bus is one serial device or one TCP `host:port` (`config.bus_budgets`). Its
meters are polled in order (requests on one line never overlap) by the bus's own
thread and its own `Cadence`, each meter on its own wall-clock grid. Buses do not
wait for each other, so a meter that never answers on one bus costs the meters of
another bus nothing; on its own bus it costs at most `timeout_s × (1 + retries)`
a poll, which the config's time budget keeps within the shortest interval.

Every slot of every meter leaves a row: a reading, a gap for a failed poll (its
`error` says why), or a gap `SKIPPED` for a slot the bus was too busy to poll,
stamped with the slot's grid instant. Each row's `clock_ok` comes from the
`ClockGuard`. A poll waits for its reading's commit until a little before the bus's
next poll is due, never longer: a slow disk delays durability, never a sample.

The thread notes its progress (`beat`) at every turn of its loop, before every
poll and while a poll waits for its commit; `stalled_s()` tells the supervisor
(which pings the systemd watchdog) how long it has been stuck beyond what a poll
may take. Before each poll it notes what the poll is for (`polling`: its grid
instant and start), which the reading carries to the buffer writer for the
timings log (`edgelog/timings.py`); when the thread ends, the cadence's counters
go to that log too.

Faults logged as episodes (`episodes.Episode`), not once a poll: a meter that
fails (`FaultLog`), slots skipped (`SkipLog`), commits slower than the polls
(`SlowCommits`, shared by every bus: the disk is one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .buffer import NewReading
from .buffer.writer import Writer
from .cadence import Cadence, Clock, GridJob
from .clockguard import ClockGuard
from .config import BusBudget
from .episodes import Episode
from .errors import MeterError
from .meter import Meter
from .timings import Polled, from_env

log = logging.getLogger(__name__)

#: A bus's loop may turn this much later than its polls allow (a loaded CPU, the GIL)
#: before it counts as stuck and the watchdog pings stop.
STALL_SLACK_S = 5.0
#: The loop's longest sleep: it beats at least this often while idle.
MAX_SLEEP_S = 0.5
#: The `error` of the gap row stored for a slot a meter's bus was too busy to poll.
SKIPPED = "skipped: poll overran"
#: A poll waits for its reading's commit until this long before the next poll is due
#: (the smaller of the two).
COMMIT_WAIT_MARGIN_S, COMMIT_WAIT_MARGIN_SHARE = 0.05, 0.25
#: Words of the warning logged when polling goes on before a reading is committed
#: (the fault tests look for them).
SLOW_COMMIT = "readings wait in memory"


class BusPoller:
    """The thread polling the meters of one bus."""

    def __init__(
        self,
        budget: BusBudget,
        meters: list[Meter],
        clock: Clock,
        writer: Writer,
        guard: ClockGuard,
        slow: SlowCommits,
        on_jump: Callable[[float], object] | None = None,
    ):
        self.label = budget.label
        self.meters = meters
        self.clock = clock
        self.writer = writer
        self.guard = guard
        self.slow = slow
        self.faults = FaultLog()
        self.skips = SkipLog()
        #: the longest one poll may keep the thread from beating: each of its requests
        #: waits up to timeout_s × (1 + retries), and pymodbus may read one timeout
        #: past its deadline when bytes trickle in
        requests = max(len(m.plan) for m in meters)
        self.poll_limit_s = 2 * requests * budget.timeout_s * (1 + budget.retries)
        self.cadence = Cadence(clock=clock, on_jump=on_jump)
        self._jobs: dict[str, GridJob] = {}
        for meter in meters:
            self._jobs[meter.name] = self.cadence.every(
                meter.config.interval_s,
                lambda m=meter: self.poll(m),
                on_missed=lambda slots, m=meter: self.missed(m, slots),
            )
        #: the poll running now (or last): its grid instant and start, for the timings log
        self.polling: Polled | None = None
        self._beat = clock.monotonic()
        self.thread: threading.Thread | None = None

    # -- on the bus's thread ----------------------------------------------------------

    def poll(self, meter: Meter) -> float:
        """Read one meter and hand the reading (or the gap) to the writer; return once it
        is committed, or when the bus's next poll is due, whichever comes first. Returns
        the row's `measured_at`: the slot it is in is covered."""
        self.beat()
        started = self.clock.monotonic()
        job = self._jobs.get(meter.name)
        self.polling = Polled(job.due_at if job else None, self.clock.wall())
        try:
            reading = meter.read()
        except MeterError as exc:
            at = self.clock.wall()
            self.faults.failed(meter.name, str(exc))
            new = NewReading(meter.name, at, None, str(exc), self.guard.check(at))
        else:
            self.faults.answered(meter.name)
            at = reading.measured_at
            new = NewReading(meter.name, at, reading.values, None, self.guard.check(at))
        self._hand_over(new, meter.config.interval_s, started)
        return at

    def missed(self, meter: Meter, slots: list[float]) -> None:
        """Slots of `meter` the bus was too busy to poll: one gap row each, at the slot's
        grid instant, trusted as far as the clock is now."""
        clock_ok = self.guard.check(self.clock.wall())
        for at in slots:
            self.writer.put(NewReading(meter.name, at, None, SKIPPED, clock_ok))
        self.skips.add(meter.name, len(slots))

    def _hand_over(self, new: NewReading, interval_s: float, started: float) -> None:
        handoff = self.writer.put(new, self.polling)
        self.beat()
        now = self.clock.monotonic()
        # Wait until a little before the bus's next poll is due (its cadence schedules the
        # next boundary strictly after the end of this run), and never past this poll's
        # own interval by the monotonic clock (the wall clock may just have stepped).
        margin = min(COMMIT_WAIT_MARGIN_S, COMMIT_WAIT_MARGIN_SHARE * interval_s)
        deadline = now + min(self.cadence.idle_s(), interval_s - (now - started)) - margin
        if deadline <= now:
            return  # another poll is due now: this commit overlaps it, as it should
        while (left := deadline - self.clock.monotonic()) > 0:
            if handoff.done.wait(min(left, MAX_SLEEP_S)):
                self.slow.quiet(now)
                return
            self.beat()  # waiting for the disk is progress: the hand-over did not block
        self.slow.slow(now, self.writer.pending())

    def beat(self) -> None:
        """The thread is making progress (called on the thread itself)."""
        self._beat = self.clock.monotonic()

    # -- from the main thread ---------------------------------------------------------

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

    def stalled_s(self) -> float:
        """Seconds the thread has gone without a beat beyond what a poll may take: 0 while it
        keeps up. (A poll longer than its limit is not possible from Modbus alone: pymodbus
        bounds each request; this catches a hung driver, a blocked hand-over, a bug.)"""
        late = self.clock.monotonic() - self._beat - self.poll_limit_s - MAX_SLEEP_S - STALL_SLACK_S
        return max(0.0, late)

    def join(self) -> bool:
        """After `stop`: wait for the poll in flight to end (False if it does not, in time)
        and log the slots skipped in all."""
        if self.thread is not None:
            self.thread.join(self.poll_limit_s + 2 * MAX_SLEEP_S + 1.0)
        self.skips.log_totals()
        return not self.is_alive()


class FaultLog:
    """A meter fault logged when it starts, at 10, 100, every 1000 failed polls, and when it
    ends, with the count; not one line per failed poll. (Each meter is polled by one bus
    thread only.)"""

    def __init__(self) -> None:
        self.failing: dict[str, Episode] = {}

    def failed(self, meter: str, message: str) -> None:
        episode = self.failing.setdefault(meter, Episode())
        if not episode.add():
            return
        if episode.count == 1:
            log.warning("meter %s: poll failed: %s (recorded as a gap)", meter, message)
        else:
            log.warning("meter %s: still failing, %d polls in a row: %s", meter, episode.count, message)

    def answered(self, meter: str) -> None:
        episode = self.failing.get(meter)
        if episode is not None and (count := episode.end()):
            log.warning("meter %s: answers again after %d failed polls", meter, count)


class SkipLog:
    """Slots a meter's bus was too busy to poll (each stored as a gap row), logged at the
    first, the 10th, the 100th and every 1000th of each meter, and in all at the end."""

    def __init__(self) -> None:
        self.skipped: dict[str, Episode] = {}

    def add(self, meter: str, n: int) -> None:
        episode = self.skipped.setdefault(meter, Episode())
        if episode.add(n):
            log.warning(
                "meter %s: %d slot(s) skipped so far, the bus busy past them (stored as gaps %r)",
                meter,
                episode.count,
                SKIPPED,
            )

    def log_totals(self) -> None:
        for meter, episode in self.skipped.items():
            n = episode.count
            log.warning("meter %s: %d slot(s) skipped in all (stored as gaps %r)", meter, n, SKIPPED)


class SlowCommits:
    """Commits slower than the poll interval (the next poll started before the reading
    was durable), logged when an episode starts and summed up after a quiet minute.
    Shared by every bus thread."""

    def __init__(self) -> None:
        self.late = Episode()
        self.most_waiting = 0
        self._lock = threading.Lock()

    def slow(self, now: float, waiting: int) -> None:
        with self._lock:
            self.late.add(now=now)
            self.most_waiting = max(self.most_waiting, waiting)
            if self.late.count == 1:
                log.warning(
                    "buffer: a commit is taking longer than the poll interval (a slow or busy disk); "
                    "polling goes on and %s until it is done (%d now)",
                    SLOW_COMMIT,
                    waiting,
                )

    def quiet(self, now: float) -> None:
        with self._lock:
            if late := self.late.quiet(now):
                log.warning(
                    "buffer: commits keep up again (%d polls went on before the reading before "
                    "them was durable; at most %d readings waited)",
                    late,
                    self.most_waiting,
                )
                self.most_waiting = 0
