"""`edgelog sync-status`: its exit status in each state, its screen, its JSON keys.

The readings come from a real `edgelog run` against the PAC3100 simulator, with
the real MariaDB reachable or not; only the wall clock is faked (`evaluate(now=...)`).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, LoggerDB, edgelog, meter_toml, running_logger, wait_for, write_config

from edgelog import config as config_mod
from edgelog import human, status
from edgelog.buffer import Buffer
from edgelog.simulate import SimulatorThread

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def sync_status(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = edgelog("sync-status", "--json", *args, config=config)
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == ("healthy" if result.returncode == 0 else "degraded")
    assert bool(data["problems"]) == (result.returncode == 1)
    return result.returncode, data


def documented_keys() -> dict[str, str]:
    """The README's `sync-status --json` key table: key -> its row."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### `sync-status --json` keys", 1)[1].split("\n#", 1)[0]
    keys: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            for key in re.findall(r"`([a-z_.<>]+)`", first):
                keys[key] = line
    return keys


def test_healthy_then_degraded_when_the_meter_falls_silent(
    simulator: SimulatorThread, logger_db: LoggerDB, run_config: Path
) -> None:
    with running_logger(run_config) as logger:
        wait_for(lambda: len(simulator.sim.served) >= 5, what="5 polls")
        wait_for(lambda: logger_db.query(f"SHOW TABLES IN `{logger_db.database}`"), what="the table")
        code, healthy = sync_status(run_config)
        assert code == 0, healthy["problems"]
        meter = healthy["meters"]["pac1"]
        assert meter["silent"] is False and meter["interval_s"] == 0.2
        assert meter["polls_last_hour"] >= 5 and meter["failed_polls_last_hour"] == 0
        assert 0 <= meter["age_s"] < 2
        assert healthy["mariadb_reachable"] is True and healthy["disk_free_bytes"] > 0
        text = edgelog("sync-status", config=run_config)
        assert text.returncode == 0, text.stderr
        assert "State    HEALTHY" in text.stdout and "pac1" in text.stdout
        assert not ANSI.search(text.stdout), "no colour when stdout is not a terminal"
        assert len(text.stdout.splitlines()) <= 24  # one screen

        simulator.stop()  # the meter stops answering; `run` records the failed polls
        data = wait_for(
            lambda: (r := sync_status(run_config))[0] == 1 and r[1],
            timeout=15,
            what="the meter to count as silent (10 intervals of 0.2 s)",
        )
        assert logger.alive(), logger.text()
    meter = data["meters"]["pac1"]
    assert meter["silent"] is True and meter["age_s"] > 10 * 0.2
    assert meter["failed_polls_last_hour"] >= 1 and meter["last_poll_error"]
    assert any(p.startswith("meter pac1: silent for ") for p in data["problems"])
    screen = edgelog("sync-status", config=run_config)
    assert screen.returncode == 1
    assert "State    DEGRADED: meter pac1: silent for" in screen.stdout
    assert "SILENT" in screen.stdout and "last poll failed: " in screen.stdout
    # a generous limit makes the same state healthy again
    assert sync_status(run_config, "--max-silence", "100000")[0] == 0


def test_an_old_backlog_is_degraded_and_a_young_one_only_a_note(
    simulator: SimulatorThread, offline_config: Path
) -> None:
    with running_logger(offline_config) as logger:
        wait_for(lambda: len(simulator.sim.served) >= 8, what="8 polls")  # 1.4 s of backlog at least
        young_code, young = sync_status(offline_config)  # default limit: 30 min
        old_code, old = sync_status(offline_config, "--max-lag", "1s")
        text = edgelog("sync-status", "--max-lag", "1s", config=offline_config)
        assert logger.alive(), logger.text()
    assert young_code == 0 and young["problems"] == []
    assert young["mariadb_reachable"] is False and young["unsent"] > 0
    assert "MariaDB unreachable now; readings wait in the buffer" in young["warnings"]
    assert young["drain_eta_s"] is None  # nothing drains while MariaDB is away
    assert old_code == 1 and old["max_lag_s"] == 1.0 and old["lag_s"] > 1.0
    (problem,) = old["problems"]
    assert problem.startswith("backlog ") and problem.endswith("(limit 1 s): MariaDB unreachable")
    assert text.returncode == 1
    assert "State    DEGRADED: backlog " in text.stdout and "waiting for MariaDB" in text.stdout
    assert "MariaDB  unreachable now: (2003)" in text.stdout

    # The same buffer, hours later (a faked wall clock): behind, and the meter silent.
    cfg = config_mod.load(offline_config)
    later = status.evaluate(cfg, now=time.time() + 2 * 3600, ping=False)
    assert later.exit_status == 1
    assert any(p.startswith("backlog 2 h 00 min behind") for p in later.problems), later.problems
    assert any(p.startswith("meter pac1: silent for 2 h 00 min") for p in later.problems)
    assert later.meters[0].polls_last_hour == 0  # nothing in the hour before that instant
    before_2026 = status.evaluate(cfg, now=1_700_000_000.0, ping=False)
    assert before_2026.exit_status == 1 and "before 2026" in before_2026.problems[0]


