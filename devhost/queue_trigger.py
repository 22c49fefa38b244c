"""Poll a Storage queue and invoke a queue-triggered function, as the queues extension does.

The listener follows host.json's `extensions.queues`: it receives up to `batchSize`
messages, fetches the next batch once the messages in progress drop to
`newBatchThreshold`, and backs off exponentially from 100 ms to `maxPollingInterval` while
the queue is empty. A message is deleted when the function succeeds. When it fails, the
message becomes visible again after `visibilityTimeout`, unless its dequeue count has
reached `maxDequeueCount`: then its text is copied to `<queue>-poison` and it is deleted.
With base64 encoding, a message that is not valid base64 goes to the poison queue at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import random
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as FunctionQueueMessage
from azure.storage.queue import QueueMessage
from azure.storage.queue.aio import QueueClient

from devhost.config import MIN_POLLING_INTERVAL_SECONDS, QueueOptions
from devhost.invocation import Invoker, LoadedFunction

logger = logging.getLogger(__name__)

POISON_QUEUE_SUFFIX = "-poison"
# A received message stays invisible for the function timeout plus this margin, which
# covers deleting or releasing it afterwards, so a running invocation is not redelivered.
LEASE_MARGIN_SECONDS = 60
# With an unbounded functionTimeout the lease is this long and renewed at half of it.
RENEWED_LEASE_SECONDS = 600
# Storage rejects visibility timeouts above seven days.
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600
# The queues extension randomizes each backoff step by up to 20% either way.
BACKOFF_RANDOMIZATION = 0.2
# Storage client retries: a few quick ones, because the poll loop backs off on its own and
# the SDK's default first backoff of 15 s would stall a local run.
STORAGE_RETRY_OPTIONS: dict[str, Any] = {
    "retry_total": 3,
    "initial_backoff": 1,
    "increment_base": 2,
    "random_jitter_range": 1,
}
# Start-up retries once, so a wrong connection string or a stopped Azurite fails in seconds.
START_RETRIES = 1
# .NET's Convert.FromBase64String, which the extension uses, skips these characters.
_BASE64_WHITESPACE = str.maketrans("", "", " \t\r\n")


class InvalidMessageEncodingError(ValueError):
    """A message's text is not valid base64 while host.json sets base64 encoding."""


def decode_message(text: str, encoding: str) -> bytes:
    """Return a message's body bytes for host.json's messageEncoding ("base64" or "none")."""
    if encoding == "none":
        return text.encode("utf-8")
    compact = text.translate(_BASE64_WHITESPACE)
    try:
        # .NET also requires whole 4-character groups, which Python's decoder does not check
        # when there is surplus padding.
        if len(compact) % 4:
            raise binascii.Error("length is not a multiple of 4")
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidMessageEncodingError(
            f"message text is not valid base64 ({error}). Send base64 text or set "
            'extensions.queues.messageEncoding to "none" in host.json.'
        ) from None


def lease_seconds(function_timeout_seconds: float | None) -> int:
    """Return how long a received message stays invisible while its invocation runs."""
    if function_timeout_seconds is None:
        return RENEWED_LEASE_SECONDS
    lease = math.ceil(function_timeout_seconds) + LEASE_MARGIN_SECONDS
    return min(lease, MAX_VISIBILITY_SECONDS)


class _Lease:
    """The pop receipt of a received message, which changes each time the lease is renewed."""

    def __init__(self, message: QueueMessage) -> None:
        self.message_id: str = message.id
        self.pop_receipt: str | None = message.pop_receipt
        self.renewal: asyncio.Task[None] | None = None

    async def stop_renewal(self) -> None:
        """Stop renewing, so no renewal changes the pop receipt while the message completes."""
        if self.renewal is None:
            return
        self.renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.renewal
        self.renewal = None


