"""The buffer writer thread (`edgelog/buffer/writer.py`) on a real SQLite buffer."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

from edgelog.buffer import Buffer
from edgelog.buffer.store import NewReading
from edgelog.buffer.writer import Writer


def reading(i: int) -> NewReading:
    return NewReading("pac1", 1_790_000_000.0 + i, {"u_l1_n": 230.0 + i})


def test_readings_waiting_for_a_slow_commit_are_committed_together_in_order(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.sqlite3", ["u_l1_n"])
    calls: list[int] = []
    order: list[str] = []

    def store(readings: Sequence[NewReading]) -> None:
        calls.append(len(readings))
        buffer.append_many(readings)
        order.append(f"store {len(readings)}")

    writer = Writer(store, on_exit=buffer.db.close)
    writer.start()
    first = writer.put(reading(0))
    assert first.done.wait(10)
    # a stall: the writer is busy (a task standing in for a long fsync) while polls go on
    started, release = threading.Event(), threading.Event()
    writer.call(lambda: (started.set(), release.wait(10), order.append("stall")))
    assert started.wait(10)
    waiting = [writer.put(reading(i)) for i in range(1, 8)]
    assert not any(h.done.is_set() for h in waiting)
    assert writer.pending() >= 7
    release.set()
    assert all(h.done.wait(10) for h in waiting)
    writer.call(lambda: order.append("task"))
    last = writer.put(reading(8))
    writer.stop()  # commits what was handed over
    assert last.done.is_set()

    assert calls == [1, 7, 1]  # the seven that waited: one transaction
    assert order == ["store 1", "stall", "store 7", "task", "store 1"]
    rows = buffer.db.execute_sql('SELECT seq, measured_at, "u_l1_n" FROM readings ORDER BY seq').fetchall()
    assert [r[1] for r in rows] == [reading(i).measured_at for i in range(9)]
    assert [r[2] for r in rows] == [230.0 + i for i in range(9)]
    buffer.close()


def test_a_failing_store_does_not_end_the_writer(tmp_path: Path, caplog) -> None:
    stored: list[float] = []

    def store(readings: Sequence[NewReading]) -> None:
        if readings[0].measured_at == reading(1).measured_at:
            raise RuntimeError("boom")
        stored.extend(r.measured_at for r in readings)

    writer = Writer(store)
    writer.start()
    handoffs = []
    for i in range(3):
        handoffs.append(writer.put(reading(i)))
        assert handoffs[-1].done.wait(10)  # one at a time: three calls
    writer.stop()
    assert stored == [reading(0).measured_at, reading(2).measured_at]
    assert all(h.done.is_set() for h in handoffs)  # the poll thread never waits for nothing
    assert "buffer writer: unexpected error" in caplog.text


def test_a_task_queues_its_next_step_behind_the_readings_waiting(tmp_path: Path) -> None:
    """Housekeeping goes in steps; readings handed over meanwhile are committed between them."""
    log: list[str] = []
    started, gate = threading.Event(), threading.Event()
    writer: Writer

    def store(readings: Sequence[NewReading]) -> None:
        log.append(f"store {len(readings)}")

    def step(i: int) -> None:
        log.append(f"step {i}")
        if i == 0:
            started.set()
            gate.wait(10)  # readings arrive while this step runs
        if i < 2:
            writer.call(lambda: step(i + 1))

    writer = Writer(store, max_pending=2)
    writer.start()
    writer.call(lambda: step(0))
    assert started.wait(10)
    handoffs = [writer.put(reading(0)), writer.put(reading(1))]  # the queue is now full
    gate.set()
    assert all(h.done.wait(10) for h in handoffs)
    writer.stop()
    # step 0 queued step 1 without blocking on the full queue; the readings came first
    assert log == ["step 0", "store 2", "step 1", "step 2"]


def test_a_full_queue_makes_the_poll_thread_wait(tmp_path: Path) -> None:
    """Back-pressure: with `max_pending` items waiting for a stuck disk, the next hand-over
    blocks (so the cadence, and with it the watchdog pings, stop) until the disk moves."""
    stuck, started = threading.Event(), threading.Event()
    stored: list[float] = []

    def store(readings: Sequence[NewReading]) -> None:
        started.set()
        stuck.wait(10)
        stored.extend(r.measured_at for r in readings)

    writer = Writer(store, max_pending=2)
    writer.start()
    writer.put(reading(0))  # taken by the writer, which then hangs in store()
    assert started.wait(10)
    writer.put(reading(1))
    writer.put(reading(2))  # two waiting: the queue is full
    third_done = threading.Event()
    poller = threading.Thread(target=lambda: (writer.put(reading(3)), third_done.set()))
    poller.start()
    assert not third_done.wait(0.3), "a hand-over went through with the queue full"
    stuck.set()
    assert third_done.wait(10)
    poller.join(10)
    writer.stop()
    assert stored == [reading(i).measured_at for i in range(4)]


def test_commit_every_s_commits_a_group_of_readings_at_once(tmp_path: Path) -> None:
    """`[buffer] commit_every_s`: readings handed over within the period are committed
    together, in order, one transaction; the poll thread never waits for the group's
    commit (`done` at hand-over); a stop commits the group being collected."""
    buffer = Buffer(tmp_path / "b.sqlite3", ["u_l1_n"])
    calls: list[int] = []

    def store(readings: Sequence[NewReading]) -> None:
        calls.append(len(readings))
        buffer.append_many(readings)

    writer = Writer(store, on_exit=buffer.disconnect, commit_every_s=0.5)
    writer.start()
    first = [writer.put(reading(i)) for i in range(5)]
    assert all(h.done.is_set() for h in first)
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert calls == [5]  # one commit for the five, once the period was over
    last = [writer.put(reading(i)) for i in range(5, 8)]
    writer.stop()  # well within the next period: the stop commits them
    assert calls == [5, 3] and all(h.done.is_set() for h in last)
    assert [r[2] for r in buffer.unsent(10)] == [reading(i).measured_at for i in range(8)]
    buffer.close()
