"""The webhook request: handshake, signature check and durable enqueue.

`IngestHandler.handle` takes the parts of an HTTP request and returns the response to send.
It never answers 200 to a signed POST before the envelope is in the queue; every rejection
is a 4xx with a one-line plain-text reason, and store or queue trouble is a 503 so Onfleet
retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.envelope import CUSTOMER_ID, build_envelope, compute_event_id
from shared.errors import (
    ConfigurationError,
    SecretStoreUnavailable,
    SignatureError,
    StorageUnavailable,
)
from shared.secrets import CachedSecrets, webhook_secret_name
from shared.settings import Settings
from shared.signature import SIGNATURE_HEADER, parse_secrets, verify
from shared.storage import EventStorage

logger = logging.getLogger(__name__)

MAX_CHECK_CHARS = 1024
# Parsed keys are cached by stored value, so a rotated secret is parsed once.
MAX_PARSED_SECRET_VALUES = 4096

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


@dataclass(frozen=True)
class IngestResponse:
    """The response the HTTP trigger sends."""

    status: int
    body: str
    content_type: str = _TEXT
    headers: dict[str, str] = field(default_factory=dict)


class _UnknownCustomer(Exception):
    pass


class IngestHandler:
    """Handler of Onfleet's requests for one worker, sharing its secret cache and queue client."""

    def __init__(self, settings: Settings, secrets: CachedSecrets, storage: EventStorage) -> None:
        self.settings = settings
        self.secrets = secrets
        self.storage = storage
        self._parsed: dict[str, list[bytes]] = {}

    async def handle(
        self,
        method: str,
        customer_id: str,
        *,
        check: str | None,
        headers: Mapping[str, str],
        body: bytes,
    ) -> IngestResponse:
        """Handle one request to `/onfleet/webhooks/<customer_id>` and return the response."""
        method = method.upper()
        if not CUSTOMER_ID.match(customer_id):
            # The id is not echoed: it is attacker-controlled text of any length.
            _log(
                f"<invalid, {len(customer_id)} characters>", None, None, 404, "invalid-customer-id"
            )
            return _text(404, "Not found: unknown customer.")
        if method == "GET":
            return await self._handshake(customer_id, check)
        if method == "POST":
            return await self._event(customer_id, headers, body)
        return _text(
            405, f"Method {method[:16]} is not allowed; use GET or POST.", {"Allow": "GET, POST"}
        )

    async def _handshake(self, customer_id: str, check: str | None) -> IngestResponse:
        if not check:
            _log(customer_id, None, None, 400, "handshake-check-missing")
            return _text(400, "Bad request: query parameter check is missing or empty.")
        if len(check) > MAX_CHECK_CHARS:
            _log(customer_id, None, None, 400, f"handshake-check-too-long ({len(check)} chars)")
            return _text(400, f"Bad request: check is longer than {MAX_CHECK_CHARS} characters.")
        try:
            await asyncio.wait_for(
                self._keys(customer_id), timeout=self.settings.ingest_timeout_seconds
            )
        except _UnknownCustomer:
            return _text(404, "Not found: unknown customer.")
        except (SecretStoreUnavailable, ConfigurationError, TimeoutError) as error:
            return self._unavailable(customer_id, None, error)
        _log(customer_id, None, None, 200, "handshake")
        return _text(200, check)

    async def _event(
        self, customer_id: str, headers: Mapping[str, str], body: bytes
    ) -> IngestResponse:
        limit = self.settings.max_webhook_body_bytes
        if len(body) > limit:
            _log(customer_id, None, None, 413, f"too-large ({len(body)} bytes)")
            return _text(413, f"Payload too large: {len(body)} bytes, the limit is {limit}.")
        try:
            async with asyncio.timeout(self.settings.ingest_timeout_seconds):
                await self._verify(customer_id, headers.get(SIGNATURE_HEADER), body)
                envelope = build_envelope(customer_id, body)
                if not self.settings.forwards(envelope.trigger_name):
                    _log(
                        customer_id,
                        envelope.event_id,
                        envelope.trigger_name,
                        200,
                        "skipped (trigger not forwarded)",
                    )
                    return _json(200, {"eventId": envelope.event_id, "forwarded": False})
                await self.storage.enqueue(envelope)
        except _UnknownCustomer:
            return _text(404, "Not found: unknown customer.")
        except SignatureError as error:
            _log(
                customer_id,
                compute_event_id(customer_id, body),
                None,
                401,
                f"signature-rejected ({error})",
            )
            return _text(401, f"Unauthorized: {error}")
        except (
            SecretStoreUnavailable,
            StorageUnavailable,
            ConfigurationError,
            TimeoutError,
        ) as error:
            return self._unavailable(customer_id, compute_event_id(customer_id, body), error)

        _log(customer_id, envelope.event_id, envelope.trigger_name, 200, "enqueued")
        return _json(200, {"eventId": envelope.event_id})

    async def _keys(self, customer_id: str, *, max_age_seconds: float | None = None) -> list[bytes]:
        name = webhook_secret_name(customer_id)
        value = await self.secrets.get(name, max_age_seconds=max_age_seconds)
        if value is None:
            _log(customer_id, None, None, 404, f"unknown-customer (secret {name} not found)")
            raise _UnknownCustomer
        keys = self._parsed.get(value)
        if keys is None:
            keys = parse_secrets(value, secret_name=name)
            if len(self._parsed) >= MAX_PARSED_SECRET_VALUES:
                self._parsed.clear()
            self._parsed[value] = keys
        return keys

    async def _verify(self, customer_id: str, signature: str | None, body: bytes) -> None:
        keys = await self._keys(customer_id)
        try:
            verify(body, signature, keys)
            return
        except SignatureError:
            if signature is None or not signature.strip():
                raise
            name = webhook_secret_name(customer_id)
            age = self.secrets.age_seconds(name)
            if age is not None and age < self.settings.secret_refresh_min_seconds:
                raise
        # The secret may have been rotated since it was cached: read it again, which the
        # age check above limits to once per SECRET_REFRESH_MIN_SECONDS per customer.
        fresh = await self._keys(customer_id, max_age_seconds=0.0)
        verify(body, signature, fresh)

    def _unavailable(
        self, customer_id: str, event_id: str | None, error: BaseException
    ) -> IngestResponse:
        if isinstance(error, TimeoutError):
            detail = (
                f"secret read and enqueue took longer than "
                f"{self.settings.ingest_timeout_seconds:g} s"
            )
        else:
            detail = str(error)
        _log(customer_id, event_id, None, 503, f"unavailable ({detail})", level=logging.ERROR)
        return _text(
            503,
            "Service unavailable: the event was not accepted; retry later.",
            {"Retry-After": "10"},
        )


def _log(
    customer_id: str,
    event_id: str | None,
    trigger_name: str | None,
    status: int,
    outcome: str,
    *,
    level: int = logging.INFO,
) -> None:
    """Write the one line per request: ids first, then status and outcome."""
    logger.log(
        level,
        "Webhook customer=%s event=%s trigger=%s status=%d outcome=%s",
        customer_id,
        event_id or "-",
        trigger_name or "-",
        status,
        outcome,
    )


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> IngestResponse:
    return IngestResponse(
        status, message, _TEXT, {"X-Content-Type-Options": "nosniff", **(headers or {})}
    )


def _json(status: int, document: dict[str, object]) -> IngestResponse:
    return IngestResponse(
        status, json.dumps(document), _JSON, {"X-Content-Type-Options": "nosniff"}
    )
