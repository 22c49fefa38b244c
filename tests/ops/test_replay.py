"""`replay`: dry runs, exact selection, re-encoding, failures and interruption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from shared.envelope import decode_queue_text
from tests.ops.support import Cli, host_moved_text, parked_text, receive_all

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def park(poison_queue: QueueClient, customer: str, count: int, **fields: Any) -> dict[str, str]:
    """Park `count` envelopes and return their texts by message id."""
    texts = {}
    for index in range(count):
        text = parked_text(customer, task=f"{customer}-{index}", **fields)
        texts[poison_queue.send_message(text, time_to_live=-1).id] = text
    return texts


def event_ids(texts: list[str]) -> Counter[str]:
    return Counter(decode_queue_text(text).event_id for text in texts)


def test_dry_run_changes_nothing(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    parked = park(poison_queue, "acme-foodbank", 5)
    park(poison_queue, "harbor-pantry", 3)

    result = cli("replay", "--dry-run", "--customer", "acme-foodbank")

    assert result.code == 0
    assert result.stdout.splitlines()[0] == (
        f"Dry run: would move 5 messages from {cli.queue_name}-poison to {cli.queue_name}; "
        "skipped as unreadable: 0."
    )
    assert {line.split()[0] for line in result.stdout.splitlines()[2:]} == set(parked)
    assert receive_all(main_queue) == []
    assert len(receive_all(poison_queue)) == 8


def test_replay_moves_exactly_selected(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    chosen = park(poison_queue, "acme-foodbank", 6, reason="retries-exhausted", status=503)
    others = park(poison_queue, "harbor-pantry", 4, reason="retries-exhausted", status=503)
    others |= park(poison_queue, "acme-foodbank", 2, reason="body-not-json", status=None)

    result = cli("replay", "--customer", "acme-foodbank", "--reason", "retries-exhausted")

    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "Replay finished: moved 6, skipped 0, failed 0."
    replayed = receive_all(main_queue)
    assert event_ids(replayed) == event_ids(list(chosen.values()))
    for text in replayed:
        envelope = decode_queue_text(text)
        assert envelope.attempt == 0
        assert envelope.failure is None
        assert envelope.customer_id == "acme-foodbank"
    assert sorted(receive_all(poison_queue)) == sorted(others.values())


def test_replay_keeps_envelope_fields(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    text = parked_text("acme-foodbank", "taskFailed", task="t-1", attempts=8)
    poison_queue.send_message(text)

    assert cli("replay").code == 0

    original = decode_queue_text(text)
    [replayed_text] = receive_all(main_queue)
    replayed = decode_queue_text(replayed_text)
    assert replayed == original.with_attempt(0).with_failure(None)
    assert "failure" not in replayed.to_dict()


def test_replay_by_repeated_id(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    parked = park(poison_queue, "acme-foodbank", 5)
    chosen = sorted(parked)[:2]

    result = cli("replay", "--id", chosen[0], "--id", chosen[1])

    assert result.code == 0
    assert event_ids(receive_all(main_queue)) == event_ids([parked[i] for i in chosen])
    assert len(receive_all(poison_queue)) == 3


def test_replay_unknown_id_moves_nothing(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    parked = park(poison_queue, "acme-foodbank", 2)

    result = cli("replay", "--id", next(iter(parked)), "--id", "no-such-id")

    assert result.code == 2
    assert result.stderr.count("\n") == 1
    assert "no-such-id" in result.stderr
    assert receive_all(main_queue) == []
    assert len(receive_all(poison_queue)) == 2


def test_replay_host_moved(cli: Cli, main_queue: QueueClient, poison_queue: QueueClient) -> None:
    text = host_moved_text("harbor-pantry")
    poison_queue.send_message(text)

    result = cli("replay", "--reason", "host-retries-exhausted")

    assert result.code == 0
    [replayed] = receive_all(main_queue)
    assert decode_queue_text(replayed) == decode_queue_text(text).with_attempt(0)
    assert receive_all(poison_queue) == []


def test_replay_skips_unreadable(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    poison_queue.send_message("not an envelope")
    park(poison_queue, "acme-foodbank", 1)

    result = cli("replay")

    assert result.code == 0
    assert result.stdout.splitlines()[-1] == "Replay finished: moved 1, skipped 1, failed 0."
    assert "--include-unreadable" in result.stderr
    assert len(receive_all(main_queue)) == 1
    assert receive_all(poison_queue) == ["not an envelope"]


def test_replay_includes_unreadable_as_is(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    poison_queue.send_message("not an envelope <&>")

    result = cli("replay", "--include-unreadable")

    assert result.code == 0
    assert result.stdout.splitlines()[-1] == "Replay finished: moved 1, skipped 0, failed 0."
    assert receive_all(main_queue) == ["not an envelope <&>"]
    assert receive_all(poison_queue) == []


def test_replay_limit_moves_oldest(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    first = parked_text("acme-foodbank", task="first")
    poison_queue.send_message(first)
    time.sleep(1.1)
    second = parked_text("acme-foodbank", task="second")
    poison_queue.send_message(second)

    assert cli("replay", "--limit", "1").code == 0

    assert event_ids(receive_all(main_queue)) == event_ids([first])
    assert receive_all(poison_queue) == [second]


def test_replay_send_failure_keeps_message(
    cli: Cli,
    main_queue: QueueClient,
    poison_queue: QueueClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.core.exceptions import ServiceRequestError

    parked = park(poison_queue, "acme-foodbank", 4)
    real_send = QueueClient.send_message
    calls = 0

    def flaky_send(self: QueueClient, content: object, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ServiceRequestError("connection reset")
        return real_send(self, content, **kwargs)

    monkeypatch.setattr(QueueClient, "send_message", flaky_send)
    result = cli("replay")
    monkeypatch.undo()

    assert result.code == 1
    assert result.stdout.splitlines()[-1] == "Replay finished: moved 3, skipped 0, failed 1."
    assert "ServiceRequestError" in result.stderr
    moved = receive_all(main_queue)
    left_in_poison = receive_all(poison_queue)
    assert len(moved) == 3
    assert len(left_in_poison) == 1
    assert event_ids(moved) + event_ids(left_in_poison) == event_ids(list(parked.values()))


def test_replay_delete_failure_duplicates(
    cli: Cli,
    main_queue: QueueClient,
    poison_queue: QueueClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.core.exceptions import ServiceRequestError

    parked = park(poison_queue, "acme-foodbank", 3)

    def failing_delete(self: QueueClient, message: object, *args: Any, **kwargs: Any) -> None:
        raise ServiceRequestError("connection reset")

    monkeypatch.setattr(QueueClient, "delete_message", failing_delete)
    result = cli("replay")
    monkeypatch.undo()

    assert result.code == 1
    assert result.stdout.splitlines()[-1] == "Replay finished: moved 0, skipped 0, failed 3."
    assert "now in both queues" in result.stderr
    assert event_ids(receive_all(main_queue)) == event_ids(list(parked.values()))
    assert len(receive_all(poison_queue)) == 3


def test_replay_stops_after_repeated_failures(
    cli: Cli,
    main_queue: QueueClient,
    poison_queue: QueueClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.core.exceptions import ServiceRequestError

    park(poison_queue, "acme-foodbank", 8)

    def failing_send(self: QueueClient, content: object, **kwargs: Any) -> Any:
        raise ServiceRequestError("connection refused")

    monkeypatch.setattr(QueueClient, "send_message", failing_send)
    result = cli("replay")
    monkeypatch.undo()

    assert result.code == 1
    assert result.stdout.splitlines()[-1] == "Replay finished: moved 0, skipped 0, failed 8."
    assert "3 messages were not attempted" in result.stderr
    assert len(receive_all(poison_queue)) == 8


def test_replay_rate_spaces_messages(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient
) -> None:
    park(poison_queue, "acme-foodbank", 5)

    started = time.monotonic()
    result = cli("replay", "--rate", "5")
    elapsed = time.monotonic() - started

    assert result.code == 0
    # Five messages at five per second: four gaps of 0.2 s.
    assert elapsed >= 0.8
    assert len(receive_all(main_queue)) == 5


def test_interrupted_replay_loses_nothing(
    storage_connection_string: str,
    queue_name: str,
    main_queue: QueueClient,
    poison_queue: QueueClient,
    tmp_path: Path,
) -> None:
    parked = park(poison_queue, "acme-foodbank", 12)
    command = [
        sys.executable, "-m", "ops.poison", "replay",
        "--connection-string", storage_connection_string,
        "--queue", queue_name,
        "--rate", "4",
        "--visibility-timeout", "2",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while (main_queue.get_queue_properties().approximate_message_count or 0) < 3:
            assert time.monotonic() < deadline, "replay moved nothing within 30 s"
            assert process.poll() is None, "replay ended before it could be interrupted"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    # Messages the killed replay held become visible once their 2 s timeout passes.
    time.sleep(2.5)

    moved = receive_all(main_queue)
    left_in_poison = receive_all(poison_queue)
    assert 3 <= len(moved) < 12
    assert set(event_ids(moved) + event_ids(left_in_poison)) == set(
        event_ids(list(parked.values()))
    )
    assert len(moved) + len(left_in_poison) >= 12


def test_sigterm_releases_held_messages(
    storage_connection_string: str,
    queue_name: str,
    main_queue: QueueClient,
    poison_queue: QueueClient,
    tmp_path: Path,
) -> None:
    parked = park(poison_queue, "acme-foodbank", 10)
    command = [
        sys.executable, "-m", "ops.poison", "replay",
        "--connection-string", storage_connection_string,
        "--queue", queue_name,
        "--rate", "2",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while (main_queue.get_queue_properties().approximate_message_count or 0) < 2:
            assert time.monotonic() < deadline, "replay moved nothing within 30 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()

    assert process.returncode == 128 + signal.SIGTERM
    assert b"Traceback" not in stderr
    # The default visibility timeout is 120 s, so every message the replay did not move is
    # visible now only if the replay released it on the way out. A message in flight when
    # the signal came may be in both queues.
    moved = receive_all(main_queue)
    left_in_poison = receive_all(poison_queue)
    assert len(moved) >= 2
    assert set(event_ids(moved) + event_ids(left_in_poison)) == set(
        event_ids(list(parked.values()))
    )
