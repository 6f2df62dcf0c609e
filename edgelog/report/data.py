"""The report's numbers: a period, the rows streamed into per-minute bins, and the summary.

Rows arrive in chunks (from MariaDB's server-side cursor or the buffer, see
`edgelog.export`), are turned into numpy arrays and added into one-minute bins
(sum, count, min, max of every value, plus counts of rows and failed polls), so
a month of 1 Hz readings needs the bins (tens of MB), never the rows.

Definitions (also in the report's notes):
* sampling interval: the median spacing of successive readings;
* energy (integrated): per minute, mean active power x covered time, where the
  covered time is readings x interval (at most the minute): periods without
  data add nothing;
* energy (meter counter): last minus first value of the counter in the period;
  it also counts the periods without data while the meter kept counting;
* demand: mean active power over fixed 15-minute windows aligned to the clock
  (:00, :15, :30, :45); windows with less than half their readings are left
  out; peak demand is the largest;
* load factor: mean demand over the covered time / peak demand;
* hours without data: the period (up to now) minus the covered time; of which
  failed polls (the logger ran, the meter did not answer) and no rows at all
  (the logger was off: typically a power cut);
* power factor: P/S from the sums of a bin (energy-weighted), per phase and total.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from ..errors import EdgelogError
from . import limits

BIN_S = 60
PHASES = (1, 2, 3)


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


# -- streaming aggregation ---------------------------------------------------------------


def _col(prefix: str, k: int) -> str:
    return f"{prefix}_l{k}" if prefix != "tensao" else f"tensao_l{k}_n"


DERIVED = ("p_total", "q_total", "s_total", "fd", "i_unbalance", "f_out", "dead")


class Aggregator:
    """Adds chunks of rows into per-minute bins of [start, end)."""

    def __init__(self, start: float, end: float, columns: Sequence[str]):
        self.start, self.end = start, end
        self.columns = list(columns)
        self.series = [*self.columns, *DERIVED]
        self.index = {name: i for i, name in enumerate(self.series)}
        n, k = max(1, math.ceil((end - start) / BIN_S)), len(self.series)
        self.n = n
        self.sum = np.zeros((n, k))
        self.cnt = np.zeros((n, k), dtype=np.int64)
        self.min = np.full((n, k), np.inf)
        self.max = np.full((n, k), -np.inf)
        self.rows = np.zeros(n, dtype=np.int64)
        self.good = np.zeros(n, dtype=np.int64)
        self.failed = np.zeros(n, dtype=np.int64)
        self.bad_clock = 0
        self.total_rows = 0
        self.counter_first: dict[str, tuple[float, float]] = {}
        self.counter_last: dict[str, tuple[float, float]] = {}
        self._last_t: float | None = None
        self._diffs: list[np.ndarray] = []
        self._diff_count = 0

    def has(self, *names: str) -> bool:
        return all(n in self.index for n in names)

    def add(self, chunk: Sequence[Sequence[Any]]) -> None:
        """Rows: (measured_at, site, meter, clock_ok, error, *values in `columns` order)."""
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
        self.total_rows += len(t)
        self.bad_clock += int((~ok).sum())
        b = ((t - self.start) // BIN_S).astype(np.int64)
        np.add.at(self.rows, b, 1)
        np.add.at(self.failed, b, failed.astype(np.int64))
        self._spacing(t)  # failed polls are on the sampling grid too
        good = ~failed
        t, b, values = t[good], b[good], values[good]
        np.add.at(self.good, b, 1)
        data = np.concatenate([values, self._derived(values)], axis=1)
        valid = np.isfinite(data)
        np.add.at(self.sum, b, np.where(valid, data, 0.0))
        np.add.at(self.cnt, b, valid.astype(np.int64))
        np.minimum.at(self.min, b, np.where(valid, data, np.inf))
        np.maximum.at(self.max, b, np.where(valid, data, -np.inf))
        for name in ("energia_ativa", "energia_reativa"):
            if name in self.index:
                col = values[:, self.index[name]]
                idx = np.flatnonzero(np.isfinite(col))
                if idx.size:
                    first, last = idx[0], idx[-1]
                    self.counter_first.setdefault(name, (float(t[first]), float(col[first])))
                    self.counter_last[name] = (float(t[last]), float(col[last]))

    def _spacing(self, t: np.ndarray) -> None:
        if self._diff_count >= 20000 or not len(t):
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
        diffs = np.concatenate(self._diffs) if self._diffs else np.array([])
        return float(np.median(diffs)) if diffs.size else 1.0

    def _derived(self, v: np.ndarray) -> np.ndarray:
        out = np.full((len(v), len(DERIVED)), np.nan)

        def col(name: str) -> np.ndarray | None:
            return v[:, self.index[name]] if name in self.index else None

        for j, prefix in enumerate(("potencia_ativa", "potencia_reativa", "potencia_aparente")):
            parts = [col(_col(prefix, k)) for k in PHASES]
            if all(p is not None for p in parts):
                out[:, j] = parts[0] + parts[1] + parts[2]  # type: ignore[operator]
        vab, vbc, vca = col("tensao_l1_l2"), col("tensao_l2_l3"), col("tensao_l3_l1")
        if vab is not None and vbc is not None and vca is not None:
            sq = vab**2 + vbc**2 + vca**2
            with np.errstate(invalid="ignore", divide="ignore"):
                beta = (vab**4 + vbc**4 + vca**4) / sq**2
                root = np.sqrt(np.clip(3 - 6 * beta, 0, None))
                out[:, 3] = 100 * np.sqrt((1 - root) / (1 + root))
        currents = [col(_col("corrente", k)) for k in PHASES]
        if all(c is not None for c in currents):
            stack = np.stack(currents, axis=1)  # type: ignore[arg-type]
            mean = stack.mean(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, 4] = np.where(mean > 0, 100 * np.abs(stack - mean[:, None]).max(axis=1) / mean, np.nan)
        f = col("frequencia")
        if f is not None:
            lo, hi = limits.FREQ_NORMAL
            out[:, 5] = np.where(np.isfinite(f), ((f < lo) | (f > hi)).astype(float), np.nan)
        volts = [col(_col("tensao", k)) for k in PHASES]
        if all(x is not None for x in volts):
            stack = np.stack(volts, axis=1)  # type: ignore[arg-type]
            dead = (stack < limits.DEAD_BUS_PU * limits.PHASE_NEUTRAL_127.nominal).all(axis=1)
            out[:, 6] = np.where(np.isfinite(stack).all(axis=1), dead.astype(float), np.nan)
        return out

    # -- views -----------------------------------------------------------------------

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
        n = len(data) // group * group
        pad = len(data) - n
        fill = np.inf if which == "min" else -np.inf
        arr = np.concatenate([data, np.full((group - pad) % group, fill)]).reshape(-1, group)
        out = arr.min(axis=1) if which == "min" else arr.max(axis=1)
        return np.where(np.isfinite(out), out, np.nan)

    def times(self, group: int = 1) -> np.ndarray:
        """Start of each (grouped) bin, unix seconds."""
        return self.start + np.arange(math.ceil(self.n / group)) * BIN_S * group


def _group_sum(a: np.ndarray, group: int) -> np.ndarray:
    if group == 1:
        return a.astype(float)
    pad = (-len(a)) % group
    return np.concatenate([a.astype(float), np.zeros(pad)]).reshape(-1, group).sum(axis=1)


# -- the summary -----------------------------------------------------------------------


@dataclass
class Summary:
    """The figures of the report's table; None where the data does not allow them."""

    interval_s: float
    period_h: float  # the period up to now
    covered_h: float
    rows: int
    failed_polls: int
    bad_clock_rows: int
    hours_no_data: float
    hours_failed_polls: float
    hours_no_rows: float
    hours_dead_bus: float | None
    energy_kwh: float | None
    energy_kwh_phase: dict[int, float] = field(default_factory=dict)
    reactive_kvarh: float | None = None
    counter_kwh: float | None = None
    counter_kvarh: float | None = None
    counter_span: tuple[float, float] | None = None
    peak_kw: float | None = None
    peak_at: float | None = None
    mean_kw: float | None = None
    load_factor: float | None = None
    voltage: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # name -> avg, min, max
    drp: dict[int, float] = field(default_factory=dict)  # % of 10-min windows precarious, per phase
    drc: dict[int, float] = field(default_factory=dict)
    prodist_windows: int = 0
    fd95: float | None = None
    fd_max: float | None = None
    current_unbalance_mean: float | None = None
    freq: tuple[float, float, float] | None = None  # avg, min, max
    freq_out_pct: float | None = None
    pf_total: float | None = None
    pf_phase: dict[int, float] = field(default_factory=dict)


