"""Watching processes from outside: resident memory, bytes written, CPU time."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB, or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def write_bytes(pid: int) -> int | None:
    """Bytes the process caused to be written to storage (/proc/<pid>/io)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def terminate(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM, as systemd stops the unit; SIGKILL if it has not exited in `timeout` s."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(native_id: int) -> float:
    """User + system CPU time of one thread of this process (`threading.Thread.native_id`)."""
    return _stat_cpu(Path(f"/proc/self/task/{native_id}/stat"))


def _stat_cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass
class Sample:
    t: float  # seconds since the sampler started
    rss_kib: int
    hwm_kib: int
    write_bytes: int | None


@dataclass
class Sampler:
    """Samples a process every `every` seconds in a thread until it exits or stop()."""

    pid: int
    every: float = 0.25
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    started: float = 0.0

    def start(self) -> Sampler:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> Sample | None:
        mem = rss_kib(self.pid)
        if mem is None:
            return None
        s = Sample(time.monotonic() - self.started, mem[0], mem[1], write_bytes(self.pid))
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sample() is None:
                return
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def peak_kib(self) -> int:
        return max((max(s.rss_kib, s.hwm_kib) for s in self.samples), default=0)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.t <= end]


@dataclass
class FsyncProbe:
    """The disk's own commit latency, measured beside the logger: every `every` seconds
    a thread rewrites 4 KiB of a file in `directory` and fsync()s it, as a buffer commit
    does. Tells a slow disk apart from a slow logger."""

    directory: Path
    every: float = 0.1
    samples: list[tuple[float, float]] = field(default_factory=list)  # (wall time, seconds)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> FsyncProbe:
        self._thread = threading.Thread(target=self._run, name="fsync-probe", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        path = self.directory / "fsync-probe.dat"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            block = b"\0" * 4096
            while not self._stop.is_set():
                started = time.time()
                os.pwrite(fd, block, (len(self.samples) % 16) * 4096)
                os.fsync(fd)
                self.samples.append((started, time.time() - started))
                self._stop.wait(self.every)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def between(self, start: float, end: float) -> list[float]:
        return [latency for at, latency in self.samples if start <= at <= end]
