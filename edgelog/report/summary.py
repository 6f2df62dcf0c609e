"""The report's figures, gathered from the minute bins (`summarize`).

Definitions (also in the report's notes and docs/load-study.md):
* sampling interval: the median spacing of successive readings;
* energy (integrated): per minute, mean active power x covered time, where the
  covered time is readings x interval (at most the minute); periods without
  data, and interrupted samples (zero power), add nothing;
* energy (meter counter): last minus first value of the counter in the period
  (the smallest value of the first minute and the largest of the last one: the
  counters only grow); it also counts periods without data;
* demand, typical day, duration curve, capacity, imbalance, days: `report.study`;
* voltage conformity (DRP/DRC), frequency bands, power factors: `report.prodist`;
* interruptions: runs of interrupted samples (`report.events`), their time from
  the count of interrupted samples;
* hours without data: the period (up to now) minus the time covered by answered
  polls; of which failed polls and no rows at all (the logger was off).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..config import PlantConfig
from . import limits, prodist, study
from .data import BIN_S, PHASES, Aggregator, Period, _col
from .events import Event


@dataclass
class Interruptions:
    count: int  # runs of interrupted samples
    long_count: int  # of which 3 minutes or longer
    total_s: float  # interrupted samples x interval
    longest_s: float


@dataclass
class Summary:
    """Every figure of the report; None where the data does not allow it."""

    interval_s: float
    period_h: float  # the period up to now
    covered_h: float  # answered polls
    rows: int
    failed_polls: int
    bad_clock_rows: int
    hours_no_data: float
    hours_failed_polls: float
    hours_no_rows: float
    interruptions: Interruptions
    energy_kwh: float | None = None
    energy_kwh_phase: dict[int, float] = field(default_factory=dict)
    reactive_kvarh: float | None = None
    counter_kwh: float | None = None
    counter_kvarh: float | None = None
    peak_kw: float | None = None
    peak_at: float | None = None
    mean_kw: float | None = None  # over the supplied time
    load_factor: float | None = None
    duration: dict[float, float] = field(default_factory=dict)  # share of time -> kW exceeded
    voltage: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # mean, min, max
    conformity: prodist.VoltageConformity | None = None
    fd95: float | None = None
    fd_max: float | None = None
    frequency: prodist.FrequencyBands | None = None
    pf: dict[int | str, prodist.PowerFactor] = field(default_factory=dict)
    capacity: study.Capacity = field(default_factory=study.Capacity)
    imbalance: study.Imbalance = field(default_factory=study.Imbalance)
    days: list[study.DayRow] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    event_counts: dict[str, int] = field(default_factory=dict)
    plant: PlantConfig = field(default_factory=PlantConfig)


def summarize(
    agg: Aggregator, now: float | None = None, period: Period | None = None, plant: PlantConfig | None = None
) -> Summary:
    now = time.time() if now is None else now
    plant = plant or PlantConfig()
    interval = agg.interval_s
    period_s = max(0.0, min(now, agg.end) - agg.start)
    covered_s = float(agg.covered_s().sum())
    failed_s = float(np.minimum(agg.failed * interval, BIN_S - agg.covered_s()).sum())
    no_data_s = max(0.0, period_s - covered_s)
    found = agg.events.finish()
    runs = [e for e in found if e.kind == "interruption"]
    s = Summary(
        interval_s=interval,
        period_h=period_s / 3600,
        covered_h=covered_s / 3600,
        rows=int(agg.total_rows),
        failed_polls=int(agg.failed.sum()),
        bad_clock_rows=int(agg.bad_clock),
        hours_no_data=no_data_s / 3600,
        hours_failed_polls=min(failed_s, no_data_s) / 3600,
        hours_no_rows=max(0.0, no_data_s - failed_s) / 3600,
        interruptions=Interruptions(
            count=agg.events.counts.get("interruption", 0),
            long_count=sum(e.duration_s >= limits.LONG_INTERRUPTION_S for e in runs),
            total_s=float(agg.dead_count().sum() * interval),
            longest_s=max((e.duration_s for e in runs), default=0.0),
        ),
        plant=plant,
    )
    _energy(agg, s)
    demand = study.demand_kw(agg)
    if (w := study.peak(demand)) is not None:
        s.peak_kw, s.peak_at = float(demand[w]), agg.start + w * limits.DEMAND_WINDOW_S
        hours = study.supplied_h(agg)
        if s.energy_kwh is not None and hours > 0:
            s.mean_kw = s.energy_kwh / hours
            s.load_factor = s.mean_kw / s.peak_kw if s.peak_kw else None
    hours, kw = study.duration_curve(agg)
    for share in study.DURATION_SHARES:
        if (v := study.exceeded(hours, kw, share)) is not None:
            s.duration[share] = v
    _voltage(agg, s)
    s.conformity = prodist.voltage_conformity(agg, now)
    s.fd95, s.fd_max = prodist.fd95(agg)
    s.frequency = prodist.frequency_bands(agg)
    s.pf = prodist.power_factors(agg)
    s.capacity = study.capacity(agg, plant)
    s.imbalance = study.imbalance(agg, plant, w)
    if period is not None:
        s.days = study.daily_table(agg, period, now)
    extra = study.overload_events(agg, plant) + study.no_data_events(agg, now)
    s.events = sorted(found + extra, key=lambda e: e.start)
    s.event_counts = dict(agg.events.counts)
    for e in extra:
        s.event_counts[e.kind] = s.event_counts.get(e.kind, 0) + 1
    return s


def _energy(agg: Aggregator, s: Summary) -> None:
    if (e := study.energy_wh(agg, "p_total")) is not None:
        s.energy_kwh = e / 1000
    for k in PHASES:
        if (e := study.energy_wh(agg, _col("potencia_ativa", k))) is not None:
            s.energy_kwh_phase[k] = e / 1000
    if (e := study.energy_wh(agg, "q_total")) is not None:
        s.reactive_kvarh = e / 1000
    for name, attr in (("energia_ativa", "counter_kwh"), ("energia_reativa", "counter_kvarh")):
        if agg.any(name):
            i = agg.index[name]
            have = np.flatnonzero(agg.cnt[:, i])
            first, last = agg.min[have[0], i], agg.max[have[-1], i]
            if last >= first:
                setattr(s, attr, (last - first) / 1000)


def _voltage(agg: Aggregator, s: Summary) -> None:
    names = [*(_col("tensao", k) for k in PHASES), "tensao_l1_l2", "tensao_l2_l3", "tensao_l3_l1"]
    for name in names:
        if agg.any(name):
            i = agg.index[name]
            total, count = agg.total(name)
            lo, hi = agg.min[:, i], agg.max[:, i]
            s.voltage[name] = (
                total / count,
                float(lo[np.isfinite(lo)].min()),
                float(hi[np.isfinite(hi)].max()),
            )
