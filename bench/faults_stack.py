"""The processes of the fault-injection run: Azurite, the ClientTrack stand-in and devhost.

Everything lives in one temporary directory and listens on free ports of 127.0.0.1. devhost
runs a copy of the app whose host.json has a short `functionTimeout`, because devhost leases
a received message for `functionTimeout` plus 60 s: messages held by a killed devhost then
reappear after 70 s instead of 6 minutes. Every other host.json value is the project's own.
Each stop or kill ends only a process this module started, by its process id.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from devhost.azurite import PROJECT_ROOT, Azurite, AzuritePorts, free_port
from devhost.clienttrack import DEFAULT_PATH
from devhost.processes import ManagedProcess, devhost_process

APP_PARTS = ("webhook_ingest", "event_processor", "shared")
# devhost leases a message for functionTimeout + 60 s (devhost.queue_trigger), so 10 s gives
# a 70 s lease. The settings check still holds: two ClientTrack calls of connect + read
# timeout must fit in it.
FUNCTION_TIMEOUT = "00:00:10"
QUEUE_NAME = "onfleet-events"


@dataclass(frozen=True)
class StandInFaults:
    """Fault rates of the ClientTrack stand-in, each a probability per accepted request."""

    timeout_rate: float
    drop_connection_rate: float
    fail_rate: float
    statuses: tuple[int, ...]
    retry_after_seconds: float
    timeout_delay_seconds: float
    seed: int


def copy_app(root: Path) -> Path:
    """Copy the functions and `shared` to `root`, with the run's functionTimeout."""
    for part in APP_PARTS:
        shutil.copytree(
            PROJECT_ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__")
        )
    host = json.loads((PROJECT_ROOT / "host.json").read_text(encoding="utf-8"))
    host["functionTimeout"] = FUNCTION_TIMEOUT
    (root / "host.json").write_text(json.dumps(host, indent=2), encoding="utf-8")
    return root


class FaultStack:
    """Azurite, the stand-in and devhost of one run, started and stopped on request."""

    def __init__(self, work_dir: Path, app_settings: dict[str, str], faults: StandInFaults) -> None:
        self.work_dir = work_dir
        self.log_dir = work_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.azurite = Azurite(
            work_dir / "azurite",
            AzuritePorts(free_port(), free_port(), free_port()),
            log_file=self.log_dir / "azurite.log",
        )
        self.record_path = self.log_dir / "clienttrack-requests.jsonl"
        self.clienttrack_port = free_port()
        self.devhost_port = free_port()

        self.env = {
            **app_settings,
            "AzureWebJobsStorage": self.azurite.connection_string,
            "ONFLEET_EVENTS_QUEUE": QUEUE_NAME,
            "CLIENTTRACK_INTEGRATION_QUEUE_URL": (
                f"http://127.0.0.1:{self.clienttrack_port}{DEFAULT_PATH}"
            ),
        }
        self.settings_file = work_dir / "local.settings.json"
        self.settings_file.write_text(
            json.dumps({"IsEncrypted": False, "Values": self.env}, indent=2), encoding="utf-8"
        )
        self.app_root = copy_app(work_dir / "app")

        self.clienttrack = ManagedProcess(
            "clienttrack",
            "bench.faults_clienttrack",
            [
                "--port", str(self.clienttrack_port),
                "--settings", str(self.settings_file),
                "--record", str(self.record_path),
                "--fail-rate", f"{faults.fail_rate:.6f}",
                "--statuses", ",".join(str(status) for status in faults.statuses),
                "--retry-after", f"{faults.retry_after_seconds:g}",
                "--drop-connection-rate", f"{faults.drop_connection_rate:.6f}",
                "--timeout-rate", f"{faults.timeout_rate:.6f}",
                "--timeout-delay-ms", f"{faults.timeout_delay_seconds * 1000:g}",
                "--seed", str(faults.seed),
            ],
            log_path=self.log_dir / "clienttrack.log",
            port=self.clienttrack_port,
        )  # fmt: skip
        self.devhost = devhost_process(
            self.devhost_port, self.settings_file, self.log_dir, self.env, app_root=self.app_root
        )

    @property
    def connection_string(self) -> str:
        return self.azurite.connection_string

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.devhost_port}/onfleet/webhooks/"

    def start(self) -> None:
        """Start Azurite, then the stand-in, then devhost; each waits until it listens."""
        self.azurite.start()
        self.clienttrack.start()
        self.devhost.start()

    def kill_devhost(self) -> None:
        """End devhost with SIGKILL, as a crash or an instance recycle would."""
        self.devhost.kill()

    def start_devhost(self) -> None:
        """Start devhost again on the same port, settings and log file."""
        self.devhost.start()

    def stop_azurite(self) -> None:
        self.azurite.stop()

    def start_azurite(self) -> None:
        """Start Azurite again on the same ports and data directory."""
        self.azurite.start()

    def stop(self) -> None:
        """Stop every process this stack started, devhost first."""
        self.devhost.stop()
        self.clienttrack.stop()
        self.azurite.stop()

    def devhost_log(self) -> str:
        return self.devhost.log_text()
