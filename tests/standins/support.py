"""Helpers of the stand-in tests: a well-formed event, its headers, its secrets, polling."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = PROJECT_ROOT / "samples" / "task_completed_trigger3.json"

CUSTOMER = "acme-pantry"
SUBSCRIPTION_KEY = "acme-subscription-key"
API_KEY = "acme-api-key"


def clienttrack_secrets() -> dict[str, str]:
    """ClientTrack secrets of two customers. The first stores its API key with the prefix."""
    return {
        f"clienttrack-subscription-key-{CUSTOMER}": SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{CUSTOMER}": f"ApiKey {API_KEY}",
        "clienttrack-subscription-key-other": "other-subscription-key",
        "clienttrack-api-key-other": "other-api-key",
    }


def make_event(customer_id: str = CUSTOMER, *, body: bytes | None = None) -> dict[str, Any]:
    """Build the event the bridge would send for a sample Onfleet body."""
    raw = SAMPLE.read_bytes() if body is None else body
    payload = json.loads(raw)
    return {
        "source": "onfleet",
        "eventId": hashlib.sha256(customer_id.encode() + b"\n" + raw).hexdigest(),
        "customerId": customer_id,
        "triggerId": payload.get("triggerId"),
        "triggerName": payload.get("triggerName"),
        "taskId": payload.get("taskId"),
        "workerId": payload.get("workerId"),
        "occurredAt": "2026-01-01T12:35:05.312Z",
        "receivedAt": "2026-01-01T12:35:06.001Z",
        "attempt": 1,
        "payload": payload,
    }


def event_headers(
    event: dict[str, Any],
    *,
    subscription_key: str | None = SUBSCRIPTION_KEY,
    api_key: str | None = API_KEY,
) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Idempotency-Key": str(event["eventId"])}
    if subscription_key is not None:
        headers["Ocp-Apim-Subscription-Key"] = subscription_key
    if api_key is not None:
        headers["Authorization"] = f"ApiKey {api_key}"
    return headers


def wait_for(condition: Callable[[], bool], timeout_seconds: float = 15.0) -> None:
    """Poll `condition` every 50 ms until it is true, and fail the test after the timeout."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"Condition not met within {timeout_seconds} s.")
        time.sleep(0.05)
