"""The report's picture (five stacked panels), its summary table, and the PNG, PDF and HTML files.

matplotlib is used through its object API with the Agg canvas: no pyplot, no
display, no global state, so it runs on a headless Pi and in a thread alike.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, TextIO

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .. import __version__
from . import limits
from .data import BIN_S, PHASES, Aggregator, Period, Summary, _col, gap_spans
from .text import PANELS, WEEKDAYS, number, period_label, t, tick

PHASE_COLOURS = {1: "#0072B2", 2: "#D55E00", 3: "#009E73"}  # colour-blind safe (Okabe-Ito)
TOTAL_COLOUR = "#222222"
NO_DATA_COLOUR = "#9e9e9e"
FAILED_COLOUR = "#d62728"
A4_PORTRAIT = (8.27, 11.69)
PNG_DPI = 200
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 0.9,
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays text (searchable, copyable into a thesis)
}


@dataclass(frozen=True)
class Meta:
    site: str
    meter: str
    source: str
    lang: str
    made_at: dt.datetime


# -- the figure ------------------------------------------------------------------------


def figure(agg: Aggregator, period: Period, meta: Meta, now: float) -> Figure:
    """Five panels sharing the time axis: load, voltage, frequency, power factor, reactive power."""
    lang = meta.lang
    group = period.display_bin_s // BIN_S
    starts = agg.times(group)
    centres = [dt.datetime.fromtimestamp(s + period.display_bin_s / 2, period.tz) for s in starts]
    x = mdates.date2num(centres)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=A4_PORTRAIT)
        FigureCanvasAgg(fig)
        # Fixed margins, not constrained layout: as good for a fixed A4 page, and a
        # layout engine would lay out the date ticks of five axes several times over.
        fig.subplots_adjust(left=0.085, right=0.975, top=0.915, bottom=0.075, hspace=0.36)
        axes = fig.subplots(len(PANELS), 1, sharex=True)
        load, volt, freq, pf, reac = axes

        def phase_lines(ax, prefix: str, scale: float, total: str | None) -> None:
            for k in PHASES:
                name = _col(prefix, k)
                if agg.has(name):
                    ax.plot(
                        x, agg.mean(name, group) * scale, color=PHASE_COLOURS[k], label=t(lang, "phase", k=k)
                    )
            if total and agg.has(total):
                ax.plot(x, agg.mean(total, group) * scale, color=TOTAL_COLOUR, lw=1.4, label=t(lang, "total"))

        # (a) load curve
        phase_lines(load, "potencia_ativa", 1e-3, "p_total")
        if group > 1 and agg.has("p_total"):
            lo, hi = agg.extreme("p_total", group, "min") * 1e-3, agg.extreme("p_total", group, "max") * 1e-3
            load.fill_between(x, lo, hi, color=TOTAL_COLOUR, alpha=0.12, lw=0, label=t(lang, "range"))
        load.set_ylabel("kW")
        load.set_ylim(bottom=0)

        # (b) voltage with PRODIST ranges
        phase_lines(volt, "tensao", 1.0, None)
        if group > 1:
            names = [_col("tensao", k) for k in PHASES if agg.has(_col("tensao", k))]
            if names:
                with warnings.catch_warnings():  # all-NaN columns are the bins without data
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lo = np.nanmin([agg.extreme(n, group, "min") for n in names], axis=0)
                    hi = np.nanmax([agg.extreme(n, group, "max") for n in names], axis=0)
                volt.fill_between(x, lo, hi, color="#555555", alpha=0.10, lw=0, label=t(lang, "range_v"))
        _voltage_bands(volt, agg, lang)
        volt.set_ylabel("V")

        # (c) frequency
        if agg.has("frequencia"):
            freq.plot(
                x, agg.mean("frequencia", group), color=TOTAL_COLOUR, lw=0.6, label=t(lang, "panel_freq")
            )
        lo, hi = limits.FREQ_NORMAL
        freq.axhspan(lo, hi, color="#2ca02c", alpha=0.10, lw=0, label=t(lang, "freq_band"))
        fmin, fmax = _range(agg, "frequencia")
        freq.set_ylim(min(lo - 0.1, fmin - 0.05), max(hi + 0.1, fmax + 0.05))
        freq.set_ylabel("Hz")

        # (d) power factor, P/S from the sums of each bin
        for k in PHASES:
            p, s = _col("potencia_ativa", k), _col("potencia_aparente", k)
            if agg.has(p, s):
                pf.plot(x, agg.ratio(p, s, group), color=PHASE_COLOURS[k], label=t(lang, "phase", k=k))
        if agg.has("p_total", "s_total"):
            total_pf = agg.ratio("p_total", "s_total", group)
            pf.plot(x, total_pf, color=TOTAL_COLOUR, lw=1.4, label=t(lang, "total"))
        pf.axhline(limits.PF_REFERENCE, color=FAILED_COLOUR, ls="--", lw=0.8, label=t(lang, "pf_ref"))
        lowest = np.nanmin(agg.ratio("p_total", "s_total")) if agg.has("p_total", "s_total") else np.nan
        pf.set_ylim(min(0.85, float(lowest) - 0.02) if np.isfinite(lowest) else 0.85, 1.005)
        pf.set_ylabel("FP" if lang == "pt" else "PF")

        # (e) reactive power
        phase_lines(reac, "potencia_reativa", 1e-3, "q_total")
        reac.set_ylabel("kvar")

        spans = gap_spans(agg, now)
        for ax, key in zip(axes, PANELS, strict=True):
            ax.set_title(t(lang, key))
            for start, end, kind in spans:
                ax.axvspan(
                    *mdates.date2num([dt.datetime.fromtimestamp(v, period.tz) for v in (start, end)]),
                    color=FAILED_COLOUR if kind == "failed" else NO_DATA_COLOUR,
                    alpha=0.18 if kind == "failed" else 0.25,
                    lw=0,
                    zorder=0,
                )
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: tick(v, lang)))
            ax.yaxis.set_major_locator(MaxNLocator(6))
        handles, labels = load.get_legend_handles_labels()
        handles += [Patch(color=NO_DATA_COLOUR, alpha=0.35), Patch(color=FAILED_COLOUR, alpha=0.3)]
        labels += [t(lang, "no_data"), t(lang, "failed")]
        load.legend(handles, labels, ncol=3, loc="upper left", frameon=False)
        for ax in (volt, freq, pf, reac):
            ax.legend(ncol=4, loc="upper left", frameon=False)
        _time_axis(reac, period, lang)
        reac.set_xlim(mdates.date2num([period.start, period.end]))
        reac.set_xlabel(t(lang, "local_time", tz=period.tz.key))

        fig.suptitle(
            f"{t(lang, 'title')}: {meta.site} / {meta.meter}", fontsize=12, fontweight="bold", y=0.985
        )
        label = period_label(period.kind, period.start, period.end, lang)
        fig.text(
            0.5,
            0.953,
            t(lang, "subtitle", site=meta.site, meter=meta.meter, period=label, source=meta.source),
            ha="center",
            fontsize=8,
            color="#444444",
        )
        footer = t(lang, "footer", version=__version__, when=meta.made_at.strftime("%Y-%m-%d %H:%M %Z"))
        fig.text(0.085, 0.012, _wrap(footer, 150), fontsize=6.5, color="#666666", va="bottom")
    return fig


def _range(agg: Aggregator, name: str) -> tuple[float, float]:
    if not agg.has(name) or not agg.cnt[:, agg.index[name]].any():
        return (np.inf, -np.inf)
    i = agg.index[name]
    lo, hi = agg.min[:, i], agg.max[:, i]
    return float(lo[np.isfinite(lo)].min()), float(hi[np.isfinite(hi)].max())


def _voltage_bands(ax, agg: Aggregator, lang: str) -> None:
    r = limits.PHASE_NEUTRAL_127
    lows, highs = zip(*(_range(agg, _col("tensao", k)) for k in PHASES), strict=True)
    vmin, vmax = min(lows), max(highs)
    bottom = min(r.precarious[0] - 4, vmin - 2) if np.isfinite(vmin) else r.precarious[0] - 4
    top = max(r.precarious[1] + 4, vmax + 2) if np.isfinite(vmax) else r.precarious[1] + 4
    ax.axhspan(*r.adequate, color="#2ca02c", alpha=0.08, lw=0, zorder=0, label=t(lang, "adequate"))
    ax.axhspan(
        r.precarious[0],
        r.adequate[0],
        color="#ffbf00",
        alpha=0.22,
        lw=0,
        zorder=0,
        label=t(lang, "precarious"),
    )
    ax.axhspan(r.adequate[1], r.precarious[1], color="#ffbf00", alpha=0.22, lw=0, zorder=0)
    ax.axhspan(
        bottom, r.precarious[0], color=FAILED_COLOUR, alpha=0.10, lw=0, zorder=0, label=t(lang, "critical")
    )
    ax.axhspan(r.precarious[1], top, color=FAILED_COLOUR, alpha=0.10, lw=0, zorder=0)
    for v in (*r.adequate, *r.precarious):
        ax.axhline(v, color="#777777", lw=0.4, ls=":", zorder=0)
    ax.set_ylim(bottom, top)


def _time_axis(ax, period: Period, lang: str) -> None:
    tz = period.tz
    if period.kind == "day":
        ax.xaxis.set_major_locator(mdates.HourLocator(byhour=range(0, 24, 2), tz=tz))
        ax.xaxis.set_minor_locator(mdates.HourLocator(tz=tz))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))
        return
    names = WEEKDAYS[lang]

    def day_label(value: float, _pos: int) -> str:
        d = mdates.num2date(value, tz)
        return f"{names[d.weekday()]} {d:%d/%m}" if period.kind == "week" else f"{d:%d/%m}"

    ax.xaxis.set_major_locator(mdates.DayLocator(interval=1 if period.kind == "week" else 3, tz=tz))
    ax.xaxis.set_minor_locator(
        mdates.HourLocator(byhour=(0, 6, 12, 18), tz=tz)
        if period.kind == "week"
        else mdates.DayLocator(tz=tz)
    )
    ax.xaxis.set_major_formatter(FuncFormatter(day_label))


# -- the table -------------------------------------------------------------------------


def table_rows(s: Summary, tz: dt.tzinfo, lang: str) -> list[tuple[str, str, str]]:
    """(section, label, value) rows of the summary, formatted for `lang`."""
    n = lambda x, d=1: number(x, lang, d)  # noqa: E731
    rows: list[tuple[str, str, str]] = []
    sec = t(lang, "section_energy")
    rows.append((sec, t(lang, "energy_int"), f"{n(s.energy_kwh, 2)} kWh"))
    for k, e in s.energy_kwh_phase.items():
        share = f" ({n(100 * e / s.energy_kwh, 1)} %)" if s.energy_kwh else ""
        rows.append((sec, t(lang, "energy_phase", k=k), f"{n(e, 2)} kWh{share}"))
    rows.append((sec, t(lang, "reactive_int"), f"{n(s.reactive_kvarh, 2)} kvarh"))
    if s.counter_kwh is not None or s.counter_kvarh is not None:
        rows.append((sec, t(lang, "energy_counter"), f"{n(s.counter_kwh, 2)} kWh"))
        rows.append((sec, t(lang, "reactive_counter"), f"{n(s.counter_kvarh, 2)} kvarh"))
    peak = f"{n(s.peak_kw, 2)} kW"
    if s.peak_at is not None:
        when = dt.datetime.fromtimestamp(s.peak_at, tz)
        peak += f" ({t(lang, 'at')} {when:%d/%m %H:%M})"
    rows.append((sec, t(lang, "peak"), peak))
    rows.append((sec, t(lang, "mean_demand"), f"{n(s.mean_kw, 2)} kW"))
    rows.append((sec, t(lang, "load_factor"), n(s.load_factor, 3)))
    sec = t(lang, "section_voltage")
    for k in PHASES:
        if (v := s.voltage.get(_col("tensao", k))) is not None:
            rows.append((sec, t(lang, "v_phase", k=k), " / ".join(n(x) for x in v) + " V"))
    for a, b, name in ((1, 2, "tensao_l1_l2"), (2, 3, "tensao_l2_l3"), (3, 1, "tensao_l3_l1")):
        if (v := s.voltage.get(name)) is not None:
            rows.append((sec, t(lang, "v_line", a=a, b=b), " / ".join(n(x) for x in v) + " V"))
    for k in PHASES:
        if k in s.drp:
            rows.append((sec, t(lang, "drp_drc", k=k), f"{n(s.drp[k], 2)} % / {n(s.drc[k], 2)} %"))
    sec = t(lang, "section_quality")
    if s.freq is not None:
        rows.append((sec, t(lang, "freq"), " / ".join(n(x, 3) for x in s.freq) + " Hz"))
        rows.append((sec, t(lang, "freq_out"), f"{n(s.freq_out_pct, 2)} %"))
    rows.append((sec, t(lang, "pf_total"), n(s.pf_total, 3)))
    for k, v in s.pf_phase.items():
        rows.append((sec, t(lang, "pf_phase", k=k), n(v, 3)))
    rows.append((sec, t(lang, "fd95"), f"{n(s.fd95, 2)} % / {n(s.fd_max, 2)} %"))
    rows.append((sec, t(lang, "i_unbalance"), f"{n(s.current_unbalance_mean, 1)} %"))
    sec = t(lang, "section_data")
    rows.append((sec, t(lang, "hours_no_data"), f"{n(s.hours_no_data, 2)} h"))
    rows.append((sec, t(lang, "hours_failed"), f"{n(s.hours_failed_polls, 2)} h"))
    rows.append((sec, t(lang, "hours_no_rows"), f"{n(s.hours_no_rows, 2)} h"))
    if s.hours_dead_bus is not None:
        rows.append((sec, t(lang, "hours_dead"), f"{n(s.hours_dead_bus, 2)} h"))
    coverage = 100 * s.covered_h / s.period_h if s.period_h else None
    rows.append((sec, t(lang, "coverage"), f"{n(coverage, 1)} %"))
    rows.append((sec, t(lang, "rows"), f"{n(s.rows, 0)} ({n(s.failed_polls, 0)})"))
    rows.append((sec, t(lang, "bad_clock"), n(s.bad_clock_rows, 0)))
    rows.append((sec, t(lang, "interval"), f"{n(s.interval_s, 1)} s"))
    return rows


def table_figure(rows: Sequence[tuple[str, str, str]], period: Period, meta: Meta) -> Figure:
    """The summary as a page of its own (the PDF's second page)."""
    lang = meta.lang
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=A4_PORTRAIT)
        FigureCanvasAgg(fig)
        fig.suptitle(
            f"{t(lang, 'summary')}: {meta.site} / {meta.meter}\n"
            + period_label(period.kind, period.start, period.end, lang),
            fontsize=11,
            fontweight="bold",
        )
        sections = len({sec for sec, _, _ in rows})
        y, line = 0.90, min(0.0215, 0.70 / (len(rows) + 1.5 * sections))
        section = None
        for sec, label, value in rows:
            if sec != section:
                y -= line * 0.5
                fig.text(0.08, y, sec, fontsize=9, fontweight="bold")
                y -= line
                section = sec
            fig.text(0.10, y, label, fontsize=8)
            fig.text(0.92, y, value, fontsize=8, ha="right")
            y -= line
        fig.text(0.08, y - line, t(lang, "notes_title"), fontsize=9, fontweight="bold")
        fig.text(0.08, y - 2 * line, _wrap(t(lang, "notes"), 118), fontsize=7, va="top", color="#333333")
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


