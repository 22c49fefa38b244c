"""Poison-queue messages decoded for operators, and the filters that select them.

A poison message has one of three kinds:

- `parked`: an envelope that the event processor wrote with a `failure` record;
- `host-moved`: an envelope without `failure`, moved by the Functions host after
  `maxDequeueCount` failed runs; its reason is `host-retries-exhausted`;
- `unreadable`: text that is not base64 of a schema-1 envelope; its reason is `unreadable`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from shared.envelope import Envelope, decode_queue_text
from shared.errors import EnvelopeError
from shared.processor import Reason

Kind = Literal["parked", "host-moved", "unreadable"]

HOST_MOVED_REASON = "host-retries-exhausted"
UNREADABLE_REASON = "unreadable"
# Reasons the processor writes, the two this CLI assigns, and the kinds, which --reason
# also accepts.
KNOWN_REASONS = frozenset(
    (*Reason.ALL, HOST_MOVED_REASON, UNREADABLE_REASON, "parked", "host-moved")
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_DURATION_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_CUSTOMER_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class FilterError(ValueError):
    """A filter value given on the command line is invalid."""


@dataclass(frozen=True)
class PoisonMessage:
    """One received queue message with its envelope decoded when possible."""

    id: str
    text: str
    inserted_on: datetime | None
    expires_on: datetime | None
    dequeue_count: int | None
    envelope: Envelope | None
    problem: str | None = None

    @property
    def kind(self) -> Kind:
        if self.envelope is None:
            return "unreadable"
        if self.envelope.failure is None:
            return "host-moved"
        return "parked"

    @property
    def reason(self) -> str:
        if self.envelope is None:
            return UNREADABLE_REASON
        if self.envelope.failure is None:
            return HOST_MOVED_REASON
        return self.envelope.failure.reason

    @property
    def status(self) -> int | None:
        if self.envelope is None or self.envelope.failure is None:
            return None
        return self.envelope.failure.status

    @property
    def attempts(self) -> int | None:
        """Delivery attempts the processor made: from the failure record, else the envelope."""
        if self.envelope is None:
            return None
        if self.envelope.failure is not None:
            return self.envelope.failure.attempts
        return self.envelope.attempt

    @property
    def detail(self) -> str | None:
        if self.envelope is None:
            return self.problem
        if self.envelope.failure is None:
            return None
        return self.envelope.failure.detail

    def replay_text(self) -> str:
        """Encode the message for the main queue: attempt 0 and no failure record.

        An unreadable message cannot be re-encoded, so its text is returned unchanged.
        """
        if self.envelope is None:
            return self.text
        return self.envelope.with_attempt(0).with_failure(None).to_queue_text()

    def summary(self) -> dict[str, Any]:
        """Describe the message as a JSON object, without its text."""
        envelope = self.envelope
        return {
            "id": self.id,
            "insertedOn": iso_time(self.inserted_on),
            "expiresOn": iso_time(self.expires_on),
            "dequeueCount": self.dequeue_count,
            "kind": self.kind,
            "eventId": envelope.event_id if envelope else None,
            "customerId": envelope.customer_id if envelope else None,
            "triggerName": envelope.trigger_name if envelope else None,
            "taskId": envelope.task_id if envelope else None,
            "attempts": self.attempts,
            "reason": self.reason,
            "status": self.status,
            "detail": self.detail,
        }


def decode_message(
    message_id: str,
    text: str,
    *,
    inserted_on: datetime | None = None,
    expires_on: datetime | None = None,
    dequeue_count: int | None = None,
) -> PoisonMessage:
    """Decode a poison queue message; text that is not an envelope becomes `unreadable`."""
    try:
        envelope: Envelope | None = decode_queue_text(text)
        problem = None
    except EnvelopeError as error:
        envelope = None
        problem = str(error)
    return PoisonMessage(
        id=message_id,
        text=text,
        inserted_on=inserted_on,
        expires_on=expires_on,
        dequeue_count=dequeue_count,
        envelope=envelope,
        problem=problem,
    )


def envelope_document(text: str) -> dict[str, Any] | None:
    """Return the JSON object inside a message's base64 text as sent, or None if there is none."""
    try:
        document = json.loads(base64.b64decode(text.strip(), validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


@dataclass(frozen=True)
class Selection:
    """Filters from the command line; a message must pass every filter that is set."""

    customers: frozenset[str] = frozenset()
    triggers: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    def matches(self, message: PoisonMessage) -> bool:
        envelope = message.envelope
        if self.ids and message.id.lower() not in self.ids:
            return False
        if self.customers and (envelope is None or envelope.customer_id not in self.customers):
            return False
        if self.triggers and (envelope is None or envelope.trigger_name not in self.triggers):
            return False
        # A reason filter also accepts a kind, so `--reason parked` selects every parked message.
        if self.reasons and not self.reasons & {message.reason, message.kind}:
            return False
        if self.since is not None and (
            message.inserted_on is None or message.inserted_on < self.since
        ):
            return False
        return not (
            self.until is not None
            and (message.inserted_on is None or message.inserted_on > self.until)
        )

    def filter(self, messages: Iterable[PoisonMessage]) -> list[PoisonMessage]:
        """Return every matching message, oldest first; `limit` is not applied."""
        return sorted(
            (message for message in messages if self.matches(message)), key=_insertion_order
        )

    def apply(self, messages: Iterable[PoisonMessage]) -> list[PoisonMessage]:
        """Return the matching messages, oldest first, cut to `limit`."""
        selected = self.filter(messages)
        return selected if self.limit is None else selected[: self.limit]


def build_selection(
    *,
    customers: Sequence[str] = (),
    triggers: Sequence[str] = (),
    reasons: Sequence[str] = (),
    ids: Sequence[str] = (),
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    now: datetime | None = None,
) -> Selection:
    """Validate filter values from the command line; raise `FilterError` on the first bad one."""
    now = now or datetime.now(UTC)
    for customer in customers:
        if not _CUSTOMER_ID.match(customer):
            raise FilterError(
                f"Invalid --customer value {customer!r}: a customer id is 1 to 64 ASCII letters, "
                "digits and hyphens."
            )
    for reason in reasons:
        if reason not in KNOWN_REASONS:
            raise FilterError(
                f"Invalid --reason value {reason!r}: expected one of "
                f"{', '.join(sorted(KNOWN_REASONS))}."
            )
    if limit is not None and limit < 1:
        raise FilterError(f"Invalid --limit value {limit}: expected a whole number of at least 1.")
    since_time = parse_time(since, option="--since", now=now) if since else None
    until_time = parse_time(until, option="--until", now=now) if until else None
    if since_time and until_time and since_time > until_time:
        raise FilterError(
            f"--since ({since_time.isoformat()}) is later than --until ({until_time.isoformat()}), "
            "so no message can match."
        )
    return Selection(
        customers=frozenset(customers),
        triggers=frozenset(triggers),
        reasons=frozenset(reasons),
        ids=frozenset(message_id.lower() for message_id in ids),
        since=since_time,
        until=until_time,
        limit=limit,
    )


def parse_time(text: str, *, option: str, now: datetime) -> datetime:
    """Turn `30m`, `2h`, `3d` (that long before `now`) or an ISO 8601 time into a UTC time.

    An ISO time without an offset is taken as UTC.
    """
    value = text.strip()
    duration = _DURATION.match(value)
    if duration is not None:
        amount, unit = duration.groups()
        return now - timedelta(seconds=float(amount) * _DURATION_UNIT_SECONDS[unit])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(
            f"Invalid {option} value {text!r}: expected a duration such as 30m, 2h or 3d, or an "
            "ISO 8601 time such as 2024-05-01T12:00:00Z."
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _insertion_order(message: PoisonMessage) -> tuple[datetime, str]:
    return (message.inserted_on or datetime.max.replace(tzinfo=UTC), message.id)


def iso_time(moment: datetime | None) -> str | None:
    """Format a time as ISO 8601 UTC ending in `Z`; None stays None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
