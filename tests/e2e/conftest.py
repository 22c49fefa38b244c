"""End-to-end fixtures: devhost as a child process, Azurite, and a ClientTrack stand-in.

The app runs from a copy whose host.json polls every second and retries failed messages
at once, so tests do not wait out production intervals; everything else in the copy is the
project's own code.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devhost.azurite import PROJECT_ROOT, free_port
from devhost.processes import ManagedProcess, devhost_process

SETTINGS_FILE = PROJECT_ROOT / "local.settings.json.example"
DEMO_CUSTOMER = "demo-foodbank"
APP_PARTS = ("webhook_ingest", "event_processor", "shared")


def read_settings() -> dict[str, str]:
    values: dict[str, str] = json.loads(SETTINGS_FILE.read_text(encoding="utf-8"))["Values"]
    return values


@pytest.fixture(scope="session")
def app_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("app")
    for part in APP_PARTS:
        shutil.copytree(
            PROJECT_ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__")
        )
    host = json.loads((PROJECT_ROOT / "host.json").read_text(encoding="utf-8"))
    host["extensions"]["queues"].update(
        {"maxPollingInterval": "00:00:01", "visibilityTimeout": "00:00:00"}
    )
    (root / "host.json").write_text(json.dumps(host, indent=2), encoding="utf-8")
    return root


@dataclass
class Bridge:
    """One devhost process with its own queue, container and dedupe table."""

    process: ManagedProcess
    env: dict[str, str]
    port: int
    app_root: Path
    log_dir: Path

    @property
    def connection_string(self) -> str:
        return self.env["AzureWebJobsStorage"]

    @property
    def queue(self) -> str:
        return self.env["ONFLEET_EVENTS_QUEUE"]

    def url(self, customer_id: str = DEMO_CUSTOMER) -> str:
        return f"http://127.0.0.1:{self.port}/onfleet/webhooks/{customer_id}"

    def start(self) -> None:
        """Start a new devhost process on the same port, queue and settings."""
        self.process = devhost_process(
            self.port,
            SETTINGS_FILE,
            self.log_dir,
            self.env,
            name=f"devhost-{uuid.uuid4().hex[:6]}",
            app_root=self.app_root,
        )
        self.process.start()


class BridgeFactory:
    """Starts bridges on unique storage names and stops them when the test ends."""

    def __init__(self, app_root: Path, connection_string: str, log_dir: Path) -> None:
        self.app_root = app_root
        self.connection_string = connection_string
        self.log_dir = log_dir
        self.bridges: list[Bridge] = []

    def start(self, clienttrack_url: str, **extra: str) -> Bridge:
        name = f"e{uuid.uuid4().hex[:16]}"
        env = {
            "AzureWebJobsStorage": self.connection_string,
            "ONFLEET_EVENTS_QUEUE": name,
            "CLAIM_CHECK_CONTAINER": f"{name}-payloads",
            "DEDUPE_TABLE": f"dedupe{name}",
            "CLIENTTRACK_INTEGRATION_QUEUE_URL": clienttrack_url,
            "RETRY_BASE_SECONDS": "1",
            "RETRY_MAX_DELAY_SECONDS": "1",
            **extra,
        }
        bridge = Bridge(
            devhost_process(0, SETTINGS_FILE, self.log_dir, env),
            env,
            free_port(),
            self.app_root,
            self.log_dir,
        )
        bridge.start()
        self.bridges.append(bridge)
        return bridge

    def stop_all(self) -> None:
        for bridge in self.bridges:
            bridge.process.stop()


@pytest.fixture
def bridges(
    app_root: Path, storage_connection_string: str, tmp_path: Path
) -> Iterator[BridgeFactory]:
    factory = BridgeFactory(app_root, storage_connection_string, tmp_path)
    yield factory
    factory.stop_all()
