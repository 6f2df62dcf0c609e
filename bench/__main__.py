"""`python -m bench [--quick] [--only NAME,...]`: edgelog's benchmark suite.

Starts its own MariaDB (mariadb-install-db + mariadbd in a temp dir, as the tests
do) and its own PAC3100 simulators (pymodbus TCP), runs the scenarios of
docs/performance.md, prints one table and writes the figures as JSON
(bench/results/latest.json unless --out). Figures that are compared are measured
side by side in the same run: machines are noisy, ratios less so. Nothing here
is a timed test: the targets are reported, never asserted.

The bench measures edgelog from outside: the real commands as subprocesses, timed by
their own timings log (``$EDGELOG_TIMINGS``, edgelog/timings.py) and watched through
/proc; or the library's public classes in this process. It patches nothing.

--quick is the smoke-sized version CI runs (about two minutes); the full run
(N = 1,000,000, a 10-minute cadence run at 10 Hz and a 10-minute card-wear run at
1 Hz) takes about 35 minutes on 2 cores. `--only` runs some scenarios (the
`layout` one only when named); `--catchup` the catch-up of many loggers, on its own
servers. `python -m bench.wear` and `python -m bench.layout` run theirs alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from . import drain, layout, live, meters, paths, scaling, steady, wear
from .kit import Bench, machine, say_since, timed, work_dir
from .plan import Plan
from .server import SERVER_PARAMS
from .table import render, target_lines

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"

#: The scenarios, in the order they run and print. Each module has `TITLE`,
#: `run(bench, results so far) -> its results`, `lines(results) -> table lines` and
#: `targets(results) -> the issue's targets it reports on`.
SCENARIOS: dict[str, ModuleType] = {
    "drain": drain,  # 1: drain vs LOAD DATA ceiling vs naive loop (and TCP, and an empty table)
    "paths": paths,  # 1: write paths side by side, and the profile
    "live": live,  # 2: edgelog run at 10 Hz draining a backlog
    "steady": steady,  # 3 poll path, 4 cadence, 5 footprint: edgelog run at 10 Hz
    "scaling": scaling,  # 6: the drain and its memory vs N
    "meters": meters,  # 6: 1, 8, 32 meters on buses of up to four
    "wear": wear,  # 7: bytes written per reading at 1 Hz
    "layout": layout,  # 8: table layout and aggregates (only with --only layout)
}
DEFAULT = [name for name in SCENARIOS if name != "layout"]


def run_all(plan: Plan, names: list[str], work: Path, say: Any) -> dict[str, Any]:
    bench = Bench(plan, work, say)
    results: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "plan": plan.__dict__,
        "scenarios": names,
        "server_params": list(SERVER_PARAMS),
        "batch_size": 2000,
    }
    started = time.time()
    with timed(say, "starting MariaDB"):
        bench.start()
    try:
        results["machine"] = machine(bench)
        for name in names:
            results.update(SCENARIOS[name].run(bench, results))
    finally:
        bench.stop()
    results["duration_s"] = time.time() - started
    results["targets"] = dict(t for name in names for t in SCENARIOS[name].targets(results))
    return results


def table(results: dict[str, Any]) -> str:
    lines = [line for name in results["scenarios"] for line in SCENARIOS[name].lines(results)]
    return render(lines + target_lines(results["targets"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-sized run (CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument(
        "--workdir", type=Path, help="keep the work files here (default: a temp dir, removed)"
    )
    parser.add_argument(
        "--only",
        metavar="NAME,...",
        help=f"run only these scenarios, in the suite's order: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--catchup",
        action="store_true",
        help="only the catch-up scenario: many loggers draining a day's backlog at once into one "
        "MariaDB, then into a 3-node Galera cluster (bench/catchup.py; results/catchup.json)",
    )
    args = parser.parse_args(argv)
    if args.catchup:
        from . import catchup

        return catchup.main(
            quick=args.quick, out=args.out if args.out != DEFAULT_OUT else catchup.DEFAULT_OUT
        )
    names = DEFAULT
    if args.only:
        wanted = {x.strip() for x in args.only.split(",") if x.strip()}
        unknown = wanted - SCENARIOS.keys()
        if unknown:
            parser.error(
                f"--only: no scenario {', '.join(sorted(unknown))} (there are: {', '.join(SCENARIOS)})"
            )
        names = [name for name in SCENARIOS if name in wanted]
    if not shutil.which("mariadbd", path="/usr/sbin:/usr/bin:/sbin:/bin"):
        print("bench: mariadbd not found (apt-get install mariadb-server)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    say = say_since(time.monotonic())
    with work_dir(args.workdir, "run-") as work:
        results = run_all(Plan.make(args.quick), names, work, say)
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
