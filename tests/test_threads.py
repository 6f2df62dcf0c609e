"""No thread of `edgelog run` dies quietly: a bus poller, the buffer writer or the sync
worker that ends while the service runs stops the process with exit status 1 (systemd
restarts it) and a log line naming the thread and why.

Each thread is killed in turn inside the real process by `tests/inject/sitecustomize.py`
(test-only, on PYTHONPATH for these runs): an exception raised from the thread's own
loop, a BaseException the worker does not catch, or a loop that just returns.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import running_logger, start_edgelog, wait_for

from edgelog.buffer import Buffer
from edgelog.simulate import SimulatorThread


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("bus", "thread bus 127.0.0.1:{port} died: InjectedFault: injected: a bug in the poll loop"),
        ("writer", "thread buffer-writer died: InjectedFault: injected: a bug in the writer's loop"),
        ("sync", "thread sync died: InjectedDeath: injected: the sync thread dies"),
        ("sync-return", "thread sync ended unexpectedly"),
    ],
)
def test_a_thread_that_ends_stops_the_process_with_exit_1_and_says_why(
    tmp_path: Path, simulator: SimulatorThread, fault: str, expected: str, run_config: Path
) -> None:
    log = tmp_path / "run.log"
    started = time.monotonic()
    proc = start_edgelog("run", config=run_config, log=log, fault=fault)
    try:
        status = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text(errors="replace")
    assert status == 1, text
    assert time.monotonic() - started < 30, "the process must stop soon after the thread ended"
    line = next((x for x in text.splitlines() if expected.format(port=simulator.port) in x), None)
    assert line is not None, text
    assert "stopping with exit status 1 so that systemd restarts edgelog" in line
    if fault in ("bus", "sync"):  # died after some polls, the writer alive
        # the readings polled before it are committed
        buffer = Buffer(tmp_path / "buffer.sqlite3", create=False)
        try:
            assert buffer.readings_total() >= 1
        finally:
            buffer.close()


def test_without_a_fault_the_hook_changes_nothing(simulator: SimulatorThread, run_config: Path) -> None:
    """The same hook directory on PYTHONPATH, EDGELOG_TEST_FAULT unset: a normal run, exit 0."""
    with running_logger(run_config, fault="", timeout=60) as logger:
        wait_for(lambda: len(simulator.sim.served) >= 5, what="5 polls")
        assert logger.alive(), logger.text()