def summarize(agg: Aggregator, now: float | None = None) -> Summary:
    now = time.time() if now is None else now
    interval = agg.interval_s
    period_s = max(0.0, min(now, agg.end) - agg.start)
    covered = np.minimum(agg.good * interval, BIN_S).astype(float)
    covered_s = float(covered.sum())
    failed_s = float(np.minimum(agg.failed * interval, BIN_S - covered).sum())
    no_data_s = max(0.0, period_s - covered_s)
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
        hours_dead_bus=None,
        energy_kwh=None,
    )

    def integrate(name: str) -> float | None:
        if not agg.has(name) or not agg.cnt[:, agg.index[name]].any():
            return None
        i = agg.index[name]
        c = agg.cnt[:, i]
        mean = np.where(c > 0, agg.sum[:, i] / np.maximum(c, 1), 0.0)
        cov = np.minimum(c * interval, BIN_S)
        return float((mean * cov).sum() / 3600)  # Wh

    if (e := integrate("p_total")) is not None:
        s.energy_kwh = e / 1000
    for k in PHASES:
        if (e := integrate(_col("potencia_ativa", k))) is not None:
            s.energy_kwh_phase[k] = e / 1000
    if (e := integrate("q_total")) is not None:
        s.reactive_kvarh = e / 1000
    for name, attr, scale in (
        ("energia_ativa", "counter_kwh", 1e-3),
        ("energia_reativa", "counter_kvarh", 1e-3),
    ):
        if name in agg.counter_first and name in agg.counter_last:
            (t0, v0), (t1, v1) = agg.counter_first[name], agg.counter_last[name]
            if t1 > t0 and v1 >= v0:
                setattr(s, attr, (v1 - v0) * scale)
                s.counter_span = (t0, t1)
    if agg.has("dead"):
        i = agg.index["dead"]
        s.hours_dead_bus = float((agg.sum[:, i] * interval).sum() / 3600)

    # demand: fixed 15-minute windows
    if agg.has("p_total") and agg.cnt[:, agg.index["p_total"]].any():
        group = limits.DEMAND_WINDOW_S // BIN_S
        i = agg.index["p_total"]
        sums, counts = _group_sum(agg.sum[:, i], group), _group_sum(agg.cnt[:, i], group)
        expected = limits.DEMAND_WINDOW_S / interval
        usable = counts >= 0.5 * expected
        if usable.any():
            demand = np.where(usable, sums / np.maximum(counts, 1), -np.inf)
            w = int(np.argmax(demand))
            s.peak_kw = float(demand[w]) / 1000
            s.peak_at = agg.start + w * limits.DEMAND_WINDOW_S
        if s.energy_kwh is not None and s.covered_h > 0:
            s.mean_kw = s.energy_kwh / s.covered_h
            if s.peak_kw:
                s.load_factor = s.mean_kw / s.peak_kw

    # voltage
    for name in [*(_col("tensao", k) for k in PHASES), "tensao_l1_l2", "tensao_l2_l3", "tensao_l3_l1"]:
        if agg.has(name) and agg.cnt[:, agg.index[name]].any():
            i = agg.index[name]
            avg = float(agg.sum[:, i].sum() / agg.cnt[:, i].sum())
            lo = float(agg.min[:, i][np.isfinite(agg.min[:, i])].min())
            hi = float(agg.max[:, i][np.isfinite(agg.max[:, i])].max())
            s.voltage[name] = (avg, lo, hi)
    group10 = limits.PRODIST_WINDOW_S // BIN_S
    for k in PHASES:
        name = _col("tensao", k)
        if agg.has(name):
            windows = agg.mean(name, group10)
            windows = windows[np.isfinite(windows)]
            if windows.size:
                classes = [limits.PHASE_NEUTRAL_127.classify(float(v)) for v in windows]
                s.prodist_windows = max(s.prodist_windows, len(classes))
                s.drp[k] = 100 * classes.count("precarious") / len(classes)
                s.drc[k] = 100 * classes.count("critical") / len(classes)
    if agg.has("fd"):
        fd = agg.mean("fd", group10)
        fd = fd[np.isfinite(fd)]
        if fd.size:
            s.fd95 = float(np.percentile(fd, 95))
            s.fd_max = float(fd.max())
    if agg.has("i_unbalance") and agg.cnt[:, agg.index["i_unbalance"]].any():
        i = agg.index["i_unbalance"]
        s.current_unbalance_mean = float(agg.sum[:, i].sum() / agg.cnt[:, i].sum())
    if agg.has("frequencia") and agg.cnt[:, agg.index["frequencia"]].any():
        i = agg.index["frequencia"]
        s.freq = (
            float(agg.sum[:, i].sum() / agg.cnt[:, i].sum()),
            float(agg.min[:, i][np.isfinite(agg.min[:, i])].min()),
            float(agg.max[:, i][np.isfinite(agg.max[:, i])].max()),
        )
        j = agg.index["f_out"]
        s.freq_out_pct = float(100 * agg.sum[:, j].sum() / max(agg.cnt[:, j].sum(), 1))
    if agg.has("p_total", "s_total"):
        p, sa = agg.sum[:, agg.index["p_total"]].sum(), agg.sum[:, agg.index["s_total"]].sum()
        if sa > 0:
            s.pf_total = float(p / sa)
    for k in PHASES:
        pn, sn = _col("potencia_ativa", k), _col("potencia_aparente", k)
        if agg.has(pn, sn):
            p, sa = agg.sum[:, agg.index[pn]].sum(), agg.sum[:, agg.index[sn]].sum()
            if sa > 0:
                s.pf_phase[k] = float(p / sa)
    return s


def gap_spans(agg: Aggregator, now: float | None = None) -> list[tuple[float, float, str]]:
    """Runs of minutes without a reading, up to now: (start, end, "failed" | "none")."""
    now = time.time() if now is None else now
    state = np.where(agg.good > 0, 0, np.where(agg.failed > 0, 1, 2))
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
        kind = "failed" if state[i] == 1 else "none"
        spans.append((agg.start + i * BIN_S, min(agg.start + j * BIN_S, now, agg.end), kind))
        i = j
    return spans


def load(chunks: Iterable[Sequence[Sequence[Any]]], period: Period, columns: Sequence[str]) -> Aggregator:
    agg = Aggregator(period.start_ts, period.end_ts, columns)
    for chunk in chunks:
        agg.add(chunk)
    return agg
