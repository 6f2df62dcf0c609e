"""systemd's notify protocol (sd_notify): READY=1, WATCHDOG=1, STOPPING=1, STATUS=...

A datagram to the socket named by $NOTIFY_SOCKET; a no-op when not run by systemd.
`edgelog run`'s main thread sends WATCHDOG=1 while every bus thread makes
progress, so a hung poll stops the pings and systemd restarts the service
(WatchdogSec= in systemd/edgelog.service).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        #: Ping four times per watchdog period: systemd advises at least twice, and the
        #: supervising loop may sleep up to a quarter second between two chances to ping.
        self.watchdog_every_s = int(usec) / 4e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_ping = 0.0

    def send(self, message: str) -> None:
        if not self.address:
            return
        # systemd gone or socket not ours: nothing useful to do
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.sendto(message.encode(), self.address)

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        """Ping, rate-limited to what the watchdog period needs."""
        if self.watchdog_every_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_every_s:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