def test_time_to_drain_at_the_rate_the_worker_recorded(
    tmp_path: Path, simulator: SimulatorThread, logger_db: LoggerDB, offline_config: Path
) -> None:
    # readings buffered while MariaDB was away...
    with running_logger(offline_config):
        wait_for(lambda: len(simulator.sim.served) >= 6, what="6 polls")
    # ... and MariaDB back: the same buffer, a reachable server
    back = write_config(tmp_path, logger_db.toml(), meter_toml(simulator.port, interval_s=0.2))
    _, unknown = sync_status(back, "--max-silence", "1e9")
    assert unknown["mariadb_reachable"] is True and unknown["sync_rate_rows_per_s"] is None
    assert unknown["drain_eta_s"] is None
    assert "drain rate unknown until the sync worker records one" in unknown["warnings"]
    assert "time to drain unknown" in edgelog("sync-status", "--max-silence", "1e9", config=back).stdout

    buffer = Buffer(tmp_path / "buffer.sqlite3", create=False)
    buffer.mark_sent(buffer.sent_upto, rate=105.0)  # what the worker records after a batch
    buffer.close()
    _, known = sync_status(back, "--max-silence", "1e9")
    unsent = known["unsent"]
    assert unsent >= 6 and known["sync_rate_rows_per_s"] == 105.0
    # 5 readings/s keep arriving (one meter every 0.2 s): the backlog shrinks at 100 rows/s
    assert known["drain_eta_s"] == pytest.approx(unsent / 100.0, abs=1e-3)
    screen = edgelog("sync-status", "--max-silence", "1e9", config=back).stdout
    assert f"about {human.duration(unsent / 100.0)} to drain at 105 rows/s" in screen


def test_a_missing_or_corrupt_buffer_exits_2_with_one_line(tmp_path: Path, logger_db: LoggerDB) -> None:
    corrupt = tmp_path / "corrupt.sqlite3"
    corrupt.write_bytes(b"this is not an SQLite database" * 100)
    for path in (tmp_path / "missing.sqlite3", corrupt):
        config = write_config(tmp_path, logger_db.toml(), meter_toml(5020), buffer={"path": path})
        for args in (("sync-status",), ("sync-status", "--json")):
            result = edgelog(*args, config=config)
            assert result.returncode == 2, result.stdout
            assert result.stdout == ""
            (line,) = result.stderr.splitlines()
            assert line.startswith("edgelog: error: buffer ") and str(path) in line


def test_every_json_key_is_documented_in_the_readme(tmp_path: Path, logger_db: LoggerDB) -> None:
    buffer = Buffer(tmp_path / "buffer.sqlite3", ["tensao_l1_n"])
    buffer.append("pac1", time.time(), {"tensao_l1_n": 127.0})
    buffer.close()
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020))
    _, data = sync_status(config)
    documented = documented_keys()
    keys = {k.removesuffix(".<name>") for k in documented}
    assert set(data) - keys == set(), "undocumented sync-status --json keys"
    assert keys - set(data) == set(), "documented keys that are not there"
    meters_row = documented["meters.<name>"]
    for key in data["meters"]["pac1"]:
        assert f"`{key}`" in meters_row, key


