"""Build toy function apps on disk and run `python -m devhost` on them as a child process.

Each test writes its own app (host.json, one folder per function) into its temporary
directory. The runner is thus tested against the files it reads, not against this project's
functions. Toy functions report what they saw by writing files into `TOY_OUTPUT_DIR`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

PROJECT_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = "devhost ready"
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0
WAIT_TIMEOUT_SECONDS = 20.0
OUTPUT_DIR_VARIABLE = "TOY_OUTPUT_DIR"
EXECUTED_LINE = re.compile(
    r"Executed 'Functions\.(?P<name>[\w-]+)' \((?P<outcome>Succeeded|Failed), "
    r"Id=(?P<id>[0-9a-f-]{36}), Duration=(?P<ms>\d+)ms\)"
)


def write_app(
    root: Path,
    functions: Mapping[str, tuple[Mapping[str, Any], str]],
    *,
    host: Mapping[str, Any] | None = None,
) -> Path:
    """Write host.json and one folder per function (function.json and __init__.py)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "host.json").write_text(json.dumps(host or {"version": "2.0"}), encoding="utf-8")
    for name, (function_json, code) in functions.items():
        folder = root / name
        folder.mkdir()
        (folder / "function.json").write_text(json.dumps(function_json), encoding="utf-8")
        (folder / "__init__.py").write_text(textwrap.dedent(code), encoding="utf-8")
    return root


def http_function(
    *, route: str | None = None, methods: Sequence[str] | None = ("get", "post")
) -> dict[str, Any]:
    """Build the function.json of an HTTP function returning its response."""
    trigger: dict[str, Any] = {
        "authLevel": "anonymous",
        "type": "httpTrigger",
        "direction": "in",
        "name": "req",
    }
    if methods is not None:
        trigger["methods"] = list(methods)
    if route is not None:
        trigger["route"] = route
    return {
        "scriptFile": "__init__.py",
        "bindings": [trigger, {"type": "http", "direction": "out", "name": "$return"}],
    }


def queue_function(queue_name: str) -> dict[str, Any]:
    """Build the function.json of a queue-triggered function on `queue_name`."""
    return {
        "scriptFile": "__init__.py",
        "entryPoint": "main",
        "bindings": [
            {
                "name": "msg",
                "type": "queueTrigger",
                "direction": "in",
                "queueName": queue_name,
                "connection": "AzureWebJobsStorage",
            }
        ],
    }


def host_json(**queues: Any) -> dict[str, Any]:
    """Build a host.json with quick polling and the given `extensions.queues` overrides."""
    options = {"maxPollingInterval": "00:00:01", **queues}
    return {"version": "2.0", "extensions": {"queues": options}}


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Send one HTTP request to 127.0.0.1:port with `path` exactly as written."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


class DevhostProcess:
    """`python -m devhost` on a toy app, with stdout collected and stderr in a file."""

    def __init__(
        self,
        app_root: Path,
        *,
        port: int,
        env: Mapping[str, str],
        log_path: Path,
        arguments: Sequence[str] = (),
    ) -> None:
        self.port = port
        self.log_path = log_path
        self.command = [
            sys.executable, "-m", "devhost",
            "--app-root", str(app_root),
            "--port", str(port),
            *arguments,
        ]  # fmt: skip
        self.env = dict(env)
        self.stdout_lines: list[str] = []
        self._ready = threading.Event()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Start the process; `wait_ready` waits for its ready line."""
        with self.log_path.open("w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            if line.strip() == READY_LINE:
                self._ready.set()
        self._ready.set()

    def wait_ready(self) -> None:
        assert self.process is not None
        self._ready.wait(READY_TIMEOUT_SECONDS)
        if READY_LINE not in self.stdout_lines:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            raise AssertionError(
                f"devhost did not print {READY_LINE!r} (exit code {self.process.poll()}); "
                f"stderr:\n{self.stderr}"
            )

    @property
    def stderr(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def executed(self, name: str | None = None) -> list[re.Match[str]]:
        """Return the invocation log lines, optionally only those of one function."""
        return [
            match
            for match in EXECUTED_LINE.finditer(self.stderr)
            if name is None or match["name"] == name
        ]

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> int:
        """Send SIGTERM and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        """End the process by its id if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def devhost_env(connection_string: str, output_dir: Path, **extra: str) -> dict[str, str]:
    """Build the child environment: this one plus storage, the output folder and extras."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOY_")}
    env.update(
        {
            "AzureWebJobsStorage": connection_string,
            OUTPUT_DIR_VARIABLE: str(output_dir),
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


def run_to_exit(
    app_root: Path, env: Mapping[str, str], *arguments: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run devhost expecting it to exit by itself (a start-up failure), with output captured."""
    return subprocess.run(
        [sys.executable, "-m", "devhost", "--app-root", str(app_root), "--port", "0", *arguments],
        cwd=PROJECT_ROOT,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(
    condition: Callable[[], bool], *, timeout: float = WAIT_TIMEOUT_SECONDS, what: str
) -> None:
    """Poll `condition` every 50 ms until it holds; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def encode(body: bytes) -> str:
    return base64.b64encode(body).decode("ascii")


def queue_texts(connection_string: str, queue_name: str) -> list[str]:
    """Return the text of every visible message (up to 32) without dequeuing them."""
    with QueueClient.from_connection_string(connection_string, queue_name) as client:
        try:
            return [message.content for message in client.peek_messages(max_messages=32)]
        except ResourceNotFoundError:
            return []


def queue_count(connection_string: str, queue_name: str) -> int:
    """Return the number of messages in a queue, visible or not; 0 if it does not exist."""
    with QueueClient.from_connection_string(connection_string, queue_name) as client:
        try:
            return int(client.get_queue_properties().approximate_message_count or 0)
        except ResourceNotFoundError:
            return 0
