"""The report's tables: the summary, the days and the events, as text rows and as PDF pages."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import limits
from .data import PHASES, Period, _col
from .events import Event
from .prodist import PowerFactor
from .summary import Summary
from .text import number, period_label, t

A4_PORTRAIT = (8.27, 11.69)
ROWS_PER_PAGE = 52


def table_rows(s: Summary, tz: dt.tzinfo, lang: str) -> list[tuple[str, str, str]]:
    """(section, label, value) rows of the summary, formatted for `lang`."""
    rows: list[tuple[str, str, str]] = []
    for section, builder in (
        ("section_energy", _energy),
        ("section_capacity", _capacity),
        ("section_voltage", _voltage),
        ("section_interruptions", _interruptions),
        ("section_freq", _frequency),
        ("section_pf", _power_factor),
        ("section_balance", _balance),
        ("section_data", _data),
    ):
        sec = t(lang, section)
        rows += [(sec, label, value) for label, value in builder(s, tz, lang)]
    return rows


Rows = list[tuple[str, str]]


def _n(x: float | None, lang: str, digits: int = 1) -> str:
    return number(x, lang, digits)


def _when(ts: float | None, tz: dt.tzinfo, lang: str) -> str:
    return "" if ts is None else f" ({t(lang, 'at')} {dt.datetime.fromtimestamp(ts, tz):%d/%m %H:%M})"


def _energy(s: Summary, tz: dt.tzinfo, lang: str) -> Rows:
    rows = [(t(lang, "energy_int"), f"{_n(s.energy_kwh, lang, 2)} kWh")]
    for k, e in s.energy_kwh_phase.items():
        share = f" ({_n(100 * e / s.energy_kwh, lang)} %)" if s.energy_kwh else ""
        rows.append((t(lang, "energy_phase", k=k), f"{_n(e, lang, 2)} kWh{share}"))
    rows.append((t(lang, "reactive_int"), f"{_n(s.reactive_kvarh, lang, 2)} kvarh"))
    if s.counter_kwh is not None or s.counter_kvarh is not None:
        rows.append((t(lang, "energy_counter"), f"{_n(s.counter_kwh, lang, 2)} kWh"))
        rows.append((t(lang, "reactive_counter"), f"{_n(s.counter_kvarh, lang, 2)} kvarh"))
    rows.append((t(lang, "peak"), f"{_n(s.peak_kw, lang, 2)} kW{_when(s.peak_at, tz, lang)}"))
    rows.append((t(lang, "mean_demand"), f"{_n(s.mean_kw, lang, 2)} kW"))
    rows.append((t(lang, "load_factor"), _n(s.load_factor, lang, 3)))
    shares = " / ".join(_n(s.duration.get(x), lang, 2) for x in (0.01, 0.10, 0.50, 0.90))
    rows.append((t(lang, "duration"), f"{shares} kW"))
    return rows


def _capacity(s: Summary, tz: dt.tzinfo, lang: str) -> Rows:
    c, plant = s.capacity, s.plant

    def pct(x: float | None) -> str:
        return "" if x is None else f" ({_n(x, lang, 0)} %)"

    def hours(d: dict[float, float]) -> str:
        return " / ".join(_n(d.get(level), lang, 2) for level in limits.CAPACITY_LEVELS) + " h" if d else "–"

    configured = " / ".join(
        f"{_n(x, lang)} {unit}"
        for x, unit in ((plant.generator_kva, "kVA"), (c.rated_current_a, "A"), (plant.hydraulic_kw, "kW"))
    )
    rows = [(t(lang, "plant"), configured if plant != type(plant)() else t(lang, "no_plant"))]
    rows.append(
        (t(lang, "s_peak"), f"{_n(c.s_peak_kva, lang, 2)} kVA{pct(c.s_pct)}{_when(c.s_peak_at, tz, lang)}")
    )
    rows.append((t(lang, "s_max"), f"{_n(c.s_max_kva, lang, 2)} kVA"))
    rows.append((t(lang, "s_hours"), hours(c.s_hours_above)))
    for k in PHASES:
        if k in c.i_peak:
            value = f"{_n(c.i_peak[k], lang)} / {_n(c.i_max.get(k), lang)} A{pct(c.i_pct.get(k))}"
            rows.append((t(lang, "i_peak_phase", k=k), value))
    rows.append((t(lang, "i_hours"), hours(c.i_hours_above)))
    rows.append((t(lang, "hydraulic_hours"), f"{_n(c.hours_above_hydraulic, lang, 2)} h"))
    return rows


def _voltage(s: Summary, tz: dt.tzinfo, lang: str) -> Rows:
    rows = []
    for k in PHASES:
        if (v := s.voltage.get(_col("tensao", k))) is not None:
            rows.append((t(lang, "v_phase", k=k), " / ".join(_n(x, lang) for x in v) + " V"))
    for a, b, name in ((1, 2, "tensao_l1_l2"), (2, 3, "tensao_l2_l3"), (3, 1, "tensao_l3_l1")):
        if (v := s.voltage.get(name)) is not None:
            rows.append((t(lang, "v_line", a=a, b=b), " / ".join(_n(x, lang) for x in v) + " V"))
    c = s.conformity
    if c is not None:
        rows.append(
            (
                t(lang, "windows"),
                f"{c.valid} / {c.discarded_interruption + c.discarded_incomplete} "
                f"({c.discarded_interruption} / {c.discarded_incomplete})",
            )
        )
        for k in PHASES:
            rows.append(
                (t(lang, "phase_counts", k=k), f"{c.counts[k]['precarious']} / {c.counts[k]['critical']}")
            )
        for key, value, count, limit in (
            ("drp", c.drp, c.nlp, limits.DRP_LIMIT_PCT),
            ("drc", c.drc, c.nlc, limits.DRC_LIMIT_PCT),
        ):
            if c.indicative:
                note = t(lang, "indicative", n=c.valid, x=count)
            else:
                verdict = t(lang, "conform" if value is not None and value <= limit else "violated")
                note = f"{verdict}; {t(lang, 'campaign', c=c.campaigns)}"
            rows.append((t(lang, key), f"{_n(value, lang, 2)} % ({note})"))
    rows.append((t(lang, "fd95"), f"{_n(s.fd95, lang, 2)} % / {_n(s.fd_max, lang, 2)} %"))
    return rows


def _minutes(seconds: float | None, lang: str) -> str:
    if seconds is None:
        return "–"
    if seconds >= 3600:
        return f"{_n(seconds / 3600, lang, 2)} h"
    if seconds >= 60:
        return f"{_n(seconds / 60, lang, 1)} min"
    return f"{_n(seconds, lang, 0)} s"


def _interruptions(s: Summary, tz: dt.tzinfo, lang: str) -> Rows:
    i = s.interruptions
    return [
        (t(lang, "interruptions"), f"{i.count} / {i.long_count}"),
        (t(lang, "interrupted_time"), f"{_minutes(i.total_s, lang)} / {_minutes(i.longest_s, lang)}"),
    ]


def _frequency(s: Summary, tz: dt.tzinfo, lang: str) -> Rows:
    f = s.frequency
    if f is None:
        return []
    rows = [(t(lang, "freq"), " / ".join(_n(x, lang, 3) for x in (f.mean, f.min, f.max)) + " Hz")]
    for name in ("f_out_normal", "f_out_recovery", "f_out_extreme"):
        rows.append((t(lang, name), f"{_minutes(f.out_s[name], lang)} ({_n(f.out_pct[name], lang, 2)} %)"))
    for side, threshold, _max_s in limits.FREQ_TIME_LIMITS:
        flag = f"f_{side}_{threshold:g}".replace(".", "_")
        kind = f"f_{side}_{threshold:g}"
        events = t(lang, "events_n", n=s.event_counts.get(kind, 0))
        rows.append((t(lang, flag), f"{_minutes(f.out_s[flag], lang)}; {events}"))
    for name in ("f_out_island", "f_out_island_wide"):
        rows.append((t(lang, name), f"{_n(100 - f.out_pct[name], lang, 2)} %"))
    return rows


def _pf(p: PowerFactor, lang: str) -> str:
    kind = "" if p.inductive is None else " " + t(lang, "inductive" if p.inductive else "capacitive")
    return f"{_n(p.fp, lang, 3)}{kind} / {_n(p.true_pf, lang, 3)}"


def _power_factor(s: Summary, tz: dt.tzinfo, lang: str) -> Rows:
    rows = []
    if "total" in s.pf:
        rows.append((t(lang, "pf_total"), _pf(s.pf["total"], lang)))
    for k in PHASES:
        if k in s.pf:
            rows.append((t(lang, "pf_phase", k=k), _pf(s.pf[k], lang)))
    return rows


def _balance(s: Summary, tz: dt.tzinfo, lang: str) -> Rows:
    b = s.imbalance

    def three(d: dict[int, float]) -> str:
        return " / ".join(_n(d.get(k), lang, 2) for k in PHASES)

    return [
        (t(lang, "kva_mean"), three(b.kva_mean)),
        (t(lang, "kva_peak"), three(b.kva_at_peak)),
        (
            t(lang, "neutral_row"),
            f"{_n(b.neutral_mean, lang)} / {_n(b.neutral_max, lang)} / {_n(b.neutral_at_peak, lang)} A",
        ),
        (t(lang, "neutral_est"), f"{_n(b.neutral_est_at_peak, lang)} A"),
        (
            t(lang, "i_unbalance"),
            f"{_n(b.i_unbalance_weighted, lang)} % / {_n(b.i_unbalance_at_peak, lang)} %",
        ),
        (t(lang, "i2_i1"), f"{_n(b.i2_i1_weighted, lang)} % / {_n(b.i2_i1_at_peak, lang)} %"),
        (t(lang, "i2_in"), f"{_n(b.i2_in_max, lang)} %"),
    ]


def _data(s: Summary, tz: dt.tzinfo, lang: str) -> Rows:
    coverage = 100 * s.covered_h / s.period_h if s.period_h else None
    return [
        (t(lang, "hours_no_data"), f"{_n(s.hours_no_data, lang, 2)} h"),
        (t(lang, "hours_failed"), f"{_n(s.hours_failed_polls, lang, 2)} h"),
        (t(lang, "hours_no_rows"), f"{_n(s.hours_no_rows, lang, 2)} h"),
        (t(lang, "coverage"), f"{_n(coverage, lang)} %"),
        (t(lang, "rows"), f"{_n(s.rows, lang, 0)} ({_n(s.failed_polls, lang, 0)})"),
        (t(lang, "bad_clock"), _n(s.bad_clock_rows, lang, 0)),
        (t(lang, "interval"), f"{_n(s.interval_s, lang)} s"),
    ]


def day_rows(s: Summary, tz: dt.tzinfo, lang: str) -> list[list[str]]:
    out = []
    for d in s.days:
        at = f"{dt.datetime.fromtimestamp(d.peak_at, tz):%H:%M}" if d.peak_at is not None else "–"
        out.append(
            [
                d.date.strftime("%d/%m/%Y"),
                _n(d.energy_kwh, lang, 2),
                _n(d.peak_kw, lang, 2),
                at,
                _n(d.load_factor, lang, 3),
                _n(d.s_peak_kva, lang, 2),
                _n(d.interrupted_min, lang, 1),
                _n(d.coverage_pct, lang, 1),
            ]
        )
    return out


def event_rows(events: Sequence[Event], tz: dt.tzinfo, lang: str) -> list[list[str]]:
    out = []
    for e in events:
        unit = "kVA" if e.kind == "overload" else "Hz"
        value = f"{_n(e.value, lang, 2 if unit == 'kVA' else 3)} {unit}" if e.value is not None else "–"
        limit = _minutes(e.limit_s, lang) if e.limit_s is not None else "–"
        out.append(
            [
                f"{dt.datetime.fromtimestamp(e.start, tz):%d/%m %H:%M:%S}",
                t(lang, f"ev_{e.kind}"),
                _minutes(e.duration_s, lang),
                value,
                limit,
            ]
        )
    return out


# -- PDF pages -------------------------------------------------------------------------------


def table_figures(rows: Sequence[tuple[str, str, str]], s: Summary, period: Period, meta) -> list[Figure]:
    """The summary (as many pages as it needs, the notes after it), then the days and the events."""
    from .render import STYLE

    lang = meta.lang
    pages = []
    heading = f"{t(lang, 'summary')}: {meta.site} / {meta.meter}\n" + period_label(
        period.kind, period.start, period.end, lang
    )
    with matplotlib.rc_context(STYLE):
        chunks = [rows[i : i + ROWS_PER_PAGE] for i in range(0, len(rows), ROWS_PER_PAGE)] or [[]]
        for n, chunk in enumerate(chunks):
            fig = _page(heading)
            y = _summary_lines(fig, chunk)
            if n == len(chunks) - 1:
                fig.text(0.08, y - 0.02, t(lang, "notes_title"), fontsize=9, fontweight="bold")
                notes = "\n".join(textwrap.wrap(t(lang, "notes"), 118))
                fig.text(0.08, y - 0.035, notes, fontsize=6.8, va="top", color="#333333")
            pages.append(fig)
        tz = period.tz
        days = day_rows(s, tz, lang)
        if days:
            fig = _page(f"{t(lang, 'days_title')}: {meta.site} / {meta.meter}")
            _grid(fig, t(lang, "day_cols").split("|"), days[:45], 0.90)
            pages.append(fig)
        events = event_rows(s.events[:45], tz, lang)
        fig = _page(f"{t(lang, 'events_title')}: {meta.site} / {meta.meter}")
        if events:
            y = _grid(fig, t(lang, "event_cols").split("|"), events, 0.90, (0.15, 0.39, 0.12, 0.12, 0.10))
        else:
            y = 0.88
            fig.text(0.08, y, t(lang, "no_events"), fontsize=8)
        if len(s.events) > 45:
            fig.text(0.08, y - 0.02, t(lang, "events_more", n=len(s.events) - 45), fontsize=7.5)
        pages.append(fig)
    return pages


def _page(title: str) -> Figure:
    fig = Figure(figsize=A4_PORTRAIT)
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=11, fontweight="bold")
    return fig


def _summary_lines(fig: Figure, rows: Sequence[tuple[str, str, str]]) -> float:
    y, line, section = 0.90, 0.0145, None
    for sec, label, value in rows:
        if sec != section:
            y -= line * 0.5
            fig.text(0.06, y, sec, fontsize=8.5, fontweight="bold")
            y -= line
            section = sec
        fig.text(0.08, y, label, fontsize=7.2)
        fig.text(0.95, y, value, fontsize=7.2, ha="right")
        y -= line
    return y


def _grid(
    fig: Figure, header: list[str], rows: list[list[str]], top: float, widths: Sequence[float] | None = None
) -> float:
    """A plain table of strings (column widths as shares of the page); returns the y below it."""
    widths = widths or [0.88 / len(header)] * len(header)
    xs = [0.06 + sum(widths[:i]) for i in range(len(header))]
    line = 0.017
    for x, h in zip(xs, header, strict=True):
        fig.text(x, top, "\n".join(textwrap.wrap(h, 16)), fontsize=7, fontweight="bold", va="top")
    y = top - 2.4 * line
    for row in rows:
        for x, cell in zip(xs, row, strict=True):
            fig.text(x, y, cell, fontsize=6.8)
        y -= line
    return y
