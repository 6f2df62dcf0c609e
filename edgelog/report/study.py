"""What the load study of an isolated plant needs, from the minute bins.

* demand: mean active power over fixed 15-minute windows aligned to the clock;
  a window with less than half its readings is left out;
* the typical day: per local quarter-hour, the mean of the days' 15-minute
  demands with their 10th and 90th percentiles, weekdays and weekends apart;
* the load-duration curve: the 1-minute mean powers sorted from the largest,
  each standing for the time its readings cover;
* capacity: peak apparent power and per-phase current against the generator's
  rating, hours with the 1-minute mean above 80, 90 and 100 % of it, hours above
  the water's power;
* phase imbalance: per-phase kVA, the neutral current, the current unbalance
  weighted by current and at the peak, I2/I1 and I2/IN estimated from P, Q and
  the voltages (`data.sequence_currents`);
* a table per local day; overloads and periods without data as events.
Interrupted samples are not in any of these (see `report.data`).
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..config import PlantConfig
from . import limits
from .data import BIN_S, PHASES, Aggregator, Period, _col, _group_sum, gap_spans
from .events import MAX_KEPT, Event

QUARTER = limits.DEMAND_WINDOW_S // BIN_S


def energy_wh(agg: Aggregator, name: str, lo: int = 0, hi: int | None = None) -> float | None:
    """Integral of a power series over bins [lo, hi): per bin, mean x covered time."""
    if not agg.any(name):
        return None
    i = agg.index[name]
    c, s = agg.cnt[lo:hi, i], agg.sum[lo:hi, i]
    mean = np.where(c > 0, s / np.maximum(c, 1), 0.0)
    return float((mean * np.minimum(c * agg.interval_s, BIN_S)).sum() / 3600)


def supplied_h(agg: Aggregator, lo: int = 0, hi: int | None = None) -> float:
    """Hours covered by readings of the total active power (interrupted samples excluded)."""
    if not agg.has("p_total"):
        return 0.0
    c = agg.cnt[lo:hi, agg.index["p_total"]]
    return float(np.minimum(c * agg.interval_s, BIN_S).sum() / 3600)


def demand_kw(agg: Aggregator, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """15-minute demand (kW) per window of bins [lo, hi) (lo on a window); NaN where unusable."""
    if not agg.any("p_total"):
        return np.full(math.ceil(((hi or agg.n) - lo) / QUARTER), np.nan)
    i = agg.index["p_total"]
    sums, counts = _group_sum(agg.sum[lo:hi, i], QUARTER), _group_sum(agg.cnt[lo:hi, i], QUARTER)
    usable = counts >= 0.5 * limits.DEMAND_WINDOW_S / agg.interval_s
    return np.where(usable, sums / np.maximum(counts, 1), np.nan) / 1000


def peak(d: np.ndarray) -> int | None:
    return int(np.nanargmax(d)) if np.isfinite(d).any() else None


# -- the typical day ----------------------------------------------------------------------


@dataclass
class TypicalDay:
    days: int
    mean: np.ndarray  # kW per local quarter-hour (96)
    p10: np.ndarray
    p90: np.ndarray


def typical_days(agg: Aggregator, period: Period) -> dict[str, TypicalDay]:
    """{"weekday": ..., "weekend": ...}, only the kinds the period has days of."""
    curves: dict[str, list[np.ndarray]] = {"weekday": [], "weekend": []}
    if not agg.any("p_total"):
        return {}
    i = agg.index["p_total"]
    for date, start, end in period.days():
        lo, hi = int((start - agg.start) // BIN_S), int((end - agg.start) // BIN_S)
        local = [dt.datetime.fromtimestamp(start + k * BIN_S, period.tz) for k in range(hi - lo)]
        quarter = np.array([(t.hour * 60 + t.minute) // 15 for t in local])
        sums = np.bincount(quarter, agg.sum[lo:hi, i], minlength=96)[:96]
        counts = np.bincount(quarter, agg.cnt[lo:hi, i], minlength=96)[:96]
        usable = counts >= 0.5 * limits.DEMAND_WINDOW_S / agg.interval_s
        if usable.any():
            curves["weekend" if date.weekday() >= 5 else "weekday"].append(
                np.where(usable, sums / np.maximum(counts, 1), np.nan) / 1000
            )
    out = {}
    for kind, days in curves.items():
        if days:
            stack = np.stack(days)
            with warnings.catch_warnings():  # a quarter-hour no day has data for
                warnings.simplefilter("ignore", RuntimeWarning)
                out[kind] = TypicalDay(
                    len(days),
                    np.nanmean(stack, axis=0),
                    np.nanpercentile(stack, 10, axis=0),
                    np.nanpercentile(stack, 90, axis=0),
                )
    return out


# -- the load-duration curve -----------------------------------------------------------------


def duration_curve(agg: Aggregator, name: str = "p_total") -> tuple[np.ndarray, np.ndarray]:
    """(hours, values): 1-minute means sorted from the largest, against the cumulative
    time their readings cover (end of each step). Values in the series' unit / 1000."""
    if not agg.any(name):
        return np.zeros(0), np.zeros(0)
    i = agg.index[name]
    c = agg.cnt[:, i]
    have = c > 0
    values = agg.sum[have, i] / c[have] / 1000
    weights = np.minimum(c[have] * agg.interval_s, BIN_S) / 3600
    order = np.argsort(-values, kind="stable")
    return np.cumsum(weights[order]), values[order]


