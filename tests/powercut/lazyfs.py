"""A file system that forgets, on command, everything not yet durable: a power cut.

Run as its own process (so the program under test can be SIGKILLed apart from it):

    python tests/powercut/lazyfs.py BACKING MOUNT CONTROL_SOCKET

It mounts, with FUSE, an in-memory copy of the directory BACKING on MOUNT. What is
written there lives in memory, as in a page cache, and becomes *durable* only the way
POSIX promises, taken conservatively (what ext4 with data=ordered happens to keep is
not relied on):

* file data, size and mode: by fsync()/fdatasync() of that file;
* a directory's entries (create, mkdir, link, symlink, unlink, rmdir, rename): by
  fsync() of that directory. A file created and fsync'ed in a directory never
  fsync'ed is gone after a cut; a rename not followed by a fsync of the directory
  leaves the old name. sync(2) and syncfs(2) make nothing durable (FUSE never sees
  them), so `sync -f` proves nothing here; `sync FILE` and `sync DIR` fsync.

A `cut` (sent as a JSON line to CONTROL_SOCKET) takes, in one instant under the
lock every operation holds, the durable state, optionally SIGKILLs a process, and
writes that state to BACKING. From then on every operation fails with EIO, as a
dead disk would, until the file system is unmounted; a new mount of BACKING is the
machine after the power came back. Cut modes:

* ``drop``: nothing that was not durable survives;
* ``torn``: each file keeps a random subset of the 512-byte sectors written since
  its last fsync (so a prefix of a pending write, or any part of it), and its size
  is the durable one or the one in memory, at random: a write torn by the cut;
* ``meta``: the metadata reached the disk, the data did not (a journal committed by
  the kernel on its own, before the data blocks): every directory entry, size and
  mode as in memory, file contents only as of their last fsync, zeros past it. The
  state that leaves an empty or zero-filled file under its final name after a
  rename that was not preceded by an fsync of the file.

``record`` (and ``stop-record``) writes, without cutting, the state a cut would
leave (in any of these modes but ``torn``) before each operation that changes
something: every crash state of one run of a program, in numbered directories, to
check one by one.

``arm`` makes the file system cut by itself at the N-th operation of a kind (on
files whose name matches a pattern), before that operation takes effect: a cut at
an exact moment, e.g. the third fsync of a ``*-wal`` file. A clean unmount (no cut)
keeps everything, as umount(8) syncs. The -shm files of SQLite are files like any
other: shared mmap works through the kernel page cache (no direct_io), and fcntl
locks are the kernel's own (no `lock` operation: one machine).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import random
import shutil
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuse import FUSE, FuseOSError, Operations

SECTOR = 512
#: Operations that change something, by the name `arm` matches.
MUTATIONS = (
    "write",
    "truncate",
    "fsync",
    "fsyncdir",
    "create",
    "mkdir",
    "unlink",
    "rmdir",
    "rename",
    "link",
    "symlink",
    "chmod",
    "chown",
)


@dataclass(eq=False)
class Node:
    """An inode: its state in memory, and what of it is durable."""

    kind: int  # stat.S_IFREG, S_IFDIR or S_IFLNK
    perm: int
    uid: int = 0
    gid: int = 0
    data: bytearray = field(default_factory=bytearray)
    durable: bytearray = field(default_factory=bytearray)
    dirty: set[int] = field(default_factory=set)  # sectors written since the last fsync
    entries: dict[str, Node] = field(default_factory=dict)
    durable_entries: dict[str, Node] = field(default_factory=dict)
    target: str = ""
    durable_attrs: tuple[int, int, int] = (0, 0, 0)  # perm, uid, gid
    nlink: int = 1
    mtime_ns: int = field(default_factory=time.time_ns)

    def __post_init__(self) -> None:
        self.durable_attrs = (self.perm, self.uid, self.gid)

    def sync(self) -> None:
        """fsync: the data, size and attributes in memory become durable."""
        if self.kind == stat.S_IFDIR:
            self.durable_entries = dict(self.entries)
        else:
            self.durable[len(self.data) :] = b""
            self.durable.extend(bytes(len(self.data) - len(self.durable)))
            for s in self.dirty:
                self.durable[s * SECTOR : (s + 1) * SECTOR] = self.data[s * SECTOR : (s + 1) * SECTOR]
            self.dirty.clear()
        self.durable_attrs = (self.perm, self.uid, self.gid)

    def tear(self, rnd: random.Random) -> int:
        """A cut in `torn` mode: a random part of what was not synced reaches the disk.
        Returns the sectors kept."""
        size = rnd.choice((len(self.durable), len(self.data)))
        self.durable[size:] = b""
        self.durable.extend(bytes(size - len(self.durable)))
        kept = [s for s in sorted(self.dirty) if s * SECTOR < size and rnd.random() < 0.5]
        for s in kept:
            end = min((s + 1) * SECTOR, size)
            self.durable[s * SECTOR : end] = self.data[s * SECTOR : end].ljust(end - s * SECTOR, b"\0")
        return len(kept)

    def after_cut(self, mode: str) -> bytes:
        """The contents a cut in `mode` (drop or meta) leaves."""
        if mode == "volatile":
            return bytes(self.data)
        if mode == "meta":
            return bytes(self.durable[: len(self.data)]).ljust(len(self.data), b"\0")
        return bytes(self.durable)

    def attrs(self) -> dict[str, int]:
        size = len(self.data) if self.kind == stat.S_IFREG else len(self.target)
        if self.kind == stat.S_IFDIR:
            size = 4096
        return {
            "st_mode": self.kind | self.perm,
            "st_nlink": self.nlink,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_atime": self.mtime_ns,
            "st_mtime": self.mtime_ns,
            "st_ctime": self.mtime_ns,
        }


@dataclass
class Trigger:
    """Cut by itself at the `count`-th operation `op` on a file matching `pattern`."""

    op: str
    pattern: str
    count: int
    mode: str
    seed: int
    kill: int | None


@dataclass
class Recording:
    """Write the state a cut would leave before each operation (but those on files
    whose name matches `exclude`)."""

    dest: Path
    exclude: str  # a file name pattern: no state before operations on these
    modes: tuple[str, ...]
    states: int = 0


def _locked(method):
    def wrapper(self: LazyFS, *args: Any) -> Any:
        with self.mutex:
            if self.cut_at is not None and method.__name__ not in ("release", "releasedir", "flush"):
                raise FuseOSError(errno.EIO)
            return method(self, *args)

    wrapper.__name__ = method.__name__
    return wrapper


class LazyFS(Operations):
    use_ns = True

    def __init__(self, backing: Path):
        self.backing = backing
        self.mutex = threading.RLock()
        self.root = _load(backing)
        self.handles: dict[int, Node] = {}
        self.next_fh = 1
        self.ops: dict[str, int] = dict.fromkeys(MUTATIONS, 0)
        self.trigger: Trigger | None = None
        self.cut_at: float | None = None
        self.cut_report: dict[str, Any] | None = None
        self.cut_done = threading.Event()
        self.recording: Recording | None = None

    # -- the power cut -------------------------------------------------------------

    def cut(self, mode: str = "drop", seed: int = 0, kill: int | None = None) -> dict[str, Any]:
        """Power off: keep only what is durable (in `torn` and `meta` modes, some of the
        rest too)."""
        if mode not in ("drop", "torn", "meta"):
            raise ValueError(f"cut modes are drop, torn and meta, not {mode!r}")
        with self.mutex:
            if self.cut_at is not None:
                return dict(self.cut_report or {})
            if kill:  # first: the process must not see the EIO of the dead disk
                with contextlib.suppress(ProcessLookupError):
                    os.kill(kill, signal.SIGKILL)
            self.cut_at = time.time()
            nodes = _all_nodes(self.root)
            report: dict[str, Any] = {
                "mode": mode,
                "at": self.cut_at,
                "killed": kill,
                "dirty_files": sum(bool(n.dirty) or len(n.data) != len(n.durable) for n in nodes),
                "dirty_sectors": sum(len(n.dirty) for n in nodes),
                "dirty_dirs": sum(n.entries.keys() != n.durable_entries.keys() for n in nodes),
                "torn_sectors_kept": 0,
                "ops": dict(self.ops),
            }
            if mode == "torn":
                rnd = random.Random(seed)
                report["torn_sectors_kept"] = sum(n.tear(rnd) for n in nodes if n.kind == stat.S_IFREG)
            _persist(self.root, self.backing, "meta" if mode == "meta" else "drop")
            self.cut_report = report
            self.cut_done.set()
            return dict(report)

    def _count(self, op: str, path: str | None) -> None:
        """Count the operation; if it is the one armed, cut before it takes effect."""
        self.ops[op] += 1
        rec = self.recording
        if rec is not None and not (
            rec.exclude and fnmatch.fnmatch(os.path.basename(path or ""), rec.exclude)
        ):
            rec.states += 1
            for mode in rec.modes:
                _persist(self.root, rec.dest / f"{rec.states:05d}-{mode}", mode, replace=False)
        t = self.trigger
        if t is None or t.op != op or not fnmatch.fnmatch(os.path.basename(path or ""), t.pattern):
            return
        t.count -= 1
        if t.count <= 0:
            self.trigger = None
            self.cut(t.mode, t.seed, t.kill)
            raise FuseOSError(errno.EIO)

    # -- names ---------------------------------------------------------------------

    def _node(self, path: str) -> Node:
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if node.kind != stat.S_IFDIR:
                raise FuseOSError(errno.ENOTDIR)
            child = node.entries.get(part)
            if child is None:
                raise FuseOSError(errno.ENOENT)
            node = child
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, name = os.path.split(path.rstrip("/"))
        parent = self._node(head)
        if parent.kind != stat.S_IFDIR:
            raise FuseOSError(errno.ENOTDIR)
        return parent, name

    def _file(self, path: str | None, fh: int | None) -> Node:
        if fh:
            return self.handles[fh]
        return self._node(path or "/")

    def _add(self, path: str, node: Node) -> Node:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        uid, gid, _ = _caller()
        node.uid, node.gid = uid, gid
        node.durable_attrs = (node.perm, uid, gid)
        parent.entries[name] = node
        parent.mtime_ns = time.time_ns()
        return node

    def _open(self, node: Node) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node
        return fh

    # -- operations ----------------------------------------------------------------

    @_locked
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        return self._file(path, fh).attrs()

    @_locked
    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self._node(path).entries]

    @_locked
    def readlink(self, path: str) -> str:
        return self._node(path).target

    @_locked
    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.backing)
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail")
        return {k: getattr(st, k) for k in keys} | {"f_namemax": 255}

    @_locked
    def open(self, path: str, flags: int) -> int:
        return self._open(self._node(path))

    @_locked
    def opendir(self, path: str) -> int:
        return self._open(self._node(path))

    @_locked
    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self._count("create", path)
        return self._open(self._add(path, Node(stat.S_IFREG, stat.S_IMODE(mode))))

    @_locked
    def release(self, path: str | None, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    @_locked
    def releasedir(self, path: str | None, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    @_locked
    def flush(self, path: str | None, fh: int) -> int:
        return 0

    @_locked
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return bytes(self._file(path, fh).data[offset : offset + size])

    @_locked
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        self._count("write", path)
        node = self._file(path, fh)
        if offset > len(node.data):
            node.dirty.update(range(len(node.data) // SECTOR, offset // SECTOR + 1))
            node.data.extend(bytes(offset - len(node.data)))
        node.data[offset : offset + len(data)] = data
        if data:
            node.dirty.update(range(offset // SECTOR, (offset + len(data) - 1) // SECTOR + 1))
        node.mtime_ns = time.time_ns()
        return len(data)

    @_locked
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self._count("truncate", path)
        node = self._file(path, fh)
        old = len(node.data)
        if length < old:
            del node.data[length:]
            node.dirty = {s for s in node.dirty if s * SECTOR < length}
            if length % SECTOR:
                node.dirty.add(length // SECTOR)
        else:
            node.data.extend(bytes(length - old))
            node.dirty.update(range(old // SECTOR, (length + SECTOR - 1) // SECTOR))
        node.mtime_ns = time.time_ns()
        return 0

    @_locked
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self._count("fsync", path)
        self._file(path, fh).sync()
        return 0

    @_locked
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self._count("fsyncdir", path)
        self._file(path, fh).sync()
        return 0

    @_locked
    def mkdir(self, path: str, mode: int) -> int:
        self._count("mkdir", path)
        self._add(path, Node(stat.S_IFDIR, stat.S_IMODE(mode), nlink=2))
        return 0

    @_locked
    def symlink(self, target: str, source: str) -> int:
        self._count("symlink", target)
        self._add(target, Node(stat.S_IFLNK, 0o777, target=source))
        return 0

    @_locked
    def link(self, target: str, source: str) -> int:
        self._count("link", target)
        node = self._node(source)
        parent, name = self._parent(target)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        parent.entries[name] = node
        node.nlink += 1
        return 0

    @_locked
    def unlink(self, path: str) -> int:
        self._count("unlink", path)
        parent, name = self._parent(path)
        node = self._node(path)
        del parent.entries[name]
        node.nlink -= 1
        return 0

    @_locked
    def rmdir(self, path: str) -> int:
        self._count("rmdir", path)
        parent, name = self._parent(path)
        if self._node(path).entries:
            raise FuseOSError(errno.ENOTEMPTY)
        del parent.entries[name]
        return 0

    @_locked
    def rename(self, old: str, new: str) -> int:
        self._count("rename", new)
        node = self._node(old)
        src, old_name = self._parent(old)
        dst, new_name = self._parent(new)
        replaced = dst.entries.get(new_name)
        if replaced is node:
            return 0
        if replaced is not None:
            if replaced.kind == stat.S_IFDIR and replaced.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            replaced.nlink -= 1
        del src.entries[old_name]
        dst.entries[new_name] = node
        return 0

    @_locked
    def chmod(self, path: str, mode: int) -> int:
        self._count("chmod", path)
        self._node(path).perm = stat.S_IMODE(mode)
        return 0

    @_locked
    def chown(self, path: str, uid: int, gid: int) -> int:
        self._count("chown", path)
        node = self._node(path)
        node.uid = node.uid if uid == -1 else uid
        node.gid = node.gid if gid == -1 else gid
        return 0

    @_locked
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self._node(path).mtime_ns = times[1] if times else time.time_ns()
        return 0

    def destroy(self, path: str) -> None:
        """Unmounted: without a cut, everything is kept (umount syncs)."""
        with self.mutex:
            if self.cut_at is None:
                _persist(self.root, self.backing, "volatile")


def _caller() -> tuple[int, int, int]:
    from fuse import fuse_get_context

    return fuse_get_context()


def _all_nodes(root: Node) -> list[Node]:
    seen: dict[int, Node] = {}
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        todo += [*node.entries.values(), *node.durable_entries.values()]
    return list(seen.values())


# -- the backing directory: what is on the disk when the power comes back -------------


def _load(path: Path, links: dict[int, Node] | None = None) -> Node:
    links = {} if links is None else links
    st = os.lstat(path)
    if st.st_ino in links and not stat.S_ISDIR(st.st_mode):
        return links[st.st_ino]
    kind = stat.S_IFMT(st.st_mode)
    node = Node(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, nlink=st.st_nlink)
    node.mtime_ns = st.st_mtime_ns
    links[st.st_ino] = node
    if kind == stat.S_IFDIR:
        for entry in os.scandir(path):
            node.entries[entry.name] = _load(Path(entry.path), links)
        node.durable_entries = dict(node.entries)
    elif kind == stat.S_IFLNK:
        node.target = os.readlink(path)
    elif kind == stat.S_IFREG:
        node.data = bytearray(path.read_bytes())
        node.durable = bytearray(node.data)
    return node


def _persist(root: Node, dest: Path, view: str, replace: bool = True) -> None:
    """Write the state a cut in mode `view` leaves ("drop", "meta"; "volatile": all of
    it, as at a clean unmount) to `dest`: over the backing directory (`replace`), or
    to a new directory (a recorded state)."""
    fresh = dest.with_name(dest.name + ".new") if replace else dest
    shutil.rmtree(fresh, ignore_errors=True)
    written: dict[int, Path] = {}
    durable_names = view == "drop"

    def write(node: Node, path: Path, seen: frozenset[int]) -> None:
        perm, uid, gid = node.durable_attrs if view == "drop" else (node.perm, node.uid, node.gid)
        if node.kind == stat.S_IFREG and id(node) in written:
            os.link(written[id(node)], path)
            return
        if node.kind == stat.S_IFDIR:
            os.mkdir(path)
            entries = node.durable_entries if durable_names else node.entries
            for name, child in entries.items():
                if id(child) not in seen:  # a directory renamed into its own subtree
                    write(child, path / name, seen | {id(node)})
        elif node.kind == stat.S_IFLNK:
            os.symlink(node.target, path)
        else:
            path.write_bytes(node.after_cut(view))
            written[id(node)] = path
        os.lchown(path, uid, gid)
        if node.kind != stat.S_IFLNK:
            os.chmod(path, perm)
            os.utime(path, ns=(node.mtime_ns, node.mtime_ns))

    write(root, fresh, frozenset())
    if replace:
        old = dest.with_name(dest.name + ".old")
        os.rename(dest, old)
        os.rename(fresh, dest)
        shutil.rmtree(old)


# -- the control socket -----------------------------------------------------------------


def _serve(fs: LazyFS, path: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_answer, args=(fs, conn), daemon=True).start()


def _answer(fs: LazyFS, conn: socket.socket) -> None:
    with conn, conn.makefile("rwb") as stream:
        for line in stream:
            try:
                reply = _command(fs, json.loads(line))
            except Exception as exc:  # a bad command is answered, never fatal
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            stream.write(json.dumps(reply).encode() + b"\n")
            stream.flush()


def _command(fs: LazyFS, cmd: dict[str, Any]) -> dict[str, Any]:
    what = cmd.get("cmd")
    if what == "cut":
        return fs.cut(cmd.get("mode", "drop"), int(cmd.get("seed", 0)), cmd.get("kill"))
    if what == "arm":
        if cmd["op"] not in MUTATIONS:
            raise ValueError(f"no operation {cmd['op']!r}; one of {MUTATIONS}")
        with fs.mutex:
            fs.trigger = Trigger(
                cmd["op"],
                cmd.get("pattern", "*"),
                int(cmd.get("count", 1)),
                cmd.get("mode", "drop"),
                int(cmd.get("seed", 0)),
                cmd.get("kill"),
            )
        return {"armed": True}
    if what == "record":
        modes = tuple(cmd.get("modes", ("drop", "meta")))
        if not set(modes) <= {"drop", "meta"}:
            raise ValueError(f"record modes are drop and meta, not {modes}")
        dest = Path(cmd["dest"])
        dest.mkdir(parents=True, exist_ok=True)
        with fs.mutex:
            fs.recording = Recording(dest, cmd.get("exclude", ""), modes)
        return {"recording": True}
    if what == "stop-record":  # and the state after the last operation
        with fs.mutex:
            rec, fs.recording = fs.recording, None
            if rec is None:
                return {"states": 0}
            rec.states += 1
            for mode in rec.modes:
                _persist(fs.root, rec.dest / f"{rec.states:05d}-{mode}", mode, replace=False)
        return {"states": rec.states}
    if what == "disarm":
        with fs.mutex:
            fs.trigger = None
        return {"armed": False}
    if what == "wait":  # until a cut happened (an armed one), or the timeout
        done = fs.cut_done.wait(float(cmd.get("timeout", 10)))
        return {"cut": done, **(fs.cut_report or {})}
    if what == "status":
        with fs.mutex:
            return {"ops": dict(fs.ops), "cut": fs.cut_at is not None, "armed": fs.trigger is not None}
    raise ValueError(f"unknown command {what!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: lazyfs.py BACKING MOUNT CONTROL_SOCKET", file=sys.stderr)
        return 2
    backing, mount, control = Path(argv[0]).resolve(), argv[1], argv[2]
    fs = LazyFS(backing)
    threading.Thread(target=_serve, args=(fs, control), daemon=True).start()
    # kernel_cache: every change goes through this mount, so the page cache (and the
    # shared mmap of SQLite's -shm) is never stale; hard_remove: no .fuse_hidden files.
    FUSE(fs, mount, foreground=True, kernel_cache=True, hard_remove=True, big_writes=True, fsname="lazyfs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
