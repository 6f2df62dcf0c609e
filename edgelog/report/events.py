"""Events found in the stream of samples: interruptions and frequency excursions.

Runs of consecutive samples meeting a condition are found while the rows stream
past (`EventDetector.feed`, called by `Aggregator.add`), because a duration limit
("below 58.5 Hz for at most 10 s") needs the samples themselves, not minute
bins. A run is broken by a sample that does not meet the condition, by a failed
poll, by a clock step back, or by a gap longer than 2.5 sampling intervals. Its
duration is counted as (last - first) + one interval: each sample stands for one
interval. At coarse sampling that is an estimate: one 60-s sample below 58.5 Hz
says the frequency was below at that instant, and counts as 60 s.

Which runs are events (limits in `report.limits`): every interruption; every
sample outside the extreme band 56.5-66 Hz; a run beyond one of PRODIST's timed
thresholds longer than its allowed time; a run outside 59.5-60.5 Hz longer than
the 30 s PRODIST allows to get back into it. Overloads and periods without data
are found on the minute bins (`report.study`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import limits

MAX_KEPT = 200  # events kept per kind; the rest are counted
SPACING_N = 500  # the sampling interval of a stream: the median of its first spacings


@dataclass(frozen=True)
class Event:
    kind: str  # a key of RULES, or "overload", "no_data"
    start: float  # unix seconds
    duration_s: float
    value: float | None = None  # the extreme value during the run (Hz, kVA), if any
    limit_s: float | None = None  # the longest time allowed, if any


@dataclass(frozen=True)
class Rule:
    test: Callable[[np.ndarray], np.ndarray]  # on the frequency (or "dead") values
    limit_s: float  # an event when the run is longer than this
    extreme: str  # "min", "max" or "far" (furthest from nominal)
    on: str = "f"  # "f" or "dead"


def _rules() -> dict[str, Rule]:
    lo, hi = limits.FREQ_EXTREME
    rlo, rhi = limits.FREQ_RECOVERY
    rules = {
        "interruption": Rule(lambda d: d > 0.5, 0.0, "none", on="dead"),
        "f_extreme": Rule(lambda f: (f < lo) | (f > hi), 0.0, "far"),
        "f_recovery": Rule(lambda f: (f < rlo) | (f > rhi), limits.FREQ_RECOVERY_S, "far"),
    }
    for side, threshold, max_s in limits.FREQ_TIME_LIMITS:
        name = f"f_{side}_{threshold:g}"
        if side == "above":
            rules[name] = Rule(lambda f, x=threshold: f > x, max_s, "max")
        else:
            rules[name] = Rule(lambda f, x=threshold: f < x, max_s, "min")
    return rules


RULES = _rules()


@dataclass
class _Run:
    start: float
    last: float
    value: float


@dataclass
class EventDetector:
    events: list[Event] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    _open: dict[str, _Run] = field(default_factory=dict)
    _prev_t: float | None = None
    _diffs: list[float] = field(default_factory=list)

    @property
    def spacing_s(self) -> float:
        return float(np.median(self._diffs)) if self._diffs else 1.0

    def feed(self, t: np.ndarray, failed: np.ndarray, dead: np.ndarray, f: np.ndarray | None) -> None:
        """Samples in time order: times, failed-poll flags, interruption flags, frequencies."""
        if not len(t):
            return
        steps = np.diff(t, prepend=t[0] if self._prev_t is None else self._prev_t)
        if len(self._diffs) < SPACING_N:
            self._diffs.extend(float(x) for x in steps[steps > 0][: SPACING_N - len(self._diffs)])
        breaks = (steps <= 0) | (steps > 2.5 * self.spacing_s)
        if self._prev_t is None:
            breaks[0] = True
        self._prev_t = float(t[-1])
        for kind, rule in RULES.items():
            values = dead if rule.on == "dead" else f
            if values is None:
                continue
            with np.errstate(invalid="ignore"):
                met = rule.test(values) & np.isfinite(values) & ~failed
            self._runs(kind, t, met, breaks, values)

    def _runs(
        self, kind: str, t: np.ndarray, met: np.ndarray, breaks: np.ndarray, values: np.ndarray
    ) -> None:
        if kind in self._open and (not met[0] or breaks[0]):
            self._close(kind)
        starts = np.flatnonzero(met & (breaks | ~np.concatenate([[False], met[:-1]])))
        ends = np.flatnonzero(met & np.concatenate([breaks[1:] | ~met[1:], [True]]))
        carried = self._open.pop(kind, None)  # still open: it goes on in this chunk's first run
        for a, b in zip(starts, ends, strict=True):
            run = _Run(float(t[a]), float(t[b]), self._extreme(kind, values[a : b + 1]))
            if carried is not None and a == 0:
                run = _Run(carried.start, run.last, self._extreme(kind, np.array([carried.value, run.value])))
                carried = None
            self._open[kind] = run
            if b < len(t) - 1:
                self._close(kind)

    @staticmethod
    def _extreme(kind: str, values: np.ndarray) -> float:
        rule = RULES[kind]
        if rule.extreme == "min":
            return float(np.min(values))
        if rule.extreme == "max":
            return float(np.max(values))
        if rule.extreme == "far":
            return float(values[np.argmax(np.abs(values - limits.FREQ_NOMINAL))])
        return float("nan")

    def _close(self, kind: str) -> None:
        run = self._open.pop(kind)
        rule = RULES[kind]
        duration = run.last - run.start + self.spacing_s
        if kind != "interruption" and not duration > rule.limit_s:
            return
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= MAX_KEPT:
            value = None if rule.extreme == "none" else float(run.value)
            limit = rule.limit_s if rule.limit_s > 0 else None
            self.events.append(Event(kind, run.start, duration, value, limit))

    def _close_all(self) -> None:
        for kind in list(self._open):
            self._close(kind)

    def break_runs(self) -> None:
        """The next samples fed do not follow the last ones (rows left out between): close
        every open run, as a sample meeting no condition would."""
        self._close_all()

    def fix_spacing(self, diffs: np.ndarray) -> None:
        """Take the spacing from these first spacings of the stream (at least `SPACING_N`),
        as `feed` would have from the whole stream; samples fed later do not change it."""
        self._diffs = [float(x) for x in diffs[:SPACING_N]]

    def finish(self) -> list[Event]:
        """Close the runs still open; every event found, in time order."""
        self._close_all()
        self.events.sort(key=lambda e: e.start)
        return self.events