def exceeded(hours: np.ndarray, values: np.ndarray, share: float) -> float | None:
    """The value reached or exceeded during `share` (0..1) of the covered time."""
    if not len(hours):
        return None
    k = int(np.searchsorted(hours, share * hours[-1] - 1e-9))
    return float(values[min(k, len(values) - 1)])


DURATION_SHARES = (0.01, 0.10, 0.50, 0.90)


# -- capacity and imbalance ------------------------------------------------------------------


@dataclass
class Capacity:
    s_peak_kva: float | None = None  # largest 1-minute mean of the total apparent power
    s_peak_at: float | None = None
    s_max_kva: float | None = None  # largest single reading
    s_pct: float | None = None  # s_peak against generator_kva
    s_hours_above: dict[float, float] = field(default_factory=dict)  # level -> hours
    i_peak: dict[int, float] = field(default_factory=dict)  # largest 1-minute mean, A
    i_max: dict[int, float] = field(default_factory=dict)  # largest reading, A
    i_pct: dict[int, float] = field(default_factory=dict)  # i_peak against the rated current
    i_hours_above: dict[float, float] = field(default_factory=dict)  # any phase, 1-minute means
    rated_current_a: float | None = None
    hours_above_hydraulic: float | None = None


def capacity(agg: Aggregator, plant: PlantConfig) -> Capacity:
    out = Capacity(rated_current_a=plant.current_a)
    covered = agg.covered_s(supplied=True) / 3600
    if agg.any("s_total"):
        s = agg.mean("s_total") / 1000
        if np.isfinite(s).any():
            k = int(np.nanargmax(s))
            out.s_peak_kva, out.s_peak_at = float(s[k]), agg.start + k * BIN_S
            out.s_max_kva = float(np.nanmax(agg.extreme("s_total", 1, "max"))) / 1000
            if plant.generator_kva:
                out.s_pct = 100 * out.s_peak_kva / plant.generator_kva
                for level in limits.CAPACITY_LEVELS:
                    out.s_hours_above[level] = float(covered[s > level * plant.generator_kva].sum())
    currents = []
    for k in PHASES:
        name = _col("corrente", k)
        if agg.any(name):
            mean = agg.mean(name)
            currents.append(mean)
            out.i_peak[k] = float(np.nanmax(mean))
            out.i_max[k] = float(np.nanmax(agg.extreme(name, 1, "max")))
            if out.rated_current_a:
                out.i_pct[k] = 100 * out.i_peak[k] / out.rated_current_a
    if currents and out.rated_current_a:
        highest = np.fmax.reduce(currents)
        for level in limits.CAPACITY_LEVELS:
            out.i_hours_above[level] = float(covered[highest > level * out.rated_current_a].sum())
    if plant.hydraulic_kw and agg.any("p_total"):
        out.hours_above_hydraulic = float(covered[agg.mean("p_total") / 1000 > plant.hydraulic_kw].sum())
    return out


@dataclass
class Imbalance:
    kva_mean: dict[int, float] = field(default_factory=dict)  # per phase, over the supplied time
    kva_at_peak: dict[int, float] = field(default_factory=dict)  # in the peak-demand window
    neutral_mean: float | None = None  # measured, A
    neutral_max: float | None = None
    neutral_at_peak: float | None = None
    neutral_est_at_peak: float | None = None  # |Ia + Ib + Ic| from P, Q and V
    i_unbalance_weighted: float | None = None  # %: Σ max|Ik - Imean| / Σ Imean
    i_unbalance_at_peak: float | None = None  # % of the peak window's mean currents
    i2_i1_weighted: float | None = None  # %: Σ I2 / Σ I1
    i2_i1_at_peak: float | None = None
    i2_in_max: float | None = None  # largest 15-minute mean I2 / rated current, %


