"""`edgelog sync-status`: is the logger healthy? One look for a person, one exit code for a script.

Health
------
* **degraded** (exit 1) when the oldest unsent reading is older than `max_lag_s`
  (MariaDB or its link has been away too long, or the worker cannot keep up), or
  when a meter of the config has had no successful reading for more than
  `silent_intervals` of its sampling intervals (meter, wiring or `edgelog run`
  down), or when the clock is implausible (before 2026: every age is wrong), or
  at once when the configuration has a problem no retry can fix (the password
  file missing, readable by others, not a file or empty), seen here or recorded
  by the sync worker (`last_error_kind = "config"`), with the fix;
* **healthy** (exit 0) otherwise. MariaDB being unreachable *now* is not by itself
  degraded: readings wait in the buffer, that is the design; it becomes degraded
  through the backlog's age;
* exit 2 (raised by the buffer) when the buffer cannot be read at all.

Warnings (shown, not counted in the exit status): dropped or quarantined rows, a
clock that is not synchronised, MariaDB unreachable with a young backlog, the
drain rate being unknown.

The figures come from the buffer's read API (every field of `BufferStatus`,
whatever fields it gains, plus each meter's newest rows), the disk, a login to
MariaDB and the kernel's clock state. Nothing is written.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import clock, human
from .buffer import Buffer
from .clock import utc_iso
from .clockguard import CLOCK_STEPS_KEY, StepRecord
from .config import Config, MariaDBConfig, check_private_file, password_line
from .errors import ConfigError, EdgelogError
from .sync import MariaDBSink
from .sync.aggregates import FAILURE_KEY, Failure
from .sync.mariadb import cause
from .sync.nodes import NODE_KEY, NODES_FAILED_KEY, parse_failed
from .sync.worker import ERROR_KIND_KEY, SYNC_PATH_KEY

#: Default of `--max-lag`: a backlog older than this is degraded.
DEFAULT_MAX_LAG_S = 1800.0
#: Default of `--max-silence`: a meter without a reading for this many intervals is silent.
DEFAULT_SILENT_INTERVALS = 10
HOUR_S = 3600.0
#: The cause of a gap row: its `error` up to the first ": " (meter.py, service.SKIPPED).
CAUSE_MAX_CHARS = 48


@dataclass
class MeterState:
    name: str
    interval_s: float | None  # None: in the buffer, no longer in the config
    last_reading_at: float | None = None
    last_poll_at: float | None = None
    last_poll_error: str | None = None
    polls_last_hour: int = 0
    failed_polls_last_hour: int = 0
    #: gap rows of the last hour by cause: "timeout", "exception 02 illegal data address",
    #: "skipped" (a slot its bus was too busy to poll), ...
    gaps_last_hour: dict[str, int] = field(default_factory=dict)
    silent: bool = False

    @property
    def skipped_last_hour(self) -> int:
        return self.gaps_last_hour.get("skipped", 0)

    def age_s(self, now: float) -> float | None:
        return None if self.last_reading_at is None else now - self.last_reading_at

    def to_json(self, now: float) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "name"}
        data.update(
            last_reading_at=utc_iso(self.last_reading_at),
            last_poll_at=utc_iso(self.last_poll_at),
            age_s=_round(self.age_s(now)),
            skipped_last_hour=self.skipped_last_hour,
        )
        return data


@dataclass
class Health:
    now: float
    site: str
    buffer: dict[str, Any]  # asdict(BufferStatus): every field it has
    buffer_max_bytes: int
    meters: list[MeterState]
    max_lag_s: float
    silent_intervals: float
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    sync_rate: float | None = None
    #: how the sink writes backlog batches, as the worker recorded it: "binary", or
    #: "plain (why)"; None until a worker has run
    sync_path: str | None = None
    mariadb_reachable: bool | None = None
    mariadb_error: str | None = None
    #: the node (server) the sync worker last wrote through, and the ones whose last try
    #: failed: label -> {"error", "at"} (from the buffer meta the worker keeps)
    mariadb_node: str | None = None
    mariadb_nodes_failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock_synchronised: bool | None = None
    clock_plausible: bool = True
    #: the clock steps `edgelog run` saw (its cadence's count, kept in the buffer)
    clock_steps: StepRecord = field(default_factory=StepRecord)
    #: `[mariadb] aggregates`, and why the aggregate tables are behind (None: they are not)
    aggregates: bool = True
    aggregates_failure: Failure | None = None
    #: a configuration problem no retry can fix, with its fix (None: none seen)
    config_problem: str | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return "degraded" if self.problems else "healthy"

    @property
    def exit_status(self) -> int:
        return 1 if self.problems else 0

    @property
    def lag_s(self) -> float | None:
        oldest = self.buffer.get("oldest_unsent_at")
        return None if oldest is None else max(0.0, self.now - oldest)

    @property
    def arrival_rate(self) -> float:
        """Rows per second the meters add to the buffer."""
        return sum(1.0 / m.interval_s for m in self.meters if m.interval_s)

    @property
    def drain_eta_s(self) -> float | None:
        """Seconds until nothing is unsent, at the last measured rate (None: unknown or never)."""
        unsent = self.buffer.get("unsent") or 0
        if not unsent:
            return 0.0
        if self.sync_rate is None or self.mariadb_reachable is False:
            return None
        net = self.sync_rate - self.arrival_rate
        return unsent / net if net > 0 else None

    # -- output ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Every figure, machine-readable: times ISO-8601 UTC, durations in seconds."""
        data: dict[str, Any] = {
            k: (utc_iso(v) if k.endswith("_at") and isinstance(v, int | float) else v)
            for k, v in self.buffer.items()
        }
        data.update({k: getattr(self, k) for k in AS_THEY_ARE})
        failed, agg, steps = self.mariadb_nodes_failed, self.aggregates_failure, self.clock_steps
        data.update(
            mariadb_nodes_failed={
                label: {"error": f.get("error"), "since": utc_iso(_float_or_none(f.get("at")))}
                for label, f in failed.items()
            },
            state=self.state,
            problems=list(self.problems),
            warnings=list(self.warnings),
            checked_at=utc_iso(self.now),
            lag_s=_round(self.lag_s),
            sync_rate_rows_per_s=_round(self.sync_rate),
            drain_eta_s=_round(self.drain_eta_s),
            silent_after_intervals=self.silent_intervals,
            clock_steps=steps.count,
            last_clock_step_at=utc_iso(steps.last_at),
            last_clock_step_s=steps.last_step_s,
            aggregates_error=agg.error if agg else None,
            aggregates_error_since=utc_iso(agg.since if agg else None),
            aggregates_failed_rounds=agg.failed_rounds if agg else 0,
            aggregates_pending_minutes=(agg.pending_minutes if agg else 0) if self.aggregates else None,
            meters={m.name: m.to_json(self.now) for m in self.meters},
        )
        return data


