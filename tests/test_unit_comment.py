"""A register's `unit` becomes SQL text (the column's COMMENT): validated at config time,
and quoted the one way that means the same under every sql_mode, checked on the real
MariaDB in its default mode and under NO_BACKSLASH_ESCAPES."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pymysql
import pytest
from helpers import ROOT, LoggerDB, meter_toml, write_config
from pymysql.converters import escape_string

from edgelog.config import UNIT_MAX, parse
from edgelog.errors import ConfigError
from edgelog.sync.mariadb import column_sql, create_table_sql

NO_BACKSLASH = "SET sql_mode = 'NO_BACKSLASH_ESCAPES'"
ODD_UNITS = {"aspas": "it's 'quoted'", "graus": "°C", "vazao": "m³/h", "duplas": 'say "V"'}


def _config_text(unit_toml: str) -> str:
    register = f'\n[[meters.registers]]\nname = "extra"\naddress = 801\nunit = {unit_toml}\n'
    return 'site = "s"\n[mariadb]\nuser = "edgelog"\n' + meter_toml(5020) + register


@pytest.mark.parametrize(
    "unit_toml, problem",
    [
        ('"V\\nDROP TABLE medicoes"', "control characters"),
        ('"V\\u0000"', "control characters"),
        ('"kWh\\u001b[31m"', "control characters"),
        ('"V\\\\"', "backslashes"),
        (f'"{"x" * (UNIT_MAX + 1)}"', f"at most {UNIT_MAX} characters"),
    ],
)
def test_a_unit_that_would_be_unsafe_sql_is_a_config_error_naming_the_key(
    unit_toml: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse(tomllib.loads(_config_text(unit_toml)), source="edgelog.toml")
    message = str(info.value)
    assert message.startswith("edgelog.toml: [meters[0].registers[0]] unit: must be") and problem in message
    assert "\n" not in message


def test_quotes_and_other_printable_text_are_fine_and_quoted_by_doubling() -> None:
    for unit in ODD_UNITS.values():
        cfg = parse(tomllib.loads(_config_text(json.dumps(unit, ensure_ascii=False))), source="t")
        assert cfg.columns()["extra"] == unit
    assert column_sql("extra", "it's") == "`extra` DOUBLE NULL COMMENT 'it''s'"
    with pytest.raises(ValueError):
        column_sql("extra", "a\\b")  # never reaches SQL even if config validation were bypassed


@pytest.mark.parametrize(
    "sql_mode", ["STRICT_ALL_TABLES", "STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES,ANSI_QUOTES"]
)
def test_the_comments_read_back_exactly_under_any_sql_mode(logger_db: LoggerDB, sql_mode: str) -> None:
    """`edgelog schema`'s DDL (the file an admin feeds to `mariadb`) and the sink's own
    CREATE TABLE, run in a session with this sql_mode."""
    root = logger_db.root
    with root.cursor() as cur:
        cur.execute("SET SESSION sql_mode = %s", (sql_mode,))
        cur.execute(f"USE `{logger_db.database}`")
        cur.execute(create_table_sql("medicoes", ODD_UNITS))
        cur.execute(
            "SELECT column_name, column_comment FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'medicoes'",
            (logger_db.database,),
        )
        comments = dict(cur.fetchall())
        if "NO_BACKSLASH_ESCAPES" in sql_mode:  # the old quoting: broken under this mode
            old = f"CREATE TABLE old_way (x DOUBLE COMMENT '{escape_string(ODD_UNITS['aspas'])}')"
            with pytest.raises(pymysql.err.ProgrammingError):
                cur.execute(old)
        cur.execute("SET SESSION sql_mode = DEFAULT")
    for name, unit in ODD_UNITS.items():
        assert comments[name] == unit, (sql_mode, name)


def test_edgelog_schema_output_runs_in_the_mariadb_client_under_no_backslash_escapes(
    tmp_path, logger_db: LoggerDB
) -> None:
    register = '\n[[meters.registers]]\nname = "extra"\naddress = 801\nunit = "it\'s °C"\n'
    mariadb = f'[mariadb]\nuser = "edgelog"\ndatabase = "{logger_db.database}"\n'
    config = write_config(tmp_path, mariadb, meter_toml(5020) + register)
    schema = subprocess.run(
        [sys.executable, "-m", "edgelog", "--config", str(config), "schema"],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "COMMENT 'it''s °C'" in schema
    subprocess.run(
        [
            "mariadb",
            f"--socket={logger_db.socket}",
            "--user=root",
            "--init-command=SET sql_mode='NO_BACKSLASH_ESCAPES'",
        ],
        input=schema,
        text=True,
        check=True,
        capture_output=True,
    )
    ((comment,),) = logger_db.query(
        "SELECT column_comment FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'medicoes' AND column_name = 'extra'",
        (logger_db.database,),
    )
    assert comment == "it's °C"
