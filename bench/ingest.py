"""Ingest benchmark: signed POSTs through devhost against the raw queue write they end in.

At each concurrency level three closed-loop runs send the same deliveries:

- `baseline`: the envelope each delivery becomes, written straight to the queue with
  `azure.storage.queue.aio` (claim-checked ones: blob upload, then queue send). This is the
  floor: no HTTP, no signature check, no envelope building.
- `in_process`: `IngestHandler.handle` called in the benchmark's own process through
  `shared.runtime.Runtime`, so the handler's cost shows without any HTTP server.
- `http`: signed POSTs over keep-alive `httpx.AsyncClient`s to devhost, which runs
  `webhook_ingest` as the Functions host would.

devhost runs with `event_processor` disabled, so nothing drains the queue while ingest is
measured, and the queue is cleared after every run. With more than one round the three
runs repeat in a rotated order and the report gives the median, because other work on the
machine changes from minute to minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue.aio import QueueClient

from bench.corpus import Customer, Delivery, QueuedEvent, all_secrets, queued_event
from bench.cpu import CpuMeter, load_average
from bench.environment import (
    DISABLED_SETTING,
    BenchEnvironment,
    StorageNames,
    app_log,
    memory_kib,
)
from bench.stats import LoadResult, median, run_closed_loop
from devhost.processes import ManagedProcess
from shared.runtime import Runtime
from shared.secrets import AppSettingsSecretStore
from shared.settings import load_settings
from shared.transport import sdk_transport_options

# devhost validates this URL at start-up, but nothing calls it while the processor is off.
UNUSED_CLIENTTRACK_URL = "http://127.0.0.1:9/api/integration/queue"
# Onfleet waits 10 s for a response; the load generator gives up at the same point.
REQUEST_TIMEOUT_SECONDS = 10.0
WARMUP_REQUESTS = 200
# httpcore 1.0.9 scans its whole pool for every request, so one client with 64 connections
# spends several milliseconds of CPU per request and becomes the bottleneck itself. Clients
# of at most this many connections keep the load generator's cost per request flat.
CONNECTIONS_PER_CLIENT = 16
VARIANTS = ("baseline", "in_process", "http")
ENVIRONMENT_READS_CONCURRENCY = 16


async def run_ingest(
    environment: BenchEnvironment,
    customers: Sequence[Customer],
    deliveries: Sequence[Delivery],
    concurrencies: Sequence[int],
    *,
    rounds: int,
    log_dir: Path,
) -> dict[str, Any]:
    """Run the three ingest variants at each concurrency and read devhost's peak memory."""
    names = StorageNames.for_run("ingest")
    values = environment.app_settings(
        names,
        all_secrets(customers),
        clienttrack_url=UNUSED_CLIENTTRACK_URL,
        extra={DISABLED_SETTING.format(name="event_processor"): "true"},
    )
    events = [queued_event(delivery) for delivery in deliveries]

    devhost = environment.start_devhost("ingest", values)
    assert devhost.process is not None
    memory_at_start = memory_kib(devhost.process.pid)
    pids = {
        "bench": os.getpid(),
        "devhost": devhost.process.pid,
        "azurite": environment.azurite_pid,
    }
    levels: dict[str, Any] = {}
    try:
        # The baseline's clients skip the same per-request environment reads as the app's.
        options = sdk_transport_options()
        async with _QueueSink(environment.connection_string, names, options) as sink:
            runners: dict[str, Callable[[int, CpuMeter], Awaitable[LoadResult]]] = {
                "baseline": lambda concurrency, meter: sink.baseline(events, concurrency, meter),
                "in_process": lambda concurrency, meter: _in_process(
                    values, deliveries, concurrency, meter, log_dir
                ),
                "http": lambda concurrency, meter: post_over_http(
                    devhost, deliveries, concurrency, meter
                ),
            }
            for concurrency in concurrencies:
                runs: dict[str, list[LoadResult]] = {variant: [] for variant in VARIANTS}
                for round_number in range(rounds):
                    for variant in _rotated(VARIANTS, round_number):
                        load_before = load_average()
                        result = await runners[variant](concurrency, CpuMeter(pids))
                        result.cpu["load_average_before"] = load_before
                        runs[variant].append(result)
                        await sink.clear()
                levels[str(concurrency)] = _level_report(runs)
        memory = memory_kib(devhost.process.pid)
    finally:
        environment.stop(devhost)
    environment_reads = await _environment_reads(
        environment.connection_string, names, events, rounds=rounds
    )
    return {
        "requests": len(deliveries),
        "claim_checked": sum(delivery.claim_checked for delivery in deliveries),
        "customers": len(customers),
        "rounds": rounds,
        "concurrency": levels,
        "devhost_memory_kib": {
            "rss_after_start": memory_at_start.get("VmRSS"),
            "peak_rss": memory.get("VmHWM"),
        },
        "sdk_environment_reads": environment_reads,
    }


