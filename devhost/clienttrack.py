"""A local stand-in for the ClientTrack integration queue, with fault injection.

`python -m devhost.clienttrack` listens on 127.0.0.1:7072 and accepts
`POST /api/integration/queue` the way the real endpoint behind Azure API Management does:

- `Ocp-Apim-Subscription-Key` must equal the secret `clienttrack-subscription-key-<customerId>`,
  else 401 with API Management's JSON error body.
- `Authorization: ApiKey <key>` must match `clienttrack-api-key-<customerId>` (stored with or
  without the `ApiKey ` prefix), else 403.
- The body must be the event object the bridge sends (`source`, `eventId`, `customerId`,
  trigger fields, `occurredAt`, `receivedAt`, `attempt` and the Onfleet `payload`), sent as
  `application/json` with `Idempotency-Key` equal to `eventId`, else 400 or 415 with a reason.

The customer comes from the body's `customerId`, so the secrets are looked up per request and
a secret changed at run time takes effect on the next request. Requests that pass these checks
are "accepted": they get a 200 response, or a scripted or injected failure, and are written as
JSON lines to the record file. Secret header values are stored only as SHA-256
fingerprints. `GET /_stats` returns counters for benchmarks.

Tests start the stand-in in their own event loop (`async with ClientTrackStandIn(...)`) or in a
background thread (`with ClientTrackStandIn(...)`), script responses with `script([500, 200])`
and read `requests` and the per-event counters afterwards.

This module also holds the pieces that `devhost.keyvault` and `devhost.send` share with it:
`LocalServer` (an aiohttp server that runs in-process or in a thread) and the reader of local
settings files.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import re
import signal
import ssl
import sys
import threading
from collections import ChainMap, Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from aiohttp import web

from shared.errors import ConfigurationError

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 7072
DEFAULT_PATH = "/api/integration/queue"
DEFAULT_RECORD_PATH = PROJECT_ROOT / ".run" / "clienttrack-requests.jsonl"
STATS_PATH = "/_stats"
START_TIMEOUT_SECONDS = 10.0
# How long stopping waits for requests in flight, such as ones held back by an injected delay.
SHUTDOWN_GRACE_SECONDS = 1.0
# The bridge caps Onfleet bodies at 1 MiB by default, and the event adds its own fields to that.
MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024
FINGERPRINT_HEX_DIGITS = 16

SUBSCRIPTION_KEY_HEADER = "Ocp-Apim-Subscription-Key"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
# Headers kept in records. The two credential headers are replaced by their fingerprints.
RECORDED_HEADERS = ("Content-Type", IDEMPOTENCY_KEY_HEADER, "User-Agent")
SECRET_HEADERS = (SUBSCRIPTION_KEY_HEADER, "Authorization")

# API Management's own wording for a missing or wrong subscription key.
MISSING_SUBSCRIPTION_KEY_MESSAGE = (
    "Access denied due to missing subscription key. Make sure to include subscription key "
    "when making requests to an API."
)
INVALID_SUBSCRIPTION_KEY_MESSAGE = (
    "Access denied due to invalid subscription key. Make sure to provide a valid key for an "
    "active subscription."
)

_EVENT_ID = re.compile(r"^[0-9a-f]{64}$")
_CUSTOMER_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_API_KEY_PREFIX = "apikey "
_FAILURE_MESSAGES = {
    408: "Request timeout.",
    425: "Too early.",
    429: "Rate limit is exceeded. Try again later.",
    500: "Internal server error.",
    502: "Bad gateway.",
    503: "Service unavailable.",
    504: "Gateway timeout.",
}


# --- local settings, shared with devhost.keyvault and devhost.send --------------------------


def local_settings_path(given: Path | None = None) -> Path:
    """Pick the local settings file: `given`, else local.settings.json, else the example."""
    if given is not None:
        return given
    own = PROJECT_ROOT / "local.settings.json"
    return own if own.exists() else PROJECT_ROOT / "local.settings.json.example"


def read_local_values(path: Path) -> dict[str, str]:
    """Read the `Values` object of a local.settings.json file as strings.

    Raises `ConfigurationError` naming the file when it is missing or not of that shape.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(
            f"Settings file {path} does not exist. Copy local.settings.json.example to "
            "local.settings.json or pass --settings."
        ) from None
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"Settings file {path} is not readable JSON: {error}") from None

    values = document.get("Values") if isinstance(document, dict) else None
    if not isinstance(values, dict):
        raise ConfigurationError(f'Settings file {path} has no "Values" object.')
    return {str(name): str(value) for name, value in values.items() if value is not None}


