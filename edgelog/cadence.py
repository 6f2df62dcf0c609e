"""The sampling grid, on top of `schedule`.

`schedule` 1.2 computes a job's next run from the moment the previous run
*ended* (``every(n).seconds``), so a 1 s poll that takes 80 ms drifts by 80 ms a
poll (schedule issue #355). `GridJob` replaces that one decision: the next run
is the next wall-clock multiple of the interval, strictly after now. So:

* samples land on ``k * interval_s`` (UTC epoch), with no cumulative drift;
* a run that overruns one or more boundaries skips them and counts each one as
  a missed sample: there is never a burst of catch-up reads. A run that starts
  after its whole slot has passed (another job on the same thread took the
  time) runs for the slot it starts in, and the slots passed are missed; a run
  whose sample (the instant its job returns) lands in a later slot covers that
  one, and its own is missed. So each slot is covered by one sample or missed.
  Each missed slot is also handed to the job's `on_missed` (its grid instant),
  so the service can store it as a gap row;
* after the clock steps (no RTC; time sync arriving late), the next run is the
  next boundary of the *new* time: no flood of polls after a jump back, no
  silence after a jump forward. A step is told apart from an overrun by
  comparing the wall clock with the monotonic clock, and handed to `on_jump`
  (`edgelog run` keeps a count for sync-status: clockguard.ClockSteps).

`Clock` is the only thing tests fake.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import schedule

log = logging.getLogger(__name__)

#: A wall-clock step larger than this (seconds, vs. the monotonic clock) is a clock jump.
JUMP_THRESHOLD_S = 2.0


@dataclass
class Clock:
    """Wall and monotonic time, in seconds. Replace both in tests to move time."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


def next_boundary(now: float, interval: float, offset: float = 0.0) -> float:
    """The first instant ``offset + k * interval`` strictly after `now`."""
    k = math.floor((now - offset) / interval) + 1
    # The division rounds (e.g. 0.3 / 0.1 < 3): step k until the float result is
    # really the first grid instant strictly after `now`.
    while offset + (k - 1) * interval > now:
        k -= 1
    while offset + k * interval <= now:
        k += 1
    return offset + k * interval


@dataclass
class GridStats:
    runs: int = 0
    missed: int = 0
    clock_jumps: int = 0


