"""Start and stop the Azurite storage emulator for local runs, tests and benchmarks.

Azurite comes from the project's package.json (`npm ci`), so every machine runs the pinned
version. It is started with `--skipApiVersionCheck`, because the Python SDK speaks a newer
service version than Azurite knows, and `--disableTelemetry`, bound to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
# Well-known development account of every Storage emulator; not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class AzuritePorts:
    blob: int
    queue: int
    table: int


def connection_string(ports: AzuritePorts, host: str = "127.0.0.1") -> str:
    """Build the connection string of an Azurite instance on the given ports."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{ports.blob}/{ACCOUNT_NAME};"
        f"QueueEndpoint=http://{host}:{ports.queue}/{ACCOUNT_NAME};"
        f"TableEndpoint=http://{host}:{ports.table}/{ACCOUNT_NAME};"
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Azurite:
    """One Azurite process with its data directory."""

    def __init__(self, location: Path, ports: AzuritePorts, *, log_file: Path | None = None):
        self.location = location
        self.ports = ports
        self.log_file = log_file or location / "azurite.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.ports)

    def start(self) -> None:
        """Start Azurite and wait until all three services accept connections."""
        if not AZURITE_BIN.exists():
            raise RuntimeError(
                f"Azurite is not installed at {AZURITE_BIN}; run `npm ci` in {PROJECT_ROOT}."
            )
        self.location.mkdir(parents=True, exist_ok=True)
        command = [
            str(AZURITE_BIN),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--loose",
            "--location", str(self.location),
            "--blobHost", "127.0.0.1", "--blobPort", str(self.ports.blob),
            "--queueHost", "127.0.0.1", "--queuePort", str(self.ports.queue),
            "--tableHost", "127.0.0.1", "--tablePort", str(self.ports.table),
        ]  # fmt: skip
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for port in (self.ports.blob, self.ports.queue, self.ports.table):
            while not _accepts(port):
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"Azurite exited with code {self.process.returncode}; see {self.log_file}."
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"Azurite did not listen on port {port} within "
                        f"{START_TIMEOUT_SECONDS:g} s; see {self.log_file}."
                    )
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the process this object started, keeping its data directory."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def running_azurite(location: Path | None = None) -> Iterator[Azurite]:
    """Run Azurite on free ports for the duration of the block; remove a temporary location."""
    temporary = location is None
    path = location or Path(tempfile.mkdtemp(prefix="azurite-"))
    azurite = Azurite(path, AzuritePorts(free_port(), free_port(), free_port()))
    azurite.start()
    try:
        yield azurite
    finally:
        azurite.stop()
        if temporary:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devhost.azurite",
        description="Run Azurite on 127.0.0.1 and print its connection string.",
    )
    parser.add_argument(
        "--location",
        type=Path,
        default=PROJECT_ROOT / ".azurite",
        help="data directory (default: .azurite in the project)",
    )
    parser.add_argument("--blob-port", type=int, default=10000, help="0 picks a free port")
    parser.add_argument("--queue-port", type=int, default=10001, help="0 picks a free port")
    parser.add_argument("--table-port", type=int, default=10002, help="0 picks a free port")
    parser.add_argument(
        "--print-file",
        type=Path,
        help="also write the connection string to this file once Azurite is ready",
    )
    args = parser.parse_args(argv)

    ports = AzuritePorts(
        args.blob_port or free_port(),
        args.queue_port or free_port(),
        args.table_port or free_port(),
    )
    azurite = Azurite(args.location, ports)
    azurite.start()
    print(azurite.connection_string, flush=True)
    if args.print_file is not None:
        partial = args.print_file.with_suffix(".partial")
        partial.write_text(azurite.connection_string, encoding="utf-8")
        partial.replace(args.print_file)
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        while not stop and azurite.process is not None and azurite.process.poll() is None:
            time.sleep(0.2)
    finally:
        azurite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
