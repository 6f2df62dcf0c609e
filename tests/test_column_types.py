"""Column types follow register types, and a float32 value makes the whole trip exactly.

The trip: the meter's two registers -> `meter.decode` -> the buffer -> the sync worker (the
binary fast path and the plain executemany path) -> a FLOAT column of the real MariaDB ->
`export` (and the source the report reads) -> the same float32 value, bit for bit, for
random patterns, denormals, the extremes; NaN and infinities become NULL. An existing
DOUBLE table keeps working, and `edgelog schema --alter-types` converts it without changing a
value.
"""

from __future__ import annotations

import csv
import logging
import random
import struct
from pathlib import Path

import pytest
from helpers import LoggerDB, edgelog, meter_toml, write_config

from edgelog import config as config_mod
from edgelog import export
from edgelog.buffer import Buffer
from edgelog.config import MariaDBConfig, SyncConfig
from edgelog.meter import decode, plan_requests
from edgelog.profiles import PAC3100, REGISTER_WIDTH, Register
from edgelog.sync import MariaDBSink, SyncWorker
from edgelog.sync.mariadb import BINARY_MIN_ROWS
from edgelog.sync.schema import alter_statements, column_type, column_types, holds, live_columns

COLUMNS = ["v1", "v2", "v3", "v4"]
EXTREMES = [
    0x00000001,  # the smallest denormal, 1.4e-45
    0x007FFFFF,  # the largest denormal
    0x00800000,  # the smallest normal, 1.18e-38
    0x7F7FFFFF,  # the largest float32, 3.4028235e38
    0xFF7FFFFF,  # its negative
    0x4300C787,  # 128.7794: MariaDB's text protocol prints it as 128.779
    0x4B800000,  # 16777216, printed as 16777200
    0x3F800000,  # 1.0
    0xBDCCCCCD,  # -0.1
]
NOT_A_NUMBER = [0x7FC00000, 0x7FA00000, 0xFFC00001, 0x7F800000, 0xFF800000]  # NaNs, +inf, -inf


def bits(x: float) -> int:
    return struct.unpack(">I", struct.pack(">f", x))[0]


def meter_values(patterns: list[int]) -> list[dict[str, float | None]]:
    """Each group of four float32 bit patterns as the meter's registers, through `decode`."""
    registers = [Register(c, 2 * i, type="float32") for i, c in enumerate(COLUMNS)]
    (request,) = plan_requests(registers)
    out = []
    for k in range(0, len(patterns), 4):
        words = []
        for p in patterns[k : k + 4]:
            words += [p >> 16, p & 0xFFFF]
        out.append(decode(request, words))
    return out


def patterns() -> list[int]:
    rnd = random.Random(15)
    finite = [p for p in (rnd.getrandbits(32) for _ in range(4000)) if (p >> 23) & 0xFF != 0xFF]
    every = EXTREMES + NOT_A_NUMBER + finite
    return every[: len(every) // 4 * 4]


def send(path: Path, cfg: MariaDBConfig, types: dict[str, str] | None, site: str = "s") -> dict[str, int]:
    buffer = Buffer(path, create=False)
    sink = MariaDBSink(cfg, site, types=types)
    try:
        SyncWorker(buffer, sink, dict.fromkeys(COLUMNS, "V"), 500).drain()
        return dict(sink.stats)
    finally:
        sink.close()
        buffer.close()


def exported(tmp_path: Path, logger_db: LoggerDB, site: str = "s") -> list[list[str]]:
    """`edgelog export` of the site to CSV, the header left out."""
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020), site=site)
    out = tmp_path / f"{site}.csv"
    result = edgelog("export", "--from", "2025-01-01", "--to", "2027-01-01", "--out", str(out), config=config)
    assert result.returncode == 0, result.stderr
    with out.open() as f:
        return list(csv.reader(f))[1:]


# -- the types ------------------------------------------------------------------------------


