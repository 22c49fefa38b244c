"""`python -m bench`: benchmark the bridge on 127.0.0.1 and write the figures.

It starts its own Azurite, ClientTrack stand-ins and devhost processes on free ports in a
temporary directory and runs the ingest, delivery, Key Vault and start-up benchmarks.
It prints one table per benchmark with the targets met or missed, and writes every figure
as JSON to bench/results/. `--smoke` runs every benchmark with small counts, for CI.

Exit codes: 0 when every benchmark ran without errors, 1 when something broke (an
exception, an error or non-200 response, an event not delivered exactly once), 2 for
invalid arguments. A missed target does not change the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.corpus import build_deliveries, make_customers, queued_event
from bench.cpu import load_average
from bench.delivery import delivery_failures, run_delivery
from bench.environment import BenchEnvironment, machine_facts
from bench.ingest import ingest_failures, run_ingest
from bench.keyvault_reads import keyvault_failures, run_keyvault_reads
from bench.profiling import run_profiles
from bench.report import check_targets, render
from bench.startup import run_startup, startup_failures
from devhost.azurite import PROJECT_ROOT

BENCHMARKS = ("ingest", "delivery", "keyvault", "startup")
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
CUSTOMERS = 10


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number.") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1.")
    return value


def _concurrencies(text: str) -> list[int]:
    try:
        return [_positive(part) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers such as 16,64."
        ) from None


def _benchmarks(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r} names no known benchmark; choose from {', '.join(BENCHMARKS)}."
        )
    return names


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark ingest, delivery, Key Vault reads and start-up of the bridge "
        "against Azurite and local stand-ins on 127.0.0.1.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="small counts (200 events, one round) for CI; targets are reported, not enforced",
    )
    parser.add_argument(
        "--events",
        type=_positive,
        help="deliveries per ingest run and envelopes per delivery run (default 5000; "
        "200 with --smoke)",
    )
    parser.add_argument(
        "--keyvault-events",
        type=_positive,
        help="events ingested and delivered per Key Vault pass (default 10000; 200 with --smoke)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive,
        help="repetitions of each ingest comparison; the report gives medians "
        "(default 3; 1 with --smoke)",
    )
    parser.add_argument(
        "--delivery-rounds",
        type=_positive,
        help="repetitions of each delivery scenario; a round takes about ten minutes at "
        "5000 envelopes (default 2; 1 with --smoke)",
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrencies,
        default=[16, 64],
        help="ingest concurrency levels, comma-separated (default 16,64)",
    )
    parser.add_argument(
        "--only",
        type=_benchmarks,
        default=list(BENCHMARKS),
        help=f"benchmarks to run, comma-separated (default all: {','.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run devhost under pyinstrument for one ingest and one delivery run and "
        "sum its time up by component (results in bench/results/profile-*)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON result file (default bench/results/bench-<UTC time>.json)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory with the processes' logs and print its path",
    )
    return parser.parse_args(argv)


def _commit() -> str:
    completed = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    commit = completed.stdout.strip() or "unknown"
    return commit + ("-dirty" if dirty.stdout.strip() else "")


async def _run_async(
    args: argparse.Namespace, environment: BenchEnvironment, result: dict[str, Any]
) -> None:
    smoke = args.smoke
    events_count = args.events or (200 if smoke else 5000)
    keyvault_count = args.keyvault_events or (200 if smoke else 10_000)
    rounds = args.rounds or (1 if smoke else 3)
    delivery_rounds = args.delivery_rounds or (1 if smoke else 2)
    customers = make_customers(CUSTOMERS)
    # Separate ranges of Onfleet times, so no two benchmarks share an event id.
    deliveries = build_deliveries(events_count, customers, first_index=0)
    delivery_events = [
        queued_event(delivery)
        for delivery in build_deliveries(events_count, customers, first_index=1_000_000)
    ]
    keyvault_deliveries = build_deliveries(keyvault_count, customers, first_index=2_000_000)

    if "ingest" in args.only:
        _progress(f"ingest: {events_count} requests x {rounds} round(s) at {args.concurrency}")
        result["ingest"] = await run_ingest(
            environment,
            customers,
            deliveries,
            args.concurrency,
            rounds=rounds,
            log_dir=environment.root / "logs",
        )
    if "delivery" in args.only:
        _progress(
            f"delivery: {events_count} envelopes x {delivery_rounds} round(s), deep and batched, "
            "clean and 5% 500s"
        )
        result["delivery"] = await run_delivery(
            environment, customers, delivery_events, rounds=delivery_rounds
        )
    if "keyvault" in args.only:
        _progress(f"keyvault: {keyvault_count} events, default and short cache periods")
        result["keyvault"] = await run_keyvault_reads(
            environment,
            customers,
            keyvault_deliveries,
            short_cache_seconds=1.0 if smoke else 5.0,
        )
    if "startup" in args.only:
        repeats = 3 if smoke else 15
        _progress(f"startup: {repeats} fresh interpreters per measurement")
        result["startup"] = run_startup(environment, customers, repeats=repeats)
    if args.profile:
        _progress("profile: devhost under pyinstrument, ingest then delivery")
        result["profile"] = await run_profiles(
            environment,
            customers,
            deliveries,
            delivery_events,
            RESULTS_DIR,
            result["meta"]["stamp"],
        )


def _progress(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _failures(result: dict[str, Any]) -> list[str]:
    checks = (
        ("ingest", ingest_failures),
        ("delivery", delivery_failures),
        ("keyvault", keyvault_failures),
        ("startup", startup_failures),
    )
    problems: list[str] = []
    for section, check in checks:
        if result.get(section):
            problems.extend(check(result[section]))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS_DIR / f"bench-{stamp}.json"
    result: dict[str, Any] = {
        "meta": {
            "command": " ".join(["python", "-m", "bench", *(argv or sys.argv[1:])]),
            "started_at": started.isoformat(timespec="seconds"),
            "stamp": stamp,
            "smoke": args.smoke,
            "commit": _commit(),
            "machine": machine_facts(),
            "load_average_before": load_average(),
        }
    }

    clock = time.monotonic()
    crashed = False
    try:
        with BenchEnvironment(keep=args.keep) as environment:
            if args.keep:
                _progress(f"logs and data in {environment.root}")
            asyncio.run(_run_async(args, environment, result))
    except Exception:
        crashed = True
        result["crash"] = traceback.format_exc()
        traceback.print_exc()

    result["meta"]["seconds"] = round(time.monotonic() - clock, 1)
    result["meta"]["load_average_after"] = load_average()
    result["targets"] = check_targets(result)
    result["failures"] = _failures(result)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    print(render(result))
    print(f"\nResults written to {_display_path(output)}")
    return 1 if crashed or result["failures"] else 0


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(os.getcwd()).resolve()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
