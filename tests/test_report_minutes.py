"""The report of a week read from the per-minute table equals the report read from every raw row.

A simulated week (an outage, an overload with the frequency and voltage sagging and a
held low voltage every day, failed polls, NaN values, unsynchronised clock) goes
through the real buffer and the real sync worker into the real MariaDB. One day is
synced with the aggregates off (no per-minute rows at all), and late rows arrive
for minutes already summarised, unsummarised (stale minutes). Then the week's
minute bins and every figure of the report are built both ways and compared.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
from helpers import LoggerDB, meter_toml, write_config
from plantdata import SITE, START, append, bad_plant, readings, sync

from edgelog import config as config_mod
from edgelog.report import Period, build, summarize
from edgelog.report import minutes as minutes_mod

STEP = 10.0  # seconds between readings: 60,480 a week
DAY = 86400
PLANT = "[plant]\ngenerator_kva = 10\nrated_current_a = 26\nhydraulic_kw = 10\n"


def same(a: Any, b: Any, where: str = "") -> None:
    """Equal, floats up to rounding (a sum is avg x count), NaN equal to NaN."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{k}]")
    elif isinstance(a, np.ndarray):
        assert a.shape == b.shape, where
        if a.dtype.kind == "f":
            ok = np.isclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True) | (a == b)
            assert ok.all(), (where, np.flatnonzero(~ok)[:5], a[~ok][:5], b[~ok][:5])
        else:
            assert (a == b).all(), where
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (
            where,
            a,
            b,
        )
    else:
        assert a == b, (where, a, b)


def test_a_week_from_the_per_minute_table_equals_the_week_from_the_raw_rows(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    path = tmp_path / "buffer.sqlite3"
    plant = bad_plant(every_day=True)
    week = 7 * DAY
    wednesday = (START + 2 * DAY, START + 3 * DAY)
    every = readings("pac1", START, week, STEP, plant)
    append(path, [r for r in every if not wednesday[0] <= r.measured_at < wednesday[1]])
    assert sync(path, logger_db) > 50_000
    append(path, [r for r in every if wednesday[0] <= r.measured_at < wednesday[1]])
    assert sync(path, logger_db, aggregates=False) == DAY / STEP  # no per-minute rows that day
    late = readings("pac1", START + 5 * DAY + 600, 1200, STEP, plant, jitter=STEP / 2)
    append(path, late)
    assert sync(path, logger_db, aggregates=False) == len(late)  # stale minutes on Saturday

    cfg = config_mod.load(write_config(tmp_path, logger_db.toml(), PLANT, meter_toml(5020), site=SITE))
    period = Period.parse(week="2026-06-01")
    assert period.start_ts == START
    raw, _, raw_label = build(cfg, period, aggregates=False)
    loaded = minutes_mod.load(cfg, period, "pac1")
    assert loaded is not None
    fast = loaded.agg

    # the week was mostly read from the table: all but Wednesday, the stale minutes and the
    # minutes of an interruption or a frequency outside 59.5-60.5 Hz
    assert raw.total_rows == fast.total_rows == len(every) + len(late)
    assert 4 * 1440 < loaded.minutes_from_table < 6 * 1440
    assert "medicoes_1min" in loaded.label and "_1min" not in raw_label
    # the same bins
    assert fast.interval_s == raw.interval_s == STEP
    for name in ("rows", "good", "failed", "cnt"):
        same(getattr(fast, name), getattr(raw, name), name)
    for name in ("sum", "min", "max"):
        same(getattr(fast, name), getattr(raw, name), name)
    assert fast.bad_clock == raw.bad_clock > 0
    # the same figures, events included
    now = period.end_ts + 3600
    s_fast = summarize(fast, now, period, cfg.plant)
    s_raw = summarize(raw, now, period, cfg.plant)
    assert s_raw.interruptions.long_count == 7 and s_raw.events and s_raw.conformity is not None
    assert {e.kind for e in s_raw.events} >= {"interruption", "f_extreme", "f_below_57.5", "overload"}
    same(s_fast, s_raw, "summary")

    # `build` takes the table for a week, the raw rows for a day
    agg, _, label = build(cfg, period)
    assert "medicoes_1min" in label and agg.total_rows == raw.total_rows
    day = Period.parse(day="2026-06-02")
    _, _, label = build(cfg, day)
    assert "_1min" not in label


def test_without_the_per_minute_table_the_report_reads_the_raw_rows(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    path = tmp_path / "buffer.sqlite3"
    append(path, readings("pac1", START, 4 * DAY, 5.0, bad_plant(every_day=True)))
    assert sync(path, logger_db, aggregates=False) == 4 * DAY / 5
    cfg = config_mod.load(write_config(tmp_path, logger_db.toml(), meter_toml(5020), site=SITE))
    period = Period.parse(week="2026-06-01")
    assert minutes_mod.load(cfg, period, "pac1") is None
    agg, _, label = build(cfg, period)
    assert agg.total_rows == 4 * DAY / 5 and "_1min" not in label
    assert dt.datetime.fromtimestamp(period.start_ts, dt.UTC) == dt.datetime.fromtimestamp(START, dt.UTC)


def test_runs_are_closed_across_left_out_minutes_with_readings_only(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    """At one reading a minute a gap of one minute does not break a run (120 s < 2.5 x 60 s):
    a normal reading between two excursions must close it, a missing one must not, whether
    the minutes between come from the table or not."""
    from edgelog.simulate import Disturbance, Plant

    daily = [20 * 3600.0, 20 * 3600.0 + 120, 21 * 3600.0, 21 * 3600.0 + 120]
    plant = Plant(schedule=tuple(Disturbance("overload", 60.0, daily_s=d, value=1.3) for d in daily))
    month = 30 * DAY
    every = [
        r
        for r in readings("pac1", START, month, 60.0, plant)
        if (r.measured_at - START) % DAY != 21 * 3600 + 60
    ]
    path = tmp_path / "buffer.sqlite3"
    append(path, every)
    assert sync(path, logger_db) == len(every)
    cfg = config_mod.load(write_config(tmp_path, logger_db.toml(), meter_toml(5020), site=SITE))
    period = Period.parse(month="2026-06")
    raw, _, _ = build(cfg, period, aggregates=False)
    loaded = minutes_mod.load(cfg, period, "pac1")
    assert loaded is not None and loaded.minutes_from_table > 0.9 * len(every) - 30_000
    now = period.end_ts + 3600
    s_raw, s_fast = summarize(raw, now, period), summarize(loaded.agg, now, period)
    runs = [e for e in s_raw.events if e.kind == "f_recovery"]
    assert sorted({e.duration_s for e in runs}) == [60.0, 180.0]  # 20:00 and 20:02 apart; 21:00-21:02 one
    same(s_fast, s_raw, "summary")