async def _environment_reads(
    connection_string: str,
    names: StorageNames,
    events: Sequence[QueuedEvent],
    *,
    rounds: int,
) -> dict[str, Any]:
    """Compare raw queue writes with azure-core's default transport and with the app's.

    The default reads the netrc file and the proxy variables on every request; the app's
    options skip that when neither exists. The load generator's CPU per write shows it.
    """
    variants = {"sdk_default": {}, "app_options": sdk_transport_options()}
    runs: dict[str, list[LoadResult]] = {name: [] for name in variants}
    for round_number in range(rounds):
        for name in _rotated(list(variants), round_number):
            async with _QueueSink(connection_string, names, variants[name]) as sink:
                meter = CpuMeter({"bench": os.getpid()})
                result = await sink.baseline(events, ENVIRONMENT_READS_CONCURRENCY, meter)
                runs[name].append(result)
                await sink.clear()
    return {
        "concurrency": ENVIRONMENT_READS_CONCURRENCY,
        "options": {name: dict(options) for name, options in variants.items()},
        "median": {
            name: {
                "per_second": round(median([run.per_second for run in results]), 1),
                "client_cpu_ms_per_write": round(
                    median(
                        [run.cpu["bench"] * run.seconds * 1000 / run.requests for run in results]
                    ),
                    3,
                ),
            }
            for name, results in runs.items()
        },
    }


def ingest_failures(result: Mapping[str, Any]) -> list[str]:
    """List every run that had an error or a response other than 200."""
    problems = []
    for concurrency, level in result["concurrency"].items():
        for variant in VARIANTS:
            for run in level["runs"][variant]:
                unexpected = {
                    outcome: count
                    for outcome, count in run["outcomes"].items()
                    if outcome not in ("200", "ok")
                }
                if unexpected or run["error_count"]:
                    problems.append(
                        f"ingest {variant} at concurrency {concurrency}: outcomes {unexpected}, "
                        f"errors {run['errors'][:3]}"
                    )
    return problems


def _rotated(variants: Sequence[str], round_number: int) -> list[str]:
    shift = round_number % len(variants)
    return [*variants[shift:], *variants[:shift]]


def _level_report(runs: Mapping[str, Sequence[LoadResult]]) -> dict[str, Any]:
    """Summarize one concurrency level: every run, the medians and the median ratios."""
    medians = {
        variant: {
            "per_second": round(median([run.per_second for run in results]), 1),
            "p50_ms": round(median([run.latency.p50_ms for run in results]), 2),
            "p95_ms": round(median([run.latency.p95_ms for run in results]), 2),
            "p99_ms": round(median([run.latency.p99_ms for run in results]), 2),
            "other_cores": round(median([run.cpu.get("other", 0.0) for run in results]), 2),
            "cpu_ms_per_request": round(median([_cpu_ms_per_request(run) for run in results]), 2),
        }
        for variant, results in runs.items()
    }
    pairs = list(zip(runs["baseline"], runs["in_process"], runs["http"], strict=True))
    ratios = {
        "http_throughput_vs_baseline": median(
            [http.per_second / base.per_second for base, _, http in pairs]
        ),
        "http_p99_vs_baseline": median(
            [http.latency.p99_ms / base.latency.p99_ms for base, _, http in pairs]
        ),
        "in_process_throughput_vs_baseline": median(
            [local.per_second / base.per_second for base, local, _ in pairs]
        ),
        "in_process_p99_vs_baseline": median(
            [local.latency.p99_ms / base.latency.p99_ms for base, local, _ in pairs]
        ),
    }
    return {
        "median": medians,
        "ratios": {name: round(value, 3) for name, value in ratios.items()},
        "runs": {variant: [run.to_dict() for run in results] for variant, results in runs.items()},
    }