def test_durations_sizes_and_colour_for_people(monkeypatch: pytest.MonkeyPatch) -> None:
    assert human.duration(2 * 3600 + 13 * 60 + 5) == "2 h 13 min"
    assert human.duration(245) == "4 min 05 s"
    assert human.duration(12) == "12 s" and human.duration(3 * 86400 + 4 * 3600) == "3 d 4 h"
    assert human.size(512) == "512 B" and human.size(12.3 * 1024 * 1024) == "12.3 MiB"
    assert human.count(1234567) == "1\u202f234\u202f567"
    assert human.parse_duration("1h30m") == 5400 and human.parse_duration("90") == 90
    assert human.parse_duration("15min") == 900 and human.parse_duration("1d") == 86400
    with pytest.raises(Exception, match="not a duration"):
        human.parse_duration("soon")
    bad = edgelog("sync-status", "--max-lag", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert human.use_colour(Terminal())  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert not human.use_colour(Terminal())  # type: ignore[arg-type]
    assert human.paint("x", "red", True) == "\x1b[31mx\x1b[0m" and human.paint("x", "red", False) == "x"


@pytest.mark.parametrize("problem", ["readable", "missing"])
def test_a_password_file_wrong_for_good_is_degraded_at_once_with_the_fix(
    tmp_path: Path, simulator: SimulatorThread, logger_db: LoggerDB, problem: str, run_config: Path
) -> None:
    """Not "MariaDB unreachable" and HEALTHY: no retry can succeed until someone fixes the
    file. `run` keeps logging meanwhile, and its sync worker records the kind of error."""
    password = logger_db.password_file
    secret = password.read_text()
    if problem == "readable":
        password.chmod(0o644)
        fix = f"is readable by every user (mode 0644); run: chmod 600 {password}"
    else:
        password.unlink()
        fix = f"{password} does not exist; create it, readable by the service user only (chmod 600)"
    buffer_path = tmp_path / "buffer.sqlite3"
    with running_logger(run_config) as logger:
        wait_for(lambda: len(simulator.sim.served) >= 3, what="polls")
        code, data = sync_status(run_config)
        assert code == 1
        first = data["problems"][0]
        assert first.startswith(f"configuration: [mariadb] password_file: {password}") and first.endswith(fix)
        assert data["config_problem"].endswith(fix)
        screen = edgelog("sync-status", config=run_config).stdout
        assert (
            "State    DEGRADED: configuration: [mariadb] password_file: " in screen and "chmod 600" in screen
        )

        def recorded() -> bool:
            buffer = Buffer(buffer_path, create=False)
            try:
                return buffer.get_meta("last_error_kind") == "config"
            finally:
                buffer.close()

        wait_for(recorded, what="the sync worker to record a config error")
        assert logger.alive(), logger.text()  # the readings go on meanwhile
        assert "no retry can succeed until this is fixed" in logger.text()

        # fixed: the worker sends, clears the error and its kind; healthy again
        if problem == "readable":
            password.chmod(0o600)
        else:
            password.write_text(secret)
            password.chmod(0o600)
        wait_for(lambda: not recorded(), what="the worker to clear the error kind")
        code, data = sync_status(run_config)
        assert code == 0 and data["config_problem"] is None, data["problems"]
    assert secret.strip() not in logger.text()


def test_gaps_are_counted_per_meter_by_cause(tmp_path: Path, logger_db: LoggerDB) -> None:
    now = time.time()
    buffer = Buffer(tmp_path / "buffer.sqlite3", ["tensao_l1_n"])
    rows = [
        ("pac1", now - 50, {"tensao_l1_n": 127.0}, None),
        ("pac1", now - 40, None, "timeout: no answer from unit 126 on 10.0.0.7:502 within 0.3 s"),
        ("pac1", now - 30, None, "timeout: no answer from unit 126 on 10.0.0.7:502 within 0.3 s"),
        ("pac1", now - 20, None, "exception 02 illegal data address: unit 126 on 10.0.0.7:502 refused"),
        ("pac1", now - 10, None, "skipped: poll overran"),
        ("pac1", now - 7200, None, "skipped: poll overran"),  # older than an hour: not counted
        ("pac2", now - 5, {"tensao_l1_n": 127.0}, None),
    ]
    for meter, at, values, error in rows:
        buffer.append(meter, at, values, error)
    buffer.close()
    config = write_config(tmp_path, logger_db.toml(), meter_toml(5020), meter_toml(5021, name="pac2"))
    health = status.evaluate(config_mod.load(config), now=now, ping=False)
    pac1, pac2 = health.meters
    assert pac1.gaps_last_hour == {"timeout": 2, "exception 02 illegal data address": 1, "skipped": 1}
    assert (pac1.polls_last_hour, pac1.failed_polls_last_hour, pac1.skipped_last_hour) == (5, 4, 1)
    assert pac2.gaps_last_hour == {} and pac2.skipped_last_hour == 0
    meters = health.to_json()["meters"]
    assert meters["pac1"]["gaps_last_hour"]["timeout"] == 2 and meters["pac1"]["skipped_last_hour"] == 1
    screen = status.render(health)
    assert "gaps (1 h): 2 timeout, 1 exception 02 illegal data address, 1 ski…" in screen
