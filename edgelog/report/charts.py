"""The report's second page: the load study's six charts (typical day, load-duration
curve, load per phase, the days, frequency and voltage against load)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from . import limits, study
from .data import PHASES, Aggregator, Period, _col
from .summary import Summary
from .text import STUDY_PANELS, number, t, tick

WEEKDAY_COLOUR = "#0072B2"
WEEKEND_COLOUR = "#D55E00"
LIMIT_COLOUR = "#d62728"
WATER_COLOUR = "#1f77b4"


def study_figure(agg: Aggregator, s: Summary, period: Period, meta) -> Figure:
    from .render import A4_PORTRAIT, PHASE_COLOURS, STYLE, TOTAL_COLOUR, heading

    lang = meta.lang
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=A4_PORTRAIT)
        FigureCanvasAgg(fig)
        # right=0.93: room for the right-hand axis of the daily panel (its ticks and "kW")
        fig.subplots_adjust(left=0.085, right=0.93, top=0.915, bottom=0.06, hspace=0.42, wspace=0.3)
        axes = fig.subplots(3, 2)
        typical, duration, phases, days, f_load, v_load = axes.flat
        _typical(typical, agg, s, period, lang)
        _duration(duration, agg, s, lang)
        _phases(phases, agg, s, lang, PHASE_COLOURS)
        _days(days, s, period, lang, TOTAL_COLOUR)
        _against_load(f_load, v_load, agg, s, lang)
        for ax, key in zip(axes.flat, STUDY_PANELS, strict=True):
            ax.set_title(t(lang, key), fontsize=8)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: tick(v, lang)))
        heading(fig, "study_title", period, meta)
    return fig


def legend_room(ax, share: float) -> None:
    """Raise the top of `ax` by `share` of its height: the legend in the upper corner then
    sits above the data (the peaks of a load curve), not on it."""
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top + share * (top - bottom))


def _plant_lines(ax, s: Summary, lang: str, horizontal: bool = True, kva: bool = True) -> None:
    line = ax.axhline if horizontal else ax.axvline
    if kva and s.plant.generator_kva:
        _mark(line, s.plant.generator_kva, lang, "generator", color=LIMIT_COLOUR, ls="--", lw=0.9)
    if s.plant.hydraulic_kw:
        _mark(line, s.plant.hydraulic_kw, lang, "water", color=WATER_COLOUR, ls=":", lw=1.1)


def _mark(line: Callable[..., Any], value: float, lang: str, key: str, **style: Any) -> None:
    """A plant figure as a line (`ax.axhline`, `ax.axvline`), labelled with its value."""
    line(value, label=t(lang, key, x=number(value, lang)), **style)


def _typical(ax, agg: Aggregator, s: Summary, period: Period, lang: str) -> None:
    hours = (np.arange(96) + 0.5) / 4
    for kind, colour in (("weekday", WEEKDAY_COLOUR), ("weekend", WEEKEND_COLOUR)):
        day = study.typical_days(agg, period).get(kind)
        if day is None:
            continue
        ax.plot(hours, day.mean, color=colour, lw=1.3, label=t(lang, kind, n=day.days))
        ax.fill_between(hours, day.p10, day.p90, color=colour, alpha=0.18, lw=0)
    _plant_lines(ax, s, lang, kva=False)
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 3))
    ax.set_xlabel(t(lang, "hour_of_day"))
    ax.set_ylabel("kW")
    ax.set_ylim(bottom=0)
    legend_room(ax, 0.3)
    ax.legend(loc="upper left", frameon=False, fontsize=6.5)


def _duration(ax, agg: Aggregator, s: Summary, lang: str) -> None:
    for name, key, colour in (("p_total", "p_kw", "#222222"), ("s_total", "s_kva", "#8c564b")):
        hours, values = study.duration_curve(agg, name)
        if len(hours):
            ax.step(
                np.concatenate([[0], hours]),
                np.concatenate([values[:1], values]),
                where="pre",
                color=colour,
                label=t(lang, key),
            )
    _plant_lines(ax, s, lang)
    ax.set_xlabel(t(lang, "hours"))
    ax.set_ylabel("kW / kVA")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    legend_room(ax, 0.4)
    ax.legend(loc="upper right", frameon=False, fontsize=6.5)


def _phases(ax, agg: Aggregator, s: Summary, lang: str, colours: dict[int, str]) -> None:
    names = [(t(lang, "phase", k=k), _col("corrente", k), colours[k]) for k in PHASES]
    names.append((t(lang, "neutral"), "corrente_neutro", "#777777"))
    width = 0.26
    for j, (_label, name, colour) in enumerate(names):
        if not agg.any(name):
            continue
        total, count = agg.total(name)
        values = (
            total / count,
            float(np.nanmax(agg.mean(name))),
            float(np.nanmax(agg.extreme(name, 1, "max"))),
        )
        for i, (v, alpha) in enumerate(zip(values, (1.0, 0.6, 0.3), strict=True)):
            ax.bar(j + (i - 1) * width, v, width, color=colour, alpha=alpha, label=None)
    for key, alpha in (("i_mean", 1.0), ("i_peak", 0.6), ("i_max", 0.3)):
        ax.bar(np.nan, np.nan, color="#555555", alpha=alpha, label=t(lang, key))
    if s.capacity.rated_current_a:
        rated = s.capacity.rated_current_a
        _mark(ax.axhline, rated, lang, "rated_current", color=LIMIT_COLOUR, ls="--", lw=0.9)
    ax.set_xticks(range(len(names)), [label for label, _, _ in names])
    ax.set_ylabel("A")
    legend_room(ax, 0.4)
    ax.legend(loc="upper right", frameon=False, fontsize=6.5)
    ax.grid(axis="x", visible=False)


def _days(ax, s: Summary, period: Period, lang: str, colour: str) -> None:
    if not s.days:
        return
    x = mdates.date2num([dt.datetime.combine(d.date, dt.time(12)) for d in s.days])
    energy = [d.energy_kwh if d.energy_kwh is not None else np.nan for d in s.days]
    ax.bar(x, energy, 0.7, color="#9ecae1", label=t(lang, "energy_day"))
    ax.set_ylabel("kWh")
    twin = ax.twinx()
    peaks = [d.peak_kw if d.peak_kw is not None else np.nan for d in s.days]
    twin.plot(x, peaks, "o-", color=colour, ms=3, lw=0.8, label=t(lang, "peak_day"))
    twin.set_ylabel("kW")
    twin.set_ylim(0, (np.nanmax(peaks) if np.isfinite(peaks).any() else 1) * 1.3)
    twin.grid(False)
    twin.spines["right"].set_visible(True)
    twin.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: tick(v, lang)))
    ax.xaxis.set_major_locator(mdates.DayLocator(interval=1 if len(s.days) <= 10 else 5))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%d/%m"))
    ax.set_xlim(x[0] - 0.6, x[-1] + 0.6)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="upper left", frameon=False, fontsize=6.5)
    ax.set_ylim(0, (np.nanmax(energy) if np.isfinite(energy).any() else 1) * 1.3)


def _against_load(f_ax, v_ax, agg: Aggregator, s: Summary, lang: str) -> None:
    if not agg.any("p_total"):
        return
    p = agg.mean("p_total") / 1000
    for ax, name, ylabel in ((f_ax, "frequencia", "Hz"), (v_ax, "v_mean", "V")):
        if not agg.any(name):
            continue
        y = agg.mean(name)
        have = np.isfinite(p) & np.isfinite(y)
        ax.scatter(p[have], y[have], s=2, color="#333333", alpha=0.3, lw=0, rasterized=True, zorder=3)
        if s.plant.hydraulic_kw:
            style = {"color": WATER_COLOUR, "ls": ":", "lw": 1.0, "alpha": 0.6, "zorder": 1}
            _mark(ax.axvline, s.plant.hydraulic_kw, lang, "water", **style)
        ax.set_xlabel(t(lang, "p_kw"))
        ax.set_ylabel(ylabel)
        ax.set_xlim(left=0)
    lo, hi = limits.FREQ_NORMAL
    f_ax.axhspan(lo, hi, color="#2ca02c", alpha=0.15, lw=0, label=t(lang, "freq_band"))
    for v in limits.FREQ_ISLAND_NARROW:
        f_ax.axhline(v, color="#9467bd", ls="--", lw=0.7)
    f_ax.plot([], [], color="#9467bd", ls="--", lw=0.7, label=t(lang, "freq_island"))
    f_ax.legend(loc="lower left", frameon=False, fontsize=6.5)
    r = limits.PHASE_NEUTRAL_127
    v_ax.axhspan(*r.adequate, color="#2ca02c", alpha=0.10, lw=0, label=t(lang, "adequate"))
    for v in r.precarious:
        v_ax.axhline(v, color="#ffbf00", ls="--", lw=0.8)
    v_ax.legend(loc="lower left", frameon=False, fontsize=6.5)
    for ax in (f_ax, v_ax):
        ax.yaxis.set_major_locator(MaxNLocator(6))
