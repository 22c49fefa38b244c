"""The event_processor delivery logic against Azurite and a ClientTrack stand-in on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from azure.storage.queue.aio import QueueClient

from devhost.azurite import free_port
from devhost.clienttrack import ClientTrackStandIn, ScriptedResponse, fingerprint
from shared.envelope import Envelope, build_envelope, decode_queue_text
from shared.processor import EventProcessor, Outcome
from shared.runtime import Runtime
from shared.secrets import AppSettingsSecretStore
from shared.settings import load_settings
from tests.helpers import CUSTOMER, base_env, drain, drain_envelopes, sample_body

SUBSCRIPTION_KEY = "test-subscription-key"
API_KEY = "test-api-key"


class UpperBoundRandom(random.Random):
    """Makes the full-jitter draw return its upper bound, so delays are predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


class CountingStore(AppSettingsSecretStore):
    def __init__(self, environ: dict[str, str]) -> None:
        super().__init__(environ)
        self.reads: dict[str, int] = {}

    async def get(self, name: str) -> str | None:
        self.reads[name] = self.reads.get(name, 0) + 1
        return await super().get(name)


@dataclass
class Bridge:
    """An EventProcessor wired to Azurite, plus the queue it reads and a stand-in."""

    env: dict[str, str]
    runtime: Runtime
    store: CountingStore
    standin: ClientTrackStandIn
    queue: QueueClient
    processed: list[Outcome] = field(default_factory=list)

    @property
    def processor(self) -> EventProcessor:
        return self.runtime.processor

    async def send(self, envelope: Envelope) -> Envelope:
        return await self.runtime.storage.enqueue(envelope)

    async def run_once(self) -> list[Outcome]:
        """Act as the queue trigger once: process visible messages and complete them."""
        outcomes: list[Outcome] = []
        async for message in self.queue.receive_messages(max_messages=32, visibility_timeout=60):
            outcome = await self.processor.process(
                base64.b64decode(message.content), message_id=message.id
            )
            await self.queue.delete_message(message)
            outcomes.append(outcome)
        self.processed.extend(outcomes)
        return outcomes

    async def poison(self) -> list[Envelope]:
        return await drain_envelopes(
            self.env["AzureWebJobsStorage"], self.env["ONFLEET_EVENTS_QUEUE"] + "-poison"
        )


def make_env(connection_string: str, queue_name: str, url: str, **extra: str) -> dict[str, str]:
    settings = {
        "CLIENTTRACK_INTEGRATION_QUEUE_URL": url,
        "RETRY_BASE_SECONDS": "1",
        "RETRY_MAX_DELAY_SECONDS": "2",
    }
    settings.update(extra)
    return base_env(connection_string, queue_name, **settings)


@pytest.fixture
async def standin() -> AsyncIterator[ClientTrackStandIn]:
    secrets = {
        f"clienttrack-subscription-key-{CUSTOMER}": SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{CUSTOMER}": API_KEY,
    }
    async with ClientTrackStandIn(secrets) as server:
        yield server


async def open_bridge(
    env: dict[str, str], standin: ClientTrackStandIn, rng: random.Random | None = None
) -> Bridge:
    store = CountingStore(env)
    runtime = Runtime(load_settings(env), secret_store=store)
    runtime._processor = EventProcessor(
        runtime.settings, runtime.secrets, runtime.storage, rng=rng or UpperBoundRandom()
    )
    queue = QueueClient.from_connection_string(
        env["AzureWebJobsStorage"], env["ONFLEET_EVENTS_QUEUE"]
    )
    return Bridge(env, runtime, store, standin, queue)


