"""Receive every message of a queue, holding each one invisible until the scan is released.

Peek returns at most 32 messages, so a full view of a queue needs Get Messages in pages of
32 with a visibility timeout. A received message is hidden from the next page, which is how
the scan moves past it. Every receive adds one to the message's dequeue count. `release()`
makes each message still held visible again (visibility timeout 0). Use the scan as a context
manager, so that happens when the command finishes and also when it fails.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage

# Get Messages returns at most 32 messages per request.
PAGE_SIZE = 32
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 120
# Storage Queues reject a visibility timeout beyond seven days.
MAX_VISIBILITY_TIMEOUT_SECONDS = 7 * 24 * 3600
# A hold is renewed before a message is moved when less than this is left of it, so the
# delete that follows the copy still has a valid pop receipt.
RENEW_MARGIN_SECONDS = 15.0
RELEASE_WORKERS = 8


class HoldLost(Exception):
    """The message's pop receipt is no longer valid: it was deleted or received elsewhere."""


@dataclass
class _Hold:
    pop_receipt: str
    # time.monotonic() after which the service may make the message visible again.
    deadline: float


def _warn_to_stderr(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


class QueueScan:
    """Every message of one queue, received page by page and held until `release()`."""

    def __init__(
        self,
        client: QueueClient,
        *,
        visibility_timeout_seconds: int = DEFAULT_VISIBILITY_TIMEOUT_SECONDS,
        warn: Callable[[str], None] = _warn_to_stderr,
    ) -> None:
        self.client = client
        self.visibility_timeout_seconds = visibility_timeout_seconds
        self._warn = warn
        self._held: dict[str, _Hold] = {}
        self.reappeared = 0

    def __enter__(self) -> QueueScan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def messages(self) -> Iterator[QueueMessage]:
        """Yield each message of the queue once, oldest pages first, holding it invisible.

        The scan ends at an empty page. It also ends when a page brings back only messages
        it already holds: their visibility timeout ran out before the scan finished, and
        going on could loop. The scan then warns that the result may be incomplete.
        """
        pages = self.client.receive_messages(
            messages_per_page=PAGE_SIZE, visibility_timeout=self.visibility_timeout_seconds
        ).by_page()
        while True:
            requested_at = time.monotonic()
            try:
                page = list(next(pages))
            except StopIteration:
                break
            new_messages = 0
            for message in page:
                seen = message.id in self._held
                self._held[message.id] = _Hold(
                    pop_receipt=message.pop_receipt or "",
                    deadline=requested_at + self.visibility_timeout_seconds,
                )
                if seen:
                    self.reappeared += 1
                    continue
                new_messages += 1
                yield message
            if new_messages == 0:
                break
        if self.reappeared:
            self._warn(
                f"{self.reappeared} messages of queue {self.client.queue_name!r} became visible "
                f"again before the scan finished, so it may have missed some; raise "
                f"--visibility-timeout above {self.visibility_timeout_seconds} s."
            )

    @property
    def held_count(self) -> int:
        return len(self._held)

    def renew(self, message_id: str) -> None:
        """Extend the hold on a message if it would end within `RENEW_MARGIN_SECONDS`."""
        hold = self._hold(message_id)
        if hold.deadline - time.monotonic() > RENEW_MARGIN_SECONDS:
            return
        requested_at = time.monotonic()
        try:
            updated = self.client.update_message(
                message_id, hold.pop_receipt, visibility_timeout=self.visibility_timeout_seconds
            )
        except HttpResponseError as error:
            self._raise_if_lost(message_id, error)
            raise
        hold.pop_receipt = updated.pop_receipt or hold.pop_receipt
        hold.deadline = requested_at + self.visibility_timeout_seconds

    def delete(self, message_id: str) -> None:
        """Delete a held message; raise `HoldLost` if its pop receipt is no longer valid."""
        hold = self._hold(message_id)
        try:
            self.client.delete_message(message_id, hold.pop_receipt)
        except HttpResponseError as error:
            self._raise_if_lost(message_id, error)
            raise
        del self._held[message_id]

    def release(self) -> int:
        """Make every held message visible again; return how many could not be released.

        A message whose pop receipt is stale was received by another client or deleted, so
        it is not held by this scan any more and does not count as a failure.
        """
        held = list(self._held.items())
        self._held.clear()
        if not held:
            return 0
        with ThreadPoolExecutor(max_workers=RELEASE_WORKERS) as pool:
            failures = sum(pool.map(self._release_one, held))
        if failures:
            self._warn(
                f"{failures} messages of queue {self.client.queue_name!r} could not be made "
                f"visible again; they become visible by themselves within "
                f"{self.visibility_timeout_seconds} s."
            )
        return failures

    def _release_one(self, item: tuple[str, _Hold]) -> int:
        message_id, hold = item
        try:
            self.client.update_message(message_id, hold.pop_receipt, visibility_timeout=0)
        except HttpResponseError as error:
            return 0 if _is_stale_receipt(error) else 1
        except AzureError:
            return 1
        return 0

    def _hold(self, message_id: str) -> _Hold:
        hold = self._held.get(message_id)
        if hold is None:
            raise HoldLost(f"Message {message_id} is not held by this scan.")
        return hold

    def _raise_if_lost(self, message_id: str, error: HttpResponseError) -> None:
        if _is_stale_receipt(error):
            self._held.pop(message_id, None)
            raise HoldLost(
                f"Message {message_id} was deleted or received by another client."
            ) from None


def _is_stale_receipt(error: HttpResponseError) -> bool:
    # A deleted message gives 404 MessageNotFound. A message received again since gives
    # 400 PopReceiptMismatch (as Azurite returns it).
    if isinstance(error, ResourceNotFoundError):
        return True
    code = getattr(error, "error_code", None)
    return str(getattr(code, "value", code)) == "PopReceiptMismatch"