def local_secrets(path: Path) -> ChainMap[str, str]:
    """Return the settings of `path` with environment variables taking precedence."""
    return ChainMap(os.environ, read_local_values(path))


def fingerprint(value: str) -> str:
    """Return a short SHA-256 fingerprint that identifies a secret without revealing it."""
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
    return "sha256:" + digest[:FINGERPRINT_HEX_DIGITS]


# --- a server that runs in the caller's loop or in a thread ---------------------------------

_Server = TypeVar("_Server", bound="LocalServer")


class LocalServer:
    """An aiohttp server on a local port, run in the caller's event loop or in a thread.

    `async with server` (or `start`/`stop`) runs it in the running loop. `with server` (or
    `start_in_thread`/`stop_thread`) runs it in a daemon thread with its own loop, for
    synchronous callers. Port 0 picks a free port, which `port` shows once started.
    """

    scheme = "http"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        """Scheme, host and port of the server, without a trailing slash."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def build_app(self) -> web.Application:
        """Return the application to serve. Subclasses add their routes."""
        raise NotImplementedError

    async def start(self) -> None:
        """Start listening in the running event loop."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already running on {self.base_url}.")
        await self.on_start()
        runner = web.AppRunner(
            self.build_app(),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.server_ssl_context())
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            await self.on_stop()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening and close open connections. Stopping twice does nothing."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            await self.on_stop()

    def server_ssl_context(self) -> ssl.SSLContext | None:
        """Return the TLS context to serve with, or None for plain HTTP."""
        return None

    async def on_start(self) -> None:
        """Prepare resources before the socket opens. Subclasses override it."""

    async def on_stop(self) -> None:
        """Release what `on_start` prepared. Subclasses override it."""

    def start_in_thread(self) -> None:
        """Start the server in a daemon thread that runs its own event loop."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"{type(self).__name__}-loop", daemon=True
        )
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(START_TIMEOUT_SECONDS)
        except BaseException:
            _end_loop(loop, thread)
            raise
        self._thread_loop = loop
        self._thread = thread

    def stop_thread(self) -> None:
        """Stop a server started with `start_in_thread` and end its thread."""
        loop, thread = self._thread_loop, self._thread
        if loop is None or thread is None:
            return
        self._thread_loop = self._thread = None
        try:
            timeout = START_TIMEOUT_SECONDS + SHUTDOWN_GRACE_SECONDS
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        finally:
            _end_loop(loop, thread)

    async def __aenter__(self: _Server) -> _Server:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def __enter__(self: _Server) -> _Server:
        self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_thread()


def _end_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the client's connection without sending a response.

    The returned response is never written, because the transport is already gone; aiohttp
    only needs a value to return.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response()


# --- the ClientTrack stand-in ---------------------------------------------------------------


@dataclass(frozen=True)
class ScriptedResponse:
    """One planned response to an accepted request.

    `delay_seconds` of None uses the stand-in's configured delay. `drop_connection` closes the
    socket without a response, and then `status` is ignored.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_seconds: float | None = None
    drop_connection: bool = False
    body: Any = None


