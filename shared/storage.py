"""Storage Queues and Blob storage access for envelopes, with the async Azure SDK clients.

One `EventStorage` per worker holds the queue and blob clients, so their connection pools
are reused across events. Every azure-core error is translated into `StorageUnavailable`
(or `PayloadMissing` for an absent claim-check blob) here, at the boundary.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from shared.envelope import Envelope, claim_check_blob_name, claim_checked, fits_queue_message
from shared.errors import PayloadMissing, StorageUnavailable
from shared.settings import Settings
from shared.transport import sdk_transport_options

if TYPE_CHECKING:
    from azure.storage.blob.aio import ContainerClient
    from azure.storage.queue.aio import QueueClient

logger = logging.getLogger(__name__)

# Ingest must answer Onfleet within 10 seconds, so a storage call gets a short retry budget
# rather than azure-core's default of several minutes of retries.
STORAGE_RETRY_TOTAL = 2
STORAGE_CONNECTION_TIMEOUT_SECONDS = 3.0
STORAGE_READ_TIMEOUT_SECONDS = 5.0
# A time to live of -1 keeps a queue message until something deletes it.
NEVER_EXPIRES = -1


def _client_options() -> dict[str, Any]:
    return {
        "retry_total": STORAGE_RETRY_TOTAL,
        "retry_connect": STORAGE_RETRY_TOTAL,
        "retry_read": STORAGE_RETRY_TOTAL,
        "initial_backoff": 0.2,
        "increment_base": 2,
        "connection_timeout": STORAGE_CONNECTION_TIMEOUT_SECONDS,
        "read_timeout": STORAGE_READ_TIMEOUT_SECONDS,
        **sdk_transport_options(),
    }


class EventStorage:
    """The events queue, its poison queue and the claim-check container of one worker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events: QueueClient = self._queue_client(settings.events_queue)
        self.poison: QueueClient = self._queue_client(settings.poison_queue)
        self.payloads: ContainerClient = self._container_client(settings.payload_container)
        self._ready: set[str] = set()
        self._ready_lock = asyncio.Lock()
        self._credential: Any = None

    def _credential_for_account(self) -> Any:
        if self._credential is None:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    def _queue_client(self, name: str) -> QueueClient:
        from azure.storage.queue.aio import QueueClient

        if self.settings.storage_connection_string is not None:
            return QueueClient.from_connection_string(
                self.settings.storage_connection_string, name, **_client_options()
            )
        account = self.settings.storage_account_name
        return QueueClient(
            f"https://{account}.queue.core.windows.net",
            name,
            credential=self._credential_for_account(),
            **_client_options(),
        )

    def _container_client(self, name: str) -> ContainerClient:
        from azure.storage.blob.aio import ContainerClient

        if self.settings.storage_connection_string is not None:
            return ContainerClient.from_connection_string(
                self.settings.storage_connection_string, name, **_client_options()
            )
        account = self.settings.storage_account_name
        return ContainerClient(
            f"https://{account}.blob.core.windows.net",
            name,
            credential=self._credential_for_account(),
            **_client_options(),
        )

    async def enqueue(self, envelope: Envelope, *, visibility_timeout_seconds: int = 0) -> Envelope:
        """Write the envelope to the events queue, claim-checking a body too large to fit.

        Returns the envelope as written (with `bodyBlob` when the body went to Blob storage).
        Raises `StorageUnavailable` when the write did not succeed.
        """
        text = envelope.to_queue_text()
        if not fits_queue_message(text):
            envelope = await self._claim_check(envelope)
            text = envelope.to_queue_text()
        await self._send(
            self.events,
            text,
            visibility_timeout=visibility_timeout_seconds or None,
            # The default time to live is seven days; an event waiting for a ClientTrack
            # outage to end, or a retry delayed up to that limit, must not expire meanwhile.
            time_to_live=NEVER_EXPIRES,
            what=f"event {envelope.event_id}",
        )
        return envelope

    async def park(self, envelope: Envelope) -> None:
        """Write the envelope, with its failure record, to the poison queue with no expiry."""
        await self._send(
            self.poison,
            envelope.to_queue_text(),
            visibility_timeout=None,
            time_to_live=NEVER_EXPIRES,
            what=f"event {envelope.event_id}",
        )

    async def park_text(self, text: str) -> None:
        """Write message text that is not a readable envelope to the poison queue as it is."""
        await self._send(
            self.poison,
            text,
            visibility_timeout=None,
            time_to_live=NEVER_EXPIRES,
            what="an unreadable message",
        )

    async def read_payload(self, blob_name: str) -> bytes:
        """Return the raw body stored by the claim check; raise `PayloadMissing` if absent."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            downloader = await self.payloads.download_blob(blob_name)
            return await downloader.readall()
        except ResourceNotFoundError:
            raise PayloadMissing(
                f"Claim-check blob {blob_name} is missing from container "
                f"{self.settings.payload_container}."
            ) from None
        except AzureError as error:
            raise StorageUnavailable(
                f"Reading claim-check blob {blob_name} failed: {_describe(error)}."
            ) from None

    async def _claim_check(self, envelope: Envelope) -> Envelope:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        body = envelope.inline_body()
        assert body is not None, "only inline envelopes are claim-checked"
        blob_name = claim_check_blob_name(envelope.customer_id, envelope.event_id)
        for first_try in (True, False):
            try:
                # Same event id means same bytes, so overwriting on an Onfleet retry is safe.
                await self.payloads.upload_blob(blob_name, body, overwrite=True)
                break
            except ResourceNotFoundError:
                if not first_try:
                    raise StorageUnavailable(
                        f"Container {self.settings.payload_container} could not be created."
                    ) from None
                await self._create_container()
            except AzureError as error:
                raise StorageUnavailable(
                    f"Writing claim-check blob {blob_name} failed: {_describe(error)}."
                ) from None
        return claim_checked(envelope, blob_name)

    async def _send(
        self,
        queue: QueueClient,
        text: str,
        *,
        visibility_timeout: int | None,
        time_to_live: int | None,
        what: str,
    ) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        await self._ensure_queue(queue)
        for first_try in (True, False):
            try:
                await queue.send_message(
                    text, visibility_timeout=visibility_timeout, time_to_live=time_to_live
                )
                return
            except ResourceNotFoundError:
                # The queue was deleted after this worker created it; create it again once.
                if not first_try:
                    break
                self._ready.discard(queue.queue_name)
                await self._ensure_queue(queue)
            except AzureError as error:
                raise StorageUnavailable(
                    f"Writing {what} to queue {queue.queue_name} failed: {_describe(error)}."
                ) from None
        raise StorageUnavailable(
            f"Queue {queue.queue_name} does not exist and could not be created."
        )

    async def _ensure_queue(self, queue: QueueClient) -> None:
        if queue.queue_name in self._ready:
            return
        from azure.core.exceptions import AzureError, ResourceExistsError

        async with self._ready_lock:
            if queue.queue_name in self._ready:
                return
            try:
                await queue.create_queue()
            except ResourceExistsError:
                pass
            except AzureError as error:
                raise StorageUnavailable(
                    f"Creating queue {queue.queue_name} failed: {_describe(error)}."
                ) from None
            self._ready.add(queue.queue_name)

    async def _create_container(self) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError

        try:
            await self.payloads.create_container()
        except ResourceExistsError:
            pass
        except AzureError as error:
            raise StorageUnavailable(
                f"Creating container {self.settings.payload_container} failed: {_describe(error)}."
            ) from None

    async def close(self) -> None:
        await self.events.close()
        await self.poison.close()
        await self.payloads.close()
        if self._credential is not None:
            await self._credential.close()


def _describe(error: Exception) -> str:
    """Summarize an azure-core error in one line without the request's headers or URL query."""
    status = getattr(error, "status_code", None)
    code = getattr(error, "error_code", None)
    parts = [type(error).__name__]
    if status is not None:
        parts.append(f"HTTP {status}")
    if code:
        parts.append(str(code))
    return " ".join(parts)
