"""Sign Onfleet sample bodies and post them to the bridge, as Onfleet would.

`python -m devhost.send` reads the customer's webhook secret
(`onfleet-webhook-secret-<customerId>`) from the local settings, signs the exact bytes of each
file with it (HMAC-SHA512 under the hex-decoded secret, in `X-Onfleet-Signature`) and posts
them to `http://127.0.0.1:7071/onfleet/webhooks/<customerId>`. When the stored value contains
several secrets for a rotation, the first one signs. It prints one line per request: the
file name, the HTTP status and the `eventId` of the JSON response.

`--check VALUE` performs the unsigned `GET ?check=VALUE` handshake instead. Onfleet accepts
a webhook only if the response is 200 with the body equal to VALUE.

`--repeat` and `--concurrency` turn it into a small load generator. Posting the same file
again yields the same `eventId`, as an Onfleet retry does. The exit code is 0 only if every
request got 200 (and, for `--check`, the value came back unchanged).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from devhost.clienttrack import PROJECT_ROOT, local_secrets, local_settings_path
from shared.errors import ConfigurationError
from shared.signature import SIGNATURE_HEADER, parse_secrets, sign

DEFAULT_CUSTOMER = "demo-foodbank"
DEFAULT_BASE_URL = "http://127.0.0.1:7071/onfleet/webhooks/"
SAMPLES_DIRECTORY = PROJECT_ROOT / "samples"
# Onfleet gives up on a webhook request after 10 seconds.
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_DETAIL_CHARS = 200


@dataclass(frozen=True)
class SendResult:
    """The outcome of posting one file once.

    `status` is None when no HTTP response arrived, and `detail` then names the error. For
    other non-200 responses `detail` contains the start of the response body.
    """

    file: Path
    status: int | None
    event_id: str | None
    detail: str
    elapsed_seconds: float

    @property
    def ok(self) -> bool:
        return self.status == 200

    def line(self) -> str:
        """Format the result as the printed line: file name, status, eventId or detail."""
        status = "error" if self.status is None else str(self.status)
        parts = [self.file.name, status, self.event_id or "-"]
        if self.detail:
            parts.append(self.detail)
        return " ".join(parts)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of the `?check=` handshake."""

    status: int | None
    echoed: bool
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.echoed


def signing_key(secrets: Mapping[str, str], customer_id: str) -> bytes:
    """Return the customer's first webhook secret, hex-decoded.

    Raises `ConfigurationError` naming the secret, never its value, when it is missing or
    not hex.
    """
    name = f"onfleet-webhook-secret-{customer_id}"
    stored = secrets.get(name)
    if stored is None or not stored.strip():
        raise ConfigurationError(
            f"Secret {name} is missing from the settings. Add it to Values or set the "
            "environment variable of that name."
        )
    return parse_secrets(stored, secret_name=name)[0]


def webhook_url(customer_id: str) -> str:
    return DEFAULT_BASE_URL + quote(customer_id, safe="")


async def post_files(
    url: str,
    files: Sequence[Path],
    key: bytes,
    *,
    repeat: int = 1,
    concurrency: int = 1,
    timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
    on_result: Callable[[SendResult], None] | None = None,
) -> list[SendResult]:
    """Post each file `repeat` times, at most `concurrency` at once, signed with `key`.

    Results are returned in completion order, and `on_result` is called with each one as it
    completes.
    """
    if repeat < 1 or concurrency < 1:
        raise ValueError(
            f"repeat and concurrency must be at least 1, got {repeat} and {concurrency}."
        )
    bodies = {path: path.read_bytes() for path in files}
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[SendResult] = []

    async with httpx.AsyncClient(timeout=timeout_seconds, limits=limits) as client:

        async def send(path: Path) -> None:
            async with slots:
                result = await _post_one(client, url, path, bodies[path], key)
            results.append(result)
            if on_result is not None:
                on_result(result)

        await asyncio.gather(*(send(path) for _ in range(repeat) for path in files))
    return results


