"""Is this reading's time trusted? (`ClockGuard`), and the clock steps `edgelog run` saw
(`ClockSteps`), kept for sync-status.

`clock.py` asks the kernel; this module decides, for each reading, whether its
wall-clock time can be believed (``clock_ok``), from the kernel's answer and from
what the logger itself saw of the clock (the Pi has no RTC: after a power cut it
may start hours in the past).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from . import clock
from .buffer import Buffer
from .cadence import JUMP_THRESHOLD_S, Clock
from .episodes import Episode
from .errors import EdgelogError

log = logging.getLogger(__name__)

#: Buffer meta key of the clock steps `edgelog run` saw (JSON: count, last_at,
#: last_step_s), for sync-status, which runs in another process.
CLOCK_STEPS_KEY = "clock_steps"
#: Every grid job (one per meter) sees a step of the clock: steps of about the same size
#: (within JUMP_THRESHOLD_S) seen within this many seconds (monotonic) are that same step.
STEP_WINDOW_S = 10.0


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

    An untrusted stretch is an `Episode`: logged when it starts, at the 10th, 100th,
    every 1000th reading, and when the clock is trusted again.
    """

    def __init__(self, wall: Clock, require_sync: bool, floor: float | None = None):
        self.clock = wall
        self.require_sync = require_sync
        self.floor_wall = floor
        self.floor_mono = wall.monotonic() if floor is not None else 0.0
        self.untrusted = Episode()
        self._lock = threading.Lock()  # every bus thread asks

    def floor(self, mono: float) -> float | None:
        return None if self.floor_wall is None else self.floor_wall + (mono - self.floor_mono)

    def check(self, wall: float) -> bool:
        """Whether a reading stamped `wall` (now) has a trusted time."""
        with self._lock:
            mono = self.clock.monotonic()
            kernel = clock.kernel_synchronised() if self.require_sync else None
            reason = self._distrust(wall, mono, kernel)
            if reason is not None:
                self._untrusted(reason)
                return False
            if n := self.untrusted.end():
                log.warning("clock trusted again after %d readings with clock_ok = 0", n)
            floor = self.floor(mono)
            self.floor_wall = wall if kernel or floor is None else max(wall, floor)
            self.floor_mono = mono
            return True

    def _distrust(self, wall: float, mono: float, kernel: bool | None) -> str | None:
        """Why `wall` is not to be trusted, or None."""
        floor = self.floor(mono)
        if wall < clock.EARLIEST_PLAUSIBLE:
            return "time before 2026"
        if kernel is False:
            return "the kernel says the clock is not synchronised"
        if kernel is None and floor is not None and wall < floor - JUMP_THRESHOLD_S:
            return f"{floor - wall:.0f} s behind the newest trusted reading"
        return None

    def _untrusted(self, reason: str) -> None:
        if not self.untrusted.add():
            return
        if self.untrusted.count == 1:
            log.warning("clock not trusted (%s): readings get clock_ok = 0 until it is", reason)
        else:
            log.warning("clock: still untrusted after %d readings (%s)", self.untrusted.count, reason)


class StepRecord(NamedTuple):
    """The clock steps `edgelog run` saw, as the buffer keeps them."""

    count: int = 0
    last_at: float | None = None  # wall clock just after the last step
    last_step_s: float | None = None  # its size: negative for a step back

    def to_json(self) -> str:
        return json.dumps(self._asdict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> StepRecord:
        """The record back; an empty one if missing or unreadable."""
        try:
            data: Any = json.loads(text) if text else {}
            count, at, step = data.get("count", 0), data.get("last_at"), data.get("last_step_s")
            record = cls(int(count), _number(at), _number(step))
        except (ValueError, TypeError, AttributeError):
            return cls()
        return record if record.count >= 0 else cls()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


class ClockSteps:
    """Counts the clock steps the cadence sees (once per step, however many grid jobs see
    it) and keeps the count, with the last step's time and size, in the buffer: a write
    per step, on the buffer writer's thread (`run_on_writer`)."""

    def __init__(self, wall: Clock, buffer: Buffer, run_on_writer: Callable[[Callable[[], object]], None]):
        self.clock = wall
        self.buffer = buffer
        self.record = StepRecord.from_json(buffer.get_meta(CLOCK_STEPS_KEY))
        self._run_on_writer = run_on_writer
        self._seen: tuple[float, float] | None = None  # (monotonic, size) of the last step seen
        self._lock = threading.Lock()  # every bus thread's cadence reports

    def seen(self, step_s: float) -> None:
        """A grid job saw the clock step by `step_s` seconds (the cadence's `on_jump`)."""
        mono = self.clock.monotonic()
        with self._lock:
            last = self._seen
            if last and mono - last[0] < STEP_WINDOW_S and abs(step_s - last[1]) <= JUMP_THRESHOLD_S:
                return  # the same step, seen by another job
            self._seen = (mono, step_s)
            self.record = StepRecord(self.record.count + 1, self.clock.wall(), round(step_s, 3))
            text = self.record.to_json()
        self._run_on_writer(lambda: self._write(text))

    def _write(self, text: str) -> None:
        try:
            self.buffer.set_meta(CLOCK_STEPS_KEY, text)
        except EdgelogError as exc:  # sync-status's view only: the readings matter more
            log.warning("cannot record the clock step in the buffer: %s", exc)
