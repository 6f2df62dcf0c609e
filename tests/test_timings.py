"""The timings log (`edgelog/timings.py`, `$EDGELOG_TIMINGS`): what the bench measures with."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import running_logger, wait_for

from edgelog.buffer import Buffer, NewReading
from edgelog.buffer.writer import Writer
from edgelog.timings import ENV_VAR, Polled, Timings, from_env


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_writer_notes_each_committed_row_with_its_poll_and_each_task(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.sqlite3", ["u_l1_n"])
    log = tmp_path / "timings.jsonl"
    writer = Writer(buffer.append_many, on_exit=buffer.disconnect, timings=Timings(log))
    writer.start()
    slot = 1_790_000_000.0
    polled = Polled(slot, slot + 0.001)
    assert writer.put(NewReading("pac1", slot + 0.02, {"u_l1_n": 230.0}), polled).done.wait(10)
    writer.put(NewReading("pac1", slot + 1, None, "skipped: poll overran"))  # no poll: a skipped slot
    writer.call(lambda: time.sleep(0.05))
    writer.stop()
    buffer.close()

    reading, gap, task = lines(log)
    assert reading["ev"] == "reading" and reading["meter"] == "pac1" and reading["error"] is False
    assert (reading["slot"], reading["poll"], reading["answer"]) == (slot, slot + 0.001, slot + 0.02)
    assert reading["committed"] > time.time() - 60  # stamped now, on the wall clock
    assert gap["error"] is True and gap["poll"] is None and gap["slot"] == gap["answer"] == slot + 1
    assert task["ev"] == "task" and task["end"] - task["start"] >= 0.05


def test_off_by_default_and_never_through_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    from_env.cache_clear()
    try:
        assert not from_env().on
    finally:
        from_env.cache_clear()
    target = tmp_path / "target"
    (tmp_path / "link").symlink_to(target)
    with caplog.at_level(logging.WARNING):
        timings = Timings(tmp_path / "link")
    assert not timings.on and not target.exists()
    assert f"{ENV_VAR}={tmp_path / 'link'}: cannot open it" in caplog.text
    timings.reading("pac1", None, 1.0, False)  # off: nothing written, nothing raised
    assert not target.exists()


def test_never_into_a_fifo_or_a_device(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING):
        assert not Timings(fifo).on  # no reader: fails at once, does not hang the logger
        assert not Timings("/dev/null").on
    assert f"{ENV_VAR}={fifo}: cannot open it" in caplog.text
    assert f"{ENV_VAR}=/dev/null: not a regular file" in caplog.text


def test_edgelog_run_writes_the_timings_log(tmp_path: Path, run_config: Path) -> None:
    """The real process: every row it stored has a line, its poll on the grid, poll <=
    answer <= committed; the sync thread notes the position and its drains."""
    interval = 0.2  # the simulator's, in `run_config`
    buffer = tmp_path / "buffer.sqlite3"
    log = tmp_path / "timings.jsonl"

    def logged(event: str) -> int:
        return sum(f'"ev":"{event}"' in x for x in log.read_text().splitlines()) if log.exists() else 0

    with running_logger(run_config, env={ENV_VAR: str(log)}):
        wait_for(lambda: logged("reading") >= 10 and logged("sent") >= 2, what="10 readings, 2 syncs")
    records = lines(log)
    readings = [r for r in records if r["ev"] == "reading"]
    reader = Buffer(buffer, create=False)
    try:
        stored = reader.readings_total()
        upto = reader.sent_upto
    finally:
        reader.close()
    assert len(readings) == stored >= 10
    for r in readings:
        assert r["meter"] == "pac1" and r["error"] is False
        assert abs(r["slot"] / interval - round(r["slot"] / interval)) < 1e-6  # a grid instant
        assert r["slot"] <= r["poll"] <= r["answer"] <= r["committed"] < r["slot"] + 5
    sent = [r for r in records if r["ev"] == "sent"]
    assert [s["upto"] for s in sent] == sorted(s["upto"] for s in sent) and sent[-1]["upto"] <= upto
    drains = [r for r in records if r["ev"] == "drain"]
    assert drains and all(d["start"] <= d["end"] for d in drains)
    assert sum(d["sent"] for d in drains) <= sum(s["rows"] for s in sent)
    statements = drains[-1]["sink"]  # the destination's statements by path, so far
    assert set(statements) == {"binary", "text", "binary_fallback"} and sum(statements.values()) >= 2
    (cadence,) = [r for r in records if r["ev"] == "cadence"]  # one meter, written at stop
    assert (cadence["meter"], cadence["interval_s"]) == ("pac1", interval)
    assert cadence["runs"] >= len(readings) - 1 and cadence["missed"] >= 0 and cadence["clock_jumps"] == 0
