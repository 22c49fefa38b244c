"""A ledger of delivered event ids in Azure Table storage, for at-most-once delivery.

The processor marks an event after ClientTrack answered 2xx and skips an event already
marked within `DEDUPE_WINDOW_HOURS`. Onfleet's retries of one delivery, the queue's
at-least-once redelivery and an operator's replay all carry the same event id, so each of
them leads to one ClientTrack call. An event can still be sent twice when the process dies
between ClientTrack's 2xx and the mark, when the mark cannot be written (Storage is down),
or when two workers deliver copies at the same moment (one worker takes them in turn); the
`Idempotency-Key` header lets ClientTrack drop such a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.settings import Settings
from shared.transport import sdk_transport_options

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

logger = logging.getLogger(__name__)


class DeliveryLedger:
    """Delivered event ids, partitioned by customer."""

    def __init__(self, settings: Settings) -> None:
        from azure.data.tables.aio import TableClient

        self.window = timedelta(hours=settings.dedupe_window_hours)
        self.enabled = settings.dedupe_window_hours > 0
        self._table: TableClient
        if settings.storage_connection_string is not None:
            self._table = TableClient.from_connection_string(
                settings.storage_connection_string,
                settings.dedupe_table,
                retry_total=2,
                **sdk_transport_options(),
            )
        else:
            from azure.identity.aio import DefaultAzureCredential

            self._credential: Any = DefaultAzureCredential()
            self._table = TableClient(
                f"https://{settings.storage_account_name}.table.core.windows.net",
                settings.dedupe_table,
                credential=self._credential,
                retry_total=2,
                **sdk_transport_options(),
            )
        self._created = False
        self._lock = asyncio.Lock()

    async def delivered_at(self, customer_id: str, event_id: str) -> datetime | None:
        """Return when the event was delivered within the window, or None.

        A failed read returns None and logs a warning: delivering again is safer than
        holding the event back, and ClientTrack sees the same `Idempotency-Key`.
        """
        if not self.enabled:
            return None
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            entity = await self._table.get_entity(customer_id, event_id)
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            logger.warning(
                "Dedupe read for customer %s event %s failed (%s); delivering anyway",
                customer_id,
                event_id,
                type(error).__name__,
            )
            return None
        delivered = _parse_time(entity.get("deliveredAt"))
        if delivered is None or datetime.now(UTC) - delivered > self.window:
            return None
        return delivered

    async def mark_delivered(self, customer_id: str, event_id: str) -> None:
        """Record the delivery; a failure is logged, never raised, since the event got there."""
        if not self.enabled:
            return
        from azure.core.exceptions import AzureError

        entity = {
            "PartitionKey": customer_id,
            "RowKey": event_id,
            "deliveredAt": datetime.now(UTC).isoformat(),
        }
        try:
            await self._ensure_table()
            await self._table.upsert_entity(entity)
        except AzureError as error:
            logger.warning(
                "Dedupe mark for customer %s event %s failed (%s); a redelivery may repeat it",
                customer_id,
                event_id,
                type(error).__name__,
            )

    async def _ensure_table(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        async with self._lock:
            if self._created:
                return
            with contextlib.suppress(ResourceExistsError):
                await self._table.create_table()
            self._created = True

    async def close(self) -> None:
        await self._table.close()
        credential = getattr(self, "_credential", None)
        if credential is not None:
            await credential.close()


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
