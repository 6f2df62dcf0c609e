"""The report's first page (five panels sharing the time axis), and the PNG, PDF and HTML files.

The second page is `report.charts`, the tables `report.tables`.

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
from .charts import legend_room, study_figure
from .data import BIN_S, PHASES, Aggregator, Period, _col, gap_spans
from .summary import Summary
from .tables import day_rows, event_rows, table_figures, table_rows
from .text import PANELS, STUDY_PANELS, WEEKDAYS, period_label, t, tick

__all__ = [
    "Meta",
    "figure",
    "png_bytes",
    "study_figure",
    "table_figures",
    "table_rows",
    "write_html",
    "write_pdf",
]

PHASE_COLOURS = {1: "#0072B2", 2: "#D55E00", 3: "#009E73"}  # colour-blind safe (Okabe-Ito)
TOTAL_COLOUR = "#222222"
NO_DATA_COLOUR = "#9e9e9e"
FAILED_COLOUR = "#d62728"
DEAD_COLOUR = "#9467bd"
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
        legend_room(load, 0.35)  # three rows of legend

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

        # (c) frequency, against PRODIST's normal and recovery bands and EN 50160's island band
        if agg.has("frequencia"):
            freq.plot(
                x, agg.mean("frequencia", group), color=TOTAL_COLOUR, lw=0.6, label=t(lang, "freq_line")
            )
            if group > 1:
                lo_f, hi_f = agg.extreme("frequencia", group, "min"), agg.extreme("frequencia", group, "max")
                freq.fill_between(x, lo_f, hi_f, color=TOTAL_COLOUR, alpha=0.12, lw=0)
        lo, hi = limits.FREQ_NORMAL
        freq.axhspan(lo, hi, color="#2ca02c", alpha=0.15, lw=0, label=t(lang, "freq_band"))
        for v in limits.FREQ_RECOVERY:
            freq.axhline(v, color="#ff7f0e", ls="--", lw=0.7)
        for v in limits.FREQ_ISLAND_NARROW:
            freq.axhline(v, color=DEAD_COLOUR, ls=":", lw=0.8)
        freq.plot([], [], color="#ff7f0e", ls="--", lw=0.7, label=t(lang, "freq_recovery"))
        freq.plot([], [], color=DEAD_COLOUR, ls=":", lw=0.8, label=t(lang, "freq_island"))
        fmin, fmax = _range(agg, "frequencia")
        freq.set_ylim(min(lo - 0.3, fmin - 0.1), max(hi + 0.3, fmax + 0.1))
        freq.set_ylabel("Hz")

        # (d) power factor: PRODIST's fp = P/sqrt(P² + Q²) per phase and total, and the total P/S
        for k in PHASES:
            p, q = _col("potencia_ativa", k), _col("potencia_reativa", k)
            if agg.has(p, q):
                pf.plot(x, _fp(agg, p, q, group), color=PHASE_COLOURS[k], label=t(lang, "phase", k=k))
        if agg.has("p_total", "q_total", "s_total"):
            pf.plot(
                x,
                _fp(agg, "p_total", "q_total", group),
                color=TOTAL_COLOUR,
                lw=1.4,
                label=t(lang, "pf_fp_total"),
            )
            true_pf = agg.ratio("p_total", "s_total", group)
            pf.plot(x, true_pf, color=TOTAL_COLOUR, lw=0.9, ls=":", label=t(lang, "pf_true_total"))
        pf.axhline(limits.PF_REFERENCE, color=FAILED_COLOUR, ls="--", lw=0.8, label=t(lang, "pf_ref"))
        lowest = np.nanmin(agg.ratio("p_total", "s_total")) if agg.any("s_total") else np.nan
        pf.set_ylim(min(0.85, float(lowest) - 0.02) if np.isfinite(lowest) else 0.85, 1.005)
        pf.set_ylabel("FP" if lang == "pt" else "PF")

        # (e) reactive power
        phase_lines(reac, "potencia_reativa", 1e-3, "q_total")
        reac.set_ylabel("kvar")
        legend_room(reac, 0.2)

        spans = gap_spans(agg, now)
        for ax, key in zip(axes, PANELS, strict=True):
            ax.set_title(t(lang, key))
            for start, end, kind in spans:
                colour, alpha = SPAN_STYLE[kind]
                ax.axvspan(
                    *mdates.date2num([dt.datetime.fromtimestamp(v, period.tz) for v in (start, end)]),
                    color=colour,
                    alpha=alpha,
                    lw=0,
                    zorder=0,
                )
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: tick(v, lang)))
            ax.yaxis.set_major_locator(MaxNLocator(6))
        handles, labels = load.get_legend_handles_labels()
        handles += [Patch(color=c, alpha=a + 0.1) for c, a in SPAN_STYLE.values()]
        labels += [t(lang, "failed"), t(lang, "no_data"), t(lang, "dead")]
        load.legend(handles, labels, ncol=3, loc="upper left", frameon=False)
        for ax in (volt, pf, reac):
            ax.legend(ncol=4, loc="upper left", frameon=False)
        freq.legend(ncol=4, loc="lower left", frameon=False)
        _time_axis(reac, period, lang)
        reac.set_xlim(mdates.date2num([period.start, period.end]))
        reac.set_xlabel(t(lang, "local_time", tz=period.tz.key))

        heading(fig, "title", period, meta)
        footer = t(lang, "footer", version=__version__, when=meta.made_at.strftime("%Y-%m-%d %H:%M %Z"))
        fig.text(0.085, 0.012, _wrap(footer, 150), fontsize=6.5, color="#666666", va="bottom")
    return fig


SPAN_STYLE = {"failed": (FAILED_COLOUR, 0.18), "none": (NO_DATA_COLOUR, 0.25), "dead": (DEAD_COLOUR, 0.25)}


def _fp(agg: Aggregator, p: str, q: str, group: int) -> np.ndarray:
    """PRODIST's fp = ΣP / sqrt(ΣP² + ΣQ²) per (grouped) bin."""
    sp = agg.mean(p, group)
    sq = agg.mean(q, group)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sp / np.hypot(sp, sq)