#: Health fields the JSON shows as they are, under their own names.
AS_THEY_ARE = (
    "mariadb_reachable",
    "mariadb_error",
    "mariadb_node",
    "config_problem",
    "max_lag_s",
    "sync_path",
    "buffer_max_bytes",
    "disk_free_bytes",
    "disk_total_bytes",
    "clock_synchronised",
    "clock_plausible",
    "aggregates",
)


def _round(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 3)


# -- gathering -----------------------------------------------------------------------------


def evaluate(
    cfg: Config,
    max_lag_s: float = DEFAULT_MAX_LAG_S,
    silent_intervals: float = DEFAULT_SILENT_INTERVALS,
    now: float | None = None,
    ping: bool = True,
) -> Health:
    """Read the buffer (BufferError, exit 2, if it cannot be read), ask MariaDB, judge."""
    buffer = Buffer(cfg.buffer.path, create=False)
    try:
        status = buffer.status()
        now = time.time() if now is None else now
        meters = _meters(buffer, cfg, now, silent_intervals)
        rate = buffer.sync_rate()
        sync_path = buffer.get_meta(SYNC_PATH_KEY)
        node, failed = buffer.get_meta(NODE_KEY), parse_failed(buffer.get_meta(NODES_FAILED_KEY))
        recorded_kind = buffer.get_meta(ERROR_KIND_KEY)
        steps = StepRecord.from_json(buffer.get_meta(CLOCK_STEPS_KEY))
        failure = Failure.from_json(buffer.get_meta(FAILURE_KEY)) if cfg.mariadb.aggregates else None
    finally:
        buffer.close()
    health = Health(
        now=now,
        site=cfg.site,
        buffer=asdict(status),
        buffer_max_bytes=cfg.buffer.max_bytes,
        meters=meters,
        max_lag_s=max_lag_s,
        silent_intervals=silent_intervals,
        sync_rate=rate,
        sync_path=sync_path,
        mariadb_node=node,
        mariadb_nodes_failed=failed,
        clock_steps=steps,
        aggregates=cfg.mariadb.aggregates,
        aggregates_failure=failure,
    )
    health.config_problem = password_problem(cfg.mariadb)
    if health.config_problem is None and recorded_kind == "config" and status.last_error:
        health.config_problem = status.last_error  # what `run` sees, as its user
    try:
        usage = shutil.disk_usage(Path(cfg.buffer.path).parent)
        health.disk_free_bytes, health.disk_total_bytes = usage.free, usage.total
    except OSError:
        pass
    if ping:
        sink = MariaDBSink(cfg.mariadb, cfg.site)
        try:
            sink.ping()
            health.mariadb_reachable = True
        except ConfigError as exc:  # not asked: e.g. this user may not read the password file
            health.mariadb_error = f"not checked: {exc}"
        except EdgelogError as exc:
            health.mariadb_reachable, health.mariadb_error = False, str(exc)
        finally:
            sink.close()
    health.clock_synchronised = clock.kernel_synchronised()
    health.clock_plausible = now >= clock.EARLIEST_PLAUSIBLE
    judge(health)
    return health


