"""`edgelog run`: meters -> buffer on the sampling grid, with the sync worker beside it.

Threads: one per bus (`poller.py`: the meters of one RS485 line or TCP gateway,
polled in order on their grid, so a silent meter on one bus never delays
another bus); the buffer writer commits each reading, waited for until the next
poll of that bus is due (`buffer/writer.py`: a slow fsync never costs a sample),
and runs housekeeping; one thread runs the sync worker, so a slow or absent
MariaDB never delays a poll. The main thread supervises: it pings the systemd
watchdog only while every bus thread makes progress, and it queues housekeeping.

Every slot of every meter leaves a row: a reading, a gap for a failed poll (its
`error` says why), or a gap `skipped: poll overran` for a slot its bus was too
busy to poll, stamped with the slot's grid instant.

No thread dies quietly: if any of them ends while the service runs (an
exception that escaped its loop, or a plain return), the process logs which and
why and exits 1, so that systemd restarts it.

SIGTERM / SIGINT: the polls in flight finish, every reading taken is
committed, the sync worker finishes (commits or rolls back) the batch in
flight, and the process exits 0. A reading is never half-written: the buffer
commits whole rows.

Faults handled here, each logged once (with a count) rather than once a poll:
a meter that fails (`FaultLog`: the failed poll is stored as a gap), a clock
that is not trustworthy (`ClockGuard`: readings get ``clock_ok = 0``), and a
buffer that is full (`SpaceLog`: `[buffer] max_mb` or the disk; rows are pruned
or readings dropped per ``when_full``, each dropped reading counted). A buffer
that fails its check at start is moved aside and a new one started.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import clock
from .buffer import Buffer, NewReading, Space
from .buffer.writer import Writer
from .cadence import JUMP_THRESHOLD_S, Cadence, Clock
from .config import Config, bus_budgets
from .errors import EdgelogError, MeterError
from .meter import Meter, close_meters, open_meters
from .notify import Notifier
from .poller import MAX_SLEEP_S, BusPoller
from .sync import MariaDBSink, SyncWorker
from .sync.aggregates import Aggregates
from .sync.schema import config_types

log = logging.getLogger(__name__)

HOUSEKEEPING_EVERY_S = 60.0
#: A disk-full episode is over (and summed up in the log) after this long without one.
SPACE_QUIET_S = 60.0
#: Words of the warning logged when polling goes on before a reading is committed
#: (the fault tests look for them).
SLOW_COMMIT = "readings wait in memory"
#: A poll waits for its reading's commit until this long before the next poll is due
#: (the smaller of the two).
COMMIT_WAIT_MARGIN_S, COMMIT_WAIT_MARGIN_SHARE = 0.05, 0.25
#: The `error` of the gap row stored for a slot a meter's bus was too busy to poll.
SKIPPED = "skipped: poll overran"
#: How often the main thread looks at the other threads (and may ping the watchdog).
SUPERVISE_EVERY_S = 0.25


@dataclass
class FaultLog:
    """Log a meter fault once when it starts and once when it ends, with a count,
    not one line per failed poll. (Each meter is polled by one bus thread only.)"""

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


@dataclass
class SkipLog:
    """Slots a meter's bus was too busy to poll (each stored as a gap row), logged at the
    first, the 10th, the 100th and every 1000th of each meter."""

    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, meter: str, n: int) -> None:
        before = self.skipped.get(meter, 0)
        after = self.skipped[meter] = before + n
        if any(before < mark <= after for mark in (1, 10, 100)) or after // 1000 > before // 1000:
            log.warning(
                "meter %s: %d slot(s) skipped so far, the bus busy past them (stored as gaps %r)",
                meter,
                after,
                SKIPPED,
            )


class ClockGuard:
    """Decides `clock_ok` for each reading.

    The clock is *known bad* when the time is before 2026 (`clock.EARLIEST_PLAUSIBLE`),
    when `require_sync` is set and the kernel says it is not synchronised, or when
    it is behind a *floor*: a lower bound of the true time, the newest reading taken
    with a trusted clock plus the monotonic time elapsed since (at start: the newest
    trusted reading in the buffer, the downtime unknown and so counted as zero).
    A step back of more than JUMP_THRESHOLD_S (fake-hwclock after a power cut, a
    wrong manual setting) is therefore bad until the clock is stepped forward past
    the floor again; letting time pass does not heal it. A kernel that reports the
    clock synchronised (with `require_sync`) is trusted over the floor.
    """

    def __init__(self, wall: Clock, require_sync: bool, floor: float | None = None):
        self.clock = wall
        self.require_sync = require_sync
        self.floor_wall = floor
        self.floor_mono = wall.monotonic() if floor is not None else 0.0
        self.bad_reason: str | None = None
        self.bad_count = 0
        self._lock = threading.Lock()  # every bus thread asks

    def floor(self, mono: float) -> float | None:
        return None if self.floor_wall is None else self.floor_wall + (mono - self.floor_mono)

    def check(self, wall: float) -> bool:
        with self._lock:
            return self._check(wall)

    def _check(self, wall: float) -> bool:
        mono = self.clock.monotonic()
        kernel = clock.kernel_synchronised() if self.require_sync else None
        floor = self.floor(mono)
        reason = None
        if wall < clock.EARLIEST_PLAUSIBLE:
            reason = "time before 2026"
        elif kernel is False:
            reason = "the kernel says the clock is not synchronised"
        elif kernel is None and floor is not None and wall < floor - JUMP_THRESHOLD_S:
            reason = f"{floor - wall:.0f} s behind the newest trusted reading"
        if reason is not None:
            if self.bad_reason is None:
                log.warning("clock not trusted (%s): readings get clock_ok = 0 until it is", reason)
            self.bad_reason = reason
            self.bad_count += 1
            return False
        if self.bad_reason is not None:
            log.warning("clock trusted again after %d readings with clock_ok = 0", self.bad_count)
            self.bad_reason, self.bad_count = None, 0
        self.floor_wall = wall if kernel or floor is None else max(wall, floor)
        self.floor_mono = mono
        return True


@dataclass
class SpaceLog:
    """A buffer that cannot take readings as they come (full at max_mb or the disk, or
    failing to write), logged when it starts and at 10, 100, every 1000 events, and
    summed up once after SPACE_QUIET_S without one."""

    events: int = 0
    dropped: int = 0
    last_at: float = 0.0

    def full(self, now: float, what: str, dropped: int = 0) -> None:
        """One event: `dropped` readings lost to it (the buffer counts them in dropped_total)."""
        self.events += 1
        self.last_at = now
        self.dropped += dropped
        if self.events == 1:
            log.warning("buffer %s", what)
        elif self.events in (10, 100) or self.events % 1000 == 0:
            log.warning(
                "buffer: %d such events so far (%d readings dropped): %s", self.events, self.dropped, what
            )

    def quiet(self, now: float) -> None:
        """Sum the episode up once it ends (no event for SPACE_QUIET_S)."""
        if self.events and now - self.last_at >= SPACE_QUIET_S:
            log.warning(
                "buffer: no such event for a minute (%d events, %d readings dropped, in dropped_total)",
                self.events,
                self.dropped,
            )
            self.events = self.dropped = 0


@dataclass
class SlowCommitLog:
    """Commits slower than the poll interval (the next poll started before the reading
    was durable), logged when an episode starts and summed up after a quiet minute."""

    late: int = 0
    most_waiting: int = 0
    last_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)  # every bus thread reports

    def slow(self, now: float, waiting: int) -> None:
        with self.lock:
            self._slow(now, waiting)

    def quiet(self, now: float) -> None:
        with self.lock:
            self._quiet(now)

    def _slow(self, now: float, waiting: int) -> None:
        self.late += 1
        self.last_at = now
        self.most_waiting = max(self.most_waiting, waiting)
        if self.late == 1:
            log.warning(
                "buffer: a commit is taking longer than the poll interval (a slow or busy disk); "
                "polling goes on and %s until it is done (%d now)",
                SLOW_COMMIT,
                waiting,
            )

    def _quiet(self, now: float) -> None:
        if self.late and now - self.last_at >= SPACE_QUIET_S:
            log.warning(
                "buffer: commits keep up again (%d polls went on before the reading before "
                "them was durable; at most %d readings waited)",
                self.late,
                self.most_waiting,
            )
            self.late = self.most_waiting = 0


class Service:
    def __init__(self, config: Config, wall: Clock | None = None):
        self.config = config
        self.clock = wall or Clock()
        self.stop = threading.Event()
        self.notifier = Notifier()
        self.faults = FaultLog()
        self.space = SpaceLog()
        self.slow = SlowCommitLog()
        self.exit_status = 0
        self.max_bytes = int(config.buffer.max_mb * 1024 * 1024)
        self.buffer = Buffer.open_or_replace(config.buffer.path, config.columns(), max_bytes=self.max_bytes)
        self.room = Space(self.buffer, self.max_bytes, config.buffer.when_full, clock=self.clock.monotonic)
        self.guard = ClockGuard(self.clock, config.clock.require_sync, self.buffer.newest_trusted_at())
        if not self.room.keep_reserve():
            log.warning("buffer: no room for its %d-byte disk reserve", self.room.reserve_bytes())
        self.meters: list[Meter] = open_meters(config.meters)
        self.skips = SkipLog()
        self.pollers = [
            BusPoller(
                budget,
                [m for m in self.meters if m.config in budget.meters],
                self.clock,
                self.poll,
                self.missed,
            )
            for budget in bus_budgets(config.meters)
        ]
        self.sink = MariaDBSink(config.mariadb, config.site, types=config_types(config))
        self.worker = SyncWorker(
            self.buffer,
            self.sink,
            config.columns(),
            config.mariadb.batch_size,
            config.sync,
            aggregates=Aggregates(self.sink, self.buffer) if config.mariadb.aggregates else None,
        )
        #: the main thread's own jobs (housekeeping); each bus has its cadence
        self.cadence = Cadence(clock=self.clock)
        # the writer thread's own SQLite connection is closed by that thread
        self.writer = Writer(
            self._store,
            on_start=self.buffer.connect,
            on_exit=self.buffer.disconnect,
            commit_every_s=config.buffer.commit_every_s,
        )
        self.syncer = threading.Thread(target=self.worker.run, args=(self.stop,), name="sync")
        self._died: set[str] = set()  # threads whose death is logged already
        self._stalled: set[str] = set()  # buses whose stall is logged already

    def poll(self, meter: Meter, bus: BusPoller) -> float:
        """(On the bus's thread.) Read one meter and hand the reading (or the gap) to the
        writer; return once it is committed, or when the bus's next poll is due, whichever
        comes first. Returns the row's `measured_at`: the slot it is in is covered."""
        bus.beat()
        started = self.clock.monotonic()
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
        self._hand_over(new, meter.config.interval_s, started, bus)
        return at

    def missed(self, meter: Meter, slots: list[float]) -> None:
        """(On the bus's thread.) Slots of `meter` its bus was too busy to poll: one gap row
        each, at the slot's grid instant, trusted as far as the clock is now."""
        clock_ok = self.guard.check(self.clock.wall())
        for at in slots:
            self.writer.put(NewReading(meter.name, at, None, SKIPPED, clock_ok))
        self.skips.add(meter.name, len(slots))

    def _hand_over(self, new: NewReading, interval_s: float, started: float, bus: BusPoller) -> None:
        handoff = self.writer.put(new, bus.polling)
        bus.beat()
        now = self.clock.monotonic()
        # Wait until a little before the bus's next poll is due (its cadence schedules the
        # next boundary strictly after the end of this run), and never past this poll's
        # own interval by the monotonic clock (the wall clock may just have stepped).
        margin = min(COMMIT_WAIT_MARGIN_S, COMMIT_WAIT_MARGIN_SHARE * interval_s)
        deadline = now + min(bus.cadence.idle_s(), interval_s - (now - started)) - margin
        if deadline <= now:
            return  # another poll is due now: this commit overlaps it, as it should
        while (left := deadline - self.clock.monotonic()) > 0:
            if handoff.done.wait(min(left, MAX_SLEEP_S)):
                self.slow.quiet(now)
                return
            bus.beat()  # waiting for the disk is progress: the hand-over did not block
        self.slow.slow(now, self.writer.pending())

    def _store(self, readings: Sequence[NewReading]) -> None:
        """(On the writer thread.) Commit readings in one transaction; the buffer makes
        room per `when_full` and counts what it drops; a corrupt file stops the service."""
        result = self.room.store(readings)
        now = self.clock.monotonic()
        if result.corrupt:
            n = len(readings)
            what = "reading" if n == 1 else f"{n} readings"
            log.error("%s lost: %s; stopping so that the next start moves it aside", what, result.corrupt)
            self.exit_status = 1
            self.stop.set()
        elif result.full:
            self.space.full(now, result.full, result.dropped)
        else:
            self.space.quiet(now)

    def housekeeping(self, after: int = 0) -> None:
        """(On the writer thread.) One step of the prune: the sent rows older than
        keep_sent_days, a chunk of seqs a step, each next step queued behind the readings
        handed over meanwhile (so a big buffer never holds a commit up for long); after
        the last step, the `max_mb` limit."""
        keep_sent_s = self.config.buffer.keep_sent_days * 86400
        try:
            after_next, result = self.room.housekeeping(keep_sent_s, self.clock.wall(), after)
            if after_next is not None:
                self.writer.call(lambda: self.housekeeping(after_next))
            elif result.full:
                self.space.full(self.clock.monotonic(), result.full, result.dropped)
        except EdgelogError as exc:
            log.warning("housekeeping: %s", exc)
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
        self.cadence.every(HOUSEKEEPING_EVERY_S, lambda: self.writer.call(self.housekeeping))
        previous_hook = threading.excepthook
        threading.excepthook = self._thread_died
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
            self.cadence.run(self.stop, max_sleep_s=SUPERVISE_EVERY_S, on_idle=self._supervise)
        finally:
            self.stop.set()
            self.notifier.stopping()
            self._shut_down()
            threading.excepthook = previous_hook
        log.info("stopped")
        return self.exit_status

    def _threads(self) -> list[tuple[str, bool]]:
        """(name, alive) of every thread the service needs while it runs."""
        threads = [(p.thread.name if p.thread else f"bus {p.label}", p.is_alive()) for p in self.pollers]
        return [
            *threads,
            ("buffer-writer", self.writer.is_alive()),
            (self.syncer.name, self.syncer.is_alive()),
        ]

    def _supervise(self) -> None:
        """(On the main thread, every turn.) A thread that ended stops the service (exit 1);
        the watchdog is pinged only while every bus thread makes progress."""
        if self.stop.is_set():
            return
        dead = [name for name, alive in self._threads() if not alive]
        if dead:
            for name in dead:
                if name not in self._died:
                    log.critical(
                        "thread %s ended unexpectedly; stopping with exit status 1 so that systemd "
                        "restarts edgelog",
                        name,
                    )
            self._fail()
            return
        stalled = {p.label: s for p in self.pollers if (s := p.stalled_s()) > 0}
        for label in stalled.keys() - self._stalled:
            log.error(
                "bus %s: no progress for %.0f s beyond what a poll may take (a hung driver or "
                "hand-over); watchdog pings withheld, so systemd restarts edgelog (WatchdogSec=)",
                label,
                stalled[label],
            )
        for label in self._stalled - stalled.keys():
            log.warning("bus %s: progresses again; watchdog pings resume", label)
        self._stalled = set(stalled)
        if not stalled:
            self.notifier.watchdog()

    def _thread_died(self, args: threading.ExceptHookArgs) -> None:
        """threading.excepthook while the service runs: an exception escaped a thread."""
        name = args.thread.name if args.thread is not None else "?"
        self._died.add(name)
        log.critical(
            "thread %s died: %s: %s; stopping with exit status 1 so that systemd restarts edgelog",
            name,
            args.exc_type.__name__,
            args.exc_value,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        )
        self._fail()

    def _fail(self) -> None:
        self.exit_status = 1
        self.stop.set()

    def _shut_down(self) -> None:
        """After `stop`: let the polls in flight finish, commit every reading taken (if the
        writer lives), let the sync worker finish its batch, close everything."""
        for poller in self.pollers:
            if not poller.join(poller.poll_limit_s + 2 * MAX_SLEEP_S + 1.0):
                log.error(
                    "bus %s: its thread does not stop (a poll hangs); its reading is lost", poller.label
                )
        for meter, n in self.skips.skipped.items():
            log.warning("meter %s: %d slot(s) skipped in all (stored as gaps %r)", meter, n, SKIPPED)
        if self.writer.is_alive():
            self.writer.stop()  # every reading taken is committed
        elif self.writer.pending():
            log.error("%d readings handed over are lost: the buffer writer died", self.writer.pending())
        if self.syncer.is_alive():
            self.syncer.join()
        close_meters(self.meters)
        self.buffer.close()  # writes what is pending: the sync position, dropped readings
