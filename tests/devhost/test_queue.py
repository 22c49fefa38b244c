"""Queue triggers under `python -m devhost`: delivery, retries, poison queue, shutdown."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from tests.devhost.conftest import StartDevhost
from tests.devhost.toyapp import (
    encode,
    host_json,
    queue_count,
    queue_function,
    queue_texts,
    wait_until,
    write_app,
)

RECORDER = """
    import json
    import os
    from pathlib import Path

    import azure.functions as func


    async def main(msg: func.QueueMessage) -> None:
        report = {
            "id": msg.id,
            "body": msg.get_body().hex(),
            "dequeueCount": msg.dequeue_count,
            "insertionTime": msg.insertion_time.isoformat() if msg.insertion_time else None,
            "expirationTime": msg.expiration_time.isoformat() if msg.expiration_time else None,
            "popReceipt": msg.pop_receipt,
        }
        path = Path(os.environ["TOY_OUTPUT_DIR"]) / f"{msg.id}.json"
        path.write_text(json.dumps(report))
"""

FAILING = """
    import os
    import uuid
    from pathlib import Path

    import azure.functions as func


    def main(msg: func.QueueMessage) -> None:
        attempt = Path(os.environ["TOY_OUTPUT_DIR"]) / f"attempt-{uuid.uuid4().hex}"
        attempt.write_text(str(msg.dequeue_count))
        raise ValueError("toy processing failed")