def password_problem(c: MariaDBConfig) -> str | None:
    """What is wrong with the password file for any user, with the fix (missing, readable
    by others, not a regular file, empty), or None. A file this user may not read is not
    a problem: the service user may."""
    if c.password_file is None:
        return None
    try:
        os.stat(c.password_file)
    except PermissionError:
        return None
    except OSError:
        pass  # check_private_file says what
    try:
        check_private_file(c.password_file, "[mariadb] password_file", owner_only=True)
        if os.access(c.password_file, os.R_OK):
            password_line(c.password_file)
    except ConfigError as exc:
        return str(exc)
    return None


def _float_or_none(text: Any) -> float | None:
    try:
        value = float(text) if text is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _meters(buffer: Buffer, cfg: Config, now: float, silent_intervals: float) -> list[MeterState]:
    states = {m.name: MeterState(m.name, m.interval_s) for m in cfg.meters}
    # The last hour, newest first by seq (the rowid: no index needed). Enough rows for
    # every configured meter's hour at its interval, twice over.
    expected = sum(HOUR_S / m.interval_s for m in cfg.meters) if cfg.meters else 3600.0
    limit = int(min(2 * expected + 1000, 2_000_000))
    for meter, at, error in buffer.recent_polls(limit):
        if at < now - HOUR_S or at > now + 60:
            continue
        state = states.setdefault(meter, MeterState(meter, None))
        state.polls_last_hour += 1
        if error is not None:
            state.failed_polls_last_hour += 1
            cause = gapcause(error)
            state.gaps_last_hour[cause] = state.gaps_last_hour.get(cause, 0) + 1
    for name, state in states.items():
        good = buffer.newest(name, good_only=True)
        state.last_reading_at = good.measured_at if good else None
        last = buffer.newest(name)
        if last:
            state.last_poll_at, state.last_poll_error = last.measured_at, last.error
        if state.interval_s:
            age = state.age_s(now)
            state.silent = age is None or age > silent_intervals * state.interval_s
    return list(states.values())


def gapcause(error: str) -> str:
    """The cause of a gap row: its `error` up to the first ": " (`timeout`, `no connection`,
    `exception 02 illegal data address`, `bad answer`, `skipped`)."""
    return _clip(error.partition(": ")[0], CAUSE_MAX_CHARS)


def judge(health: Health) -> None:
    """Fill `problems` (degraded) and `warnings` (shown only)."""
    h = health
    if h.config_problem:
        h.problems.append(f"configuration: {h.config_problem}")
    if not h.clock_plausible:
        h.problems.append(f"the clock says {human.instant(h.now)}, before 2026: it restarted in the past")
    lag = h.lag_s
    if lag is not None and lag > h.max_lag_s:
        why = "MariaDB unreachable" if h.mariadb_reachable is False else "sync not keeping up"
        h.problems.append(
            f"backlog {human.duration(lag)} behind (limit {human.duration(h.max_lag_s)}): {why}"
        )
    for m in h.meters:
        if not m.silent:
            continue
        limit = h.silent_intervals * (m.interval_s or 0)
        if m.last_reading_at is None:
            h.problems.append(f"meter {m.name}: no reading in this buffer yet")
        else:
            h.problems.append(
                f"meter {m.name}: silent for {human.duration(m.age_s(h.now))} (limit {human.duration(limit)})"
            )
    if h.mariadb_reachable is False and (lag is None or lag <= h.max_lag_s):
        h.warnings.append("MariaDB unreachable now; readings wait in the buffer")
    if h.mariadb_reachable is None and h.mariadb_error and not h.config_problem:
        h.warnings.append(f"MariaDB {h.mariadb_error}")
    if h.clock_synchronised is False and h.clock_plausible:
        h.warnings.append("clock not synchronised: new readings are flagged clock_ok=0")
    for key, value in h.buffer.items():
        if (key.startswith(("dropped", "quarantin")) or "corrupt" in key) and _nonzero(value):
            h.warnings.append(f"{key.replace('_', ' ')}: {_show(key, value, h.now)}")
    if h.aggregates_failure:
        f = h.aggregates_failure
        h.warnings.append(
            f"aggregate tables not updated for {human.duration(h.now - f.since)} "
            f"({human.count(f.pending_minutes)} min pending): {_clip(cause(f.error), 60)}"
        )
    if h.sync_path and h.sync_path.startswith("plain (fast path"):
        h.warnings.append(f"backlog batches take the slower {h.sync_path}")
    if h.buffer.get("unsent") and h.sync_rate is None and h.mariadb_reachable:
        h.warnings.append("drain rate unknown until the sync worker records one")