def _cpu_ms_per_request(run: LoadResult) -> float:
    """Return the CPU our processes (load generator, devhost, Azurite) spent per request."""
    ours = run.cpu.get("machine", 0.0) - run.cpu.get("other", 0.0)
    return ours * run.cpu.get("seconds", 0.0) * 1000 / run.requests if run.requests else 0.0


class _QueueSink:
    """The raw-SDK side: the run's queue and container, for the baseline and for clearing."""

    def __init__(
        self, connection_string: str, names: StorageNames, options: Mapping[str, Any]
    ) -> None:
        self.queue = QueueClient.from_connection_string(connection_string, names.queue, **options)
        self.container = ContainerClient.from_connection_string(
            connection_string, names.container, **options
        )

    async def __aenter__(self) -> _QueueSink:
        for create in (self.queue.create_queue, self.container.create_container):
            with contextlib.suppress(ResourceExistsError):
                await create()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.queue.close()
        await self.container.close()

    async def clear(self) -> None:
        await self.queue.clear_messages()

    async def baseline(
        self, events: Sequence[QueuedEvent], concurrency: int, meter: CpuMeter
    ) -> LoadResult:
        async def write(event: QueuedEvent) -> str:
            if event.blob_name is not None:
                await self.container.upload_blob(event.blob_name, event.body, overwrite=True)
            await self.queue.send_message(event.text)
            return "ok"

        await run_closed_loop("warm-up", events[:WARMUP_REQUESTS], write, concurrency=concurrency)
        await self.clear()
        return await _metered(meter, "baseline", events, write, concurrency)


async def _metered(
    meter: CpuMeter,
    name: str,
    items: Sequence[Any],
    operation: Callable[[Any], Awaitable[str]],
    concurrency: int,
) -> LoadResult:
    """Run the measured part of a benchmark with the CPU meter running, after its warm-up."""
    meter.start()
    result = await run_closed_loop(name, items, operation, concurrency=concurrency)
    result.cpu = meter.stop()
    return result


async def _in_process(
    values: Mapping[str, str],
    deliveries: Sequence[Delivery],
    concurrency: int,
    meter: CpuMeter,
    log_dir: Path,
) -> LoadResult:
    runtime = Runtime(load_settings(values), secret_store=AppSettingsSecretStore(values))

    async def post(delivery: Delivery) -> str:
        response = await runtime.ingest.handle(
            "POST", delivery.customer_id, check=None, headers=delivery.headers, body=delivery.body
        )
        return str(response.status)

    with app_log(log_dir / "in-process-ingest.log"):
        try:
            warmup = deliveries[:WARMUP_REQUESTS]
            await run_closed_loop("warm-up", warmup, post, concurrency=concurrency)
            return await _metered(meter, "in_process", deliveries, post, concurrency)
        finally:
            await runtime.close()


async def post_over_http(
    devhost: ManagedProcess, deliveries: Sequence[Delivery], concurrency: int, meter: CpuMeter
) -> LoadResult:
    base_url = f"http://127.0.0.1:{devhost.port}/onfleet/webhooks/"
    client_count = -(-concurrency // CONNECTIONS_PER_CLIENT)
    size = -(-concurrency // client_count)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    clients = [
        httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS, limits=limits)
        for _ in range(client_count)
    ]
    # Each worker task keeps one client, so no client ever has more than `size` requests.
    by_worker: dict[asyncio.Task[Any] | None, httpx.AsyncClient] = {}

    async def post(delivery: Delivery) -> str:
        worker = asyncio.current_task()
        client = by_worker.get(worker)
        if client is None:
            client = by_worker[worker] = clients[len(by_worker) % client_count]
        response = await client.post(
            base_url + delivery.customer_id, content=delivery.body, headers=delivery.headers
        )
        return str(response.status_code)

    try:
        await run_closed_loop(
            "warm-up", deliveries[:WARMUP_REQUESTS], post, concurrency=concurrency
        )
        by_worker.clear()
        return await _metered(meter, "http", deliveries, post, concurrency)
    finally:
        for client in clients:
            await client.aclose()