@pytest.fixture
async def bridge(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> AsyncIterator[Bridge]:
    env = make_env(storage_connection_string, queue_name, standin.url)
    opened = await open_bridge(env, standin)
    yield opened
    await opened.queue.close()
    await opened.runtime.close()


async def test_delivery_exact_request(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    body = sample_body()
    envelope = await bridge.send(build_envelope(CUSTOMER, body))
    assert await bridge.run_once() == [Outcome.DELIVERED]

    [request] = standin.accepted_requests
    assert request.headers["Ocp-Apim-Subscription-Key"] == fingerprint(SUBSCRIPTION_KEY)
    assert request.headers["Authorization"] == fingerprint(f"ApiKey {API_KEY}")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == envelope.event_id
    assert request.body == {
        "source": "onfleet",
        "eventId": envelope.event_id,
        "customerId": CUSTOMER,
        "triggerId": 3,
        "triggerName": "taskCompleted",
        "taskId": "tF4~hJk6Lm8Np1Qr3St5Uv7W",
        "workerId": "wK3*pLm8Nq2Rs5Tu7Vx9Yz1A",
        "occurredAt": "2026-01-01T12:35:05.312Z",
        "receivedAt": envelope.received_at,
        "attempt": 1,
        "payload": json.loads(body),
    }
    assert await bridge.poison() == []


async def test_api_key_prefix_not_doubled(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    env = make_env(
        storage_connection_string,
        queue_name,
        standin.url,
        **{f"clienttrack-api-key-{CUSTOMER}": f"ApiKey {API_KEY}"},
    )
    bridge = await open_bridge(env, standin)
    try:
        await bridge.send(build_envelope(CUSTOMER, sample_body()))
        assert await bridge.run_once() == [Outcome.DELIVERED]
        [request] = standin.accepted_requests
        assert request.headers["Authorization"] == fingerprint(f"ApiKey {API_KEY}")
    finally:
        await bridge.queue.close()
        await bridge.runtime.close()


async def test_500_then_200_retried(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    standin.script([500, 200])
    envelope = await bridge.send(build_envelope(CUSTOMER, sample_body()))

    assert await bridge.run_once() == [Outcome.RETRY_SCHEDULED]
    scheduled_at = time.monotonic()
    # The upper-bound draw makes the first delay RETRY_BASE_SECONDS * 2**0 = 1 s.
    assert await bridge.run_once() == []
    while not (outcomes := await bridge.run_once()):
        assert time.monotonic() - scheduled_at < 10, "the retry never became visible"
        await asyncio.sleep(0.2)
    assert time.monotonic() - scheduled_at >= 0.9
    assert outcomes == [Outcome.DELIVERED]

    attempts = [request.body["attempt"] for request in standin.requests]
    assert attempts == [1, 2]
    assert {request.event_id for request in standin.requests} == {envelope.event_id}


async def test_retry_envelope_has_attempt_1(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    standin.script([503])
    await bridge.send(build_envelope(CUSTOMER, sample_body()))
    assert await bridge.run_once() == [Outcome.RETRY_SCHEDULED]
    await asyncio.sleep(1.2)
    [envelope] = await drain_envelopes(
        bridge.env["AzureWebJobsStorage"], bridge.env["ONFLEET_EVENTS_QUEUE"]
    )
    assert envelope.attempt == 1
    assert envelope.failure is None


async def wait_visible(bridge: Bridge, *, not_before: float, limit: float) -> float:
    started = time.monotonic()
    while True:
        texts = await drain(bridge.env["AzureWebJobsStorage"], bridge.env["ONFLEET_EVENTS_QUEUE"])
        elapsed = time.monotonic() - started
        if texts:
            return elapsed
        assert elapsed < limit, f"message not visible after {limit} s"
        await asyncio.sleep(0.25)


async def test_429_retry_after_honoured(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    env = make_env(storage_connection_string, queue_name, standin.url, RETRY_MAX_DELAY_SECONDS="30")
    bridge = await open_bridge(env, standin, rng=random.Random(0))
    try:
        standin.script([ScriptedResponse(429, {"Retry-After": "7"})])
        await bridge.send(build_envelope(CUSTOMER, sample_body()))
        assert await bridge.run_once() == [Outcome.RETRY_SCHEDULED]
        elapsed = await wait_visible(bridge, not_before=7, limit=20)
        assert elapsed >= 6.5
    finally:
        await bridge.queue.close()
        await bridge.runtime.close()


async def test_retry_after_capped(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    env = make_env(storage_connection_string, queue_name, standin.url, RETRY_MAX_DELAY_SECONDS="2")
    bridge = await open_bridge(env, standin)
    try:
        standin.script([ScriptedResponse(429, {"Retry-After": "3600"})])
        await bridge.send(build_envelope(CUSTOMER, sample_body()))
        assert await bridge.run_once() == [Outcome.RETRY_SCHEDULED]
        elapsed = await wait_visible(bridge, not_before=2, limit=8)
        assert 1.5 <= elapsed < 8
    finally:
        await bridge.queue.close()
        await bridge.runtime.close()


async def test_timeout_is_transient(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    env = make_env(
        storage_connection_string, queue_name, standin.url, CLIENTTRACK_READ_TIMEOUT_SECONDS="0.3"
    )
    bridge = await open_bridge(env, standin)
    try:
        standin.script([ScriptedResponse(200, delay_seconds=2.0)])
        await bridge.send(build_envelope(CUSTOMER, sample_body()))
        assert await bridge.run_once() == [Outcome.RETRY_SCHEDULED]
        assert await bridge.poison() == []
    finally:
        await bridge.queue.close()
        await bridge.runtime.close()


async def test_refused_connection_is_transient(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/api/integration/queue"
    env = make_env(storage_connection_string, queue_name, closed)
    bridge = await open_bridge(env, standin)
    try:
        await bridge.send(build_envelope(CUSTOMER, sample_body()))
        assert await bridge.run_once() == [Outcome.RETRY_SCHEDULED]
    finally:
        await bridge.queue.close()
        await bridge.runtime.close()


async def test_dropped_connection_is_transient(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    standin.script([ScriptedResponse(drop_connection=True)])
    await bridge.send(build_envelope(CUSTOMER, sample_body()))
    assert await bridge.run_once() == [Outcome.RETRY_SCHEDULED]


async def test_400_parks_at_once(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    standin.script([400])
    envelope = await bridge.send(build_envelope(CUSTOMER, sample_body()))
    assert await bridge.run_once() == [Outcome.PARKED]

    [parked] = await bridge.poison()
    assert parked.event_id == envelope.event_id
    assert parked.failure is not None
    assert parked.failure.reason == "permanent-http-status"
    assert parked.failure.status == 400
    assert parked.failure.attempts == 1
    assert parked.failure.at.endswith("Z")
    assert "400" in parked.failure.detail
    assert len(standin.requests) == 1


async def test_parked_message_never_expires(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    standin.script([422])
    await bridge.send(build_envelope(CUSTOMER, sample_body()))
    await bridge.run_once()
    poison = QueueClient.from_connection_string(
        bridge.env["AzureWebJobsStorage"], bridge.env["ONFLEET_EVENTS_QUEUE"] + "-poison"
    )
    async with poison:
        [message] = await poison.peek_messages(max_messages=1)
    assert message.expires_on is None or message.expires_on.year >= 9999


async def test_401_rereads_secrets_once(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    env = make_env(
        storage_connection_string, queue_name, standin.url, SECRET_REFRESH_MIN_SECONDS="0"
    )
    bridge = await open_bridge(env, standin)
    try:
        await bridge.send(build_envelope(CUSTOMER, sample_body()))
        await bridge.send(build_envelope(CUSTOMER, sample_body(taskId="second")))
        assert await bridge.run_once() == [Outcome.DELIVERED, Outcome.DELIVERED]
        name = f"clienttrack-api-key-{CUSTOMER}"
        assert bridge.store.reads[name] == 1

        # Rotate the key in ClientTrack and the store; the worker still caches the old one.
        env[name] = "rotated-api-key"
        assert isinstance(standin.secrets, dict)
        standin.secrets[name] = "rotated-api-key"
        await bridge.send(build_envelope(CUSTOMER, sample_body(taskId="third")))
        assert await bridge.run_once() == [Outcome.DELIVERED]
        assert bridge.store.reads[name] == 2
        statuses = [request.status for request in standin.requests]
        assert statuses == [200, 200, 403, 200]
    finally:
        await bridge.queue.close()
        await bridge.runtime.close()


async def test_401_twice_parks(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    standin.script([401, 401])
    await bridge.send(build_envelope(CUSTOMER, sample_body()))
    assert await bridge.run_once() == [Outcome.PARKED]
    [parked] = await bridge.poison()
    assert parked.failure is not None
    assert parked.failure.reason == "auth-refused"
    assert parked.failure.status == 401
    assert len(standin.requests) == 2


async def test_exhausted_attempts_park(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    env = make_env(
        storage_connection_string, queue_name, standin.url,
        MAX_DELIVERY_ATTEMPTS="3", RETRY_BASE_SECONDS="0", RETRY_MAX_DELAY_SECONDS="0",
    )  # fmt: skip
    bridge = await open_bridge(env, standin)
    try:
        standin.script([500, 502, 503])
        await bridge.send(build_envelope(CUSTOMER, sample_body()))
        outcomes = []
        for _ in range(3):
            outcomes += await bridge.run_once()
        assert outcomes == [Outcome.RETRY_SCHEDULED, Outcome.RETRY_SCHEDULED, Outcome.PARKED]
        [parked] = await bridge.poison()
        assert parked.failure is not None
        assert parked.failure.reason == "retries-exhausted"
        assert parked.failure.status == 503
        assert parked.failure.attempts == 3
        assert parked.attempt == 3
    finally:
        await bridge.queue.close()
        await bridge.runtime.close()


async def test_missing_secret_parks_configuration(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    env = make_env(storage_connection_string, queue_name, standin.url)
    del env[f"clienttrack-api-key-{CUSTOMER}"]
    bridge = await open_bridge(env, standin)
    try:
        await bridge.send(build_envelope(CUSTOMER, sample_body()))
        assert await bridge.run_once() == [Outcome.PARKED]
        [parked] = await bridge.poison()
        assert parked.failure is not None
        assert parked.failure.reason == "configuration"
        assert f"clienttrack-api-key-{CUSTOMER}" in parked.failure.detail
        assert f"clienttrack-subscription-key-{CUSTOMER}" not in parked.failure.detail
        assert standin.requests == []
    finally:
        await bridge.queue.close()
        await bridge.runtime.close()


async def test_claim_checked_body_delivered(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    body = sample_body(notes="ü" * (40 * 1024))
    written = await bridge.send(build_envelope(CUSTOMER, body))
    assert written.body_blob is not None
    assert await bridge.run_once() == [Outcome.DELIVERED]
    [request] = standin.accepted_requests
    assert request.body["payload"] == json.loads(body)


async def test_missing_blob_parks(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    body = sample_body(notes="x" * (70 * 1024))
    written = await bridge.send(build_envelope(CUSTOMER, body))
    assert written.body_blob is not None
    await bridge.runtime.storage.payloads.delete_blob(written.body_blob)
    assert await bridge.run_once() == [Outcome.PARKED]
    [parked] = await bridge.poison()
    assert parked.failure is not None
    assert parked.failure.reason == "payload-missing"


async def test_body_not_json_parks(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    await bridge.send(build_envelope(CUSTOMER, b"<xml/>"))
    assert await bridge.run_once() == [Outcome.PARKED]
    [parked] = await bridge.poison()
    assert parked.failure is not None
    assert parked.failure.reason == "body-not-json"
    assert parked.body == "<xml/>"


@pytest.mark.parametrize("raw", [b"not json", b'{"schemaVersion": 2, "eventId": "e"}', b"\xff\xfe"])
async def test_unreadable_message_parked_unchanged(bridge: Bridge, raw: bytes) -> None:
    outcome = await bridge.processor.process(raw, message_id="m-1")
    assert outcome == Outcome.PARKED
    [text] = await drain(
        bridge.env["AzureWebJobsStorage"], bridge.env["ONFLEET_EVENTS_QUEUE"] + "-poison"
    )
    assert base64.b64decode(text) == raw


async def test_duplicate_delivered_once(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    envelope = build_envelope(CUSTOMER, sample_body())
    await bridge.send(envelope)
    await bridge.send(envelope)
    outcomes = sorted(o.value for o in await bridge.run_once())
    if len(outcomes) < 2:
        outcomes += [o.value for o in await bridge.run_once()]
    assert sorted(outcomes) == ["delivered", "duplicate-skipped"]
    assert len(standin.accepted_requests) == 1


async def test_failed_park_propagates(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    from shared.errors import StorageUnavailable

    async def broken_park(envelope: Envelope) -> None:
        raise StorageUnavailable("poison queue down")

    standin.script([400])
    bridge.runtime.storage.park = broken_park  # type: ignore[method-assign]
    envelope = build_envelope(CUSTOMER, sample_body())
    with pytest.raises(StorageUnavailable):
        await bridge.processor.process(envelope.to_json().encode())


async def test_secret_reads_cached(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    for index in range(50):
        await bridge.send(build_envelope(CUSTOMER, sample_body(taskId=f"t{index}")))
    delivered = 0
    while delivered < 50:
        outcomes = await bridge.run_once()
        assert outcomes, "queue drained before all events were delivered"
        delivered += outcomes.count(Outcome.DELIVERED)
    assert bridge.store.reads == {
        f"clienttrack-subscription-key-{CUSTOMER}": 1,
        f"clienttrack-api-key-{CUSTOMER}": 1,
    }


async def test_processor_queue_text_roundtrip(bridge: Bridge) -> None:
    envelope = await bridge.send(build_envelope(CUSTOMER, sample_body()))
    [text] = await drain(bridge.env["AzureWebJobsStorage"], bridge.env["ONFLEET_EVENTS_QUEUE"])
    assert decode_queue_text(text) == envelope
