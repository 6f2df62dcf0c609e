"""`edgelog run`'s main thread: it watches the other threads and pings the systemd watchdog.

No thread dies quietly: if a bus poller, the buffer writer or the sync worker ends
while the service runs (an exception that escaped its loop, or a plain return),
the supervisor logs which and why and fails the service (exit 1), so that systemd
restarts it. The watchdog is pinged only while every bus thread makes progress
(`BusPoller.stalled_s`): a hung poll or hand-over stops the pings, and systemd
restarts the service after ``WatchdogSec=``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

from .notify import Notifier
from .poller import BusPoller

log = logging.getLogger(__name__)


class Supervisor:
    """Watches `pollers` and the `others` threads (name -> is it alive?) until `stop`."""

    def __init__(
        self,
        stop: threading.Event,
        pollers: Sequence[BusPoller],
        others: Mapping[str, Callable[[], bool]],
        notifier: Notifier,
        fail: Callable[[], object],
    ):
        self.stop = stop
        self.pollers = pollers
        self.others = others
        self.notifier = notifier
        self.fail = fail
        self._died: set[str] = set()  # threads whose death is logged already
        self._stalled: set[str] = set()  # buses whose stall is logged already

    def alive(self) -> list[tuple[str, bool]]:
        """(name, alive) of every thread the service needs while it runs."""
        buses = [(p.thread.name if p.thread else f"bus {p.label}", p.is_alive()) for p in self.pollers]
        return [*buses, *((name, alive()) for name, alive in self.others.items())]

    def turn(self) -> None:
        """(On the main thread, every turn of its loop.) A thread that ended fails the
        service; the watchdog is pinged only while every bus thread makes progress."""
        if self.stop.is_set():
            return
        dead = [name for name, alive in self.alive() if not alive]
        if dead:
            for name in dead:
                if name not in self._died:
                    log.critical(
                        "thread %s ended unexpectedly; stopping with exit status 1 so that systemd "
                        "restarts edgelog",
                        name,
                    )
            self.fail()
            return
        if not self._stalls():
            self.notifier.watchdog()

    def _stalls(self) -> set[str]:
        """The buses stuck now (each stall logged when it starts and when it ends)."""
        stalled = {p.label: s for p in self.pollers if (s := p.stalled_s()) > 0}
        for label in stalled.keys() - self._stalled:
            log.error(
                "bus %s: no progress for %.0f s beyond what a poll may take (a hung driver or "
                "hand-over); watchdog pings withheld, so systemd restarts edgelog (WatchdogSec=)",
                label,
                stalled[label],
            )
        for label in self._stalled - stalled.keys():
            log.warning("bus %s: progresses again; watchdog pings resume", label)
        self._stalled = set(stalled)
        return self._stalled

    def thread_died(self, args: threading.ExceptHookArgs) -> None:
        """threading.excepthook while the service runs: an exception escaped a thread."""
        name = args.thread.name if args.thread is not None else "?"
        self._died.add(name)
        log.critical(
            "thread %s died: %s: %s; stopping with exit status 1 so that systemd restarts edgelog",
            name,
            args.exc_type.__name__,
            args.exc_value,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        )
        self.fail()
