"""Run the whole bridge on one machine: Azurite, the ClientTrack stand-in and the runner.

`python -m devhost.stack` (`make run`) starts the three, prints the webhook URL and the
command that sends a signed sample, and stops them on Ctrl-C. With `--demo` (`make demo`)
it sends every bundled sample instead, waits until each event reached the stand-in or a
poison queue, prints a table and exits 0 only if every event arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from devhost.azurite import PROJECT_ROOT, Azurite, AzuritePorts, free_port
from devhost.clienttrack import DEFAULT_PATH, local_settings_path, read_local_values
from devhost.processes import ManagedProcess, clienttrack_process, devhost_process, port_accepts
from devhost.send import SAMPLES_DIRECTORY, SendResult, check_handshake, post_files, signing_key
from shared.envelope import decode_queue_text
from shared.errors import EnvelopeError

DEFAULT_CUSTOMER = "demo-foodbank"
DEFAULT_AZURITE_PORTS = AzuritePorts(10000, 10001, 10002)
DEMO_TIMEOUT_SECONDS = 90.0


@dataclass
class DemoRow:
    file: str
    trigger: str
    event_id: str | None
    ingest_status: int | None
    outcome: str = "missing"


class Stack:
    """Azurite, the ClientTrack stand-in and devhost, started in that order."""

    def __init__(
        self,
        *,
        port: int,
        clienttrack_port: int,
        settings_file: Path,
        run_dir: Path,
        azurite_location: Path,
        azurite_ports: AzuritePorts,
        clienttrack_arguments: Sequence[str] = (),
    ) -> None:
        self.port = port
        self.clienttrack_arguments = list(clienttrack_arguments)
        self.clienttrack_port = clienttrack_port
        self.settings_file = settings_file
        self.run_dir = run_dir
        self.azurite = Azurite(azurite_location, azurite_ports, log_file=run_dir / "azurite.log")
        self.values = read_local_values(settings_file)
        self.processes: list[ManagedProcess] = []

    @property
    def connection_string(self) -> str:
        return self.azurite.connection_string

    @property
    def queue_name(self) -> str:
        return self.values.get("ONFLEET_EVENTS_QUEUE", "onfleet-events")

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.azurite.start()
        clienttrack_url = f"http://127.0.0.1:{self.clienttrack_port}{DEFAULT_PATH}"
        env = {
            "AzureWebJobsStorage": self.connection_string,
            "CLIENTTRACK_INTEGRATION_QUEUE_URL": clienttrack_url,
        }
        self.processes.append(
            clienttrack_process(
                self.clienttrack_port,
                self.settings_file,
                self.run_dir,
                *self.clienttrack_arguments,
            )
        )
        self.processes.append(devhost_process(self.port, self.settings_file, self.run_dir, env))
        for process in self.processes:
            process.start()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.azurite.stop()

    def webhook_url(self, customer_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/onfleet/webhooks/{customer_id}"


def _default_ports_free() -> bool:
    ports = DEFAULT_AZURITE_PORTS
    return not any(port_accepts(port) for port in (ports.blob, ports.queue, ports.table))


def _delivered_event_ids(record_path: Path) -> set[str]:
    delivered: set[str] = set()
    try:
        lines = record_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return delivered
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        status = record.get("status")
        body = record.get("body")
        if isinstance(status, int) and 200 <= status < 300 and isinstance(body, dict):
            delivered.add(str(body.get("eventId")))
    return delivered


def _parked_event_ids(connection_string: str, queue_name: str) -> set[str]:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    parked: set[str] = set()
    with QueueClient.from_connection_string(connection_string, queue_name + "-poison") as queue:
        try:
            messages = queue.peek_messages(max_messages=32)
        except ResourceNotFoundError:
            return parked
    for message in messages:
        try:
            parked.add(decode_queue_text(message.content).event_id)
        except EnvelopeError:
            continue
    return parked


def _trigger_name(path: Path) -> str:
    try:
        document = json.loads(path.read_bytes())
    except ValueError:
        return "-"
    name = document.get("triggerName") if isinstance(document, dict) else None
    return str(name) if name else "-"


def run_demo(stack: Stack, customer_id: str, timeout_seconds: float) -> int:
    """Send every sample, wait for each event, print the table; return the exit code."""
    url = stack.webhook_url(customer_id)
    check = base64.urlsafe_b64encode(b"onfleet-handshake").decode()
    handshake = asyncio.run(check_handshake(url, check))
    print(
        f"handshake GET {url}?check=... -> {handshake.status} "
        f"({'echoed' if handshake.echoed else 'NOT echoed'})"
    )

    files = sorted(SAMPLES_DIRECTORY.glob("*.json"))
    key = signing_key(stack.values, customer_id)
    results: list[SendResult] = asyncio.run(post_files(url, files, key))
    rows = {
        result.file.name: DemoRow(
            result.file.name, _trigger_name(result.file), result.event_id, result.status
        )
        for result in results
    }
    record_path = stack.run_dir / "clienttrack-requests.jsonl"
    deadline = time.monotonic() + timeout_seconds
    while True:
        delivered = _delivered_event_ids(record_path)
        parked = _parked_event_ids(stack.connection_string, stack.queue_name)
        for row in rows.values():
            if row.event_id in delivered:
                row.outcome = "delivered"
            elif row.event_id in parked:
                row.outcome = "parked"
        waiting = [row for row in rows.values() if row.outcome == "missing" and row.event_id]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.25)

    print()
    print(f"{'sample':<48} {'trigger':<28} {'ingest':>6}  {'event id':<14} outcome")
    for row in sorted(rows.values(), key=lambda r: r.file):
        status = "-" if row.ingest_status is None else str(row.ingest_status)
        event = (row.event_id or "-")[:12]
        print(f"{row.file:<48} {row.trigger:<28} {status:>6}  {event:<14} {row.outcome}")
    arrived = sum(row.outcome != "missing" for row in rows.values())
    print(
        f"\n{arrived} of {len(rows)} events arrived "
        f"({sum(r.outcome == 'delivered' for r in rows.values())} delivered, "
        f"{sum(r.outcome == 'parked' for r in rows.values())} parked)."
    )
    return 0 if handshake.ok and arrived == len(rows) else 1


class _LogFollower:
    """New complete lines of a growing log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(self.position)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.position += len(complete)
        return complete.decode("utf-8", errors="replace").splitlines()


