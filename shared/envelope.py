"""The queue message that carries one Onfleet delivery from ingest to the processor.

Schema version 1 is a JSON object, sent as base64 of its UTF-8 text because that is the
Functions queue trigger's default `messageEncoding`. The raw Onfleet body travels in exactly
one of `body` (UTF-8 text), `bodyBase64` (bytes that are not UTF-8) or `bodyBlob` (the name of
a blob holding the body, when the envelope would not fit a queue message).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from shared.errors import EnvelopeError

SCHEMA_VERSION = 1
# Storage Queues accept at most 64 KiB of message text.
MAX_QUEUE_MESSAGE_BYTES = 64 * 1024
# Room kept free in inline envelopes so that parking one (adding a failure record, see
# MAX_FAILURE_DETAIL_CHARS) never pushes it over the queue's limit.
FAILURE_RECORD_RESERVE_BYTES = 4 * 1024
MAX_INLINE_MESSAGE_BYTES = MAX_QUEUE_MESSAGE_BYTES - FAILURE_RECORD_RESERVE_BYTES
MAX_FAILURE_DETAIL_CHARS = 300
CUSTOMER_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_EVENT_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Failure:
    """The reason the processor parked an envelope in the poison queue."""

    reason: str
    status: int | None
    detail: str
    at: str
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "status": self.status,
            "detail": self.detail,
            "at": self.at,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class Envelope:
    """One Onfleet delivery as it travels through the queues."""

    event_id: str
    customer_id: str
    received_at: str
    trigger_id: int | None = None
    trigger_name: str | None = None
    task_id: str | None = None
    worker_id: str | None = None
    onfleet_time: int | None = None
    attempt: int = 0
    body: str | None = None
    body_base64: str | None = None
    body_blob: str | None = None
    failure: Failure | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "schemaVersion": SCHEMA_VERSION,
            "eventId": self.event_id,
            "customerId": self.customer_id,
            "receivedAt": self.received_at,
            "triggerId": self.trigger_id,
            "triggerName": self.trigger_name,
            "taskId": self.task_id,
            "workerId": self.worker_id,
            "onfleetTime": self.onfleet_time,
            "attempt": self.attempt,
        }
        if self.body is not None:
            document["body"] = self.body
        elif self.body_base64 is not None:
            document["bodyBase64"] = self.body_base64
        else:
            document["bodyBlob"] = self.body_blob
        if self.failure is not None:
            document["failure"] = self.failure.to_dict()
        return {**self.extra, **document}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    def to_queue_text(self) -> str:
        """Encode as the Functions queue trigger expects: base64 of the UTF-8 JSON."""
        return base64.b64encode(self.to_json().encode("utf-8")).decode("ascii")

    def inline_body(self) -> bytes | None:
        """Return the raw body carried in the envelope, or None when it is in Blob storage."""
        if self.body is not None:
            return self.body.encode("utf-8")
        if self.body_base64 is not None:
            return base64.b64decode(self.body_base64)
        return None

    def with_attempt(self, attempt: int) -> Envelope:
        return replace(self, attempt=attempt)

    def with_failure(self, failure: Failure | None) -> Envelope:
        return replace(self, failure=failure)


def compute_event_id(customer_id: str, body: bytes) -> str:
    """Derive the event id, identical for every retry of the same Onfleet delivery."""
    digest = hashlib.sha256()
    digest.update(customer_id.encode("utf-8"))
    digest.update(b"\n")
    digest.update(body)
    return digest.hexdigest()


def utc_timestamp(moment: datetime | None = None) -> str:
    """Format a time as ISO 8601 UTC with milliseconds and a `Z`."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def build_envelope(customer_id: str, body: bytes, *, received_at: str | None = None) -> Envelope:
    """Wrap a verified Onfleet body, copying the trigger fields when the body is JSON."""
    fields = _trigger_fields(body)
    try:
        text: str | None = body.decode("utf-8")
        encoded: str | None = None
    except UnicodeDecodeError:
        text = None
        encoded = base64.b64encode(body).decode("ascii")
    return Envelope(
        event_id=compute_event_id(customer_id, body),
        customer_id=customer_id,
        received_at=received_at or utc_timestamp(),
        body=text,
        body_base64=encoded,
        **fields,
    )


def claim_check_blob_name(customer_id: str, event_id: str) -> str:
    """Name the blob that holds a claim-checked body."""
    return f"{customer_id}/{event_id}"


def claim_checked(envelope: Envelope, blob_name: str) -> Envelope:
    """Return the envelope with its body replaced by a reference to `blob_name`."""
    return replace(envelope, body=None, body_base64=None, body_blob=blob_name)


