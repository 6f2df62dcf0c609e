"""The report's PRODIST and load-study figures against answers worked out by hand.

The fixture days are built here from plain numbers (not from the simulator, not
from the report's code), written through the real `Buffer`, forwarded by the
real sync worker into the real MariaDB, and read back by `edgelog report`'s own
`build` and `summarize`. Every expected figure below is a literal worked out in
the comments next to it.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from helpers import COLUMNS, UNITS, LoggerDB, edgelog, meter_toml, write_config

from edgelog import config as config_mod
from edgelog.buffer import Buffer
from edgelog.buffer.store import NewReading
from edgelog.report import Period, build, summarize
from edgelog.report.data import Aggregator, MinuteBins
from edgelog.sync import MariaDBSink, SyncWorker

TZ = ZoneInfo("America/Sao_Paulo")
DAY = "2026-06-01"  # a Monday
STEP = 30  # seconds between readings: 20 a 10-minute window, 2 a minute
PLANT = "[plant]\ngenerator_kva = 15\nhydraulic_kw = 10\n"


def hm(h: int, m: int = 0, s: int = 0) -> int:
    return h * 3600 + m * 60 + s


def reading(v: tuple[float, float, float], p_phase: float, f: float) -> dict[str, float]:
    """A reading with all three phases carrying `p_phase` W at Q = 5/12 P (so sqrt(P² + Q²) =
    13/12 P) and an apparent power 2 % above that (distortion): S = 1.02 x 13/12 x P."""
    q, s = p_phase * 5 / 12, 1.02 * 13 / 12 * p_phase
    values = {"frequencia": f, "corrente_neutro": 2.0}
    for k, u in enumerate(v, start=1):
        values[f"tensao_l{k}_n"] = u
        values[f"potencia_ativa_l{k}"] = p_phase
        values[f"potencia_reativa_l{k}"] = q
        values[f"potencia_aparente_l{k}"] = s
        values[f"corrente_l{k}"] = s / u if u else 0.0
    for name, (a, b) in (("tensao_l1_l2", (0, 1)), ("tensao_l2_l3", (1, 2)), ("tensao_l3_l1", (2, 0))):
        values[name] = math.sqrt(v[a] ** 2 + v[b] ** 2 + v[a] * v[b])  # 120° apart
    return values


def fixture_day(offset: int) -> dict[str, float] | None:
    """The day's reading `offset` seconds after local midnight (None: a failed poll).

    Load, per phase (total = 3x):           Voltage (phase-neutral, else 127 V):
      00:00-06:00  1200 W  (3.6 kW)           02:00-03:00  L2 115 V  precarious, windows 12-17
      06:00-18:00  2000 W  (6.0 kW)           05:00-05:40  L1 114 V  precarious, windows 30-33
      18:00-18:30  4000 W  (12.0 kW)          10:00-10:30  L3 108 V  critical,   windows 60-62
      18:30-22:00  3000 W  (9.0 kW)           11:40-11:50  L1 137 V  critical,   window  70
      22:00-24:00  1200 W  (3.6 kW)           14:05-14:25  0 V, 0 W, 0 Hz: an interruption
    Failed polls 16:00:00-16:02:30 (6 polls); frequency 58.0 Hz from 20:00:00 to 20:01:30
    (4 readings), else 60.0 Hz.
    """
    if hm(16) <= offset < hm(16, 3):
        return None
    if hm(14, 5) <= offset < hm(14, 25):
        return reading((0.0, 0.0, 0.0), 0.0, 0.0)
    v = [127.0, 127.0, 127.0]
    if hm(2) <= offset < hm(3):
        v[1] = 115.0
    if hm(5) <= offset < hm(5, 40):
        v[0] = 114.0
    if hm(10) <= offset < hm(10, 30):
        v[2] = 108.0
    if hm(11, 40) <= offset < hm(11, 50):
        v[0] = 137.0
    if offset < hm(6) or offset >= hm(22):
        p = 1200.0
    elif offset < hm(18):
        p = 2000.0
    elif offset < hm(18, 30):
        p = 4000.0
    else:
        p = 3000.0
    f = 58.0 if hm(20) <= offset < hm(20, 2) else 60.0
    return reading((v[0], v[1], v[2]), p, f)


def write_and_sync(tmp_path: Path, logger_db: LoggerDB, start: float, span_s: int, step: int, source) -> Path:
    """Write the readings `source(offset)` (None: a failed poll) every `step` seconds of
    [start, start + span_s) through the buffer, sync them into MariaDB with the real worker;
    return the config (with [plant])."""
    path = tmp_path / "buffer.sqlite3"
    buffer = Buffer(path, COLUMNS)
    try:
        readings = []
        for offset in range(0, span_s, step):
            values = source(offset)
            error = "no answer from unit 126" if values is None else None
            readings.append(NewReading("pac1", start + offset, values, error, True))
        buffer.append_many(readings)
    finally:
        buffer.close()
    buffer, sink = Buffer(path, create=False), MariaDBSink(logger_db.config(), "test-site")
    try:
        assert SyncWorker(buffer, sink, UNITS, 2000).drain() == span_s // step
    finally:
        sink.close()
        buffer.close()
    return write_config(tmp_path, logger_db.toml(), meter_toml(5020, interval_s=step), PLANT)


def test_a_fixture_day_gives_the_hand_computed_prodist_and_load_figures(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    start = dt.datetime.combine(dt.date.fromisoformat(DAY), dt.time(), TZ).timestamp()
    config = write_and_sync(tmp_path, logger_db, start, 86400, STEP, fixture_day)
    cfg = config_mod.load(config)
    period = Period.parse(day=DAY)
    agg, _, _ = build(cfg, period)
    s = summarize(agg, period.end_ts + 3600, period, cfg.plant)
    c = s.conformity
    assert c is not None

    # 10-minute readings: 24 x 6 = 144 windows. Discarded for the interruption 14:05-14:25:
    # windows 14:00, 14:10 and 14:20 (3). Incomplete: 16:00-16:10 holds 20 - 6 = 14 readings
    # x 30 s = 420 s < 90 % of 600 s = 540 s (1). Valid: 144 - 3 - 1 = 140.
    assert (c.windows, c.discarded_interruption, c.discarded_incomplete, c.valid) == (144, 3, 1, 140)
    # Precarious: L1 4 (05:00-05:40), L2 6 (02:00-03:00), L3 0; critical: L1 1 (11:40),
    # L2 0, L3 3 (10:00-10:30). nlp = max(4, 6, 0) = 6, nlc = max(1, 0, 3) = 3.
    assert c.counts[1] == {"adequate": 135, "precarious": 4, "critical": 1}
    assert c.counts[2] == {"adequate": 134, "precarious": 6, "critical": 0}
    assert c.counts[3] == {"adequate": 137, "precarious": 0, "critical": 3}
    assert (c.nlp, c.nlc) == (6, 3)
    # Fewer than 1008 valid readings: indicative, over the 140 there are.
    # DRP = 100 x 6 / 140 = 4.2857 %, DRC = 100 x 3 / 140 = 2.1429 %.
    assert c.indicative and c.basis == 140 and c.campaigns == 0
    assert c.drp == pytest.approx(600 / 140) and c.drc == pytest.approx(300 / 140)

    # The interruption: readings at 0 V from 14:05:00 to 14:24:30, 40 readings x 30 s = 1200 s.
    i = s.interruptions
    assert (i.count, i.long_count, i.total_s, i.longest_s) == (1, 1, 1200.0, 1200.0)
    # ... and left out of the voltage and frequency figures (else the minima would be 0).
    assert s.voltage["tensao_l1_n"][1:] == (114.0, 137.0)
    assert s.voltage["tensao_l3_n"][1] == 108.0
    assert s.frequency is not None and (s.frequency.min, s.frequency.max) == (58.0, 60.0)

    # Peak demand: 18:00-18:15 and 18:15-18:30 both 3 x 4000 W = 12.0 kW; the first wins.
    assert s.peak_kw == pytest.approx(12.0)
    assert dt.datetime.fromtimestamp(s.peak_at, TZ).strftime("%H:%M") == "18:00"
    # Energy (supplied minutes x power): 00-06 3.6 kW x 6 h = 21.6; 06-18 6.0 kW x (720 - 20
    # interrupted - 3 failed) min = 6.0 x 697 / 60 = 69.7; 18:00-18:30 12.0 x 0.5 = 6.0;
    # 18:30-22 9.0 x 3.5 = 31.5; 22-24 3.6 x 2 = 7.2. Total 136.0 kWh.
    assert s.energy_kwh == pytest.approx(136.0)
    # Mean demand over the supplied 1440 - 20 - 3 = 1417 min: 136.0 x 60 / 1417 = 5.75865 kW;
    # load factor 5.75865 / 12.0 = 0.479887.
    assert s.mean_kw == pytest.approx(136.0 * 60 / 1417)
    assert s.load_factor == pytest.approx(136.0 * 60 / 1417 / 12.0)

    # Load-duration curve: 12.0 kW for 30 min, 9.0 for 210 (to 240), 6.0 for 697 (to 937),
    # 3.6 for 480 (to 1417 min). Exceeded during 1 % (14.17 min) -> 12.0; 10 % (141.7 min)
    # -> 9.0; 50 % (708.5 min) -> 6.0; 90 % (1275.3 min) -> 3.6.
    assert s.duration == pytest.approx({0.01: 12.0, 0.10: 9.0, 0.50: 6.0, 0.90: 3.6})
    from edgelog.report.study import duration_curve

    hours, kw = duration_curve(agg)
    assert hours[-1] == pytest.approx(1417 / 60)
    for level, minutes in ((12.0, 30), (9.0, 210), (6.0, 697), (3.6, 480)):
        assert int((abs(kw - level) < 1e-9).sum()) == minutes, level

    # Frequency: 4 readings at 58.0 Hz = 120 s outside 59.9-60.1, outside 59.5-60.5 and
    # below 58.5 Hz; one event below 58.5 Hz (120 s > 10 s) and one outside the recovery band
    # (120 s > 30 s); none below 57.5 Hz.
    f = s.frequency
    assert (f.out_s["f_out_normal"], f.out_s["f_out_recovery"], f.out_s["f_below_58_5"]) == (120, 120, 120)
    assert f.out_s["f_below_57_5"] == 0 and f.out_s["f_out_extreme"] == 0
    kinds = [(e.kind, e.duration_s) for e in s.events]
    assert ("f_below_58.5", 120.0) in kinds and ("f_recovery", 120.0) in kinds
    assert ("interruption", 1200.0) in kinds and ("failed", 180.0) in kinds
    assert not any(k == "f_below_57.5" for k, _ in kinds)

    # Power factor: Q = 5/12 P, so fp = 12/13 = 0.923077 inductive; S is 2 % above
    # sqrt(P² + Q²), so the true power factor is 12/13/1.02 = 0.904977.
    total = s.pf["total"]
    assert total.fp == pytest.approx(12 / 13) and total.inductive is True
    assert total.true_pf == pytest.approx(12 / 13 / 1.02)

    # Capacity against 15 kVA: the peak S = 1.02 x 13/12 x 12.0 kW = 13.26 kVA = 88.4 %;
    # above 80 % (12 kVA) only 18:00-18:30 (0.5 h), above 90 % (13.5 kVA) never. The load is
    # above the water's 10 kW during 18:00-18:30 only: 0.5 h.
    cap = s.capacity
    assert cap.s_peak_kva == pytest.approx(13.26) and cap.s_pct == pytest.approx(88.4)
    assert cap.s_hours_above == pytest.approx({0.8: 0.5, 0.9: 0.0, 1.0: 0.0})
    assert cap.hours_above_hydraulic == pytest.approx(0.5)
    # Rated current from 15 kVA at 220/127 V: 15000 / (3 x 127) = 39.37 A; the peak current
    # 1.02 x 13/12 x 4000 / 127 = 34.80 A = 88.4 % of it.
    assert cap.rated_current_a == pytest.approx(15000 / 381)
    assert cap.i_peak[1] == pytest.approx(1.02 * 13 / 12 * 4000 / 127)
    assert cap.i_pct[1] == pytest.approx(88.4)
    # At the peak (18:00-18:15) the phases are balanced: no unbalance, I2 = 0. Over the day
    # they are not (one phase at 114-137 V carrying the same power draws another current).
    # The measured neutral is 2.0 A throughout.
    b = s.imbalance
    assert b.i2_i1_at_peak == pytest.approx(0, abs=1e-6) and b.i_unbalance_at_peak == pytest.approx(
        0, abs=1e-9
    )
    assert b.i2_i1_weighted > 0 and b.neutral_mean == pytest.approx(2.0)
    assert b.kva_at_peak == pytest.approx({k: 1.02 * 13 / 12 * 4.0 for k in (1, 2, 3)})

    # The same day as per-minute aggregate rows (avg, min, max and count per column: what a
    # one-minute table would hold) fed through `add_bins` gives the same figures.
    avg = np.where(agg.cnt > 0, agg.sum / np.maximum(agg.cnt, 1), 0.0)
    minutes = agg.first_minute + np.arange(agg.n)
    table = MinuteBins(minutes, avg * agg.cnt, agg.cnt, agg.min, agg.max, agg.rows, agg.good, agg.failed)
    again = Aggregator(period.start_ts, period.end_ts, agg.columns)
    again.interval_hint = float(STEP)  # from the table's sample counts
    again.add_bins(table)
    s2 = summarize(again, period.end_ts + 3600, period, cfg.plant)
    assert s2.conformity == c and s2.duration == s.duration and s2.capacity == s.capacity
    assert (s2.energy_kwh, s2.peak_kw, s2.interruptions.total_s) == pytest.approx((136.0, 12.0, 1200.0))

    # One local day in the table; its figures are the day's.
    (day,) = s.days
    assert day.date == dt.date(2026, 6, 1) and day.energy_kwh == pytest.approx(136.0)
    assert day.peak_kw == pytest.approx(12.0) and day.interrupted_min == pytest.approx(20.0)

    # The command renders it, and the HTML names the figures.
    out = tmp_path / "out"
    result = edgelog("report", "--day", DAY, "--out", str(out), config=config, timeout=180)
    assert result.returncode == 0, result.stderr
    page = (out / f"test-site_pac1_{DAY}.html").read_text(encoding="utf-8")
    assert "4,29 % (indicativo: 140 leituras válidas, menos de 1008 (100 × 6/140))" in page
    assert "2,14 % (indicativo: 140 leituras válidas, menos de 1008 (100 × 3/140))" in page
    assert "12,00 kW (em 01/06 18:00)" in page
    assert "interrupção (tensão &lt; 0,1 pu)" in page and "abaixo de 58,5 Hz por mais de 10 s" in page


def week_source(start_day: dt.date):
    """A week for PRODIST's own case, 1,008 valid readings: L1 precarious (116 V) 10:00-11:40 on
    Monday to Thursday (10 windows a day, 40 in all), L2 critical (140 V) on Friday 20:00-21:00
    (6 windows)."""

    def values(offset: int) -> dict[str, float]:
        day, second = divmod(offset, 86400)
        v = [127.0, 127.0, 127.0]
        if day <= 3 and hm(10) <= second < hm(11, 40):
            v[0] = 116.0
        if day == 4 and hm(20) <= second < hm(21):
            v[1] = 140.0
        return reading((v[0], v[1], v[2]), 1500.0, 60.0)

    return values


def test_a_full_week_follows_prodist_formula_against_its_limits(tmp_path: Path, logger_db: LoggerDB) -> None:
    monday = dt.date(2026, 6, 1)
    start = dt.datetime.combine(monday, dt.time(), TZ).timestamp()
    # one reading a minute: 10 per window, every window complete
    config = write_and_sync(tmp_path, logger_db, start, 7 * 86400, 60, week_source(monday))
    cfg = config_mod.load(config)
    period = Period.parse(week="2026-W23")
    agg, _, _ = build(cfg, period)
    c = summarize(agg, period.end_ts, period, cfg.plant).conformity
    assert c is not None
    # 7 x 144 = 1008 windows, all valid: one campaign, the PRODIST formula itself.
    assert (c.windows, c.valid, c.campaigns, c.basis, c.indicative) == (1008, 1008, 1, 1008, False)
    # nlp: L1 at 116 V 10:00-11:40 on 4 days = 4 x 10 = 40 windows; nlc: L2 at 140 V 20:00-21:00
    # on Friday = 6 windows. DRP = 40/1008 x 100 = 3.968 % > 3 %; DRC = 6/1008 x 100 = 0.595 % > 0.5 %.
    assert (c.nlp, c.nlc) == (40, 6)
    assert c.drp == pytest.approx(3.9682539682539684) and c.drc == pytest.approx(0.5952380952380952)
