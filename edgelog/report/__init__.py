"""`edgelog report`: the load study's picture and table for a day, a week or a month.

    edgelog report --day 2025-06-01 --out relatorios/
    -> relatorios/<site>_<meter>_2025-06-01.png   two A4 pages one above the other: the time
                                                  series (load, voltage against the PRODIST ranges,
                                                  frequency bands, power factors, reactive power),
                                                  then the load study (typical day, duration curve,
                                                  phase loading, days, frequency and voltage
                                                  against load)
       relatorios/<site>_<meter>_2025-06-01.pdf   the two pages, the summary, the days and the events
       relatorios/<site>_<meter>_2025-06-01.html  one self-contained page: figure and tables

Rows are streamed from MariaDB (or the buffer) into per-minute bins
(`report.data`), so a month of 1 Hz data is read once and never held whole. A week
or a month is read from the logger's per-minute table instead, with the raw rows of
the minutes it cannot replace (`report.minutes`); `--raw` reads every raw row.
The figures: `report.summary` (which gathers `report.prodist` and
`report.study`); the limits and their sources: `report.limits`. Days are local
days of `--tz` (default America/Sao_Paulo): a load curve is read in the hours
people live by.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from pathlib import Path

from ..config import Config
from ..errors import EdgelogError

try:  # the report's own dependencies (the `report` extra)
    import matplotlib  # noqa: F401
    import numpy  # noqa: F401
except ImportError:  # pragma: no cover - depends on the installation
    raise EdgelogError(
        "report: needs matplotlib, which is not installed: pip install 'edgelog[report]'"
    ) from None

from ..export import Query, open_source
from ..outfile import replacing
from ..progress import Progress
from .data import Aggregator, Period
from .summary import Summary, summarize
from .text import period_label, t

# Libraries' own log lines (fontTools' "GSUB pruned" while the PDF's fonts are
# subset, matplotlib's font cache) are not the analyst's business.
for _name in ("fontTools", "matplotlib"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

__all__ = ["Aggregator", "Period", "Summary", "build", "run", "summarize"]


def build(
    cfg: Config, period: Period, meter: str | None = None, source: str = "mariadb", aggregates: bool = True
) -> tuple[Aggregator, str, str]:
    """Stream the period's rows of one meter into bins: (aggregator, meter, source label).
    A week or a month comes from the per-minute table where it can (`report.minutes`)."""
    names = [m.name for m in cfg.meters]
    meter = meter or (names[0] if names else None)
    if meter is None:
        raise EdgelogError("report: the config has no meter; say --meter")
    if aggregates and source == "mariadb" and period.kind != "day":
        from .minutes import load

        loaded = load(cfg, period, meter)
        if loaded is not None:
            return loaded.agg, meter, loaded.label
    query = Query(period.start_ts, period.end_ts, cfg.site, meter, gaps=True)
    src = open_source(cfg, query, source)
    try:
        agg = Aggregator(period.start_ts, period.end_ts, src.columns)
        total = src.count()
        with Progress("report", total) as progress:
            done = 0
            for chunk in src.chunks():
                agg.add(chunk)
                done += len(chunk)
                progress.update(done)
    finally:
        src.close()
    return agg, meter, src.short_label


def run(
    cfg: Config,
    period: Period,
    out_dir: Path,
    lang: str = "pt",
    source: str = "mariadb",
    meter: str | None = None,
    now: float | None = None,
    aggregates: bool = True,
) -> list[Path]:
    """Write the PNG, PDF and HTML of the report; return their paths."""
    from .render import (
        Meta,
        figure,
        png_bytes,
        study_figure,
        table_figures,
        table_rows,
        write_html,
        write_pdf,
    )

    if lang not in ("pt", "en"):
        raise EdgelogError(f"report: no language {lang!r} (pt or en)")
    now = time.time() if now is None else now
    agg, meter, label = build(cfg, period, meter, source, aggregates)
    if agg.total_rows == 0:
        raise EdgelogError(_no_readings(cfg, period, meter, label, source))
    meta = Meta(cfg.site, meter, label, lang, dt.datetime.now(period.tz))
    summary = summarize(agg, now, period, cfg.plant)
    rows = table_rows(summary, period.tz, lang)
    when = period_label(period.kind, period.start, period.end, lang)
    title = f"{t(lang, 'title')}: {cfg.site} / {meter}, {when}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgelogError(f"report: cannot create {out_dir}: {exc.strerror}") from None
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{cfg.site}_{meter}_{period.slug}")
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf", "html")]
    figures = [figure(agg, period, meta, now), study_figure(agg, summary, period, meta)]
    png = png_bytes(*figures)
    try:  # each file whole or not at all, never through a planted name (outfile.py)
        with replacing(paths[0]) as out:
            out.write(png)
        with replacing(paths[1]) as out:
            write_pdf(out, [*figures, *table_figures(rows, summary, period, meta)], meta, title)
        with replacing(paths[2], binary=False) as out:
            write_html(out, png, rows, summary, period, meta, title)
    except OSError as exc:
        raise EdgelogError(f"report: cannot write in {out_dir}: {exc.strerror}") from None
    return paths


def _no_readings(cfg: Config, period: Period, meter: str, label: str, source: str) -> str:
    """One line: the period, the time zone and its UTC span, and the nearest day with readings."""
    from .nearest import nearest_day

    when = period_label(period.kind, period.start, period.end, "en")
    utc = [
        dt.datetime.fromtimestamp(x, dt.UTC).strftime("%Y-%m-%d %H:%M")
        for x in (period.start_ts, period.end_ts)
    ]
    near = nearest_day(cfg, period, meter, source)
    hint = f"nearest day with readings: {near.isoformat()}" if near else "no readings within 400 days of it"
    return (
        f"report: no readings of meter {meter!r} in {when} ({label}); days are local days of "
        f"{period.tz.key} (--tz), this one is {utc[0]} to {utc[1]} UTC; {hint}"
    )