def fits_queue_message(queue_text: str) -> bool:
    """Tell whether an encoded envelope fits a queue message with room for a failure record."""
    return len(queue_text) <= MAX_INLINE_MESSAGE_BYTES


def decode_queue_text(text: str) -> Envelope:
    """Decode the text of a queue message (base64 of JSON) into an envelope."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("Queue message is not base64 text.") from None
    return decode_envelope(raw)


def decode_envelope(raw: bytes) -> Envelope:
    """Parse UTF-8 JSON bytes into an envelope; raise `EnvelopeError` with the reason."""
    try:
        document = json.loads(raw.decode("utf-8"))
        # A \udXXX escape without its pair decodes to a lone surrogate, which no UTF-8 output
        # (the queue, a log, a terminal) can carry.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError):
        raise EnvelopeError("Queue message is not UTF-8 JSON.") from None
    if not isinstance(document, dict):
        raise EnvelopeError("Queue message JSON is not an object.")
    version = document.get("schemaVersion")
    if version != SCHEMA_VERSION:
        raise EnvelopeError(
            f"Envelope schemaVersion {version!r} is not supported; this processor reads "
            f"version {SCHEMA_VERSION}."
        )
    event_id = _required_string(document, "eventId")
    if not _EVENT_ID.match(event_id):
        raise EnvelopeError("Envelope eventId is not 64 lowercase hex digits.")
    customer_id = _required_string(document, "customerId")
    if not CUSTOMER_ID.match(customer_id):
        raise EnvelopeError(
            f"Envelope {event_id} has an invalid customerId; expected 1 to 64 letters, digits "
            "and hyphens."
        )
    body_fields = [name for name in ("body", "bodyBase64", "bodyBlob") if name in document]
    if len(body_fields) != 1 or not isinstance(document[body_fields[0]], str):
        raise EnvelopeError(
            f"Envelope {event_id} must carry exactly one of body, bodyBase64 or bodyBlob as a "
            f"string; it has {body_fields or 'none'}."
        )
    if "bodyBlob" in document and document["bodyBlob"] != claim_check_blob_name(
        customer_id, event_id
    ):
        # Ingest always names the blob after the customer and event, so any other name is a
        # damaged or forged envelope that could otherwise read another customer's body.
        raise EnvelopeError(
            f"Envelope {event_id} has a bodyBlob other than {customer_id}/{event_id}."
        )
    attempt = document.get("attempt", 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise EnvelopeError(f"Envelope {event_id} has an invalid attempt count: {attempt!r}.")
    if "bodyBase64" in document:
        try:
            base64.b64decode(document["bodyBase64"], validate=True)
        except (binascii.Error, ValueError):
            raise EnvelopeError(
                f"Envelope {event_id} has a bodyBase64 that is not base64."
            ) from None

    known = {
        "schemaVersion", "eventId", "customerId", "receivedAt", "triggerId", "triggerName",
        "taskId", "workerId", "onfleetTime", "attempt", "body", "bodyBase64", "bodyBlob",
        "failure",
    }  # fmt: skip
    return Envelope(
        event_id=event_id,
        customer_id=customer_id,
        received_at=str(document.get("receivedAt") or ""),
        trigger_id=_optional_int(document.get("triggerId")),
        trigger_name=_optional_str(document.get("triggerName")),
        task_id=_optional_str(document.get("taskId")),
        worker_id=_optional_str(document.get("workerId")),
        onfleet_time=_optional_int(document.get("onfleetTime")),
        attempt=attempt,
        body=document.get("body"),
        body_base64=document.get("bodyBase64"),
        body_blob=document.get("bodyBlob"),
        failure=_parse_failure(document.get("failure")),
        extra={key: value for key, value in document.items() if key not in known},
    )


def _trigger_fields(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}
    if not isinstance(document, dict):
        return {}
    return {
        "trigger_id": _optional_int(document.get("triggerId")),
        "trigger_name": _optional_str(document.get("triggerName")),
        "task_id": _optional_str(document.get("taskId")),
        "worker_id": _optional_str(document.get("workerId")),
        "onfleet_time": _optional_int(document.get("time")),
    }


def _required_string(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise EnvelopeError(f"Envelope field {name} is missing or not a string.")
    return value


def _optional_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _optional_str(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from an unpaired \udXXX escape cannot travel in the envelope.
        return None
    return value


def _parse_failure(value: Any) -> Failure | None:
    if not isinstance(value, dict):
        return None
    status = value.get("status")
    attempts = value.get("attempts")
    return Failure(
        reason=str(value.get("reason") or "unknown"),
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        detail=str(value.get("detail") or ""),
        at=str(value.get("at") or ""),
        attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
    )
