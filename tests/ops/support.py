"""Test support for the poison-queue CLI: an in-process runner and message factories."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from azure.storage.queue import QueueClient

from ops.poison import main
from shared.envelope import Failure, build_envelope, utc_timestamp


@dataclass(frozen=True)
class Result:
    """Exit code and output of one CLI run."""

    code: int
    stdout: str
    stderr: str


class Cli:
    """Runs `python -m ops.poison` in-process against one test's queues."""

    def __init__(self, connection_string: str, queue_name: str) -> None:
        self.connection_string = connection_string
        self.queue_name = queue_name

    def __call__(self, command: str, *arguments: str) -> Result:
        stdout, stderr = io.StringIO(), io.StringIO()
        code = main(
            [
                command,
                "--connection-string",
                self.connection_string,
                "--queue",
                self.queue_name,
                *arguments,
            ],
            stdout=stdout,
            stderr=stderr,
        )
        return Result(code, stdout.getvalue(), stderr.getvalue())


def onfleet_body(trigger: str, task: str, **extra: object) -> bytes:
    document = {
        "time": 1717171717000,
        "triggerId": 3,
        "triggerName": trigger,
        "taskId": task,
        "workerId": "worker-1",
        "adminId": None,
        "actionContext": {"type": "WORKER", "id": "worker-1"},
        "data": {"task": {"id": task}},
        **extra,
    }
    return json.dumps(document).encode("utf-8")


def parked_text(
    customer: str,
    trigger: str = "taskCompleted",
    reason: str = "permanent-http-status",
    status: int | None = 400,
    *,
    task: str = "task-1",
    attempts: int = 3,
) -> str:
    """Encode an envelope as the processor parks it, with a failure record."""
    envelope = build_envelope(customer, onfleet_body(trigger, task)).with_attempt(attempts)
    failure = Failure(
        reason=reason,
        status=status,
        detail="ClientTrack said no",
        at=utc_timestamp(),
        attempts=attempts,
    )
    return envelope.with_failure(failure).to_queue_text()


def host_moved_text(customer: str, trigger: str = "taskCompleted", *, task: str = "task-9") -> str:
    """Encode an envelope as the Functions host moves it: unchanged, without a failure record."""
    return build_envelope(customer, onfleet_body(trigger, task)).with_attempt(2).to_queue_text()


def receive_all(client: QueueClient) -> list[str]:
    """Return the text of every visible message, hiding each one for 30 s so it counts once."""
    texts: list[str] = []
    for page in client.receive_messages(messages_per_page=32, visibility_timeout=30).by_page():
        texts.extend(message.content for message in page)
    return texts
