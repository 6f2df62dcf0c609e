"""Output files written whole or not at all, never through a name someone could plant.

`export --out`, `report --out` and any secret edgelog writes go through `replacing()`:

* the data goes to a new file made by ``tempfile.mkstemp`` in the target's own
  directory: a random name, created with O_EXCL, so a symlink or file planted
  in advance (at the old ``NAME.part``, at any name) is never followed or
  reused;
* when the block ends without error, the file is flushed and fsynced, then
  ``os.replace`` puts it at the target name (a rename replaces a symlink
  there, it never writes through it), and the directory is fsynced so the new
  name survives a power cut;
* on any error, or an interrupted run, the temporary file is removed and the
  target is untouched: never a truncated file under the real name.

The file gets the mode `open()` would have given it (0666 less the umask), or
the `mode` asked for (0600 for a secret).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def replacing(target: Path | str, binary: bool = True, mode: int | None = None) -> Iterator[IO[Any]]:
    """A file object to write the whole of `target` into; see the module docstring."""
    target = Path(target)
    directory = target.parent
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, _default_mode() if mode is None else mode)
        if binary:
            stream: IO[Any] = os.fdopen(fd, "wb")
        else:
            stream = os.fdopen(fd, "w", encoding="utf-8", newline="")
    except BaseException:
        os.close(fd)
        os.unlink(temp)
        raise
    try:
        with stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _default_mode() -> int:
    """0666 less the process umask, read without changing it (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644