def test_each_register_type_has_its_column_type() -> None:
    # worked out from MariaDB's numeric types: the narrowest column that holds every value
    expected = {
        "float32": "FLOAT",
        "float64": "DOUBLE",
        "int16": "SMALLINT",
        "uint16": "SMALLINT UNSIGNED",
        "int32": "INT",
        "uint32": "INT UNSIGNED",
        "int64": "BIGINT",
        "uint64": "BIGINT UNSIGNED",
    }
    assert set(expected) == set(REGISTER_WIDTH)
    for type_, sql in expected.items():
        assert column_type(Register("x", 0, type=type_)) == sql  # type: ignore[arg-type]
        # scaled: 2301 x 0.1 = 230.10000000000002, neither an integer nor a float32 value
        assert column_type(Register("x", 0, type=type_, scale=0.1)) == "DOUBLE"  # type: ignore[arg-type]
    assert {column_type(r) for r in PAC3100.registers} == {"FLOAT"}
    # two meters writing one column with different types: DOUBLE holds both
    assert column_types([Register("a", 0), Register("a", 0, type="int16"), Register("b", 0)]) == {
        "a": "DOUBLE",
        "b": "FLOAT",
    }
    assert holds("DOUBLE", "BIGINT") and holds("FLOAT", "SMALLINT UNSIGNED") and holds("INT", "SMALLINT")
    assert not holds("FLOAT", "DOUBLE") and not holds("FLOAT", "INT") and not holds("SMALLINT", "INT")


# -- float32 exactly ------------------------------------------------------------------------


@pytest.mark.parametrize("fast_path", [True, False], ids=["binary", "plain"])
def test_float32_values_arrive_and_come_back_bit_for_bit(
    tmp_path: Path, logger_db: LoggerDB, fast_path: bool
) -> None:
    every = patterns()
    rows = meter_values(every)
    assert rows[3]["v1"] is None and rows[3]["v2"] is None  # NaN and inf: NULL
    path = tmp_path / "buffer.sqlite3"
    buffer = Buffer(path, COLUMNS)
    for k, values in enumerate(rows):
        buffer.append("pac1", 1_780_000_000 + k, values)
    buffer.close()
    stats = send(path, logger_db.config(fast_path=fast_path), {c: "FLOAT" for c in COLUMNS})
    assert stats["binary" if fast_path else "text"] > 0 and stats["binary_fallback"] == 0
    assert len(rows) >= 4 * BINARY_MIN_ROWS
    live = live_columns(logger_db.root.cursor(), logger_db.database, "medicoes")
    assert {live[c][0] for c in COLUMNS} == {"float"}

    def same(text_or_value: object, pattern: int) -> bool:
        if (pattern >> 23) & 0xFF == 0xFF:  # NaN, inf
            return text_or_value in ("", None)
        value = float(text_or_value)  # type: ignore[arg-type]
        # the one pattern that cannot come back: MariaDB keeps no sign on a zero (nor does DOUBLE)
        return bits(value) == pattern or (value == 0.0 and pattern & 0x7FFFFFFF == 0)

    # what `export` writes: the exact double of each float32 (shortest round trip)
    lines = exported(tmp_path, logger_db)
    assert len(lines) == len(rows)
    for k, line in enumerate(lines):
        for i, text in enumerate(line[5:]):
            assert same(text, every[4 * k + i]), (k, i, text, hex(every[4 * k + i]))
    assert lines[1][6] == "128.77940368652344"  # 128.7794f, as a DOUBLE table gave it

    # what the report reads (the same source), as floats
    cfg = config_mod.load(write_config(tmp_path, logger_db.toml(), meter_toml(5020), site="s"))
    query = export.Query(1_700_000_000, 1_800_000_000, "s", "pac1")
    src = export.open_source(cfg, query, "mariadb")
    try:
        got = [row for chunk in src.chunks() for row in chunk]
    finally:
        src.close()
    for k, row in enumerate(got):
        for i, value in enumerate(row[5:]):
            assert same(value, every[4 * k + i]), (k, i, value)

    # why the CAST: without it MariaDB's text protocol gives 6 significant digits
    ((v2, v2_cast, v3, v3_cast),) = logger_db.query(
        f"SELECT v2, CAST(v2 AS DOUBLE), v3, CAST(v3 AS DOUBLE) FROM `{logger_db.database}`.`medicoes` "
        "ORDER BY seq LIMIT 1 OFFSET 1"
    )
    assert (v2, v3) == (128.779, 16777200.0)
    assert (bits(v2_cast), bits(v3_cast)) == (EXTREMES[5], EXTREMES[6])


