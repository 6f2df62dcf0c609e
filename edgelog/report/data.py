"""The report's input: a period, and the rows of a meter added into per-minute bins.

The one-minute bin is the unit of input. Raw rows (from MariaDB's server-side
cursor or the buffer, see `edgelog.export`) arrive in chunks; `Aggregator.add`
turns a chunk into `MinuteBins` (per minute and per series: sum, count, min and
max, plus counts of rows, answered polls and failed polls) and merges them with
`Aggregator.add_bins`. A row of a per-minute aggregate table (avg, min, max and
sample count per column) is one bin (sum = avg x count), so such a table can
feed `add_bins` directly. A month of 1 Hz readings needs the bins (tens of MB),
never the rows.

Per sample, before binning:
* an interrupted sample (any phase-neutral voltage below `limits.INTERRUPTION_PU`
  of nominal: a dead bus measured by the meter) is counted in the series "dead"
  and its instantaneous values are left out of every other series (the energy
  counters are kept): voltage, frequency, power-factor and unbalance figures are
  those of the time the plant was supplying;
* derived series: total P, Q and S; the voltage unbalance FD; the current
  unbalance (largest deviation from the mean of the three currents, and that
  mean); the sequence currents I1, I2 and the neutral current estimated from
  P, Q and the voltages (`sequence_currents`); one 0/1 flag per frequency band
  (`FREQ_FLAGS`), so that time outside a band is a count of samples.

What needs the samples themselves (runs of samples: the events of
`report.events`) is detected in `Aggregator.add` while the rows stream past;
from aggregate rows alone it is not available.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from ..errors import EdgelogError
from . import limits

BIN_S = 60
PHASES = (1, 2, 3)
#: The sampling interval is the median of about this many spacings (whole chunks of them).
SPACING_DIFFS = 20000


# -- the period ------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    kind: str  # "day" | "week" | "month"
    start: dt.datetime  # local, tz-aware
    end: dt.datetime  # excluded
    tz: ZoneInfo

    @classmethod
    def parse(
        cls,
        day: str | None = None,
        week: str | None = None,
        month: str | None = None,
        tz: str = "America/Sao_Paulo",
    ) -> Period:
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise EdgelogError(f"report: unknown time zone {tz!r} (e.g. America/Sao_Paulo, UTC)") from None
        if day is not None:
            d = _date(day, "--day")
            start = dt.datetime.combine(d, dt.time(), zone)
            return cls("day", start, _add_days(start, 1), zone)
        if week is not None:
            if m := re.fullmatch(r"(\d{4})-W(\d{1,2})", week.strip()):
                try:
                    monday = dt.date.fromisocalendar(int(m[1]), int(m[2]), 1)
                except ValueError:
                    raise EdgelogError(f"--week: no week {week!r}") from None
            else:
                d = _date(week, "--week")
                monday = d - dt.timedelta(days=d.weekday())
            start = dt.datetime.combine(monday, dt.time(), zone)
            return cls("week", start, _add_days(start, 7), zone)
        if month is not None:
            m = re.fullmatch(r"(\d{4})-(\d{1,2})(?:-\d{1,2})?", month.strip())
            if not m or not 1 <= int(m[2]) <= 12:
                raise EdgelogError(f"--month: {month!r} is not a month (say e.g. 2025-06)")
            year, mon = int(m[1]), int(m[2])
            start = dt.datetime(year, mon, 1, tzinfo=zone)
            end = dt.datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=zone)
            return cls("month", start, end, zone)
        raise EdgelogError("report: say --day, --week or --month")

    @property
    def start_ts(self) -> float:
        return self.start.timestamp()

    @property
    def end_ts(self) -> float:
        return self.end.timestamp()

    @property
    def slug(self) -> str:
        if self.kind == "day":
            return self.start.strftime("%Y-%m-%d")
        if self.kind == "week":
            year, week, _ = self.start.isocalendar()
            return f"{year}-W{week:02d}"
        return self.start.strftime("%Y-%m")

    def days(self) -> list[tuple[dt.date, float, float]]:
        """The local days of the period: (date, start, end) in unix seconds."""
        out, day = [], self.start
        while day < self.end:
            following = _add_days(day, 1)
            out.append((day.date(), day.timestamp(), following.timestamp()))
            day = following
        return out

    @property
    def display_bin_s(self) -> int:
        """Resolution of the charts: 1 min for a day, 10 min for a week, 30 min for a month."""
        return {"day": 60, "week": 600, "month": 1800}[self.kind]


def _date(text: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise EdgelogError(f"{what}: {text!r} is not a date (say e.g. 2025-06-01)") from None


def _add_days(start: dt.datetime, days: int) -> dt.datetime:
    """Local midnight `days` later (a day is not always 24 h where clocks change)."""
    d = start.date() + dt.timedelta(days=days)
    return dt.datetime.combine(d, dt.time(), start.tzinfo)


# -- per-sample series -------------------------------------------------------------------


def _col(prefix: str, k: int) -> str:
    return f"{prefix}_l{k}" if prefix != "tensao" else f"tensao_l{k}_n"


#: Cumulative registers: kept in interrupted samples (the meter keeps counting).
COUNTERS = frozenset({"energia_ativa", "energia_reativa"})


def _freq_flags() -> tuple[tuple[str, float, float], ...]:
    """(series, lo, hi): the flag is 1 when the frequency is outside [lo, hi]."""
    flags = [
        ("f_out_normal", *limits.FREQ_NORMAL),
        ("f_out_recovery", *limits.FREQ_RECOVERY),
        ("f_out_extreme", *limits.FREQ_EXTREME),
        ("f_out_island", *limits.FREQ_ISLAND_NARROW),
        ("f_out_island_wide", *limits.FREQ_ISLAND_WIDE),
    ]
    for side, threshold, _max_s in limits.FREQ_TIME_LIMITS:
        name = f"f_{side}_{threshold:g}".replace(".", "_")
        flags.append((name, threshold, math.inf) if side == "below" else (name, -math.inf, threshold))
    return tuple(flags)


FREQ_FLAGS = _freq_flags()
DERIVED = (
    "p_total",
    "q_total",
    "s_total",
    "fd",
    "v_mean",
    "i_mean",
    "i_dev",
    "i1",
    "i2",
    "in_est",
    *(name for name, _, _ in FREQ_FLAGS),
    "dead",
)


def sequence_currents(
    v: np.ndarray, vll: np.ndarray, p: np.ndarray, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimated |I1|, |I2| and |Ia + Ib + Ic| (A) per sample, from magnitudes only.

    v: phase-neutral voltages (n, 3); vll: line voltages L1-L2, L2-L3, L3-L1 (n, 3);
    p, q: per-phase active and reactive power (n, 3), Q > 0 inductive (load convention).
    The voltage phasors follow from the six voltage magnitudes (law of cosines:
    the angle between Va and Vb from |Va|, |Vb| and |Vab|), assuming positive phase
    sequence; each current is conj(S/V). Three current magnitudes alone cannot give
    I2: the angles come from P and Q. Where the meter's Q holds harmonic reactive
    power, or the rotation is negative, the estimate is off (see docs/load-study.md).
    """
    va, vb, vc = v[:, 0], v[:, 1], v[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        cab = np.clip((va**2 + vb**2 - vll[:, 0] ** 2) / (2 * va * vb), -1, 1)
        cca = np.clip((vc**2 + va**2 - vll[:, 2] ** 2) / (2 * vc * va), -1, 1)
        phasors = np.stack(
            [va + 0j, vb * np.exp(-1j * np.arccos(cab)), vc * np.exp(1j * np.arccos(cca))], axis=1
        )
        currents = np.conj((p + 1j * q) / phasors)
    a = np.exp(2j * np.pi / 3)
    ia, ib, ic = currents[:, 0], currents[:, 1], currents[:, 2]
    i1 = np.abs(ia + a * ib + a * a * ic) / 3
    i2 = np.abs(ia + a * a * ib + a * ic) / 3
    return i1, i2, np.abs(ia + ib + ic)


@dataclass
class MinuteBins:
    """Per-minute aggregates of some minutes: the report's unit of input.

    `minute` holds absolute minute numbers (unix seconds // 60, no repeats); the
    other arrays are per minute, columns in `Aggregator.series` order.
    """

    minute: np.ndarray
    sum: np.ndarray
    cnt: np.ndarray
    min: np.ndarray
    max: np.ndarray
    rows: np.ndarray  # every row, failed polls included
    good: np.ndarray  # rows with values (the meter answered)
    failed: np.ndarray

    @classmethod
    def empty(cls, minute: np.ndarray, k: int) -> MinuteBins:
        """Bins of these minutes for `k` series, nothing in them yet."""
        m = len(minute)
        return cls(
            minute=minute,
            sum=np.zeros((m, k)),
            cnt=np.zeros((m, k), dtype=np.int64),
            min=np.full((m, k), np.inf),
            max=np.full((m, k), -np.inf),
            rows=np.zeros(m, dtype=np.int64),
            good=np.zeros(m, dtype=np.int64),
            failed=np.zeros(m, dtype=np.int64),
        )


class Aggregator:
    """Adds chunks of rows, or per-minute bins, into the per-minute bins of [start, end)."""

    def __init__(self, start: float, end: float, columns: Sequence[str]):
        from .events import EventDetector

        if start % BIN_S or end % BIN_S:
            raise EdgelogError("report: a period must start and end on whole minutes")
        self.start, self.end = start, end
        self.columns = list(columns)
        self.series = [*self.columns, *DERIVED]
        self.index = {name: i for i, name in enumerate(self.series)}
        n, k = max(1, math.ceil((end - start) / BIN_S)), len(self.series)
        self.n = n
        self.first_minute = int(start // BIN_S)
        self.sum = np.zeros((n, k))
        self.cnt = np.zeros((n, k), dtype=np.int64)
        self.min = np.full((n, k), np.inf)
        self.max = np.full((n, k), -np.inf)
        self.rows = np.zeros(n, dtype=np.int64)
        self.good = np.zeros(n, dtype=np.int64)
        self.failed = np.zeros(n, dtype=np.int64)
        self.bad_clock = 0
        self.total_rows = 0
        self.events = EventDetector()
        self.interval_hint: float | None = None  # set by a reader of aggregate rows
        self._last_t: float | None = None
        self._diffs: list[np.ndarray] = []
        self._diff_count = 0

    def has(self, *names: str) -> bool:
        return all(n in self.index for n in names)

    def any(self, name: str) -> bool:
        """Whether the series has at least one value."""
        return name in self.index and bool(self.cnt[:, self.index[name]].any())

    def add(self, chunk: Sequence[Sequence[Any]], spacing: bool = True) -> None:
        """Rows: (measured_at, site, meter, clock_ok, error, *values in `columns` order).
        `spacing`: their times count towards the sampling interval (False: rows of some
        minutes only, the interval known from the period's first rows: `note_spacing`)."""
        if not chunk:
            return
        m = len(chunk)
        t = np.fromiter((r[0] for r in chunk), dtype=float, count=m)
        ok = np.fromiter((bool(r[3]) for r in chunk), dtype=bool, count=m)
        failed = np.fromiter((r[4] is not None for r in chunk), dtype=bool, count=m)
        values = np.array([r[5:] for r in chunk], dtype=float).reshape(m, len(self.columns))
        inside = (t >= self.start) & (t < self.end)
        if not inside.all():
            t, ok, failed, values = t[inside], ok[inside], failed[inside], values[inside]
        if not len(t):
            return
        self.total_rows += len(t)
        self.bad_clock += int((~ok).sum())
        if spacing:
            self._spacing(t)  # failed polls are on the sampling grid too
        derived = self._derived(values)  # also blanks the values of interrupted samples
        data = np.concatenate([values, derived], axis=1)
        data[failed] = np.nan
        self.events.feed(t, failed, data[:, self.index["dead"]], self._column(data, "frequencia"))
        self.add_bins(self._bin(t, failed, data))

    def _column(self, data: np.ndarray, name: str) -> np.ndarray | None:
        return data[:, self.index[name]] if name in self.index else None

    def _bin(self, t: np.ndarray, failed: np.ndarray, data: np.ndarray) -> MinuteBins:
        minute, b = np.unique((t // BIN_S).astype(np.int64), return_inverse=True)
        m = len(minute)
        valid = np.isfinite(data)
        bins = MinuteBins.empty(minute, data.shape[1])
        bins.rows = np.bincount(b, minlength=m).astype(np.int64)
        bins.good = np.bincount(b, weights=(~failed).astype(float), minlength=m).astype(np.int64)
        bins.failed = np.bincount(b, weights=failed.astype(float), minlength=m).astype(np.int64)
        np.add.at(bins.sum, b, np.where(valid, data, 0.0))
        np.add.at(bins.cnt, b, valid.astype(np.int64))
        np.minimum.at(bins.min, b, np.where(valid, data, np.inf))
        np.maximum.at(bins.max, b, np.where(valid, data, -np.inf))
        return bins

    def add_bins(self, bins: MinuteBins) -> None:
        """Merge per-minute aggregates (from rows, or from an aggregate table)."""
        idx = bins.minute - self.first_minute
        keep = (idx >= 0) & (idx < self.n)
        idx = idx[keep]
        np.add.at(self.sum, idx, bins.sum[keep])
        np.add.at(self.cnt, idx, bins.cnt[keep])
        np.minimum.at(self.min, idx, bins.min[keep])
        np.maximum.at(self.max, idx, bins.max[keep])
        np.add.at(self.rows, idx, bins.rows[keep])
        np.add.at(self.good, idx, bins.good[keep])
        np.add.at(self.failed, idx, bins.failed[keep])

    def note_spacing(self, t: np.ndarray) -> bool:
        """Times of a chunk of the period's first rows, for the sampling interval, as `add`
        counts them; False once it has enough (later chunks are not looked at)."""
        self._spacing(t)
        return self._diff_count < SPACING_DIFFS

    def first_diffs(self, n: int) -> np.ndarray:
        """The first `n` positive spacings seen (what the event detector's spacing is from)."""
        return np.concatenate(self._diffs)[:n] if self._diffs else np.zeros(0)

    def _spacing(self, t: np.ndarray) -> None:
        if self._diff_count >= SPACING_DIFFS or not len(t):
            return
        series = t if self._last_t is None else np.concatenate([[self._last_t], t])
        d = np.diff(series)
        d = d[d > 0]
        self._diffs.append(d)
        self._diff_count += len(d)
        self._last_t = float(t[-1])

    @property
    def interval_s(self) -> float:
        """The sampling interval: the median spacing of successive readings (1 s if unknown)."""
        if self.interval_hint is not None:
            return self.interval_hint
        diffs = np.concatenate(self._diffs) if self._diffs else np.array([])
        return float(np.median(diffs)) if diffs.size else 1.0

    def _derived(self, v: np.ndarray) -> np.ndarray:
        out = np.full((len(v), len(DERIVED)), np.nan)
        at = {name: j for j, name in enumerate(DERIVED)}

        def col(name: str) -> np.ndarray | None:
            return v[:, self.index[name]] if name in self.index else None

        def phases(prefix: str) -> np.ndarray | None:
            parts = [col(_col(prefix, k)) for k in PHASES]
            return np.stack(parts, axis=1) if all(p is not None for p in parts) else None  # type: ignore[arg-type]

        volts = phases("tensao")
        if volts is not None:
            dead = (volts < limits.INTERRUPTION_PU * limits.PHASE_NEUTRAL_127.nominal).any(axis=1)
            out[:, at["dead"]] = np.where(np.isfinite(volts).all(axis=1) | dead, dead.astype(float), np.nan)
            out[:, at["v_mean"]] = volts.mean(axis=1)
            instantaneous = [i for i, name in enumerate(self.columns) if name not in COUNTERS]
            v[np.ix_(dead, instantaneous)] = np.nan  # an interrupted sample says nothing more
            out[dead, at["v_mean"]] = np.nan
        p, q, s = phases("potencia_ativa"), phases("potencia_reativa"), phases("potencia_aparente")
        for name, x in (("p_total", p), ("q_total", q), ("s_total", s)):
            if x is not None:
                out[:, at[name]] = x.sum(axis=1)
        vll = [col(name) for name in ("tensao_l1_l2", "tensao_l2_l3", "tensao_l3_l1")]
        if all(x is not None for x in vll):
            lines = np.stack(vll, axis=1)  # type: ignore[arg-type]
            sq = (lines**2).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                beta = (lines**4).sum(axis=1) / sq**2
                root = np.sqrt(np.clip(3 - 6 * beta, 0, None))
                out[:, at["fd"]] = 100 * np.sqrt(np.clip((1 - root) / (1 + root), 0, None))  # 0 when balanced
            if volts is not None and p is not None and q is not None:
                i1, i2, i_n = sequence_currents(volts, lines, p, q)
                out[:, at["i1"]], out[:, at["i2"]], out[:, at["in_est"]] = i1, i2, i_n
        currents = phases("corrente")
        if currents is not None:
            mean = currents.mean(axis=1)
            out[:, at["i_mean"]] = mean
            out[:, at["i_dev"]] = np.abs(currents - mean[:, None]).max(axis=1)
        f = col("frequencia")
        if f is not None:
            for name, lo, hi in FREQ_FLAGS:
                out[:, at[name]] = np.where(np.isfinite(f), ((f < lo) | (f > hi)).astype(float), np.nan)
        return out

    # -- views -----------------------------------------------------------------------

    def total(self, name: str) -> tuple[float, int]:
        """Sum and count of a series over the whole period."""
        i = self.index[name]
        return float(self.sum[:, i].sum()), int(self.cnt[:, i].sum())

    def mean(self, name: str, group: int = 1) -> np.ndarray:
        """Mean of a series per bin of `group` minutes (NaN where no value)."""
        i = self.index[name]
        s, c = _group_sum(self.sum[:, i], group), _group_sum(self.cnt[:, i], group)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, s / np.maximum(c, 1), np.nan)

    def ratio(self, num: str, den: str, group: int = 1) -> np.ndarray:
        """sum(num) / sum(den) per bin (a power factor from P and S)."""
        a = _group_sum(self.sum[:, self.index[num]], group)
        b = _group_sum(self.sum[:, self.index[den]], group)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)

    def extreme(self, name: str, group: int, which: str) -> np.ndarray:
        i = self.index[name]
        data = self.min[:, i] if which == "min" else self.max[:, i]
        fill = np.inf if which == "min" else -np.inf
        arr = np.concatenate([data, np.full((-len(data)) % group, fill)]).reshape(-1, group)
        out = arr.min(axis=1) if which == "min" else arr.max(axis=1)
        return np.where(np.isfinite(out), out, np.nan)

    def times(self, group: int = 1) -> np.ndarray:
        """Start of each (grouped) bin, unix seconds."""
        return self.start + np.arange(math.ceil(self.n / group)) * BIN_S * group

    def dead_count(self) -> np.ndarray:
        """Interrupted samples per bin."""
        return self.sum[:, self.index["dead"]] if "dead" in self.index else np.zeros(self.n)

    def covered_s(self, supplied: bool = False) -> np.ndarray:
        """Seconds of each bin covered by answered readings (by supplied ones: not interrupted)."""
        count = self.good - (self.dead_count() if supplied else 0)
        return np.minimum(np.maximum(count, 0) * self.interval_s, BIN_S).astype(float)


def _group_sum(a: np.ndarray, group: int) -> np.ndarray:
    if group == 1:
        return a.astype(float)
    pad = (-len(a)) % group
    return np.concatenate([a.astype(float), np.zeros(pad)]).reshape(-1, group).sum(axis=1)


def gap_spans(agg: Aggregator, now: float | None = None) -> list[tuple[float, float, str]]:
    """Runs of minutes without supply or without readings, up to now:
    (start, end, "dead" | "failed" | "none"): measured interruption, failed polls, no rows."""
    now = time.time() if now is None else now
    dead = agg.dead_count()
    state = np.where(
        (agg.good > 0) & (dead < agg.good), 0, np.where(agg.good > 0, 3, np.where(agg.failed > 0, 1, 2))
    )
    kinds = {1: "failed", 2: "none", 3: "dead"}
    spans: list[tuple[float, float, str]] = []
    limit = int(np.clip(math.ceil((min(now, agg.end) - agg.start) / BIN_S), 0, agg.n))
    i = 0
    while i < limit:
        if state[i] == 0:
            i += 1
            continue
        j = i
        while j < limit and state[j] == state[i]:
            j += 1
        spans.append((agg.start + i * BIN_S, min(agg.start + j * BIN_S, now, agg.end), kinds[int(state[i])]))
        i = j
    return spans


def load(chunks: Iterable[Sequence[Sequence[Any]]], period: Period, columns: Sequence[str]) -> Aggregator:
    agg = Aggregator(period.start_ts, period.end_ts, columns)
    for chunk in chunks:
        agg.add(chunk)
    return agg
