"""The thread that commits `edgelog run`'s readings, so a slow disk never costs a sample.

A commit is an fsync, and an fsync is not bounded: an SD card busy with wear
levelling, or a disk shared with a busy MariaDB, can take a few hundred ms.
If the poll loop waited for each commit, every such stall longer than the
interval would skip a sample (read never, lost for sure). Instead:

* the poll thread hands each reading to the `Writer` and waits for its commit
  only until the next poll is due. Normally the commit takes
  milliseconds and the reading is durable before the next poll starts, as
  before: a crash loses at most the reading in flight;
* when a commit is slower than that, polling goes on, on time, and the readings
  wait here, in memory and in order, until the storage catches up. They are
  then committed together, in one transaction (one fsync). Only a crash during
  the stall loses them: a possible loss instead of a certain one.

The writer also runs the other buffer writes of the poll side (housekeeping),
in the same order, so one thread owns them all. A long task goes in short steps:
a step that calls `call()` for the next one has it run after the readings
handed over meanwhile, so no task holds a commit up for long. At most `max_pending` items
wait: past that the poll thread blocks (back-pressure), and a disk that hangs
for good stops the cadence and so the systemd watchdog pings.

Groups (``[buffer] commit_every_s``, for sites sampling faster than 1 Hz): the
writer keeps the readings handed over for up to `commit_every_s` seconds and
commits them together, one fsync for the group instead of one per reading. A
power cut then loses the readings of the group being collected: up to
`commit_every_s` seconds of them (docs/guarantees.md). The poll thread never
waits for a group's commit (`Handoff.done` is set when the reading is handed
over). A task (housekeeping) or a stop commits the group first.

With ``$EDGELOG_TIMINGS`` set (`edgelog/timings.py`), the writer notes each row it
committed (with the poll it came from, `Polled`) and each task, in that log.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..timings import Polled, Timings, from_env
from .store import NewReading

log = logging.getLogger(__name__)

#: Readings (and tasks) that may wait for the storage: ~10 min at 1 Hz, ~1 min at 10 Hz.
MAX_PENDING = 600


@dataclass(eq=False)
class Handoff:
    """A reading on its way to the buffer; `done` is set once it is committed (or dropped),
    or at once when readings are committed in groups (the poll thread need not wait)."""

    reading: NewReading
    polled: Polled | None = None  # the poll it came from (None: a gap for a skipped slot)
    done: threading.Event = field(default_factory=threading.Event)


class Writer:
    """One thread that calls `store(readings)` for readings handed over, grouping those that
    wait together into one call, and runs tasks in between, all in submission order."""

    def __init__(
        self,
        store: Callable[[Sequence[NewReading]], object],
        max_pending: int = MAX_PENDING,
        on_start: Callable[[], object] | None = None,
        on_exit: Callable[[], object] | None = None,
        commit_every_s: float = 0.0,
        timings: Timings | None = None,
    ):
        self._store = store
        self.timings = from_env() if timings is None else timings
        self.commit_every_s = commit_every_s
        self._on_start = on_start
        self._on_exit = on_exit
        self._queue: queue.Queue[Handoff | Callable[[], object] | None] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._later: collections.deque[Callable[[], object]] = collections.deque()

    def start(self) -> None:
        """Start the thread; `on_start` (e.g. opening its connection) runs first on it."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="buffer-writer", daemon=True)
        self._thread.start()
        ready.wait()

    def pending(self) -> int:
        return self._queue.qsize()

    def is_alive(self) -> bool:
        """The thread runs (False before start, after stop, and after it died)."""
        return self._thread is not None and self._thread.is_alive()

    def put(self, reading: NewReading, polled: Polled | None = None) -> Handoff:
        """Hand `reading` over (from the poll `polled`, for the timings log)."""
        handoff = Handoff(reading, polled)
        if self.commit_every_s:
            handoff.done.set()
        self._queue.put(handoff)  # blocks only with max_pending items waiting
        return handoff

    def call(self, task: Callable[[], object]) -> None:
        """Run `task` on the writer thread, after what is already waiting. A task may call
        this for a next step: it then runs after what waits at that moment (never blocks)."""
        if threading.current_thread() is self._thread:
            self._later.append(task)
        else:
            self._queue.put(task)

    def stop(self) -> None:
        """Commit everything handed over so far, then end the thread."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()

    def _run(self, ready: threading.Event) -> None:
        if self._on_start is not None:
            self._guarded(self._on_start)
        ready.set()
        group: list[Handoff] = []
        due = 0.0  # with commit_every_s: when the group is committed (monotonic)
        try:
            running = True
            while running:
                if self._later:
                    timeout: float | None = 0.0
                elif group:
                    timeout = max(0.0, due - time.monotonic())
                else:
                    timeout = None
                for item in self._items(timeout):
                    if isinstance(item, Handoff):
                        if not group:
                            due = time.monotonic() + self.commit_every_s
                        group.append(item)
                        continue
                    group = self._flush(group)
                    if item is None:
                        running = False
                        break
                    self._task(item)
                if not running or time.monotonic() >= due:
                    group = self._flush(group)
                if running and self._later and self._queue.empty():
                    group = self._flush(group)
                    self._task(self._later.popleft())
        finally:
            if self._on_exit is not None:
                self._guarded(self._on_exit)

    def _items(self, timeout: float | None) -> list[Handoff | Callable[[], object] | None]:
        """What waits in the queue; first waiting up to `timeout` (None: for ever) for one."""
        items = []
        if timeout is None or timeout > 0:
            with contextlib.suppress(queue.Empty):
                items.append(self._queue.get(timeout=timeout))
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _flush(self, group: list[Handoff]) -> list[Handoff]:
        """Store `group` (if any); returns the next, empty group."""
        if group:
            try:
                self._guarded(lambda: self._store([h.reading for h in group]))
            finally:
                if self.timings.on:
                    for h in group:
                        r = h.reading
                        self.timings.reading(r.meter, h.polled, r.measured_at, r.error is not None)
                for handoff in group:
                    handoff.done.set()
        return []

    def _task(self, task: Callable[[], object]) -> None:
        started = time.time()
        self._guarded(task)
        if self.timings.on:
            self.timings.task(started)

    @staticmethod
    def _guarded(task: Callable[[], object]) -> None:
        """The thread outlives any one failure: `store` handles the expected ones itself."""
        try:
            task()
        except Exception:
            log.exception("buffer writer: unexpected error")
