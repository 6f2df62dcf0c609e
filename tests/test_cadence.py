"""The sampling grid, driven by a fake wall/monotonic clock (the only fake in the tests)."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import schedule

from edgelog.cadence import JUMP_THRESHOLD_S, Cadence, Clock, GridJob, next_boundary

#: An arbitrary, non-aligned start: 2026-01-01 03:25:45.678 UTC.
T0 = 1_767_225_600.0 + 12_345.678


@dataclass
class FakeTime:
    """A wall clock that can step, and a monotonic clock that never does."""

    wall_s: float = T0
    mono_s: float = 5_000.0

    def wall(self) -> float:
        return self.wall_s

    def monotonic(self) -> float:
        return self.mono_s

    def advance(self, seconds: float) -> None:
        self.wall_s += seconds
        self.mono_s += seconds

    def step(self, seconds: float) -> None:
        """The wall clock is set (NTP step, RTC-less boot); real time does not move."""
        self.wall_s += seconds

    def clock(self) -> Clock:
        return Clock(wall=self.wall, monotonic=self.monotonic)


@dataclass
class Run:
    wall: float
    mono: float
    due: float


@dataclass
class Recorder:
    """A job body: records when it starts, then 'takes' some time on the fake clock."""

    fake: FakeTime
    duration: Callable[[int], float] = lambda _i: 0.08
    runs: list[Run] = field(default_factory=list)
    job: GridJob | None = None
    during: Callable[[int], None] | None = None

    def __call__(self) -> None:
        assert self.job is not None
        assert self.job.due_at is not None
        i = len(self.runs)
        self.runs.append(Run(self.fake.wall_s, self.fake.mono_s, self.job.due_at))
        self.fake.advance(self.duration(i))
        if self.during:
            self.during(i)


def add(cadence: Cadence, fake: FakeTime, interval_s: float, **kw: object) -> Recorder:
    recorder = Recorder(fake, **kw)  # type: ignore[arg-type]
    recorder.job = cadence.every(interval_s, recorder)
    return recorder


def drive(
    cadence: Cadence,
    fake: FakeTime,
    mono_s: float,
    between: Callable[[], bool] | None = None,
) -> int:
    """The service loop on the fake clock: run what is due, then 'sleep' until the next
    due time, for `mono_s` real (monotonic) seconds. `between` runs at every turn, before
    the sleep, and returns True when it took the turn's sleep itself."""
    end = fake.mono_s + mono_s
    turns = 0
    while fake.mono_s < end:
        turns += 1
        assert turns < 10 * mono_s + 1000, "the loop does not advance"
        cadence.run_pending()
        if between and between():
            continue
        fake.advance(cadence.idle_s())
    return turns


def make() -> tuple[FakeTime, Cadence]:
    fake = FakeTime()
    return fake, Cadence(clock=fake.clock(), scheduler=schedule.Scheduler())


# -- next_boundary ---------------------------------------------------------------------


def test_next_boundary_basics() -> None:
    assert next_boundary(10.0, 1.0) == 11.0  # exactly on a boundary: the next one
    assert next_boundary(10.2, 1.0) == 11.0
    assert next_boundary(10.999999, 1.0) == 11.0
    assert next_boundary(T0, 60.0) == 1_767_225_600.0 + 12_360.0
    assert next_boundary(T0, 900.0) == 1_767_225_600.0 + 12_600.0
    assert next_boundary(-0.5, 1.0) == 0.0
    assert next_boundary(10.2, 1.0, offset=0.5) == 10.5
    assert next_boundary(10.5, 1.0, offset=0.5) == 11.5


@pytest.mark.parametrize("interval", [0.1, 0.2, 0.3, 0.25, 1 / 3, 2.5])
def test_next_boundary_fractional_intervals(interval: float) -> None:
    """The grid is the floats k * interval: from exactly on one of them the answer is the
    next one (0.3 / 0.1 == 2.9999999999999996 must not give 0.3 back), from just before
    it is that one (never skipped)."""
    for k0 in (0, int(T0 / interval)):
        for k in range(k0, k0 + 3000):
            t = k * interval
            assert next_boundary(t, interval) == (k + 1) * interval, (k, t)
            assert next_boundary(math.nextafter(t, -math.inf), interval) == t, (k, t)
            assert next_boundary(t + interval / 2, interval) == (k + 1) * interval, (k, t)