"""


def reports(output_dir: Path) -> list[dict[str, object]]:
    return [json.loads(path.read_text()) for path in sorted(output_dir.glob("*.json"))]


def test_base64_message_delivered_and_deleted(
    tmp_path: Path,
    start_devhost: StartDevhost,
    queue: QueueClient,
    output_dir: Path,
    storage_connection_string: str,
) -> None:
    app = write_app(
        tmp_path / "app",
        {"recorder": (queue_function(queue.queue_name), RECORDER)},
        host=host_json(),
    )
    devhost = start_devhost(app)
    body = b"\x00\xffbinary \xe9 body"

    sent = queue.send_message(encode(body))
    wait_until(lambda: len(reports(output_dir)) == 1, what="the function to run")
    wait_until(
        lambda: queue_count(storage_connection_string, queue.queue_name) == 0,
        what="the message to be deleted",
    )

    report = reports(output_dir)[0]
    assert report["id"] == sent.id
    assert bytes.fromhex(str(report["body"])) == body
    assert report["dequeueCount"] == 1
    assert report["insertionTime"] is not None
    assert report["expirationTime"] is not None
    assert report["popReceipt"]
    assert [match["outcome"] for match in devhost.executed("recorder")] == ["Succeeded"]


def test_message_encoding_none(
    tmp_path: Path, start_devhost: StartDevhost, queue: QueueClient, output_dir: Path
) -> None:
    app = write_app(
        tmp_path / "app",
        {"recorder": (queue_function(queue.queue_name), RECORDER)},
        host=host_json(messageEncoding="none"),
    )
    start_devhost(app)

    queue.send_message("plain text, not base64")
    wait_until(lambda: len(reports(output_dir)) == 1, what="the function to run")

    assert bytes.fromhex(str(reports(output_dir)[0]["body"])) == b"plain text, not base64"


def test_failing_message_moves_to_poison(
    tmp_path: Path,
    start_devhost: StartDevhost,
    queue: QueueClient,
    output_dir: Path,
    storage_connection_string: str,
) -> None:
    app = write_app(
        tmp_path / "app",
        {"failing": (queue_function(queue.queue_name), FAILING)},
        host=host_json(visibilityTimeout="00:00:00", maxDequeueCount=2),
    )
    devhost = start_devhost(app)
    text = encode(b'{"event": 1}')

    queue.send_message(text)
    poison = f"{queue.queue_name}-poison"
    wait_until(
        lambda: queue_texts(storage_connection_string, poison) == [text],
        what="the message in the poison queue",
    )

    attempts = sorted(path.read_text() for path in output_dir.glob("attempt-*"))
    assert attempts == ["1", "2"]
    assert queue_count(storage_connection_string, queue.queue_name) == 0
    assert [match["outcome"] for match in devhost.executed("failing")] == ["Failed", "Failed"]
    assert "ValueError: toy processing failed" in devhost.stderr


def test_failed_message_waits_visibility_timeout(
    tmp_path: Path,
    start_devhost: StartDevhost,
    queue: QueueClient,
    output_dir: Path,
    storage_connection_string: str,
) -> None:
    app = write_app(
        tmp_path / "app",
        {"failing": (queue_function(queue.queue_name), FAILING)},
        host=host_json(visibilityTimeout="00:01:00", maxDequeueCount=2),
    )
    devhost = start_devhost(app)

    queue.send_message(encode(b"x"))
    wait_until(lambda: any(output_dir.glob("attempt-*")), what="the first attempt")
    wait_until(lambda: "It becomes visible again in 60 s" in devhost.stderr, what="the release")

    assert queue_texts(storage_connection_string, queue.queue_name) == []
    assert queue_count(storage_connection_string, queue.queue_name) == 1
    assert len(list(output_dir.glob("attempt-*"))) == 1


def test_invalid_base64_goes_straight_to_poison(
    tmp_path: Path,
    start_devhost: StartDevhost,
    queue: QueueClient,
    output_dir: Path,
    storage_connection_string: str,
) -> None:
    app = write_app(
        tmp_path / "app",
        {"recorder": (queue_function(queue.queue_name), RECORDER)},
        host=host_json(),
    )
    devhost = start_devhost(app)

    queue.send_message("not base64 {json}")
    poison = f"{queue.queue_name}-poison"
    wait_until(
        lambda: queue_texts(storage_connection_string, poison) == ["not base64 {json}"],
        what="the message in the poison queue",
    )

    assert reports(output_dir) == []
    assert devhost.executed() == []
    assert queue_count(storage_connection_string, queue.queue_name) == 0


def test_sync_function_processes_message(
    tmp_path: Path, start_devhost: StartDevhost, queue: QueueClient, output_dir: Path
) -> None:
    code = """
        import os
        import threading
        from pathlib import Path


        def main(msg):
            thread = threading.current_thread().name
            text = msg.get_body().decode() + "|" + thread
            (Path(os.environ["TOY_OUTPUT_DIR"]) / "sync.txt").write_text(text)
    """
    app = write_app(
        tmp_path / "app", {"syncer": (queue_function(queue.queue_name), code)}, host=host_json()
    )
    start_devhost(app)

    queue.send_message(encode(b"hello"))
    result = output_dir / "sync.txt"
    wait_until(result.exists, what="the sync function to run")

    body, thread = result.read_text().split("|")
    assert body == "hello"
    assert thread.startswith("devhost-function")


def test_queue_name_from_app_setting(
    tmp_path: Path, start_devhost: StartDevhost, queue: QueueClient, output_dir: Path
) -> None:
    app = write_app(
        tmp_path / "app",
        {"recorder": (queue_function("%TOY_QUEUE%"), RECORDER)},
        host=host_json(),
    )
    settings = {"IsEncrypted": False, "Values": {"TOY_QUEUE": queue.queue_name}}
    (app / "local.settings.json").write_text(json.dumps(settings))
    devhost = start_devhost(app)

    queue.send_message(encode(b"via setting"))
    wait_until(lambda: len(reports(output_dir)) == 1, what="the function to run")

    assert f"recorder: queueTrigger {queue.queue_name}" in devhost.stdout_lines


def test_missing_queue_created_at_start(
    tmp_path: Path, start_devhost: StartDevhost, storage_connection_string: str, queue_name: str
) -> None:
    app = write_app(
        tmp_path / "app", {"recorder": (queue_function(queue_name), RECORDER)}, host=host_json()
    )
    start_devhost(app)

    with QueueClient.from_connection_string(storage_connection_string, queue_name) as client:
        properties = client.get_queue_properties()
        client.delete_queue()
    assert properties.name == queue_name


def test_batch_size_bounds_concurrency(
    tmp_path: Path, start_devhost: StartDevhost, queue: QueueClient, output_dir: Path
) -> None:
    code = """
        import asyncio
        import os
        from pathlib import Path

        active = 0
        peak = 0


        async def main(msg):
            global active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.3)
            active -= 1
            output = Path(os.environ["TOY_OUTPUT_DIR"])
            (output / f"done-{msg.id}").write_text(str(peak))
    """
    app = write_app(
        tmp_path / "app",
        {"batched": (queue_function(queue.queue_name), code)},
        host=host_json(batchSize=2, newBatchThreshold=0),
    )
    for number in range(6):
        queue.send_message(encode(str(number).encode()))
    start_devhost(app)

    wait_until(lambda: len(list(output_dir.glob("done-*"))) == 6, what="all six messages")

    peaks = [int(path.read_text()) for path in output_dir.glob("done-*")]
    assert max(peaks) == 2


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_sigterm_lets_invocations_finish(
    tmp_path: Path,
    start_devhost: StartDevhost,
    queue: QueueClient,
    output_dir: Path,
    storage_connection_string: str,
    kind: str,
) -> None:
    code = f"""
        import asyncio
        import os
        import time
        from pathlib import Path

        OUTPUT = Path(os.environ["TOY_OUTPUT_DIR"])


        {"async " if kind == "async" else ""}def main(msg):
            (OUTPUT / f"started-{{msg.id}}").write_text("")
            {"await asyncio.sleep(2)" if kind == "async" else "time.sleep(2)"}
            (OUTPUT / f"done-{{msg.id}}").write_text("")
    """
    app = write_app(
        tmp_path / "app", {"slow": (queue_function(queue.queue_name), code)}, host=host_json()
    )
    devhost = start_devhost(app)
    sent = {queue.send_message(encode(f"m{number}".encode())).id for number in range(3)}
    wait_until(
        lambda: len(list(output_dir.glob("started-*"))) == 3, what="three invocations to start"
    )

    devhost.signal(signal.SIGTERM)
    exit_code = devhost.wait()

    done = {path.name.removeprefix("done-") for path in output_dir.glob("done-*")}
    remaining = queue_count(storage_connection_string, queue.queue_name)
    assert exit_code == 0
    assert done == sent
    assert remaining == 0
    assert [match["outcome"] for match in devhost.executed("slow")] == ["Succeeded"] * 3
