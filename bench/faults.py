"""`python -m bench.faults`: deliver signed webhooks through crashes and outages, lose none.

One run (`make faults`, or `--smoke` for CI with 300 deliveries) starts Azurite, a ClientTrack
stand-in and devhost as real processes on free ports of 127.0.0.1, in a temporary directory,
and sends 10,000 signed deliveries for 5 customers while:

- the stand-in fails 30% of the requests that pass its checks, in five equal parts: 500, 503
  and 429 (both with `Retry-After`), a response later than
  `CLIENTTRACK_READ_TIMEOUT_SECONDS`, and a connection closed without a response;
- devhost is killed with SIGKILL twice and started again, at seeded points of the run;
- Azurite is stopped and started again once, on the same ports and data directory.

The sender resends every delivery that did not get a 200 (a 503 during an outage, a
connection error while devhost is down), as Onfleet does. Once the queue is empty, every
accepted delivery must be at ClientTrack or in the poison queue; `python -m ops.poison
replay` then sends the parked ones back, round after round until the poison queue is empty.

The run prints the fault matrix, writes it as JSON (default `bench/results/`), and exits 1
if an accepted delivery never reached ClientTrack (lost > 0), a delivery was never accepted
or the queue did not drain, and 2 if a process could not start.

Settings of the run, and why: `RETRY_BASE_SECONDS` 0.2 and `RETRY_MAX_DELAY_SECONDS` 2 keep
each retry delay at 1 or 2 seconds (Storage takes whole seconds), so retries finish in
minutes instead of the hours production backoff would take; `MAX_DELIVERY_ATTEMPTS` 3 parks
about 0.3^3 = 2.7% of the events, so every run exercises parking and replay;
`CLIENTTRACK_READ_TIMEOUT_SECONDS` 1 lets a 2-second late answer count as a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from bench.faults_clienttrack import TIMEOUT_STATUS
from bench.faults_report import (
    RecordReader,
    classify_duplicates,
    count_devhost_log,
    format_matrix,
)
from bench.faults_sender import (
    Delivery,
    SendTally,
    build_deliveries,
    make_customers,
    send_all,
)
from bench.faults_stack import FUNCTION_TIMEOUT, QUEUE_NAME, FaultStack, StandInFaults
from devhost.azurite import PROJECT_ROOT

FULL_DELIVERIES = 10_000
SMOKE_DELIVERIES = 300
CUSTOMERS = 5
CONCURRENCY = 16
FAULT_RATE = 0.30
FAILURE_STATUSES = (500, 503, 429)
RETRY_AFTER_SECONDS = 1.0
DEFAULT_SEED = 20261204
RUN_SETTINGS = {
    "RETRY_BASE_SECONDS": "0.2",
    "RETRY_MAX_DELAY_SECONDS": "2",
    "MAX_DELIVERY_ATTEMPTS": "3",
    "CLIENTTRACK_CONNECT_TIMEOUT_SECONDS": "1",
    "CLIENTTRACK_READ_TIMEOUT_SECONDS": "1",
}
# Twice the read timeout above, so the bridge gives up well before the late response.
TIMEOUT_DELAY_SECONDS = 2.0
# Faults fire when this fraction of the deliveries has been accepted, drawn from the seed
# inside this window, so each one lands while deliveries still arrive.
FAULT_WINDOW = (0.15, 0.85)
DEVHOST_DOWNTIME_SECONDS = (0.5, 2.0)
AZURITE_DOWNTIME_SECONDS = (3.0, 6.0)
# How long the queue may take to drain: a message held by a killed devhost alone waits out
# its 70 s lease.
FULL_SETTLE_TIMEOUT_SECONDS = 1200.0
SMOKE_SETTLE_TIMEOUT_SECONDS = 150.0
SETTLE_POLL_SECONDS = 1.0
SETTLED_READINGS = 2
MAX_REPLAY_ROUNDS = 5
OPS_TIMEOUT_SECONDS = 600.0
PROGRESS_SECONDS = 10.0
RESULTS_DIRECTORY = PROJECT_ROOT / "bench" / "results"

DEVHOST_KILL = "devhost-kill"
AZURITE_RESTART = "azurite-restart"
EXIT_OK = 0
EXIT_LOST = 1
EXIT_HARNESS = 2
_REPLAY_FINISHED = re.compile(r"Replay finished: moved (\d+), skipped (\d+), failed (\d+)\.")


@dataclass(frozen=True)
class PlannedFault:
    """A process fault: what, at which fraction of accepted deliveries, for how long."""

    kind: str
    at_fraction: float
    downtime_seconds: float


@dataclass(frozen=True)
class RunConfig:
    deliveries: int
    customers: int
    concurrency: int
    seed: int
    smoke: bool
    settle_timeout_seconds: float


def stand_in_faults(seed: int) -> StandInFaults:
    """Split `FAULT_RATE` into five equal fault kinds, as the stand-in draws them in turn.

    The stand-in first draws a timeout, then a dropped connection, then a failure status, so
    each later rate is raised to make up for the requests the earlier draws took.
    """
    share = FAULT_RATE / 5
    timeout_rate = share
    drop_rate = share / (1 - timeout_rate)
    fail_rate = 3 * share / ((1 - timeout_rate) * (1 - drop_rate))
    return StandInFaults(
        timeout_rate=timeout_rate,
        drop_connection_rate=drop_rate,
        fail_rate=fail_rate,
        statuses=FAILURE_STATUSES,
        retry_after_seconds=RETRY_AFTER_SECONDS,
        timeout_delay_seconds=TIMEOUT_DELAY_SECONDS,
        seed=seed,
    )


def plan_faults(rng: random.Random) -> list[PlannedFault]:
    kinds = [DEVHOST_KILL, DEVHOST_KILL, AZURITE_RESTART]
    rng.shuffle(kinds)
    points = sorted(rng.uniform(*FAULT_WINDOW) for _ in kinds)
    plan = []
    for kind, point in zip(kinds, points, strict=True):
        window = DEVHOST_DOWNTIME_SECONDS if kind == DEVHOST_KILL else AZURITE_DOWNTIME_SECONDS
        plan.append(PlannedFault(kind, round(point, 3), round(rng.uniform(*window), 2)))
    return plan


def _log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


async def _inject_faults(
    stack: FaultStack,
    plan: Sequence[PlannedFault],
    tally: SendTally,
    total: int,
) -> list[dict[str, Any]]:
    executed: list[dict[str, Any]] = []
    started = time.monotonic()
    for fault in plan:
        if not await tally.wait_for_accepted(math.ceil(fault.at_fraction * total)):
            _log(f"sending ended before the {fault.kind} at {fault.at_fraction:.0%}; not injected")
            continue

        fired = time.monotonic()
        accepted = len(tally.accepted_event_ids)
        if fault.kind == DEVHOST_KILL:
            await asyncio.to_thread(stack.kill_devhost)
            _log(f"devhost killed with SIGKILL after {accepted} accepted deliveries")
            await asyncio.sleep(fault.downtime_seconds)
            await asyncio.to_thread(stack.start_devhost)
        else:
            await asyncio.to_thread(stack.stop_azurite)
            _log(f"Azurite stopped after {accepted} accepted deliveries")
            await asyncio.sleep(fault.downtime_seconds)
            await asyncio.to_thread(stack.start_azurite)
        back = time.monotonic()
        _log(f"{fault.kind}: back after {back - fired:.1f} s")
        executed.append(
            {
                **asdict(fault),
                "acceptedWhenFired": accepted,
                "firedAtSeconds": round(fired - started, 2),
                "outageSeconds": round(back - fired, 2),
            }
        )
    return executed


async def _report_progress(tally: SendTally, total: int, sending: asyncio.Task[None]) -> None:
    while not sending.done():
        await asyncio.sleep(PROGRESS_SECONDS)
        _log(
            f"accepted {len(tally.accepted_event_ids)}/{total}, requests {tally.requests}, "
            f"resends {sum(tally.resends.values())}"
        )


async def send_with_faults(
    stack: FaultStack,
    deliveries: Sequence[Delivery],
    plan: Sequence[PlannedFault],
    concurrency: int,
) -> tuple[SendTally, list[dict[str, Any]]]:
    """Send every delivery while the planned faults fire, and return the tally and the faults."""
    tally = SendTally()
    sending = asyncio.create_task(
        send_all(stack.base_url, deliveries, concurrency=concurrency, tally=tally)
    )
    faults = asyncio.create_task(_inject_faults(stack, plan, tally, len(deliveries)))
    progress = asyncio.create_task(_report_progress(tally, len(deliveries), sending))
    try:
        await asyncio.wait({sending, faults}, return_when=asyncio.FIRST_EXCEPTION)
        if faults.done() and faults.exception() is not None:
            # A process that did not come back would leave the sender retrying for minutes.
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            await faults
        await sending
        executed = await faults
    finally:
        progress.cancel()
    return tally, executed


def wait_until_drained(connection_string: str, timeout_seconds: float) -> bool:
    """Wait until the events queue is empty, leased and delayed messages included."""
    deadline = time.monotonic() + timeout_seconds
    empty_readings = 0
    with QueueClient.from_connection_string(connection_string, QUEUE_NAME) as queue:
        while time.monotonic() < deadline:
            depth = queue.get_queue_properties().approximate_message_count or 0
            # A retry is enqueued before its original is deleted, so the depth is never 0
            # while a delivery is in progress. A second reading guards against a stale count.
            empty_readings = empty_readings + 1 if depth == 0 else 0
            if empty_readings >= SETTLED_READINGS:
                return True
            time.sleep(SETTLE_POLL_SECONDS)
    return False


def _ops_cli(stack: FaultStack, *arguments: str) -> subprocess.CompletedProcess[str]:
    # The connection string travels in the environment, where the CLI reads the app setting,
    # rather than on the command line.
    env = {
        **os.environ,
        "AzureWebJobsStorage": stack.connection_string,
        "ONFLEET_EVENTS_QUEUE": QUEUE_NAME,
    }
    return subprocess.run(
        [sys.executable, "-m", "ops.poison", *arguments],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=OPS_TIMEOUT_SECONDS,
        check=False,
    )


def list_poison(stack: FaultStack) -> list[dict[str, Any]]:
    """Return the rows of `ops.poison list --json`, none when the poison queue does not exist."""
    with QueueClient.from_connection_string(
        stack.connection_string, QUEUE_NAME + "-poison"
    ) as poison:
        try:
            poison.get_queue_properties()
        except ResourceNotFoundError:
            return []
    result = _ops_cli(stack, "list", "--json")
    if result.returncode != 0:
        raise RuntimeError(f"ops.poison list failed ({result.returncode}): {result.stderr.strip()}")
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def replay_poison(stack: FaultStack) -> tuple[int, int, str]:
    """Run `ops.poison replay` and return the messages moved and failed, and its last line."""
    result = _ops_cli(stack, "replay")
    match = _REPLAY_FINISHED.search(result.stdout)
    if match is None:
        raise RuntimeError(
            f"ops.poison replay failed ({result.returncode}): {result.stderr.strip()}"
        )
    return int(match[1]), int(match[3]), match[0]


def machine_facts() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    azurite_package = PROJECT_ROOT / "node_modules" / "azurite" / "package.json"
    try:
        azurite_version = json.loads(azurite_package.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        azurite_version = "unknown"
    return {
        "cpu": cpu,
        "logicalCores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "azurite": azurite_version,
    }


def build_result(
    config: RunConfig,
    deliveries: Sequence[Delivery],
    tally: SendTally,
    before: dict[str, Any],
    after: dict[str, Any],
    replay: dict[str, Any],
    stack: FaultStack,
    executed: list[dict[str, Any]],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Combine the snapshots taken before and after the replay into the run's result."""
    accepted = tally.accepted_event_ids
    records = after["records"]
    delivered_before: set[str] = before["delivered"] & accepted
    parked_before = {row["eventId"] for row in before["poison"]} & accepted
    delivered_after: set[str] = records.delivered_event_ids & accepted
    payloads = {delivery.event_id: delivery.payload() for delivery in deliveries}
    mismatches = sum(
        1
        for event_id, payload in records.payload_by_event_id.items()
        if event_id in payloads and payloads[event_id] != payload
    )
    log_counts = count_devhost_log(stack.devhost_log())
    statuses = records.statuses
    clienttrack_faults = {
        "clienttrack500": statuses[500],
        "clienttrack503": statuses[503],
        "clienttrack429": statuses[429],
        "clienttrackTimeout": statuses[TIMEOUT_STATUS],
        "clienttrackDropped": records.dropped,
        "clienttrackRequests": records.requests,
    }
    faulted = sum(
        value for key, value in clienttrack_faults.items() if key != "clienttrackRequests"
    )
    lost = len(accepted - delivered_after)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "config": {
            **asdict(config),
            "appSettings": RUN_SETTINGS,
            "functionTimeout": FUNCTION_TIMEOUT,
            "faultRate": FAULT_RATE,
            "standIn": asdict(stand_in_faults(config.seed)),
        },
        "matrix": {
            "sent": len(deliveries),
            "requestsSent": tally.requests,
            "accepted": len(accepted),
            "resentAfter503": tally.resends["503"],
            "resentAfterConnectionError": tally.resends["connection-error"],
            "resentAfterTimeout": tally.resends["timeout"],
            "resentAfterOtherStatus": sum(
                count for cause, count in tally.resends.items() if cause.startswith("status-")
            ),
            "neverAccepted": len(tally.given_up),
            "deliveredBeforeReplay": len(delivered_before),
            "parkedBeforeReplay": len(parked_before - delivered_before),
            "unaccountedBeforeReplay": len(accepted - delivered_before - parked_before),
            "replayed": replay["moved"],
            "replayRounds": replay["rounds"],
            "deliveredAfterReplay": len(delivered_after),
            "lost": lost,
            "duplicated": records.duplicates,
            "duplicateCauses": classify_duplicates(records, log_counts),
            "dedupeSkips": log_counts.outcomes.get("duplicate-skipped", 0),
            "deferredCopies": log_counts.outcomes.get("deferred-copy-in-flight", 0),
            "payloadMismatches": mismatches,
            "eventIdMismatches": tally.event_id_mismatches,
        },
        "faultsInjected": {
            **clienttrack_faults,
            "clienttrackFaultShare": round(faulted / records.requests, 4)
            if records.requests
            else 0.0,
            "devhostKills": sum(1 for fault in executed if fault["kind"] == DEVHOST_KILL),
            "azuriteRestarts": sum(1 for fault in executed if fault["kind"] == AZURITE_RESTART),
            "processFaults": executed,
        },
        "ingestStatuses": {str(status): count for status, count in sorted(tally.statuses.items())},
        "processorOutcomes": log_counts.outcomes,
        "hostMovesToPoison": log_counts.host_moves,
        "ingestEnqueued": log_counts.enqueued,
        "parkedReasonsBeforeReplay": dict(
            Counter(str(row.get("reason")) for row in before["poison"])
        ),
        "replay": replay,
        "drained": {"beforeReplay": before["drained"], "afterReplay": after["drained"]},
        "timingsSeconds": {key: round(value, 1) for key, value in timings.items()},
    }


