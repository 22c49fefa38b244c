"""The read-only subcommands: `list`, `show` and `status`, and the context every command shares."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from azure.core.exceptions import ResourceNotFoundError

from ops.poison.connection import ConnectionOptions, Storage
from ops.poison.errors import CliError
from ops.poison.messages import (
    PoisonMessage,
    Selection,
    decode_message,
    envelope_document,
    iso_time,
)
from ops.poison.output import format_age, write_table
from ops.poison.scan import QueueScan

if TYPE_CHECKING:
    from azure.storage.queue import QueueMessage

# Messages stored with time-to-live -1 report this expiry time.
NEVER_EXPIRES_YEAR = 9999
# Peek returns at most 32 messages.
PEEK_LIMIT = 32


@dataclass
class CommandContext:
    """The storage account, connection settings and output streams that every subcommand uses."""

    storage: Storage
    options: ConnectionOptions
    visibility_timeout_seconds: int
    stdout: TextIO
    stderr: TextIO

    def scan(self, queue_name: str) -> QueueScan:
        client = self.storage.queue(queue_name)
        self.storage.ensure_queue(client)
        return QueueScan(
            client,
            visibility_timeout_seconds=self.visibility_timeout_seconds,
            warn=lambda text: print(f"warning: {text}", file=self.stderr),
        )


def to_poison_message(message: QueueMessage) -> PoisonMessage:
    """Decode a message returned by receive or peek."""
    content = message.content
    return decode_message(
        message.id,
        content if isinstance(content, str) else "",
        inserted_on=message.inserted_on,
        expires_on=message.expires_on,
        dequeue_count=message.dequeue_count,
    )


def run_list(context: CommandContext, selection: Selection, *, as_json: bool) -> int:
    """Print the matching poison messages as a table or as one JSON array."""
    queue = context.options.poison_queue
    with context.scan(queue) as scan:
        messages = [to_poison_message(message) for message in scan.messages()]

    matching = selection.filter(messages)
    listed = matching if selection.limit is None else matching[: selection.limit]
    if as_json:
        json.dump([message.summary() for message in listed], context.stdout, indent=2)
        context.stdout.write("\n")
        return 0

    write_table(listed, context.stdout)
    context.stdout.write(
        f"{len(listed)} shown, {len(matching)} matching, {len(messages)} in queue {queue}.\n"
    )
    return 0


def run_show(context: CommandContext, message_id: str, *, as_json: bool) -> int:
    """Print one message: its queue metadata, failure record, envelope and Onfleet body."""
    queue = context.options.poison_queue
    requested_id = message_id.strip().lower()
    client = context.storage.queue(queue)
    context.storage.ensure_queue(client)

    # Peek changes nothing, so try it before a scan, which adds to every dequeue count.
    found = next(
        (item for item in client.peek_messages(PEEK_LIMIT) if item.id == requested_id), None
    )
    if found is None:
        with context.scan(queue) as scan:
            found = next((item for item in scan.messages() if item.id == requested_id), None)
    if found is None:
        raise CliError(
            f"Message {message_id!r} was not found in queue {queue}; `list` shows the ids of "
            "its messages."
        )

    message = to_poison_message(found)
    body = _read_body(context, message)
    if as_json:
        json.dump(_show_document(message, body), context.stdout, indent=2, ensure_ascii=False)
        context.stdout.write("\n")
    else:
        _write_show_text(context.stdout, message, body, queue)
    return 0


def run_status(context: CommandContext, *, as_json: bool) -> int:
    """Print queue depths and the oldest poison message's age; return 1 if any is parked."""
    storage = context.storage
    main_properties = storage.ensure_queue(storage.queue(context.options.queue))
    poison = storage.queue(context.options.poison_queue)
    try:
        poison_depth: int | None = poison.get_queue_properties().approximate_message_count or 0
        peeked = poison.peek_messages(1)
    except ResourceNotFoundError:
        # The Functions host creates the poison queue when it first moves a message there.
        poison_depth = None
        peeked = []
    oldest = peeked[0].inserted_on if peeked else None
    now = datetime.now(UTC)
    parked = bool(poison_depth) or oldest is not None

    if as_json:
        document = {
            "queue": context.options.queue,
            "depth": main_properties.approximate_message_count or 0,
            "poisonQueue": context.options.poison_queue,
            "poisonQueueExists": poison_depth is not None,
            "poisonDepth": poison_depth or 0,
            "oldestPoisonInsertedOn": iso_time(oldest),
            "oldestPoisonAgeSeconds": int((now - oldest).total_seconds()) if oldest else None,
        }
        json.dump(document, context.stdout, indent=2)
        context.stdout.write("\n")
        return 1 if parked else 0

    out = context.stdout
    out.write(
        f"{context.options.queue}: about {main_properties.approximate_message_count or 0} "
        "messages\n"
    )
    if poison_depth is None:
        out.write(f"{context.options.poison_queue}: does not exist (nothing was parked yet)\n")
    elif not parked:
        out.write(f"{context.options.poison_queue}: empty\n")
    else:
        noun = "message" if poison_depth == 1 else "messages"
        line = f"{context.options.poison_queue}: about {poison_depth} {noun}"
        if oldest is not None:
            line += f", oldest inserted {iso_time(oldest)} ({format_age(oldest, now)} ago)"
        out.write(line + "\n")
    return 1 if parked else 0


