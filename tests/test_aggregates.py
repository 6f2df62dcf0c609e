"""The aggregate tables against a recomputation, in Python, from the raw rows MariaDB holds.

The rows go through the real buffer and the real sync worker into the real
MariaDB, as the least-privilege user (no DELETE). Then every row of
`medicoes_1min` and `medicoes_15min` is compared with what the raw rows give,
computed here with numpy and the report's own formulas (`report.data`,
`report.limits`), after a backlog drain, after late rows (earlier times, rows for
minutes already summarised), and after a drain interrupted before its aggregates
were written (the next process writes them).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import LoggerDB, meter_toml, write_config
from plantdata import COLUMNS, SITE, START, TYPES, UNITS, append, bad_plant, readings, sync

from edgelog import config as config_mod
from edgelog import doctor, status
from edgelog.buffer import Buffer
from edgelog.report import limits
from edgelog.report.data import FREQ_FLAGS, sequence_currents
from edgelog.sync import MariaDBSink, SyncWorker
from edgelog.sync import series as ser
from edgelog.sync.aggregates import META_KEY, SAVE_MARGIN, Aggregates, Layout, Pending, runs
from edgelog.sync.schema import live_columns, select_expr

EPOCH = dt.datetime(1970, 1, 1)


# -- the recomputation ---------------------------------------------------------------------


def raw_rows(logger_db: LoggerDB) -> list[tuple[Any, ...]]:
    """(meter, measured_at, clock_ok, error, *values) of every row of the site, floats exact."""
    db = logger_db.database
    with logger_db.root.cursor() as cur:
        live = live_columns(cur, db, "medicoes")
    values = ", ".join(select_expr(f"`{c}`", live[c][0]) for c in COLUMNS)
    return logger_db.query(
        f"SELECT meter, measured_at, clock_ok, error, {values} FROM `{db}`.`medicoes` WHERE site = %s",
        (SITE,),
    )


def per_reading(rows: list[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """Every series of the aggregate tables, per reading (NaN: no value)."""
    data = np.array([[np.nan if v is None else v for v in r[4:]] for r in rows], dtype=float)
    failed = np.array([r[3] is not None for r in rows])
    data[failed] = np.nan
    col = {c: data[:, i] for i, c in enumerate(COLUMNS)}

    def three(*names: str) -> np.ndarray:
        return np.stack([col[n] for n in names], axis=1)

    v, vll = three(*ser.V), three(*ser.VLL)
    p, q, s, i = three(*ser.P), three(*ser.Q), three(*ser.S), three(*ser.I)
    out = dict(col)
    out["potencia_ativa_total"] = p.sum(axis=1)
    out["potencia_reativa_total"] = q.sum(axis=1)
    out["potencia_aparente_total"] = s.sum(axis=1)
    out["tensao_fn_media"] = v.mean(axis=1)
    mean = i.mean(axis=1)
    out["corrente_media"] = mean
    out["corrente_desvio_max"] = np.abs(i - mean[:, None]).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["desequilibrio_tensao"] = np.array(
            [limits.unbalance_fd_pct(*x) if np.isfinite(x).all() else np.nan for x in vll]
        )
        i1, i2, i_n = sequence_currents(v, vll, p, q)
    out["corrente_seq_positiva"], out["corrente_seq_negativa"], out["corrente_neutro_estimada"] = i1, i2, i_n
    f = col["frequencia"]
    for band, (_name, lo, hi) in zip(ser.BANDS, FREQ_FLAGS, strict=True):
        out[band.name] = np.where(np.isfinite(f), ((f < lo) | (f > hi)).astype(float), np.nan)
    out["failed"] = failed.astype(float)
    out["clock_unsynced"] = np.array([not r[2] for r in rows], dtype=float)
    return out


def expected(rows: list[tuple[Any, ...]], minutes: int) -> dict[tuple[str, dt.datetime], dict[str, Any]]:
    """(meter, period start) -> every column of the aggregate table, from the raw rows."""
    series = per_reading(rows)
    groups: dict[tuple[str, dt.datetime], list[int]] = defaultdict(list)
    for k, r in enumerate(rows):
        minute = int((r[1] - EPOCH).total_seconds() // 60) // minutes * minutes
        groups[(r[0], EPOCH + dt.timedelta(minutes=minute))].append(k)
    out = {}
    for key, index in groups.items():
        row: dict[str, Any] = {
            "samples": len(index),
            "failed": int(series["failed"][index].sum()),
            "clock_unsynced": int(series["clock_unsynced"][index].sum()),
        }
        for name in [*COLUMNS, *(s.name for s in ser.SERIES)]:
            x = series[name][index]
            x = x[np.isfinite(x)]
            row[f"{name}_cnt"] = len(x)
            row[f"{name}_avg"] = float(x.mean()) if len(x) else None
            row[f"{name}_min"] = float(x.min()) if len(x) else None
            row[f"{name}_max"] = float(x.max()) if len(x) else None
        for band in ser.BANDS:
            x = series[band.name][index]
            row[band.name] = int(np.nansum(x))
        out[key] = row
    return out


def table(logger_db: LoggerDB, name: str) -> dict[tuple[str, dt.datetime], dict[str, Any]]:
    db = logger_db.database
    with logger_db.root.cursor() as cur:
        live = live_columns(cur, db, name)
    exprs = ", ".join(f"{select_expr(f'`{c}`', t)} AS `{c}`" for c, (t, _) in live.items())
    rows = logger_db.query(f"SELECT {exprs} FROM `{db}`.`{name}`")
    names = list(live)
    out = {}
    for r in rows:
        row = dict(zip(names, r, strict=True))
        assert row.pop("site") == SITE
        out[(row.pop("meter"), row.pop("period_start"))] = row
    return out


def close(a: float | None, b: float | None, name: str) -> bool:
    if a is None or b is None:
        return a is b
    derived = any(name.startswith(s.name) for s in ser.SERIES)
    # register min/max: the float32 values themselves; averages and derived series: rounding
    if name.endswith(("_min", "_max")) and not derived:
        return a == b
    return math.isclose(a, b, rel_tol=1e-9 if derived else 1e-12, abs_tol=1e-9 if derived else 0.0)


def assert_tables_match_raw(logger_db: LoggerDB) -> int:
    """Every aggregate row equals the recomputation; no row missing, none extra. Returns rows."""
    rows = raw_rows(logger_db)
    checked = 0
    for suffix, minutes in (("1min", 1), ("15min", 15)):
        want, have = expected(rows, minutes), table(logger_db, f"medicoes_{suffix}")
        assert set(have) == set(want), f"medicoes_{suffix}: keys differ"
        for key, row in want.items():
            got = have[key]
            assert set(got) == set(row), f"medicoes_{suffix}: columns differ"
            for name, value in row.items():
                assert close(got[name], value, name), (suffix, key, name, got[name], value)
            checked += 1
    return checked


# -- the tests -------------------------------------------------------------------------------


def test_aggregates_equal_a_recomputation_after_a_backlog_and_late_rows(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    path = tmp_path / "buffer.sqlite3"
    plant = bad_plant()
    # a backlog: 3 hours of pac1 at 1 Hz (outage, overload, low voltage), pac2 every 10 s
    backlog = readings("pac1", START, 3 * 3600, 1.0, plant) + readings("pac2", START, 3 * 3600, 10.0, plant)
    append(path, backlog)
    assert sync(path, logger_db) == 10800 + 1080
    first = assert_tables_match_raw(logger_db)
    assert first > 180 + 18

    # late rows: readings of minutes already summarised (after a clock fix, half a second
    # off the first ones), an older backlog of another buffer's, rows across a quarter-hour
    late = (
        readings("pac1", START + 3600, 1200, 1.0, plant, jitter=0.5)
        + readings("pac1", START - 86400, 1800, 1.0, plant)
        + readings("pac2", START + 890, 30, 1.0, plant, jitter=0.25)
    )
    append(path, late)
    assert sync(path, logger_db) == len(late)
    assert assert_tables_match_raw(logger_db) > first

    # the figures the outage and the overload must show are there
    minutes = table(logger_db, "medicoes_1min")
    outage = minutes[("pac1", dt.datetime.fromtimestamp(START + 1860, dt.UTC).replace(tzinfo=None))]
    assert outage["tensao_l1_n_max"] == 0.0 and outage["frequencia_cnt"] == outage["freq_abaixo_57_5"] == 0
    overload = minutes[("pac1", dt.datetime.fromtimestamp(START + 4200, dt.UTC).replace(tzinfo=None))]
    assert overload["freq_fora_normal"] > 0 and overload["frequencia_max"] < 59.9


def test_aggregates_skipped_by_an_interrupted_drain_are_written_by_the_next_process(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    path = tmp_path / "buffer.sqlite3"
    append(path, readings("pac1", START, 7200, 1.0, bad_plant()))
    assert sync(path, logger_db, stop_after=2) == 4000  # stopped: no aggregates written
    assert logger_db.query(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s AND table_name LIKE %s",
        (logger_db.database, "medicoes\\_%"),
    ) == [(0,)]
    buffer = Buffer(path, create=False)
    recorded = Pending.from_json(buffer.get_meta(META_KEY))
    buffer.close()
    start_minute = int(START // 60)
    assert recorded.covers("pac1", start_minute, start_minute + 4000 // 60)

    assert sync(path, logger_db) == 3200  # a new process: the rest, and every pending minute
    assert assert_tables_match_raw(logger_db) == 120 + 8
    buffer = Buffer(path, create=False)  # what is left: the margin only (minutes done, no harm)
    assert Pending.from_json(buffer.get_meta(META_KEY)).minutes() <= 2 * SAVE_MARGIN
    buffer.close()


def test_live_rounds_rewrite_the_pending_record_rarely(tmp_path: Path, logger_db: LoggerDB) -> None:
    """Live, each sync round summarises its minute, but the buffer's record of pending minutes
    (a SQLite write: SD-card wear) is rewritten once per two hours, not once per round."""
    path = tmp_path / "buffer.sqlite3"
    plant = bad_plant()
    append(path, [])
    buffer = Buffer(path, create=False)
    writes: list[str | None] = []
    set_meta = buffer.set_meta

    def counting(key: str, value: str | None) -> None:  # a spy: the write happens as ever
        if key == META_KEY:
            writes.append(value)
        set_meta(key, value)

    buffer.set_meta = counting  # type: ignore[method-assign]
    sink = MariaDBSink(logger_db.config(), SITE, types=TYPES)
    worker = SyncWorker(buffer, sink, UNITS, 2000, aggregates=Aggregates(sink, buffer))
    try:
        for k in range(180):  # 3 hours, a round every minute
            buffer.append_many(readings("pac1", START + 60 * k, 60, 5.0, plant))
            assert worker.drain() == 12
    finally:
        sink.close()
        buffer.close()
    assert len(writes) == 2  # minute 0 (to 120 + 1), minute 121
    assert assert_tables_match_raw(logger_db) == 180 + 12


def test_aggregates_off_creates_no_table(tmp_path: Path, logger_db: LoggerDB) -> None:
    path = tmp_path / "buffer.sqlite3"
    append(path, readings("pac1", START, 300, 1.0, bad_plant()))
    assert sync(path, logger_db, aggregates=False) == 300
    tables = logger_db.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (logger_db.database,)
    )
    assert tables == [("medicoes",)]


def test_the_bands_are_the_reports_frequency_flags() -> None:
    assert len(ser.BANDS) == len(FREQ_FLAGS)
    for band, (_name, lo, hi) in zip(ser.BANDS, FREQ_FLAGS, strict=True):
        assert (band.lo if band.lo is not None else -math.inf) == lo
        assert (band.hi if band.hi is not None else math.inf) == hi


def test_pending_ranges_merge_split_and_survive_json() -> None:
    p = Pending()
    p.add_range("a", 100, 110)
    p.add_range("a", 120, 130)  # within MERGE_GAP: one range
    p.add_range("a", 500, 501)
    p.add_range("b", 0, 1)
    assert p.ranges == {"a": [[100, 130], [500, 501]], "b": [[0, 1]]}
    assert p.covers("a", 105, 130) and not p.covers("a", 95, 105) and not p.covers("c", 0, 1)
    assert p.chunks(60) == [("a", 100, 120), ("a", 120, 130), ("a", 500, 501), ("b", 0, 1)]
    p.discard("a", 110, 125)
    assert p.ranges["a"] == [[100, 110], [125, 130], [500, 501]]
    again = Pending.from_json(p.to_json())  # merged again where close: a superset, never less
    assert all(again.covers(m, lo, hi) for m, spans in p.ranges.items() for lo, hi in spans)
    assert again.ranges == {"a": [[100, 130], [500, 501]], "b": [[0, 1]]}
    assert runs([5, 3, 4, 9, 9, 10]) == [(3, 6), (9, 11)]
    many = Pending()
    for k in range(200):
        many.add_range("a", k * 100, k * 100 + 1)
    assert len(many.ranges["a"]) == 64 and many.covers("a", 0, 1) and many.covers("a", 19900, 19901)
    with pytest.raises(ValueError):
        Pending.from_json("[1, 2]")


def test_register_names_too_long_for_aggregate_columns_are_left_out() -> None:
    long = "x" * 61
    layout = Layout.of("medicoes", {"tensao_l1_n": ("float", "V"), long: ("double", "")})
    assert list(layout.registers) == ["tensao_l1_n"]
    assert all(len(c) <= 64 for c in layout.columns())


def test_a_failing_aggregate_never_stops_the_sync_and_is_done_later(
    tmp_path: Path, logger_db: LoggerDB, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the CREATE privilege the aggregate tables cannot be created: the readings are
    synced all the same, one warning says why, and once the DBA grants it they are written."""
    path = tmp_path / "buffer.sqlite3"
    append(path, readings("pac1", START, 600, 1.0, bad_plant()))
    assert sync(path, logger_db, aggregates=False) == 600  # the readings table exists
    for host in ("localhost", "127.0.0.1"):
        logger_db.query(f"REVOKE CREATE ON `{logger_db.database}`.* FROM '{logger_db.user}'@'{host}'")
    append(path, readings("pac1", START + 600, 600, 1.0, bad_plant()))
    with caplog.at_level(logging.WARNING, logger="edgelog"):
        assert sync(path, logger_db) == 600
    (line,) = [r.getMessage() for r in caplog.records if "aggregates" in r.getMessage()]
    assert line.startswith("aggregates: not updated (tried again next round): ")
    assert "CREATE command denied" in line
    assert logger_db.query(f"SELECT COUNT(*) FROM `{logger_db.database}`.`medicoes`") == [(1200,)]
    # sync-status and doctor say the tables are behind, and why
    cfg = config_mod.load(write_config(tmp_path, logger_db.toml(), meter_toml(5020)))
    health = status.evaluate(cfg, ping=False)
    assert any(w.startswith("aggregate tables not updated for") for w in health.warnings)
    assert not any("aggregate" in p for p in health.problems)  # a note: the readings are safe
    data = health.to_json()
    assert "CREATE command denied" in data["aggregates_error"] and data["aggregates_failed_rounds"] == 1
    assert data["aggregates_pending_minutes"] == 10  # the 600 s synced without their minutes
    screen = status.render(health)
    assert "Tables   aggregate tables NOT updated for" in screen and "(10 min pending)" in screen
    check = doctor._aggregates(cfg, None)
    assert check.status == "WARN" and "CREATE command denied" in check.detail
    for host in ("localhost", "127.0.0.1"):
        logger_db.query(f"GRANT CREATE ON `{logger_db.database}`.* TO '{logger_db.user}'@'{host}'")
    assert sync(path, logger_db) == 0  # nothing new to send: the pending minutes are done
    data = status.evaluate(cfg, ping=False).to_json()
    assert (data["aggregates_error"], data["aggregates_pending_minutes"]) == (None, 0)
    minutes = table(logger_db, "medicoes_1min")
    assert len(minutes) == 10 and sum(r["samples"] for r in minutes.values()) == 600  # 600..1200 s
