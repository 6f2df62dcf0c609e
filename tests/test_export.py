"""`edgelog export`: what a real `edgelog run` wrote, back out of MariaDB and the buffer,
as CSV and Parquet; memory that does not grow with the range; progress lines."""

from __future__ import annotations

import csv
import datetime as dt
import io
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import ROOT, LoggerDB, edgelog, meter_toml, running_logger, wait_for, write_config
from plantdata import SITE, START, append, bad_plant, readings, sync

from edgelog import config as config_mod
from edgelog import export
from edgelog.buffer import Buffer
from edgelog.clock import utc_text
from edgelog.profiles import PAC3100_ENERGIA as PROFILE
from edgelog.progress import Progress
from edgelog.simulate import SimulatorThread, plant_values
from edgelog.sync import MariaDBSink
from edgelog.sync.schema import live_columns, select_expr

COLUMNS = [r.name for r in PROFILE.registers]
UNITS = {r.name: r.unit for r in PROFILE.registers}
HEADER = ["measured_at [UTC]", "site", "meter", "clock_ok", "error"] + [
    f"{name} [{UNITS[name]}]" for name in COLUMNS
]


@pytest.fixture
def simulator(simulator_energia: SimulatorThread) -> SimulatorThread:
    """The energy counters are part of these tests: profile pac3100-energia."""
    return simulator_energia


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_a_real_run_exported_from_mariadb_and_from_the_buffer(
    tmp_path: Path, simulator: SimulatorThread, logger_db: LoggerDB
) -> None:
    config = write_config(
        tmp_path, logger_db.toml(), meter_toml(simulator.port, interval_s=0.2, profile="pac3100-energia")
    )
    started = time.time()
    with running_logger(config):
        wait_for(lambda: len(simulator.sim.served) >= 8, what="8 polls")
    edgelog("sync", "--drain", config=config, check=True)
    served = simulator.sim.served
    window = ("--from", utc_text(started - 60, iso=True), "--to", utc_text(time.time() + 60, iso=True))

    from_db = edgelog("export", *window, config=config)
    assert from_db.returncode == 0, from_db.stderr
    assert from_db.stderr.strip().startswith(f"exported {len(served)} rows from MariaDB ")
    rows = read_csv(from_db.stdout)
    assert rows[0] == HEADER  # units in the header: tensao_l1_n [V], energia_ativa [Wh]
    assert len(rows) == 1 + len(served)
    for row, answer in zip(rows[1:], served, strict=True):
        at, site, meter, clock_ok, error, *values = row
        assert at.endswith("Z") and "T" in at and len(at) == len("2026-06-01T12:00:00.000Z")
        assert (site, meter, error) == ("test-site", "pac1", "") and clock_ok in ("0", "1")
        assert [float(v) for v in values] == [answer[name] for name in COLUMNS]  # exact round trip

    from_buffer = edgelog("export", *window, "--source", "buffer", config=config)
    assert from_buffer.returncode == 0, from_buffer.stderr
    assert "from buffer " in from_buffer.stderr
    assert from_buffer.stdout == from_db.stdout  # the same rows, byte for byte

    # to a file, one meter, Parquet: units in the field metadata, times as UTC timestamps
    out = tmp_path / "pac1.parquet"
    result = edgelog("export", *window, "--meter", "pac1", "--out", str(out), config=config)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(out)
    assert table.num_rows == len(served) and table.column_names == list(export.FIXED) + COLUMNS
    assert str(table.schema.field("measured_at").type) == "timestamp[ms, tz=UTC]"
    assert table.schema.field("tensao_l1_n").metadata == {b"unit": b"V"}
    assert table.schema.field("energia_reativa").metadata == {b"unit": b"varh"}
    assert table.column("frequencia").to_pylist() == [a["frequencia"] for a in served]
    first = table.column("measured_at")[0].as_py()
    assert first == logger_db.rows()[0]["measured_at"].replace(tzinfo=dt.UTC)  # MariaDB's DATETIME(3), in UTC
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.tmp"))  # no temporary file left

    other = edgelog(
        "export", *window, "--meter", "nobody", "--out", str(tmp_path / "none.csv"), config=config
    )
    assert other.returncode == 0 and read_csv((tmp_path / "none.csv").read_text()) == [HEADER]


