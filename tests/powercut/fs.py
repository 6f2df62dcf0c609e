"""The test side of the power-cut file system (lazyfs.py): mount it, cut, remount."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers import wait_or_kill

LAZYFS = Path(__file__).with_name("lazyfs.py")


def missing() -> str | None:
    """Why the file system cannot run here (None if it can): scripts/setup installs both."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import fuse  # noqa: F401  (fusepy; needs libfuse2)
    except (ImportError, OSError) as exc:
        return f"fusepy/libfuse2 missing: {exc}"
    return None


class PowerCutFS:
    """BACKING mounted on MOUNT by a lazyfs process; `cut()` is the power cut, `restart()`
    the machine coming back (a new mount of what survived)."""

    def __init__(self, base: Path):
        self.backing = base / "disk"
        self.mount = base / "mnt"
        self.control = base / "control.sock"
        self.log = base / "lazyfs.log"
        self.backing.mkdir(parents=True, exist_ok=True)
        _detach(self.mount)
        self.mount.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounts = 0

    def start(self) -> PowerCutFS:
        self.control.unlink(missing_ok=True)
        _detach(self.mount)  # a mount left by a process that died
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(LAZYFS), str(self.backing), str(self.mount), str(self.control)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not (os.path.ismount(self.mount) and self.control.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lazyfs did not mount: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.02)
        self.mounts += 1
        return self

    def request(self, cmd: str, wait_s: float = 30, **args: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(wait_s)
            s.connect(str(self.control))
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            reply = json.loads(s.makefile("rb").readline())
        if "error" in reply:
            raise RuntimeError(f"lazyfs: {reply['error']}")
        return reply

    def cut(self, mode: str = "drop", seed: int = 0, kill: int | None = None) -> dict[str, Any]:
        """The power cut, now (mode drop, torn or meta; see lazyfs.py): `kill` (a pid) is
        SIGKILLed in the same instant."""
        return self.request("cut", mode=mode, seed=seed, kill=kill)

    def arm(
        self,
        op: str,
        pattern: str = "*",
        count: int = 1,
        mode: str = "drop",
        seed: int = 0,
        kill: int | None = None,
    ) -> None:
        """Cut by itself at the `count`-th `op` on a file whose name matches `pattern`."""
        self.request("arm", op=op, pattern=pattern, count=count, mode=mode, seed=seed, kill=kill)

    def record(self, dest: Path, exclude: str = "", modes: tuple[str, ...] = ("drop", "meta")) -> None:
        """From now on, before each operation that changes something (but those on files
        whose name matches `exclude`), write the state a cut in each of `modes` would
        leave to dest/NNNNN-MODE (no cut)."""
        self.request("record", dest=str(dest), exclude=exclude, modes=list(modes))

    def stop_record(self) -> int:
        """Stop recording (after writing the state after the last operation); returns
        the number of states (each in every mode)."""
        return self.request("stop-record")["states"]

    def disarm(self) -> None:
        self.request("disarm")

    def wait_cut(self, timeout: float) -> dict[str, Any]:
        """The report of the cut, once an armed one happened; {"cut": False} after `timeout`."""
        return self.request("wait", wait_s=timeout + 10, timeout=timeout)

    def ops(self) -> dict[str, int]:
        return self.request("status")["ops"]

    def stop(self) -> None:
        """Unmount (after a cut the disk already holds what survived) and end the process."""
        if self.proc is None:
            return
        for _ in range(50):
            if subprocess.run(["umount", str(self.mount)], capture_output=True).returncode == 0:
                break
            if not os.path.ismount(self.mount):
                break
            time.sleep(0.1)
        else:  # still busy (a file left open): detach it; the disk holds the cut already
            _detach(self.mount)
        wait_or_kill(self.proc, 10)
        self.proc = None

    def restart(self) -> PowerCutFS:
        """The power is back: mount what survived."""
        self.stop()
        return self.start()

    def snapshot(self, dest: Path) -> Path:
        """A copy of the disk as it is now (read without touching the mount)."""
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.backing, dest, symlinks=True)
        return dest


def _detach(mount: Path) -> None:
    try:
        busy = os.path.ismount(mount)
    except OSError:  # ENOTCONN: its process is gone
        busy = True
    if busy or not os.access(mount, os.F_OK):
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@contextlib.contextmanager
def mounted(base: Path) -> Iterator[PowerCutFS]:
    fs = PowerCutFS(base).start()
    try:
        yield fs
    finally:
        fs.stop()
