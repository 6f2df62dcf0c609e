"""The `edgelog` command: thin commands over the library.

Each command parses its options, builds the library objects, calls one method
and prints. Library errors (EdgelogError) become one line on stderr and the
error's exit status, here and only here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from . import config as config_mod
from .buffer import Buffer
from .clock import utc_iso
from .errors import EdgelogError, MeterError
from .progress import Progress
from .sync import mariadb_worker


def _load(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(config_mod.resolve_path(args.config))


# -- commands ------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Poll every meter, buffer every reading, forward to MariaDB, until SIGTERM/SIGINT."""
    from .service import Service

    return Service(_load(args)).run()


def cmd_poll(args: argparse.Namespace) -> int:
    """Read each meter once and print its values (nothing is stored)."""
    from .meter import close_meters, open_meters

    cfg = _load(args)
    meters = open_meters(cfg.meters)
    results: dict[str, Any] = {}
    failed = 0
    try:
        for meter in meters:
            units = {r.name: r.unit for r in meter.config.registers}
            try:
                reading = meter.read()
            except MeterError as exc:
                failed += 1
                results[meter.name] = {"error": str(exc)}
                continue
            results[meter.name] = {
                "measured_at": utc_iso(reading.measured_at),
                "requests": len(meter.plan),
                "values": {k: {"value": v, "unit": units[k]} for k, v in reading.values.items()},
            }
    finally:
        close_meters(meters)
    if args.json:
        print(json.dumps(results, indent=2, allow_nan=False))
    else:
        for name, result in results.items():
            if "error" in result:
                print(f"{name}: FAILED: {result['error']}")
                continue
            print(f"{name}  ({result['measured_at']}, {result['requests']} request(s))")
            for key, item in result["values"].items():
                value = "NULL (NaN/inf)" if item["value"] is None else f"{item['value']:.3f}"
                print(f"  {key:<24} {value:>14} {item['unit']}")
    return 1 if failed else 0


def cmd_sync_status(args: argparse.Namespace) -> int:
    """Is the logger healthy? Meters, buffer, backlog, MariaDB, clock. Exit 0 healthy, 1 degraded."""
    from . import human, status

    health = status.evaluate(_load(args), max_lag_s=args.max_lag, silent_intervals=args.max_silence)
    if args.json:
        print(json.dumps(health.to_json(), indent=2, allow_nan=False))
    else:
        print(status.render(health, colour=human.use_colour(sys.stdout)))
    return health.exit_status


def _retry_quarantined(args: argparse.Namespace) -> int:
    """Send the quarantined rows again; 0 when MariaDB took them all."""
    cfg = _load(args)
    buffer = Buffer(cfg.buffer.path, create=False)
    worker = mariadb_worker(cfg, buffer)
    try:
        sent, still = worker.retry_quarantined()
    finally:
        worker.sink.close()
        buffer.close()
    print(f"sent {sent} quarantined rows; {still} still refused")
    return 0 if still == 0 else 1