def imbalance(agg: Aggregator, plant: PlantConfig, peak_window: int | None) -> Imbalance:
    out = Imbalance()

    def window_mean(name: str) -> float | None:
        if peak_window is None or not agg.any(name):
            return None
        value = agg.mean(name, QUARTER)[peak_window]
        return float(value) if np.isfinite(value) else None

    for k in PHASES:
        name = _col("potencia_aparente", k)
        if agg.any(name):
            total, count = agg.total(name)
            out.kva_mean[k] = total / count / 1000
            if (v := window_mean(name)) is not None:
                out.kva_at_peak[k] = v / 1000
    if agg.any("corrente_neutro"):
        total, count = agg.total("corrente_neutro")
        out.neutral_mean = total / count
        out.neutral_max = float(np.nanmax(agg.extreme("corrente_neutro", 1, "max")))
        out.neutral_at_peak = window_mean("corrente_neutro")
    out.neutral_est_at_peak = window_mean("in_est")
    if agg.any("i_mean"):
        dev, mean = agg.total("i_dev")[0], agg.total("i_mean")[0]
        out.i_unbalance_weighted = 100 * dev / mean if mean > 0 else None
        peak_currents = [window_mean(_col("corrente", k)) for k in PHASES]
        if all(c is not None for c in peak_currents):
            currents = np.array(peak_currents, dtype=float)
            if currents.mean() > 0:
                out.i_unbalance_at_peak = float(
                    100 * np.abs(currents - currents.mean()).max() / currents.mean()
                )
    if agg.any("i1"):
        i1, i2 = agg.total("i1")[0], agg.total("i2")[0]
        out.i2_i1_weighted = 100 * i2 / i1 if i1 > 0 else None
        a, b = window_mean("i2"), window_mean("i1")
        out.i2_i1_at_peak = 100 * a / b if a is not None and b else None
        if plant.current_a:
            i2_windows = agg.mean("i2", QUARTER)
            if np.isfinite(i2_windows).any():
                out.i2_in_max = float(100 * np.nanmax(i2_windows) / plant.current_a)
    return out


# -- the days ------------------------------------------------------------------------------


@dataclass
class DayRow:
    date: dt.date
    energy_kwh: float | None
    peak_kw: float | None
    peak_at: float | None
    load_factor: float | None
    s_peak_kva: float | None  # largest 1-minute mean
    interrupted_min: float
    coverage_pct: float  # time with readings / the day (up to now)


def daily_table(agg: Aggregator, period: Period, now: float) -> list[DayRow]:
    rows = []
    dead = agg.dead_count()
    s = agg.mean("s_total") / 1000 if agg.any("s_total") else None
    covered = agg.covered_s()
    for date, start, end in period.days():
        if start >= now:
            break
        lo, hi = int((start - agg.start) // BIN_S), int((end - agg.start) // BIN_S)
        e = energy_wh(agg, "p_total", lo, hi)
        d = demand_kw(agg, lo, hi)
        w = peak(d)
        peak_kw = float(d[w]) if w is not None else None
        hours = supplied_h(agg, lo, hi)
        lf = e / 1000 / hours / peak_kw if e is not None and hours > 0 and peak_kw else None
        s_day = s[lo:hi] if s is not None else None
        rows.append(
            DayRow(
                date=date,
                energy_kwh=e / 1000 if e is not None else None,
                peak_kw=peak_kw,
                peak_at=start + w * limits.DEMAND_WINDOW_S if w is not None else None,
                load_factor=lf,
                s_peak_kva=float(np.nanmax(s_day))
                if s_day is not None and np.isfinite(s_day).any()
                else None,
                interrupted_min=float(dead[lo:hi].sum() * agg.interval_s / 60),
                coverage_pct=100 * float(covered[lo:hi].sum()) / max(min(end, now) - start, 1),
            )
        )
    return rows


# -- events from the bins ------------------------------------------------------------------


def overload_events(agg: Aggregator, plant: PlantConfig) -> list[Event]:
    """Runs of minutes whose mean apparent power is above the generator's rating."""
    if not plant.generator_kva or not agg.any("s_total"):
        return []
    s = agg.mean("s_total") / 1000
    over = np.nan_to_num(s, nan=0.0) > plant.generator_kva
    events, k = [], 0
    while k < agg.n and len(events) < MAX_KEPT:
        if not over[k]:
            k += 1
            continue
        j = k
        while j < agg.n and over[j]:
            j += 1
        events.append(Event("overload", agg.start + k * BIN_S, (j - k) * BIN_S, float(np.nanmax(s[k:j]))))
        k = j
    return events


def no_data_events(agg: Aggregator, now: float) -> list[Event]:
    """Periods without readings: no rows (logger off) or failed polls."""
    spans = [(a, b, kind) for a, b, kind in gap_spans(agg, now) if kind != "dead"]
    return [Event("no_rows" if kind == "none" else "failed", a, b - a) for a, b, kind in spans[:MAX_KEPT]]