def _nonzero(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value > 0
    return bool(value)


# -- the screen ----------------------------------------------------------------------------

#: BufferStatus fields the screen shows in its own lines; any other field is listed under "Buffer".
_SHOWN = {
    "path",
    "buffer_id",
    "unsent",
    "oldest_unsent_at",
    "failed_polls_unsent",
    "last_reading_at",
    "last_sync_at",
    "last_error",
    "last_error_at",
    "dropped_total",
    "size_bytes",
    "readings_total",
    "sent_upto",
}


def render(h: Health, colour: bool = False) -> str:
    """One screen (about 20 lines of at most ~80 columns) for a person."""
    b, now = h.buffer, h.now
    ok = h.state == "healthy"
    lines = [
        f"edgelog {human.paint('sync-status', 'bold', colour)} · site {h.site} · {human.instant(now)}",
        "State    "
        + human.paint("HEALTHY" if ok else "DEGRADED", "green" if ok else "red", colour)
        + ("" if ok else ": " + h.problems[0]),
    ]
    lines += [f"         {p}" for p in h.problems[1:]]
    lines.append("")
    lines.append("Meters   name           last reading            age          failed polls (1 h)")
    for m in h.meters:
        age = m.age_s(now)
        text = f"         {m.name:<14} {_when(m.last_reading_at):<23} {human.duration(age):<12} "
        text += f"{human.count(m.failed_polls_last_hour)} of {human.count(m.polls_last_hour)}"
        if m.silent:
            text = human.paint(text + "  SILENT", "red", colour)
        elif m.interval_s is None:
            text += "  (not in config)"
        lines.append(text)
        if m.gaps_last_hour:
            causes = sorted(m.gaps_last_hour.items(), key=lambda kv: (-kv[1], kv[0]))
            shown = ", ".join(f"{human.count(n)} {cause}" for cause, n in causes[:3])
            more = f", {len(causes) - 3} more causes" if len(causes) > 3 else ""
            lines.append(f"{'':26}gaps (1 h): {_clip(shown + more, 54)}")
        if m.last_poll_error and (m.last_reading_at is None or (m.last_poll_at or 0) > m.last_reading_at):
            lines.append(f"{'':26}last poll failed: {_clip(m.last_poll_error, 50)}")
    lines.append("")
    size_line = f"Buffer   {human.size(b.get('size_bytes'))} of {human.size(h.buffer_max_bytes)}"
    if h.disk_free_bytes is not None:
        size_line += f"; {human.size(h.disk_free_bytes)} free on disk"
    lines.append(size_line + f"  ({b.get('path')})")
    unsent = b.get("unsent") or 0
    if unsent:
        lag = h.lag_s
        behind = f"{human.duration(lag)} behind"
        if lag is not None and lag > h.max_lag_s:
            behind = human.paint(behind, "red", colour)
        failed = b.get("failed_polls_unsent") or 0
        lines.append(
            f"Backlog  {human.count(unsent)} unsent"
            + (f" ({human.count(failed)} failed polls)" if failed else "")
            + f"; oldest {behind}"
        )
        eta = h.drain_eta_s
        if h.mariadb_reachable is False:
            drain = "waiting for MariaDB"
        elif eta is not None:
            drain = f"about {human.duration(eta)} to drain at {human.rate(h.sync_rate)}"
        elif h.sync_rate is not None:
            drain = f"{human.rate(h.sync_rate)}: not faster than readings arrive"
        else:
            drain = "time to drain unknown (no measured rate yet)"
        lines.append(f"         {drain}")
    else:
        lines.append("Backlog  nothing unsent")
    lines.append(f"Sync     last batch {_ago(b.get('last_sync_at'), now)}")
    if b.get("last_error"):
        lines.append(f"         last error {_ago(b.get('last_error_at'), now)}: {_clip(b['last_error'], 52)}")
    if h.mariadb_reachable:
        lines.append("MariaDB  " + human.paint("answers now", "green", colour))
    elif h.mariadb_reachable is False:
        why = cause(h.mariadb_error or "")
        lines.append("MariaDB  " + human.paint("unreachable now", "yellow", colour) + ": " + _clip(why, 54))
    lines += _node_lines(h)
    lines.append("Tables   " + _aggregates_line(h, colour))
    losses = [f"{human.count(b.get('dropped_total') or 0)} dropped"]
    quarantine = [(k, v) for k, v in b.items() if _is_quarantine_count(k, v)]
    losses += [f"{_show(k, v, now)} {k.replace('_', ' ')}" for k, v in quarantine]
    lines.append("Losses   " + ", ".join(losses))
    if not h.clock_plausible:
        clk = human.paint("implausible (before 2026)", "red", colour)
    elif h.clock_synchronised:
        clk = "synchronised"
    elif h.clock_synchronised is False:
        clk = human.paint("NOT synchronised (readings flagged clock_ok=0)", "yellow", colour)
    else:
        clk = "sync state unknown"
    lines.append(f"Clock    {clk}")
    steps = h.clock_steps
    if steps.count and steps.last_step_s is not None:
        size = human.duration(abs(steps.last_step_s))
        way = "back" if steps.last_step_s < 0 else "forward"
        lines.append(
            f"         {human.count(steps.count)} step(s) seen by the logger; the last {size} {way}, "
            f"{_ago(steps.last_at, now)}"
        )
    lines.append(
        f"Totals   {human.count(b.get('readings_total'))} readings ever; sent up to seq "
        f"{b.get('sent_upto')}; buffer id {b.get('buffer_id')}"
    )
    others = [(k, v) for k, v in b.items() if k not in _SHOWN and not _is_quarantine_count(k, v)]
    for k, v in others:
        lines.append(f"         {k.replace('_', ' ')}: {_show(k, v, now)}")
    for w in h.warnings:
        lines.append(human.paint(f"Note     {w}", "yellow", colour))
    return "\n".join(lines)


def _node_lines(h: Health) -> list[str]:
    """The node the worker writes through and the ones that failed, as it recorded them."""
    lines = [f"         sync writes through {h.mariadb_node}"] if h.mariadb_node else []
    for label, failure in h.mariadb_nodes_failed.items():
        error = str(failure.get("error") or "")
        why = error.rpartition(f"{label}/")[2].partition(": ")[2] or error
        since = _float_or_none(failure.get("at"))
        when = f" (failing since {_ago(since, h.now)})" if since else ""
        lines.append(f"         {label} failed{when}: {_clip(why, 40)}")
    return lines


def _aggregates_line(h: Health, colour: bool) -> str:
    """Whether the per-minute and 15-minute tables are kept, and kept up."""
    if not h.aggregates:
        return "aggregate tables off ([mariadb] aggregates = false)"
    f = h.aggregates_failure
    if f is None:
        return "aggregate tables updated after each sync round"
    behind = f"aggregate tables NOT updated for {human.duration(h.now - f.since)}"
    return human.paint(behind, "yellow", colour) + f" ({human.count(f.pending_minutes)} min pending)"


def _is_quarantine_count(key: str, value: Any) -> bool:
    return key.startswith("quarantin") and isinstance(value, int) and not isinstance(value, bool)


def _when(ts: float | None) -> str:
    return "never" if ts is None else human.instant(ts).removesuffix(" UTC")


def _ago(ts: float | None, now: float) -> str:
    return "never" if ts is None else f"{human.duration(now - ts)} ago"


def _clip(text: str | None, n: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def _show(key: str, value: Any, now: float) -> str:
    """A BufferStatus field of any name, in human units guessed from its name and type."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith("_at") and isinstance(value, int | float):
        return f"{human.instant(value)} ({_ago(value, now)})"
    if key.endswith("bytes") and isinstance(value, int | float):
        return human.size(value)
    if key.endswith("_s") and isinstance(value, int | float):
        return human.duration(value)
    if isinstance(value, int):
        return human.count(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(x) for x in value) or "none"
    return _clip(str(value), 60)