def heading(fig: Figure, title: str, period: Period, meta: Meta) -> None:
    """A page's title (text key `title`) and the line naming site, meter, period and source."""
    lang = meta.lang
    fig.suptitle(f"{t(lang, title)}: {meta.site} / {meta.meter}", fontsize=12, fontweight="bold", y=0.985)
    label = period_label(period.kind, period.start, period.end, lang)
    subtitle = t(lang, "subtitle", site=meta.site, meter=meta.meter, period=label, source=meta.source)
    fig.text(0.5, 0.953, subtitle, ha="center", fontsize=8, color="#444444")


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


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


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


# -- files -----------------------------------------------------------------------------


def png_bytes(*figures: Figure) -> bytes:
    """The pages one above the other, in one PNG."""
    import matplotlib.image

    pages = []
    for fig in figures:
        fig.set_dpi(PNG_DPI)
        fig.canvas.draw()
        pages.append(np.asarray(fig.canvas.buffer_rgba()))  # type: ignore[attr-defined]
    out = io.BytesIO()
    matplotlib.image.imsave(out, np.concatenate(pages, axis=0), format="png", dpi=PNG_DPI)
    return out.getvalue()


def write_pdf(out: BinaryIO, pages: Sequence[Figure], meta: Meta, title: str) -> None:
    info = {"Title": title, "Author": f"edgelog {__version__}", "Subject": meta.site, "Creator": "edgelog"}
    with matplotlib.rc_context(STYLE), PdfPages(out, metadata=info) as pdf:
        for page in pages:
            pdf.savefig(page)


def write_html(
    out: TextIO,
    png: bytes,
    rows: Sequence[tuple[str, str, str]],
    summary: Summary,
    period: Period,
    meta: Meta,
    title: str,
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
    panels = "".join(f"<li>{e(t(lang, key)[4:])}</li>" for key in (*PANELS, *STUDY_PANELS))
    days = _html_table(t(lang, "day_cols").split("|"), day_rows(summary, period.tz, lang))
    events = _html_table(t(lang, "event_cols").split("|"), event_rows(summary.events, period.tz, lang))
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
 table.grid td, table.grid th {{ font-size: 0.85rem; font-variant-numeric: tabular-nums; }}
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
<h2>{e(t(lang, "days_title"))}</h2>
{days}
<h2>{e(t(lang, "events_title"))}</h2>
{events if summary.events else f"<p>{e(t(lang, 'no_events'))}</p>"}
<h2>{e(t(lang, "notes_title"))}</h2>
<p class="notes">{e(t(lang, "notes"))}</p>
<p class="notes">{e(t(lang, "footer", version=__version__, when=made))}</p>
</body>
</html>
"""
    out.write(page)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="grid"><tr>{head}</tr>{body}</table>'
