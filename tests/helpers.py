"""Helpers for building requests, settings and queue reads in tests."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import azure.functions as func
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue.aio import QueueClient

from shared.envelope import Envelope, decode_queue_text
from shared.signature import sign

CUSTOMER = "acme-foodbank"
# Public test vector: HMAC-SHA512 of b"some-body" keyed with bytes.fromhex(TEST_SECRET_HEX).
TEST_SECRET_HEX = "736f6d652d736563726574"
TEST_BODY = b"some-body"
TEST_SIGNATURE = (
    "542013bd0f97f4b51d7977d33aea6b9ad97585c76d5ad3f3a294ce679560cd3f"
    "846144e5e74da79597c16663830b9720bf7d9bb58c88d2acd989bcc1000027fb"
)


def base_env(connection_string: str, queue_name: str, **extra: str) -> dict[str, str]:
    """Return app settings for one test: its own queue and container on Azurite."""
    env = {
        "AzureWebJobsStorage": connection_string,
        "ONFLEET_EVENTS_QUEUE": queue_name,
        "CLAIM_CHECK_CONTAINER": f"{queue_name}-payloads",
        "DEDUPE_TABLE": "dedupe" + queue_name.replace("-", ""),
        "CLIENTTRACK_INTEGRATION_QUEUE_URL": "http://127.0.0.1:9/api/integration/queue",
        f"onfleet-webhook-secret-{CUSTOMER}": TEST_SECRET_HEX,
        f"clienttrack-subscription-key-{CUSTOMER}": "test-subscription-key",
        f"clienttrack-api-key-{CUSTOMER}": "test-api-key",
    }
    env.update(extra)
    return env


def signature_for(body: bytes, secret_hex: str = TEST_SECRET_HEX) -> str:
    return sign(body, bytes.fromhex(secret_hex))


def http_request(
    method: str,
    customer_id: str = CUSTOMER,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> func.HttpRequest:
    return func.HttpRequest(
        method,
        f"http://127.0.0.1/onfleet/webhooks/{customer_id}",
        headers=dict(headers or {}),
        params=dict(params or {}),
        route_params={"customerId": customer_id},
        body=body,
    )


def signed_post(
    body: bytes, secret_hex: str = TEST_SECRET_HEX, customer_id: str = CUSTOMER
) -> func.HttpRequest:
    return http_request(
        "POST",
        customer_id,
        body=body,
        headers={"X-Onfleet-Signature": signature_for(body, secret_hex)},
    )


def sample_body(trigger_name: str = "taskCompleted", **fields: Any) -> bytes:
    document: dict[str, Any] = {
        "time": 1767270905312,
        "triggerId": 3,
        "triggerName": trigger_name,
        "taskId": "tF4~hJk6Lm8Np1Qr3St5Uv7W",
        "workerId": "wK3*pLm8Nq2Rs5Tu7Vx9Yz1A",
        "adminId": None,
        "actionContext": {"type": "WORKER", "id": "wK3*pLm8Nq2Rs5Tu7Vx9Yz1A"},
        "data": {"task": {"id": "tF4~hJk6Lm8Np1Qr3St5Uv7W"}},
    }
    document.update(fields)
    return json.dumps(document).encode("utf-8")


async def drain(connection_string: str, queue_name: str) -> list[str]:
    """Receive and delete every visible message; return their texts."""
    texts: list[str] = []
    async with QueueClient.from_connection_string(connection_string, queue_name) as queue:
        while True:
            try:
                batch = [message async for message in queue.receive_messages(max_messages=32)]
            except ResourceNotFoundError:
                return texts
            if not batch:
                return texts
            for message in batch:
                texts.append(message.content)
                await queue.delete_message(message)


async def drain_envelopes(connection_string: str, queue_name: str) -> list[Envelope]:
    return [decode_queue_text(text) for text in await drain(connection_string, queue_name)]


def decode_text(text: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(base64.b64decode(text))
    return document
