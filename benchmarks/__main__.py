"""`python -m benchmarks`: run the scenarios, print the tables, write results.json and a plot.

    python -m benchmarks                     # the full suite (default sizes), ~10 minutes
    python -m benchmarks --smoke --out /tmp/b  # tiny sizes, what CI runs (~1-2 minutes)
    python -m benchmarks --only coalescing,latency --n 20000
    python -m benchmarks --real              # include the real model servers in a smoke run

A full run without --only writes to benchmarks/results/ (the committed numbers); anything
else writes to --out, or a fresh temporary directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from . import (
    bulk,
    coalescing,
    frameworks,
    latency,
    memory,
    openloop,
    overhead,
    priority,
    providers,
    ratelimit,
    rayfleet,
    replicas,
    shared,
    tokens,
)
from ._common import (
    NEIGHBOURS,
    ROOT,
    Check,
    Scenario,
    fmt,
    git_revision,
    have,
    machine,
    table,
    versions,
)
from ._report import markdown

SCENARIOS = {
    m.NAME: m
    for m in (
        coalescing,
        openloop,
        bulk,
        overhead,
        latency,
        memory,
        ratelimit,
        replicas,
        priority,
        tokens,
    )
}
RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS[frameworks.NAME] = frameworks
SCENARIOS[rayfleet.NAME] = rayfleet
SCENARIOS[providers.NAME] = providers
SCENARIOS[shared.NAME] = shared


@dataclasses.dataclass
class Options:
    smoke: bool
    n: int | None
    real: bool
    infinity: str | None
    out: Path
    have_hf_hub: bool
    urls: list[str] = dataclasses.field(default_factory=list)

    def log(self, message: str) -> None:
        print(message, flush=True)


def find_infinity(explicit: str | None) -> str | None:
    """infinity_emb: --infinity, $EMBEDKIT_INFINITY, or the repo's .venv-infinity."""
    for candidate in (
        explicit,
        os.environ.get("EMBEDKIT_INFINITY"),
        str(ROOT / ".venv-infinity/bin/infinity_emb"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="embedkit against its peers, side by side."
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the suite runs")
    parser.add_argument("--out", type=Path, help="where results.json and benchmarks.png go")
    parser.add_argument("--only", help=f"comma-separated scenarios: {','.join(SCENARIOS)}")
    parser.add_argument("--n", type=int, help="concurrent single-text calls in 'coalescing'")
    parser.add_argument(
        "--real",
        action="store_true",
        help="run the real-model-server part of 'bulk' in smoke mode too",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        default=90.0,
        help="seconds a full run may wait, in all, for other processes to go quiet (default 90)",
    )
    parser.add_argument("--infinity", help="path to infinity_emb (default: $EMBEDKIT_INFINITY)")
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        help="a replica of your own (TEI root or HF-style URL); repeat it: the 'replicas' "
        "scenario then measures your replicas (alone, together, through nginx) instead of "
        "its cost-model servers (implies --only replicas)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # embedkit logs each 429 it waits out; the rate-limit scenario provokes hundreds on purpose.
    logging.getLogger("embedkit").setLevel(logging.ERROR)
    names = list(SCENARIOS)
    if args.url and not args.only:
        args.only = "replicas"
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
            return 2
    full = not args.smoke and not args.only
    out = args.out or (RESULTS if full else Path(tempfile.mkdtemp(prefix="embedkit-bench-")))
    out.mkdir(parents=True, exist_ok=True)
    opts = Options(
        smoke=args.smoke,
        n=args.n,
        real=args.real or not args.smoke,
        infinity=find_infinity(args.infinity),
        out=out,
        have_hf_hub=have("huggingface_hub"),
        urls=args.url,
    )
    # On a shared machine, hold each measurement until other processes are quiet (full runs
    # only, at most this many seconds in all); results.json records what they used anyway.
    NEIGHBOURS.budget = 0.0 if args.smoke else float(args.quiet_budget)
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "machine": machine(),
        "versions": versions(),
        "git": git_revision(),
        "scenarios": [],
    }
    print(f"embedkit benchmarks: {command}")
    print(f"machine: {report['machine']}")
    if not opts.have_hf_hub:
        print(
            "huggingface_hub is not installed: its rows are skipped (pip install 'embedkit[bench]')"
        )
    failures = 0
    scenarios: list[Scenario] = []
    for name in names:
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            scenario = SCENARIOS[name].run(opts)
        except Exception:
            failures += 1
            traceback.print_exc()
            scenario = Scenario(name=name, title=f"{name}: FAILED", setup={}, columns=[])
            scenario.notes.append("the scenario raised:\n" + traceback.format_exc(limit=5))
        scenario.seconds = time.perf_counter() - t0
        scenario.setup["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        busy = [
            r["raw"]["neighbour_cores"]
            for r in scenario.rows
            if isinstance(r.get("raw"), dict) and r["raw"].get("neighbour_cores") is not None
        ]
        if busy:
            scenario.setup["neighbour_cores_max"] = round(max(busy), 2)
            scenario.notes.append(
                f"Other processes on the machine used up to {max(busy):.2f} cores during the "
                "measured runs (results.json: neighbour_cores per run)."
            )
        scenarios.append(scenario)
        print_scenario(scenario)
        report["scenarios"].append(scenario.as_json())
    report["seconds"] = time.perf_counter() - started
    report["waited_for_quiet_s"] = (
        round(float(args.quiet_budget) - NEIGHBOURS.budget, 1) if not args.smoke else 0.0
    )
    checks = [c for s in scenarios for c in s.checks]
    print("\n== headline: targets vs measured")
    if args.smoke:
        print("(smoke sizes: this run checks that the suite works; its verdicts mean little)")
    print(headline(checks))
    print(f"\ntotal {report['seconds']:.0f} s")
    (out / "results.md").write_text(markdown(report), encoding="utf-8")
    (out / "results.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    try:
        from ._plot import plot

        plot(report, out / "benchmarks.png")
        print(f"wrote {out / 'results.json'} and {out / 'benchmarks.png'}")
    except ImportError:
        print(f"wrote {out / 'results.json'} (matplotlib is not installed: no plot)")
    return 1 if failures else 0


def print_scenario(scenario: Scenario) -> None:
    print(f"\n{scenario.title}  ({scenario.seconds:.0f} s)")
    if scenario.rows:
        print(table(scenario.columns, scenario.rows))
    for note in scenario.notes:
        print(f"  note: {note}")
    for check in scenario.checks:
        print(f"  {check.verdict}  {check.describe()}")
        if check.note:
            print(f"        ({check.note})")


def headline(checks: list[Check]) -> str:
    rows = [
        {"target": c.name, "wanted": c.target, "measured": _measured(c), "verdict": c.verdict}
        for c in checks
    ]
    return table(["target", "wanted", "measured", "verdict"], rows)


def _measured(check: Check) -> str:
    if check.measured is None:
        return "—"
    return f"{fmt(check.measured)} {check.unit}".strip()


if __name__ == "__main__":
    sys.exit(main())
