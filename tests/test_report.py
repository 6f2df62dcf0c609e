"""`edgelog report`: PNG, PDF and HTML of a day, and the numbers of its summary.

A whole day cannot come from a test-length `edgelog run`, so the day here is
synthetic: the simulator's own `plant_values()` every 30 s, written through the
real `Buffer.append` and forwarded by the real sync worker into the real
MariaDB, with an hour without rows (a power cut) and five minutes of failed
polls. A second test renders what a real, short `edgelog run` wrote.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import struct
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import LoggerDB, edgelog, meter_toml, running_logger, wait_for, write_config

from edgelog import config as config_mod
from edgelog.buffer import Buffer
from edgelog.errors import EdgelogError
from edgelog.profiles import PAC3100_ENERGIA as PROFILE
from edgelog.report import Period, build, limits, summarize
from edgelog.report.render import Meta, figure, study_figure
from edgelog.report.text import PANELS, STUDY_PANELS, TEXT
from edgelog.simulate import Plant, SimulatorThread, parse_schedule, plant_values
from edgelog.sync import MariaDBSink, SyncWorker

COLUMNS = [r.name for r in PROFILE.registers]
UNITS = {r.name: r.unit for r in PROFILE.registers}
TZ = ZoneInfo("America/Sao_Paulo")
DAY = "2026-06-01"
STEP_S = 30.0  # 2 880 readings: Buffer.append costs about 1 ms each
OFF = (3 * 3600, 4 * 3600)  # local 03:00-04:00: no rows at all
FAILED = (14 * 3600, 14 * 3600 + 300)  # local 14:00-14:05: failed polls


@pytest.fixture
def simulator(simulator_energia: SimulatorThread) -> SimulatorThread:
    """The energy counters are part of these tests: profile pac3100-energia."""
    return simulator_energia


def synthetic_day(path: Path, day: str = DAY, meter: str = "pac1") -> dict[str, Any]:
    """Write a day of readings into the buffer at `path`; return what the report must find."""
    start = dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), TZ).timestamp()
    buffer = Buffer(path, COLUMNS)
    good: list[tuple[float, dict[str, float]]] = []
    failed = 0
    try:
        with buffer.db.atomic():  # one transaction: one fsync, not one per reading
            for k in range(int(86400 / STEP_S)):
                offset = k * STEP_S
                at = start + offset
                if OFF[0] <= offset < OFF[1]:
                    continue
                if FAILED[0] <= offset < FAILED[1]:
                    buffer.append(meter, at, None, error="no answer from unit 126 on /dev/ttyUSB0")
                    failed += 1
                    continue
                values = plant_values(at)
                buffer.append(meter, at, values)
                good.append((at, values))
    finally:
        buffer.close()
    p_total = [(at, sum(v[f"potencia_ativa_l{k}"] for k in (1, 2, 3))) for at, v in good]
    windows: dict[int, list[float]] = {}
    for at, p in p_total:
        windows.setdefault(int((at - start) // 900), []).append(p)
    demand = {w: sum(ps) / len(ps) for w, ps in windows.items() if len(ps) >= 900 / STEP_S / 2}
    peak_window = max(demand, key=demand.__getitem__)
    return {
        "start": start,
        "good": good,
        "failed": failed,
        "energy_kwh": sum(p for _, p in p_total) * STEP_S / 3600 / 1000,
        "counter_kwh": (good[-1][1]["energia_ativa"] - good[0][1]["energia_ativa"]) / 1000,
        "peak_kw": demand[peak_window] / 1000,
        "peak_at": start + peak_window * 900,
        "v_min": min(v["tensao_l1_n"] for _, v in good),
        "v_max": max(v["tensao_l1_n"] for _, v in good),
    }


def sync_to_mariadb(path: Path, logger_db: LoggerDB, site: str = "test-site") -> int:
    """Forward the buffer with the real sync worker into the test's MariaDB database."""
    buffer = Buffer(path, create=False)
    sink = MariaDBSink(logger_db.config(), site)
    try:
        return SyncWorker(buffer, sink, UNITS, 2000).drain()
    finally:
        sink.close()
        buffer.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_a_day_from_mariadb_png_pdf_and_html_with_its_panels_and_numbers(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    buffer_path = tmp_path / "buffer.sqlite3"
    expected = synthetic_day(buffer_path)
    assert sync_to_mariadb(buffer_path, logger_db) == len(expected["good"]) + expected["failed"]
    config = write_config(
        tmp_path, logger_db.toml(), meter_toml(5020, interval_s=STEP_S, profile="pac3100-energia")
    )
    out = tmp_path / "relatorios"

    result = edgelog("report", "--day", DAY, "--out", str(out), config=config, timeout=120)
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.split()]
    assert [p.name for p in paths] == [f"test-site_pac1_{DAY}.{ext}" for ext in ("png", "pdf", "html")]
    assert all(p.parent == out and p.stat().st_size > 10_000 for p in paths)
    assert png_size(paths[0]) == (1654, 2 * 2338)  # two A4 portrait pages at 200 dpi, one above the other
    pdf = paths[1].read_bytes()
    # the two figures, the summary (two pages), the days, the events
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type /Page[^s]", pdf)) == 6
    page = paths[2].read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and '<html lang="pt-BR">' in page
    assert "data:image/png;base64," in page
    for key in (*PANELS, *STUDY_PANELS):  # every panel, named in the figure's caption
        assert f"<li>{TEXT['pt'][key][4:]}</li>" in page, key
    for label in ("Demanda máxima (integração de 15 min)", "Fator de carga", "Horas sem dados", "PRODIST"):
        assert label in page
    assert "Estudo de carga: test-site / pac1, 1 de junho de 2026" in page

    # The numbers, streamed from MariaDB like the command does.
    cfg = config_mod.load(config)
    period = Period.parse(day=DAY)
    agg, meter, source = build(cfg, period)
    assert meter == "pac1" and source.startswith("MariaDB ")
    s = summarize(agg, now=period.end_ts + 3600, period=period)
    assert s.interval_s == STEP_S
    assert s.rows == len(expected["good"]) + expected["failed"] and s.failed_polls == expected["failed"]
    assert s.energy_kwh == pytest.approx(expected["energy_kwh"], rel=1e-9)
    assert s.counter_kwh == pytest.approx(expected["counter_kwh"], rel=1e-12)
    # the counter also counts the hour without rows: integrated < counter, by about that hour's energy
    assert 0.01 < (s.counter_kwh - s.energy_kwh) / s.counter_kwh < 0.05
    assert s.peak_kw == pytest.approx(expected["peak_kw"], rel=1e-9)
    assert s.peak_at == expected["peak_at"]
    assert dt.datetime.fromtimestamp(s.peak_at, TZ).hour in (18, 19, 20)  # the evening peak
    assert s.load_factor == pytest.approx(s.energy_kwh / s.covered_h / s.peak_kw)
    assert 0.3 < s.load_factor < 0.6
    _avg, lo, hi = s.voltage["tensao_l1_n"]
    assert (lo, hi) == (pytest.approx(expected["v_min"]), pytest.approx(expected["v_max"]))
    assert s.hours_no_rows == pytest.approx(1.0) and s.hours_failed_polls == pytest.approx(5 / 60)
    assert s.hours_no_data == pytest.approx(1 + 5 / 60) and s.interruptions.count == 0
    assert s.conformity is not None and s.conformity.nlc == 0  # the simulated plant stays within 117..133 V
    # 144 windows: the hour off (6) and 14:00-14:10 (5 min of failed polls) are incomplete
    assert (s.conformity.valid, s.conformity.discarded_incomplete) == (137, 7)
    assert 0 < s.fd95 < 3.0 and 0.85 < s.pf["total"].true_pf < s.pf["total"].fp < 1.0
    f = s.frequency  # the load controller holds 60 Hz: the load is below the water's power all day
    assert f is not None and 59.9 < f.min <= f.mean <= f.max < 60.1 and f.out_s["f_out_normal"] == 0
    # the simulator's neutral is |Ia + Ib + Ic| of its phasors: the estimate from P, Q and V finds it
    assert s.imbalance.neutral_est_at_peak == pytest.approx(s.imbalance.neutral_at_peak, rel=1e-4)

    fig = figure(agg, period, Meta("test-site", "pac1", source, "pt", dt.datetime.now(TZ)), now=period.end_ts)
    assert [ax.get_title(loc="left") for ax in fig.axes] == [TEXT["pt"][key] for key in PANELS]
    shaded = [p for p in fig.axes[0].patches if p.get_width() > 0]  # the hour off and the failed polls
    assert len(shaded) == 2


