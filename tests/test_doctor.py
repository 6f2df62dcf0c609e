"""`edgelog doctor` against the real things: a simulator, a real MariaDB, real files."""

from __future__ import annotations

from pathlib import Path

from helpers import edgelog, meter_toml, running_logger, wait_for, write_config
from pymodbus.constants import ExcCodes

from edgelog.simulate import Pac3100Simulator, SimulatorThread


def _lines(out: str) -> dict[str, str]:
    """check name -> its status, from doctor's output."""
    result = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] in ("OK", "WARN", "FAIL"):
            name = parts[1][:16].strip()
            result[name] = parts[0]
    return result


def test_doctor_on_a_healthy_site(tmp_path: Path, simulator, run_config: Path) -> None:
    with running_logger(run_config):
        wait_for(lambda: (tmp_path / "buffer.sqlite3").exists() and len(simulator.sim.served) > 3)
    result = edgelog("doctor", config=run_config)
    checks = _lines(result.stdout)
    assert checks["config"] == "OK"
    assert checks["meter pac1"] == "OK"
    assert "20 values in 1 request(s)" in result.stdout and "frequencia=" in result.stdout
    assert checks["buffer"] == "OK" and "quick_check ok" in result.stdout
    assert checks["mariadb"] == "OK" and "exactly the privileges it needs" in result.stdout
    assert checks["clock"] in ("OK", "WARN") and checks["service"] in ("OK", "WARN", "FAIL")
    failed = [name for name, status in checks.items() if status == "FAIL" and name != "service"]
    assert failed == [], result.stdout
    assert result.returncode == (1 if checks["service"] == "FAIL" else 0)


def test_doctor_names_each_problem_and_what_to_do(tmp_path: Path, simulator, logger_db) -> None:
    rtu = '[[meters]]\nname = "rtu1"\ntransport = "rtu"\ndevice = "/dev/ttyNOPE9"\n'
    closed = meter_toml(1, name="gone")  # nothing listens on port 1
    config = write_config(tmp_path, logger_db.toml(), closed, rtu)
    logger_db.query(f"REVOKE ALTER ON `{logger_db.database}`.* FROM '{logger_db.user}'@'localhost'")
    result = edgelog("doctor", config=config)
    checks = _lines(result.stdout)
    assert result.returncode == 1
    assert checks["serial device"] == "FAIL" and "/dev/ttyNOPE9 does not exist" in result.stdout
    assert checks["meter gone"] == "FAIL" and "no connection: cannot connect to 127.0.0.1:1" in result.stdout
    assert "no answer: check that 127.0.0.1:1 is reachable and speaks Modbus TCP" in result.stdout
    assert (
        checks["meter rtu1"] == "FAIL"
        and "/dev/ttyNOPE9 does not exist (USB adapter unplugged?)" in result.stdout
    )
    assert (
        "no answer: check A/B wiring and termination (120 Ω at both ends), then unit id 126, 19200 baud, "
        "parity N, 2 stop bits" in result.stdout
    )
    assert checks["mariadb"] == "FAIL" and "missing ALTER" in result.stdout
    assert checks["buffer"] == "WARN"  # not created yet


def test_doctor_warns_about_a_user_with_too_many_privileges(tmp_path: Path, simulator, logger_db) -> None:
    config = write_config(tmp_path, logger_db.toml(), meter_toml(simulator.port))
    logger_db.query(f"GRANT ALL ON `{logger_db.database}`.* TO '{logger_db.user}'@'localhost'")
    result = edgelog("doctor", config=config)
    assert _lines(result.stdout)["mariadb"] == "WARN"
    assert "DELETE" in result.stdout and "DROP" in result.stdout


def test_doctor_fails_on_a_readable_password_file_and_a_bad_config(tmp_path: Path, simulator, logger_db):
    config = write_config(tmp_path, logger_db.toml(), meter_toml(simulator.port))
    logger_db.password_file.chmod(0o644)
    result = edgelog("doctor", config=config)
    assert _lines(result.stdout)["mariadb"] == "FAIL" and "chmod 600" in result.stdout
    password = logger_db.password_file.read_text().strip()
    assert password not in result.stdout + result.stderr

    config.write_text(config.read_text() + "\nsurprise = 1\n")
    bad = edgelog("doctor", config=config)
    assert bad.returncode == 1
    assert _lines(bad.stdout)["config"] == "FAIL" and "surprise: unknown key" in bad.stdout


def test_doctor_says_how_the_link_to_mariadb_is_protected(tmp_path: Path, simulator, logger_db) -> None:
    meter = meter_toml(simulator.port)
    result = edgelog("doctor", config=write_config(tmp_path, logger_db.toml(), meter))
    checks = _lines(result.stdout)
    assert checks["tls"] == "OK" and f"unix socket {logger_db.socket}: local, needs no TLS" in result.stdout
    assert checks["sync path"] == "OK" and "binary fast path available (PyMySQL " in result.stdout

    # TLS without verification, to a server that offers none: both named
    config = write_config(tmp_path, logger_db.toml("tcp", ssl_mode="required", fast_path=False), meter)
    result = edgelog("doctor", config=config)
    checks = _lines(result.stdout)
    assert checks["tls"] == "WARN" and "a man in the middle reads and changes everything" in result.stdout
    assert checks["mariadb"] == "FAIL" and 'does not offer TLS, and ssl_mode = "required"' in result.stdout
    assert checks["sync path"] == "OK" and "fast_path = false" in result.stdout

    # the old key still works, and doctor says what to write instead
    config = write_config(tmp_path, logger_db.toml("tcp", ssl_verify_identity=True), meter)
    result = edgelog("doctor", config=config)
    assert "ssl_verify_identity is the old form of ssl_mode" in result.stdout
    assert "127.0.0.1 is this machine (loopback)" in result.stdout
    assert _lines(result.stdout)["mariadb"] == "OK"


def test_doctor_tells_an_exception_answer_from_no_answer(tmp_path: Path, simulator, logger_db) -> None:
    """A meter that answers with an exception is wired: the fix is the register map and the
    unit id, not the wiring. One that does not answer gets the list of causes."""
    simulator.sim.exception_code = ExcCodes.ILLEGAL_ADDRESS
    mute = SimulatorThread(Pac3100Simulator()).start()
    mute.sim.delay_s = 2.0  # answers after its timeout: no answer
    try:
        config = write_config(
            tmp_path, logger_db.toml(), meter_toml(simulator.port), meter_toml(mute.port, name="mute")
        )
        result = edgelog("doctor", config=config)
    finally:
        mute.sim.delay_s = 0
        mute.stop()
    checks = _lines(result.stdout)
    assert checks["meter pac1"] == "FAIL" and checks["meter mute"] == "FAIL"
    lines = result.stdout.splitlines()
    pac1 = lines.index(next(x for x in lines if "meter pac1" in x))
    assert "exception 02 illegal data address: unit 126" in lines[pac1]
    assert lines[pac1 + 1].strip().startswith("-> the meter answered, so wiring and line settings work;")
    assert "register map" in lines[pac1 + 1] and "unit id 126" in lines[pac1 + 1]
    assert "wiring and termination" not in lines[pac1 + 1]
    mute_at = lines.index(next(x for x in lines if "meter mute" in x))
    assert "timeout: no answer from unit 126" in lines[mute_at]
    assert lines[mute_at + 1].strip().startswith("-> no answer: check that 127.0.0.1:")
    assert "wiring, termination, baud, parity and stop bits" in lines[mute_at + 1]