# -- integers -------------------------------------------------------------------------------


def test_integer_registers_get_integer_columns_and_exact_values(tmp_path: Path, logger_db: LoggerDB) -> None:
    kinds = ["int16", "uint16", "int32", "uint32", "int64", "uint64"]
    registers, address = [], 0
    for kind in kinds:
        registers.append(Register(kind, address, type=kind))  # type: ignore[arg-type]
        address += REGISTER_WIDTH[kind]
    types = column_types(registers)
    extremes = {
        "int16": (-(2**15), 2**15 - 1),
        "uint16": (0, 2**16 - 1),
        "int32": (-(2**31), 2**31 - 1),
        "uint32": (0, 2**32 - 1),
        "int64": (-(2**53), 2**53),  # beyond 2**53 the buffer's double is not the integer anyway
        "uint64": (0, 2**53),
    }
    path = tmp_path / "buffer.sqlite3"
    buffer = Buffer(path, kinds)
    for k in range(2):
        buffer.append("pac1", 1_780_000_000 + k, {kind: float(extremes[kind][k]) for kind in kinds})
    buffer.close()
    buffer = Buffer(path, create=False)
    sink = MariaDBSink(logger_db.config(), "s", types=types)
    assert SyncWorker(buffer, sink, dict.fromkeys(kinds, ""), 100).drain() == 2
    sink.close()
    buffer.close()
    live = live_columns(logger_db.root.cursor(), logger_db.database, "medicoes")
    assert [live[k][0] for k in kinds] == [
        "smallint(6)",
        "smallint(5) unsigned",
        "int(11)",
        "int(10) unsigned",
        "bigint(20)",
        "bigint(20) unsigned",
    ]
    rows = logger_db.query(f"SELECT {', '.join(kinds)} FROM `{logger_db.database}`.`medicoes` ORDER BY seq")
    assert rows == [tuple(extremes[k][0] for k in kinds), tuple(extremes[k][1] for k in kinds)]


def test_a_value_beyond_an_integer_column_is_refused_and_quarantined_not_lost(
    tmp_path: Path, logger_db: LoggerDB
) -> None:
    """uint64 all ones (a 'not available' some meters send) is 2**64 as a double: out of range."""
    path = tmp_path / "buffer.sqlite3"
    buffer = Buffer(path, ["u"])
    buffer.append("pac1", 1_780_000_000, {"u": 1.0})
    buffer.append("pac1", 1_780_000_001, {"u": float(2**64 - 1)})
    buffer.append("pac1", 1_780_000_002, {"u": 2.0})
    sink = MariaDBSink(logger_db.config(), "s", types={"u": "BIGINT UNSIGNED"})
    worker = SyncWorker(buffer, sink, {"u": ""}, 100, SyncConfig(quarantine_after=1))
    assert worker.drain() == 3
    assert buffer.status().quarantined == 1
    sink.close()
    buffer.close()
    assert logger_db.query(f"SELECT u FROM `{logger_db.database}`.`medicoes` ORDER BY seq") == [(1,), (2,)]


# -- an existing DOUBLE table ---------------------------------------------------------------


