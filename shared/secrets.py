"""Per-customer secrets: Key Vault in Azure, app settings locally, one cache in front.

Both stores answer `get(name)` with the secret's value or None when no such secret exists, and
raise `SecretStoreUnavailable` when the store cannot answer now (throttling, outage, refused
identity). `CachedSecrets` keeps values in memory so Key Vault sees about one read per secret
per cache period rather than one per event; Key Vault throttles a vault at 4,000 secret reads
per 10 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from shared.errors import SecretStoreUnavailable
from shared.transport import sdk_transport_options

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

logger = logging.getLogger(__name__)

# A secret read happens while Onfleet waits at most 10 seconds for the whole request, so the
# Key Vault client gets a short retry budget instead of azure-core's default of minutes.
KEY_VAULT_RETRY_TOTAL = 2
KEY_VAULT_RETRY_BACKOFF_MAX_SECONDS = 1.0
KEY_VAULT_CONNECTION_TIMEOUT_SECONDS = 3.0
KEY_VAULT_READ_TIMEOUT_SECONDS = 3.0
# Far more secrets than customers times three, and a bound on memory under a flood of
# requests for made-up customer ids.
MAX_CACHED_SECRETS = 10_000


def webhook_secret_name(customer_id: str) -> str:
    return f"onfleet-webhook-secret-{customer_id}"


def subscription_key_name(customer_id: str) -> str:
    return f"clienttrack-subscription-key-{customer_id}"


def api_key_name(customer_id: str) -> str:
    return f"clienttrack-api-key-{customer_id}"


class SecretStore(Protocol):
    """A source of secrets by name."""

    async def get(self, name: str) -> str | None:
        """Return the secret's value, or None when it does not exist."""
        ...

    async def close(self) -> None: ...


class AppSettingsSecretStore:
    """Secrets read from app settings (the environment), for local runs without a vault.

    App Service on Linux turns `-` in setting names into `_`, so a name is looked up as
    given first and then with underscores.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    async def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None:
            value = self._environ.get(name.replace("-", "_"))
        if value is None or not value.strip():
            return None
        return value

    async def close(self) -> None:
        return None


class KeyVaultSecretStore:
    """Secrets read from Azure Key Vault with the async SDK client."""

    def __init__(
        self,
        vault_url: str,
        *,
        credential: AsyncTokenCredential | None = None,
        **client_options: Any,
    ) -> None:
        from azure.keyvault.secrets.aio import SecretClient

        self._owns_credential = credential is None
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self._credential = credential
        host = urlsplit(vault_url).hostname or ""
        options: dict[str, Any] = {
            # Key Vault's challenge names a resource that must match the vault's domain; a
            # vault on a loopback address (a local stand-in) cannot match it.
            "verify_challenge_resource": host not in ("127.0.0.1", "localhost", "::1"),
            "retry_total": KEY_VAULT_RETRY_TOTAL,
            "retry_backoff_max": KEY_VAULT_RETRY_BACKOFF_MAX_SECONDS,
            "connection_timeout": KEY_VAULT_CONNECTION_TIMEOUT_SECONDS,
            "read_timeout": KEY_VAULT_READ_TIMEOUT_SECONDS,
            **sdk_transport_options(),
        }
        options.update(client_options)
        self._client = SecretClient(vault_url, credential, **options)
        self._vault_host = host

    async def get(self, name: str) -> str | None:
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
        )

        try:
            secret = await self._client.get_secret(name)
        except ResourceNotFoundError:
            return None
        except ClientAuthenticationError as error:
            raise SecretStoreUnavailable(
                f"Key Vault {self._vault_host} rejected the identity while reading secret "
                f"{name}: {type(error).__name__}. Check the app's access policy or role "
                "assignment (Key Vault Secrets User)."
            ) from None
        except HttpResponseError as error:
            raise SecretStoreUnavailable(
                f"Key Vault {self._vault_host} responded with HTTP {error.status_code} while "
                f"reading secret {name}; retry later."
            ) from None
        except AzureError as error:
            raise SecretStoreUnavailable(
                f"Key Vault {self._vault_host} could not be reached while reading secret {name}: "
                f"{type(error).__name__}."
            ) from None
        return secret.value

    async def close(self) -> None:
        await self._client.close()
        if self._owns_credential:
            await self._credential.close()


class _TokenBucket:
    """Allows `rate` events per second on average, in bursts of up to two seconds' worth."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._capacity = max(rate * 2.0, 1.0)
        self._tokens = self._capacity
        self._clock = clock
        self._updated = clock()

    def take(self) -> bool:
        if self._rate == float("inf"):
            return True
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


@dataclass
class _Entry:
    value: str | None
    fetched_at: float


class CachedSecrets:
    """An in-memory cache with a time to live in front of a `SecretStore`.

    Concurrent misses for one name share a single read, so a burst of events for a customer
    whose entry just expired costs one Key Vault call. Absent secrets are cached for
    `missing_ttl_seconds`, which bounds reads caused by requests for unknown customers.
    """

    def __init__(
        self,
        store: SecretStore,
        *,
        ttl_seconds: float,
        missing_ttl_seconds: float,
        max_reads_per_second: float = float("inf"),
        max_entries: int = MAX_CACHED_SECRETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._ttl = ttl_seconds
        self._missing_ttl = missing_ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._pending: dict[str, asyncio.Future[_Entry]] = {}
        self._reads = _TokenBucket(max_reads_per_second, clock)

    async def get(self, name: str, *, max_age_seconds: float | None = None) -> str | None:
        """Return the secret's value, reading the store when the cached entry is too old.

        `max_age_seconds` tightens the cache's time to live for this call; a caller that
        suspects a rotated secret passes a small value to force a fresh read.
        """
        entry = self._entries.get(name)
        if entry is not None:
            age = self._clock() - entry.fetched_at
            ttl = self._ttl if entry.value is not None else self._missing_ttl
            if max_age_seconds is not None:
                ttl = min(ttl, max_age_seconds)
            if age < ttl:
                return entry.value
        return (await self._read(name)).value

    def age_seconds(self, name: str) -> float | None:
        """Return how long ago the cached entry was read, or None when there is none."""
        entry = self._entries.get(name)
        return None if entry is None else self._clock() - entry.fetched_at

    def forget(self, name: str) -> None:
        self._entries.pop(name, None)

    async def _read(self, name: str) -> _Entry:
        pending = self._pending.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(name))
            self._pending[name] = pending
            pending.add_done_callback(lambda _: self._pending.pop(name, None))
        # A cancelled caller must not cancel the read that other callers wait on.
        return await asyncio.shield(pending)

    async def _fetch(self, name: str) -> _Entry:
        if not self._reads.take():
            # Requests for made-up customer ids each miss the cache; without this limit they
            # would spend the vault's shared read budget (and grow the cache) without bound.
            raise SecretStoreUnavailable(
                f"Secret store read limit reached while reading secret {name}; retry later."
            )
        value = await self.store.get(name)
        entry = _Entry(value, self._clock())
        self._entries.pop(name, None)
        self._entries[name] = entry
        while len(self._entries) > self._max_entries:
            # Dicts keep insertion order, and a refreshed entry is re-inserted at the end, so
            # the first entry is the one read longest ago.
            del self._entries[next(iter(self._entries))]
        return entry

    async def close(self) -> None:
        for pending in list(self._pending.values()):
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        await self.store.close()
