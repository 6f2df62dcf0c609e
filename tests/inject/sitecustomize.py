"""Test-only: faults injected into a real `edgelog run` process from inside.

Nothing in edgelog reads this file. Python imports it at start-up (as the
`sitecustomize` module) only when a test puts this directory first on PYTHONPATH
(`tests/test_threads.py`, `tests/test_systemd.py`), and it does something only if
EDGELOG_TEST_FAULT is set:

* `bus`: the third poll raises (a bug in the poll loop): that bus thread dies;
* `writer`: the buffer writer's third commit of readings raises outside the
  guarded store call (a bug in the writer's own loop): the writer thread dies;
* `sync`: the sync worker's second round raises a BaseException (as a
  KeyboardInterrupt or SystemExit would; the worker catches only Exception):
  the sync thread dies;
* `sync-return`: the sync worker's loop returns at once, without an error;
* `hang:PATH`: a poll of the meter named in the file PATH blocks while that file
  exists (a driver that hangs).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any


class InjectedFault(Exception):
    """A bug in a loop, raised on purpose."""


class InjectedDeath(BaseException):
    """Not an Exception: nothing in edgelog catches it."""


def _on_call(n: int, exc: BaseException, wrapped: Callable[..., Any]) -> Callable[..., Any]:
    """`wrapped`, except that its n-th call raises `exc` instead."""
    calls = [0]
    lock = threading.Lock()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lock:
            calls[0] += 1
            due = calls[0] == n
        if due:
            raise exc
        return wrapped(*args, **kwargs)

    return wrapper


def _install(fault: str) -> None:
    from edgelog.buffer.writer import Writer
    from edgelog.meter import Meter
    from edgelog.poller import BusPoller
    from edgelog.sync.worker import SyncWorker

    if fault == "bus":
        BusPoller.poll = _on_call(3, InjectedFault("injected: a bug in the poll loop"), BusPoller.poll)  # type: ignore[method-assign]
    elif fault == "writer":
        flush = Writer._flush

        def counted(self: Writer, group: list[Any]) -> None:
            if group:
                return guarded(self, group)
            return flush(self, group)

        guarded = _on_call(3, InjectedFault("injected: a bug in the writer's loop"), flush)
        Writer._flush = counted  # type: ignore[method-assign]
    elif fault == "sync":
        SyncWorker.drain = _on_call(2, InjectedDeath("injected: the sync thread dies"), SyncWorker.drain)  # type: ignore[method-assign]
    elif fault == "sync-return":
        SyncWorker.run = lambda self, stop: None  # type: ignore[method-assign]
    elif fault.startswith("hang:"):
        flag = fault.removeprefix("hang:")
        read = Meter.read

        def hanging(self: Meter) -> Any:
            while _names(flag) and self.name in _names(flag):
                time.sleep(0.05)
            return read(self)

        Meter.read = hanging  # type: ignore[method-assign]
    else:
        raise SystemExit(f"sitecustomize: unknown EDGELOG_TEST_FAULT {fault!r}")


def _names(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().split()
    except FileNotFoundError:
        return []


if os.environ.get("EDGELOG_TEST_FAULT"):
    _install(os.environ["EDGELOG_TEST_FAULT"])
