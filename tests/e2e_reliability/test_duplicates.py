"""Duplicate suppression: every kind of repeat reaches ClientTrack with one 2xx.

A repeat carries the same event id: Onfleet posting the same body again, the queue handing
out a message twice, an operator replaying an event that was already delivered. The dedupe
ledger in Table storage must turn each of them into exactly one ClientTrack 2xx. The tests
run devhost as a process against Azurite and a ClientTrack stand-in. The last test drives
the processor in-process, where two copies can start at the same instant.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator

import pytest

from devhost.clienttrack import ClientTrackStandIn, ScriptedResponse
from ops.poison import main as ops_main
from shared.envelope import Failure, build_envelope, utc_timestamp
from shared.processor import Outcome
from shared.runtime import Runtime
from shared.secrets import AppSettingsSecretStore
from shared.settings import load_settings
from tests.e2e_reliability.support import (
    CUSTOMER,
    ReliabilityBridge,
    bridge_settings,
    clienttrack_secrets,
    sample_body,
    wait_until,
)

# Long enough that a second copy is taken from the queue (devhost polls at least every
# second) while the first copy's ClientTrack call is still open.
SLOW_ANSWER_SECONDS = 2.5


def slow_then_normal(standin: ClientTrackStandIn) -> None:
    standin.script([ScriptedResponse(200, delay_seconds=SLOW_ANSWER_SECONDS)])


def test_onfleet_retry_delivered_once(bridge: ReliabilityBridge) -> None:
    slow_then_normal(bridge.standin)
    body = sample_body("onfleet-retry")

    first = bridge.post_signed(body)
    second = bridge.post_signed(body)

    assert first.status_code == 200
    assert second.status_code == 200
    event_id = first.json()["eventId"]
    assert second.json()["eventId"] == event_id
    wait_until(lambda: len(bridge.outcomes(event_id)) == 2, "both copies to be processed")
    assert sorted(bridge.outcomes(event_id)) == ["delivered", "duplicate-skipped"]
    assert bridge.deliveries(event_id) == 1


def test_queue_redelivery_same_batch_once(bridge: ReliabilityBridge) -> None:
    slow_then_normal(bridge.standin)
    envelope = build_envelope(CUSTOMER, sample_body("queue-twice"))

    bridge.send_raw(envelope.to_queue_text())
    bridge.send_raw(envelope.to_queue_text())

    event_id = envelope.event_id
    wait_until(lambda: len(bridge.outcomes(event_id)) == 2, "both copies to be processed")
    assert sorted(bridge.outcomes(event_id)) == ["delivered", "duplicate-skipped"]
    assert bridge.deliveries(event_id) == 1


def test_redelivery_after_completion_lost(bridge: ReliabilityBridge) -> None:
    # A message whose invocation delivered the event but never deleted the message (the
    # process died first) reappears with the same text once its lease runs out. Sending the
    # same text again after the delivery reproduces that without waiting out the lease.
    envelope = build_envelope(CUSTOMER, sample_body("lease-expired"))
    bridge.send_raw(envelope.to_queue_text())
    event_id = envelope.event_id
    wait_until(lambda: bridge.outcomes(event_id) == ["delivered"], "the first delivery")
    assert bridge.ledger_marked(event_id)

    bridge.send_raw(envelope.to_queue_text())

    wait_until(lambda: len(bridge.outcomes(event_id)) == 2, "the redelivered copy")
    assert bridge.outcomes(event_id) == ["delivered", "duplicate-skipped"]
    assert bridge.deliveries(event_id) == 1


def test_replay_of_delivered_event_once(bridge: ReliabilityBridge) -> None:
    envelope = build_envelope(CUSTOMER, sample_body("replayed"))
    bridge.send_raw(envelope.to_queue_text())
    event_id = envelope.event_id
    wait_until(lambda: bridge.outcomes(event_id) == ["delivered"], "the first delivery")

    # An operator replays the event from the poison queue although it was delivered, for
    # example after a replay that was interrupted between its copy and its delete.
    failure = Failure(
        reason="retries-exhausted", status=503, detail="test", at=utc_timestamp(), attempts=3
    )
    bridge.send_raw(envelope.with_failure(failure).to_queue_text(), queue=bridge.poison_queue)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = ops_main(
        ["replay", "--connection-string", bridge.connection_string, "--queue", bridge.queue],
        stdout=stdout,
        stderr=stderr,
    )

    assert code == 0, stderr.getvalue()
    assert "moved 1, skipped 0, failed 0" in stdout.getvalue()
    wait_until(lambda: len(bridge.outcomes(event_id)) == 2, "the replayed copy")
    assert bridge.outcomes(event_id) == ["delivered", "duplicate-skipped"]
    assert bridge.deliveries(event_id) == 1
    assert bridge.queue_texts(bridge.poison_queue) == []


@pytest.fixture
async def async_standin() -> AsyncIterator[ClientTrackStandIn]:
    async with ClientTrackStandIn(clienttrack_secrets()) as server:
        yield server


async def test_concurrent_copies_one_worker_once(
    storage_connection_string: str, async_standin: ClientTrackStandIn
) -> None:
    settings = bridge_settings(storage_connection_string, async_standin.url)
    runtime = Runtime(load_settings(settings), secret_store=AppSettingsSecretStore(settings))
    async_standin.script([ScriptedResponse(200, delay_seconds=0.5)])
    message = base64.b64decode(build_envelope(CUSTOMER, sample_body("concurrent")).to_queue_text())
    try:
        outcomes = await asyncio.gather(
            runtime.processor.process(message), runtime.processor.process(message)
        )
    finally:
        await runtime.close()

    assert sorted(outcome.value for outcome in outcomes) == [
        Outcome.DELIVERED.value,
        Outcome.DUPLICATE.value,
    ]
    assert len(async_standin.accepted_requests) == 1
