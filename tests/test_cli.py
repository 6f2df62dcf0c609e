"""The `edgelog` command line, as real `python -m edgelog` processes against the real
simulator and MariaDB: schema, poll, sync-status, sync --drain, run and its signals."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from typing import Any

import pymysql
import pytest
from helpers import (
    COLUMNS,
    ROOT,
    UNITS,
    LoggerDB,
    edgelog,
    meter_toml,
    running_logger,
    wait_for,
    write_config,
)

from edgelog.buffer import Buffer
from edgelog.cli import build_parser
from edgelog.profiles import PAC3100
from edgelog.simulate import SimulatorThread, as_float32
from edgelog.sync import MariaDBSink
from edgelog.sync.aggregates import ensure_tables
from edgelog.sync.schema import column_types

SCHEMA_FILE = ROOT / "schema" / "chapada_imperial.sql"
TABLES = ("medicoes", "medicoes_1min", "medicoes_15min")

#: The smallest config of the default installation; `schema/chapada_imperial.sql` is its
#: `edgelog schema` output (regenerate the file with this config after changing the DDL).
MINIMAL_CONFIG = """\
site = "chapada-imperial"

[mariadb]
user = "edgelog"

[[meters]]
name = "pac3100"
transport = "rtu"
device = "/dev/ttyUSB0"
"""

STATUS_KEYS = {
    "path",
    "buffer_id",
    "unsent",
    "oldest_unsent_at",
    "readings_total",
    "failed_polls_unsent",
    "last_reading_at",
    "sent_upto",
    "last_sync_at",
    "last_error",
    "last_error_at",
    "dropped_total",
    "size_bytes",
    "mariadb_reachable",
    "mariadb_error",
}


def status(config: Path) -> dict[str, Any]:
    result = edgelog("sync-status", "--json", config=config)
    data = json.loads(result.stdout)
    # 0 healthy, 1 degraded (old backlog, silent meter): tests/test_status.py checks which
    expected = 0 if data["state"] == "healthy" else 1
    assert result.returncode == expected, result.stderr
    assert set(data) >= STATUS_KEYS  # tests/test_status.py checks that every key is documented
    return data


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def fill_buffer(path: Path, n: int) -> list[int]:
    """Float32 values, as a meter's float32 registers give them (the columns are FLOAT)."""
    buffer = Buffer(path, COLUMNS)
    try:
        return [
            buffer.append(
                "pac1", 1_700_000_000.0 + k, {c: as_float32(k + i / 7) for i, c in enumerate(COLUMNS)}
            )
            for k in range(n)
        ]
    finally:
        buffer.close()


# -- schema ----------------------------------------------------------------------------


def test_schema_prints_the_ddl_of_the_committed_schema_file(tmp_path: Path) -> None:
    config = tmp_path / "edgelog.toml"
    config.write_text(MINIMAL_CONFIG)
    result = edgelog("schema", config=config, check=True)
    statements = [line for line in result.stdout.splitlines() if not line.startswith("--")]
    assert statements[0].startswith("CREATE DATABASE IF NOT EXISTS `chapada_imperial`")
    assert "CREATE TABLE IF NOT EXISTS `medicoes` (" in result.stdout
    for register in PAC3100.registers:  # float32 registers: FLOAT, the meter's 4 bytes exactly
        assert f"  `{register.name}` FLOAT NULL COMMENT '{register.unit}',\n" in result.stdout
    raw = result.stdout.split("CREATE TABLE IF NOT EXISTS `medicoes_1min`")[0]
    assert raw.count(" FLOAT NULL ") == len(PAC3100.registers) == 20 and " DOUBLE " not in raw
    # the aggregate tables ([mariadb] aggregates = true by default)
    assert "CREATE TABLE IF NOT EXISTS `medicoes_1min` (" in result.stdout
    assert "CREATE TABLE IF NOT EXISTS `medicoes_15min` LIKE `medicoes_1min`;\n" in result.stdout
    assert "  `tensao_l1_n_min` FLOAT NULL COMMENT 'V',\n" in result.stdout
    assert "  `tensao_l1_n_avg` DOUBLE NULL COMMENT 'V',\n" in result.stdout
    assert "UNIQUE KEY `uq_reading` (`site`, `buffer_id`, `seq`)" in result.stdout
    assert "`measured_at` DATETIME(3) NOT NULL" in result.stdout

    assert SCHEMA_FILE.read_text() == result.stdout, (
        f"{SCHEMA_FILE.relative_to(ROOT)} is stale: regenerate it with `edgelog schema` "
        "for MINIMAL_CONFIG in tests/test_cli.py"
    )
    # the shipped example config describes the same table
    example = edgelog("schema", config=ROOT / "edgelog" / "example.toml", check=True)
    assert example.stdout == result.stdout