def exit_code(result: dict[str, Any]) -> int:
    matrix = result["matrix"]
    drained = result["drained"]
    if matrix["lost"] or matrix["neverAccepted"] or not all(drained.values()):
        return EXIT_LOST
    return EXIT_OK


def run(config: RunConfig, output: Path | None, keep: bool, command: str) -> int:
    rng = random.Random(config.seed)
    customers = make_customers(config.customers, rng)
    deliveries = build_deliveries(config.deliveries, customers)
    plan = plan_faults(rng)
    settings = dict(RUN_SETTINGS)
    for customer in customers:
        settings.update(customer.app_settings())

    work_dir = Path(tempfile.mkdtemp(prefix="bridge-faults-"))
    stack = FaultStack(work_dir, settings, stand_in_faults(config.seed))
    records = RecordReader(stack.record_path)
    timings: dict[str, float] = {}
    try:
        _log(f"starting Azurite, the ClientTrack stand-in and devhost in {work_dir}")
        try:
            stack.start()
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_HARNESS
        planned = ", ".join(f"{fault.kind} at {fault.at_fraction:.0%}" for fault in plan)
        _log(f"sending {len(deliveries)} deliveries; faults planned: {planned}")

        started = time.monotonic()
        try:
            tally, executed = asyncio.run(
                send_with_faults(stack, deliveries, plan, config.concurrency)
            )
        except RuntimeError as error:
            # A process that does not come back after a fault ends the run: its figures
            # would no longer describe the faults planned.
            print(f"error: {error}", file=sys.stderr)
            return EXIT_HARNESS
        timings["send"] = time.monotonic() - started
        _log(f"sending done: {len(tally.accepted_event_ids)} accepted; waiting for the queue")

        drained_before = wait_until_drained(stack.connection_string, config.settle_timeout_seconds)
        timings["drainBeforeReplay"] = time.monotonic() - started - timings["send"]
        poison = list_poison(stack)
        before = {
            "delivered": set(records.read().delivered_event_ids),
            "poison": poison,
            "drained": drained_before,
        }
        _log(f"queue drained: {drained_before}; {len(poison)} messages in the poison queue")

        replay: dict[str, Any] = {"rounds": 0, "moved": 0, "failed": 0, "lines": []}
        drained_after = drained_before
        replay_started = time.monotonic()
        while poison and replay["rounds"] < MAX_REPLAY_ROUNDS:
            moved, failed, line = replay_poison(stack)
            replay["rounds"] += 1
            replay["moved"] += moved
            replay["failed"] += failed
            replay["lines"].append(line)
            _log(f"replay round {replay['rounds']}: {line}")
            drained_after = wait_until_drained(
                stack.connection_string, config.settle_timeout_seconds
            )
            poison = list_poison(stack)
        replay["leftInPoison"] = len(poison)
        timings["replay"] = time.monotonic() - replay_started
        timings["total"] = time.monotonic() - started

        stats = httpx.get(f"http://127.0.0.1:{stack.clienttrack_port}/_stats", timeout=10).json()
        after = {"records": records.read(), "drained": drained_after}
        result = build_result(
            config, deliveries, tally, before, after, replay, stack, executed, timings
        )
        result["command"] = command
        result["clienttrackStats"] = stats
    finally:
        stack.stop()
        if keep:
            _log(f"logs and data kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    code = exit_code(result)
    result["exitCode"] = code
    path = output or RESULTS_DIRECTORY / (
        f"faults-{datetime.now(UTC):%Y%m%dT%H%M%SZ}{'-smoke' if config.smoke else ''}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(format_matrix(result))
    print(f"Result: {path}")
    if code != EXIT_OK:
        print("FAILED: an accepted delivery was lost, never accepted or still queued.")
    return code


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1.")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults",
        description="Send signed webhooks through devhost while ClientTrack fails, devhost "
        "is killed and Azurite restarts; replay the poison queue and count what was lost.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"send {SMOKE_DELIVERIES} deliveries instead of {FULL_DELIVERIES}, for CI",
    )
    parser.add_argument("--deliveries", type=_positive, help="number of deliveries to send")
    parser.add_argument(
        "--concurrency",
        type=_positive,
        default=CONCURRENCY,
        help=f"webhook requests in flight at once (default: {CONCURRENCY})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of secrets, fault points and ClientTrack faults (default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--output", type=Path, help="JSON result file (default: bench/results/faults-<time>.json)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory with logs and data"
    )
    args = parser.parse_args(argv)

    count = args.deliveries or (SMOKE_DELIVERIES if args.smoke else FULL_DELIVERIES)
    config = RunConfig(
        deliveries=count,
        customers=CUSTOMERS,
        concurrency=args.concurrency,
        seed=args.seed,
        smoke=args.smoke,
        settle_timeout_seconds=(
            SMOKE_SETTLE_TIMEOUT_SECONDS if args.smoke else FULL_SETTLE_TIMEOUT_SECONDS
        ),
    )
    arguments = sys.argv[1:] if argv is None else argv
    return run(config, args.output, args.keep, " ".join(["python -m bench.faults", *arguments]))


if __name__ == "__main__":
    sys.exit(main())