def cmd_sync(args: argparse.Namespace) -> int:
    """Forward everything buffered now to MariaDB, then exit (0 when nothing is left)."""
    retried = _retry_quarantined(args) if args.retry_quarantined else None
    if not args.drain:
        if retried is not None:
            return retried
        raise EdgelogError("sync: say --drain (send everything now, then exit) or --retry-quarantined")
    cfg = _load(args)
    buffer = Buffer(cfg.buffer.path, create=False)
    worker = mariadb_worker(cfg, buffer)
    try:
        started = time.monotonic()
        with Progress("sync", total=buffer.status().unsent) as progress:
            sent = worker.drain(progress=progress.update)
        left = buffer.status().unsent
    except EdgelogError as exc:
        buffer.record_sync_error(str(exc))
        raise
    finally:
        worker.sink.close()
        buffer.close()
    elapsed = time.monotonic() - started
    print(f"sent {sent} rows in {elapsed:.1f} s; {left} unsent")
    return 0 if left == 0 else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    """Serve a simulated PAC3100 over Modbus TCP (or RTU with --device)."""
    from .profiles import PAC3100_ENERGIA
    from .simulate import Pac3100Simulator, Plant, parse_schedule

    if not 0.1 <= args.hydraulic_kw <= 10_000:
        raise EdgelogError(f"simulate --hydraulic-kw: must be 0.1–10000, got {args.hydraulic_kw:g}")
    plant = Plant(hydraulic_w=args.hydraulic_kw * 1000, schedule=parse_schedule(args.schedule))
    # all a real PAC3100 serves
    sim = Pac3100Simulator(unit_id=args.unit, profile=PAC3100_ENERGIA, plant=plant)
    where = args.device or f"{args.host}:{args.port}"

    def started(_server: object) -> None:
        print(f"PAC3100 simulator: unit {args.unit} on {where} (Ctrl+C stops)", flush=True)

    coro = (
        sim.serve_rtu(args.device, args.baudrate, started=started)
        if args.device
        else sim.serve_tcp(args.host, args.port, started=started)
    )
    try:
        asyncio.run(coro)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise EdgelogError(f"simulate: cannot serve on {where}: {exc.strerror or exc}") from None
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check everything on site: config, serial device, meters, buffer, MariaDB, clock, service."""
    from . import doctor

    checks = []
    for check in doctor.run(config_mod.resolve_path(args.config)):
        print(check.line(), flush=True)
        checks.append(check)
    failed = sum(c.status == "FAIL" for c in checks)
    warned = sum(c.status == "WARN" for c in checks)
    print(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    """Readings between two instants, from MariaDB (or the local buffer) to CSV or Parquet."""
    from . import export

    cfg = _load(args)
    query = export.Query(
        start=export.parse_instant(args.start, "--from"),
        end=export.parse_instant(args.end, "--to") if args.end else time.time(),
        site=args.site or cfg.site,
        meter=args.meter,
        gaps=not args.no_gaps,
        every=args.every,
    )
    result = export.run(cfg, query, out=args.out, fmt=args.format, source=args.source)
    where = "stdout" if result.out == "-" else result.out
    print(f"exported {result.rows} rows from {result.source} to {where}", file=sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """The newest reading of each meter, from the local buffer, refreshed until Ctrl+C."""
    from . import tail

    return tail.run(_load(args), once=args.once, every_s=args.every, meter=args.meter)


def cmd_report(args: argparse.Namespace) -> int:
    """Load-study report of a day, week or month: PNG, PDF and HTML with charts and a summary."""
    from . import report

    cfg = _load(args)
    period = report.Period.parse(day=args.day, week=args.week, month=args.month, tz=args.tz)
    paths = report.run(
        cfg, period, args.out, lang=args.lang, source=args.source, meter=args.meter, aggregates=not args.raw
    )
    for path in paths:
        print(path)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the MariaDB DDL (CREATE DATABASE and CREATE TABLE) for this config."""
    from .sync import schema

    cfg = _load(args)
    if args.alter_types:
        print(schema.alter_types_sql(cfg))
    elif args.alter:
        print(schema.alter_columns_sql(cfg))
    else:
        print(schema.create_sql(cfg))
    return 0


# -- plumbing ------------------------------------------------------------------------