def test_the_schema_file_creates_the_table_the_logger_creates_by_itself(
    mysql_proc: Any, logger_db: LoggerDB
) -> None:
    root = pymysql.connect(unix_socket=mysql_proc.unixsocket, user="root", autocommit=True)
    try:
        with root.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS `chapada_imperial`")
            for statement in SCHEMA_FILE.read_text().split(";\n"):
                if statement.strip():
                    cur.execute(statement)
            from_file = []
            for table in TABLES:
                cur.execute(f"SHOW CREATE TABLE `chapada_imperial`.`{table}`")
                from_file.append(cur.fetchone()[1])
            cur.execute("DROP DATABASE `chapada_imperial`")
    finally:
        root.close()
    sink = MariaDBSink(logger_db.config(), "chapada-imperial", types=column_types(PAC3100.registers))
    sink.ensure_table(UNITS)
    ensure_tables(sink)  # what the first flush of aggregates does
    sink.close()
    by_logger = [logger_db.query(f"SHOW CREATE TABLE `{logger_db.database}`.`{t}`")[0][1] for t in TABLES]
    assert from_file == by_logger


# -- help text -----------------------------------------------------------------------


def test_every_command_and_option_has_help_text(capsys: pytest.CaptureFixture[str]) -> None:
    """As sqlite-utils checks its commands: a command or an option without help fails."""
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {action.dest: action.help for action in subparsers._choices_actions}
    assert set(helps) == set(subparsers.choices)
    assert {"run", "poll", "sync-status", "sync", "simulate", "export", "tail"} <= set(helps)
    assert {"report", "schema", "doctor"} <= set(helps)
    top_help = " ".join(parser.format_help().split())  # argparse wraps long lines
    for name, sub in subparsers.choices.items():
        assert helps[name] and len(helps[name]) > 15, f"{name} has no help"
        assert sub.description, f"{name} has no description"
        assert name in top_help and helps[name] in top_help
        for action in sub._actions:
            assert action.help and len(action.help) > 5, f"{name} {action.option_strings} has no help"
        with pytest.raises(SystemExit) as done:
            parser.parse_args([name, "--help"])
        assert done.value.code == 0
        assert helps[name] in " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            assert action.help, f"{action.option_strings} has no help"


# -- poll ------------------------------------------------------------------------------


def test_poll_once_prints_the_twenty_values_with_units(tmp_path: Path, simulator: SimulatorThread) -> None:
    config = write_config(tmp_path, '[mariadb]\nuser = "edgelog"\n', meter_toml(simulator.port))
    result = edgelog("poll", "--once", "--json", config=config)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert list(data) == ["pac1"]
    reading = data["pac1"]
    assert reading["requests"] == 1
    assert reading["measured_at"].endswith("Z")
    assert list(reading["values"]) == COLUMNS
    (served,) = simulator.sim.served  # exactly one request went out
    for name, item in reading["values"].items():
        assert item == {"value": served[name], "unit": UNITS[name]}, name
    assert 100 < reading["values"]["tensao_l1_n"]["value"] < 150
    assert 59 < reading["values"]["frequencia"]["value"] < 61
    assert not (tmp_path / "buffer.sqlite3").exists()  # nothing is stored

    text = edgelog("poll", config=config)  # --once is what poll does anyway
    assert text.returncode == 0, text.stderr
    assert "pac1  (" in text.stdout and "1 request(s)" in text.stdout
    assert sum(line.strip().startswith(tuple(COLUMNS)) for line in text.stdout.splitlines()) == 20
    assert len(simulator.sim.served) == 2


def test_poll_once_fails_with_exit_1_when_the_meter_does_not_answer(
    tmp_path: Path, simulator: SimulatorThread
) -> None:
    port = simulator.port
    simulator.stop()
    config = write_config(tmp_path, '[mariadb]\nuser = "edgelog"\n', meter_toml(port))
    text = edgelog("poll", "--once", config=config, timeout=20)
    assert text.returncode == 1
    assert one_line(text.stdout).startswith("pac1: FAILED: ")
    assert f"127.0.0.1:{port}" in text.stdout
    result = edgelog("poll", "--once", "--json", config=config, timeout=20)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert set(data) == {"pac1"} and set(data["pac1"]) == {"error"}
    assert data["pac1"]["error"]


# -- sync-status and run -------------------------------------------------------------------


def test_sync_status_during_and_after_a_run_with_mariadb_reachable(
    tmp_path: Path, simulator: SimulatorThread, logger_db: LoggerDB, run_config: Path
) -> None:
    with running_logger(run_config) as logger:
        wait_for(lambda: logger.lines("logging pac1"), what="run to start")
        wait_for(lambda: len(simulator.sim.served) >= 5, what="5 polls")
        during = status(run_config)  # the buffer is open by `run` meanwhile
        wait_for(lambda: len(simulator.sim.served) >= during["readings_total"] + 3, what="3 more polls")
        later = status(run_config)
        assert logger.alive(), logger.text()
    assert during["readings_total"] >= 5 and later["readings_total"] > during["readings_total"]
    assert during["mariadb_reachable"] is True and during["mariadb_error"] is None
    assert later["last_reading_at"] >= during["last_reading_at"]

    drained = edgelog("sync", "--drain", config=run_config, check=True)
    assert drained.stdout.strip().endswith("; 0 unsent")
    after = status(run_config)
    assert after["unsent"] == 0 and after["oldest_unsent_at"] is None
    assert after["readings_total"] == len(simulator.sim.served) > 0
    assert after["sent_upto"] == after["readings_total"]
    assert after["mariadb_reachable"] is True and after["mariadb_error"] is None
    assert after["last_sync_at"] is not None and after["last_error"] is None
    assert after["failed_polls_unsent"] == 0 and after["dropped_total"] == 0
    assert after["path"] == str(tmp_path / "buffer.sqlite3") and len(after["buffer_id"]) == 16
    assert after["size_bytes"] > 0
    assert len(logger_db.rows()) == after["readings_total"]


