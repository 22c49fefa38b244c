"""A ledger of event ids in Azure Table storage, for at-most-once delivery per event id.

Before calling ClientTrack the processor claims the event id: it inserts a `claimed` row,
which fails when the row exists. A row marked `delivered` within `DEDUPE_WINDOW_HOURS`
makes the copy a duplicate; a fresh claim by another invocation makes it wait and look
again later. After ClientTrack's 2xx the row becomes `delivered`; after a failure the claim
is released so a retry can take it. Onfleet's retries of one delivery, the queue's
at-least-once redelivery and an operator's replay carry the same event id, so each leads to
one ClientTrack call, even when the copies are processed at the same moment.

An event can still reach ClientTrack twice when the process dies between ClientTrack's 2xx
and the mark, because the claim then expires after the function timeout; the
`Idempotency-Key` header lets ClientTrack drop such a copy. While Table storage cannot be
reached, events wait: a failed claim is retried like a ClientTrack outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.errors import StorageUnavailable
from shared.settings import Settings
from shared.transport import sdk_transport_options

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

logger = logging.getLogger(__name__)

_CLAIMED = "claimed"
_DELIVERED = "delivered"


class Claim(enum.Enum):
    """The ledger's answer to whether an event may be delivered now."""

    TAKEN = "taken"
    DELIVERED = "delivered"
    BUSY = "busy"


class DeliveryLedger:
    """Delivered event ids, partitioned by customer."""

    def __init__(self, settings: Settings) -> None:
        from azure.data.tables.aio import TableClient

        self.window = timedelta(hours=settings.dedupe_window_hours)
        self.table_name = settings.dedupe_table
        # A claim older than the longest an invocation may run belongs to a dead one.
        self.claim_lifetime = timedelta(seconds=settings.function_timeout_seconds)
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

    async def claim(self, customer_id: str, event_id: str) -> Claim:
        """Take the event id for one delivery attempt, or tell why not to deliver now.

        Raises `StorageUnavailable` when Table storage fails. The processor then retries the
        event later instead of delivering it unchecked, which could repeat a delivery.
        """
        if not self.enabled:
            return Claim.TAKEN
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            AzureError,
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )

        now = datetime.now(UTC)
        entity = {
            "PartitionKey": customer_id,
            "RowKey": event_id,
            "state": _CLAIMED,
            "claimedAt": now.isoformat(),
        }
        try:
            try:
                await self._with_table(lambda: self._table.create_entity(entity))
                return Claim.TAKEN
            except ResourceExistsError:
                pass
            except ResourceNotFoundError:
                raise StorageUnavailable(
                    f"Dedupe table {self.table_name} is missing and could not be created "
                    "again yet (Azure keeps a deleted table's name for a while)."
                ) from None
            existing = await self._table.get_entity(customer_id, event_id)
            state = existing.get("state", _DELIVERED)
            if state == _DELIVERED:
                delivered = _parse_time(existing.get("deliveredAt"))
                if delivered is not None and now - delivered <= self.window:
                    return Claim.DELIVERED
            else:
                claimed = _parse_time(existing.get("claimedAt"))
                if claimed is not None and now - claimed < self.claim_lifetime:
                    return Claim.BUSY
            # The row is a delivery older than the window or a claim whose holder died:
            # take it over, unless another invocation does so first.
            await self._table.update_entity(
                entity,
                mode="replace",
                etag=existing.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
            return Claim.TAKEN
        except ResourceModifiedError:
            # Another invocation took the row over between the two calls.
            return Claim.BUSY
        except ResourceNotFoundError:
            # Another invocation released the row between the two calls.
            return Claim.BUSY
        except AzureError as error:
            raise StorageUnavailable(
                f"Dedupe claim in table {self.table_name} failed: {type(error).__name__}."
            ) from None

    async def mark_delivered(self, customer_id: str, event_id: str) -> None:
        """Record the delivery; a failure is logged, never raised, since the event got there."""
        if not self.enabled:
            return
        from azure.core.exceptions import AzureError

        entity = {
            "PartitionKey": customer_id,
            "RowKey": event_id,
            "state": _DELIVERED,
            "deliveredAt": datetime.now(UTC).isoformat(),
        }
        try:
            await self._with_table(lambda: self._table.upsert_entity(entity, mode="replace"))
        except AzureError as error:
            logger.warning(
                "Dedupe mark for customer %s event %s failed (%s); a redelivery may repeat it",
                customer_id,
                event_id,
                type(error).__name__,
            )

    async def release(self, customer_id: str, event_id: str) -> None:
        """Drop this attempt's claim so the next attempt, or a replay, can take it."""
        if not self.enabled:
            return
        from azure.core.exceptions import AzureError

        try:
            await self._table.delete_entity(customer_id, event_id)
        except AzureError as error:
            # The claim then expires on its own after the function timeout.
            logger.warning(
                "Dedupe release for customer %s event %s failed (%s)",
                customer_id,
                event_id,
                type(error).__name__,
            )

    async def _with_table(self, operation: Callable[[], Awaitable[object]]) -> None:
        """Run a write, creating the table first, and again if it was deleted meanwhile."""
        from azure.core.exceptions import ResourceNotFoundError

        await self._ensure_table()
        try:
            await operation()
        except ResourceNotFoundError:
            # An insert or upsert finds no row to miss, so a 404 means the table is gone
            # (Azurite sends no error code with it).
            self._created = False
            await self._ensure_table()
            await operation()

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
