"""The long-lived objects of one worker process: settings, secret cache, clients, handlers.

The Python worker runs every async invocation on one event loop, so the clients are built
once on that loop and reused by every request and queue message. A different running loop
(each test has its own) gets a fresh set, because aiohttp sessions cannot cross loops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from shared.secrets import AppSettingsSecretStore, CachedSecrets, KeyVaultSecretStore, SecretStore
from shared.settings import Settings, get_settings
from shared.storage import EventStorage

if TYPE_CHECKING:
    from shared.ingest import IngestHandler
    from shared.processor import EventProcessor


class Runtime:
    """Everything the functions share within one worker and event loop."""

    def __init__(self, settings: Settings, *, secret_store: SecretStore | None = None) -> None:
        self.settings = settings
        store = secret_store or make_secret_store(settings)
        self.secrets = CachedSecrets(
            store,
            ttl_seconds=settings.secret_cache_seconds,
            missing_ttl_seconds=settings.secret_refresh_min_seconds,
            # Reading app settings costs nothing, so only a vault's reads are limited.
            max_reads_per_second=(
                settings.max_secret_reads_per_second
                if isinstance(store, KeyVaultSecretStore)
                else float("inf")
            ),
        )
        self.storage = EventStorage(settings)
        self._ingest: IngestHandler | None = None
        self._processor: EventProcessor | None = None

    @property
    def ingest(self) -> IngestHandler:
        if self._ingest is None:
            from shared.ingest import IngestHandler

            self._ingest = IngestHandler(self.settings, self.secrets, self.storage)
        return self._ingest

    @property
    def processor(self) -> EventProcessor:
        if self._processor is None:
            from shared.processor import EventProcessor

            self._processor = EventProcessor(self.settings, self.secrets, self.storage)
        return self._processor

    async def close(self) -> None:
        if self._processor is not None:
            await self._processor.close()
        await self.storage.close()
        await self.secrets.close()


def make_secret_store(settings: Settings) -> SecretStore:
    """Choose Key Vault when KEY_VAULT_URL is set, app settings otherwise."""
    if settings.key_vault_url is not None:
        return KeyVaultSecretStore(settings.key_vault_url)
    return AppSettingsSecretStore()


_runtime: Runtime | None = None
_runtime_loop: asyncio.AbstractEventLoop | None = None
_closer: AsyncIterator[None] | None = None
_closer_started: asyncio.Future[None] | None = None


async def _close_at_loop_shutdown(runtime: Runtime) -> AsyncIterator[None]:
    """Close the runtime's clients when the event loop shuts down its async generators.

    A loop run by `asyncio.run` calls `aclose()` on every started async generator before it
    closes, which runs the `finally` below while the loop can still await. Without it the
    aiohttp sessions of the Azure clients are only garbage-collected, with an error logged.
    """
    try:
        yield
    finally:
        await runtime.close()


def get_runtime() -> Runtime:
    """Return the runtime of the running event loop, building it on first use."""
    global _runtime, _runtime_loop, _closer, _closer_started
    loop = asyncio.get_running_loop()
    if _runtime is None or _runtime_loop is not loop:
        _runtime = Runtime(get_settings())
        _runtime_loop = loop
        _closer = _close_at_loop_shutdown(_runtime)
        # Advancing the generator to its yield registers it with this loop's shutdown.
        _closer_started = asyncio.ensure_future(anext(_closer))
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime for the running loop (tests inject stand-in secret stores)."""
    global _runtime, _runtime_loop
    _runtime = runtime
    _runtime_loop = asyncio.get_running_loop() if runtime is not None else None
