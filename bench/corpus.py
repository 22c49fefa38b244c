"""Signed Onfleet deliveries for the benchmarks, built from the bundled samples.

Every delivery is a sample body with its own `time`, so each one has its own event id and
the dedupe ledger never skips one as a repeat. One delivery in every `CLAIM_CHECK_EVERY`
carries a task padded with metadata to `CLAIM_CHECKED_BODY_BYTES`, which is too large for a
queue message and so takes the claim-check path (blob upload, then a queue message that
names the blob).
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devhost.send import SAMPLES_DIRECTORY
from shared.envelope import (
    Envelope,
    build_envelope,
    claim_check_blob_name,
    claim_checked,
    fits_queue_message,
    utc_timestamp,
)
from shared.secrets import api_key_name, subscription_key_name, webhook_secret_name
from shared.signature import SIGNATURE_HEADER, sign

CLAIM_CHECK_EVERY = 100
# Bodies above 48 KiB no longer fit a queue message once base64-encoded in an envelope.
CLAIM_CHECKED_BODY_BYTES = 56 * 1024
CLAIM_CHECKED_SAMPLE = "task_completed_trigger3.json"
CUSTOMER_PREFIX = "bench-customer-"
# 2026-01-01T00:00:00Z in Onfleet's milliseconds; each delivery adds its index to it.
FIRST_EVENT_TIME_MS = 1_767_225_600_000


@dataclass(frozen=True)
class Customer:
    """A benchmark customer with freshly generated secrets, used only on 127.0.0.1."""

    customer_id: str
    webhook_secret_hex: str
    subscription_key: str
    api_key: str

    @property
    def webhook_key(self) -> bytes:
        return bytes.fromhex(self.webhook_secret_hex)

    def secrets(self) -> dict[str, str]:
        """Return the customer's three secrets by the names the bridge reads."""
        return {
            webhook_secret_name(self.customer_id): self.webhook_secret_hex,
            subscription_key_name(self.customer_id): self.subscription_key,
            api_key_name(self.customer_id): self.api_key,
        }


@dataclass(frozen=True)
class Delivery:
    """One signed Onfleet POST: the customer, the exact body bytes and their signature."""

    customer_id: str
    body: bytes
    signature: str
    claim_checked: bool

    @property
    def headers(self) -> dict[str, str]:
        return {SIGNATURE_HEADER: self.signature, "Content-Type": "application/json"}


@dataclass(frozen=True)
class QueuedEvent:
    """The queue message ingest would write for a delivery, for the raw-SDK baselines.

    `blob_name` is set when the body goes to Blob storage first; `text` then names it.
    """

    envelope: Envelope
    text: str
    blob_name: str | None
    body: bytes


def make_customers(count: int) -> list[Customer]:
    """Create `count` customers with random secrets."""
    return [
        Customer(
            customer_id=f"{CUSTOMER_PREFIX}{number:02d}",
            webhook_secret_hex=secrets.token_hex(32),
            subscription_key=secrets.token_hex(16),
            api_key=secrets.token_hex(16),
        )
        for number in range(1, count + 1)
    ]


def all_secrets(customers: Sequence[Customer]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for customer in customers:
        merged.update(customer.secrets())
    return merged


def load_samples(directory: Path = SAMPLES_DIRECTORY) -> dict[str, dict[str, Any]]:
    """Read every sample body as a JSON object, keyed by file name."""
    samples = {
        path.name: json.loads(path.read_bytes()) for path in sorted(directory.glob("*.json"))
    }
    if CLAIM_CHECKED_SAMPLE not in samples:
        raise FileNotFoundError(
            f"Sample {CLAIM_CHECKED_SAMPLE} is missing from {directory}; the benchmark pads it "
            "into its claim-checked body."
        )
    return samples


def build_deliveries(
    count: int, customers: Sequence[Customer], *, seed: int = 1, first_index: int = 0
) -> list[Delivery]:
    """Build `count` signed deliveries spread over `customers`, drawn with a fixed seed.

    `first_index` offsets the `time` field, so two corpora built with different offsets
    share no event id.
    """
    if not customers:
        raise ValueError("At least one customer is needed to build deliveries.")
    rng = random.Random(seed)
    samples = load_samples()
    names = sorted(samples)
    large = _padded(samples[CLAIM_CHECKED_SAMPLE], CLAIM_CHECKED_BODY_BYTES)

    deliveries = []
    for position in range(count):
        customer = customers[position % len(customers)]
        is_large = position % CLAIM_CHECK_EVERY == CLAIM_CHECK_EVERY - 1
        document = dict(large if is_large else samples[rng.choice(names)])
        document["time"] = FIRST_EVENT_TIME_MS + first_index + position
        body = json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8")
        deliveries.append(
            Delivery(customer.customer_id, body, sign(body, customer.webhook_key), is_large)
        )
    return deliveries


def queued_event(delivery: Delivery, *, received_at: str | None = None) -> QueuedEvent:
    """Build the envelope text ingest writes for `delivery`, claim-checked when too large."""
    envelope = build_envelope(
        delivery.customer_id, delivery.body, received_at=received_at or utc_timestamp()
    )
    text = envelope.to_queue_text()
    if fits_queue_message(text):
        return QueuedEvent(envelope, text, None, delivery.body)
    blob_name = claim_check_blob_name(envelope.customer_id, envelope.event_id)
    checked = claim_checked(envelope, blob_name)
    return QueuedEvent(checked, checked.to_queue_text(), blob_name, delivery.body)


def clienttrack_request(event: QueuedEvent, *, attempt: int = 1) -> bytes:
    """Build the JSON body the processor posts to ClientTrack for `event`."""
    envelope = event.envelope
    occurred_at = None
    if envelope.onfleet_time is not None:
        occurred_at = utc_timestamp(datetime.fromtimestamp(envelope.onfleet_time / 1000, tz=UTC))
    document = {
        "source": "onfleet",
        "eventId": envelope.event_id,
        "customerId": envelope.customer_id,
        "triggerId": envelope.trigger_id,
        "triggerName": envelope.trigger_name,
        "taskId": envelope.task_id,
        "workerId": envelope.worker_id,
        "occurredAt": occurred_at,
        "receivedAt": envelope.received_at,
        "attempt": attempt,
        "payload": json.loads(event.body),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _padded(document: dict[str, Any], size_bytes: int) -> dict[str, Any]:
    """Return a copy of a task event whose task carries metadata until the body is large."""
    padded: dict[str, Any] = json.loads(json.dumps(document))
    task = padded.setdefault("data", {}).setdefault("task", {})
    metadata: list[dict[str, Any]] = task.setdefault("metadata", [])
    number = 0
    while len(json.dumps(padded, indent=2, ensure_ascii=False).encode("utf-8")) < size_bytes:
        metadata.append(
            {
                "name": f"packingListLine{number:04d}",
                "type": "string",
                "value": f"Line {number}: 2 x shelf-stable food box, checked at the depot door",
                "visibility": ["api", "dashboard"],
            }
        )
        number += 1
    return padded
