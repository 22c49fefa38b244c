"""The servers a benchmark run starts on 127.0.0.1, and the facts about the machine.

`BenchEnvironment` owns one temporary directory, one Azurite on free ports and every child
process started through it (devhost and ClientTrack stand-ins, from `devhost.processes`).
Each stop ends only a process this object started, by its process id.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

from devhost.azurite import PROJECT_ROOT, Azurite, AzuritePorts, free_port
from devhost.clienttrack import DEFAULT_PATH
from devhost.processes import ManagedProcess, clienttrack_process, devhost_process

# Packages whose versions decide the figures: the SDKs on both sides of each comparison.
REPORTED_PACKAGES = (
    "azure-functions",
    "azure-core",
    "azure-storage-queue",
    "azure-storage-blob",
    "azure-data-tables",
    "azure-keyvault-secrets",
    "azure-identity",
    "aiohttp",
    "httpx",
    "pyinstrument",
)
# The Functions host's app setting that turns one function off, read by devhost too.
DISABLED_SETTING = "AzureWebJobs.{name}.Disabled"


@dataclass(frozen=True)
class StorageNames:
    """Queue, claim-check container and dedupe table of one run, unused by any other run."""

    queue: str
    container: str
    table: str

    @classmethod
    def for_run(cls, label: str) -> StorageNames:
        compact = label.replace("-", "")
        return cls(queue=f"bench-{label}", container=f"bench-{label}", table=f"bench{compact}")


class BenchEnvironment:
    """Azurite plus the child processes of one benchmark run, in a temporary directory."""

    def __init__(self, *, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="onfleet-bench-"))
        self.keep = keep
        self.azurite = Azurite(
            self.root / "azurite",
            AzuritePorts(free_port(), free_port(), free_port()),
            log_file=self.root / "azurite.log",
        )
        self.processes: list[ManagedProcess] = []

    @property
    def connection_string(self) -> str:
        return self.azurite.connection_string

    @property
    def azurite_pid(self) -> int:
        if self.azurite.process is None:
            raise RuntimeError("Azurite is not running; enter the environment first.")
        return self.azurite.process.pid

    def __enter__(self) -> BenchEnvironment:
        self.azurite.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.azurite.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def app_settings(
        self,
        names: StorageNames,
        secrets: Mapping[str, str],
        *,
        clienttrack_url: str,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Build the app settings of one run: its own storage names, secrets and extras."""
        return {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "AzureWebJobsStorage": self.connection_string,
            "ONFLEET_EVENTS_QUEUE": names.queue,
            "CLAIM_CHECK_CONTAINER": names.container,
            "DEDUPE_TABLE": names.table,
            "CLIENTTRACK_INTEGRATION_QUEUE_URL": clienttrack_url,
            **secrets,
            **(extra or {}),
        }

    def write_settings(self, label: str, values: Mapping[str, str]) -> Path:
        """Write a local.settings.json for one run and return its path."""
        path = self.root / label / "local.settings.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"IsEncrypted": False, "Values": dict(values)}, indent=2))
        return path

    def start_clienttrack(self, settings_file: Path, *arguments: str) -> Stand:
        """Start a ClientTrack stand-in on a free port, logging into the run's folder."""
        port = free_port()
        process = clienttrack_process(port, settings_file, settings_file.parent, *arguments)
        self._start(process)
        return Stand(process, f"http://127.0.0.1:{port}", settings_file.parent)

    def start_devhost(self, label: str, values: Mapping[str, str]) -> ManagedProcess:
        """Start devhost on a free port with `values` as both settings file and environment.

        The environment copy makes sure no variable of the caller's shell overrides them.
        """
        settings_file = self.write_settings(label, values)
        process = devhost_process(
            free_port(), settings_file, settings_file.parent, values, name=f"devhost-{label}"
        )
        self._start(process)
        return process

    def stop(self, process: ManagedProcess) -> None:
        process.stop()
        if process in self.processes:
            self.processes.remove(process)

    def _start(self, process: ManagedProcess) -> None:
        self.processes.append(process)
        process.start()


@dataclass(frozen=True)
class Stand:
    """A running ClientTrack stand-in: its process, base URL and log folder."""

    process: ManagedProcess
    base_url: str
    log_dir: Path

    @property
    def url(self) -> str:
        return self.base_url + DEFAULT_PATH

    @property
    def record_path(self) -> Path:
        return self.log_dir / "clienttrack-requests.jsonl"


@contextmanager
def app_log(path: Path) -> Iterator[None]:
    """Write the app's (`shared.*`) INFO lines to `path` for the duration of the block.

    In-process runs keep the cost of the app's per-event log lines, as devhost does.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    app_logger = logging.getLogger("shared")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    previous_level = app_logger.level
    app_logger.addHandler(handler)
    app_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        app_logger.removeHandler(handler)
        handler.close()
        app_logger.setLevel(previous_level)


def memory_kib(pid: int) -> dict[str, int]:
    """Read VmRSS and VmHWM (peak resident set) of a process from /proc, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


def machine_facts() -> dict[str, Any]:
    """Describe the machine and software the figures were measured with."""
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_total_mib": _memory_total_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _command_output(["node", "--version"]),
        "azurite": _azurite_version(),
        "packages": {name: _version(name) for name in REPORTED_PACKAGES},
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total_mib() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _command_output(command: list[str]) -> str | None:
    try:
        completed = subprocess.run(command, capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip()


def _azurite_version() -> str | None:
    manifest = PROJECT_ROOT / "node_modules" / "azurite" / "package.json"
    try:
        return str(json.loads(manifest.read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
