"""`export` and `import`: JSON Lines archives that round-trip message text byte for byte."""

from __future__ import annotations

import base64
import errno
import json
import os
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from tests.ops.support import Cli, host_moved_text, parked_text, receive_all

# Text that is not an envelope, with XML-special, non-ASCII and control characters that the
# queue's XML wire format and JSON both have to carry unchanged.
ODD_TEXT = "not base64 <&>\"' é ✓ 😀 tab\there\r\nnext line "


def fill(poison_queue: QueueClient) -> list[str]:
    texts = [
        parked_text("acme-foodbank", task="t-1"),
        parked_text("harbor-pantry", "taskFailed", "auth-refused", 401, task="t-2"),
        host_moved_text("acme-foodbank"),
        ODD_TEXT,
        base64.b64encode(b"\x00\xff binary").decode(),
    ]
    for text in texts:
        poison_queue.send_message(text, time_to_live=-1)
    return texts


def test_export_import_round_trip(cli: Cli, poison_queue: QueueClient, tmp_path: Path) -> None:
    texts = fill(poison_queue)
    archive = tmp_path / "poison.jsonl"

    exported = cli("export", "--out", str(archive), "--delete")
    assert exported.code == 0, exported.stderr
    assert receive_all(poison_queue) == []

    imported = cli("import", str(archive))

    assert imported.code == 0, imported.stderr
    assert imported.stdout == (
        f"Imported 5 messages into {cli.queue_name}-poison; skipped 0 already present; 0 failed.\n"
    )
    assert sorted(receive_all(poison_queue)) == sorted(texts)


def test_export_line_fields(cli: Cli, poison_queue: QueueClient, tmp_path: Path) -> None:
    message = poison_queue.send_message(parked_text("acme-foodbank", task="t-8"), time_to_live=-1)
    archive = tmp_path / "one.jsonl"

    result = cli("export", "--out", str(archive))

    assert result.code == 0
    assert result.stdout == (f"Exported 1 messages from {cli.queue_name}-poison to {archive}.\n")
    [line] = archive.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert record["id"] == message.id
    assert record["queue"] == f"{cli.queue_name}-poison"
    assert record["insertedOn"].endswith("Z")
    assert record["expiresOn"].startswith("9999-12-31")
    assert record["dequeueCount"] == 1
    assert record["text"] == message.content
    assert record["customerId"] == "acme-foodbank"
    assert record["taskId"] == "t-8"
    assert record["reason"] == "permanent-http-status"
    assert record["status"] == 400
    assert len(receive_all(poison_queue)) == 1


def test_export_filters_and_deletes_only_exported(
    cli: Cli, poison_queue: QueueClient, tmp_path: Path
) -> None:
    fill(poison_queue)
    archive = tmp_path / "acme.jsonl"

    result = cli("export", "--out", str(archive), "--customer", "acme-foodbank", "--delete")

    assert result.code == 0
    assert result.stdout.splitlines()[-1] == (
        f"Deleted 2 exported messages from {cli.queue_name}-poison; 0 failed."
    )
    lines = archive.read_text(encoding="utf-8").splitlines()
    assert {json.loads(line)["customerId"] for line in lines} == {"acme-foodbank"}
    assert len(receive_all(poison_queue)) == 3


def test_import_skips_present_text(cli: Cli, poison_queue: QueueClient, tmp_path: Path) -> None:
    texts = fill(poison_queue)
    archive = tmp_path / "poison.jsonl"
    assert cli("export", "--out", str(archive)).code == 0

    result = cli("import", str(archive))

    assert result.code == 0
    assert result.stdout == (
        f"Imported 0 messages into {cli.queue_name}-poison; skipped 5 already present; 0 failed.\n"
    )
    assert sorted(receive_all(poison_queue)) == sorted(texts)


def test_import_keeps_duplicate_lines(cli: Cli, poison_queue: QueueClient, tmp_path: Path) -> None:
    archive = tmp_path / "twice.jsonl"
    archive.write_text(
        json.dumps({"text": "same"}) + "\n" + json.dumps({"text": "same"}) + "\n",
        encoding="utf-8",
    )
    poison_queue.send_message("same")

    first = cli("import", str(archive))
    second = cli("import", str(archive))

    assert "Imported 1 messages" in first.stdout
    assert "skipped 1 already present" in first.stdout
    assert "Imported 0 messages" in second.stdout
    assert receive_all(poison_queue) == ["same", "same"]


def test_import_into_other_queue(
    cli: Cli, storage_connection_string: str, poison_queue: QueueClient, tmp_path: Path
) -> None:
    texts = fill(poison_queue)
    archive = tmp_path / "poison.jsonl"
    assert cli("export", "--out", str(archive)).code == 0
    target = f"{cli.queue_name}-copy"

    refused = cli("import", str(archive), "--queue-target", target)
    created = cli("import", str(archive), "--queue-target", target, "--create-queue")

    assert refused.code == 2
    assert f"Queue {target!r} was not found" in refused.stderr
    assert created.code == 0
    copy = QueueClient.from_connection_string(storage_connection_string, target)
    try:
        assert sorted(receive_all(copy)) == sorted(texts)
    finally:
        copy.delete_queue()


def test_export_refuses_existing_file(cli: Cli, poison_queue: QueueClient, tmp_path: Path) -> None:
    poison_queue.send_message(parked_text("acme-foodbank"))
    archive = tmp_path / "exists.jsonl"
    archive.write_text("keep me\n", encoding="utf-8")

    refused = cli("export", "--out", str(archive), "--delete")
    forced = cli("export", "--out", str(archive), "--force")

    assert refused.code == 2
    assert refused.stderr == (
        f"error: {archive} already exists; choose another file or pass --force to replace it.\n"
    )
    assert len(receive_all(poison_queue)) == 1
    assert forced.code == 0
    assert len(archive.read_text(encoding="utf-8").splitlines()) == 1


def test_export_failed_write_keeps_messages(
    cli: Cli, poison_queue: QueueClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_queue.send_message(parked_text("acme-foodbank"))
    archive = tmp_path / "poison.jsonl"

    def failing_fsync(descriptor: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    result = cli("export", "--out", str(archive), "--delete")
    monkeypatch.undo()

    assert result.code == 2
    assert result.stderr == f"error: Could not write {archive}: Input/output error.\n"
    assert not archive.exists()
    assert list(tmp_path.iterdir()) == []
    assert len(receive_all(poison_queue)) == 1


def test_import_rejects_bad_line(cli: Cli, poison_queue: QueueClient, tmp_path: Path) -> None:
    archive = tmp_path / "bad.jsonl"
    archive.write_text(json.dumps({"text": "fine"}) + "\n{not json\n", encoding="utf-8")

    result = cli("import", str(archive))

    assert result.code == 2
    assert result.stderr == (
        f"error: Line 2 of {archive} is not JSON; an archive has one exported message per line.\n"
    )
    assert receive_all(poison_queue) == []


def test_import_missing_file(cli: Cli, poison_queue: QueueClient, tmp_path: Path) -> None:
    result = cli("import", str(tmp_path / "absent.jsonl"))

    assert result.code == 2
    assert result.stderr == f"error: Archive {tmp_path / 'absent.jsonl'} was not found.\n"
