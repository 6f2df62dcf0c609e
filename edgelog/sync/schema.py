"""Column types of the readings table: each register column gets the type of what the meter sends.

A float32 register (unscaled) becomes FLOAT: MariaDB's FLOAT is the same 4-byte
IEEE single, so it holds exactly the value the meter sent, and a float32 value
travels as a double (the buffer's REAL, the binary protocol's DOUBLE, PyMySQL's
shortest round-trip text) and is stored back into 4 bytes without any rounding.
A float64 register becomes DOUBLE. Integer registers get the matching integer
type (int16 SMALLINT, uint16 SMALLINT UNSIGNED, int32 INT, uint32 INT UNSIGNED,
int64 BIGINT, uint64 BIGINT UNSIGNED).

A register with `scale` other than 1 becomes DOUBLE whatever its type: the
logger multiplies in double precision, and the product (2301 x 0.1 =
230.10000000000002) is neither an integer nor, in general, a float32 value; a
FLOAT would round it (to 230.10000610351562), a DOUBLE keeps the buffer's value.
A column that two meters write with different types also becomes DOUBLE, which
holds every value the logger writes (they are doubles in the buffer).

The logger never changes the type of an existing column (`MariaDBSink.ensure_table`
only adds columns); it warns when a column cannot hold its register's values
exactly, and `edgelog schema --alter-types` prints the statements that convert an
existing table (a DOUBLE column holding float32 values becomes FLOAT exactly),
with a query to run first that counts the values the new type could not hold.

Reading FLOAT back: MariaDB's text protocol prints a FLOAT with 6 significant
digits (128.7794 as "128.779", 16777216 as "16777200"), so every SELECT that
hands values on (`export`, `report`) asks for ``CAST(col AS DOUBLE)``: the
float32 value as a double, exactly (`select_expr`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..config import Config
from ..profiles import Register

#: SQL type of an unscaled register of each type.
REGISTER_SQL_TYPES = {
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "int16": "SMALLINT",
    "uint16": "SMALLINT UNSIGNED",
    "int32": "INT",
    "uint32": "INT UNSIGNED",
    "int64": "BIGINT",
    "uint64": "BIGINT UNSIGNED",
}
#: The type of a column whose register is unknown (not in the config): holds any value.
SAFE_TYPE = "DOUBLE"
#: Integer types: (lowest, highest) value.
INTEGER_RANGES = {
    "SMALLINT": (-(2**15), 2**15 - 1),
    "SMALLINT UNSIGNED": (0, 2**16 - 1),
    "INT": (-(2**31), 2**31 - 1),
    "INT UNSIGNED": (0, 2**32 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
    "BIGINT UNSIGNED": (0, 2**64 - 1),
}
KNOWN_TYPES = frozenset({"FLOAT", "DOUBLE", *INTEGER_RANGES})


def column_type(register: Register) -> str:
    """The SQL type of `register`'s column: see the module's docstring."""
    if register.scale != 1:
        return SAFE_TYPE
    return REGISTER_SQL_TYPES[register.type]


def column_types(registers: Iterable[Register]) -> dict[str, str]:
    """Column name -> SQL type for every register of every meter (DOUBLE where meters disagree)."""
    types: dict[str, str] = {}
    for register in registers:
        wanted = column_type(register)
        types[register.name] = wanted if types.get(register.name, wanted) == wanted else SAFE_TYPE
    return types


def normalize(column_type_text: str) -> str:
    """information_schema's COLUMN_TYPE ('int(10) unsigned', 'double') -> 'INT UNSIGNED', 'DOUBLE'."""
    return " ".join(re.sub(r"\(\d+(,\d+)?\)", "", column_type_text).upper().split())


def holds(live: str, wanted: str) -> bool:
    """Whether a column of type `live` holds every value a register of type `wanted` gives."""
    if live == wanted or live == "DOUBLE":
        return True  # every value the logger writes is a double in the buffer
    if live == "FLOAT":
        return wanted in ("SMALLINT", "SMALLINT UNSIGNED")  # 16-bit integers are exact in float32
    if live in INTEGER_RANGES and wanted in INTEGER_RANGES:
        (lo, hi), (wlo, whi) = INTEGER_RANGES[live], INTEGER_RANGES[wanted]
        return lo <= wlo and whi <= hi
    return False


def select_expr(quoted: str, live_type: str) -> str:
    """The SELECT expression that hands a column's exact value on (FLOAT: as a DOUBLE)."""
    return f"CAST({quoted} AS DOUBLE)" if normalize(live_type) == "FLOAT" else quoted


def live_columns(cursor: Any, database: str, table: str) -> dict[str, tuple[str, str]]:
    """The table's columns as MariaDB has them: name -> (COLUMN_TYPE, comment), in order."""
    cursor.execute(
        "SELECT column_name, column_type, column_comment FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (database, table),
    )
    return {name: (ctype, comment) for name, ctype, comment in cursor.fetchall()}