class QueueListener:
    """Runs one queue-triggered function against its queue."""

    def __init__(
        self,
        function: LoadedFunction,
        invoker: Invoker,
        options: QueueOptions,
        *,
        connection_string: str,
        queue_name: str,
    ) -> None:
        self.function = function
        self.queue_name = queue_name
        self.poison_queue_name = queue_name + POISON_QUEUE_SUFFIX
        self._invoker = invoker
        self._options = options
        self._connection_string = connection_string
        self._lease_seconds = lease_seconds(invoker.function_timeout_seconds)
        self._renews_lease = invoker.function_timeout_seconds is None
        self._client: QueueClient | None = None
        self._poison_client: QueueClient | None = None
        self._poison_queue_exists = False
        self._poll_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._capacity = asyncio.Event()
        self._capacity.set()

    @property
    def in_flight(self) -> int:
        """Messages received and not yet deleted, released or moved to the poison queue."""
        return len(self._tasks)

    async def start(self) -> None:
        """Create the queue if it is missing and start polling; raise AzureError on failure."""
        self._client = self._queue_client(self.queue_name)
        try:
            await self._client.create_queue(retry_total=START_RETRIES)
        except ResourceExistsError:
            pass
        except BaseException:
            await self._client.close()
            raise
        self._poll_task = asyncio.create_task(self._poll(), name=f"poll {self.queue_name}")

    def request_stop(self) -> None:
        """Stop fetching messages; messages already received keep running."""
        self._stopping.set()

    async def stop(self, timeout_seconds: float | None) -> int:
        """Stop polling, wait for messages in progress and close the clients.

        Returns the number of invocations cut off at the timeout.

        A message cut off at the timeout stays leased and becomes visible again when its
        lease expires, so it is delivered again rather than lost.
        """
        self.request_stop()
        if self._poll_task is not None:
            await self._poll_task

        abandoned = 0
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_seconds)
            abandoned = len(pending)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                logger.warning(
                    "Stopped %d invocations of %s still running after %s s; their messages "
                    "become visible in queue %s again within %d s.",
                    abandoned,
                    self.function.name,
                    timeout_seconds,
                    self.queue_name,
                    self._lease_seconds,
                )

        for client in (self._client, self._poison_client):
            if client is not None:
                await client.close()
        return abandoned

    def _queue_client(self, queue_name: str) -> QueueClient:
        # No message encode or decode policy: the listener gets the raw text, so it can copy
        # it to the poison queue unchanged and poison text that is not base64.
        return QueueClient.from_connection_string(
            self._connection_string, queue_name, **STORAGE_RETRY_OPTIONS
        )

    async def _poll(self) -> None:
        backoff_step = 0
        failing = False
        while not self._stopping.is_set():
            await self._wait_for_capacity()
            if self._stopping.is_set():
                break

            try:
                messages = await self._receive()
            except AzureError as error:
                if not failing:
                    logger.warning(
                        "Receiving from queue %s failed, retrying with backoff up to %g s: %s",
                        self.queue_name,
                        self._options.max_polling_interval_seconds,
                        error,
                    )
                failing = True
                messages = []
            else:
                if failing:
                    logger.info("Receiving from queue %s works again.", self.queue_name)
                failing = False

            if messages:
                backoff_step = 0
                for message in messages:
                    self._dispatch(message)
                continue

            backoff_step += 1
            await self._sleep(self._backoff_seconds(backoff_step))

    def _backoff_seconds(self, step: int) -> float:
        maximum = self._options.max_polling_interval_seconds
        delay: float = min(maximum, MIN_POLLING_INTERVAL_SECONDS * 2.0 ** min(step - 1, 32))
        jitter = random.uniform(1 - BACKOFF_RANDOMIZATION, 1 + BACKOFF_RANDOMIZATION)
        return min(maximum, delay * jitter)

    async def _receive(self) -> list[QueueMessage]:
        assert self._client is not None
        pages = self._client.receive_messages(
            messages_per_page=self._options.batch_size,
            max_messages=self._options.batch_size,
            visibility_timeout=self._lease_seconds,
        ).by_page()
        # One page is one request for up to batchSize messages. A second page would fetch
        # more messages before the threshold allows it.
        async for page in pages:
            return [message async for message in page]
        return []

    async def _wait_for_capacity(self) -> None:
        if self._capacity.is_set():
            return
        capacity = asyncio.create_task(self._capacity.wait())
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({capacity, stopping}, return_when=asyncio.FIRST_COMPLETED)
        capacity.cancel()
        stopping.cancel()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _dispatch(self, message: QueueMessage) -> None:
        task = asyncio.create_task(self._process(message), name=f"message {message.id}")
        self._tasks.add(task)
        if len(self._tasks) > self._options.new_batch_threshold:
            self._capacity.clear()
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if len(self._tasks) <= self._options.new_batch_threshold:
            self._capacity.set()

    async def _process(self, message: QueueMessage) -> None:
        lease = _Lease(message)
        if self._renews_lease:
            lease.renewal = asyncio.create_task(self._renew(lease))
        try:
            await self._handle(message, lease)
        except AzureError as error:
            logger.error(
                "Completing message %s of queue %s failed, so it becomes visible again when its "
                "lease expires: %s",
                message.id,
                self.queue_name,
                error,
            )
        finally:
            await lease.stop_renewal()

    async def _handle(self, message: QueueMessage, lease: _Lease) -> None:
        dequeue_count = message.dequeue_count or 1
        maximum = self._options.max_dequeue_count
        if dequeue_count > maximum:
            # An earlier delivery was received but never completed (the process stopped
            # while it ran), so it has used up its attempts without reaching the check below.
            await self._move_to_poison(
                message, lease, f"its dequeue count {dequeue_count} is above {maximum}"
            )
            return

        try:
            body = decode_message(message.content or "", self._options.message_encoding)
        except InvalidMessageEncodingError as error:
            await self._move_to_poison(message, lease, str(error))
            return

        function_message = FunctionQueueMessage(  # type: ignore[no-untyped-call]
            id=message.id,
            body=body,
            dequeue_count=dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        result = await self._invoker.invoke(self.function, function_message)
        await lease.stop_renewal()

        if result.succeeded:
            await self._delete(lease)
        elif dequeue_count >= maximum:
            await self._move_to_poison(
                message, lease, f"the function failed on each of {dequeue_count} dequeues"
            )
        else:
            await self._release(lease, dequeue_count)

    async def _delete(self, lease: _Lease) -> None:
        assert self._client is not None
        await self._client.delete_message(lease.message_id, lease.pop_receipt)

    async def _release(self, lease: _Lease, dequeue_count: int) -> None:
        assert self._client is not None
        visibility = math.ceil(self._options.visibility_timeout_seconds)
        await self._client.update_message(
            lease.message_id, lease.pop_receipt, visibility_timeout=visibility
        )
        logger.warning(
            "Message %s of queue %s failed on dequeue %d of %d. It becomes visible again in %d s.",
            lease.message_id,
            self.queue_name,
            dequeue_count,
            self._options.max_dequeue_count,
            visibility,
        )

    async def _move_to_poison(self, message: QueueMessage, lease: _Lease, reason: str) -> None:
        if self._poison_client is None:
            self._poison_client = self._queue_client(self.poison_queue_name)
        if not self._poison_queue_exists:
            with contextlib.suppress(ResourceExistsError):
                await self._poison_client.create_queue()
            self._poison_queue_exists = True

        # The copy comes first, so a failure in between leaves a duplicate, never a loss.
        try:
            await self._poison_client.send_message(message.content or "")
        except ResourceNotFoundError:
            # Someone deleted the poison queue after it was created here: create it again.
            with contextlib.suppress(ResourceExistsError):
                await self._poison_client.create_queue()
            await self._poison_client.send_message(message.content or "")
        await self._delete(lease)
        logger.error(
            "Moved message %s from queue %s to %s because %s.",
            message.id,
            self.queue_name,
            self.poison_queue_name,
            reason.rstrip("."),
        )

    async def _renew(self, lease: _Lease) -> None:
        assert self._client is not None
        while True:
            await asyncio.sleep(self._lease_seconds / 2)
            try:
                updated = await self._client.update_message(
                    lease.message_id, lease.pop_receipt, visibility_timeout=self._lease_seconds
                )
            except AzureError as error:
                logger.warning(
                    "Renewing the lease of message %s in queue %s failed: %s",
                    lease.message_id,
                    self.queue_name,
                    error,
                )
                continue
            lease.pop_receipt = updated.pop_receipt