# -- a simulated day -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "span_s", "poll_s"),
    [(1.0, 86_400.0, 0.08), (0.1, 3_600.0, 0.008)],
    ids=["1s-day", "100ms-hour"],
)
def test_simulated_day_on_the_grid(interval: float, span_s: float, poll_s: float) -> None:
    fake, cadence = make()
    rec = add(cadence, fake, interval, duration=lambda _i: poll_s)
    started = time.perf_counter()
    drive(cadence, fake, span_s)
    elapsed = time.perf_counter() - started

    n = round(span_s / interval)
    assert len(rec.runs) == n  # one run per boundary, none missed, none doubled
    assert rec.job is not None
    assert (rec.job.stats.runs, rec.job.stats.missed, rec.job.stats.clock_jumps) == (n, 0, 0)
    first = rec.runs[0].wall
    assert first == next_boundary(T0, interval)
    k0 = round(first / interval)
    for i, run in enumerate(rec.runs):
        assert run.wall == run.due == (k0 + i) * interval, i  # exactly on the grid
    assert abs(rec.runs[-1].wall - (first + (n - 1) * interval)) < 1e-6  # no drift
    assert elapsed < 8.0


def test_plain_schedule_drifts_under_the_same_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The contrast: schedule's every(1).seconds counts from the end of the previous run,
    so an 80 ms poll pushes every later sample 80 ms further (schedule issue #355)."""
    fake = FakeTime()

    class FakeDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return dt.datetime.fromtimestamp(fake.wall_s, tz)

    shim = types.SimpleNamespace(datetime=FakeDatetime, timedelta=dt.timedelta, time=dt.time)
    monkeypatch.setattr(schedule, "datetime", shim)
    scheduler = schedule.Scheduler()
    starts: list[float] = []

    def poll() -> None:
        starts.append(fake.wall_s)
        fake.advance(0.08)

    scheduler.every(1).seconds.do(poll)
    end = fake.mono_s + 600
    while fake.mono_s < end:
        scheduler.run_pending()
        fake.advance(max(scheduler.idle_seconds or 0.0, 1e-6))

    assert 540 <= len(starts) <= 560  # ~600 / 1.08, not 600: ~45 samples lost
    drift = [s - (starts[0] + i) for i, s in enumerate(starts)]
    assert drift[-1] > 40.0  # the last sample is ~44 s late
    assert all(b > a for a, b in itertools.pairwise(drift))  # and it only gets worse

    # the grid job, same clock, same poll: on time
    fake2, cadence = make()
    rec = add(cadence, fake2, 1.0)
    drive(cadence, fake2, 600)
    assert len(rec.runs) == 600
    assert rec.runs[-1].wall - rec.runs[0].wall == 599.0


# -- overruns --------------------------------------------------------------------------


def test_overrun_skips_boundaries_without_a_burst() -> None:
    fake, cadence = make()
    slow = {5, 17, 18, 40}  # run indexes that take 3.5 intervals

    rec = add(cadence, fake, 1.0, duration=lambda i: 3.5 if i in slow else 0.08)
    drive(cadence, fake, 100)
    assert rec.job is not None

    for i, run in enumerate(rec.runs):
        assert run.wall == run.due and run.wall == math.floor(run.wall), i  # on the grid
        if i == 0:
            continue
        gap = run.wall - rec.runs[i - 1].wall
        # the next boundary after the end of the previous run: 4 s after a slow one
        assert gap == (4.0 if i - 1 in slow else 1.0), i
    assert rec.job.stats.missed == 3 * len(slow)
    assert len(rec.runs) + rec.job.stats.missed == 100  # every boundary: run or counted missed
    assert rec.job.stats.clock_jumps == 0


# -- clock steps -----------------------------------------------------------------------


@pytest.mark.parametrize("jump_s", [-7200.0, -7200.3, 3600.0, 3600.3])
@pytest.mark.parametrize("when", ["while-waiting", "during-poll"])
def test_clock_step(jump_s: float, when: str) -> None:
    fake, cadence = make()
    before_jump = 10  # runs before the step
    jumped_at: list[tuple[float, float]] = []  # (wall, mono) right after the step

    def during(i: int) -> None:
        if when == "during-poll" and i == before_jump - 1:
            fake.step(jump_s)  # the clock is set while the meter is being read
            jumped_at.append((fake.wall_s, fake.mono_s))

    rec = add(cadence, fake, 1.0, during=during)

    def between() -> bool:
        if when == "while-waiting" and len(rec.runs) == before_jump and not jumped_at:
            fake.advance(cadence.idle_s() / 2)  # half way through the sleep ...
            fake.step(jump_s)  # ... the clock is set
            jumped_at.append((fake.wall_s, fake.mono_s))
            return True
        return False

    drive(cadence, fake, 120, between=between)
    assert rec.job is not None
    assert len(jumped_at) == 1

    step_wall, step_mono = jumped_at[0]
    assert [r.wall for r in rec.runs[:before_jump]] == [rec.runs[0].wall + i for i in range(before_jump)]
    first_after = rec.runs[before_jump]
    # the next boundary of the new time: no silence after a jump back, no off-grid poll
    # (nor a flood) after a jump forward
    assert first_after.wall == first_after.due == next_boundary(step_wall, 1.0)
    assert 0 < first_after.mono - step_mono <= 1.0
    for prev, run in itertools.pairwise(rec.runs[before_jump:]):
        assert run.wall - prev.wall == 1.0 and run.mono - prev.mono == pytest.approx(1.0)
    assert 119 <= len(rec.runs) <= 121  # one run per real second all along
    stats = rec.job.stats
    assert stats.clock_jumps == 1
    assert stats.missed == 0


def test_small_clock_adjustment_is_not_a_jump() -> None:
    fake, cadence = make()
    rec = add(cadence, fake, 1.0)
    stepped: list[bool] = []

    def between() -> bool:
        if len(rec.runs) == 5 and not stepped:
            fake.advance(0.3)
            fake.step(-(JUMP_THRESHOLD_S - 0.5))  # below the threshold: not a jump
            stepped.append(True)
            return True
        return False

    drive(cadence, fake, 30, between=between)
    assert rec.job is not None
    assert rec.job.stats.clock_jumps == 0
    assert rec.job.stats.missed == 0
    assert all(r.wall == r.due for r in rec.runs)  # waits for the boundary it was due at
    assert rec.runs[5].wall == rec.runs[4].wall + 1.0


# -- several jobs ----------------------------------------------------------------------


def test_two_jobs_each_on_its_grid() -> None:
    fake, cadence = make()
    fast = add(cadence, fake, 1.0, duration=lambda _i: 0.08)
    slow = add(cadence, fake, 60.0, duration=lambda _i: 0.02)
    drive(cadence, fake, 600)
    assert fast.job is not None and slow.job is not None

    assert len(fast.runs) == 600
    first = fast.runs[0].wall
    assert [r.due for r in fast.runs] == [first + i for i in range(600)]
    assert all(r.wall == r.due for r in fast.runs)  # the fast job is never delayed

    assert len(slow.runs) == 10
    first_slow = next_boundary(T0, 60.0)
    assert [r.due for r in slow.runs] == [first_slow + 60.0 * i for i in range(10)]
    for r in slow.runs:  # same instant as a fast poll: runs right after it
        assert r.due <= r.wall <= r.due + 0.08 + 1e-6
    for job in (fast.job, slow.job):
        assert (job.stats.missed, job.stats.clock_jumps) == (0, 0)
    assert cadence.idle_s() <= 1.0


def test_idle_s_is_the_time_a_running_poll_may_wait_for_its_commit() -> None:
    """What `Service.poll` waits for its reading's commit: until the next run is due."""
    fake, cadence = make()
    seen: dict[str, list[float]] = {"a": [], "b": []}
    a = add(cadence, fake, 1.0, duration=lambda _i: 0.1, during=lambda _i: seen["a"].append(cadence.idle_s()))
    b = add(cadence, fake, 1.0, duration=lambda _i: 0.1, during=lambda _i: seen["b"].append(cadence.idle_s()))
    drive(cadence, fake, 5)
    assert a.job is not None and b.job is not None
    # both are due at each boundary: the first to run must not wait (the other is due),
    # the second may wait until the next boundary (1 s after its due time, 0.2 s spent)
    firsts, seconds = (seen["a"], seen["b"]) if a.runs[0].wall < b.runs[0].wall else (seen["b"], seen["a"])
    assert firsts and all(w == 0.0 for w in firsts)
    assert seconds and all(w == pytest.approx(0.8) for w in seconds)
    assert not a.job.running and not b.job.running


# -- missed slots, handed over one by one -------------------------------------------------


def test_each_missed_slot_is_handed_to_on_missed_at_its_grid_instant() -> None:
    """What the service stores as gap rows: every boundary is either run or missed, once."""
    fake, cadence = make()
    slow = {5, 17, 40}
    missed: list[float] = []
    runs: list[Run] = []

    def body() -> None:
        runs.append(Run(fake.wall_s, fake.mono_s, job.due_at or 0.0))
        fake.advance(3.5 if len(runs) - 1 in slow else 0.08)

    job = cadence.every(1.0, body, on_missed=missed.extend)
    drive(cadence, fake, 100)
    assert job.stats.missed == len(missed) == 3 * len(slow)
    assert all(m == math.floor(m) for m in missed)  # on the grid, exactly
    covered = sorted([r.due for r in runs] + missed)
    first = covered[0]
    assert covered == [first + i for i in range(len(covered))]  # each boundary once, no hole


def test_a_job_whose_slot_passed_while_another_ran_runs_for_the_slot_it_is_in() -> None:
    """Two meters on one bus: the first one's poll takes 1.5 s once; the second, due at the
    same boundary, starts after its own slot is over. It runs for the current slot (its
    reading lands in it), and the slot that passed is missed, not left without a row."""
    fake, cadence = make()
    a = add(cadence, fake, 1.0, duration=lambda i: 1.5 if i == 3 else 0.05)
    missed_b: list[float] = []
    b = Recorder(fake, duration=lambda _i: 0.05)
    b.job = cadence.every(1.0, b, on_missed=missed_b.extend)
    drive(cadence, fake, 10)
    assert a.job is not None
    late = next(r for r in b.runs if r.wall - r.due >= 0.4)  # 1.5 s after its boundary
    assert late.due == math.floor(late.wall)  # running for the slot it is in
    assert missed_b == [late.due - 1.0]  # the slot that passed meanwhile
    dues = [r.due for r in b.runs]
    covered = sorted(dues + missed_b)
    assert covered == [covered[0] + i for i in range(len(covered))]
    assert b.job.stats.missed == 1


def test_a_run_whose_sample_lands_in_a_later_slot_covers_that_slot_and_misses_its_own() -> None:
    """A poll that overran its own slot: its reading is stamped when the answer came. The
    slot of that stamp is covered by it; its own slot, and those between, are missed."""
    fake, cadence = make()
    missed: list[float] = []
    covered: list[float] = []
    runs = 0

    def poll() -> float:
        nonlocal runs
        runs += 1
        fake.advance(2.6 if runs == 4 else 0.05)
        stamp = fake.wall_s  # the answer came at the end of the run
        covered.append(math.floor(stamp))
        return stamp

    job = cadence.every(1.0, poll, on_missed=missed.extend)
    drive(cadence, fake, 30)
    slow_due = sorted(covered)[2] + 1.0  # the 4th run's own slot
    assert missed == [slow_due, slow_due + 1.0]  # its own slot, and the one after
    assert slow_due + 2.0 in covered  # the slot its answer landed in
    every = sorted(covered + missed)
    assert every == [every[0] + i for i in range(len(every))]  # each slot once, no hole
    assert job.stats.missed == 2
