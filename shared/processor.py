"""Delivery of one queued envelope to the ClientTrack integration queue.

`EventProcessor.process` ends every message in exactly one of these ways, and returns only
after the write that makes the outcome durable succeeded:

- delivered (2xx) or already delivered within the dedupe window;
- retry scheduled: the envelope is re-enqueued with `attempt + 1` and a visibility delay;
- parked: the envelope, with a `failure` record, is in the poison queue with no expiry.

The queue trigger then completes the original message. Anything unexpected, including a
failed follow-up write, propagates so the Functions host retries the original message and
moves it to `<queue>-poison` after `maxDequeueCount` tries.

Copies of one event id (an Onfleet retry, a queue redelivery, a replay) can arrive in the
same batch. Within one worker they are processed one at a time, so a later copy finds the
earlier copy's dedupe mark instead of calling ClientTrack a second time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.backoff import retry_delay_seconds
from shared.clienttrack import ClientTrackClient, Credentials, CredentialsRejected
from shared.dedupe import Claim, DeliveryLedger
from shared.envelope import (
    MAX_FAILURE_DETAIL_CHARS,
    Envelope,
    Failure,
    decode_envelope,
    utc_timestamp,
)
from shared.errors import (
    EnvelopeError,
    PermanentDeliveryError,
    SecretStoreUnavailable,
    StorageUnavailable,
    TransientDeliveryError,
)
from shared.secrets import CachedSecrets, api_key_name, subscription_key_name
from shared.settings import Settings
from shared.storage import EventStorage

logger = logging.getLogger(__name__)

# Delay before a copy whose event another invocation is delivering looks again.
BUSY_RECHECK_SECONDS = 10
_HEADER_VALUE = re.compile(r"^[\x21-\x7e][\x20-\x7e]*$")


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate-skipped"
    RETRY_SCHEDULED = "retry-scheduled"
    DEFERRED = "deferred-copy-in-flight"
    PARKED = "parked"


class Reason:
    """Failure reasons written to parked envelopes; operators filter on them."""

    PERMANENT_STATUS = "permanent-http-status"
    AUTH_REFUSED = "auth-refused"
    RETRIES_EXHAUSTED = "retries-exhausted"
    CONFIGURATION = "configuration"
    UNREADABLE_ENVELOPE = "unreadable-envelope"
    PAYLOAD_MISSING = "payload-missing"
    BODY_NOT_JSON = "body-not-json"
    UNEXPECTED_ERROR = "unexpected-error"

    ALL = (
        PERMANENT_STATUS, AUTH_REFUSED, RETRIES_EXHAUSTED, CONFIGURATION, UNREADABLE_ENVELOPE,
        PAYLOAD_MISSING, BODY_NOT_JSON, UNEXPECTED_ERROR,
    )  # fmt: skip


class _Park(Exception):
    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status


@dataclass
class _Turn:
    """The lock that copies of one event id take turns on, and how many hold or await it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class EventProcessor:
    """Delivers envelopes for one worker with shared clients and secret cache."""

    def __init__(
        self,
        settings: Settings,
        secrets: CachedSecrets,
        storage: EventStorage,
        *,
        client: ClientTrackClient | None = None,
        ledger: DeliveryLedger | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.secrets = secrets
        self.storage = storage
        self.client = client or ClientTrackClient(settings)
        self.ledger = ledger or DeliveryLedger(settings)
        self._rng = rng or random.Random()
        self._turns: dict[str, _Turn] = {}

    async def process(
        self, message: bytes, *, message_id: str = "-", dequeue_count: int = 1
    ) -> Outcome:
        """Deliver, reschedule or park one decoded queue message.

        An unexpected exception propagates so the Functions host retries the message. On the
        host's last try (`dequeue_count` at host.json's `maxDequeueCount`) the message is
        parked here instead, with reason `unexpected-error`. The host's own move to the
        poison queue keeps the default time to live, so that copy would expire in 7 days.
        """
        started = time.monotonic()
        try:
            envelope = decode_envelope(message)
        except EnvelopeError as error:
            await self._park_unreadable(message, message_id, error)
            return Outcome.PARKED

        try:
            async with self._one_copy_at_a_time(envelope.event_id):
                return await self._deliver(envelope, started)
        except Exception as error:
            if dequeue_count < self.settings.max_dequeue_count:
                raise
            logger.exception(
                "Delivery customer=%s event=%s failed unexpectedly on the host's last try",
                envelope.customer_id,
                envelope.event_id,
            )
            park = _Park(Reason.UNEXPECTED_ERROR, f"{type(error).__name__} on try {dequeue_count}")
            return await self._park(envelope, envelope.attempt + 1, park, started)

    @contextlib.asynccontextmanager
    async def _one_copy_at_a_time(self, event_id: str) -> AsyncIterator[None]:
        # Copies in one worker wait here, so the second finds the first's result instead of
        # a busy claim; across workers the ledger's claim keeps copies apart.
        turn = self._turns.setdefault(event_id, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[event_id]

    async def _deliver(self, envelope: Envelope, started: float) -> Outcome:
        attempt = envelope.attempt + 1
        try:
            claim = await self.ledger.claim(envelope.customer_id, envelope.event_id)
        except StorageUnavailable as error:
            # Delivering without the claim could repeat a delivery; waiting cannot lose one.
            return await self._retry(envelope, attempt, error, None, None, started)
        if claim is Claim.DELIVERED:
            self._log(envelope, attempt, None, started, Outcome.DUPLICATE)
            return Outcome.DUPLICATE
        if claim is Claim.BUSY:
            # Another invocation is delivering a copy right now; look again once it is done.
            await self.storage.enqueue(envelope, visibility_timeout_seconds=BUSY_RECHECK_SECONDS)
            self._log(
                envelope,
                attempt,
                None,
                started,
                Outcome.DEFERRED,
                f"look again in {BUSY_RECHECK_SECONDS} s",
            )
            return Outcome.DEFERRED

        delivered = False
        try:
            outcome = await self._attempt(envelope, attempt, started)
            delivered = outcome is Outcome.DELIVERED
            return outcome
        finally:
            if not delivered:
                await self.ledger.release(envelope.customer_id, envelope.event_id)

    async def _attempt(self, envelope: Envelope, attempt: int, started: float) -> Outcome:
        status: int | None = None
        try:
            content = await self._request_content(envelope, attempt)
            credentials = await self._credentials(envelope.customer_id)
            try:
                status = await self.client.post_event(
                    content, event_id=envelope.event_id, credentials=credentials
                )
            except CredentialsRejected:
                # The keys may have been rotated since they were cached: read them again,
                # at most once per SECRET_REFRESH_MIN_SECONDS, so a revoked key does not
                # turn every event into two Key Vault reads.
                credentials = await self._credentials(envelope.customer_id, fresh=True)
                status = await self.client.post_event(
                    content, event_id=envelope.event_id, credentials=credentials
                )
        except _Park as park:
            return await self._park(envelope, attempt, park, started)
        except CredentialsRejected as error:
            refused = _Park(Reason.AUTH_REFUSED, str(error), error.status)
            return await self._park(envelope, attempt, refused, started)
        except PermanentDeliveryError as error:
            rejected = _Park(Reason.PERMANENT_STATUS, str(error), error.status)
            return await self._park(envelope, attempt, rejected, started)
        except TransientDeliveryError as error:
            return await self._retry(
                envelope, attempt, error, error.status, error.retry_after_seconds, started
            )
        except SecretStoreUnavailable as error:
            return await self._retry(envelope, attempt, error, None, None, started)

        await self.ledger.mark_delivered(envelope.customer_id, envelope.event_id)
        self._log(envelope, attempt, status, started, Outcome.DELIVERED)
        return Outcome.DELIVERED

    async def _request_content(self, envelope: Envelope, attempt: int) -> bytes:
        body = envelope.inline_body()
        if body is None:
            assert envelope.body_blob is not None
            try:
                body = await self.storage.read_payload(envelope.body_blob)
            except EnvelopeError as error:
                raise _Park(error.reason, str(error)) from None
        try:
            payload = json.loads(body, parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _Park(
                Reason.BODY_NOT_JSON,
                f"Onfleet body of event {envelope.event_id} is not JSON ({len(body)} bytes).",
            ) from None
        document: dict[str, Any] = {
            "source": "onfleet",
            "eventId": envelope.event_id,
            "customerId": envelope.customer_id,
            "triggerId": envelope.trigger_id,
            "triggerName": envelope.trigger_name,
            "taskId": envelope.task_id,
            "workerId": envelope.worker_id,
            "occurredAt": _millis_to_iso(envelope.onfleet_time),
            "receivedAt": envelope.received_at,
            "attempt": attempt,
            "payload": payload,
        }
        try:
            text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # A \ud83d escape without its pair (a note cut inside an emoji) parses to a lone
            # surrogate, which UTF-8 cannot carry; ASCII escapes keep the text as sent.
            return json.dumps(document, separators=(",", ":")).encode("ascii")
        except RecursionError:
            raise _Park(
                Reason.BODY_NOT_JSON,
                f"Onfleet body of event {envelope.event_id} is nested too deeply to forward.",
            ) from None

    async def _credentials(self, customer_id: str, *, fresh: bool = False) -> Credentials:
        names = (subscription_key_name(customer_id), api_key_name(customer_id))
        max_age = self.settings.secret_refresh_min_seconds if fresh else None
        values = [await self.secrets.get(name, max_age_seconds=max_age) for name in names]
        missing = [name for name, value in zip(names, values, strict=True) if value is None]
        if missing:
            raise _Park(
                Reason.CONFIGURATION,
                f"ClientTrack secrets missing for customer {customer_id}: {', '.join(missing)}.",
            )
        subscription_key, api_key = (value.strip() for value in values if value is not None)
        for name, value in zip(names, (subscription_key, api_key), strict=True):
            if not _HEADER_VALUE.match(value):
                raise _Park(
                    Reason.CONFIGURATION,
                    f"ClientTrack secret {name} is empty or holds characters an HTTP header "
                    "cannot carry; store the key as printable ASCII.",
                )
        return Credentials(subscription_key=subscription_key, api_key=api_key)

    async def _retry(
        self,
        envelope: Envelope,
        attempt: int,
        error: Exception,
        status: int | None,
        retry_after: float | None,
        started: float,
    ) -> Outcome:
        if attempt >= self.settings.max_delivery_attempts:
            park = _Park(Reason.RETRIES_EXHAUSTED, f"Last error: {error}", status)
            return await self._park(envelope, attempt, park, started)
        delay = retry_delay_seconds(
            attempt,
            base_seconds=self.settings.retry_base_seconds,
            cap_seconds=self.settings.retry_max_delay_seconds,
            retry_after_seconds=retry_after,
            rng=self._rng,
        )
        await self.storage.enqueue(envelope.with_attempt(attempt), visibility_timeout_seconds=delay)
        self._log(
            envelope,
            attempt,
            status,
            started,
            Outcome.RETRY_SCHEDULED,
            f"retry in {delay} s: {error}",
        )
        return Outcome.RETRY_SCHEDULED

    async def _park(self, envelope: Envelope, attempt: int, park: _Park, started: float) -> Outcome:
        failure = Failure(
            reason=park.reason,
            status=park.status,
            detail=park.detail[:MAX_FAILURE_DETAIL_CHARS],
            at=utc_timestamp(),
            attempts=attempt,
        )
        await self.storage.park(envelope.with_attempt(attempt).with_failure(failure))
        self._log(
            envelope,
            attempt,
            park.status,
            started,
            Outcome.PARKED,
            f"{park.reason}: {failure.detail}",
        )
        return Outcome.PARKED

    async def _park_unreadable(self, message: bytes, message_id: str, error: EnvelopeError) -> None:
        # The original text is kept untouched so a newer processor, or an operator, can read
        # it; the operators' CLI lists such messages as unreadable.
        text = base64.b64encode(message).decode("ascii")
        await self.storage.park_text(text)
        logger.error("Delivery of queue message %s parked: %s: %s", message_id, error.reason, error)

    def _log(
        self,
        envelope: Envelope,
        attempt: int,
        status: int | None,
        started: float,
        outcome: Outcome,
        detail: str = "",
    ) -> None:
        level = {
            Outcome.DELIVERED: logging.INFO,
            Outcome.DUPLICATE: logging.INFO,
            Outcome.RETRY_SCHEDULED: logging.WARNING,
            Outcome.DEFERRED: logging.INFO,
            Outcome.PARKED: logging.ERROR,
        }[outcome]
        logger.log(
            level,
            "Delivery customer=%s event=%s trigger=%s attempt=%d status=%s elapsed_ms=%d "
            "outcome=%s%s",
            envelope.customer_id,
            envelope.event_id,
            envelope.trigger_name or "-",
            attempt,
            status if status is not None else "-",
            (time.monotonic() - started) * 1000,
            outcome.value,
            f" ({detail})" if detail else "",
        )

    async def close(self) -> None:
        await self.client.close()
        await self.ledger.close()


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; forwarding them would send ClientTrack invalid JSON.
    raise ValueError(f"{name} is not a JSON value")


def _millis_to_iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    try:
        moment = datetime.fromtimestamp(millis / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return utc_timestamp(moment)