def test_a_short_real_run_in_english_from_the_buffer(
    tmp_path: Path, simulator: SimulatorThread, logger_db: LoggerDB
) -> None:
    config = write_config(
        tmp_path, logger_db.toml(), meter_toml(simulator.port, interval_s=0.2, profile="pac3100-energia")
    )
    with running_logger(config):
        wait_for(lambda: len(simulator.sim.served) >= 10, what="10 polls")
    today = dt.datetime.now(TZ).date().isoformat()
    out = tmp_path / "out"
    args = ("report", "--day", today, "--lang", "en", "--source", "buffer", "--out", str(out))
    result = edgelog(*args, config=config, timeout=120)
    assert result.returncode == 0, result.stderr
    html_path = Path(result.stdout.split()[2])
    page = html_path.read_text(encoding="utf-8")
    assert '<html lang="en">' in page and "Load study: test-site / pac1" in page
    for key in (*PANELS, *STUDY_PANELS):
        assert f"<li>{TEXT['en'][key][4:]}</li>" in page
    assert png_size(html_path.with_suffix(".png")) == (1654, 2 * 2338)

    cfg = config_mod.load(config)
    period = Period.parse(day=today)
    agg, _, _ = build(cfg, period, source="buffer")
    s = summarize(agg)
    assert s.rows == len(simulator.sim.served)  # every poll of the run
    assert s.interval_s == pytest.approx(0.2, abs=0.01)
    assert s.hours_no_data > 0 and s.covered_h < 0.01  # a few seconds of a day
    assert s.counter_kwh is not None and s.counter_kwh > 0  # the simulated counters moved


