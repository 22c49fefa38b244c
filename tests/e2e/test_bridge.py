"""The whole bridge over real sockets: devhost and Azurite as processes, a ClientTrack stand-in."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from devhost.azurite import free_port
from devhost.clienttrack import ClientTrackStandIn, FaultSettings, fingerprint
from devhost.processes import clienttrack_process
from devhost.send import SAMPLES_DIRECTORY, post_files, signing_key
from shared.envelope import decode_queue_text
from shared.signature import sign
from tests.e2e.conftest import DEMO_CUSTOMER, SETTINGS_FILE, BridgeFactory, read_settings

SETTINGS = read_settings()
SUBSCRIPTION_KEY = SETTINGS[f"clienttrack-subscription-key-{DEMO_CUSTOMER}"]
API_KEY = SETTINGS[f"clienttrack-api-key-{DEMO_CUSTOMER}"]
KEY = signing_key(SETTINGS, DEMO_CUSTOMER)
WAIT_SECONDS = 60.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.2)


def queue_texts(connection_string: str, queue_name: str) -> list[str]:
    with QueueClient.from_connection_string(connection_string, queue_name) as queue:
        try:
            return [message.content for message in queue.peek_messages(max_messages=32)]
        except ResourceNotFoundError:
            return []


def post(url: str, body: bytes) -> httpx.Response:
    return httpx.post(url, content=body, headers={"X-Onfleet-Signature": sign(body, KEY)})


@pytest.fixture
def standin() -> Iterator[ClientTrackStandIn]:
    secrets = {
        f"clienttrack-subscription-key-{DEMO_CUSTOMER}": SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{DEMO_CUSTOMER}": API_KEY,
    }
    with ClientTrackStandIn(secrets) as server:
        yield server


def test_handshake_over_http(bridges: BridgeFactory) -> None:
    bridge = bridges.start("http://127.0.0.1:9/api/integration/queue")
    check = "Zm9v<script>alert(1)</script>"

    response = httpx.get(bridge.url(), params={"check": check})
    assert response.status_code == 200
    assert response.text == check
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"

    assert httpx.get(bridge.url()).status_code == 400
    assert httpx.get(bridge.url("nobody"), params={"check": "x"}).status_code == 404

    assert bridge.process.stop() == 0
    assert "Unclosed" not in bridge.process.log_text()


def test_every_sample_delivered(bridges: BridgeFactory, tmp_path: Path) -> None:
    port = free_port()
    clienttrack = clienttrack_process(port, SETTINGS_FILE, tmp_path)
    clienttrack.start()
    try:
        bridge = bridges.start(f"http://127.0.0.1:{port}/api/integration/queue")
        files = sorted(SAMPLES_DIRECTORY.glob("*.json"))
        results = asyncio.run(post_files(bridge.url(), files, KEY, concurrency=4))
        assert {result.status for result in results} == {200}
        expected = {result.event_id: result.file for result in results}

        record = tmp_path / "clienttrack-requests.jsonl"

        def received() -> dict[str, dict[str, object]]:
            if not record.exists():
                return {}
            lines = [json.loads(line) for line in record.read_text().splitlines()]
            return {line["body"]["eventId"]: line for line in lines if line["status"] == 200}

        wait_until(lambda: set(received()) >= set(expected), "every sample at ClientTrack")
        for event_id, entry in received().items():
            path = expected[event_id]
            headers = entry["headers"]
            body = entry["body"]
            assert isinstance(headers, dict)
            assert isinstance(body, dict)
            assert headers["Ocp-Apim-Subscription-Key"] == fingerprint(SUBSCRIPTION_KEY)
            assert headers["Authorization"] == fingerprint(f"ApiKey {API_KEY}")
            assert headers["Idempotency-Key"] == event_id
            assert headers["Content-Type"] == "application/json"
            assert body["payload"] == json.loads(path.read_bytes()), path.name
            assert body["triggerName"] == json.loads(path.read_bytes())["triggerName"]
            assert body["customerId"] == DEMO_CUSTOMER
            assert body["attempt"] == 1
        assert len(received()) == len(files)
    finally:
        clienttrack.stop()


def test_500_then_200_delivered(bridges: BridgeFactory, standin: ClientTrackStandIn) -> None:
    standin.script([500, 200])
    bridge = bridges.start(standin.url)
    body = (SAMPLES_DIRECTORY / "task_completed_trigger3.json").read_bytes()
    event_id = post(bridge.url(), body).json()["eventId"]

    wait_until(lambda: len(standin.accepted_requests) >= 2, "the retried delivery")
    statuses = [request.status for request in standin.accepted_requests]
    assert statuses == [500, 200]
    assert [request.event_id for request in standin.accepted_requests] == [event_id, event_id]
    assert [request.body["attempt"] for request in standin.accepted_requests] == [1, 2]
    assert queue_texts(bridge.connection_string, bridge.queue + "-poison") == []


def test_400_parks(bridges: BridgeFactory, standin: ClientTrackStandIn) -> None:
    standin.script([400])
    bridge = bridges.start(standin.url)
    body = (SAMPLES_DIRECTORY / "task_failed_trigger4.json").read_bytes()
    event_id = post(bridge.url(), body).json()["eventId"]

    poison = bridge.queue + "-poison"
    wait_until(lambda: bool(queue_texts(bridge.connection_string, poison)), "the parked event")
    [text] = queue_texts(bridge.connection_string, poison)
    parked = decode_queue_text(text)
    assert parked.event_id == event_id
    assert parked.failure is not None
    assert parked.failure.reason == "permanent-http-status"
    assert parked.failure.status == 400
    assert parked.inline_body() == body
    assert len(standin.requests) == 1


def test_exception_moves_to_poison(
    bridges: BridgeFactory, standin: ClientTrackStandIn, app_root: Path, tmp_path: Path
) -> None:
    # A copy of the app whose processor raises on every message: what the host does then
    # is the behaviour under test, so the failure source only has to be certain.
    broken = tmp_path / "broken-app"
    shutil.copytree(app_root, broken)
    (broken / "event_processor" / "__init__.py").write_text(
        "import azure.functions as func\n\n\n"
        "async def main(msg: func.QueueMessage) -> None:\n"
        "    raise RuntimeError('processor failure injected by the test')\n",
        encoding="utf-8",
    )
    bridges.app_root = broken
    bridge = bridges.start(standin.url)
    body = (SAMPLES_DIRECTORY / "task_completed_trigger3.json").read_bytes()
    response = post(bridge.url(), body)
    assert response.status_code == 200

    poison = bridge.queue + "-poison"
    wait_until(lambda: bool(queue_texts(bridge.connection_string, poison)), "the host's move")
    [text] = queue_texts(bridge.connection_string, poison)
    moved = decode_queue_text(text)
    assert moved.event_id == response.json()["eventId"]
    assert moved.failure is None
    assert queue_texts(bridge.connection_string, bridge.queue) == []
    log = bridge.process.log_text()
    assert log.count("processor failure injected by the test") >= 5
    assert standin.requests == []


def test_sigterm_mid_batch_loses_nothing(bridges: BridgeFactory) -> None:
    secrets = {
        f"clienttrack-subscription-key-{DEMO_CUSTOMER}": SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{DEMO_CUSTOMER}": API_KEY,
    }
    faults = FaultSettings(delay_seconds=3.0)
    with ClientTrackStandIn(secrets, faults=faults) as slow:
        bridge = bridges.start(slow.url)
        sample = json.loads((SAMPLES_DIRECTORY / "task_completed_trigger3.json").read_bytes())
        event_ids = set()
        for index in range(40):
            body = json.dumps({**sample, "taskId": f"task-{index}"}).encode()
            response = post(bridge.url(), body)
            assert response.status_code == 200
            event_ids.add(response.json()["eventId"])

        # Each answer takes 3 s: once the first batch is answered, the next batch is in
        # flight a moment later, and SIGTERM a second after that lands in the middle of it.
        wait_until(lambda: len(slow.requests) >= 1, "the first batch to be answered")
        time.sleep(1.0)
        answered_at_stop = len(slow.requests)
        stopping = time.monotonic()
        assert bridge.process.stop(signal.SIGTERM) == 0
        assert time.monotonic() - stopping >= 0.5, "devhost did not wait for its invocations"
        assert len(slow.requests) > answered_at_stop, "no delivery was in flight at the stop"
        delivered_before = {r.event_id for r in slow.requests if r.status == 200}
        assert delivered_before < event_ids, "every event finished before the stop"

        bridge.start()
        wait_until(
            lambda: {r.event_id for r in slow.requests if r.status == 200} >= event_ids,
            "every event after the restart",
        )
    assert queue_texts(bridge.connection_string, bridge.queue + "-poison") == []


def test_claim_checked_sample_delivered(
    bridges: BridgeFactory, standin: ClientTrackStandIn
) -> None:
    bridge = bridges.start(standin.url)
    sample = json.loads((SAMPLES_DIRECTORY / "task_completed_trigger3.json").read_bytes())
    sample["data"]["task"]["notes"] = "Large note. " * 8000
    body = json.dumps(sample).encode()
    response = post(bridge.url(), body)
    assert response.status_code == 200
    wait_until(lambda: len(standin.accepted_requests) == 1, "the claim-checked delivery")
    assert standin.accepted_requests[0].body["payload"] == sample


def test_duplicate_post_delivered_once(bridges: BridgeFactory, standin: ClientTrackStandIn) -> None:
    bridge = bridges.start(standin.url)
    body = (SAMPLES_DIRECTORY / "worker_duty_trigger5.json").read_bytes()
    first = post(bridge.url(), body).json()["eventId"]
    wait_until(lambda: len(standin.accepted_requests) == 1, "the first delivery")
    second = post(bridge.url(), body).json()["eventId"]
    assert first == second
    with QueueClient.from_connection_string(bridge.connection_string, bridge.queue) as queue:
        wait_until(
            lambda: queue.get_queue_properties().approximate_message_count == 0,
            "the retried delivery to be processed",
        )
    time.sleep(1.0)
    assert len(standin.accepted_requests) == 1


def test_replay_after_outage_delivers(bridges: BridgeFactory, standin: ClientTrackStandIn) -> None:
    # ClientTrack rejects three events outright, an operator fixes the cause and replays
    # two of them with the CLI, as a subprocess, while devhost keeps running.
    standin.script([400, 400, 400])
    bridge = bridges.start(standin.url)
    sample = json.loads((SAMPLES_DIRECTORY / "task_completed_trigger3.json").read_bytes())
    event_ids = []
    for index in range(3):
        body = json.dumps({**sample, "taskId": f"replay-{index}"}).encode()
        event_ids.append(post(bridge.url(), body).json()["eventId"])
    poison = bridge.queue + "-poison"
    wait_until(lambda: len(queue_texts(bridge.connection_string, poison)) == 3, "3 parked events")
    parked_ids = {
        decode_queue_text(text).event_id: text
        for text in queue_texts(bridge.connection_string, poison)
    }
    assert set(parked_ids) == set(event_ids)

    with QueueClient.from_connection_string(bridge.connection_string, poison) as queue:
        message_ids = {
            decode_queue_text(m.content).event_id: m.id
            for m in queue.peek_messages(max_messages=32)
        }
    chosen = event_ids[:2]
    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.poison",
            "replay",
            "--connection-string",
            bridge.connection_string,
            "--queue",
            bridge.queue,
            "--id",
            message_ids[chosen[0]],
            "--id",
            message_ids[chosen[1]],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr

    def delivered() -> set[str | None]:
        return {r.event_id for r in standin.accepted_requests if r.status == 200}

    wait_until(lambda: delivered() >= set(chosen), "the replayed events at ClientTrack")
    remaining = [decode_queue_text(t) for t in queue_texts(bridge.connection_string, poison)]
    assert [envelope.event_id for envelope in remaining] == [event_ids[2]]
    replayed = [r for r in standin.accepted_requests if r.status == 200]
    assert all(r.body["attempt"] == 1 for r in replayed)