def test_a_failed_poll_is_exported_as_a_gap_unless_no_gaps(tmp_path: Path, logger_db: LoggerDB) -> None:
    buffer = Buffer(tmp_path / "buffer.sqlite3", COLUMNS)
    buffer.append("pac1", 1_780_000_000.0, plant_values(1_780_000_000.0))
    buffer.append("pac1", 1_780_000_001.0, None, error='no answer, "quoted", with a comma')
    buffer.close()
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020, profile="pac3100-energia"))
    window = ("--from", "2026-05-28T00:00:00", "--to", "2026-05-30", "--source", "buffer")
    rows = read_csv(edgelog("export", *window, config=config, check=True).stdout)
    assert [r[0] for r in rows[1:]] == ["2026-05-28T20:26:40.000Z", "2026-05-28T20:26:41.000Z"]
    assert rows[2][4] == 'no answer, "quoted", with a comma' and rows[2][5:] == [""] * len(COLUMNS)
    only = read_csv(edgelog("export", *window, "--no-gaps", config=config, check=True).stdout)
    assert len(only) == 2 and only[1][4] == ""
    # a zone in the instant: 17:26:40 at UTC-3 is 20:26:40 UTC
    local = ("--from", "2026-05-28T17:26:40-03:00", "--to", "2026-05-28T17:26:41-03:00", "--source", "buffer")
    (_, row) = read_csv(edgelog("export", *local, config=config, check=True).stdout)
    assert row[0] == "2026-05-28T20:26:40.000Z"


def test_export_errors_are_one_line(tmp_path: Path, logger_db: LoggerDB) -> None:
    Buffer(tmp_path / "buffer.sqlite3", COLUMNS).close()
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020, profile="pac3100-energia"))
    cases = [
        (("--from", "yesterday"), "--from: 'yesterday' is not an ISO-8601 date or time"),
        (("--from", "2026-06-02", "--to", "2026-06-01"), "the interval is empty"),
        (("--from", "2026-06-01", "--site", "elsewhere", "--source", "buffer"), "holds the readings of site"),
        (("--from", "2026-06-01", "--format", "parquet"), "Parquet goes to a file"),
        (("--from", "2026-06-01"), "no table 'medicoes' (has anything been synced yet?)"),
        (("--from", "2026-06-01", "--every", "1min"), "no table 'medicoes_1min': the logger keeps it"),
        (("--from", "2026-06-01", "--every", "1min", "--source", "buffer"), "in MariaDB, not in the buffer"),
        (("--from", "2026-06-01", "--every", "15min", "--no-gaps"), "--no-gaps: not with --every"),
    ]
    for args, message in cases:
        result = edgelog("export", *args, config=config)
        assert result.returncode == 1, (args, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith("edgelog: error: ") and message in line, line
        assert result.stdout == ""


def test_parquet_without_pyarrow_is_a_one_line_error(tmp_path: Path, logger_db: LoggerDB) -> None:
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020, profile="pac3100-energia"))
    out = tmp_path / "x.parquet"
    argv = ["--config", str(config), "export", "--from", "2026-06-01", "--out", str(out)]
    code = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"  # not installed
        f"from edgelog.cli import main\nsys.exit(main({argv!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "edgelog: error: export: Parquet needs pyarrow, which is not installed: "
        + ("pip install 'edgelog[parquet]'")
    )
    assert not out.exists()


def _fill_mariadb(logger_db: LoggerDB, n: int, start: float) -> None:
    """n readings of the simulated plant, 1 s apart, written by the real sink (its batch INSERT)."""
    sink = MariaDBSink(logger_db.config(), "test-site")
    try:
        sink.ensure_table(UNITS)
        template = plant_values(start)
        for first in range(0, n, 5000):
            rows = [
                (k + 1, "pac1", start + k, True, None, *(template[c] + k * 1e-3 for c in COLUMNS))
                for k in range(first, min(n, first + 5000))
            ]
            sink.write_batch("0123456789abcdef", COLUMNS, rows)
    finally:
        sink.close()


