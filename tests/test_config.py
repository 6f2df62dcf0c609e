"""The config file: defaults, overrides, and an error naming file and key for every mistake.

Also the real command line: a bad config is one line on stderr, exit status 2,
and nothing is created on disk.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import ROOT, edgelog

from edgelog import config
from edgelog.buffer import Buffer, Space
from edgelog.errors import ConfigError
from edgelog.profiles import PAC3100, Register

RTU_METER = """\
[[meters]]
name = "pac1"
transport = "rtu"
device = "/dev/ttyUSB0"
"""


def write(tmp_path: Path, text: str, name: str = "edgelog.toml", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def document(
    *,
    top: str = "",
    mariadb: str = "",
    meter: str = "",
    registers: str = "",
    buffer: Path | None = None,
) -> str:
    """A valid config (one rtu meter) with extra lines added to each section."""
    text = f'site = "usina"\n{top}\n'
    if buffer is not None:
        text += f'[buffer]\npath = "{buffer}"\n\n'
    text += f'[mariadb]\nuser = "edgelog"\n{mariadb}\n\n{RTU_METER}{meter}\n'
    if registers:
        text += f"\n[[meters.registers]]\n{registers}\n"
    return text


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # every error names the file
    assert "\n" not in message
    return message


# -- a valid config ----------------------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, document())
    cfg = config.load(path)

    assert cfg.path == path
    assert cfg.site == "usina"
    assert cfg.mariadb.user == "edgelog"
    assert cfg.mariadb.database == "chapada_imperial"
    assert cfg.mariadb.table == "medicoes"
    assert (cfg.mariadb.host, cfg.mariadb.port) == ("localhost", 3306)
    assert cfg.mariadb.password is None and cfg.mariadb.password_file is None
    assert cfg.mariadb.read_password() is None
    assert cfg.buffer == config.BufferConfig()
    assert cfg.sync == config.SyncConfig()

    (meter,) = cfg.meters
    assert meter.name == "pac1" and meter.transport == "rtu" and meter.profile == "pac3100"
    assert meter.device == "/dev/ttyUSB0"
    # the PAC3100's factory settings: unit 126, 19200 baud, 8 data bits, no parity, 2 stop bits
    assert meter.unit_id == 126
    assert (meter.baudrate, meter.bytesize, meter.parity, meter.stopbits) == (19200, 8, "N", 2)
    assert meter.registers == PAC3100.registers
    assert meter.bus_key() == ("rtu", "/dev/ttyUSB0", 19200, 8, "N", 2)
    assert list(cfg.columns()) == [r.name for r in PAC3100.registers]
    assert cfg.columns()["frequencia"] == "Hz"


def test_tcp_meter_defaults_to_port_502_and_takes_no_serial_keys(tmp_path: Path) -> None:
    text = (
        'site = "s"\n[mariadb]\nuser = "u"\n[[meters]]\nname = "gw"\ntransport = "tcp"\nhost = "10.0.0.7"\n'
    )
    meter = config.load(write(tmp_path, text)).meters[0]
    assert (meter.host, meter.port, meter.unit_id, meter.device) == ("10.0.0.7", 502, 126, None)
    assert meter.bus_key() == ("tcp", "10.0.0.7", 502)

    message = load_error(tmp_path, text + "baudrate = 9600\n")
    assert "[meters[0]] baudrate: unknown key" in message


def test_meter_registers_override_a_profile_register_by_name_and_add_new_ones(tmp_path: Path) -> None:
    text = document() + (
        "\n[[meters.registers]]\n"
        'name = "frequencia"\n'
        "scale = 0.5\n"
        'unit = "mHz"\n'
        "\n[[meters.registers]]\n"
        'name = "energia_ativa_importada"\n'
        "address = 801\n"
        'type = "float64"\n'
        'function = "input"\n'
        'word_order = "little"\n'
        'unit = "Wh"\n'
    )
    meter = config.load(write(tmp_path, text)).meters[0]
    by_name = {r.name: r for r in meter.registers}
    assert len(meter.registers) == len(PAC3100.registers) + 1
    # overridden: only the keys given change, the rest comes from the profile
    assert by_name["frequencia"] == Register(
        name="frequencia", address=39, type="float32", function="holding", scale=0.5, unit="mHz"
    )
    assert by_name["energia_ativa_importada"] == Register(
        name="energia_ativa_importada",
        address=801,
        type="float64",
        function="input",
        word_order="little",
        unit="Wh",
    )
    untouched = [r for r in meter.registers if r.name not in ("frequencia", "energia_ativa_importada")]
    assert untouched == [r for r in PAC3100.registers if r.name != "frequencia"]


def test_holding_and_input_registers_at_the_same_address_do_not_overlap(tmp_path: Path) -> None:
    text = document(registers='name = "tensao_l1_n_fc4"\naddress = 1\nfunction = "input"\nunit = "V"')
    meter = config.load(write(tmp_path, text)).meters[0]
    assert {(r.name, r.function) for r in meter.registers if r.address == 1} == {
        ("tensao_l1_n", "holding"),
        ("tensao_l1_n_fc4", "input"),
    }


def test_the_shipped_example_config_is_valid_with_its_commented_parts_too(tmp_path: Path) -> None:
    example = (ROOT / "edgelog" / "example.toml").read_text(encoding="utf-8")
    cfg = config.load(write(tmp_path, example))
    assert cfg.site == "chapada-imperial"
    assert cfg.mariadb.password_file == Path("/etc/edgelog/mariadb.password")
    (meter,) = cfg.meters
    assert (meter.unit_id, meter.baudrate, meter.parity, meter.stopbits) == (126, 19200, "N", 2)
    assert meter.registers == PAC3100.registers

    # uncomment the second meter and the register example (lines "# key = ..." and "# [[...]]")
    tail = example.split("A second PAC3100", 1)[1]
    uncommented = "\n".join(re.findall(r"^# ((?:\[\[|[a-z_]+ = ).*)$", tail, flags=re.MULTILINE))
    cfg = config.load(write(tmp_path, example + "\n" + uncommented))
    assert [m.name for m in cfg.meters] == ["pac3100", "pac3100-b"]
    assert cfg.meters[0].bus_key() == cfg.meters[1].bus_key()
    assert cfg.meters[1].unit_id == 2
    assert cfg.columns()["fator_potencia_l1"] == ""


# -- errors name the file and the key --------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({"top": "sitee = 1"}, ": sitee: unknown key"),
        ({"mariadb": 'hots = "db"'}, "[mariadb] hots: unknown key"),
        ({"meter": "baud = 9600"}, "[meters[0]] baud: unknown key"),
        ({"meter": 'host = "10.0.0.1"'}, "[meters[0]] host: unknown key"),  # a tcp key on an rtu meter
        (
            {"registers": 'name = "frequencia"\nadress = 40'},
            "[meters[0].registers[0]] adress: unknown key",
        ),
        ({"top": "[sync]\ninterval = 5"}, "[sync] interval: unknown key"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(tmp_path: Path, parts: dict[str, str], expected: str) -> None:
    assert expected in load_error(tmp_path, document(**parts))


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({"mariadb": "port = 70000"}, "[mariadb] port: must be 1–65535, got 70000"),
        ({"mariadb": "port = 0"}, "[mariadb] port: must be 1–65535, got 0"),
        ({"mariadb": 'port = "abc"'}, '[mariadb] port: must be an integer, got "abc"'),
        ({"mariadb": "batch_size = true"}, "[mariadb] batch_size: must be an integer, got True"),
        ({"mariadb": "connect_timeout_s = -1"}, "[mariadb] connect_timeout_s: must be 0.1–3600, got -1.0"),
        (
            {"mariadb": "ssl_verify_identity = 1"},
            "[mariadb] ssl_verify_identity: must be true or false, got 1",
        ),
        ({"meter": 'parity = "X"'}, "[meters[0]] parity: must be one of 'N', 'E', 'O', got \"X\""),
        ({"meter": "stopbits = 3"}, "[meters[0]] stopbits: must be 1–2, got 3"),
        ({"meter": "baudrate = 12"}, "[meters[0]] baudrate: must be 300–1000000, a baud rate such as 9600"),
        ({"meter": "unit_id = 300"}, "[meters[0]] unit_id: must be 0–247, got 300"),
        ({"meter": "timeout_s = 0"}, "[meters[0]] timeout_s: must be 0.01–60, got 0.0"),
        ({"meter": 'interval_s = "1"'}, '[meters[0]] interval_s: must be a number, got "1"'),
        ({"meter": "interval_s = nan"}, "[meters[0]] interval_s: must be 0.05–86400, got nan"),
        ({"meter": 'profile = "pac9999"'}, "[meters[0]] profile: unknown profile 'pac9999'"),
        ({"meter": 'registers = "x"'}, '[meters[0]] registers: must be an array of tables, got "x"'),
        ({"top": "[buffer]\nmax_mb = 0"}, "[buffer] max_mb: must be 0.5–1000000, got 0.0"),
        ({"top": "[sync]\nbackoff_max_s = inf"}, "[sync] backoff_max_s: must be 0.05–86400, got inf"),
        (
            {"registers": 'name = "frequencia"\ntype = "float16"'},
            "[meters[0].registers[0]] type: must be one of 'int16', ",
        ),
        (
            {"registers": 'name = "frequencia"\nscale = 0'},
            "[meters[0].registers[0]] scale: must be a finite, non-zero number, got 0.0",
        ),
        (
            {"registers": 'name = "frequencia"\naddress = 65535'},
            "[meters[0].registers[0]] address: float32 at 65535 runs past 65535",
        ),
        ({"registers": 'name = "novo"'}, "[meters[0].registers[0]] address: is required"),
        ({"mariadb": 'table = "medicoes; DROP TABLE x"'}, "[mariadb] table: must be a SQL identifier"),
        ({"mariadb": 'database = "a`b"'}, "[mariadb] database: must be a SQL identifier"),
    ],
)
def test_bad_values_give_one_line_naming_file_and_key(
    tmp_path: Path, parts: dict[str, str], expected: str
) -> None:
    assert expected in load_error(tmp_path, document(**parts))


def test_a_value_with_a_newline_is_shown_escaped_so_the_error_stays_one_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, document().replace('site = "usina"', 'site = "usina\\nnova"'))
    assert "site: must be 1–64 letters, digits, '-', '_' or '.', got \"usina\\nnova\"" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[mariadb]\nuser = "u"\n' + RTU_METER, "site: is required"),
        ('site = "s"\n' + RTU_METER, "[mariadb]: table is required"),
        ('site = "s"\n[mariadb]\n' + RTU_METER, "[mariadb] user: is required"),
        ('site = "s"\n[mariadb]\nuser = " "\n' + RTU_METER, '[mariadb] user: must not be empty, got " "'),
        (
            'site = "s"\n[mariadb]\nuser = "u"\n[[meters]]\nname = "m"\ntransport = "udp"\n',
            "[meters[0]] transport: must be one of 'rtu', 'tcp', got \"udp\"",
        ),
        ('site = "s"\n[mariadb]\nuser = "u"\n', "meters: is required"),
        ('site = "s"\nmeters = []\n[mariadb]\nuser = "u"\n', "meters: at least one [[meters]] table"),
        ('site = "s"\nmariadb = 3\n' + RTU_METER, "[mariadb]: must be a table, got 3"),
        ('site = "bad site"\n[mariadb]\nuser = "u"\n' + RTU_METER, "site: must be 1–64 letters"),
        ('site = "s"\n[mariadb]\nuser = "u"\n[[meters]]\nname = "m"\n', "[meters[0]] transport: is required"),
        (
            'site = "s"\n[mariadb]\nuser = "u"\n[[meters]]\nname = "m"\ntransport = "rtu"\n',
            "[meters[0]] device: is required",
        ),
    ],
)
def test_missing_required_parts_are_named(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in load_error(tmp_path, text)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x; DROP TABLE", 'must match [a-z][a-z0-9_]* (at most 63 characters), got "x; DROP TABLE"'),
        ("Tensao", "must match [a-z][a-z0-9_]*"),
        ("tensão", "must match [a-z][a-z0-9_]*"),
        ("1fase", "must match [a-z][a-z0-9_]*"),
        ("a" * 64, "must match [a-z][a-z0-9_]*"),
        ("seq", "'seq' is reserved for edgelog's own columns"),
        ("measured_at", "'measured_at' is reserved"),
        ("meter", "'meter' is reserved"),
    ],
)
def test_unsafe_column_names_are_rejected(tmp_path: Path, name: str, expected: str) -> None:
    text = document(registers=f'name = "{name}"\naddress = 100')
    message = load_error(tmp_path, text)
    assert "[meters[0].registers[0]] name: " in message
    assert expected in message


def test_a_63_character_column_name_is_accepted(tmp_path: Path) -> None:
    name = "a" * 63
    cfg = config.load(write(tmp_path, document(registers=f'name = "{name}"\naddress = 100')))
    assert name in cfg.columns()


@pytest.mark.parametrize(
    ("registers", "expected"),
    [
        # a new value inside tensao_l1_n (addresses 1-2)
        ('name = "extra"\naddress = 2', "'tensao_l1_n' and 'extra' overlap at address 2"),
        # widening a profile register into its neighbour
        ('name = "tensao_l1_n"\ntype = "float64"', "'tensao_l1_n' and 'tensao_l2_n' overlap at address 3"),
        # moving one onto another
        ('name = "frequencia"\naddress = 37', "'corrente_neutro' and 'frequencia' overlap at address 37"),
    ],
)
def test_overlapping_registers_are_rejected(tmp_path: Path, registers: str, expected: str) -> None:
    message = load_error(tmp_path, document(registers=registers))
    assert "[meters[0]] registers: " in message
    assert expected in message


def test_duplicate_meter_names_are_rejected(tmp_path: Path) -> None:
    text = document() + "\n" + RTU_METER.replace("ttyUSB0", "ttyUSB1")
    assert "meters: meter name 'pac1' is used twice" in load_error(tmp_path, text)


def test_two_meters_must_agree_on_a_shared_columns_unit(tmp_path: Path) -> None:
    second = (
        RTU_METER.replace('"pac1"', '"pac2"') + '[[meters.registers]]\nname = "frequencia"\nunit = "mHz"\n'
    )
    message = load_error(tmp_path, document() + "\n" + second)
    assert "column 'frequencia' has unit 'Hz' on meter 'pac1' but 'mHz' on meter 'pac2'" in message


# -- secrets ---------------------------------------------------------------------------


def test_password_and_password_file_together_are_rejected(tmp_path: Path) -> None:
    secret = write(tmp_path, "s3cret\n", name="pw")
    message = load_error(tmp_path, document(mariadb=f'password = "x"\npassword_file = "{secret}"'))
    assert "[mariadb] password: give either password or password_file, not both" in message


def test_password_file_readable_by_others_is_refused_with_a_chmod_hint(tmp_path: Path) -> None:
    secret = write(tmp_path, "s3cret\n", name="pw", mode=0o644)
    cfg = config.load(write(tmp_path, document(mariadb=f'password_file = "{secret}"')))
    assert cfg.mariadb.password_file == secret

    with pytest.raises(ConfigError) as info:
        cfg.mariadb.read_password()
    message = str(info.value)
    assert f"[mariadb] password_file: {secret} is readable by every user (mode 0644)" in message
    assert f"chmod 600 {secret}" in message
    assert "s3cret" not in message

    secret.chmod(0o600)
    assert cfg.mariadb.read_password() == "s3cret"  # read at each call; the newline is dropped
    secret.write_text("rotated\r\n")
    assert cfg.mariadb.read_password() == "rotated"
    secret.write_text("first line\n# the rest is not the password\n")
    assert cfg.mariadb.read_password() == "first line"  # README: "(first line)"


def test_a_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    cfg = config.load(write(tmp_path, document(mariadb=f'password_file = "{missing}"')))
    with pytest.raises(ConfigError, match=r"\[mariadb\] password_file: .*nope does not exist; create it"):
        cfg.mariadb.read_password()


def test_a_password_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"senha\xe7\n")
    secret.chmod(0o600)
    message = load_error(tmp_path, document(mariadb=f'password_file = "{secret}"'))
    assert f"[mariadb] password_file: {secret} is not UTF-8 text" in message
    secret.write_text("senha\n")
    cfg = config.load(write(tmp_path, document(mariadb=f'password_file = "{secret}"')))
    secret.write_bytes(b"senha\xe7\n")  # broken while `run` runs: refused at the next read
    with pytest.raises(ConfigError, match=r"\[mariadb\] password_file: .*pw is not UTF-8 text"):
        cfg.mariadb.read_password()


def test_inline_password_in_a_world_readable_config_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, document(mariadb='password = "hunter2"'), mode=0o644)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: [mariadb] password: ")
    assert f"chmod 600 {path}" in message
    assert "hunter2" not in message

    path.chmod(0o600)
    cfg = config.load(path)
    assert cfg.mariadb.read_password() == "hunter2"
    assert "hunter2" not in repr(cfg.mariadb) and "hunter2" not in repr(cfg)


def test_a_world_readable_config_without_a_password_is_fine(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, document(), mode=0o644)).site == "usina"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read config: No such file"):
        config.load(tmp_path / "missing.toml")
    assert "not valid TOML" in load_error(tmp_path, 'site = "s\n')
    bad_utf8 = tmp_path / "latin1.toml"
    bad_utf8.write_bytes('site = "usinação"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad_utf8)


# -- the path ------------------------------------------------------------------------


def test_config_path_is_option_then_environment_then_etc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    assert config.resolve_path(None) == Path("/etc/edgelog/edgelog.toml")
    monkeypatch.setenv("EDGELOG_CONFIG", "")
    assert config.resolve_path(None) == Path("/etc/edgelog/edgelog.toml")
    monkeypatch.setenv("EDGELOG_CONFIG", "/srv/from-env.toml")
    assert config.resolve_path(None) == Path("/srv/from-env.toml")
    assert config.resolve_path("given.toml") == Path("given.toml")


def test_cli_reads_the_config_named_by_the_environment(tmp_path: Path) -> None:
    missing = tmp_path / "from-env.toml"
    env = {**os.environ, "EDGELOG_CONFIG": str(missing), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "edgelog", "schema"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"edgelog: error: {missing}: cannot read config: No such file or directory"
    ]

    write(tmp_path, document(), name="from-env.toml")
    result = subprocess.run(
        [sys.executable, "-m", "edgelog", "schema"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE" in result.stdout and "`chapada_imperial`" in result.stdout


# -- the real command line with a bad config -----------------------------------------


@pytest.mark.parametrize("command", ["schema", "run"])
@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({"mariadb": 'hots = "db"'}, "[mariadb] hots: unknown key"),
        ({"mariadb": 'port = "abc"'}, '[mariadb] port: must be an integer, got "abc"'),
        ({"registers": 'name = "x; DROP TABLE"\naddress = 100'}, "name: must match"),
        ({"registers": 'name = "a\\nb"\naddress = 100'}, "name: must match [a-z][a-z0-9_]*"),
        ({"top": "= broken"}, "not valid TOML"),
    ],
)
def test_cli_bad_config_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, command: str, parts: dict[str, str], expected: str
) -> None:
    buffer = tmp_path / "state" / "buffer.sqlite3"
    path = write(tmp_path, document(buffer=buffer, **parts))
    result = edgelog(command, config=path, timeout=30)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"edgelog: error: {path}: ")
    assert expected in lines[0]
    assert result.stdout == ""
    assert not buffer.exists() and not buffer.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edgelog.toml"]


def test_cli_missing_config_is_exit_2(tmp_path: Path) -> None:
    result = edgelog("run", config=tmp_path / "absent.toml", timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"edgelog: error: {tmp_path / 'absent.toml'}: cannot read config: No such file or directory"
    ]
    assert list(tmp_path.iterdir()) == []


# -- help text -----------------------------------------------------------------------


def test_help_runs_without_a_config(tmp_path: Path) -> None:
    result = edgelog("--help", timeout=30)
    assert result.returncode == 0
    assert "--config" in result.stdout and "EDGELOG_CONFIG" in result.stdout
    assert "/etc/edgelog/edgelog.toml" in result.stdout
    result = edgelog("schema", "--help", timeout=30)
    assert result.returncode == 0 and "CREATE TABLE" in result.stdout


def test_a_group_readable_password_file_is_refused_too(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o640)
    cfg = config.MariaDBConfig(user="edgelog", password_file=secret)
    with pytest.raises(ConfigError, match=r"readable by its group \(mode 0640\); run: chmod 600"):
        cfg.read_password()
    secret.chmod(0o600)
    assert cfg.read_password() == "s3cret"


# -- a documented range for every number ------------------------------------------------

#: (section, key, lowest, highest): each numeric key and its range, as in the README.
BOUNDS = [
    ("buffer", "max_mb", 0.5, 1_000_000),
    ("buffer", "keep_sent_days", 0, 3650),
    ("buffer", "commit_every_s", 0, 60),
    ("mariadb", "port", 1, 65535),
    ("mariadb", "batch_size", 1, 100_000),
    ("mariadb", "connect_timeout_s", 0.1, 3600),
    ("mariadb", "read_timeout_s", 0.1, 3600),
    ("mariadb", "write_timeout_s", 0.1, 3600),
    ("sync", "interval_s", 0.05, 86400),
    ("sync", "backoff_initial_s", 0.05, 86400),
    ("sync", "backoff_max_s", 0.05, 86400),
    ("sync", "quarantine_after", 1, 1000),
    ("meter", "unit_id", 0, 247),
    ("meter", "interval_s", 0.05, 86400),
    ("meter", "timeout_s", 0.01, 60),
    ("meter", "retries", 0, 5),
    ("meter", "baudrate", 300, 1_000_000),
    ("meter", "bytesize", 5, 8),
    ("meter", "stopbits", 1, 2),
    ("meter", "max_gap", 0, 125),
    ("registers", "address", 0, 65535),
]


def bound_document(section: str, key: str, value: float) -> str:
    """A valid config with `key = value`; the meter's other timings kept within the bus's
    time budget whatever the value (a tiny timeout, a long interval)."""
    line = f"{key} = {value!r}" if isinstance(value, float) else f"{key} = {value}"
    meter = "interval_s = 86400\ntimeout_s = 0.01\n" if key not in ("interval_s", "timeout_s") else ""
    if section == "meter" and key == "interval_s":
        meter = "timeout_s = 0.01\n"
    if section == "meter" and key == "timeout_s":
        meter = "interval_s = 86400\n"
    if section == "meter":
        return document(meter=meter + line)
    if section == "registers":
        return document(meter=meter, registers=f'name = "novo"\ntype = "uint16"\n{line}')
    if section == "mariadb":
        return document(mariadb=line)
    return document(top=f"[{section}]\n{line}")


def shown(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@pytest.mark.parametrize(("section", "key", "lo", "hi"), BOUNDS, ids=[f"{s}.{k}" for s, k, _, _ in BOUNDS])
def test_every_number_is_checked_against_its_documented_range(
    tmp_path: Path, section: str, key: str, lo: float, hi: float
) -> None:
    for ok in (lo, hi):
        config.load(write(tmp_path, bound_document(section, key, ok)))
    integer = isinstance(lo, int) and isinstance(hi, int) and key not in ("max_mb", "keep_sent_days")
    integer = integer and not key.endswith("_s")
    step = 1 if integer else max(abs(lo), 1) * 0.01
    where = {"meter": "[meters[0]]", "registers": "[meters[0].registers[0]]"}.get(section, f"[{section}]")
    for bad in (lo - step, hi + (1 if integer else hi)):
        message = load_error(tmp_path, bound_document(section, key, bad))
        assert f"{where} {key}: must be {shown(lo)}–{shown(hi)}" in message, message
    if not integer:
        for bad in ("inf", "nan", "1e300"):
            message = load_error(
                tmp_path, bound_document(section, key, 0).replace(f"{key} = 0", f"{key} = {bad}")
            )
            assert f"{key}: must be" in message, message
    readme = (ROOT / "README.md").read_text()
    assert f"{shown(lo)}–{shown(hi)}" in readme, "the README shows the range"


def test_sync_interval_1e300_is_refused_at_load(tmp_path: Path) -> None:
    """Above threading.TIMEOUT_MAX the sync thread died of OverflowError in Event.wait()."""
    message = load_error(tmp_path, document(top="[sync]\ninterval_s = 1e300"))
    assert "[sync] interval_s: must be 0.05–86400, got 1e+300" in message
    assert config.MAX_WAIT_S <= threading.TIMEOUT_MAX


def test_the_smallest_max_mb_holds_the_wal_the_reserve_and_a_few_rows(tmp_path: Path) -> None:
    """MIN_MAX_MB is no guess: a buffer that small takes rows without dropping any."""
    max_bytes = int(config.MIN_MAX_MB * 1024 * 1024)
    buffer = Buffer(tmp_path / "b.sqlite3", [r.name for r in PAC3100.registers], max_bytes=max_bytes)
    space = Space(buffer, max_bytes)
    try:
        assert space.reserve_bytes() < max_bytes
        for k in range(5):
            assert space.has_room()
            buffer.append("pac1", 1_790_000_000.0 + k, {r.name: 230.0 for r in PAC3100.registers})
        assert buffer.readings_total() == 5 and buffer.status().dropped_total == 0
        assert buffer.size_bytes() + space.reserve_bytes() <= max_bytes
    finally:
        buffer.close()


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ({"top": '[buffer]\npath = ""'}, '[buffer] path: must not be empty, got ""'),
        ({"mariadb": 'password_file = ""'}, '[mariadb] password_file: must not be empty, got ""'),
    ],
)
def test_an_empty_path_is_an_error_naming_the_key(
    tmp_path: Path, parts: dict[str, str], expected: str
) -> None:
    assert expected in load_error(tmp_path, document(**parts))


@pytest.mark.parametrize("content", ["", "\n", "\nsecret\n"])
def test_an_empty_password_file_is_refused_at_load_and_when_read(tmp_path: Path, content: str) -> None:
    secret = write(tmp_path, content, name="pw")
    message = load_error(tmp_path, document(mariadb=f'password_file = "{secret}"'))
    assert f"[mariadb] password_file: {secret} has an empty first line; the password must be on it" in message
    secret.write_text("ok\n")
    cfg = config.load(write(tmp_path, document(mariadb=f'password_file = "{secret}"')))
    secret.write_text(content)  # emptied while `run` runs
    with pytest.raises(ConfigError, match="has an empty first line"):
        cfg.mariadb.read_password()


def test_a_config_or_password_file_that_is_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # nobody writes to it: opening it to read would block for ever
    result = edgelog("run", config=fifo, timeout=30)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"edgelog: error: {fifo}: cannot read config: {fifo} is a FIFO, not a regular file"
    )
    directory = edgelog("run", config=tmp_path, timeout=30)
    assert directory.returncode == 2 and "is a directory, not a regular file" in directory.stderr

    pw = tmp_path / "pw"
    os.mkfifo(pw, 0o600)
    message = load_error(tmp_path, document(mariadb=f'password_file = "{pw}"'))
    assert f"[mariadb] password_file: {pw} is a FIFO, not a regular file" in message


def test_a_password_file_swapped_for_a_fifo_while_running_does_not_hang(tmp_path: Path) -> None:
    pw = write(tmp_path, "s3cret\n", name="pw")
    cfg = config.load(write(tmp_path, document(mariadb=f'password_file = "{pw}"')))
    pw.unlink()
    os.mkfifo(pw, 0o600)
    with pytest.raises(ConfigError, match="is a FIFO, not a regular file"):
        cfg.mariadb.read_password()


# -- the time budget of a bus -------------------------------------------------------------


def pac_on_line(name: str, unit: int, **extra: object) -> str:
    lines = [f'[[meters]]\nname = "{name}"\ntransport = "rtu"\ndevice = "/dev/ttyUSB0"\nunit_id = {unit}']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_three_pac3100_on_a_line_at_1_hz_fit_the_budget_with_the_defaults(tmp_path: Path) -> None:
    text = 'site = "s"\n[mariadb]\nuser = "u"\n' + "".join(pac_on_line(f"p{u}", u) for u in (1, 2, 3))
    cfg = config.load(write(tmp_path, text))
    assert {m.timeout_s for m in cfg.meters} == {config.DEFAULT_TIMEOUT_S} == {0.3}
    (bus,) = config.bus_budgets(cfg.meters)
    assert bus.worst_s == pytest.approx(0.9) and bus.problem() is None
    message = load_error(tmp_path, text + pac_on_line("p4", 4))  # a fourth: 1.2 s
    assert (
        "[meters] bus /dev/ttyUSB0 (19200 8N2) with p1, p2, p3, p4: 4 meter(s) × timeout_s 0.3 s" in message
    )
    assert "= 1.2 s, which must be less than the shortest interval_s on the bus (1 s, meter p1)" in message


def test_the_budget_uses_what_the_shared_client_does_longest_timeout_most_retries(tmp_path: Path) -> None:
    head = 'site = "s"\n[mariadb]\nuser = "u"\n'
    fits = (
        head + pac_on_line("a", 1, timeout_s=0.2, interval_s=2) + pac_on_line("b", 2, retries=1, interval_s=2)
    )
    cfg = config.load(write(tmp_path, fits))
    (bus,) = config.bus_budgets(cfg.meters)
    assert (bus.timeout_s, bus.retries, bus.worst_s) == (0.3, 1, pytest.approx(1.2))
    # the same two meters, one of them polled every second: the shortest interval counts
    message = load_error(tmp_path, fits.replace("interval_s = 2", "interval_s = 1", 1))
    assert "2 meter(s) × timeout_s 0.3 s × (1 + retries 1) = 1.2 s" in message
    assert "(1 s, meter a)" in message
    # on separate buses each has its own budget
    split = head + pac_on_line("a", 1) + pac_on_line("b", 2, retries=1).replace("ttyUSB0", "ttyUSB1")
    assert len(config.bus_budgets(config.load(write(tmp_path, split)).meters)) == 2


def test_meters_on_one_serial_device_must_agree_on_its_line_settings(tmp_path: Path) -> None:
    text = 'site = "s"\n[mariadb]\nuser = "u"\n' + pac_on_line("a", 1) + pac_on_line("b", 2, baudrate=9600)
    message = load_error(tmp_path, text)
    assert "meter 'b' uses /dev/ttyUSB0 (9600 8N2) but meter 'a' /dev/ttyUSB0 (19200 8N2)" in message
