"""Delivery benchmark: drain a preloaded queue into the ClientTrack stand-in.

Each run preloads envelopes into a fresh queue, then a consumer drains it into a stand-in
that responds to each request after a fixed delay:

- `devhost`: `event_processor` under devhost's queue trigger with host.json's settings
  (receive up to `batchSize`, fetch more once `newBatchThreshold` or fewer are in flight).
  Each message costs the dedupe ledger's Table calls, the ClientTrack call and the delete.
- `baseline`: a plain loop in this process with the same batch scheme, so the same number of
  messages in flight: receive, post the request the processor would send (built in advance)
  with one reused `httpx.AsyncClient`, delete.
- `devhost-no-dedupe`: devhost with the dedupe ledger off, in the runs without failures, to
  show what the ledger costs.

Two scenarios preload differently. `deep` puts every envelope in the queue before the
consumer starts. Azurite's receive and delete get slower as a queue gets deeper, though,
so at 5,000 messages the emulator rather than either consumer sets the pace. `batched`
therefore also drains the same envelopes in batches of `BATCH_EVENTS`: preload a batch,
start the consumer, drain, stop, and sum the drain times.

Drain time is measured on the stand-in's own clock, from its first response to its last
2xx response of a batch, read from its record file. Both consumers are timed the same way,
so devhost's start-up does not count against it. CPU is metered over the same stretch for
the consumer, the stand-in and Azurite.

With failures on, the stand-in responds to a seeded 5% of requests with 500. The processor
re-enqueues those with `attempt + 1`; RETRY_BASE_SECONDS is 0 for the benchmark, so a retry
is visible again at once and the drain measures work rather than backoff waits. The
baseline re-sends the same message text without delay, then deletes the original. A run is
complete when every event got a 2xx exactly once, nothing was parked and the queue is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue import QueueMessage
from azure.storage.queue.aio import QueueClient

from bench.consumer import BatchConsumer
from bench.corpus import Customer, QueuedEvent, all_secrets, clienttrack_request
from bench.cpu import CpuMeter, load_average
from bench.environment import DISABLED_SETTING, BenchEnvironment, Stand, StorageNames
from bench.stats import median, run_closed_loop
from devhost.azurite import PROJECT_ROOT
from devhost.config import QueueOptions, load_host_config
from devhost.queue_trigger import STORAGE_RETRY_OPTIONS

STAND_IN_DELAY_MS = 20
FAILURE_RATE = 0.05
FAILURE_STATUS = 500
FAILURE_SEED = 20260101
PRELOAD_CONCURRENCY = 32
STATS_POLL_SECONDS = 0.1
REQUEST_TIMEOUT_SECONDS = 30.0
MIN_DRAIN_TIMEOUT_SECONDS = 120.0
# The slowest drain rate that still counts as working; below it the run is abandoned.
MIN_EVENTS_PER_SECOND = 20.0
QUEUE_EMPTY_TIMEOUT_SECONDS = 30.0
# The loop sleeps up to maxPollingInterval (2 s) between empty receives before it notices.
LOOP_STOP_TIMEOUT_SECONDS = 30.0


# Azurite 3.35 spent about 1.5 ms of CPU per delete with 600 messages queued and 16 ms with
# 5,000 (docs/benchmarks.md), so a batch stays at a few hundred.
BATCH_EVENTS = 500


@dataclass(frozen=True)
class _Scenario:
    label: str
    batch_events: int | None
    failure_rate: float
    consumers: tuple[str, ...]


SCENARIOS = (
    _Scenario("deep-clean", None, 0.0, ("baseline", "devhost")),
    _Scenario("deep-fail5", None, FAILURE_RATE, ("baseline", "devhost")),
    _Scenario("batched-clean", BATCH_EVENTS, 0.0, ("baseline", "devhost", "devhost-no-dedupe")),
    _Scenario("batched-fail5", BATCH_EVENTS, FAILURE_RATE, ("baseline", "devhost")),
)
CONSUMER_PROCESS = {"baseline": "bench", "devhost": "devhost", "devhost-no-dedupe": "devhost"}


@dataclass(frozen=True)
class _Request:
    content: bytes
    headers: dict[str, str]


async def run_delivery(
    environment: BenchEnvironment,
    customers: Sequence[Customer],
    events: Sequence[QueuedEvent],
    *,
    rounds: int,
) -> dict[str, Any]:
    """Drain the events with devhost and with the baseline loop, without and with failures."""
    options = load_host_config(PROJECT_ROOT).queues
    by_customer = {customer.customer_id: customer for customer in customers}
    requests = {
        event.text: _Request(
            clienttrack_request(event),
            _request_headers(by_customer[event.envelope.customer_id], event.envelope.event_id),
        )
        for event in events
    }
    report: dict[str, Any] = {
        "events": len(events),
        "claim_checked": sum(event.blob_name is not None for event in events),
        "stand_in_delay_ms": STAND_IN_DELAY_MS,
        "batch_size": options.batch_size,
        "new_batch_threshold": options.new_batch_threshold,
        "max_in_flight": options.batch_size + options.new_batch_threshold,
        "batch_events": BATCH_EVENTS,
        "rounds": rounds,
        "modes": {},
    }
    for scenario in SCENARIOS:
        consumers = scenario.consumers
        runs: dict[str, list[dict[str, Any]]] = {consumer: [] for consumer in consumers}
        for round_number in range(rounds):
            shift = round_number % len(consumers)
            for consumer in (*consumers[shift:], *consumers[:shift]):
                label = f"{scenario.label}-{consumer}-{round_number + 1}"
                run = await _run_once(
                    environment, customers, events, requests, options, scenario, consumer, label
                )
                runs[consumer].append(run)
        report["modes"][scenario.label] = _mode_report(scenario, runs)
    return report


def delivery_failures(result: Mapping[str, Any]) -> list[str]:
    """List every run that did not deliver each event exactly once with an empty queue."""
    problems: list[str] = []
    for mode, summary in result["modes"].items():
        for consumer, runs in summary["runs"].items():
            for run in runs:
                problems.extend(
                    f"delivery {mode} {consumer}: {problem}" for problem in run["problems"]
                )
    return problems


def _mode_report(
    scenario: _Scenario, runs: Mapping[str, Sequence[dict[str, Any]]]
) -> dict[str, Any]:
    pairs = list(zip(runs["baseline"], runs["devhost"], strict=True))
    ratios = [
        ours["per_second"] / base["per_second"]
        for base, ours in pairs
        if base["per_second"] and ours["per_second"]
    ]
    diagnostic: dict[str, Any] = {}
    if "devhost-no-dedupe" in runs:
        without = [
            ours["per_second"] / base["per_second"]
            for base, ours in zip(runs["baseline"], runs["devhost-no-dedupe"], strict=True)
            if base["per_second"] and ours["per_second"]
        ]
        diagnostic["ratio_no_dedupe_vs_baseline"] = round(median(without), 3) if without else None
    return {
        "failure_rate": scenario.failure_rate,
        "batch_events": scenario.batch_events,
        **diagnostic,
        "median": {
            consumer: {
                "per_second": round(median([run["per_second"] for run in results]), 1),
                **{
                    f"{name}_cpu_ms_per_event": round(
                        median([run["cpu_ms_per_event"][name] for run in results]), 2
                    )
                    for name in ("consumer", "azurite", "all")
                },
                "other_cores": round(median([run["other_cores"] for run in results]), 2),
            }
            for consumer, results in runs.items()
        },
        "ratio_devhost_vs_baseline": round(median(ratios), 3) if ratios else None,
        "runs": dict(runs),
    }


async def _run_once(
    environment: BenchEnvironment,
    customers: Sequence[Customer],
    events: Sequence[QueuedEvent],
    requests: Mapping[str, _Request],
    options: QueueOptions,
    scenario: _Scenario,
    consumer: str,
    label: str,
) -> dict[str, Any]:
    names = StorageNames.for_run(f"d{label}")
    secrets = all_secrets(customers)
    stand_in_settings = environment.write_settings(f"{label}-clienttrack", secrets)
    fault_arguments = ["--delay-ms", str(STAND_IN_DELAY_MS)]
    if scenario.failure_rate:
        fault_arguments += [
            "--fail-rate", str(scenario.failure_rate),
            "--statuses", str(FAILURE_STATUS),
            "--seed", str(FAILURE_SEED),
        ]  # fmt: skip
    size = scenario.batch_events or len(events)
    batches = [events[start : start + size] for start in range(0, len(events), size)]
    cpu_seconds: defaultdict[str, float] = defaultdict(float)
    problems: list[str] = []
    stand = environment.start_clienttrack(stand_in_settings, *fault_arguments)
    try:
        delivered_so_far = 0
        for number, batch in enumerate(batches, start=1):
            await preload(environment.connection_string, names, batch)
            delivered_so_far += len(batch)
            drained, batch_problems = await _drain(
                environment, stand, names, secrets, requests, options, consumer,
                f"{label}-{number}", delivered_so_far,
            )  # fmt: skip
            for name, seconds in drained.items():
                cpu_seconds[name] += seconds
            problems += batch_problems
            if batch_problems:
                break
        problems += await _leftovers(environment.connection_string, names)
    finally:
        environment.stop(stand.process)

    timing = _record_timing(stand, [{event.envelope.event_id for event in b} for b in batches])
    delivered = timing["delivered_events"]
    window = timing["window_seconds"]
    if delivered != len(events):
        problems.append(f"{delivered} of {len(events)} events delivered")
    if timing["duplicates"]:
        problems.append(f"{timing['duplicates']} events delivered more than once")
    metered = cpu_seconds["seconds"]
    ours = {
        "consumer": CONSUMER_PROCESS[consumer],
        "clienttrack": "clienttrack",
        "azurite": "azurite",
    }
    per_event = {
        role: round(cpu_seconds[name] * 1000 / delivered, 2) if delivered else 0.0
        for role, name in ours.items()
    }
    per_event["all"] = round(sum(per_event.values()), 2)
    return {
        "label": label,
        "batches": len(batches),
        "per_second": round(delivered / window, 1) if window > 0 else 0.0,
        "window_seconds": round(window, 3),
        "delivered_events": delivered,
        "responses": timing["responses"],
        "cpu_ms_per_event": per_event,
        "other_cores": round(cpu_seconds["other"] / metered, 2) if metered else 0.0,
        "metered_seconds": round(metered, 2),
        "problems": problems,
    }


async def _drain(
    environment: BenchEnvironment,
    stand: Stand,
    names: StorageNames,
    secrets: Mapping[str, str],
    requests: Mapping[str, _Request],
    options: QueueOptions,
    consumer: str,
    label: str,
    expected_total: int,
) -> tuple[dict[str, float], list[str]]:
    """Start the consumer on the preloaded queue and stop it once the stand-in counted
    `expected_total` deliveries; return the CPU seconds used meanwhile, by process."""
    timeout = max(MIN_DRAIN_TIMEOUT_SECONDS, expected_total / MIN_EVENTS_PER_SECOND)
    if consumer.startswith("devhost"):
        extra = {
            "RETRY_BASE_SECONDS": "0",
            DISABLED_SETTING.format(name="webhook_ingest"): "true",
        }
        if consumer == "devhost-no-dedupe":
            extra["DEDUPE_WINDOW_HOURS"] = "0"
        values = environment.app_settings(names, secrets, clienttrack_url=stand.url, extra=extra)
        devhost = environment.start_devhost(label, values)
        try:
            assert devhost.process is not None
            pids = {"devhost": devhost.process.pid}
            cpu, problems = await watch_stand_in(
                environment, stand, pids, expected_total, timeout, devhost_alive=devhost
            )
        finally:
            environment.stop(devhost)
    else:
        loop = _PlainLoop(environment.connection_string, names, requests, stand.url, options)
        drain = asyncio.create_task(loop.run())
        try:
            pids = {"bench": os.getpid()}
            cpu, problems = await watch_stand_in(environment, stand, pids, expected_total, timeout)
        finally:
            # Like devhost on SIGTERM: receive no more, finish the deletes in progress.
            loop.consumer.request_stop()
            stopped = await _finished_within(drain, LOOP_STOP_TIMEOUT_SECONDS)
            await loop.close()
        if not stopped:
            problems.append(
                f"the baseline loop did not stop within {LOOP_STOP_TIMEOUT_SECONDS:g} s"
            )
    seconds = cpu["seconds"]
    used = {
        name: cores * seconds
        for name, cores in cpu.items()
        if name not in ("seconds", "machine", "load_average_before")
    }
    used["seconds"] = seconds
    return used, problems


async def _finished_within(task: asyncio.Task[None], seconds: float) -> bool:
    """Wait for `task` up to `seconds`; cancel it and return False if it is still running."""
    try:
        await asyncio.wait_for(task, seconds)
    except TimeoutError:
        return False
    return True


def _request_headers(customer: Customer, event_id: str) -> dict[str, str]:
    """Build the headers the processor sends with an event."""
    return {
        "Ocp-Apim-Subscription-Key": customer.subscription_key,
        "Authorization": f"ApiKey {customer.api_key}",
        "Content-Type": "application/json",
        "Idempotency-Key": event_id,
    }


async def preload(
    connection_string: str, names: StorageNames, events: Sequence[QueuedEvent]
) -> None:
    queue = QueueClient.from_connection_string(connection_string, names.queue)
    container = ContainerClient.from_connection_string(connection_string, names.container)
    async with queue, container:
        for create in (queue.create_queue, container.create_container):
            with contextlib.suppress(ResourceExistsError):
                await create()

        async def write(event: QueuedEvent) -> str:
            if event.blob_name is not None:
                await container.upload_blob(event.blob_name, event.body, overwrite=True)
            await queue.send_message(event.text)
            return "ok"

        result = await run_closed_loop("preload", events, write, concurrency=PRELOAD_CONCURRENCY)
    if result.error_count:
        raise RuntimeError(f"Preloading queue {names.queue} failed: {result.errors[:3]}")


async def watch_stand_in(
    environment: BenchEnvironment,
    stand: Stand,
    pids: Mapping[str, int],
    expected: int,
    timeout_seconds: float,
    *,
    devhost_alive: Any = None,
) -> tuple[dict[str, float], list[str]]:
    """Poll the stand-in's counters until `expected` events got a 2xx; meter CPU meanwhile.

    The CPU meter starts at the first request the stand-in counts, so start-up is left out.
    """
    assert stand.process.process is not None
    meter = CpuMeter(
        {
            **pids,
            "clienttrack": stand.process.process.pid,
            "azurite": environment.azurite_pid,
        }
    )
    problems: list[str] = []
    started = time.monotonic()
    load_before = load_average()
    metering = False
    async with httpx.AsyncClient(base_url=stand.base_url, timeout=5.0) as client:
        while True:
            stats = (await client.get("/_stats")).json()
            if not metering and stats["received"] > 0:
                meter.start()
                metering = True
            if stats["delivered"] >= expected:
                break
            if devhost_alive is not None and not devhost_alive.running:
                problems.append(f"devhost exited early; see {devhost_alive.log_path}")
                break
            if time.monotonic() - started > timeout_seconds:
                problems.append(
                    f"only {stats['delivered']} of {expected} delivered after {timeout_seconds:g} s"
                )
                break
            await asyncio.sleep(STATS_POLL_SECONDS)
    if not metering:
        meter.start()
    cpu = meter.stop()
    cpu["load_average_before"] = load_before
    return cpu, problems


async def _leftovers(connection_string: str, names: StorageNames) -> list[str]:
    """Wait for the queue to empty and check that nothing was parked."""
    problems = []
    queue = QueueClient.from_connection_string(connection_string, names.queue)
    poison = QueueClient.from_connection_string(connection_string, names.queue + "-poison")
    async with queue, poison:
        deadline = time.monotonic() + QUEUE_EMPTY_TIMEOUT_SECONDS
        remaining = await _visible_or_leased(queue)
        while remaining and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            remaining = await _visible_or_leased(queue)
        if remaining:
            problems.append(f"{remaining} messages left in queue {names.queue}")
        parked = await _visible_or_leased(poison)
        if parked:
            problems.append(f"{parked} messages parked in {names.queue}-poison")
    return problems


async def _visible_or_leased(queue: QueueClient) -> int:
    try:
        properties = await queue.get_queue_properties()
    except ResourceNotFoundError:
        return 0
    return int(properties.approximate_message_count or 0)


def _record_timing(stand: Stand, batches: Sequence[set[str]]) -> dict[str, Any]:
    """Read the stand-in's record file: the summed drain time of the batches and the counts.

    A batch's drain time runs from the first response to one of its events to the last 2xx
    response to one of them.
    """
    first: dict[int, datetime] = {}
    last_success: dict[int, datetime] = {}
    batch_of = {event_id: index for index, batch in enumerate(batches) for event_id in batch}
    statuses: Counter[str] = Counter()
    deliveries: Counter[str] = Counter()
    try:
        lines = stand.record_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        record = json.loads(line)
        moment = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        status = record["status"]
        event_id = record["body"]["eventId"]
        index = batch_of.get(event_id, -1)
        statuses[str(status)] += 1
        if index not in first or moment < first[index]:
            first[index] = moment
        if isinstance(status, int) and 200 <= status < 300:
            deliveries[event_id] += 1
            if index not in last_success or moment > last_success[index]:
                last_success[index] = moment
    window = sum(
        (last_success[index] - first[index]).total_seconds()
        for index in last_success
        if index in first
    )
    return {
        "window_seconds": window,
        "delivered_events": len(deliveries),
        "duplicates": sum(count - 1 for count in deliveries.values()),
        "responses": dict(sorted(statuses.items())),
    }


class _PlainLoop:
    """Receive, post, delete: the least a queue consumer can do, with host.json's batching."""

    def __init__(
        self,
        connection_string: str,
        names: StorageNames,
        requests: Mapping[str, _Request],
        url: str,
        options: QueueOptions,
    ) -> None:
        # Receive and delete stand in for the Functions host's side, so the loop's queue
        # client is configured like devhost's; the post stands in for the processor.
        self.queue = QueueClient.from_connection_string(
            connection_string, names.queue, **STORAGE_RETRY_OPTIONS
        )
        self.requests = requests
        self.url = url
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        self.client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS, limits=limits)
        self.consumer = BatchConsumer(self.queue, options, self._handle)

    async def run(self) -> None:
        """Consume until `consumer.request_stop()`; the caller watches the stand-in for that."""
        await self.consumer.run(None)

    async def close(self) -> None:
        await self.consumer.cancel()
        await self.client.aclose()
        await self.queue.close()

    async def _handle(self, message: QueueMessage) -> bool:
        request = self.requests[message.content]
        response = await self.client.post(
            self.url, content=request.content, headers=request.headers
        )
        delivered = 200 <= response.status_code < 300
        if not delivered:
            await self.queue.send_message(message.content)
        await self.queue.delete_message(message.id, message.pop_receipt)
        return delivered
