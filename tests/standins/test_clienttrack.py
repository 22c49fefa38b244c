"""The ClientTrack stand-in checks, records, scripts and fails requests over real sockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from devhost.azurite import free_port
from devhost.clienttrack import (
    INVALID_SUBSCRIPTION_KEY_MESSAGE,
    MISSING_SUBSCRIPTION_KEY_MESSAGE,
    ClientTrackStandIn,
    FaultSettings,
    ScriptedResponse,
    fingerprint,
)
from tests.standins.support import (
    API_KEY,
    CUSTOMER,
    PROJECT_ROOT,
    SUBSCRIPTION_KEY,
    clienttrack_secrets,
    event_headers,
    make_event,
    wait_for,
)


@pytest.fixture
async def clienttrack(tmp_path: Path) -> AsyncIterator[ClientTrackStandIn]:
    async with ClientTrackStandIn(
        clienttrack_secrets(), record_path=tmp_path / "requests.jsonl"
    ) as stand_in:
        yield stand_in


async def post(
    stand_in: ClientTrackStandIn,
    event: Any,
    headers: dict[str, str] | None = None,
    *,
    client: httpx.AsyncClient | None = None,
) -> httpx.Response:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    sent_headers = event_headers(event) if headers is None else headers
    if client is not None:
        return await client.post(stand_in.url, content=body, headers=sent_headers)
    async with httpx.AsyncClient(timeout=10) as own_client:
        return await own_client.post(stand_in.url, content=body, headers=sent_headers)


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_well_formed_event_accepted(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()

    response = await post(clienttrack, event)

    assert response.status_code == 200
    assert response.json()["eventId"] == event["eventId"]
    assert len(clienttrack.requests) == 1
    received = clienttrack.requests[0]
    assert received.accepted
    assert received.status == 200
    assert received.event_id == event["eventId"]
    assert received.trigger_name == "taskCompleted"
    assert received.body == event


async def test_accepted_event_recorded_as_json_line(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()

    await post(clienttrack, event)

    assert clienttrack.record_path is not None
    records = read_records(clienttrack.record_path)
    assert len(records) == 1
    record = records[0]
    assert record["status"] == 200
    assert record["body"] == event
    assert record["headers"]["Idempotency-Key"] == event["eventId"]
    assert record["headers"]["Ocp-Apim-Subscription-Key"] == fingerprint(SUBSCRIPTION_KEY)
    assert record["headers"]["Authorization"] == fingerprint(f"ApiKey {API_KEY}")
    assert record["time"].endswith("Z")


async def test_record_never_holds_raw_keys(clienttrack: ClientTrackStandIn) -> None:
    await post(clienttrack, make_event())

    assert clienttrack.record_path is not None
    text = clienttrack.record_path.read_text(encoding="utf-8")
    assert SUBSCRIPTION_KEY not in text
    assert API_KEY not in text
    assert SUBSCRIPTION_KEY not in repr(clienttrack.requests)
    assert API_KEY not in repr(clienttrack.requests)


async def test_missing_subscription_key_401(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()

    response = await post(clienttrack, event, event_headers(event, subscription_key=None))

    assert response.status_code == 401
    assert response.json() == {"statusCode": 401, "message": MISSING_SUBSCRIPTION_KEY_MESSAGE}


@pytest.mark.parametrize(
    ("customer", "subscription_key"),
    [(CUSTOMER, "wrong-key"), (CUSTOMER, "other-subscription-key"), ("unknown", SUBSCRIPTION_KEY)],
)
async def test_invalid_subscription_key_401(
    clienttrack: ClientTrackStandIn, customer: str, subscription_key: str
) -> None:
    event = make_event(customer)

    response = await post(
        clienttrack, event, event_headers(event, subscription_key=subscription_key)
    )

    assert response.status_code == 401
    assert response.json()["message"] == INVALID_SUBSCRIPTION_KEY_MESSAGE


@pytest.mark.parametrize("authorization", [None, "ApiKey wrong-key", f"Bearer {API_KEY}", "ApiKey"])
async def test_invalid_api_key_403(
    clienttrack: ClientTrackStandIn, authorization: str | None
) -> None:
    event = make_event()
    headers = event_headers(event, api_key=None)
    if authorization is not None:
        headers["Authorization"] = authorization

    response = await post(clienttrack, event, headers)

    assert response.status_code == 403
    assert response.json()["statusCode"] == 403


async def test_api_key_stored_without_prefix(clienttrack: ClientTrackStandIn) -> None:
    event = make_event("other")
    headers = event_headers(
        event, subscription_key="other-subscription-key", api_key="other-api-key"
    )

    response = await post(clienttrack, event, headers)

    assert response.status_code == 200


async def test_rejected_request_not_recorded(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()

    await post(clienttrack, event, event_headers(event, api_key="wrong"))

    assert clienttrack.record_path is not None
    assert clienttrack.record_path.read_text(encoding="utf-8") == ""
    assert clienttrack.requests[0].accepted is False
    assert clienttrack.requests[0].status == 403


def _without(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda event: event.pop(name)


def _setting(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda event: event.__setitem__(name, value)


@pytest.mark.parametrize(
    ("change", "reason_fragment"),
    [
        (_without("source"), "source"),
        (_without("payload"), "payload"),
        (_without("triggerName"), "triggerName"),
        (_setting("source", "zapier"), "source"),
        (_setting("triggerId", "3"), "triggerId"),
        (_setting("triggerId", True), "triggerId"),
        (_setting("taskId", 7), "taskId"),
        (_setting("occurredAt", "yesterday"), "occurredAt"),
        (_setting("receivedAt", "2026-01-01T12:35:06"), "receivedAt"),
        (_setting("receivedAt", None), "receivedAt"),
        (_setting("attempt", 0), "attempt"),
        (_setting("attempt", 1.5), "attempt"),
        (_setting("payload", "{}"), "payload"),
    ],
)
async def test_malformed_event_400(
    clienttrack: ClientTrackStandIn,
    change: Callable[[dict[str, Any]], None],
    reason_fragment: str,
) -> None:
    event = make_event()
    headers = event_headers(event)
    change(event)

    response = await post(clienttrack, event, headers)

    assert response.status_code == 400
    assert reason_fragment in response.json()["message"]
    assert clienttrack.requests[0].reason == response.json()["message"]


async def test_null_trigger_fields_accepted(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()
    for name in ("triggerId", "triggerName", "taskId", "workerId", "occurredAt"):
        event[name] = None

    response = await post(clienttrack, event, event_headers(event))

    assert response.status_code == 200


async def test_body_not_json_400(clienttrack: ClientTrackStandIn) -> None:
    headers = event_headers(make_event())

    response = await post(clienttrack, b"{not json", headers)

    assert response.status_code == 400
    assert "not valid JSON" in response.json()["message"]


async def test_event_id_not_sha256_400(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()
    event["eventId"] = "ABC"

    response = await post(clienttrack, event, event_headers(event))

    assert response.status_code == 400
    assert "eventId" in response.json()["message"]


async def test_idempotency_key_mismatch_400(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()
    headers = event_headers(event)
    headers["Idempotency-Key"] = "0" * 64

    response = await post(clienttrack, event, headers)

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["message"]


async def test_idempotency_key_missing_400(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()
    headers = event_headers(event)
    del headers["Idempotency-Key"]

    response = await post(clienttrack, event, headers)

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["message"]


async def test_wrong_content_type_415(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()
    headers = event_headers(event)
    headers["Content-Type"] = "text/plain"

    response = await post(clienttrack, event, headers)

    assert response.status_code == 415


async def test_secret_change_applies_at_once(tmp_path: Path) -> None:
    secrets = clienttrack_secrets()
    event = make_event()
    async with ClientTrackStandIn(secrets) as stand_in:
        secrets[f"clienttrack-api-key-{CUSTOMER}"] = "rotated-key"

        old = await post(stand_in, event)
        new = await post(stand_in, event, event_headers(event, api_key="rotated-key"))

    assert old.status_code == 403
    assert new.status_code == 200


async def test_scripted_statuses_in_order(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()
    clienttrack.script([500, ScriptedResponse(429, {"Retry-After": "7"}), 202])

    async with httpx.AsyncClient(timeout=10) as client:
        responses = [await post(clienttrack, event, client=client) for _ in range(4)]

    assert [response.status_code for response in responses] == [500, 429, 202, 200]
    assert responses[1].headers["Retry-After"] == "7"
    assert "Retry-After" not in responses[0].headers
    assert clienttrack.scripted_remaining == 0


async def test_scripted_responses_skip_rejected(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()
    clienttrack.script([503])

    rejected = await post(clienttrack, event, event_headers(event, api_key="wrong"))
    scripted = await post(clienttrack, event)

    assert rejected.status_code == 403
    assert scripted.status_code == 503


async def test_scripted_body_returned(clienttrack: ClientTrackStandIn) -> None:
    clienttrack.script([ScriptedResponse(400, body={"error": "database offline"})])

    response = await post(clienttrack, make_event())

    assert response.status_code == 400
    assert response.json() == {"error": "database offline"}


async def test_counters_per_event_id(clienttrack: ClientTrackStandIn) -> None:
    first, second = make_event(), make_event(body=b'{"triggerName": "taskFailed"}')
    clienttrack.script([500])

    async with httpx.AsyncClient(timeout=10) as client:
        for event in (first, first, first, second):
            await post(clienttrack, event, client=client)

    assert clienttrack.attempts_by_event_id[first["eventId"]] == 3
    assert clienttrack.deliveries_by_event_id[first["eventId"]] == 2
    assert clienttrack.attempts_by_event_id[second["eventId"]] == 1


async def test_duplicate_delivery_flagged(clienttrack: ClientTrackStandIn) -> None:
    event = make_event()

    first = await post(clienttrack, event)
    second = await post(clienttrack, event)

    assert first.json()["duplicate"] is False
    assert second.json()["duplicate"] is True


async def test_scripted_delay(clienttrack: ClientTrackStandIn) -> None:
    clienttrack.script([ScriptedResponse(200, delay_seconds=0.3)])

    started = time.perf_counter()
    response = await post(clienttrack, make_event())
    elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed >= 0.3


async def test_configured_delay() -> None:
    faults = FaultSettings(delay_seconds=0.25)
    async with ClientTrackStandIn(clienttrack_secrets(), faults=faults) as stand_in:
        started = time.perf_counter()
        response = await post(stand_in, make_event())
        elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed >= 0.25


async def test_delay_exceeds_client_timeout(clienttrack: ClientTrackStandIn) -> None:
    clienttrack.script([ScriptedResponse(200, delay_seconds=1.0)])
    event = make_event()

    async with httpx.AsyncClient(timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await post(clienttrack, event, client=client)


async def test_scripted_drop_connection(clienttrack: ClientTrackStandIn) -> None:
    clienttrack.script([ScriptedResponse(drop_connection=True)])
    event = make_event()

    with pytest.raises(httpx.RemoteProtocolError):
        await post(clienttrack, event)
    after = await post(clienttrack, event)

    assert after.status_code == 200
    assert clienttrack.requests[0].status is None
    assert clienttrack.dropped == 1
    assert clienttrack.record_path is not None
    assert read_records(clienttrack.record_path)[0]["dropped"] is True


async def test_drop_connection_rate() -> None:
    faults = FaultSettings(drop_connection_rate=1.0)
    async with ClientTrackStandIn(clienttrack_secrets(), faults=faults) as stand_in:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(stand_in, make_event())

    assert stand_in.dropped == 1


async def test_fail_rate_cycles_statuses() -> None:
    faults = FaultSettings(fail_rate=1.0, statuses=(503, 429, 500), retry_after_seconds=2)
    async with (
        ClientTrackStandIn(clienttrack_secrets(), faults=faults) as stand_in,
        httpx.AsyncClient(timeout=10) as client,
    ):
        responses = [await post(stand_in, make_event(), client=client) for _ in range(4)]

    assert [response.status_code for response in responses] == [503, 429, 500, 503]
    assert responses[0].headers["Retry-After"] == "2"
    assert responses[1].headers["Retry-After"] == "2"
    assert "Retry-After" not in responses[2].headers


async def statuses_with_seed(seed: int, count: int) -> list[int]:
    faults = FaultSettings(fail_rate=0.5, seed=seed)
    async with (
        ClientTrackStandIn(clienttrack_secrets(), faults=faults) as stand_in,
        httpx.AsyncClient(timeout=10) as client,
    ):
        return [
            (await post(stand_in, make_event(), client=client)).status_code for _ in range(count)
        ]


async def test_seed_reproduces_failures() -> None:
    first = await statuses_with_seed(7, 30)
    second = await statuses_with_seed(7, 30)

    assert first == second
    assert set(first) == {200, 500}


async def test_stats_endpoint_counts(clienttrack: ClientTrackStandIn) -> None:
    first, second = make_event(), make_event(body=b'{"triggerName": "taskFailed"}')
    clienttrack.script([429])

    async with httpx.AsyncClient(timeout=10) as client:
        for event in (first, first, first, second):
            await post(clienttrack, event, client=client)
        await post(clienttrack, first, event_headers(first, subscription_key=None), client=client)
        stats = (await client.get(clienttrack.stats_url)).json()

    assert stats == {
        "received": 5,
        "accepted": 4,
        "delivered": 3,
        "dropped": 0,
        "byStatus": {"200": 3, "401": 1, "429": 1},
        "distinctEventIds": 2,
        "duplicates": 1,
    }


async def test_requests_not_kept_when_disabled() -> None:
    async with ClientTrackStandIn(clienttrack_secrets(), keep_requests=False) as stand_in:
        await post(stand_in, make_event())

    assert stand_in.requests == []
    assert stand_in.stats()["received"] == 1
    assert stand_in.stats()["delivered"] == 1


def test_thread_mode_serves_sync_clients(tmp_path: Path) -> None:
    event = make_event()

    with ClientTrackStandIn(clienttrack_secrets()) as stand_in:
        stand_in.script([500])
        statuses = [
            httpx.post(stand_in.url, content=json.dumps(event), headers=event_headers(event))
            for _ in range(2)
        ]

    assert [response.status_code for response in statuses] == [500, 200]
    assert len(stand_in.requests) == 2


def test_fault_settings_reject_bad_rate() -> None:
    with pytest.raises(ValueError, match="fail_rate"):
        FaultSettings(fail_rate=1.5)


def test_cli_serves_and_prints_events(tmp_path: Path) -> None:
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": clienttrack_secrets()}), encoding="utf-8")
    record, output = tmp_path / "requests.jsonl", tmp_path / "stdout.txt"
    port = free_port()
    command = [
        sys.executable, "-m", "devhost.clienttrack", "--port", str(port),
        "--settings", str(settings), "--record", str(record), "--statuses", "503",
    ]  # fmt: skip
    environment = {key: value for key, value in os.environ.items() if "clienttrack" not in key}
    event = make_event()

    with output.open("w") as stdout:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=stdout, stderr=subprocess.STDOUT, env=environment
        )
    try:
        wait_for(lambda: "listening on" in output.read_text())
        url = f"http://127.0.0.1:{port}/api/integration/queue"
        response = httpx.post(url, content=json.dumps(event), headers=event_headers(event))
        wait_for(lambda: event["eventId"] in output.read_text())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)

    printed = output.read_text()
    assert response.status_code == 200
    assert f"{event['eventId']} {CUSTOMER} taskCompleted 200" in printed
    assert len(read_records(record)) == 1
    assert SUBSCRIPTION_KEY not in printed
    assert "ClientTrack stand-in stopped" in printed
    assert process.returncode == 0
