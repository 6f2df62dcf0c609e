"""Output files (`export --out`, `report --out`, secrets): whole or not at all, and never
written through a name someone planted: a symlink at the old predictable `NAME.part`,
or at the target itself, must not lead edgelog to overwrite the file it points to."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from helpers import COLUMNS, edgelog, meter_toml, write_config

from edgelog.buffer import Buffer
from edgelog.outfile import replacing
from edgelog.simulate import plant_values

DAY = "2026-06-01"


def _victims(tmp_path: Path, *names: str) -> dict[Path, bytes]:
    """Files an attacker would like overwritten, elsewhere, with what they hold."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    victims = {}
    for name in names:
        path = elsewhere / name
        path.write_bytes(f"precious {name}\n".encode())
        victims[path] = path.read_bytes()
    return victims


def _buffer_with_a_few_readings(path: Path) -> None:
    start = dt.datetime.fromisoformat(f"{DAY}T12:00:00-03:00").timestamp()
    buffer = Buffer(path, COLUMNS)
    for k in range(20):
        values = plant_values(start + 30 * k)
        buffer.append("pac1", start + 30 * k, {c: values[c] for c in COLUMNS})
    buffer.close()


def test_export_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    _buffer_with_a_few_readings(tmp_path / "buffer.sqlite3")
    config = write_config(tmp_path, '[mariadb]\nuser = "edgelog"\n', meter_toml(5020))
    out = tmp_path / "out"
    out.mkdir()
    victims = _victims(tmp_path, "part-target", "csv-target", "pq-target")
    (out / "junho.csv.part").symlink_to(tmp_path / "elsewhere" / "part-target")  # the old temp name
    (out / "junho.csv").symlink_to(tmp_path / "elsewhere" / "csv-target")
    (out / "junho.parquet").symlink_to(tmp_path / "elsewhere" / "pq-target")
    for name in ("junho.csv", "junho.parquet"):
        args = ("export", "--source", "buffer", "--from", DAY, "--to", "2026-06-02", "--out", str(out / name))
        result = edgelog(*args, config=config)
        assert result.returncode == 0, result.stderr
        written = out / name
        assert not written.is_symlink() and stat.S_ISREG(written.lstat().st_mode)
    assert (out / "junho.csv").read_text().count("\n") == 21  # header + 20 readings
    assert (out / "junho.parquet").read_bytes()[:4] == b"PAR1"
    for path, content in victims.items():
        assert path.read_bytes() == content, path
    assert (out / "junho.csv.part").is_symlink()  # not used, not touched
    assert sorted(p.name for p in out.iterdir()) == ["junho.csv", "junho.csv.part", "junho.parquet"]


def test_report_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _buffer_with_a_few_readings(tmp_path / "buffer.sqlite3")
    config = write_config(tmp_path, '[mariadb]\nuser = "edgelog"\n', meter_toml(5020))
    out = tmp_path / "relatorios"
    out.mkdir()
    stem = f"test-site_pac1_{DAY}"
    victims = _victims(tmp_path, "png", "pdf", "html")
    for ext in ("png", "pdf", "html"):
        (out / f"{stem}.{ext}").symlink_to(tmp_path / "elsewhere" / ext)
    result = edgelog(
        "report", "--day", DAY, "--source", "buffer", "--out", str(out), config=config, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF"), ("html", b"<!doctype html>")):
        path = out / f"{stem}.{ext}"
        assert not path.is_symlink() and path.read_bytes().startswith(magic), ext
    for path, content in victims.items():
        assert path.read_bytes() == content, path
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.{ext}" for ext in ("html", "pdf", "png")]


def test_an_interrupted_write_leaves_the_target_as_it_was_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "export.csv"
    target.write_text("the previous export\n")
    with pytest.raises(RuntimeError), replacing(target, binary=False) as out:
        out.write("half a new export")
        raise RuntimeError("the connection dropped")
    assert target.read_text() == "the previous export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["export.csv"]


def test_modes_follow_the_umask_or_are_private_for_a_secret(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with replacing(tmp_path / "report.html", binary=False) as out:
            out.write("<!doctype html>")
        with replacing(tmp_path / "mariadb.password", binary=False, mode=0o600) as out:
            out.write("s3cret\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "mariadb.password").stat().st_mode) == 0o600
    assert (tmp_path / "mariadb.password").read_text() == "s3cret\n"
