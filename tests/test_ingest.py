"""The webhook_ingest function against a real Azurite queue and blob container."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import azure.functions as func
import pytest
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue.aio import QueueClient

from shared.envelope import compute_event_id
from shared.runtime import Runtime, set_runtime
from shared.secrets import AppSettingsSecretStore
from shared.settings import load_settings, reset_settings
from tests.helpers import (
    CUSTOMER,
    TEST_BODY,
    TEST_SECRET_HEX,
    TEST_SIGNATURE,
    base_env,
    drain,
    drain_envelopes,
    http_request,
    sample_body,
    signature_for,
    signed_post,
)

SECOND_SECRET_HEX = "6e65772d7365637265742d32303236"
SAMPLE = (
    Path(__file__).resolve().parent.parent / "samples" / "task_completed_trigger3.json"
).read_bytes()


@pytest.fixture
def env(storage_connection_string: str, queue_name: str) -> dict[str, str]:
    return base_env(storage_connection_string, queue_name)


@pytest.fixture
def function(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    import webhook_ingest

    yield webhook_ingest
    reset_settings()


@pytest.fixture
async def runtime(env: dict[str, str]) -> AsyncIterator[Runtime]:
    runtime = Runtime(load_settings(env), secret_store=AppSettingsSecretStore(env))
    set_runtime(runtime)
    yield runtime
    set_runtime(None)
    await runtime.close()


async def call(function: ModuleType, request: func.HttpRequest) -> func.HttpResponse:
    response: func.HttpResponse = await function.main(request)
    return response


async def test_handshake_echoes_check(function: ModuleType, runtime: Runtime) -> None:
    check = "a1B2-c3_d4 &x=%"
    response = await call(function, http_request("GET", params={"check": check}))
    assert response.status_code == 200
    assert response.get_body() == check.encode("utf-8")
    assert response.mimetype == "text/plain"
    assert response.charset == "utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_handshake_missing_check_400(function: ModuleType, runtime: Runtime) -> None:
    response = await call(function, http_request("GET"))
    assert response.status_code == 400
    assert b"check" in response.get_body()


async def test_handshake_empty_check_400(function: ModuleType, runtime: Runtime) -> None:
    response = await call(function, http_request("GET", params={"check": ""}))
    assert response.status_code == 400


async def test_handshake_long_check_400(function: ModuleType, runtime: Runtime) -> None:
    response = await call(function, http_request("GET", params={"check": "x" * 1025}))
    assert response.status_code == 400


async def test_handshake_unknown_customer_404(function: ModuleType, runtime: Runtime) -> None:
    response = await call(function, http_request("GET", "nobody", params={"check": "abc"}))
    assert response.status_code == 404
    assert b"nobody" not in response.get_body()


async def test_post_unknown_customer_404(function: ModuleType, runtime: Runtime) -> None:
    response = await call(function, signed_post(TEST_BODY, customer_id="nobody"))
    assert response.status_code == 404


async def test_public_vector_accepted(
    function: ModuleType, runtime: Runtime, storage_connection_string: str, queue_name: str
) -> None:
    request = http_request("POST", body=TEST_BODY, headers={"X-Onfleet-Signature": TEST_SIGNATURE})
    response = await call(function, request)
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"eventId": compute_event_id(CUSTOMER, TEST_BODY)}
    assert len(await drain(storage_connection_string, queue_name)) == 1


async def test_uppercase_signature_accepted(function: ModuleType, runtime: Runtime) -> None:
    request = http_request(
        "POST", body=TEST_BODY, headers={"X-Onfleet-Signature": TEST_SIGNATURE.upper()}
    )
    assert (await call(function, request)).status_code == 200


@pytest.mark.parametrize(
    ("case", "body", "signature"),
    [
        (
            "reserialized",
            json.dumps(json.loads(SAMPLE), separators=(",", ":")).encode(),
            signature_for(SAMPLE),
        ),
        ("utf8_secret", TEST_BODY, None),
        ("appended_newline", TEST_BODY + b"\n", TEST_SIGNATURE),
        ("wrong_secret", TEST_BODY, signature_for(TEST_BODY, "00ff00ff")),
        ("truncated", TEST_BODY, TEST_SIGNATURE[:-2]),
        ("not_hex", TEST_BODY, "z" * 128),
    ],
)
async def test_bad_signature_401(
    function: ModuleType,
    runtime: Runtime,
    storage_connection_string: str,
    queue_name: str,
    case: str,
    body: bytes,
    signature: str | None,
) -> None:
    if case == "utf8_secret":
        from shared.signature import sign

        signature = sign(body, TEST_SECRET_HEX.encode("utf-8"))
    if case == "reserialized":
        assert body != SAMPLE, "the re-serialized body must differ byte for byte"
    assert signature is not None
    request = http_request("POST", body=body, headers={"X-Onfleet-Signature": signature})
    response = await call(function, request)
    assert response.status_code == 401
    assert await drain(storage_connection_string, queue_name) == []


async def test_missing_signature_401(
    function: ModuleType, runtime: Runtime, storage_connection_string: str, queue_name: str
) -> None:
    response = await call(function, http_request("POST", body=TEST_BODY))
    assert response.status_code == 401
    assert b"X-Onfleet-Signature" in response.get_body()
    assert await drain(storage_connection_string, queue_name) == []


async def test_non_ascii_body_exact_bytes(
    function: ModuleType, runtime: Runtime, storage_connection_string: str, queue_name: str
) -> None:
    body = sample_body(notes="Café — 配達 🚚").replace(b'"notes"', b'"notes"  ')
    response = await call(function, signed_post(body))
    assert response.status_code == 200
    [envelope] = await drain_envelopes(storage_connection_string, queue_name)
    assert envelope.inline_body() == body


async def test_non_utf8_body_base64(
    function: ModuleType, runtime: Runtime, storage_connection_string: str, queue_name: str
) -> None:
    body = b"\xff\xfe not utf-8 \x80"
    assert (await call(function, signed_post(body))).status_code == 200
    [envelope] = await drain_envelopes(storage_connection_string, queue_name)
    assert envelope.body is None
    assert envelope.body_base64 is not None
    assert envelope.inline_body() == body


async def test_rotation_accepts_both_secrets(
    storage_connection_string: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = base_env(
        storage_connection_string,
        queue_name,
        **{f"onfleet-webhook-secret-{CUSTOMER}": f" {SECOND_SECRET_HEX},\n {TEST_SECRET_HEX} "},
    )
    runtime = Runtime(load_settings(env), secret_store=AppSettingsSecretStore(env))
    try:
        for secret in (TEST_SECRET_HEX, SECOND_SECRET_HEX):
            request = signed_post(TEST_BODY, secret)
            response = await runtime.ingest.handle(
                "POST", CUSTOMER, check=None, headers=request.headers, body=TEST_BODY
            )
            assert response.status == 200, secret
    finally:
        await runtime.close()


async def test_rotated_secret_reread_after_mismatch(
    storage_connection_string: str, queue_name: str
) -> None:
    env = base_env(storage_connection_string, queue_name, SECRET_REFRESH_MIN_SECONDS="0")
    runtime = Runtime(load_settings(env), secret_store=AppSettingsSecretStore(env))
    try:
        first = signed_post(TEST_BODY)
        assert (
            await runtime.ingest.handle(
                "POST", CUSTOMER, check=None, headers=first.headers, body=TEST_BODY
            )
        ).status == 200
        env[f"onfleet-webhook-secret-{CUSTOMER}"] = SECOND_SECRET_HEX
        rotated = signed_post(TEST_BODY, SECOND_SECRET_HEX)
        response = await runtime.ingest.handle(
            "POST", CUSTOMER, check=None, headers=rotated.headers, body=TEST_BODY
        )
        assert response.status == 200
    finally:
        await runtime.close()


async def test_reread_is_rate_limited(storage_connection_string: str, queue_name: str) -> None:
    env = base_env(storage_connection_string, queue_name, SECRET_REFRESH_MIN_SECONDS="3600")
    runtime = Runtime(load_settings(env), secret_store=AppSettingsSecretStore(env))
    try:
        first = signed_post(TEST_BODY)
        assert (
            await runtime.ingest.handle(
                "POST", CUSTOMER, check=None, headers=first.headers, body=TEST_BODY
            )
        ).status == 200
        env[f"onfleet-webhook-secret-{CUSTOMER}"] = SECOND_SECRET_HEX
        rotated = signed_post(TEST_BODY, SECOND_SECRET_HEX)
        response = await runtime.ingest.handle(
            "POST", CUSTOMER, check=None, headers=rotated.headers, body=TEST_BODY
        )
        assert response.status == 401
    finally:
        await runtime.close()


async def test_oversized_body_413(storage_connection_string: str, queue_name: str) -> None:
    env = base_env(storage_connection_string, queue_name, MAX_WEBHOOK_BODY_BYTES="1000")
    runtime = Runtime(load_settings(env), secret_store=AppSettingsSecretStore(env))
    try:
        for size, expected in ((1000, 200), (1001, 413)):
            body = b"x" * size
            request = signed_post(body)
            response = await runtime.ingest.handle(
                "POST", CUSTOMER, check=None, headers=request.headers, body=body
            )
            assert response.status == expected, size
    finally:
        await runtime.close()


async def test_default_limit_one_mebibyte(function: ModuleType, runtime: Runtime) -> None:
    body = b"x" * (1024 * 1024 + 1)
    assert (await call(function, signed_post(body))).status_code == 413


@pytest.mark.parametrize(
    "customer_id", ["../etc", "a/b", "a b", "a%2Fb", "ünïcode", "x" * 65, "", "a.b", "a_b"]
)
async def test_malformed_customer_id_404(
    function: ModuleType, runtime: Runtime, customer_id: str
) -> None:
    for request in (
        http_request("GET", customer_id, params={"check": "abc"}),
        signed_post(TEST_BODY, customer_id=customer_id),
    ):
        response = await call(function, request)
        assert response.status_code == 404


async def test_64_character_customer_id_accepted(
    storage_connection_string: str, queue_name: str
) -> None:
    customer_id = "c" * 64
    env = base_env(
        storage_connection_string,
        queue_name,
        **{f"onfleet-webhook-secret-{customer_id}": TEST_SECRET_HEX},
    )
    runtime = Runtime(load_settings(env), secret_store=AppSettingsSecretStore(env))
    try:
        request = signed_post(TEST_BODY, customer_id=customer_id)
        response = await runtime.ingest.handle(
            "POST", customer_id, check=None, headers=request.headers, body=TEST_BODY
        )
        assert response.status == 200
    finally:
        await runtime.close()


async def test_queue_down_503(queue_name: str) -> None:
    from devhost.azurite import AzuritePorts, connection_string, free_port

    closed = connection_string(AzuritePorts(free_port(), free_port(), free_port()))
    env = base_env(closed, queue_name, INGEST_TIMEOUT_SECONDS="5")
    runtime = Runtime(load_settings(env), secret_store=AppSettingsSecretStore(env))
    try:
        request = signed_post(TEST_BODY)
        response = await runtime.ingest.handle(
            "POST", CUSTOMER, check=None, headers=request.headers, body=TEST_BODY
        )
        assert response.status == 503
        assert response.headers.get("Retry-After") == "10"
    finally:
        await runtime.close()


async def test_envelope_in_queue(
    function: ModuleType, runtime: Runtime, storage_connection_string: str, queue_name: str
) -> None:
    body = sample_body()
    response = await call(function, signed_post(body))
    event_id = json.loads(response.get_body())["eventId"]
    [envelope] = await drain_envelopes(storage_connection_string, queue_name)
    assert envelope.event_id == event_id == compute_event_id(CUSTOMER, body)
    assert envelope.customer_id == CUSTOMER
    assert envelope.trigger_id == 3
    assert envelope.trigger_name == "taskCompleted"
    assert envelope.task_id == "tF4~hJk6Lm8Np1Qr3St5Uv7W"
    assert envelope.worker_id == "wK3*pLm8Nq2Rs5Tu7Vx9Yz1A"
    assert envelope.onfleet_time == 1767270905312
    assert envelope.attempt == 0
    assert envelope.body == body.decode()
    assert envelope.received_at.endswith("Z")
    assert len(envelope.received_at) == len("2026-01-01T00:00:00.000Z")


async def test_not_json_body_still_enqueued(
    function: ModuleType, runtime: Runtime, storage_connection_string: str, queue_name: str
) -> None:
    response = await call(function, signed_post(b"not json at all"))
    assert response.status_code == 200
    [envelope] = await drain_envelopes(storage_connection_string, queue_name)
    assert envelope.trigger_name is None
    assert envelope.body == "not json at all"


async def test_large_body_claim_checked(
    function: ModuleType,
    runtime: Runtime,
    storage_connection_string: str,
    queue_name: str,
    env: dict[str, str],
) -> None:
    filler = "é" * (30 * 1024)
    body = sample_body(notes=filler)
    assert len(body) > 60 * 1024
    response = await call(function, signed_post(body))
    assert response.status_code == 200

    [text] = await drain(storage_connection_string, queue_name)
    assert len(text) < 64 * 1024
    [envelope] = [__import__("shared.envelope").envelope.decode_queue_text(text)]
    assert envelope.body_blob == f"{CUSTOMER}/{envelope.event_id}"
    async with ContainerClient.from_connection_string(
        storage_connection_string, env["CLAIM_CHECK_CONTAINER"]
    ) as container:
        stored = await (await container.download_blob(envelope.body_blob)).readall()
    assert stored == body


async def test_claim_checked_read_back(runtime: Runtime, env: dict[str, str]) -> None:
    body = sample_body(notes="z" * (60 * 1024))
    request = signed_post(body)
    response = await runtime.ingest.handle(
        "POST", CUSTOMER, check=None, headers=request.headers, body=body
    )
    assert response.status == 200
    texts = await drain(env["AzureWebJobsStorage"], env["ONFLEET_EVENTS_QUEUE"])
    from shared.envelope import decode_queue_text

    envelope = decode_queue_text(texts[0])
    assert envelope.body_blob is not None
    assert await runtime.storage.read_payload(envelope.body_blob) == body


async def test_unforwarded_trigger_skipped(storage_connection_string: str, queue_name: str) -> None:
    env = base_env(storage_connection_string, queue_name, FORWARDED_TRIGGERS="taskCompleted")
    runtime = Runtime(load_settings(env), secret_store=AppSettingsSecretStore(env))
    try:
        body = sample_body("taskStarted")
        request = signed_post(body)
        response = await runtime.ingest.handle(
            "POST", CUSTOMER, check=None, headers=request.headers, body=body
        )
        assert response.status == 200
        assert json.loads(response.body)["forwarded"] is False
        assert await drain(storage_connection_string, queue_name) == []
    finally:
        await runtime.close()


async def test_same_delivery_same_event_id(function: ModuleType, runtime: Runtime) -> None:
    body = sample_body()
    first = await call(function, signed_post(body))
    second = await call(function, signed_post(body))
    assert json.loads(first.get_body()) == json.loads(second.get_body())


async def test_queue_created_when_missing(
    function: ModuleType, runtime: Runtime, storage_connection_string: str, queue_name: str
) -> None:
    async with QueueClient.from_connection_string(storage_connection_string, queue_name) as queue:
        assert (await call(function, signed_post(TEST_BODY))).status_code == 200
        properties = await queue.get_queue_properties()
    assert properties.approximate_message_count == 1


async def test_log_line_carries_ids(
    function: ModuleType, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.ingest")
    body = sample_body()
    response = await call(function, signed_post(body))
    event_id = json.loads(response.get_body())["eventId"]
    [line] = [r.getMessage() for r in caplog.records if r.name == "shared.ingest"]
    assert line == (
        f"Webhook customer={CUSTOMER} event={event_id} trigger=taskCompleted status=200 "
        "outcome=enqueued"
    )
    assert TEST_SECRET_HEX not in caplog.text
    assert body.decode() not in caplog.text


async def test_unknown_customer_log_names_secret(
    function: ModuleType, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.ingest")
    response = await call(function, http_request("GET", "nobody", params={"check": "x"}))
    assert response.status_code == 404
    assert "onfleet-webhook-secret-nobody" in caplog.text
    assert b"onfleet-webhook-secret" not in response.get_body()