async def _post_one(
    client: httpx.AsyncClient, url: str, path: Path, body: bytes, key: bytes
) -> SendResult:
    headers = {SIGNATURE_HEADER: sign(body, key), "Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as error:
        elapsed = time.perf_counter() - started
        return SendResult(path, None, None, f"{type(error).__name__}: {error}", elapsed)
    elapsed = time.perf_counter() - started

    event_id = _event_id(response)
    detail = "" if response.status_code == 200 else _first_line(response.text)
    return SendResult(path, response.status_code, event_id, detail, elapsed)


async def check_handshake(
    url: str, value: str, *, timeout_seconds: float = REQUEST_TIMEOUT_SECONDS
) -> CheckResult:
    """Send Onfleet's `GET ?check=` request and compare the body with `value`."""
    async with httpx.AsyncClient(timeout=timeout_seconds) as client:
        try:
            response = await client.get(url, params={"check": value})
        except httpx.HTTPError as error:
            return CheckResult(None, False, f"{type(error).__name__}: {error}")
    echoed = response.content == value.encode("utf-8")
    detail = "" if echoed else _first_line(response.text)
    return CheckResult(response.status_code, echoed, detail)


def _event_id(response: httpx.Response) -> str | None:
    try:
        document = response.json()
    except ValueError:
        return None
    event_id = document.get("eventId") if isinstance(document, dict) else None
    return event_id if isinstance(event_id, str) else None


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:MAX_DETAIL_CHARS] if lines else ""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number.") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1.")
    return value


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost.send",
        description="Sign Onfleet webhook bodies with a customer's secret and post them to the "
        "bridge, or perform the ?check= handshake.",
    )
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help="JSON files to post, sent byte for byte (default: every samples/*.json)",
    )
    parser.add_argument(
        "--customer",
        default=DEFAULT_CUSTOMER,
        help=f"customer id whose webhook secret signs the bodies (default: {DEFAULT_CUSTOMER})",
    )
    parser.add_argument(
        "--settings",
        type=Path,
        help="local settings file holding onfleet-webhook-secret-<customer> (default: "
        "local.settings.json, else local.settings.json.example); an environment variable of "
        "that name takes precedence",
    )
    parser.add_argument(
        "--url",
        help=f"webhook URL (default: {DEFAULT_BASE_URL}<customer>)",
    )
    parser.add_argument(
        "--check",
        metavar="VALUE",
        help="send GET ?check=VALUE instead of posting, and report whether VALUE came back",
    )
    parser.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        help="times to post each file (default: 1)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive,
        default=1,
        help="requests in flight at once (default: 1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=REQUEST_TIMEOUT_SECONDS,
        help=f"seconds to wait for each response (default: {REQUEST_TIMEOUT_SECONDS:g})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    url = args.url or webhook_url(args.customer)

    if args.check is not None:
        result = asyncio.run(check_handshake(url, args.check, timeout_seconds=args.timeout))
        status = "error" if result.status is None else str(result.status)
        echo = "echoed" if result.echoed else "not echoed"
        print(" ".join(part for part in ("check", status, echo, result.detail) if part))
        return 0 if result.ok else 1

    files: list[Path] = args.files or sorted(SAMPLES_DIRECTORY.glob("*.json"))
    if not files:
        print(f"error: no files given and none in {SAMPLES_DIRECTORY}.", file=sys.stderr)
        return 2
    try:
        key = signing_key(local_secrets(local_settings_path(args.settings)), args.customer)
        for path in files:
            if not path.is_file():
                raise ConfigurationError(f"File {path} does not exist.")
    except ConfigurationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    results = asyncio.run(
        post_files(
            url,
            files,
            key,
            repeat=args.repeat,
            concurrency=args.concurrency,
            timeout_seconds=args.timeout,
            on_result=lambda result: print(result.line(), flush=True),
        )
    )
    elapsed = time.perf_counter() - started
    succeeded = sum(result.ok for result in results)
    print(
        f"{succeeded} of {len(results)} requests got 200 in {elapsed:.2f} s "
        f"({len(results) / max(elapsed, 1e-9):.1f} requests/s)",
        file=sys.stderr,
    )
    return 0 if succeeded == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
