"""A queue consumer with the Functions queue trigger's batching, for in-process benchmarks.

It receives up to `batchSize` messages, handles each in its own task and receives again
once `newBatchThreshold` or fewer are still running, so at most the sum of the two are in
flight, as under the queue trigger. An empty receive waits 100 ms, doubling up to
`maxPollingInterval`. Completing a message (delete, re-send) is the handler's job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from azure.storage.queue import QueueMessage
from azure.storage.queue.aio import QueueClient

from devhost.config import QueueOptions

# A received message stays invisible this long, like devhost's lease: host.json's
# functionTimeout (5 minutes) plus a minute.
LEASE_SECONDS = 360
FIRST_EMPTY_WAIT_SECONDS = 0.1

Handler = Callable[[QueueMessage], Awaitable[bool]]


class BatchConsumer:
    """Run `handler` on every message of `queue` until it returned True `expected` times,
    or until `request_stop` when `expected` is None."""

    def __init__(self, queue: QueueClient, options: QueueOptions, handler: Handler) -> None:
        self.queue = queue
        self.options = options
        self.handler = handler
        self.completed = 0
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._stop = asyncio.Event()

    async def run(self, expected: int | None) -> None:
        """Receive and handle messages; return once the handlers in progress finished."""
        empty_receives = 0
        while not self._stop.is_set() and (expected is None or self.completed < expected):
            await self._capacity.wait()
            if self._stop.is_set():
                break
            messages = await self._receive()
            if not messages:
                empty_receives += 1
                await asyncio.sleep(self._empty_wait_seconds(empty_receives))
                continue
            empty_receives = 0
            for message in messages:
                task = asyncio.create_task(self._handle(message))
                self._tasks.add(task)
                task.add_done_callback(self._finished)
                if len(self._tasks) > self.options.new_batch_threshold:
                    self._capacity.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def request_stop(self) -> None:
        """Stop receiving; `run` returns once the messages already received are handled."""
        self._stop.set()

    async def cancel(self) -> None:
        """Cancel the handlers still running, for a run that is abandoned."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def _empty_wait_seconds(self, empty_receives: int) -> float:
        doubled = FIRST_EMPTY_WAIT_SECONDS * 2.0 ** min(empty_receives - 1, 16)
        return min(self.options.max_polling_interval_seconds, doubled)

    async def _receive(self) -> list[QueueMessage]:
        pages = self.queue.receive_messages(
            messages_per_page=self.options.batch_size,
            max_messages=self.options.batch_size,
            visibility_timeout=LEASE_SECONDS,
        ).by_page()
        # One page is one request for up to batchSize messages.
        async for page in pages:
            return [message async for message in page]
        return []

    async def _handle(self, message: QueueMessage) -> None:
        try:
            if await self.handler(message):
                self.completed += 1
        except Exception as error:
            # The message stays leased, so the run stops short of `expected` and the
            # caller's timeout reports it, with this error kept for the report.
            self.errors.append(f"message {message.id}: {type(error).__name__}: {error}")

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if len(self._tasks) <= self.options.new_batch_threshold:
            self._capacity.set()
