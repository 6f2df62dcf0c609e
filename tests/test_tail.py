"""`edgelog tail`: the newest reading of each meter, from the buffer a real `edgelog run` fills."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import (
    ROOT,
    UNITS,
    LoggerDB,
    child_env,
    edgelog,
    meter_toml,
    running_logger,
    wait_for,
    write_config,
)

from edgelog.simulate import SimulatorThread
from edgelog.tail import fmt_value


def value_of(frame: str, name: str) -> tuple[float, str]:
    match = re.search(rf"^{name}\s+(-?[\d\u202f]+\.\d+) (\S+)$", frame, re.MULTILINE)
    assert match, f"{name} not in\n{frame}"
    return float(match[1].replace("\u202f", "")), match[2]


def test_tail_once_shows_the_newest_values_with_units_then_the_failure(
    simulator: SimulatorThread, offline_config: Path
) -> None:
    with running_logger(offline_config) as logger:
        wait_for(lambda: len(simulator.sim.served) >= 3, what="3 polls")
        # while `run` writes (MariaDB away meanwhile)
        result = edgelog("tail", "--once", config=offline_config)
        assert result.returncode == 0, result.stderr
        frame = result.stdout
        served = list(simulator.sim.served)
        simulator.stop()  # the meter goes quiet: the next polls fail
        wait_for(
            lambda: "newest poll FAILED" in edgelog("tail", "--once", config=offline_config).stdout,
            what="a gap",
        )
        failed = edgelog("tail", "--once", config=offline_config)
        assert logger.alive(), logger.text()

    assert frame.startswith("edgelog tail · site test-site · ")
    assert re.search(r"^reading\s+\d\d:\d\d:\d\d UTC, [\d.]+ s ago", frame, re.MULTILINE), frame
    shown = {name: value_of(frame, name) for name in UNITS}
    expected_units = {n: {"Wh": "kWh", "varh": "kvarh"}.get(u, u) for n, u in UNITS.items()}
    assert {name: unit for name, (_, unit) in shown.items()} == expected_units
    # the values are one of the answers the meter served, as rounded on screen
    assert any(
        all(abs(shown[n][0] - a[n] * (1e-3 if UNITS[n] in ("Wh", "varh") else 1)) <= 0.006 for n in UNITS)
        for a in served
    ), frame
    assert 110 < shown["tensao_l1_n"][0] < 140 and shown["tensao_l1_n"][1] == "V"

    text = failed.stdout
    assert failed.returncode == 0
    # the simulator is gone, its port closed: the poll names that cause (meter.py's messages)
    assert re.search(
        r"^pac1: newest poll FAILED [\d.]+ s ago: no connection: cannot connect to 127\.0\.0\.1:\d+",
        text,
        re.MULTILINE,
    ), text
    assert "pac1: the values above are from the last good reading" in text
    assert value_of(text, "frequencia")[1] == "Hz"  # the last good values are still shown


def test_tail_refreshes_until_interrupted(simulator: SimulatorThread, offline_config: Path) -> None:
    with running_logger(offline_config):
        wait_for(lambda: len(simulator.sim.served) >= 2, what="2 polls")
        cmd = [sys.executable, "-m", "edgelog", "--config", str(offline_config), "tail", "--every", "0.3"]
        tail = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=ROOT
        )
        time.sleep(2.0)
        tail.send_signal(signal.SIGINT)  # Ctrl+C
        out, err = tail.communicate(timeout=20)
    assert tail.returncode == 0, err
    frames = out.split("edgelog tail · ")[1:]
    assert len(frames) >= 3, out  # refreshed every 0.3 s
    times = [re.search(r"reading\s+(\d\d:\d\d:\d\d)", f)[1] for f in frames]  # type: ignore[index]
    assert times[-1] > times[0], times  # newer readings as `run` goes on
    assert "\x1b[" not in out  # not a terminal: frames follow each other, no screen clearing


def test_tail_errors(tmp_path: Path, logger_db: LoggerDB) -> None:
    config = write_config(
        tmp_path, logger_db.toml(), meter_toml(5020), buffer={"path": tmp_path / "none.sqlite3"}
    )
    missing = edgelog("tail", "--once", config=config)
    assert missing.returncode == 2 and missing.stdout == ""
    (line,) = missing.stderr.splitlines()
    assert line.startswith("edgelog: error: buffer ") and "none.sqlite3" in line
    unknown = edgelog("tail", "--once", "--meter", "pac9", config=config)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "edgelog: error: tail: no meter 'pac9' in the config (meters: pac1)"
    assert fmt_value(1234567.0, "Wh") == ("1\u202f234.57", "kWh") and fmt_value(None, "V") == ("NULL", "")