def type_warnings(live: Mapping[str, tuple[str, str]], wanted: Mapping[str, str]) -> list[str]:
    """One line per column that cannot hold its register's values exactly."""
    lines = []
    for name, want in wanted.items():
        if name in live and not holds(have := normalize(live[name][0]), want):
            lines.append(
                f"column {name} is {have}, but its register needs {want}: values are rounded or "
                "refused; `edgelog schema --alter-types` prints the statement that converts it"
            )
    return lines


def _lossless_check(name: str, quoted: str, have: str, want: str) -> str | None:
    """SQL counting the values of a column that type `want` would not hold exactly (None: all fit)."""
    if holds(want, have):
        return None
    if want == "FLOAT":
        return f"SUM({quoted} <> CAST(CAST({quoted} AS FLOAT) AS DOUBLE)) AS `{name}`"
    if want in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[want]
        return f"SUM({quoted} <> ROUND({quoted}) OR {quoted} < {lo} OR {quoted} > {hi}) AS `{name}`"
    return None  # DOUBLE holds everything


def alter_statements(
    live: Mapping[str, tuple[str, str]], wanted: Mapping[str, str], database: str, table: str
) -> list[str]:
    """SQL (comments, a check query, one ALTER TABLE) converting the live table's register
    columns to the types of this config; [] when every column already has its type."""
    from .mariadb import comment, quote

    target = f"{quote(database)}.{quote(table)}"
    changes, checks = [], []
    for name, want in wanted.items():
        if name not in live or (have := normalize(live[name][0])) == want:
            continue
        quoted = quote(name)
        changes.append(f"MODIFY COLUMN {quoted} {want} NULL COMMENT {comment(live[name][1])}")
        if (check := _lossless_check(name, quoted, have, want)) is not None:
            checks.append(check)
    if not changes:
        return []
    out = [f"-- {len(changes)} column(s) of {target} take the type of their register (edgelog schema)"]
    if checks:
        out += [
            "-- 1. Check first: every figure must be 0 (a value the new type would round or refuse).",
            f"SELECT {', '.join(checks)} FROM {target};",
            "-- 2. Convert. MariaDB copies the table meanwhile; the logger's inserts wait or time out",
            "--    and are retried from its buffer: nothing is lost.",
        ]
    out.append(f"ALTER TABLE {target}\n  " + ",\n  ".join(changes) + ";")
    return out


def config_types(cfg: Config) -> dict[str, str]:
    """Column name -> SQL type for the registers of every meter of `cfg`."""
    return column_types(r for meter in cfg.meters for r in meter.registers)


def alter_types_sql(cfg: Config) -> str:
    """What `edgelog schema --alter-types` prints: the statements converting the live table's
    register columns to the types of `cfg`, for a DBA to run (read over the logger's login)."""
    from .mariadb import MariaDBSink

    database, table = cfg.mariadb.database, cfg.mariadb.table
    sink = MariaDBSink(cfg.mariadb, cfg.site)
    try:
        live = sink.transaction(lambda cur: live_columns(cur, database, table))
    finally:
        sink.close()
    if not live:
        return f"-- no table `{database}`.`{table}` yet: `edgelog schema` prints the CREATE TABLE"
    lines = alter_statements(live, config_types(cfg), database, table)
    return "\n".join(lines) or f"-- `{database}`.`{table}` has the column types of this config: nothing to do"


def create_sql(cfg: Config) -> str:
    """What `edgelog schema` prints: CREATE DATABASE, the readings table and (with
    `[mariadb] aggregates`) the aggregate tables, their columns of the registers' types."""
    from .. import __version__
    from . import aggregates
    from .mariadb import create_table_sql

    db, table, types = cfg.mariadb.database, cfg.mariadb.table, config_types(cfg)
    tables = [create_table_sql(table, cfg.columns(), types)]
    if cfg.mariadb.aggregates:
        tables += aggregates.schema_sql(table, types, cfg.columns())
    return (
        f"-- edgelog {__version__}: readings table for site {cfg.site!r}\n"
        f"CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n"
        f"USE `{db}`;\n" + "".join(f"{sql};\n" for sql in tables).rstrip("\n")
    )


def alter_columns_sql(cfg: Config) -> str:
    """What `edgelog schema --alter` prints: the ALTER TABLE adding the columns the live
    table lacks for this config (or the whole DDL when there is no table), for a DBA."""
    from .mariadb import MariaDBSink, alter_table_sql

    sink = MariaDBSink(cfg.mariadb, cfg.site)
    try:
        existing = sink.table_columns()
    finally:
        sink.close()
    name = f"`{cfg.mariadb.database}`.`{cfg.mariadb.table}`"
    if not existing:
        return f"-- {name} does not exist on {sink.where}: create it\n{create_sql(cfg)}"
    missing = {c: unit for c, unit in cfg.columns().items() if c not in existing}
    if not missing:
        return f"-- {name} on {sink.where} has every column this config writes: nothing to alter"
    return f"{alter_table_sql(cfg.mariadb.table, missing, cfg.mariadb.database, config_types(cfg))};"