def _follow_until_interrupt(stack: Stack) -> int:
    """Echo each event ClientTrack received and each delivery that did not succeed.

    Returns 0 on SIGINT or SIGTERM, and 1 when a child process exits on its own.
    """
    stop = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    clienttrack = _LogFollower(stack.run_dir / "clienttrack.log")
    devhost = _LogFollower(stack.run_dir / "devhost.log")
    while not stop:
        for line in clienttrack.new_lines():
            print(f"clienttrack | {line}", flush=True)
        for line in devhost.new_lines():
            if "Delivery customer=" in line and "outcome=delivered" not in line:
                print(f"devhost     | {line}", flush=True)
        for process in stack.processes:
            if not process.running:
                print(
                    f"error: {process.name} exited with code {process.returncode}; "
                    f"see {process.log_path}:\n{process.log_tail()}",
                    file=sys.stderr,
                )
                return 1
        time.sleep(0.2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devhost.stack",
        description="Run Azurite, the ClientTrack stand-in and the Functions runner together.",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="send every sample, wait for each event, print a table and exit",
    )
    parser.add_argument(
        "--port", type=int, help="runner HTTP port (default 7071; the demo picks a free port)"
    )
    parser.add_argument(
        "--clienttrack-port",
        type=int,
        help="ClientTrack stand-in port (default 7072; the demo picks a free port)",
    )
    faults = parser.add_argument_group("faults injected by the ClientTrack stand-in")
    faults.add_argument("--fail-rate", help="fraction of requests answered with a failure")
    faults.add_argument("--statuses", help="failure statuses, such as 500,429 (default 500)")
    faults.add_argument("--retry-after", help="Retry-After seconds sent with 429 and 503")
    faults.add_argument("--delay-ms", help="milliseconds before each answer")
    faults.add_argument(
        "--drop-connection-rate", help="fraction of requests whose connection is dropped"
    )
    parser.add_argument(
        "--settings",
        type=Path,
        help="settings file (default: local.settings.json, else the example)",
    )
    parser.add_argument(
        "--customer",
        default=DEFAULT_CUSTOMER,
        help=f"customer id used by the demo (default {DEFAULT_CUSTOMER})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEMO_TIMEOUT_SECONDS,
        help="seconds the demo waits for events (default 90)",
    )
    args = parser.parse_args(argv)

    settings_file = local_settings_path(args.settings)
    run_dir = PROJECT_ROOT / ".run"
    temporary: Path | None = None
    port = args.port or (free_port() if args.demo else 7071)
    clienttrack_port = args.clienttrack_port or (free_port() if args.demo else 7072)
    if args.demo:
        # A demo starts from empty storage on free ports, so it neither sees earlier runs'
        # messages nor collides with an Azurite the developer already runs.
        temporary = Path(tempfile.mkdtemp(prefix="bridge-demo-"))
        run_dir = temporary
        location = temporary / "azurite"
        ports = AzuritePorts(free_port(), free_port(), free_port())
    else:
        location = PROJECT_ROOT / ".azurite"
        if _default_ports_free():
            ports = DEFAULT_AZURITE_PORTS
        else:
            ports = AzuritePorts(free_port(), free_port(), free_port())
            print("Ports 10000-10002 are taken; Azurite uses free ports instead.")

    if not args.demo:
        taken = [number for number in (port, clienttrack_port) if port_accepts(number)]
        if taken:
            print(
                f"error: port {taken[0]} is already in use; stop what listens there or choose "
                "other ports with --port and --clienttrack-port.",
                file=sys.stderr,
            )
            return 1
    clienttrack_arguments: list[str] = []
    for option in ("fail_rate", "statuses", "retry_after", "delay_ms", "drop_connection_rate"):
        value = getattr(args, option)
        if value is not None:
            clienttrack_arguments += ["--" + option.replace("_", "-"), value]

    stack = Stack(
        port=port,
        clienttrack_port=clienttrack_port,
        settings_file=settings_file,
        run_dir=run_dir,
        azurite_location=location,
        azurite_ports=ports,
        clienttrack_arguments=clienttrack_arguments,
    )
    try:
        stack.start()
        if args.demo:
            code = run_demo(stack, args.customer, args.timeout)
            if code != 0:
                for process in stack.processes:
                    print(f"\n--- {process.name} log (last lines) ---\n{process.log_tail()}")
            return code
        print(f"Settings:       {settings_file}")
        print(f"Webhook URL:    {stack.webhook_url(args.customer)}")
        print(f"ClientTrack:    http://127.0.0.1:{clienttrack_port}{DEFAULT_PATH}")
        print(f"Logs:           {run_dir}")
        print(f"Storage:        AzureWebJobsStorage='{stack.connection_string}'")
        print(
            "Send a sample:  .venv/bin/python -m devhost.send --customer "
            f"{args.customer} --url {stack.webhook_url(args.customer)}"
        )
        print(
            "Poison queue:   .venv/bin/python -m ops.poison status --connection-string "
            f"'{stack.connection_string}'"
        )
        print("Press Ctrl-C to stop.")
        return _follow_until_interrupt(stack)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
