"""`status`: queue depths, the oldest poison message, and the exit code for alerting."""

from __future__ import annotations

import json

from azure.storage.queue import QueueClient

from tests.ops.support import Cli, parked_text


def test_status_empty_poison_exits_zero(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    main_queue.send_message("pending")

    result = cli("status")

    assert result.code == 0
    assert result.stdout == (
        f"{cli.queue_name}: about 1 messages\n{cli.queue_name}-poison: empty\n"
    )


def test_status_parked_exits_one(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    for _ in range(3):
        poison_queue.send_message(parked_text("acme-foodbank"))

    result = cli("status")

    assert result.code == 1
    poison_line = result.stdout.splitlines()[1]
    assert poison_line.startswith(f"{cli.queue_name}-poison: about 3 messages, oldest inserted ")
    assert poison_line.endswith(" ago)")


def test_status_missing_poison_queue(cli: Cli, main_queue: QueueClient) -> None:
    result = cli("status")

    assert result.code == 0
    assert f"{cli.queue_name}-poison: does not exist" in result.stdout


def test_status_missing_main_queue(cli: Cli) -> None:
    result = cli("status")

    assert result.code == 2
    assert result.stderr.count("\n") == 1
    assert f"Queue {cli.queue_name!r} was not found" in result.stderr


def test_status_json(cli: Cli, main_queue: QueueClient, poison_queue: QueueClient) -> None:
    poison_queue.send_message(parked_text("acme-foodbank"))

    result = cli("status", "--json")

    document = json.loads(result.stdout)
    assert result.code == 1
    assert document["queue"] == cli.queue_name
    assert document["depth"] == 0
    assert document["poisonQueue"] == f"{cli.queue_name}-poison"
    assert document["poisonQueueExists"] is True
    assert document["poisonDepth"] == 1
    assert document["oldestPoisonAgeSeconds"] >= 0
    assert document["oldestPoisonInsertedOn"].endswith("Z")
