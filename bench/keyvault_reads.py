"""Key Vault benchmark: secret reads per customer while events are ingested and delivered.

Everything runs in this process except Azurite: the HTTPS Key Vault stand-in contains every
customer's three secrets, the ClientTrack stand-in responds at once, and one
`shared.runtime.Runtime` reads its secrets through `KeyVaultSecretStore`, as a worker in
Azure does. Ingest workers post the events while a consumer with host.json's batching
delivers them from the queue, so both functions share one secret cache, as they share a
worker in production.

The figure is the stand-in's count of authenticated secret GETs per customer, divided by
the number of cache periods (`SECRET_CACHE_SECONDS`) the run touched: the whole periods
it lasted, plus one.
A second pass with a short cache period checks that entries expire and are read again
about once per period rather than once per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueMessage
from azure.storage.queue.aio import QueueClient

from bench.consumer import BatchConsumer
from bench.corpus import Customer, Delivery, all_secrets
from bench.environment import BenchEnvironment, StorageNames, app_log
from bench.stats import run_closed_loop
from devhost.azurite import PROJECT_ROOT
from devhost.clienttrack import ClientTrackStandIn
from devhost.config import load_host_config
from devhost.keyvault import KeyVaultStandIn
from devhost.queue_trigger import decode_message
from shared.processor import Outcome
from shared.runtime import Runtime
from shared.secrets import KeyVaultSecretStore
from shared.settings import load_settings

INGEST_CONCURRENCY = 16
# Ingest is faster than delivery, and Azurite's queue operations slow down as a queue gets
# deeper, so posting pauses while this many events wait in the queue.
MAX_BACKLOG_EVENTS = 500
SHORT_PASS_EVENTS = 2000
DEFAULT_CACHE_SECONDS = 300.0
MIN_RUN_TIMEOUT_SECONDS = 120.0
MIN_EVENTS_PER_SECOND = 20.0


async def run_keyvault_reads(
    environment: BenchEnvironment,
    customers: Sequence[Customer],
    deliveries: Sequence[Delivery],
    *,
    short_cache_seconds: float,
) -> dict[str, Any]:
    """Count Key Vault reads with the default cache period and with a short one.

    The short pass checks expiry, not volume, so it sends at most `SHORT_PASS_EVENTS`.
    """
    passes = {
        "default": await _one_pass(
            environment, customers, deliveries, "default", DEFAULT_CACHE_SECONDS
        ),
        "short": await _one_pass(
            environment,
            customers,
            deliveries[:SHORT_PASS_EVENTS],
            "short",
            short_cache_seconds,
        ),
    }
    return {"customers": len(customers), "passes": passes}


def keyvault_failures(result: Mapping[str, Any]) -> list[str]:
    return [
        f"key vault {label}: {problem}"
        for label, summary in result["passes"].items()
        for problem in summary["problems"]
    ]


async def _one_pass(
    environment: BenchEnvironment,
    customers: Sequence[Customer],
    deliveries: Sequence[Delivery],
    label: str,
    cache_seconds: float,
) -> dict[str, Any]:
    names = StorageNames.for_run(f"kv-{label}")
    secrets = all_secrets(customers)
    async with (
        KeyVaultStandIn(secrets) as vault,
        ClientTrackStandIn(secrets, keep_requests=False) as clienttrack,
    ):
        values = environment.app_settings(
            names,
            {},
            clienttrack_url=clienttrack.url,
            extra={"KEY_VAULT_URL": vault.url, "SECRET_CACHE_SECONDS": f"{cache_seconds:g}"},
        )
        store = KeyVaultSecretStore(
            vault.url, credential=vault.credential(), connection_verify=str(vault.ca_path)
        )
        runtime = Runtime(load_settings(values), secret_store=store)
        log_path = environment.root / "logs" / f"keyvault-{label}.log"
        try:
            with app_log(log_path):
                seconds, ingest, outcomes, problems = await _ingest_and_deliver(
                    environment.connection_string, names, runtime, deliveries
                )
        finally:
            await runtime.close()
        reads = Counter(vault.reads)

    # Every read after the first comes at least one period after the previous read of the
    # same secret, so a run touches at most this many periods and reads each secret at most
    # this often.
    periods = math.floor(seconds / cache_seconds) + 1
    per_customer = {
        customer.customer_id: sum(reads[name] for name in customer.secrets()) / periods
        for customer in customers
    }
    total_reads = sum(reads.values())
    if ingest.get("200", 0) != len(deliveries):
        problems.append(f"ingest outcomes {dict(ingest)}")
    if outcomes.get(Outcome.DELIVERED.value, 0) != len(deliveries):
        problems.append(f"delivery outcomes {dict(outcomes)}")
    return {
        "events": len(deliveries),
        "cache_seconds": cache_seconds,
        "seconds": round(seconds, 2),
        "cache_periods": periods,
        "total_reads": total_reads,
        "reads_per_10000_events": round(total_reads * 10_000 / len(deliveries), 1),
        "reads_per_customer_per_period_max": round(max(per_customer.values()), 2),
        "reads_per_customer_per_period_mean": round(
            sum(per_customer.values()) / len(per_customer), 2
        ),
        "ingest_outcomes": dict(ingest),
        "delivery_outcomes": dict(outcomes),
        "problems": problems,
    }


async def _ingest_and_deliver(
    connection_string: str,
    names: StorageNames,
    runtime: Runtime,
    deliveries: Sequence[Delivery],
) -> tuple[float, Counter[str], Counter[str], list[str]]:
    """Post every delivery and deliver every event at the same time; time the whole run."""
    options = load_host_config(PROJECT_ROOT).queues
    outcomes: Counter[str] = Counter()
    queue = QueueClient.from_connection_string(connection_string, names.queue)
    posted = 0
    delivered = 0
    room = asyncio.Event()

    async def deliver(message: QueueMessage) -> bool:
        nonlocal delivered
        body = decode_message(message.content or "", options.message_encoding)
        outcome = await runtime.processor.process(body, message_id=message.id)
        outcomes[outcome.value] += 1
        await queue.delete_message(message.id, message.pop_receipt)
        delivered += 1
        room.set()
        return True

    async def post(delivery: Delivery) -> str:
        nonlocal posted
        while posted - delivered >= MAX_BACKLOG_EVENTS:
            room.clear()
            await room.wait()
        posted += 1
        response = await runtime.ingest.handle(
            "POST", delivery.customer_id, check=None, headers=delivery.headers, body=delivery.body
        )
        return str(response.status)

    problems: list[str] = []
    consumer = BatchConsumer(queue, options, deliver)
    async with queue:
        with contextlib.suppress(ResourceExistsError):
            await queue.create_queue()
        timeout = max(MIN_RUN_TIMEOUT_SECONDS, len(deliveries) / MIN_EVENTS_PER_SECOND)
        started = time.perf_counter()
        draining = asyncio.create_task(consumer.run(len(deliveries)))
        ingest = await run_closed_loop("ingest", deliveries, post, concurrency=INGEST_CONCURRENCY)
        try:
            await asyncio.wait_for(draining, timeout)
        except TimeoutError:
            problems.append(
                f"only {consumer.completed} of {len(deliveries)} events delivered after "
                f"{timeout:g} s"
            )
            await consumer.cancel()
        seconds = time.perf_counter() - started
    problems.extend(consumer.errors[:5])
    return seconds, ingest.outcomes, outcomes, problems
