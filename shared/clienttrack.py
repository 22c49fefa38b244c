"""The ClientTrack integration queue API client.

One `httpx.AsyncClient` per worker keeps connections to API Management alive across events.
Responses and transport errors are sorted here into the delivery outcomes the processor acts
on: success, `TransientDeliveryError` (retry later), `CredentialsRejected` (re-read the
customer's keys once) and `PermanentDeliveryError` (park).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

import httpx

from shared.backoff import parse_retry_after
from shared.errors import PermanentDeliveryError, TransientDeliveryError
from shared.settings import Settings

logger = logging.getLogger(__name__)
# httpx logs every request at INFO; the processor's own line per attempt already carries the
# status together with the customer and event ids.
logging.getLogger("httpx").setLevel(logging.WARNING)

TRANSIENT_STATUSES = frozenset({408, 425, 429})
AUTH_STATUSES = frozenset({401, 403})
# The response text kept in a failure record: enough to tell APIM's errors apart.
MAX_DETAIL_CHARS = 200
# Bytes read from a non-2xx answer to find that detail; the rest is discarded.
MAX_ERROR_BODY_BYTES = 4096
# Seconds a request may wait for a free pooled connection before counting as a timeout.
POOL_TIMEOUT_SECONDS = 10.0
_API_KEY_SCHEME = re.compile(r"^apikey\s+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class CredentialsRejected(PermanentDeliveryError):
    """ClientTrack responded 401 or 403, so the stored keys are wrong or were rotated."""


@dataclass(frozen=True)
class Credentials:
    """One customer's ClientTrack keys."""

    subscription_key: str
    api_key: str

    def authorization(self) -> str:
        """Build the Authorization value, keeping a stored `ApiKey ` prefix as it is."""
        if _API_KEY_SCHEME.match(self.api_key):
            return self.api_key
        return f"ApiKey {self.api_key}"

    def redact(self, text: str) -> str:
        """Remove both keys from text that came back from the server.

        An API key stored with its `ApiKey ` prefix is also removed without the prefix,
        because a server may echo the key alone.
        """
        bare_api_key = _API_KEY_SCHEME.sub("", self.api_key)
        for secret in (self.subscription_key, self.api_key, bare_api_key):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text


class ClientTrackClient:
    """Posts events to the integration queue endpoint over a pooled HTTP client."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        self.url = settings.clienttrack_url
        self._call_timeout_seconds = (
            settings.clienttrack_connect_timeout_seconds + settings.clienttrack_read_timeout_seconds
        )
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.clienttrack_connect_timeout_seconds,
                read=settings.clienttrack_read_timeout_seconds,
                write=settings.clienttrack_read_timeout_seconds,
                pool=POOL_TIMEOUT_SECONDS,
            ),
            limits=httpx.Limits(
                max_connections=settings.clienttrack_max_connections,
                max_keepalive_connections=settings.clienttrack_max_connections,
            ),
            transport=transport,
            follow_redirects=False,
        )

    async def post_event(self, content: bytes, *, event_id: str, credentials: Credentials) -> int:
        """Send one event; return the 2xx status or raise a `DeliveryError` subclass."""
        headers = {
            "Ocp-Apim-Subscription-Key": credentials.subscription_key,
            "Authorization": credentials.authorization(),
            "Content-Type": "application/json",
            "Idempotency-Key": event_id,
        }
        try:
            # httpx's timeouts bound each socket operation; a server that trickles its answer
            # one byte at a time would pass them, so the whole call has a deadline too.
            async with asyncio.timeout(self._call_timeout_seconds):
                status, retry_after, text = await self._send(content, headers)
        except (httpx.TimeoutException, TimeoutError) as error:
            raise TransientDeliveryError(
                f"ClientTrack request timed out ({type(error).__name__})."
            ) from None
        except httpx.TransportError as error:
            raise TransientDeliveryError(
                f"ClientTrack connection failed ({type(error).__name__})."
            ) from None

        if 200 <= status < 300:
            return status
        # Redact before shortening, so a key cut in half at the edge cannot leak its start.
        detail = credentials.redact(_CONTROL.sub(" ", text)).strip()[:MAX_DETAIL_CHARS]
        message = f"ClientTrack responded with HTTP {status}" + (f": {detail}" if detail else ".")
        if status in TRANSIENT_STATUSES or status >= 500:
            raise TransientDeliveryError(
                message, status=status, retry_after_seconds=parse_retry_after(retry_after)
            )
        if status in AUTH_STATUSES:
            raise CredentialsRejected(message, status=status)
        raise PermanentDeliveryError(message, status=status)

    async def _send(self, content: bytes, headers: dict[str, str]) -> tuple[int, str | None, str]:
        """Post and return the status, `Retry-After` and the start of the response text."""
        request = self._client.build_request("POST", self.url, content=content, headers=headers)
        response = await self._client.send(request, stream=True)
        try:
            received = bytearray()
            if not 200 <= response.status_code < 300:
                # Only the start of an error answer is kept, so a huge one is not read whole.
                async for chunk in response.aiter_bytes():
                    received += chunk
                    if len(received) >= MAX_ERROR_BODY_BYTES:
                        break
            text = bytes(received[:MAX_ERROR_BODY_BYTES]).decode("utf-8", errors="replace")
            return response.status_code, response.headers.get("Retry-After"), text
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self._client.aclose()
