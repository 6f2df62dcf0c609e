"""Power cuts on every other path that writes a file: `export --out`, scripts/install
(the config, the unit, the modules-load file, the password file's mode),
schema/install-mariadb (the password files) and the move-aside of a corrupt buffer.

Each program runs once on the power-cut file system (tests/powercut/lazyfs.py) while
it records, before every operation that changes something, the state a cut at that
instant would leave: in `drop` mode (only what was fsync'ed) and in `meta` mode (the
names, sizes and modes reached the disk, the data did not). Every such state is
checked: a file is the old one or the complete new one, never empty, torn or zeros;
once the program has returned, the new one. A few states are then given to the
program again, as the next boot would.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pymysql
import pytest
from helpers import (
    FAST_SYNC,
    INSTALL,
    INSTALL_DB,
    ROOT,
    corrupt_middle_pages,
    edgelog,
    file_mode,
    max_seq,
    meta,
    meter_toml,
    prefill,
    wait_for,
    write_config,
)
from powercut.fs import PowerCutFS, missing, mounted

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def _states(dest: Path) -> list[Path]:
    """The recorded states, in order (each operation: its drop state, its meta state)."""
    return sorted(dest.iterdir())


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def _old_or_new(path: Path, old: bytes | None, new: bytes, state: Path) -> None:
    got = _read(path)
    assert got in (old, new), (
        f"{state.name}: {path.name} is neither the old nor the new file ({len(got or b'')} B)"
    )


def _clean_restart(fs: PowerCutFS) -> None:
    """Unmount cleanly (everything reaches the disk) and mount again."""
    fs.restart()


# -- export --out -------------------------------------------------------------------


def test_export_out_after_a_cut_is_the_old_file_or_the_complete_new_one(tmp_path: Path, logger_db) -> None:
    buffer = tmp_path / "buffer.sqlite3"
    prefill(buffer, 400)
    config = write_config(
        tmp_path,
        logger_db.fault_toml(),
        meter_toml(1, interval_s=0.2),
        buffer={"path": buffer},
        sync=FAST_SYNC,
    )
    start = dt.datetime.fromtimestamp(time.time() - 4000, dt.UTC).isoformat()
    middle = dt.datetime.fromtimestamp(time.time() - 3600 + 100, dt.UTC).isoformat()

    def export(out: Path, *window: str) -> None:
        result = edgelog(
            "export", "--source", "buffer", "--from", start, *window, "--out", str(out), config=config
        )
        assert result.returncode == 0, result.stderr

    export(tmp_path / "new.csv")
    new = (tmp_path / "new.csv").read_bytes()
    with mounted(tmp_path / "fs") as fs:
        out = fs.mount / "out.csv"
        export(out, "--to", middle)  # an earlier export of fewer rows ...
        _clean_restart(fs)  # ... long on the disk
        old = out.read_bytes()
        assert 0 < len(old) < len(new)
        fs.record(tmp_path / "states")
        export(out)
        fs.stop_record()
    states = _states(tmp_path / "states")
    for state in states:
        _old_or_new(state / "out.csv", old, new, state)
    last = states[-2]  # after export returned, only what was fsync'ed
    assert last.name.endswith("-drop")
    assert _read(last / "out.csv") == new, "export returned, a cut then brought the old file back"


# -- schema/install-mariadb ---------------------------------------------------------


def _password_ok(path: Path) -> bool:
    text = path.read_bytes()
    return len(text) == 24 and text.isalnum() and file_mode(path) == 0o600


def test_install_mariadb_password_files_survive_a_cut(tmp_path: Path, mysql_proc, mariadb_root) -> None:
    db = f"chapada_imperial_{secrets.token_hex(3)}"
    files = ("mariadb.password", "analise.password")
    try:
        with mounted(tmp_path / "fs") as fs:
            env = dict(
                os.environ,
                EDGELOG_ETC=str(fs.mount / "etc" / "edgelog"),
                MARIADB_SOCKET=mysql_proc.unixsocket,
                EDGELOG_DB=db,
                SKIP_APT="1",
            )
            (fs.mount / "etc").mkdir()  # /etc is there, /etc/edgelog not yet
            _clean_restart(fs)
            fs.record(tmp_path / "states")
            run = subprocess.run([str(INSTALL_DB)], env=env, capture_output=True, text=True, timeout=120)
            fs.stop_record()
            assert run.returncode == 0, run.stderr
            final = {name: (fs.mount / "etc/edgelog" / name).read_bytes() for name in files}
        states = _states(tmp_path / "states")
        for state in states:
            for name in files:
                path = state / "etc/edgelog" / name
                assert not path.exists() or _password_ok(path), f"{state.name}: {name} torn or readable"
        last = states[-2]
        assert last.name.endswith("-drop")
        for name in files:  # the script returned: MariaDB has these passwords, and so has the disk
            assert _read(last / "etc/edgelog" / name) == final[name], f"{name} lost after the install"

        # the next boot: the installer again, on a state from the middle of the run
        middle = states[len(states) // 2]
        etc = tmp_path / "again"
        shutil.copytree(middle, etc, symlinks=True)
        again = dict(env, EDGELOG_ETC=str(etc / "etc" / "edgelog"))
        rerun = subprocess.run([str(INSTALL_DB)], env=again, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        password = (etc / "etc/edgelog/mariadb.password").read_text()
        pymysql.connect(unix_socket=mysql_proc.unixsocket, user="edgelog", password=password).close()
    finally:
        with mariadb_root.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
            cur.execute("DROP USER IF EXISTS 'edgelog'@'localhost', 'analise'@'%'")


# -- scripts/install ----------------------------------------------------------------


def test_install_config_unit_and_password_mode_survive_a_cut(tmp_path: Path) -> None:
    example = (ROOT / "edgelog/example.toml").read_bytes()
    unit = (ROOT / "systemd/edgelog.service").read_bytes()
    modules = (ROOT / "systemd/edgelog-modules.conf").read_bytes()
    root = tmp_path / "root"
    root.mkdir()
    with mounted(tmp_path / "fs") as fs:
        (root / "etc").symlink_to(fs.mount)  # /etc on the power-cut file system
        (fs.mount / "edgelog").mkdir(mode=0o750)
        (fs.mount / "edgelog/mariadb.password").write_text("x" * 24)  # from install-mariadb,
        (fs.mount / "edgelog/mariadb.password").chmod(0o644)  # with a mode too loose
        _clean_restart(fs)
        fs.record(tmp_path / "states")
        env = dict(os.environ, ROOT=str(root))
        run = subprocess.run([str(INSTALL)], env=env, capture_output=True, text=True, timeout=900)
        fs.stop_record()
        assert run.returncode == 0, run.stderr
    states = _states(tmp_path / "states")
    for state in states:
        config = state / "edgelog/edgelog.toml"
        _old_or_new(config, None, example, state)
        assert not config.exists() or file_mode(config) == 0o640, (
            f"{state.name}: config mode {file_mode(config):o}"
        )
        _old_or_new(state / "systemd/system/edgelog.service", None, unit, state)
        _old_or_new(state / "modules-load.d/edgelog.conf", None, modules, state)
        assert (state / "edgelog/mariadb.password").read_bytes() == b"x" * 24
    last = states[-2]
    assert last.name.endswith("-drop")
    assert _read(last / "edgelog/edgelog.toml") == example, "installed, then lost in a cut"
    assert _read(last / "systemd/system/edgelog.service") == unit, "installed, then lost in a cut"
    assert _read(last / "modules-load.d/edgelog.conf") == modules, "installed, then lost in a cut"
    assert file_mode(last / "edgelog/mariadb.password") == 0o600, (
        "the password file readable by all after a cut"
    )


# -- the move-aside of a corrupt buffer ---------------------------------------------


def test_the_move_aside_of_a_corrupt_buffer_survives_a_cut(
    tmp_path: Path, logger_db, simulator, logger_factory
) -> None:
    scratch = tmp_path / "prefill.sqlite3"
    prefill(scratch, 1500)
    corrupt_middle_pages(scratch)
    corrupt = scratch.read_bytes()
    with mounted(tmp_path / "fs") as fs:
        buffer = fs.mount / "buffer.sqlite3"
        shutil.copyfile(scratch, buffer)
        _clean_restart(fs)
        logger = logger_factory(
            logger_db.fault_toml(),
            meter_toml(simulator.port, interval_s=0.2),
            buffer={"path": buffer},
            clock={"require_sync": False},
        )
        fs.record(tmp_path / "states", exclude="*-shm")  # the -shm holds no state
        with logger.running():
            wait_for(lambda: logger.lines("moved aside"), timeout=30, what="the move aside")
            wait_for(lambda: _rows(buffer) >= 3, timeout=30, what="readings in the new buffer")
            fs.stop_record()
    states = _states(tmp_path / "states")
    assert len(states) > 20
    for state in states:  # the corrupt file is never lost: under its name, or moved aside
        kept = [p for p in state.glob("buffer*.sqlite3") if p.read_bytes() == corrupt]
        assert len(kept) == 1, f"{state.name}: the corrupt buffer is gone"
    # the next boot, on states through the move, and on the first one where the file
    # was moved aside but the new buffer had not noted it yet: it starts, logs on, and
    # sync-status names the file moved aside
    unnoted = [s for s in states if (s / "buffer.sqlite3").exists() and _aside(s) and not _noted(s)]
    booted = [*states[:: max(1, len(states) // 6)], *unnoted[:1]]
    reported = [_start_on(state, tmp_path, logger_db, simulator, logger_factory) for state in booted]
    print(f"move aside: {len(states)} states ({len(unnoted)} moved, not noted); {len(booted)} boots")
    assert all(reported), [s.name for s, r in zip(booted, reported, strict=True) if not r]


def _aside(state: Path) -> list[Path]:
    return list(state.glob("buffer.corrupt-*.sqlite3"))


def _noted(state: Path) -> bool:
    try:
        return bool(json.loads(meta(state / "buffer.sqlite3", "corrupt_buffers") or "[]"))
    except sqlite3.DatabaseError:
        return False


def _rows(buffer: Path) -> int:
    try:
        return max_seq(buffer)
    except sqlite3.DatabaseError:  # the corrupt one, before it is moved aside
        return 0


def _start_on(state: Path, tmp_path: Path, logger_db, simulator, logger_factory) -> bool:
    """Boot on `state`: the logger runs, the corrupt file is aside once. Returns whether
    sync-status reports it."""
    disk = tmp_path / "boot" / state.name
    shutil.copytree(state, disk, symlinks=True)
    logger = logger_factory(
        logger_db.fault_toml(),
        meter_toml(simulator.port, interval_s=0.2),
        buffer={"path": disk / "buffer.sqlite3"},
        clock={"require_sync": False},
        name=f"{state.name}.toml",
        log=f"{state.name}.log",
    )
    with logger.running():
        wait_for(lambda: logger.lines("logging pac1") or not logger.alive(), timeout=30, what="the start")
        time.sleep(0.6)
        assert logger.alive(), f"{state.name}: {logger.text()[-1500:]}"
    assert _rows(disk / "buffer.sqlite3") >= 2, f"{state.name}: no readings after the boot"
    aside = _aside(disk)
    assert len(aside) == 1, f"{state.name}: {aside}"  # the move a cut undid is done again
    status = json.loads(edgelog("sync-status", "--json", config=logger.config).stdout)
    return bool(status.get("corrupt_buffers"))