def test_sync_status_with_mariadb_unreachable_while_run_keeps_buffering(
    simulator: SimulatorThread, offline_config: Path
) -> None:
    with running_logger(offline_config) as logger:
        wait_for(lambda: logger.lines("logging pac1"), what="run to start")
        first = wait_for(
            lambda: (s := status(offline_config))["last_error"] and s["readings_total"] >= 3 and s,
            what="the worker to record its error",
        )
        wait_for(lambda: len(simulator.sim.served) >= first["readings_total"] + 3, what="3 more polls")
        second = status(offline_config)
        assert logger.alive(), logger.text()
    for s in (first, second):
        assert s["mariadb_reachable"] is False
        assert "127.0.0.1" in s["mariadb_error"] and "\n" not in s["mariadb_error"]
        assert s["unsent"] == s["readings_total"] > 0
        assert s["sent_upto"] == 0 and s["last_sync_at"] is None
        assert s["oldest_unsent_at"] is not None
    assert second["unsent"] > first["unsent"]  # readings kept arriving while MariaDB was down
    after = status(offline_config)
    assert after["unsent"] == after["readings_total"] == len(simulator.sim.served)
    assert after["last_error"] and "MariaDB" in after["last_error"]


def test_sync_status_on_a_missing_buffer_exits_2_with_one_line(tmp_path: Path, logger_db: LoggerDB) -> None:
    missing = tmp_path / "nowhere" / "buffer.sqlite3"
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020), buffer={"path": missing})
    for args in (("sync-status",), ("sync-status", "--json")):
        result = edgelog(*args, config=config)
        assert result.returncode == 2
        assert result.stdout == ""
        line = one_line(result.stderr)
        assert line.startswith("edgelog: error: ") and str(missing) in line
    assert not missing.exists() and not missing.parent.exists()  # looking creates nothing


# -- sync --drain ----------------------------------------------------------------------


def test_sync_drain_sends_everything_and_exits_0(tmp_path: Path, logger_db: LoggerDB) -> None:
    buffer_path = tmp_path / "buffer.sqlite3"
    seqs = fill_buffer(buffer_path, 25)
    config = write_config(tmp_path, logger_db.toml(batch_size=7), meter_toml(5020))
    result = edgelog("sync", "--drain", config=config)
    assert result.returncode == 0, result.stderr
    assert one_line(result.stdout).startswith("sent 25 rows in ")
    assert result.stdout.strip().endswith("; 0 unsent")
    rows = logger_db.rows()
    assert [r["seq"] for r in rows] == seqs
    assert [r["tensao_l2_n"] for r in rows] == [as_float32(k + 1 / 7) for k in range(25)]
    after = status(config)
    assert after["unsent"] == 0 and after["sent_upto"] == seqs[-1]

    again = edgelog("sync", "--drain", config=config)  # nothing left: still success, no duplicates
    assert again.returncode == 0 and "sent 0 rows" in again.stdout
    assert len(logger_db.rows()) == 25

    bare = edgelog("sync", config=config)
    assert bare.returncode == 1 and "--drain" in one_line(bare.stderr)


def test_sync_drain_exits_1_with_one_line_when_mariadb_is_unreachable(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    fill_buffer(tmp_path / "buffer.sqlite3", 10)
    config = write_config(tmp_path, logger_db.unreachable_toml(), meter_toml(5020))
    result = edgelog("sync", "--drain", config=config, timeout=30)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("edgelog: error: MariaDB ") and "127.0.0.1" in line
    assert logger_db.password_file.read_text().strip() not in line
    after = status(config)
    assert after["unsent"] == 10 and after["sent_upto"] == 0
    assert after["last_error"] and after["last_error"] in line


# -- run and signals -------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_stops_cleanly_on_a_signal(
    simulator: SimulatorThread, sig: signal.Signals, run_config: Path
) -> None:
    with running_logger(run_config, sig=sig) as logger:  # it must exit 0
        wait_for(lambda: logger.lines("logging pac1"), what="run to start")
        wait_for(lambda: len(simulator.sim.served) >= 3, what="3 polls")
    text = logger.text()
    assert f"received {sig.name}" in text and text.rstrip().endswith("stopped")
    assert "Traceback" not in text
    after = status(run_config)
    # the poll in flight was finished and committed: one reading per answer served
    assert after["readings_total"] == len(simulator.sim.served)
    assert after["failed_polls_unsent"] == 0