class GridJob(schedule.Job):
    """A schedule Job whose runs sit on an exact wall-clock grid."""

    def __init__(
        self,
        interval_s: float,
        scheduler: schedule.Scheduler,
        clock: Clock,
        on_missed: Callable[[list[float]], object] | None = None,
        on_jump: Callable[[float], object] | None = None,
    ):
        super().__init__(1, scheduler)
        self.unit = "seconds"
        self.interval_s = interval_s
        self.clock = clock
        self.on_missed = on_missed
        #: told the size of each clock step this job sees (seconds; negative: back)
        self.on_jump = on_jump
        #: when the last run's sample was taken, if the job function returned it (a float)
        self.stamp: float | None = None
        self.stats = GridStats()
        self.due_at: float | None = None  # the grid instant this run was meant for
        self.running = False
        self._mono_at_schedule: float | None = None
        self._wall_at_schedule: float | None = None

    @property
    def should_run(self) -> bool:  # type: ignore[override]
        if self.due_at is None:
            return False
        now, mono = self.clock.wall(), self.clock.monotonic()
        step = self._step(now, mono)
        if abs(step) > JUMP_THRESHOLD_S:
            # The clock stepped while waiting: after a jump back the old due time is
            # hours away (silence), after a jump forward it is long past (an off-grid
            # run now). Either way, wait for the next boundary of the new time.
            self._jumped(step)
            self._set_due(next_boundary(now, self.interval_s), now, mono)
            return False
        return now >= self.due_at

    def run(self) -> object:
        now, mono, due = self.clock.wall(), self.clock.monotonic(), self.due_at
        if (
            due is not None
            and now >= due + self.interval_s
            and abs(self._step(now, mono)) <= JUMP_THRESHOLD_S
        ):
            # Its whole slot passed before it could start (a job before it on this thread
            # overran; `schedule` decides what is due before running any): run for the slot
            # it is in now; the slots passed are missed.
            current = next_boundary(now, self.interval_s) - self.interval_s
            self._missed(due, current)
            self._set_due(current, now, mono)
        self.running = True
        try:
            return super().run()
        finally:
            self.running = False

    def _step(self, now: float, mono: float) -> float:
        """How far the wall clock moved, beyond the monotonic clock, since the last scheduling."""
        if self._wall_at_schedule is None or self._mono_at_schedule is None:
            return 0.0
        return (now - self._wall_at_schedule) - (mono - self._mono_at_schedule)

    def _set_due(self, due: float, now: float, mono: float) -> None:
        self.due_at = due
        self._wall_at_schedule, self._mono_at_schedule = now, mono
        self.next_run = dt.datetime.fromtimestamp(due)
        self.period = dt.timedelta(seconds=self.interval_s)

    def _schedule_next_run(self) -> None:
        now = self.clock.wall()
        mono = self.clock.monotonic()
        nxt = next_boundary(now, self.interval_s)
        if self.due_at is not None and self._wall_at_schedule is not None:
            self.stats.runs += 1
            step = self._step(now, mono)
            if abs(step) > JUMP_THRESHOLD_S:
                self._jumped(step)
            else:
                # every boundary from the one we ran for to the next one was skipped, but
                # the slot the run's sample landed in (its own, unless it overran)
                covered = self._covered(self.due_at, nxt)
                self._missed(self.due_at, covered)
                self._missed(covered + self.interval_s, nxt)
        self.stamp = None
        self._set_due(nxt, now, mono)

    def _jumped(self, step: float) -> None:
        self.stats.clock_jumps += 1
        log.warning("clock stepped by %+.1f s; sampling resumes on the new grid", step)
        if self.on_jump is not None:
            self.on_jump(step)

    def _covered(self, due: float, nxt: float) -> float:
        """The slot the last run's sample belongs to: the one its `stamp` (the instant the
        job function returned, if any) falls in, else the one it ran for."""
        if self.stamp is None:
            return due
        slot = next_boundary(self.stamp, self.interval_s) - self.interval_s
        return slot if due <= slot < nxt else due

    def _missed(self, first: float, end: float) -> None:
        """The boundaries from `first` up to (not including) `end` were missed."""
        skipped = round((end - first) / self.interval_s)
        if skipped <= 0:
            return
        self.stats.missed += skipped
        if self.on_missed is not None:
            k = round(first / self.interval_s)
            self.on_missed([(k + i) * self.interval_s for i in range(skipped)])


@dataclass
class Cadence:
    """A schedule.Scheduler with grid jobs, run until `stop` is set."""

    clock: Clock = field(default_factory=Clock)
    scheduler: schedule.Scheduler = field(default_factory=schedule.Scheduler)
    #: told the size of each clock step a job sees (each job sees it: one call per job)
    on_jump: Callable[[float], object] | None = None

    def every(
        self,
        interval_s: float,
        func: Callable[[], object],
        on_missed: Callable[[list[float]], object] | None = None,
    ) -> GridJob:
        """A job on the grid of `interval_s`; `on_missed` gets the instants of slots it missed.
        `func` may return the wall-clock instant its sample was taken (a float): a run that
        overran its own slot then covers the slot that instant is in, and its own is missed."""
        job = GridJob(interval_s, self.scheduler, self.clock, on_missed, self.on_jump)

        def body() -> object:
            result = func()
            job.stamp = result if isinstance(result, float) else None
            return result

        job.do(body)
        return job

    def idle_s(self) -> float:
        """Seconds until another run is due (0 if one is already due): the loop's sleep,
        and how long a poll may wait for its commit. A job running now counts at its next
        boundary; 1.0 with no job scheduled."""
        due = [
            j.due_at + j.interval_s if j.running else j.due_at
            for j in self.scheduler.jobs
            if isinstance(j, GridJob) and j.due_at is not None
        ]
        return max(0.0, min(due) - self.clock.wall()) if due else 1.0

    def run_pending(self) -> None:
        self.scheduler.run_pending()

    def run(
        self,
        stop: threading.Event,
        max_sleep_s: float = 1.0,
        on_idle: Callable[[], object] | None = None,
    ) -> None:
        """Run due jobs, sleeping until the next one; returns soon after `stop` is set.
        `on_idle` is called at every turn of the loop (the watchdog ping)."""
        while not stop.is_set():
            self.run_pending()
            if on_idle:
                on_idle()
            if stop.is_set():
                break
            stop.wait(min(self.idle_s(), max_sleep_s))
