"""The deliveries of the fault-injection run, and a sender that retries them as Onfleet does.

Onfleet counts only a 200 as success and retries every other outcome: an error status, a
connection error, no response within 10 seconds. The sender does the same until the delivery
gets its 200 or `MAX_SEND_ATTEMPTS` is reached. Onfleet's own retry schedule is not part of
its public documentation, so the sender waits `RESEND_DELAY_SECONDS` times the attempt
number, capped at `MAX_RESEND_DELAY_SECONDS`, which crosses the run's short outages in
seconds.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from devhost.send import SAMPLES_DIRECTORY
from shared.envelope import compute_event_id
from shared.signature import SIGNATURE_HEADER, sign

# Onfleet waits this long for a response before it counts the request as failed.
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_SEND_ATTEMPTS = 200
RESEND_DELAY_SECONDS = 0.25
MAX_RESEND_DELAY_SECONDS = 2.0
# 2026-01-01T00:00:00Z in Onfleet's milliseconds; delivery i gets this plus i, so every body,
# and so every event id, is different.
FIRST_EVENT_TIME_MS = 1_767_225_600_000
# One delivery in this many carries a large note, so its envelope takes the claim-check
# path through Blob storage.
CLAIM_CHECK_EVERY = 200
LARGE_NOTE_BYTES = 56 * 1024


@dataclass(frozen=True)
class Customer:
    """A customer of the run, with secrets generated for it and used only on 127.0.0.1."""

    customer_id: str
    webhook_secret_hex: str
    subscription_key: str
    api_key: str

    def app_settings(self) -> dict[str, str]:
        """Return the customer's three secrets under the names the bridge reads."""
        return {
            f"onfleet-webhook-secret-{self.customer_id}": self.webhook_secret_hex,
            f"clienttrack-subscription-key-{self.customer_id}": self.subscription_key,
            f"clienttrack-api-key-{self.customer_id}": self.api_key,
        }


@dataclass(frozen=True)
class Delivery:
    """One signed Onfleet webhook request and the event id the bridge must give it."""

    index: int
    customer_id: str
    body: bytes
    signature: str
    event_id: str

    def payload(self) -> Any:
        return json.loads(self.body)


def make_customers(count: int, rng: random.Random) -> list[Customer]:
    return [
        Customer(
            customer_id=f"faults-customer-{number}",
            webhook_secret_hex=rng.randbytes(32).hex(),
            subscription_key=rng.randbytes(16).hex(),
            api_key=rng.randbytes(16).hex(),
        )
        for number in range(1, count + 1)
    ]


def build_deliveries(count: int, customers: Sequence[Customer]) -> list[Delivery]:
    """Build `count` deliveries from the bundled samples, spread over the customers in turn."""
    samples = [json.loads(path.read_bytes()) for path in sorted(SAMPLES_DIRECTORY.glob("*.json"))]
    deliveries = []
    for index in range(count):
        customer = customers[index % len(customers)]
        document = dict(samples[index % len(samples)])
        document["time"] = FIRST_EVENT_TIME_MS + index
        if index % CLAIM_CHECK_EVERY == CLAIM_CHECK_EVERY - 1:
            document["notes"] = "n" * LARGE_NOTE_BYTES
        body = json.dumps(document).encode("utf-8")
        deliveries.append(
            Delivery(
                index=index,
                customer_id=customer.customer_id,
                body=body,
                signature=sign(body, bytes.fromhex(customer.webhook_secret_hex)),
                event_id=compute_event_id(customer.customer_id, body),
            )
        )
    return deliveries


@dataclass
class SendTally:
    """What the sender saw: requests, response statuses, resends by cause, accepted event ids."""

    requests: int = 0
    accepted_event_ids: set[str] = field(default_factory=set)
    given_up: list[int] = field(default_factory=list)
    resends: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    event_id_mismatches: int = 0
    done: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def accept(self, event_id: str) -> None:
        self.accepted_event_ids.add(event_id)
        self._changed.set()

    def finish(self) -> None:
        self.done = True
        self._changed.set()

    async def wait_for_accepted(self, count: int) -> bool:
        """Wait until `count` deliveries got a 200 (True) or sending ended before (False)."""
        while len(self.accepted_event_ids) < count and not self.done:
            self._changed.clear()
            await self._changed.wait()
        return len(self.accepted_event_ids) >= count


def _resend_cause(status: int | None, error: Exception | None) -> str:
    if isinstance(error, httpx.TimeoutException):
        return "timeout"
    if error is not None:
        return "connection-error"
    if status == 503:
        return "503"
    return f"status-{status}"


async def _send_one(
    client: httpx.AsyncClient, url: str, delivery: Delivery, tally: SendTally
) -> None:
    headers = {SIGNATURE_HEADER: delivery.signature, "Content-Type": "application/json"}
    for attempt in range(1, MAX_SEND_ATTEMPTS + 1):
        tally.requests += 1
        status: int | None = None
        error: Exception | None = None
        try:
            response = await client.post(url, content=delivery.body, headers=headers)
        except httpx.HTTPError as caught:
            error = caught
        else:
            status = response.status_code
            tally.statuses[status] += 1
            if status == 200:
                if response.json().get("eventId") != delivery.event_id:
                    tally.event_id_mismatches += 1
                tally.accept(delivery.event_id)
                return

        if attempt == MAX_SEND_ATTEMPTS:
            break
        tally.resends[_resend_cause(status, error)] += 1
        await asyncio.sleep(min(RESEND_DELAY_SECONDS * attempt, MAX_RESEND_DELAY_SECONDS))
    tally.given_up.append(delivery.index)


async def send_all(
    base_url: str, deliveries: Sequence[Delivery], *, concurrency: int, tally: SendTally
) -> None:
    """Send every delivery with at most `concurrency` requests in flight, resending failures."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    pending: asyncio.Queue[Delivery] = asyncio.Queue()
    for delivery in deliveries:
        pending.put_nowait(delivery)

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_SECONDS, limits=limits) as client:

        async def worker() -> None:
            while not pending.empty():
                delivery = pending.get_nowait()
                await _send_one(client, base_url + delivery.customer_id, delivery, tally)

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            tally.finish()