@dataclass(frozen=True)
class _Body:
    """The Onfleet body of an envelope, or why it could not be read."""

    raw: bytes | None
    source: str


def _read_body(context: CommandContext, message: PoisonMessage) -> _Body | None:
    envelope = message.envelope
    if envelope is None:
        return None
    inline = envelope.inline_body()
    if inline is not None:
        return _Body(inline, "inline")

    blob_name = envelope.body_blob or ""
    container = context.storage.container()
    source = f"blob {blob_name} in container {container.container_name}"
    try:
        return _Body(container.download_blob(blob_name).readall(), source)
    except ResourceNotFoundError:
        return _Body(None, source + " (not found)")


def _format_body(raw: bytes) -> tuple[str, str]:
    """Return the body's encoding (json, text or base64) and its printable form."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(raw).decode("ascii")
    try:
        return "json", json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return "text", text


def _show_document(message: PoisonMessage, body: _Body | None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "message": message.summary(),
        "envelope": envelope_document(message.text),
    }
    if message.envelope is None:
        document["text"] = message.text
        return document
    document["bodySource"] = body.source if body else None
    if body is None or body.raw is None:
        document["bodyEncoding"] = "missing"
        document["body"] = None
        return document
    encoding, printable = _format_body(body.raw)
    document["bodyEncoding"] = encoding
    document["body"] = json.loads(printable) if encoding == "json" else printable
    return document


def _write_show_text(out: TextIO, message: PoisonMessage, body: _Body | None, queue: str) -> None:
    now = datetime.now(UTC)
    inserted = message.inserted_on
    fields = [
        ("Message", message.id),
        ("Queue", queue),
        ("Kind", message.kind),
        ("Reason", message.reason),
        (
            "Inserted",
            f"{iso_time(inserted)} ({format_age(inserted, now)} ago)" if inserted else "-",
        ),
        ("Expires", _expiry(message.expires_on)),
        ("Dequeues", str(message.dequeue_count if message.dequeue_count is not None else "-")),
    ]
    for name, value in fields:
        out.write(f"{name:<10}{value}\n")

    envelope = message.envelope
    if envelope is None:
        out.write(f"\nUnreadable: {message.problem}\n\nText\n{message.text}\n")
        decoded = _decoded_text(message.text)
        if decoded is not None:
            out.write(f"\nText decoded from base64\n{decoded}\n")
        return

    out.write("\nFailure\n")
    if envelope.failure is None:
        out.write(
            "  none: the Functions host moved this message after maxDequeueCount failed runs.\n"
        )
    else:
        for name, value in envelope.failure.to_dict().items():
            out.write(f"  {name:<10}{'-' if value is None else value}\n")

    document = envelope_document(message.text) or {}
    shown = {key: value for key, value in document.items() if key not in _SHOWN_ELSEWHERE}
    out.write("\nEnvelope\n" + json.dumps(shown, indent=2, ensure_ascii=False) + "\n")

    if body is None or body.raw is None:
        out.write(f"\nBody ({body.source if body else 'missing'})\n")
        return
    encoding, printable = _format_body(body.raw)
    out.write(f"\nBody ({encoding}, {body.source}, {len(body.raw)} bytes)\n{printable}\n")


# `show` prints these envelope fields in their own sections.
_SHOWN_ELSEWHERE = frozenset({"body", "bodyBase64", "failure"})


def _decoded_text(text: str) -> str | None:
    try:
        decoded = base64.b64decode(text.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    try:
        return json.dumps(json.loads(decoded), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return decoded


def _expiry(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    if moment.year >= NEVER_EXPIRES_YEAR:
        return "never"
    return iso_time(moment) or "-"