def test_a_double_table_keeps_working_and_schema_alter_converts_it_exactly(
    tmp_path: Path, logger_db: LoggerDB, caplog: pytest.LogCaptureFixture
) -> None:
    every = [p for p in patterns() if (p >> 23) & 0xFF != 0xFF][:400]
    path = tmp_path / "buffer.sqlite3"
    buffer = Buffer(path, COLUMNS)
    for k, values in enumerate(meter_values(every)):
        buffer.append("pac1", 1_780_000_000 + k, values)
    buffer.close()
    cfg = logger_db.config()
    send(path, cfg, None)  # the table as edgelog created it before: DOUBLE
    db = f"`{logger_db.database}`.`medicoes`"
    before = logger_db.query(f"SELECT seq, v1, v2, v3, v4 FROM {db} ORDER BY seq")

    # a FLOAT-typed logger writes into it as it is, and says nothing: DOUBLE holds float32
    buffer = Buffer(path, create=False)
    buffer.append("pac1", 1_780_001_000, meter_values(every[:4])[0])
    buffer.close()
    with caplog.at_level(logging.WARNING, logger="edgelog"):
        send(path, cfg, {c: "FLOAT" for c in COLUMNS})
    assert not [r for r in caplog.records if "column" in r.getMessage()]
    live = live_columns(logger_db.root.cursor(), logger_db.database, "medicoes")
    assert {live[c][0] for c in COLUMNS} == {"double"}

    # edgelog schema --alter-types, over the logger's login: a check query and one ALTER TABLE
    registers = "".join(
        f'\n[[meters.registers]]\nname = "{c}"\naddress = {1000 + 2 * i}\nunit = "V"\n'
        for i, c in enumerate(COLUMNS)
    )
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020) + registers)
    result = edgelog("schema", "--alter-types", config=config)
    assert result.returncode == 0, result.stderr
    statements = [s for s in result.stdout.split(";\n") if s.strip()]
    check = [s for s in statements if "SELECT SUM(" in s]
    alter = [s for s in statements if "ALTER TABLE" in s]
    assert len(check) == len(alter) == 1
    assert all(f"MODIFY COLUMN `{c}` FLOAT NULL COMMENT 'V'" in alter[0] for c in COLUMNS)
    sql = lambda s: "\n".join(line for line in s.splitlines() if not line.startswith("--"))  # noqa: E731
    assert logger_db.query(sql(check[0])) == [(0, 0, 0, 0)]  # every value fits: a float32's
    logger_db.query(sql(alter[0]))  # the DBA runs it

    live = live_columns(logger_db.root.cursor(), logger_db.database, "medicoes")
    assert {live[c][0] for c in COLUMNS} == {"float"} and live["v1"][1] == "V"
    after = logger_db.query(
        f"SELECT seq, {', '.join(f'CAST({c} AS DOUBLE)' for c in COLUMNS)} FROM {db} ORDER BY seq"
    )
    assert after[: len(before)] == before  # not one value changed
    again = edgelog("schema", "--alter-types", config=config)
    assert "nothing to do" in again.stdout

    # the check finds a value a FLOAT would round
    live_double = {"x": ("double", "")}
    (text,) = [s for s in alter_statements(live_double, {"x": "FLOAT"}, "d", "t") if "SELECT" in s]
    assert "CAST(CAST(`x` AS FLOAT) AS DOUBLE)" in text
    widen = alter_statements({"x": ("float", "")}, {"x": "DOUBLE"}, "d", "t")
    assert not any("SELECT" in s for s in widen)  # FLOAT -> DOUBLE: always exact, no check


def test_a_column_narrower_than_its_register_is_reported(
    logger_db: LoggerDB, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = logger_db.config()
    sink = MariaDBSink(cfg, "s", types={"e": "FLOAT"})
    sink.ensure_table({"e": "Wh"})
    sink.close()
    sink = MariaDBSink(cfg, "s", types={"e": "DOUBLE"})  # the register became float64
    with caplog.at_level(logging.WARNING, logger="edgelog"):
        sink.ensure_table({"e": "Wh"})
    sink.close()
    (line,) = [r.getMessage() for r in caplog.records if "column e" in r.getMessage()]
    assert "is FLOAT, but its register needs DOUBLE" in line and "edgelog schema --alter-types" in line