def test_report_errors_are_one_line(tmp_path: Path, logger_db: LoggerDB) -> None:
    buffer_path = tmp_path / "buffer.sqlite3"
    Buffer(buffer_path, COLUMNS).close()
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020, profile="pac3100-energia"))
    cases = [
        (("--day", "2026-06-01", "--source", "buffer"), "no readings of meter 'pac1' in June 1, 2026"),
        (("--day", "yesterday"), "--day: 'yesterday' is not a date"),
    ]
    for args, message in cases:
        result = edgelog("report", *args, "--out", str(tmp_path / "out"), config=config)
        assert result.returncode == 1, (args, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith("edgelog: error: ") and message in line, line
    assert not (tmp_path / "out").exists()
    for kwargs, message in [
        ({"month": "2026-13"}, "is not a month"),
        ({"week": "2026-W60"}, "no week"),
        ({"day": "2026-06-01", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({}, "say --day, --week or --month"),
    ]:
        with pytest.raises(EdgelogError, match=message):
            Period.parse(**kwargs)


def test_periods_are_local_days_weeks_and_months() -> None:
    day = Period.parse(day="2026-06-01")
    assert day.start == dt.datetime(2026, 6, 1, tzinfo=TZ) and day.end - day.start == dt.timedelta(days=1)
    assert day.start_ts == dt.datetime(2026, 6, 1, 3, tzinfo=dt.UTC).timestamp()  # Brasília is UTC-3
    week = Period.parse(week="2026-06-03")  # a Wednesday: its week starts on Monday the 1st
    assert week.start.date() == dt.date(2026, 6, 1) and week.slug == "2026-W23"
    assert Period.parse(week="2026-W23").start == week.start
    month = Period.parse(month="2026-12")
    assert (month.start.date(), month.end.date()) == (dt.date(2026, 12, 1), dt.date(2027, 1, 1))
    assert (day.display_bin_s, week.display_bin_s, month.display_bin_s) == (60, 600, 1800)
    utc = Period.parse(day="2026-06-01", tz="UTC")
    assert utc.start_ts - day.start_ts == -3 * 3600


WEEK_SCHEDULE = (
    "outage@2026-06-02T22:10Z+20m,"  # Tuesday 19:10 local, during the evening peak
    "outage@2026-06-05T14:00Z+3m,"  # Friday 11:00 local
    "overload@19:00+40m=1.15,"  # every evening the village asks 1.15 x the water's power
    "voltage@2026-06-03T06:00Z+2h=114,"  # Wednesday 03:00-05:00 local: precarious
    "voltage@2026-06-06T09:00Z+30m=108"  # Saturday 06:00-06:30 local: critical
)


def test_a_simulated_week_with_outages_and_overloads_renders_every_panel(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    """The simulator's plant (load controller, 8 kW of water) for a week, one reading a minute,
    through the buffer and the sync worker into MariaDB, then `edgelog report --week`."""
    plant = Plant(hydraulic_w=8000.0, schedule=parse_schedule(WEEK_SCHEDULE), day_variation=0.1)
    period = Period.parse(week="2026-W23")
    buffer_path = tmp_path / "buffer.sqlite3"
    buffer = Buffer(buffer_path, COLUMNS)
    try:
        with buffer.db.atomic():
            for k in range(7 * 1440):
                at = period.start_ts + 60.0 * k
                buffer.append("pac1", at, plant_values(at, plant=plant))
    finally:
        buffer.close()
    assert sync_to_mariadb(buffer_path, logger_db) == 7 * 1440
    plant_toml = "[plant]\ngenerator_kva = 9\nhydraulic_kw = 8\n"
    config = write_config(
        tmp_path, logger_db.toml(), meter_toml(5020, interval_s=60, profile="pac3100-energia"), plant_toml
    )
    out = tmp_path / "relatorios"
    result = edgelog("report", "--week", "2026-06-03", "--out", str(out), config=config, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "GSUB" not in result.stderr and "fontTools" not in result.stderr  # no library log lines
    png = out / "test-site_pac1_2026-W23.png"
    assert png_size(png) == (1654, 2 * 2338)

    cfg = config_mod.load(config)
    agg, _, source = build(cfg, period)
    s = summarize(agg, period.end_ts, period, cfg.plant)
    # Two outages: 20 min (20 readings) and 3 min, both long; their windows discarded.
    assert (s.interruptions.count, s.interruptions.long_count, s.interruptions.total_s) == (2, 2, 23 * 60.0)
    assert s.conformity is not None and s.conformity.discarded_interruption == 3
    assert s.conformity.indicative and s.conformity.valid == 1005
    # Wednesday 03:00-05:00 at 114 V: 12 precarious windows per phase; Saturday 06:00-06:30 at
    # 108 V: 3 critical ones; and the evenings' overloads sag the voltage too (more of both).
    assert s.conformity.nlp >= 12 + 7 and s.conformity.nlc >= 3
    # Every evening the load passes the water's power: the controller runs out, f and V sag.
    f = s.frequency
    assert f is not None and f.min < limits.FREQ_EXTREME[0] and f.out_s["f_below_58_5"] > 0
    kinds = {e.kind for e in s.events}
    assert {"interruption", "overload", "f_below_58.5", "f_below_57.5", "f_extreme", "f_recovery"} <= kinds
    assert s.capacity.hours_above_hydraulic is not None and s.capacity.hours_above_hydraulic > 0
    assert s.capacity.s_hours_above[1.0] > 0 and len(s.days) == 7

    meta = Meta("test-site", "pac1", source, "pt", dt.datetime.now(TZ))
    fig = study_figure(agg, s, period, meta)
    axes = {ax.get_title(loc="left"): ax for ax in fig.axes if ax.get_title(loc="left")}
    assert list(axes) == [TEXT["pt"][key] for key in STUDY_PANELS]
    typical, duration, phases, days, f_load, v_load = axes.values()
    assert len(typical.lines) >= 2 and len(typical.collections) == 2  # weekdays and weekend, P10-P90
    bars = [p for p in phases.patches if math.isfinite(p.get_height())]  # 3 per phase and neutral
    assert len(duration.lines) >= 2 and len(bars) == 12 and len(days.patches) == 7
    assert len(f_load.collections[0].get_offsets()) > 9000 and len(v_load.collections[0].get_offsets()) > 9000
    spans = [p for p in figure(agg, period, meta, period.end_ts).axes[0].patches if p.get_width() > 0]
    assert len(spans) == 2  # the two outages, shaded


def test_a_day_without_readings_names_its_time_zone_and_the_nearest_day_with_some(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    buffer_path = tmp_path / "buffer.sqlite3"
    buffer = Buffer(buffer_path, COLUMNS)
    try:  # 2026-05-20 23:59 local (12 days before) and 2026-06-03 00:00:30 local (2 days after)
        for local in ("2026-05-20T23:59:00", "2026-06-03T00:00:30"):
            at = dt.datetime.fromisoformat(local).replace(tzinfo=TZ).timestamp()
            buffer.append("pac1", at, plant_values(at))
    finally:
        buffer.close()
    assert sync_to_mariadb(buffer_path, logger_db) == 2
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020, profile="pac3100-energia"))
    for source in ("mariadb", "buffer"):
        args = ("report", "--day", "2026-06-01", "--source", source, "--out", str(tmp_path / "out"))
        result = edgelog(*args, config=config)
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.splitlines()
        assert "no readings of meter 'pac1' in June 1, 2026" in line
        assert (
            "local days of America/Sao_Paulo (--tz), this one is 2026-06-01 03:00 to 2026-06-02 03:00 UTC"
            in line
        )
        assert line.endswith("nearest day with readings: 2026-06-03"), line
    # A day just after midnight UTC lands on the previous local day: --tz UTC says so.
    result = edgelog(
        "report", "--day", "2026-05-21", "--tz", "UTC", "--out", str(tmp_path / "o"), config=config
    )
    assert result.returncode == 0, result.stderr  # 2026-05-20 23:59 -03:00 is 2026-05-21 02:59 UTC
    result = edgelog("report", "--day", "2026-05-21", "--out", str(tmp_path / "o"), config=config)
    assert result.returncode == 1 and "nearest day with readings: 2026-05-20" in result.stderr


def test_plant_config_errors_are_one_line(tmp_path: Path, logger_db: LoggerDB) -> None:
    for plant, message in [
        ("generator_kva = 0", "[plant] generator_kva: must be 0.1–10000, got 0.0"),
        ("hydraulic_kw = nan", "[plant] hydraulic_kw: must be 0.1–10000, got nan"),
        ('rated_current_a = "40"', '[plant] rated_current_a: must be a number, got "40"'),
        ("generator_kw = 15", "[plant] generator_kw: unknown key"),
    ]:
        config = write_config(tmp_path, logger_db.toml(), meter_toml(5020), f"[plant]\n{plant}\n")
        result = edgelog("report", "--day", DAY, "--out", str(tmp_path / "out"), config=config)
        assert result.returncode != 0
        (line,) = result.stderr.splitlines()
        assert message in line, line
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020), "[plant]\ngenerator_kva = 15\n")
    plant = config_mod.load(config).plant
    assert plant.hydraulic_kw is None and plant.current_a == pytest.approx(15000 / (3 * 127))