def _peak_export(
    cfg: config_mod.Config, query: export.Query, out: Path, source: str, chunk: int
) -> tuple[int, int]:
    tracemalloc.start()
    try:
        result = export.run(
            cfg, query, out=str(out), source=source, progress_stream=io.StringIO(), chunk_rows=chunk
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result.rows, peak


def test_memory_stays_flat_whatever_the_range(tmp_path: Path, logger_db: LoggerDB) -> None:
    """8x the rows, not 8x the memory: rows are streamed a chunk at a time (MariaDB's server-side
    cursor, the buffer by seq). A buffered cursor would hold every row and fail this."""
    start, n, chunk = 1_780_000_000.0, 8_000, 1_000
    _fill_mariadb(logger_db, n, start)
    # the same rows in a buffer file, inserted in bulk through the buffer's own model
    buffer = Buffer(tmp_path / "buffer.sqlite3", COLUMNS)
    fields = buffer.tables.Reading._meta.columns
    template = plant_values(start)
    with buffer.db.atomic():
        for first in range(0, n, 2000):
            batch = [
                {"meter": "pac1", "measured_at": start + k}
                | {fields[c].name: template[c] + k * 1e-3 for c in COLUMNS}
                for k in range(first, min(n, first + 2000))
            ]
            buffer.tables.Reading.insert_many(batch).execute()
    buffer.close()
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020, profile="pac3100-energia"))
    cfg = config_mod.load(config)
    for source in ("mariadb", "buffer"):
        small = export.Query(start, start + chunk, "test-site", "pac1")
        large = export.Query(start, start + n, "test-site", "pac1")
        rows_small, peak_small = _peak_export(cfg, small, tmp_path / f"small-{source}.csv", source, chunk)
        rows_large, peak_large = _peak_export(cfg, large, tmp_path / f"large-{source}.csv", source, chunk)
        assert (rows_small, rows_large) == (chunk, n)
        assert peak_large < 1.5 * peak_small, (source, peak_small, peak_large)
        assert peak_large < 8 * 1024 * 1024, (source, peak_large)
        last = (tmp_path / f"large-{source}.csv").read_text().splitlines()[-1].split(",")
        assert float(last[5]) == template["tensao_l1_n"] + (n - 1) * 1e-3


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere() -> None:
    now = [0.0]
    plain = io.StringIO()
    with Progress("export", total=1000, stream=plain, tty=False, every_s=10, clock=lambda: now[0]) as p:
        for done in range(100, 1001, 100):
            now[0] += 3.0  # 100 rows every 3 s (a faked monotonic clock)
            p.update(done)
    lines = plain.getvalue().splitlines()
    assert lines[0] == "export: 400 of 1\u202f000 rows (40 %), 33 rows/s, about 18 s left"
    assert lines[-1].startswith("export: 1\u202f000 of 1\u202f000 rows (100 %)")
    assert len(lines) == 3  # at 12 s, 24 s, then the end: never a line per update

    quick = io.StringIO()
    with Progress("sync", total=10, stream=quick, tty=False) as p:
        p.update(10)
    assert quick.getvalue() == ""  # short work prints nothing (the one-line contracts hold)

    bar = io.StringIO()
    with Progress("export", total=500, stream=bar, tty=True) as p:
        for done in range(50, 501, 50):
            p.update(done)
    drawn = bar.getvalue()
    assert "\r" in drawn and "rows/s" in drawn and "500/500" in drawn


# -- --every: the aggregate tables ------------------------------------------------------------


def test_export_every_minute_and_quarter_hour_gives_the_aggregate_rows(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    path = tmp_path / "buffer.sqlite3"
    append(
        path,
        readings("pac1", START, 3600, 1.0, bad_plant()) + readings("pac2", START, 3600, 10.0, bad_plant()),
    )
    assert sync(path, logger_db) == 3600 + 360
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020), site=SITE)
    window = ("--from", utc_text(START, iso=True), "--to", utc_text(START + 3600, iso=True))

    for every, periods in (("1min", 60), ("15min", 4)):
        result = edgelog("export", *window, "--every", every, config=config, check=True)
        assert result.stderr.strip().startswith(f"exported {2 * periods} rows from MariaDB ")
        rows = read_csv(result.stdout)
        header, body = rows[0], rows[1:]
        assert header[:6] == ["period_start [UTC]", "site", "meter", "samples", "failed", "clock_unsynced"]
        assert {"tensao_l1_n_avg [V]", "tensao_l1_n_min [V]", "tensao_l1_n_cnt", "freq_fora_normal"} <= set(
            header
        )
        assert "potencia_ativa_total_avg [W]" in header and "desequilibrio_tensao_max [%]" in header
        assert len(body) == 2 * periods  # two meters
        assert body[0][0] == utc_text(START, iso=True) and [r[2] for r in body[:2]] == ["pac1", "pac2"]
        assert sum(int(r[3]) for r in body) == 3960
        # each field as the table holds it, FLOAT min/max exactly (CAST, not 6 digits)
        table = f"medicoes_{every}"
        live = live_columns(logger_db.root.cursor(), logger_db.database, table)
        names = [c for c in live if c not in ("site", "meter", "period_start")]
        db_rows = logger_db.query(
            f"SELECT {', '.join(select_expr(f'`{c}`', live[c][0]) for c in names)} "
            f"FROM `{logger_db.database}`.`{table}` ORDER BY period_start, meter"
        )
        for csv_row, db_row in zip(body, db_rows, strict=True):
            assert csv_row[3:] == ["" if v is None else str(v) for v in db_row]

    # half-open: a period is exported when it starts in [--from, --to)
    one = ("--from", utc_text(START + 60, iso=True), "--to", utc_text(START + 120, iso=True))
    rows = read_csv(
        edgelog("export", *one, "--every", "1min", "--meter", "pac1", config=config, check=True).stdout
    )
    assert [r[:4] for r in rows[1:]] == [[utc_text(START + 60, iso=True), SITE, "pac1", "60"]]

    out = tmp_path / "quarters.parquet"
    edgelog("export", *window, "--every", "15min", "--out", str(out), config=config, check=True)
    table = pq.read_table(out)
    assert table.num_rows == 8 and table.column_names[:3] == ["period_start", "site", "meter"]
    assert str(table.schema.field("samples").type) == "int64"
    assert str(table.schema.field("tensao_l1_n_cnt").type) == "int64"
    assert str(table.schema.field("tensao_l1_n_avg").type) == "double"
    assert table.schema.field("tensao_l1_n_max").metadata == {b"unit": b"V"}
    assert sum(table.column("samples").to_pylist()) == 3960
