"""`list`: the whole queue, filters, the three message kinds, and visibility afterwards."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from datetime import UTC, datetime

from azure.storage.queue import QueueClient

from tests.ops.support import Cli, host_moved_text, parked_text, receive_all

CUSTOMERS = ("acme-foodbank", "harbor-pantry", "north-shelter")
TRIGGERS = ("taskCompleted", "taskFailed", "taskStarted", "taskArrival")
REASONS = (
    ("permanent-http-status", 400),
    ("auth-refused", 403),
    ("retries-exhausted", 503),
    ("configuration", None),
    ("payload-missing", None),
    ("body-not-json", None),
)


def park_hundred(poison_queue: QueueClient) -> dict[str, dict[str, object]]:
    """Park 100 envelopes of mixed customers, triggers and reasons; return them by message id."""
    sent: dict[str, dict[str, object]] = {}
    for index in range(100):
        customer = CUSTOMERS[index % len(CUSTOMERS)]
        trigger = TRIGGERS[index % len(TRIGGERS)]
        reason, status = REASONS[index % len(REASONS)]
        text = parked_text(customer, trigger, reason, status, task=f"task-{index}")
        message = poison_queue.send_message(text, time_to_live=-1)
        sent[message.id] = {
            "customerId": customer,
            "triggerName": trigger,
            "reason": reason,
            "status": status,
            "taskId": f"task-{index}",
        }
    return sent


def list_json(cli: Cli, *arguments: str) -> list[dict[str, object]]:
    result = cli("list", "--json", *arguments)
    assert result.code == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_list_sees_whole_queue(cli: Cli, poison_queue: QueueClient) -> None:
    sent = park_hundred(poison_queue)

    rows = list_json(cli)

    assert len(rows) == 100
    assert {row["id"] for row in rows} == set(sent)
    for row in rows:
        expected = sent[str(row["id"])]
        assert row["customerId"] == expected["customerId"]
        assert row["triggerName"] == expected["triggerName"]
        assert row["reason"] == expected["reason"]
        assert row["status"] == expected["status"]
        assert row["taskId"] == expected["taskId"]
        assert row["attempts"] == 3
        assert row["kind"] == "parked"


def test_list_leaves_messages_visible(cli: Cli, poison_queue: QueueClient) -> None:
    park_hundred(poison_queue)

    assert cli("list").code == 0

    assert len(receive_all(poison_queue)) == 100


def test_list_table_has_one_row_each(cli: Cli, poison_queue: QueueClient) -> None:
    sent = park_hundred(poison_queue)

    result = cli("list")

    assert result.code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "AGE", "CUSTOMER", "TRIGGER", "TASK", "ATTEMPTS", "REASON", "STATUS",
    ]  # fmt: skip
    rows = lines[1:-1]
    assert len(rows) == 100
    assert {row.split()[0] for row in rows} == set(sent)
    assert lines[-1] == f"100 shown, 100 matching, 100 in queue {cli.queue_name}-poison."


def test_list_table_row_fields(cli: Cli, poison_queue: QueueClient) -> None:
    message = poison_queue.send_message(
        parked_text("acme-foodbank", "taskFailed", "auth-refused", 403, task="t-77", attempts=2)
    )

    row = cli("list").stdout.splitlines()[1].split()

    assert row[0] == message.id
    assert row[1].endswith("s")
    assert row[2:] == ["acme-foodbank", "taskFailed", "t-77", "2", "auth-refused", "403"]


def test_filters_select_exactly(cli: Cli, poison_queue: QueueClient) -> None:
    sent = park_hundred(poison_queue)

    def ids_where(**conditions: object) -> set[str]:
        return {
            message_id
            for message_id, fields in sent.items()
            if all(fields[name] == value for name, value in conditions.items())
        }

    def listed(*arguments: str) -> set[str]:
        return {str(row["id"]) for row in list_json(cli, *arguments)}

    assert listed("--customer", "harbor-pantry") == ids_where(customerId="harbor-pantry")
    assert listed("--trigger", "taskFailed") == ids_where(triggerName="taskFailed")
    assert listed("--reason", "auth-refused") == ids_where(reason="auth-refused")
    assert listed("--customer", "acme-foodbank", "--reason", "configuration") == ids_where(
        customerId="acme-foodbank", reason="configuration"
    )
    assert listed("--customer", "acme-foodbank", "--customer", "north-shelter") == (
        ids_where(customerId="acme-foodbank") | ids_where(customerId="north-shelter")
    )
    chosen = sorted(sent)[:3]
    assert listed(*[argument for i in chosen for argument in ("--id", i)]) == set(chosen)
    assert listed("--reason", "parked") == set(sent)
    assert listed("--reason", "unreadable") == set()


def test_limit_keeps_oldest(cli: Cli, poison_queue: QueueClient) -> None:
    first = poison_queue.send_message(parked_text("acme-foodbank"))
    time.sleep(1.1)
    poison_queue.send_message(parked_text("acme-foodbank"))

    rows = list_json(cli, "--limit", "1")

    assert [row["id"] for row in rows] == [first.id]


def test_time_window_filters(cli: Cli, poison_queue: QueueClient) -> None:
    early = {poison_queue.send_message(parked_text("acme-foodbank")).id for _ in range(3)}
    time.sleep(1.5)
    boundary = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(1.5)
    late = {poison_queue.send_message(parked_text("acme-foodbank")).id for _ in range(2)}

    def listed(*arguments: str) -> set[str]:
        return {str(row["id"]) for row in list_json(cli, *arguments)}

    assert listed("--since", boundary) == late
    assert listed("--until", boundary) == early
    assert listed("--since", "1h") == early | late
    assert listed("--until", "1h") == set()
    assert listed("--since", "2999-01-01T00:00:00+00:00") == set()


def test_host_moved_and_unreadable_listed(cli: Cli, poison_queue: QueueClient) -> None:
    moved = poison_queue.send_message(host_moved_text("harbor-pantry", "taskStarted", task="t-5"))
    not_base64 = poison_queue.send_message("this is not base64 {")
    not_json = poison_queue.send_message(base64.b64encode(b"plain text").decode())
    wrong_schema = poison_queue.send_message(
        base64.b64encode(json.dumps({"schemaVersion": 7}).encode()).decode()
    )

    rows = {row["id"]: row for row in list_json(cli)}

    assert rows[moved.id]["kind"] == "host-moved"
    assert rows[moved.id]["reason"] == "host-retries-exhausted"
    assert rows[moved.id]["customerId"] == "harbor-pantry"
    assert rows[moved.id]["attempts"] == 2
    for unreadable in (not_base64, not_json, wrong_schema):
        assert rows[unreadable.id]["kind"] == "unreadable"
        assert rows[unreadable.id]["reason"] == "unreadable"
        assert rows[unreadable.id]["customerId"] is None
    assert {row["id"] for row in list_json(cli, "--reason", "unreadable")} == {
        not_base64.id, not_json.id, wrong_schema.id,
    }  # fmt: skip
    assert [row["id"] for row in list_json(cli, "--reason", "host-retries-exhausted")] == [moved.id]
    assert [row["id"] for row in list_json(cli, "--reason", "host-moved")] == [moved.id]


def test_list_counts_own_receive(cli: Cli, poison_queue: QueueClient) -> None:
    poison_queue.send_message(parked_text("acme-foodbank"))

    first = list_json(cli)[0]["dequeueCount"]
    second = list_json(cli)[0]["dequeueCount"]

    assert first == 1
    assert second == 2


def test_list_empty_queue(cli: Cli, poison_queue: QueueClient) -> None:
    result = cli("list")

    assert result.code == 0
    assert (
        result.stdout.splitlines()[-1]
        == f"0 shown, 0 matching, 0 in queue {cli.queue_name}-poison."
    )


def test_list_kinds_counted(cli: Cli, poison_queue: QueueClient) -> None:
    for _ in range(2):
        poison_queue.send_message(parked_text("acme-foodbank"))
    poison_queue.send_message(host_moved_text("acme-foodbank"))
    poison_queue.send_message("garbage")

    kinds = Counter(row["kind"] for row in list_json(cli))

    assert kinds == {"parked": 2, "host-moved": 1, "unreadable": 1}
