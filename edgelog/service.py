"""`edgelog run`: meters -> buffer on the sampling grid, with the sync worker beside it.

Threads: the main thread runs the cadence (polls, in order, so meters on one
RS485 line never talk at once); the buffer writer commits each reading, waited
for until the next poll is due (`buffer/writer.py`: a slow fsync never costs a
sample), and runs housekeeping; one thread runs the sync worker, so a slow or
absent MariaDB never delays a poll.

SIGTERM / SIGINT: the poll in flight finishes, every reading taken is
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
from .config import Config
from .errors import EdgelogError, MeterError
from .meter import Meter, close_meters, open_meters
from .notify import Notifier
from .sync import MariaDBSink, SyncWorker

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

    def floor(self, mono: float) -> float | None:
        return None if self.floor_wall is None else self.floor_wall + (mono - self.floor_mono)

    def check(self, wall: float) -> bool:
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

    def slow(self, now: float, waiting: int) -> None:
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

    def quiet(self, now: float) -> None:
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
        self.sink = MariaDBSink(config.mariadb, config.site)
        self.worker = SyncWorker(
            self.buffer, self.sink, config.columns(), config.mariadb.batch_size, config.sync
        )
        self.cadence = Cadence(clock=self.clock)
        # the writer thread's own SQLite connection is closed by that thread
        self.writer = Writer(
            self._store,
            on_start=self.buffer.connect,
            on_exit=self.buffer.disconnect,
            commit_every_s=config.buffer.commit_every_s,
        )

    def poll(self, meter: Meter) -> None:
        """Read one meter and hand the reading (or the gap) to the writer; return once it
        is committed, or when the next poll is due, whichever comes first."""
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
        self._hand_over(new, meter.config.interval_s, started)
        self.notifier.watchdog()

    def _hand_over(self, new: NewReading, interval_s: float, started: float) -> None:
        handoff = self.writer.put(new)
        now = self.clock.monotonic()
        # Wait until a little before the next poll is due (the cadence schedules the next
        # boundary strictly after the end of this run), and never past this poll's own
        # interval by the monotonic clock (the wall clock may just have stepped).
        margin = min(COMMIT_WAIT_MARGIN_S, COMMIT_WAIT_MARGIN_SHARE * interval_s)
        timeout = min(self.cadence.idle_s(), interval_s - (now - started)) - margin
        if timeout <= 0:
            return  # another poll is due now: this commit overlaps it, as it should
        if handoff.done.wait(timeout):
            self.slow.quiet(now)
        else:
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
        for meter in self.meters:
            self.cadence.every(meter.config.interval_s, lambda m=meter: self.poll(m))
        self.cadence.every(HOUSEKEEPING_EVERY_S, lambda: self.writer.call(self.housekeeping))
        self.writer.start()
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
            self.writer.stop()  # every reading taken is committed
            syncer.join()
            close_meters(self.meters)
            self.buffer.close()  # writes what is pending: the sync position, dropped readings
        log.info("stopped")
        return self.exit_status