# -- files -----------------------------------------------------------------------------


def png_bytes(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=PNG_DPI)
    return out.getvalue()


def write_pdf(out: BinaryIO, pages: Sequence[Figure], meta: Meta, title: str) -> None:
    info = {"Title": title, "Author": f"edgelog {__version__}", "Subject": meta.site, "Creator": "edgelog"}
    with matplotlib.rc_context(STYLE), PdfPages(out, metadata=info) as pdf:
        for page in pages:
            pdf.savefig(page)


def write_html(
    out: TextIO, png: bytes, rows: Sequence[tuple[str, str, str]], period: Period, meta: Meta, title: str
) -> None:
    lang = meta.lang
    e = html.escape
    body = []
    section = None
    for sec, label, value in rows:
        if sec != section:
            body.append(f'<tr class="section"><th colspan="2">{e(sec)}</th></tr>')
            section = sec
        body.append(f"<tr><td>{e(label.strip())}</td><td class='v'>{e(value)}</td></tr>")
    panels = "".join(f"<li>{e(t(lang, key))}</li>" for key in PANELS)
    made = meta.made_at.strftime("%Y-%m-%d %H:%M %Z")
    page = f"""<!doctype html>
<html lang="{"pt-BR" if lang == "pt" else "en"}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>
 body {{ font-family: "DejaVu Sans", Arial, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
        color: #222; line-height: 1.4; }}
 h1 {{ font-size: 1.5rem; margin-bottom: 0.2rem; }}
 .sub {{ color: #555; margin-top: 0; }}
 figure {{ margin: 1.5rem 0; }} figure img {{ width: 100%; height: auto; border: 1px solid #ddd; }}
 figcaption {{ font-size: 0.9rem; color: #444; }}
 table {{ border-collapse: collapse; width: 100%; font-size: 0.95rem; }}
 td, th {{ padding: 0.25rem 0.5rem; border-bottom: 1px solid #eee; text-align: left; }}
 td.v {{ text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }}
 tr.section th {{ background: #f3f3f3; padding-top: 0.6rem; }}
 .notes {{ font-size: 0.85rem; color: #444; }}
</style>
</head>
<body>
<h1>{e(title)}</h1>
<p class="sub">{
        e(
            t(
                lang,
                "subtitle",
                site=meta.site,
                meter=meta.meter,
                period=period_label(period.kind, period.start, period.end, lang),
                source=meta.source,
            )
        )
    }</p>
<figure>
<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{e(t(lang, "figure_caption"))}">
<figcaption>{e(t(lang, "figure_caption"))}<ol type="a">{panels}</ol></figcaption>
</figure>
<h2>{e(t(lang, "summary"))}</h2>
<table>
{chr(10).join(body)}
</table>
<h2>{e(t(lang, "notes_title"))}</h2>
<p class="notes">{e(t(lang, "notes"))}</p>
<p class="notes">{e(t(lang, "footer", version=__version__, when=made))}</p>
</body>
</html>
"""
    out.write(page)
