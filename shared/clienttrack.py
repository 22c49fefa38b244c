"""The ClientTrack integration queue API client.

One `httpx.AsyncClient` per worker keeps connections to API Management alive across events.
Responses and transport errors are sorted here into the delivery outcomes the processor acts
on: success, `TransientDeliveryError` (retry later), `CredentialsRejected` (re-read the
customer's keys once) and `PermanentDeliveryError` (park).
"""

from __future__ import annotations

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
# Seconds a request may wait for a free pooled connection before counting as a timeout.
POOL_TIMEOUT_SECONDS = 10.0
_API_KEY_SCHEME = re.compile(r"^apikey\s+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class CredentialsRejected(PermanentDeliveryError):
    """ClientTrack answered 401 or 403: the stored keys are wrong or were rotated."""


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
            response = await self._client.post(self.url, content=content, headers=headers)
        except httpx.TimeoutException as error:
            raise TransientDeliveryError(
                f"ClientTrack did not answer in time ({type(error).__name__})."
            ) from None
        except httpx.TransportError as error:
            raise TransientDeliveryError(
                f"ClientTrack connection failed ({type(error).__name__})."
            ) from None

        status = response.status_code
        if 200 <= status < 300:
            return status
        detail = credentials.redact(_CONTROL.sub(" ", response.text[:MAX_DETAIL_CHARS]).strip())
        message = f"ClientTrack answered HTTP {status}" + (f": {detail}" if detail else ".")
        if status in TRANSIENT_STATUSES or status >= 500:
            raise TransientDeliveryError(
                message,
                status=status,
                retry_after_seconds=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status in AUTH_STATUSES:
            raise CredentialsRejected(message, status=status)
        raise PermanentDeliveryError(message, status=status)

    async def close(self) -> None:
        await self._client.aclose()