@dataclass(frozen=True)
class FaultSettings:
    """Random failures for accepted requests that no scripted response covers.

    A request is first dropped with probability `drop_connection_rate`; otherwise it fails
    with probability `fail_rate`, taking the next status of `statuses` in turn.
    `retry_after_seconds` is sent as `Retry-After` on injected 429 and 503 responses.
    """

    fail_rate: float = 0.0
    statuses: tuple[int, ...] = (500,)
    retry_after_seconds: float | None = None
    delay_seconds: float = 0.0
    drop_connection_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("fail_rate", "drop_connection_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate!r}.")
        if not self.statuses:
            raise ValueError("statuses must name at least one failure status.")
        for status in self.statuses:
            if not 400 <= status <= 599:
                raise ValueError(f"Failure status {status!r} is not a 4xx or 5xx status.")
        if self.delay_seconds < 0:
            raise ValueError(f"delay_seconds must not be negative, got {self.delay_seconds!r}.")


@dataclass(frozen=True)
class ReceivedRequest:
    """One request that reached the queue path, and the stand-in's response to it.

    `headers` contains fingerprints in place of the credential header values. `status` is None
    when the connection was dropped. `reason` says why a rejected request was rejected.
    """

    time: str
    status: int | None
    accepted: bool
    headers: dict[str, str]
    body: Any
    reason: str | None = None

    @property
    def event_id(self) -> str | None:
        return _body_field(self.body, "eventId")

    @property
    def customer_id(self) -> str | None:
        return _body_field(self.body, "customerId")

    @property
    def trigger_name(self) -> str | None:
        return _body_field(self.body, "triggerName")

    def to_record(self) -> dict[str, Any]:
        """Return the JSON object written to the record file."""
        return {
            "time": self.time,
            "status": self.status,
            "dropped": self.status is None,
            "headers": self.headers,
            "body": self.body,
        }