def _duration(text: str) -> float:
    from .human import parse_duration

    try:
        return parse_duration(text)
    except EdgelogError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _status_default(name: str) -> float:
    from . import status

    return float(getattr(status, name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgelog",
        description="Store-and-forward Modbus logger: meter -> SQLite WAL buffer -> MariaDB.",
    )
    parser.add_argument("--version", action="version", version=f"edgelog {__version__}")
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help=f"config file (default: ${config_mod.ENV_VAR}, else {config_mod.DEFAULT_PATH})",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="count",
        default=0,
        help="-v: edgelog's debug messages too; -vv: also the libraries' (pymodbus, peewee, ...)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        doc = (func.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc, description=doc)
        p.set_defaults(func=func)
        return p

    add("run", cmd_run)
    p = add("poll", cmd_poll)
    p.add_argument(
        "--once", action="store_true", help="accepted for older scripts: poll always reads each meter once"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("sync-status", cmd_sync_status)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--max-lag",
        type=_duration,
        default=_status_default("DEFAULT_MAX_LAG_S"),
        metavar="DURATION",
        help="degraded when the oldest unsent reading is older than this (default 30m; 90s, 2h, 1d)",
    )
    p.add_argument(
        "--max-silence",
        type=float,
        default=_status_default("DEFAULT_SILENT_INTERVALS"),
        metavar="N",
        help="degraded when a meter has no reading for N of its intervals (default 10)",
    )
    p = add("sync", cmd_sync)
    p.add_argument("--drain", action="store_true", help="send everything now, then exit")
    p.add_argument(
        "--retry-quarantined", action="store_true", help="send rows MariaDB refused again (cause fixed)"
    )
    p = add("simulate", cmd_simulate)
    p.add_argument("--host", default="127.0.0.1", help="TCP address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5020, help="TCP port (default 5020)")
    p.add_argument("--unit", type=int, default=126, help="Modbus unit id (default 126, as shipped)")
    p.add_argument("--device", help="serve Modbus RTU on this serial device instead of TCP")
    p.add_argument("--baudrate", type=int, default=None, help="RTU baud rate (default 19200)")
    p.add_argument(
        "--hydraulic-kw",
        type=float,
        default=10.0,
        metavar="KW",
        help="the water's power: above it the load controller runs out and f and V sag (default 10)",
    )
    p.add_argument(
        "--schedule",
        default="",
        metavar="SPEC",
        help="disturbances, e.g. outage@2026-06-02T22:00Z+20m,overload@19:00+45m=1.25,voltage@03:00+2h=114",
    )
    p = add("export", cmd_export)
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="TIME",
        help="first instant, included (ISO-8601; UTC unless a zone is given)",
    )
    p.add_argument(
        "--to",
        dest="end",
        metavar="TIME",
        help="end, excluded (ISO-8601; UTC unless a zone is given; default now)",
    )
    p.add_argument("--meter", help="one meter (default: every meter)")
    p.add_argument("--site", help="another site of the MariaDB table (default: this config's site)")
    p.add_argument(
        "--source", choices=("mariadb", "buffer"), default="mariadb", help="where to read (default mariadb)"
    )
    p.add_argument(
        "--format", choices=("csv", "parquet"), help="default: parquet for --out *.parquet, else csv"
    )
    p.add_argument("--out", default="-", metavar="FILE", help="output file (default: stdout, CSV only)")
    p.add_argument("--no-gaps", action="store_true", help="leave out failed polls (rows with error set)")
    p.add_argument(
        "--every",
        choices=("1min", "15min"),
        help="rows of the per-minute or per-15-minute aggregate table (avg/min/max/count per column)",
    )
    p = add("tail", cmd_tail)
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--every", type=float, default=1.0, metavar="S", help="seconds between frames (default 1)")
    p.add_argument("--meter", help="only this meter")
    p = add("report", cmd_report)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--day", metavar="DATE", help="a day: 2025-06-01")
    when.add_argument("--week", metavar="DATE", help="the week (Monday to Sunday) holding DATE, or 2025-W23")
    when.add_argument("--month", metavar="MONTH", help="a month: 2025-06")
    p.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="directory for the PNG, PDF and HTML"
    )
    p.add_argument(
        "--lang", choices=("pt", "en"), default="pt", help="labels in Portuguese (default) or English"
    )
    p.add_argument(
        "--source", choices=("mariadb", "buffer"), default="mariadb", help="where to read (default mariadb)"
    )
    p.add_argument("--meter", help="the meter (default: the config's first)")
    p.add_argument(
        "--raw",
        action="store_true",
        help="read every raw row (default: a week or month from the per-minute table where it can)",
    )
    p.add_argument(
        "--tz", default="America/Sao_Paulo", help="time zone of days and charts (default America/Sao_Paulo)"
    )
    p = add("schema", cmd_schema)
    alter = p.add_mutually_exclusive_group()
    alter.add_argument(
        "--alter",
        action="store_true",
        help="ask MariaDB, print the ALTER TABLE adding the columns the live table lacks",
    )
    alter.add_argument(
        "--alter-types",
        action="store_true",
        help="ask MariaDB, print a check and the ALTER TABLE giving its columns their registers' types",
    )
    add("doctor", cmd_doctor)
    return parser


def _setup_logging(verbose: int) -> None:
    """INFO and above; -v: edgelog's DEBUG lines too; -vv: every library's as well
    (pymodbus, silenced otherwise: it logs every retry at ERROR, our own lines say it once)."""
    under_systemd = "JOURNAL_STREAM" in os.environ  # journald adds its own timestamps
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.INFO,
        format=fmt if under_systemd else f"%(asctime)s {fmt}",
        stream=sys.stderr,
    )
    if verbose >= 1:
        logging.getLogger("edgelog").setLevel(logging.DEBUG)
    if verbose < 2:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except EdgelogError as exc:
        print(f"edgelog: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
