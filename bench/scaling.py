"""6a. Scaling with N: the drain, its ceiling, their ratio and the drain's peak RSS for
backlogs of several sizes (the size of section 1 is taken from its first pair)."""

from __future__ import annotations

from typing import Any

from .ceiling import ceiling
from .kit import Bench, timed
from .logger import cli_drain
from .table import Line, n, target

TITLE = "drain and memory vs N"


def run(bench: Bench, results: dict[str, Any]) -> dict[str, Any]:
    rows = []
    first = results["drain"]["pairs"][0] if "drain" in results else None
    with timed(bench.say, "6a. drain and memory vs N"):
        for size in bench.plan.scaling_n:
            if first is not None and size == results["drain"]["rows"]:
                rows.append(_row(size, first["ceiling"], first["drain"]))
                continue
            built = bench.built(size)
            c = ceiling(bench, built)
            d = cli_drain(bench, built, tag=f"drain_n{size}")
            bench.drop_db(c["account"])
            bench.drop_db(d["account"])
            rows.append(_row(size, c, d))
    return {"scaling_n": rows}


def _row(size: int, c: dict[str, Any], d: dict[str, Any]) -> dict[str, Any]:
    return {
        "rows": size,
        "drain_rows_per_s": d["rows_per_s"],
        "ceiling_rows_per_s": c["rows_per_s"],
        "ratio": d["rows_per_s"] / c["rows_per_s"],
        "drain_peak_rss_mib": d["peak_rss_mib"],
    }


def lines(r: dict[str, Any]) -> list[Line]:
    return [
        (
            "6 scaling",
            f"N={row['rows']:,}: drain, ceiling rows/s, ratio, peak RSS MiB",
            f"{n(row['drain_rows_per_s'])}, {n(row['ceiling_rows_per_s'])}, {row['ratio']:.2f}, "
            f"{row['drain_peak_rss_mib']:.1f}",
        )
        for row in r["scaling_n"]
    ]


def targets(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    peaks = [row["drain_peak_rss_mib"] for row in r["scaling_n"]]
    flat = max(peaks) <= min(peaks) * 1.25 + 2
    return [target("sync --drain peak RSS vs N (MiB)", [round(x, 1) for x in peaks], "flat", flat)]
