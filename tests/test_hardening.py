"""Edge cases found by attacking the bridge: concurrent copies, odd bodies, slow servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator

import pytest
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

from devhost.clienttrack import ClientTrackStandIn, FaultSettings, ScriptedResponse
from shared.backoff import parse_retry_after
from shared.clienttrack import ClientTrackClient, Credentials
from shared.envelope import build_envelope, decode_envelope
from shared.errors import (
    ConfigurationError,
    EnvelopeError,
    SecretStoreUnavailable,
    TransientDeliveryError,
)
from shared.processor import Outcome
from shared.secrets import AppSettingsSecretStore, CachedSecrets
from shared.settings import load_settings
from tests.helpers import CUSTOMER, sample_body
from tests.test_processor import API_KEY, SUBSCRIPTION_KEY, Bridge, make_env, open_bridge

SURROGATE_BODY = (
    b'{"triggerName": "taskCompleted", "taskId": "abc\\ud83d", "data": {"notes": "cut \\ud83d"}}'
)


@pytest.fixture
async def standin() -> AsyncIterator[ClientTrackStandIn]:
    secrets = {
        f"clienttrack-subscription-key-{CUSTOMER}": SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{CUSTOMER}": API_KEY,
    }
    async with ClientTrackStandIn(secrets) as server:
        yield server


async def close(*bridges: Bridge) -> None:
    for bridge in bridges:
        await bridge.queue.close()
        await bridge.runtime.close()


async def test_concurrent_copies_one_worker(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    env = make_env(storage_connection_string, queue_name, standin.url)
    bridge = await open_bridge(env, standin)
    try:
        envelope = build_envelope(CUSTOMER, sample_body())
        outcomes = await asyncio.gather(
            *(bridge.processor.process(envelope.to_json().encode()) for _ in range(3))
        )
        assert sorted(o.value for o in outcomes) == [
            "delivered",
            "duplicate-skipped",
            "duplicate-skipped",
        ]
        assert len(standin.accepted_requests) == 1
    finally:
        await close(bridge)


async def test_concurrent_copies_two_workers(
    storage_connection_string: str, queue_name: str
) -> None:
    secrets = {
        f"clienttrack-subscription-key-{CUSTOMER}": SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{CUSTOMER}": API_KEY,
    }
    async with ClientTrackStandIn(secrets, faults=FaultSettings(delay_seconds=0.5)) as slow:
        env = make_env(storage_connection_string, queue_name, slow.url)
        first, second = await open_bridge(env, slow), await open_bridge(env, slow)
        try:
            message = build_envelope(CUSTOMER, sample_body()).to_json().encode()
            outcomes = await asyncio.gather(
                first.processor.process(message), second.processor.process(message)
            )
            assert sorted(o.value for o in outcomes) == ["deferred-copy-in-flight", "delivered"]
            assert len(slow.accepted_requests) == 1

            # The deferred copy comes back later and finds the event delivered.
            again = await second.processor.process(message)
            assert again is Outcome.DUPLICATE
            assert len(slow.accepted_requests) == 1
        finally:
            await close(first, second)


async def test_failed_attempt_releases_claim(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    standin.script([503, 200])
    message = build_envelope(CUSTOMER, sample_body()).to_json().encode()
    assert await bridge.processor.process(message) is Outcome.RETRY_SCHEDULED
    assert await bridge.processor.process(message) is Outcome.DELIVERED
    assert await bridge.processor.process(message) is Outcome.DUPLICATE


async def test_dedupe_table_recreated(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    message = build_envelope(CUSTOMER, sample_body()).to_json().encode()
    assert await bridge.processor.process(message) is Outcome.DELIVERED
    async with TableClient.from_connection_string(
        bridge.env["AzureWebJobsStorage"], bridge.env["DEDUPE_TABLE"]
    ) as table:
        await table.delete_table()
    # Azurite, like Azure, may still be deleting the table: the event is delivered either
    # way, and once the table is back the ledger works again.
    other = build_envelope(CUSTOMER, sample_body(taskId="other")).to_json().encode()
    assert await bridge.processor.process(other) is Outcome.DELIVERED
    third = build_envelope(CUSTOMER, sample_body(taskId="third")).to_json().encode()
    assert await bridge.processor.process(third) is Outcome.DELIVERED
    assert await bridge.processor.process(third) is Outcome.DUPLICATE


async def test_last_try_parks_unexpected_error(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    async def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("unexpected")

    bridge.processor.client.post_event = broken  # type: ignore[method-assign]
    message = build_envelope(CUSTOMER, sample_body()).to_json().encode()
    with pytest.raises(RuntimeError):
        await bridge.processor.process(message, dequeue_count=4)
    assert await bridge.processor.process(message, dequeue_count=5) is Outcome.PARKED
    [parked] = await bridge.poison()
    assert parked.failure is not None
    assert parked.failure.reason == "unexpected-error"
    assert parked.failure.detail == "RuntimeError on try 5"


async def test_queued_events_never_expire(bridge: Bridge) -> None:
    await bridge.send(build_envelope(CUSTOMER, sample_body()))
    async with QueueClient.from_connection_string(
        bridge.env["AzureWebJobsStorage"], bridge.env["ONFLEET_EVENTS_QUEUE"]
    ) as queue:
        [message] = await queue.peek_messages(max_messages=1)
    assert message.expires_on is None or message.expires_on.year >= 9999


async def test_lone_surrogate_accepted_and_delivered(
    bridge: Bridge, standin: ClientTrackStandIn
) -> None:
    envelope = build_envelope(CUSTOMER, SURROGATE_BODY)
    assert envelope.task_id is None
    written = await bridge.send(envelope)
    assert decode_envelope(written.to_json().encode()).inline_body() == SURROGATE_BODY
    assert await bridge.run_once() == [Outcome.DELIVERED]
    [request] = standin.accepted_requests
    assert request.body["payload"]["taskId"] == "abc\ud83d"


@pytest.mark.parametrize(
    "body", [b'{"value": NaN}', b'{"value": Infinity}', b"[" * 5000 + b"]" * 5000]
)
async def test_unforwardable_body_parks(bridge: Bridge, body: bytes) -> None:
    await bridge.send(build_envelope(CUSTOMER, body))
    assert await bridge.run_once() == [Outcome.PARKED]
    [parked] = await bridge.poison()
    assert parked.failure is not None
    assert parked.failure.reason == "body-not-json"


@pytest.mark.parametrize("api_key", ["kéy", "key\r\nX-Injected: 1", "  "])
async def test_unsendable_secret_parks(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn, api_key: str
) -> None:
    env = make_env(
        storage_connection_string, queue_name, standin.url,
        **{f"clienttrack-api-key-{CUSTOMER}": api_key},
    )  # fmt: skip
    bridge = await open_bridge(env, standin)
    try:
        await bridge.send(build_envelope(CUSTOMER, sample_body()))
        assert await bridge.run_once() == [Outcome.PARKED]
        [parked] = await bridge.poison()
        assert parked.failure is not None
        assert parked.failure.reason in ("configuration",)
        assert api_key.strip() == "" or api_key not in parked.failure.detail
        assert standin.requests == []
    finally:
        await close(bridge)


async def test_auth_reread_rate_limited(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    env = make_env(
        storage_connection_string, queue_name, standin.url, SECRET_REFRESH_MIN_SECONDS="3600"
    )
    bridge = await open_bridge(env, standin)
    try:
        standin.script([401] * 10)
        for index in range(5):
            await bridge.send(build_envelope(CUSTOMER, sample_body(taskId=f"t{index}")))
        outcomes = await bridge.run_once()
        assert outcomes == [Outcome.PARKED] * 5
        assert bridge.store.reads == {
            f"clienttrack-subscription-key-{CUSTOMER}": 1,
            f"clienttrack-api-key-{CUSTOMER}": 1,
        }
    finally:
        await close(bridge)


async def test_key_cut_at_detail_edge_redacted(bridge: Bridge, standin: ClientTrackStandIn) -> None:
    text = "x" * 190 + f"key={API_KEY} and more"
    standin.script([ScriptedResponse(400, body={"message": text})])
    await bridge.send(build_envelope(CUSTOMER, sample_body()))
    await bridge.run_once()
    [parked] = await bridge.poison()
    assert parked.failure is not None
    assert API_KEY[:5] not in parked.failure.detail.replace("x", "")


async def test_trickled_answer_times_out(storage_connection_string: str, queue_name: str) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Each byte arrives well inside the read timeout; the whole answer does not.
        await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = make_env(
        storage_connection_string,
        queue_name,
        f"http://127.0.0.1:{port}/q",
        CLIENTTRACK_CONNECT_TIMEOUT_SECONDS="0.5",
        CLIENTTRACK_READ_TIMEOUT_SECONDS="0.5",
    )
    client = ClientTrackClient(load_settings(env))
    try:
        started = time.monotonic()
        with pytest.raises(TransientDeliveryError, match="timed out"):
            await client.post_event(b"{}", event_id="e", credentials=Credentials("s", "a"))
        assert time.monotonic() - started < 3
    finally:
        await client.close()
        server.close()


async def test_missing_secret_cache_bounded() -> None:
    cache = CachedSecrets(
        AppSettingsSecretStore({}), ttl_seconds=300, missing_ttl_seconds=30, max_entries=100
    )
    for index in range(1000):
        assert await cache.get(f"onfleet-webhook-secret-made-up-{index}") is None
    assert len(cache._entries) == 100


async def test_store_reads_rate_limited() -> None:
    now = [0.0]
    cache = CachedSecrets(
        AppSettingsSecretStore({}),
        ttl_seconds=300,
        missing_ttl_seconds=30,
        max_reads_per_second=5,
        clock=lambda: now[0],
    )
    for index in range(10):
        await cache.get(f"made-up-{index}")
    with pytest.raises(SecretStoreUnavailable, match="read limit"):
        await cache.get("made-up-10")
    now[0] += 1.0
    assert await cache.get("made-up-11") is None


def test_retry_after_superscript_ignored() -> None:
    assert parse_retry_after("²") is None
    assert parse_retry_after("12") == 12


def test_envelope_deep_nesting_unreadable() -> None:
    with pytest.raises(EnvelopeError):
        decode_envelope(b"[" * 100_000 + b"]" * 100_000)


def test_envelope_lone_surrogate_unreadable() -> None:
    document = build_envelope(CUSTOMER, b"{}").to_dict()
    raw = json.dumps(document).replace('"body": "{}"', '"body": "\\ud800"').encode()
    with pytest.raises(EnvelopeError):
        decode_envelope(raw)


def test_trigger_names_compare_without_case() -> None:
    env = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "CLIENTTRACK_INTEGRATION_QUEUE_URL": "https://x.example/q",
        "FORWARDED_TRIGGERS": "TaskCompleted,SMSRecipientOptOut",
    }
    settings = load_settings(env)
    assert settings.forwards("taskCompleted")
    assert settings.forwards("SMSRecipientOptOut")
    assert not settings.forwards("taskFailed")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DEDUPE_WINDOW_HOURS", "1e11", "DEDUPE_WINDOW_HOURS is out of range"),
        ("AzureWebJobsStorage", "not a connection string", "not a Storage connection string"),
    ],
)
def test_unsafe_setting_rejected(name: str, value: str, message: str) -> None:
    env = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "CLIENTTRACK_INTEGRATION_QUEUE_URL": "https://x.example/q",
        name: value,
    }
    with pytest.raises(ConfigurationError, match=message) as raised:
        load_settings(env)
    assert "not a connection string" not in str(raised.value) or name != "AzureWebJobsStorage"


@pytest.fixture
async def bridge(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> AsyncIterator[Bridge]:
    env = make_env(storage_connection_string, queue_name, standin.url)
    opened = await open_bridge(env, standin)
    yield opened
    await close(opened)


async def test_ledger_down_waits_instead_of_delivering(
    storage_connection_string: str, queue_name: str, standin: ClientTrackStandIn
) -> None:
    from devhost.azurite import free_port

    # Queues and blobs work, but the Table endpoint refuses connections.
    closed_table = re.sub(
        r"TableEndpoint=[^;]+;",
        f"TableEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;",
        storage_connection_string,
    )
    env = make_env(closed_table, queue_name, standin.url)
    bridge = await open_bridge(env, standin)
    try:
        await bridge.send(build_envelope(CUSTOMER, sample_body()))
        assert await bridge.run_once() == [Outcome.RETRY_SCHEDULED]
        assert standin.requests == []
    finally:
        await close(bridge)
