"""Child processes of a local run: the ClientTrack stand-in and the Functions runner.

Used by `python -m devhost.stack` (`make run`, `make demo`), the end-to-end tests and the
benchmarks, so all of them start the pieces the same way. Each process writes to its own
log file, and stopping one ends only that process, by its process id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from devhost.azurite import PROJECT_ROOT

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


class ManagedProcess:
    """A Python module run as a child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        module: str,
        arguments: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.command = [sys.executable, "-m", module, *arguments]
        self.log_path = log_path
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process and wait until its port accepts connections."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if self.port is not None:
            self.wait_for_port(self.port)

    def wait_for_port(self, port: int, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout_seconds
        while not port_accepts(port):
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited with code {self.returncode} before listening on port "
                    f"{port}; see {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not listen on port {port} within {timeout_seconds:g} s; "
                    f"see {self.log_path}."
                )
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, sig: int = signal.SIGTERM, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> int:
        """Send `sig` and wait for the exit; kill the process if it outlives the timeout."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """End the process at once with SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def clienttrack_process(
    port: int, settings_file: Path, log_dir: Path, *extra: str, env: Mapping[str, str] | None = None
) -> ManagedProcess:
    """Build the ClientTrack stand-in process, recording requests in `log_dir`."""
    return ManagedProcess(
        "clienttrack",
        "devhost.clienttrack",
        [
            "--port",
            str(port),
            "--settings",
            str(settings_file),
            "--record",
            str(log_dir / "clienttrack-requests.jsonl"),
            *extra,
        ],
        log_path=log_dir / "clienttrack.log",
        env=env,
        port=port,
    )


def devhost_process(
    port: int,
    settings_file: Path,
    log_dir: Path,
    env: Mapping[str, str],
    *,
    name: str = "devhost",
    app_root: Path | None = None,
) -> ManagedProcess:
    """Build the Functions runner process for this app, or for a copy of it at `app_root`."""
    arguments = ["--port", str(port), "--settings", str(settings_file)]
    if app_root is not None:
        arguments += ["--app-root", str(app_root)]
    return ManagedProcess(
        name,
        "devhost",
        arguments,
        log_path=log_dir / f"{name}.log",
        env=env,
        port=port,
    )


def stop_all(processes: Sequence[ManagedProcess]) -> None:
    for process in reversed(processes):
        process.stop()
