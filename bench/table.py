"""The one table `python -m bench` prints: (section, measure, value) rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Line = tuple[str, str, str]


def n(x: float | None, digits: int = 0) -> str:
    """A number with thousands separators, or "-" for none."""
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def target(name: str, value: Any, wanted: str, met: bool | None) -> tuple[str, dict[str, Any]]:
    """One of the issue's targets: its value in this run, what is wanted, and whether it was met."""
    return name, {"value": value, "target": wanted, "met": met}


def target_lines(targets: dict[str, dict[str, Any]]) -> list[Line]:
    out = []
    for name, t in targets.items():
        verdict = {True: "met", False: "NOT met", None: "?"}[t["met"]]
        out.append(("targets", f"{name} (target {t['target']})", f"{t['value']}: {verdict}"))
    return out


def render(lines: Sequence[Line]) -> str:
    w1 = max(len(a) for a, _, _ in lines)
    w2 = max(len(b) for _, b, _ in lines)
    head = [f"{'':{w1}}  {'measure':{w2}}  value", f"{'-' * w1}  {'-' * w2}  {'-' * 40}"]
    return "\n".join(head + [f"{a:{w1}}  {b:{w2}}  {c}" for a, b, c in lines])
