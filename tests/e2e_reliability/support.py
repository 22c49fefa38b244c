"""Support for the reliability tests: the bridge as real processes on 127.0.0.1.

`ReliabilityBridge` runs devhost as a child process on a copy of the app. Each bridge has its
own queue, claim-check container and dedupe table on the session's Azurite. Its ClientTrack
stand-in runs in a background thread of the test process, so a test can script responses
and count what reached ClientTrack. The copy's host.json polls every second and retries a
failed invocation at once, and everything else is the project's own code.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from devhost.azurite import PROJECT_ROOT, free_port
from devhost.clienttrack import ClientTrackStandIn
from devhost.processes import ManagedProcess, devhost_process
from shared.signature import sign

APP_PARTS = ("webhook_ingest", "event_processor", "shared")
CUSTOMER = "reliable-pantry"
# Distinctive test secrets. The webhook secret is hex, as Onfleet issues it.
WEBHOOK_SECRET_HEX = "72656c6961626c652d70616e7472792d776562686f6f6b"
SUBSCRIPTION_KEY = "reliable-pantry-subscription-key"
API_KEY = "reliable-pantry-api-key"
WAIT_SECONDS = 30.0
SAMPLE = PROJECT_ROOT / "samples" / "task_completed_trigger3.json"

# The processor's line per delivery attempt, written by shared.processor.
DELIVERY_LINE = re.compile(
    r"Delivery customer=(?P<customer>\S+) event=(?P<event>[0-9a-f]{64}) trigger=\S+ "
    r"attempt=(?P<attempt>\d+) status=(?P<status>\S+) elapsed_ms=\d+ outcome=(?P<outcome>[a-z-]+)"
)


def copy_app(root: Path, **host_overrides: Any) -> Path:
    """Copy the function folders and `shared` to `root`, with a quick-polling host.json."""
    for part in APP_PARTS:
        shutil.copytree(
            PROJECT_ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__")
        )
    host = json.loads((PROJECT_ROOT / "host.json").read_text(encoding="utf-8"))
    host["extensions"]["queues"].update(
        {"maxPollingInterval": "00:00:01", "visibilityTimeout": "00:00:00"}
    )
    host.update(host_overrides)
    (root / "host.json").write_text(json.dumps(host, indent=2), encoding="utf-8")
    return root


def bridge_settings(connection_string: str, clienttrack_url: str) -> dict[str, str]:
    """Return app settings for one bridge: unique storage names and one customer's secrets."""
    name = f"r{uuid.uuid4().hex[:16]}"
    return {
        "AzureWebJobsStorage": connection_string,
        "ONFLEET_EVENTS_QUEUE": name,
        "CLAIM_CHECK_CONTAINER": f"{name}-payloads",
        "DEDUPE_TABLE": f"dedupe{name}",
        "CLIENTTRACK_INTEGRATION_QUEUE_URL": clienttrack_url,
        "RETRY_BASE_SECONDS": "1",
        "RETRY_MAX_DELAY_SECONDS": "1",
        f"onfleet-webhook-secret-{CUSTOMER}": WEBHOOK_SECRET_HEX,
        f"clienttrack-subscription-key-{CUSTOMER}": SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{CUSTOMER}": API_KEY,
    }


def clienttrack_secrets() -> dict[str, str]:
    return {
        f"clienttrack-subscription-key-{CUSTOMER}": SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{CUSTOMER}": API_KEY,
    }


def write_settings_file(path: Path, values: dict[str, str]) -> Path:
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}), encoding="utf-8")
    return path


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    """Poll `condition` every 0.1 s and fail, naming `what`, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.1)


def sample_body(task_id: str) -> bytes:
    """Return the taskCompleted sample with its own task id, so each test has its own event."""
    document = json.loads(SAMPLE.read_bytes())
    document["taskId"] = task_id
    return json.dumps(document).encode("utf-8")


class ReliabilityBridge:
    """devhost on a copy of the app, its storage names and the stand-in it delivers to."""

    def __init__(
        self,
        app_root: Path,
        log_dir: Path,
        connection_string: str,
        standin: ClientTrackStandIn,
        **extra_settings: str,
    ) -> None:
        self.standin = standin
        self.settings = {**bridge_settings(connection_string, standin.url), **extra_settings}
        self.settings_file = write_settings_file(log_dir / "local.settings.json", self.settings)
        self.port = free_port()
        self.app_root = app_root
        self.log_dir = log_dir
        self.process: ManagedProcess = devhost_process(
            self.port, self.settings_file, log_dir, self.settings, app_root=app_root
        )

    @property
    def connection_string(self) -> str:
        return self.settings["AzureWebJobsStorage"]

    @property
    def queue(self) -> str:
        return self.settings["ONFLEET_EVENTS_QUEUE"]

    @property
    def poison_queue(self) -> str:
        return self.queue + "-poison"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, customer_id: str = CUSTOMER) -> str:
        return f"{self.base_url}/onfleet/webhooks/{customer_id}"

    def post_signed(self, body: bytes, customer_id: str = CUSTOMER) -> httpx.Response:
        signature = sign(body, bytes.fromhex(WEBHOOK_SECRET_HEX))
        return httpx.post(
            self.url(customer_id), content=body, headers={"X-Onfleet-Signature": signature}
        )

    def log_text(self) -> str:
        return self.process.log_text()

    def outcomes(self, event_id: str) -> list[str]:
        """Return the processor's outcomes for one event id, in log order."""
        return [
            match["outcome"]
            for match in DELIVERY_LINE.finditer(self.log_text())
            if match["event"] == event_id
        ]

    def deliveries(self, event_id: str) -> int:
        """Count the 2xx responses ClientTrack sent for one event id."""
        return self.standin.deliveries_by_event_id[event_id]

    def queue_client(self, name: str | None = None) -> QueueClient:
        return QueueClient.from_connection_string(self.connection_string, name or self.queue)

    def send_raw(self, text: str, *, queue: str | None = None) -> None:
        """Write message text to a queue, creating the queue when it is missing."""
        with self.queue_client(queue) as client:
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            client.send_message(text)

    def queue_texts(self, name: str | None = None) -> list[str]:
        """Peek at up to 32 visible messages of a queue, none when the queue does not exist."""
        with self.queue_client(name) as client:
            try:
                return [message.content for message in client.peek_messages(max_messages=32)]
            except ResourceNotFoundError:
                return []

    def queue_depth(self, name: str | None = None) -> int:
        """Return the approximate message count, which includes invisible messages."""
        with self.queue_client(name) as client:
            try:
                return client.get_queue_properties().approximate_message_count or 0
            except ResourceNotFoundError:
                return 0

    def ledger_marked(self, event_id: str, customer_id: str = CUSTOMER) -> bool:
        with TableClient.from_connection_string(
            self.connection_string, self.settings["DEDUPE_TABLE"]
        ) as table:
            try:
                table.get_entity(customer_id, event_id)
            except ResourceNotFoundError:
                return False
        return True


@contextlib.contextmanager
def running_bridge(
    app_root: Path,
    log_dir: Path,
    connection_string: str,
    standin: ClientTrackStandIn,
    **extra_settings: str,
) -> Iterator[ReliabilityBridge]:
    """Start devhost for the block and stop it, by its process id, afterwards."""
    bridge = ReliabilityBridge(app_root, log_dir, connection_string, standin, **extra_settings)
    bridge.process.start()
    try:
        yield bridge
    finally:
        bridge.process.stop()
