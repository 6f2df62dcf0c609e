"""CI smoke of the benchmark suite: `python -m bench --quick` runs end to end.

Not a timed test: nothing here compares a rate with a target (the bench reports
those; machines are noisy). It checks that every measurement ran, that its JSON
has the documented keys with sane values, and the correctness checks the bench
makes on the way (the drained table equals the LOAD DATA one row by row, no
duplicates, the readings polled during the drain all arrived).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest
from helpers import ROOT, child_env

pytestmark = pytest.mark.slow


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "latest.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--workdir", str(tmp / "work")],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads(out.read_text())


def test_quick_bench_prints_one_table(quick: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    result, data = quick
    lines = result.stdout.splitlines()
    assert "measure" in lines[0] and "value" in lines[0]
    for section in (
        "1 drain",
        "1 paths",
        "1 profile",
        "2 live",
        "3 poll",
        "4 cadence",
        "5 footprint",
        "6 scaling",
        "7 wear",
    ):
        assert any(line.startswith(section) for line in lines), section
    assert sum(line.startswith("targets") for line in lines) == len(data["targets"])


def test_quick_bench_json_keys_and_values(
    quick: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, r = quick
    assert r["mode"] == "quick"
    for key in ("uname", "nproc", "cpu", "mariadb", "python", "sqlite", "pymysql"):
        assert r["machine"][key], key
    assert "MariaDB" in r["machine"]["mariadb"]

    d = r["drain"]
    n = d["rows"]
    assert n == r["plan"]["n_drain"] == 20_000
    for pair in d["pairs"]:
        assert pair["ceiling"]["rows"] == pair["ceiling"]["distinct"] == n
        assert pair["ceiling"]["warnings"] == 0
        assert pair["drain"]["rows"] == pair["drain"]["distinct"] == pair["drain"]["sent"] == n
        assert _positive(pair["drain"]["peak_rss_mib"])
    for key in ("drain_rows_per_s", "ceiling_rows_per_s", "ratio_vs_ceiling", "ratio_vs_naive"):
        assert _positive(d[key]), key
    assert _positive(d["naive"]["rows_per_s"]) and d["naive"]["sample_rows"] > 0
    # every drained row equals the LOAD DATA ceiling's copy of it (a full join in MariaDB)
    assert (d["content"]["joined"], d["content"]["differ"]) == (n, 0)
    # and a sample of them equals the buffer file's rows, value for value
    assert d["content"]["drain_vs_buffer_sample_mismatches"] == 0
    assert r["drain_tcp"]["drain"]["rows"] == r["drain_tcp"]["drain"]["distinct"] == r["drain_tcp"]["rows"]

    paths = {p["variant"]: p for p in r["write_paths"]["paths"]}
    assert set(paths) == {"binary", "load_data", "text", "v0.1"}
    for p in paths.values():
        assert p["rows"] == p["distinct"] == r["write_paths"]["rows"]
        assert _positive(p["rows_per_s"]) and _positive(p["server_cpu_us_per_row"])
    assert paths["binary"]["sink_stats"]["binary"] > 0 and paths["binary"]["sink_stats"]["text"] == 0
    assert paths["load_data"]["sink_stats"]["load_data"] > 0
    assert paths["text"]["sink_stats"]["binary"] == 0

    prof = r["profile"]
    assert _positive(sum(prof["binary"]["steps_wall_s"].values()))
    assert any("SQLite read" in k for k in prof["binary"]["steps_wall_s"])
    assert prof["cprofile_binary"]["top"]

    live = r["live_drain"]
    assert live["exit_status"] == 0
    assert _positive(live["rows_per_s"])
    assert live["mariadb_rows"] == live["mariadb_distinct"] >= live["backlog_rows"]
    assert live["live_readings_during_drain"] > 0
    assert all(_positive(v) for k, v in live["rss_mib_during_drain"].items() if k.startswith("at_"))
    # from the logger's own timings log: its cadence's counters at stop, its sink's statements
    (counters,) = live["cadence_counters"]
    assert counters["interval_s"] == live["interval_s"]
    assert counters["runs"] >= live["live_readings_during_drain"] > 0
    assert live["sink_stats"]["binary"] > 0

    s = r["steady"]
    assert s["exit_status"] == 0
    assert s["readings"] > 0 and s["failed_polls"] == 0
    assert s["requests_per_poll_planned"] >= 1
    assert abs(s["requests_per_poll"] - s["requests_per_poll_planned"]) < 0.05
    assert s["response_to_durable"]["n"] == s["readings"]
    assert [c["runs"] for c in s["cadence_counters"]] == [s["readings"]]  # every run left a row
    assert _positive(s["rss_mib_steady_median"]) and _positive(s["write_bytes_per_reading"])

    w = r["card_wear"]
    assert w["exit_status"] == 0 and w["readings"] > 0 and w["failed_polls"] == 0
    assert w["interval_s"] == 1.0 and w["mariadb_rows"] >= w["readings"]
    for key in ("write_bytes_per_reading", "checkpoint_bytes_per_reading", "total_bytes_per_reading"):
        assert _positive(w[key]), key
    assert w["total_bytes_per_reading"] > w["write_bytes_per_reading"]

    assert [row["rows"] for row in r["scaling_n"]] == list(r["plan"]["scaling_n"])
    assert [m["meters"] for m in r["scaling_meters"]] == [1, 8, 32]
    for m in r["scaling_meters"]:
        assert m["readings"] > 0 and _positive(m["rows_per_s"]) and _positive(m["peak_rss_mib"])

    for name, target in r["targets"].items():
        assert set(target) == {"value", "target", "met"}, name
        assert target["met"] in (True, False, None), name
