"""`show`: envelope, failure record and body, inline or from the claim-check container."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient

from shared.envelope import (
    Failure,
    build_envelope,
    claim_check_blob_name,
    claim_checked,
    utc_timestamp,
)
from tests.ops.support import Cli, host_moved_text, onfleet_body, parked_text, receive_all


@pytest.fixture
def container(storage_connection_string: str, queue_name: str) -> Iterator[ContainerClient]:
    client = ContainerClient.from_connection_string(
        storage_connection_string, f"{queue_name}-payloads"
    )
    client.create_container()
    yield client
    client.delete_container()


def test_show_parked_inline_body(cli: Cli, poison_queue: QueueClient) -> None:
    message = poison_queue.send_message(
        parked_text("acme-foodbank", "taskFailed", "permanent-http-status", 422, task="t-3")
    )

    result = cli("show", message.id)

    assert result.code == 0, result.stderr
    text = result.stdout
    assert f"Message   {message.id}" in text
    assert "Kind      parked" in text
    assert "  reason    permanent-http-status" in text
    assert "  status    422" in text
    assert "  detail    ClientTrack said no" in text
    assert '"customerId": "acme-foodbank"' in text
    # The body is printed indented, one field per line.
    assert '\n  "taskId": "t-3",\n' in text
    assert "Body (json, inline," in text


def test_show_json_output(cli: Cli, poison_queue: QueueClient) -> None:
    message = poison_queue.send_message(parked_text("acme-foodbank", task="t-4"))

    result = cli("show", message.id, "--json")

    document = json.loads(result.stdout)
    assert document["message"]["id"] == message.id
    assert document["message"]["reason"] == "permanent-http-status"
    assert document["envelope"]["failure"]["status"] == 400
    assert document["bodyEncoding"] == "json"
    assert document["body"]["taskId"] == "t-4"


def test_show_claim_checked_body(
    cli: Cli, poison_queue: QueueClient, container: ContainerClient
) -> None:
    body = onfleet_body("taskCompleted", "t-big", notes="x" * 100)
    inline = build_envelope("acme-foodbank", body)
    blob_name = claim_check_blob_name("acme-foodbank", inline.event_id)
    container.upload_blob(blob_name, body)
    envelope = claim_checked(inline, blob_name)
    message = poison_queue.send_message(envelope.to_queue_text())

    result = cli("show", message.id, "--container", container.container_name)

    assert result.code == 0, result.stderr
    assert f"blob {blob_name} in container {container.container_name}" in result.stdout
    assert '\n  "taskId": "t-big",\n' in result.stdout
    assert "Kind      host-moved" in result.stdout


def test_show_missing_blob(cli: Cli, poison_queue: QueueClient, container: ContainerClient) -> None:
    inline = build_envelope("acme-foodbank", b"{}")
    blob_name = claim_check_blob_name("acme-foodbank", inline.event_id)
    envelope = claim_checked(inline, blob_name)
    failure = Failure("payload-missing", None, "blob gone", utc_timestamp(), 1)
    message = poison_queue.send_message(envelope.with_failure(failure).to_queue_text())

    result = cli("show", message.id, "--container", container.container_name)

    assert result.code == 0
    assert f"Body (blob {blob_name} in container {container.container_name} (not found))" in (
        result.stdout
    )


def test_show_binary_body_as_base64(cli: Cli, poison_queue: QueueClient) -> None:
    raw = b"\xff\xfe not utf-8"
    message = poison_queue.send_message(build_envelope("acme-foodbank", raw).to_queue_text())

    result = cli("show", message.id)

    assert f"Body (base64, inline, {len(raw)} bytes)" in result.stdout
    assert base64.b64encode(raw).decode() in result.stdout


def test_show_text_body(cli: Cli, poison_queue: QueueClient) -> None:
    message = poison_queue.send_message(
        build_envelope("acme-foodbank", b"not json at all").to_queue_text()
    )

    result = cli("show", message.id)

    assert "Body (text, inline, 15 bytes)\nnot json at all\n" in result.stdout


def test_show_unreadable(cli: Cli, poison_queue: QueueClient) -> None:
    text = base64.b64encode(b'{"schemaVersion": 9}').decode()
    message = poison_queue.send_message(text)

    result = cli("show", message.id)

    assert result.code == 0
    assert "Kind      unreadable" in result.stdout
    assert "schemaVersion 9 is not supported" in result.stdout
    assert f"Text\n{text}\n" in result.stdout
    assert '"schemaVersion": 9' in result.stdout


def test_show_host_moved_failure_section(cli: Cli, poison_queue: QueueClient) -> None:
    message = poison_queue.send_message(host_moved_text("acme-foodbank"))

    result = cli("show", message.id)

    assert "Reason    host-retries-exhausted" in result.stdout
    assert "the Functions host moved this message" in result.stdout


def test_show_finds_message_past_peek(cli: Cli, poison_queue: QueueClient) -> None:
    ids = [poison_queue.send_message(parked_text("acme-foodbank")).id for _ in range(40)]

    result = cli("show", ids[-1])

    assert result.code == 0
    assert f"Message   {ids[-1]}" in result.stdout
    assert len(receive_all(poison_queue)) == 40


def test_show_unknown_id(cli: Cli, poison_queue: QueueClient) -> None:
    poison_queue.send_message(parked_text("acme-foodbank"))

    result = cli("show", "00000000-0000-0000-0000-000000000000")

    assert result.code == 2
    assert result.stderr == (
        "error: Message '00000000-0000-0000-0000-000000000000' was not found in queue "
        f"{cli.queue_name}-poison; `list` shows the ids of its messages.\n"
    )
    assert len(receive_all(poison_queue)) == 1