class _Rejection(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientTrackStandIn(LocalServer):
    """The ClientTrack integration queue on a local port.

    `secrets` maps secret names to values and is read on every request, so changing it
    takes effect at once. `record_path`, when given, receives one JSON line per accepted
    request. `requests` keeps every request in memory unless `keep_requests` is False, which
    long benchmark runs need; the counters are kept either way.
    """

    def __init__(
        self,
        secrets: Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = DEFAULT_PATH,
        faults: FaultSettings | None = None,
        record_path: Path | None = None,
        keep_requests: bool = True,
    ) -> None:
        super().__init__(host=host, port=port)
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}.")
        self.secrets = secrets
        self.path = path
        self.faults = faults or FaultSettings()
        self.record_path = record_path
        self.keep_requests = keep_requests
        self.requests: list[ReceivedRequest] = []
        self.received = 0
        self.attempts_by_event_id: Counter[str] = Counter()
        self.deliveries_by_event_id: Counter[str] = Counter()
        self.status_counts: Counter[int] = Counter()
        self.dropped = 0
        self._script: deque[ScriptedResponse] = deque()
        self._script_lock = threading.Lock()
        self._random = random.Random(self.faults.seed)
        self._failure_statuses = itertools.cycle(self.faults.statuses)
        self._record_file: IO[str] | None = None

    @property
    def url(self) -> str:
        """The integration queue URL to give the bridge."""
        return self.base_url + self.path

    @property
    def stats_url(self) -> str:
        return self.base_url + STATS_PATH

    @property
    def accepted_requests(self) -> list[ReceivedRequest]:
        return [request for request in self.requests if request.accepted]

    def script(self, responses: Iterable[int | ScriptedResponse]) -> None:
        """Queue responses for the next accepted requests, in arrival order.

        An integer is a status with no extra headers. Once the script runs out, the fault
        settings decide the responses again.
        """
        planned = [
            response if isinstance(response, ScriptedResponse) else ScriptedResponse(response)
            for response in responses
        ]
        with self._script_lock:
            self._script.extend(planned)

    @property
    def scripted_remaining(self) -> int:
        with self._script_lock:
            return len(self._script)

    def stats(self) -> dict[str, Any]:
        """Count received requests and sent responses, as served at `/_stats`."""
        deliveries = self.deliveries_by_event_id
        return {
            "received": self.received,
            "accepted": sum(self.attempts_by_event_id.values()),
            "delivered": sum(deliveries.values()),
            "dropped": self.dropped,
            "byStatus": {
                str(status): count for status, count in sorted(self.status_counts.items())
            },
            "distinctEventIds": len(self.attempts_by_event_id),
            "duplicates": sum(count - 1 for count in deliveries.values() if count > 1),
        }

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BODY_BYTES)
        app.router.add_post(self.path, self._handle_event)
        app.router.add_get(STATS_PATH, self._handle_stats)
        return app

    async def on_start(self) -> None:
        if self.record_path is not None:
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            self._record_file = self.record_path.open("a", encoding="utf-8")

    async def on_stop(self) -> None:
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _handle_event(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = _recorded_headers(request)
        body = _parse_json(raw)
        try:
            event = self._check(request, body)
        except _Rejection as rejection:
            return await self._reject(rejection, headers, body)

        event_id = event["eventId"]
        self.attempts_by_event_id[event_id] += 1
        planned = self._next_response()
        delay = (
            self.faults.delay_seconds if planned.delay_seconds is None else planned.delay_seconds
        )
        if delay > 0:
            await asyncio.sleep(delay)

        status = None if planned.drop_connection else planned.status
        received = ReceivedRequest(_now(), status, accepted=True, headers=headers, body=event)
        self._remember(received)
        logger.info(
            "%s %s %s %s",
            event_id,
            event["customerId"],
            event.get("triggerName"),
            "dropped" if status is None else status,
        )
        if status is None:
            self.dropped += 1
            return drop_connection(request)

        if 200 <= status <= 299:
            self.deliveries_by_event_id[event_id] += 1
        return _respond(planned, event_id, duplicate=self.deliveries_by_event_id[event_id] > 1)

    def _check(self, request: web.Request, body: Any) -> dict[str, Any]:
        """Apply API Management's and ClientTrack's checks in turn.

        Raises `_Rejection` with the status and reason of the first failed check.
        """
        subscription_key = request.headers.get(SUBSCRIPTION_KEY_HEADER)
        if not subscription_key:
            raise _Rejection(401, MISSING_SUBSCRIPTION_KEY_MESSAGE)
        if body is _NOT_JSON:
            raise _Rejection(400, "The request body is not valid JSON.")
        customer_id = _body_field(body, "customerId")
        if customer_id is None or not _CUSTOMER_ID.match(customer_id):
            raise _Rejection(
                400,
                "Field customerId is missing or invalid: expected 1 to 64 letters, digits "
                "and hyphens.",
            )

        expected_subscription_key = self.secrets.get(f"clienttrack-subscription-key-{customer_id}")
        if expected_subscription_key is None or not _same(
            subscription_key, expected_subscription_key.strip()
        ):
            raise _Rejection(401, INVALID_SUBSCRIPTION_KEY_MESSAGE)

        stored_api_key = self.secrets.get(f"clienttrack-api-key-{customer_id}")
        presented_api_key = _api_key_from_header(request.headers.get("Authorization"))
        if (
            stored_api_key is None
            or presented_api_key is None
            or not _same(presented_api_key, _strip_api_key_prefix(stored_api_key))
        ):
            raise _Rejection(
                403,
                f"The API key is missing or not valid for customer {customer_id}; send "
                "Authorization: ApiKey <key>.",
            )

        if request.content_type != "application/json":
            raise _Rejection(
                415,
                f"Content-Type {request.content_type!r} is not supported; send application/json.",
            )
        reason = event_shape_error(body)
        if reason is not None:
            raise _Rejection(400, reason)
        idempotency_key = request.headers.get(IDEMPOTENCY_KEY_HEADER)
        if idempotency_key is None:
            raise _Rejection(400, f"Header {IDEMPOTENCY_KEY_HEADER} is missing.")
        if idempotency_key != body["eventId"]:
            raise _Rejection(
                400,
                f"Header {IDEMPOTENCY_KEY_HEADER} ({idempotency_key!r}) does not equal "
                f"eventId ({body['eventId']!r}).",
            )
        return dict(body)

    async def _reject(
        self, rejection: _Rejection, headers: dict[str, str], body: Any
    ) -> web.Response:
        if self.faults.delay_seconds > 0:
            await asyncio.sleep(self.faults.delay_seconds)
        recorded_body = None if body is _NOT_JSON else body
        self._remember(
            ReceivedRequest(
                _now(),
                rejection.status,
                accepted=False,
                headers=headers,
                body=recorded_body,
                reason=rejection.message,
            )
        )
        logger.info(
            "rejected %s for customer %s: %s",
            rejection.status,
            _body_field(recorded_body, "customerId"),
            rejection.message,
        )
        return web.json_response(
            {"statusCode": rejection.status, "message": rejection.message},
            status=rejection.status,
        )

    def _next_response(self) -> ScriptedResponse:
        with self._script_lock:
            if self._script:
                return self._script.popleft()
        faults = self.faults
        if self._random.random() < faults.drop_connection_rate:
            return ScriptedResponse(drop_connection=True)
        if self._random.random() < faults.fail_rate:
            status = next(self._failure_statuses)
            headers: dict[str, str] = {}
            if status in (429, 503) and faults.retry_after_seconds is not None:
                headers["Retry-After"] = f"{faults.retry_after_seconds:g}"
            return ScriptedResponse(status, headers)
        return ScriptedResponse()

    def _remember(self, received: ReceivedRequest) -> None:
        self.received += 1
        if self.keep_requests:
            self.requests.append(received)
        if received.status is not None:
            self.status_counts[received.status] += 1
        if received.accepted and self._record_file is not None:
            # A local append is fast enough for the request rates a stand-in receives.
            self._record_file.write(json.dumps(received.to_record(), ensure_ascii=False) + "\n")
            self._record_file.flush()


_NOT_JSON: Any = object()


def event_shape_error(body: Any) -> str | None:
    """Return why `body` is not a well-formed integration queue event, or None if it is.

    Every documented field must be present. The trigger fields and `occurredAt` may be null,
    because Onfleet bodies do not always carry them. Unknown extra fields are allowed.
    """
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    required = (
        "source", "eventId", "customerId", "triggerId", "triggerName", "taskId", "workerId",
        "occurredAt", "receivedAt", "attempt", "payload",
    )  # fmt: skip
    missing = [name for name in required if name not in body]
    if missing:
        return f"Field(s) missing from the event: {', '.join(missing)}."
    if body["source"] != "onfleet":
        return f'Field source must be "onfleet", got {body["source"]!r}.'
    if not isinstance(body["eventId"], str) or not _EVENT_ID.match(body["eventId"]):
        return "Field eventId must be 64 lowercase hex digits (a SHA-256)."
    trigger_id = body["triggerId"]
    if trigger_id is not None and (isinstance(trigger_id, bool) or not isinstance(trigger_id, int)):
        return f"Field triggerId must be an integer or null, got {trigger_id!r}."
    for name in ("triggerName", "taskId", "workerId"):
        if body[name] is not None and not isinstance(body[name], str):
            return f"Field {name} must be a string or null, got {body[name]!r}."
    if body["occurredAt"] is not None and not _is_timestamp(body["occurredAt"]):
        return (
            "Field occurredAt must be an ISO 8601 time with a UTC offset or null, got "
            f"{body['occurredAt']!r}."
        )
    if not _is_timestamp(body["receivedAt"]):
        return (
            "Field receivedAt must be an ISO 8601 time with a UTC offset, got "
            f"{body['receivedAt']!r}."
        )
    attempt = body["attempt"]
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        return f"Field attempt must be an integer of at least 1, got {attempt!r}."
    if not isinstance(body["payload"], dict):
        return "Field payload must be the Onfleet body as a JSON object."
    return None


def _is_timestamp(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return False
    return parsed.tzinfo is not None


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON


def _body_field(body: Any, name: str) -> str | None:
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def _strip_api_key_prefix(stored: str) -> str:
    value = stored.strip()
    if value.lower().startswith(_API_KEY_PREFIX):
        return value[len(_API_KEY_PREFIX) :].strip()
    return value


def _api_key_from_header(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != _API_KEY_PREFIX.strip() or not credentials.strip():
        return None
    return credentials.strip()


def _recorded_headers(request: web.Request) -> dict[str, str]:
    headers = {name: request.headers[name] for name in RECORDED_HEADERS if name in request.headers}
    for name in SECRET_HEADERS:
        if name in request.headers:
            headers[name] = fingerprint(request.headers[name])
    return headers


def _respond(planned: ScriptedResponse, event_id: str, *, duplicate: bool) -> web.Response:
    status = planned.status
    if planned.body is not None:
        body = planned.body
    elif 200 <= status <= 299:
        body = {"eventId": event_id, "status": "queued", "duplicate": duplicate}
    else:
        reason = _FAILURE_MESSAGES.get(status, "The request failed.")
        body = {"statusCode": status, "message": reason}
    return web.json_response(body, status=status, headers=dict(planned.headers))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- command line ---------------------------------------------------------------------------


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1.") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1.")
    return value


def _statuses(text: str) -> tuple[int, ...]:
    try:
        statuses = tuple(int(part) for part in re.split(r"[\s,]+", text.strip()) if part)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of HTTP statuses such as 500,429."
        ) from None
    if not statuses or any(not 400 <= status <= 599 for status in statuses):
        raise argparse.ArgumentTypeError(
            f"{text!r} must list 4xx or 5xx statuses, such as 500,429."
        )
    return statuses


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost.clienttrack",
        description="Run a local ClientTrack integration queue that checks, records and "
        "optionally fails the events it receives.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--path",
        default=DEFAULT_PATH,
        help=f"path of the integration queue (default: {DEFAULT_PATH})",
    )
    parser.add_argument(
        "--settings",
        type=Path,
        help="local settings file holding the clienttrack-* secrets (default: "
        "local.settings.json, else local.settings.json.example); environment "
        "variables of the same names take precedence",
    )
    parser.add_argument(
        "--record",
        type=Path,
        default=DEFAULT_RECORD_PATH,
        help="JSON Lines file that receives every accepted request "
        "(default: .run/clienttrack-requests.jsonl)",
    )

    faults = parser.add_argument_group(
        "fault injection", "Failures apply only to requests that pass every check."
    )
    faults.add_argument(
        "--fail-rate",
        type=_rate,
        default=0.0,
        help="fraction of accepted requests that get a failure status, 0 to 1 (default: 0)",
    )
    faults.add_argument(
        "--statuses",
        type=_statuses,
        default=(500,),
        help="failure statuses, used in turn (default: 500)",
    )
    faults.add_argument(
        "--retry-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="Retry-After value sent with injected 429 and 503 responses",
    )
    faults.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="milliseconds to wait before responding to each request (default: 0)",
    )
    faults.add_argument(
        "--drop-connection-rate",
        type=_rate,
        default=0.0,
        help="fraction of accepted requests whose connection is closed without "
        "a response, 0 to 1 (default: 0)",
    )
    faults.add_argument(
        "--seed", type=int, default=None, help="random seed, so a run's failures can be reproduced"
    )
    return parser.parse_args(argv)


async def _serve(stand_in: ClientTrackStandIn, settings_path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    await stand_in.start()
    print(
        f"ClientTrack stand-in listening on {stand_in.url} (secrets from {settings_path}; "
        f"recording to {stand_in.record_path}; counters at {stand_in.stats_url})",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await stand_in.stop()
        print(f"ClientTrack stand-in stopped: {json.dumps(stand_in.stats())}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    settings_path = local_settings_path(args.settings)
    try:
        secrets = local_secrets(settings_path)
        faults = FaultSettings(
            fail_rate=args.fail_rate,
            statuses=args.statuses,
            retry_after_seconds=args.retry_after,
            delay_seconds=args.delay_ms / 1000.0,
            drop_connection_rate=args.drop_connection_rate,
            seed=args.seed,
        )
    except (ConfigurationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    stand_in = ClientTrackStandIn(
        secrets,
        host=args.host,
        port=args.port,
        path=args.path,
        faults=faults,
        record_path=args.record,
        keep_requests=False,
    )
    try:
        asyncio.run(_serve(stand_in, settings_path))
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
