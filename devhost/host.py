"""Load a function app and run its HTTP and queue triggers inside one asyncio loop.

`load_app` reads the configuration, applies local settings to the environment and imports
the functions. `DevHost` starts an HTTP server and one queue listener per queue-triggered
function, and stops them gracefully. `python -m devhost` wraps both, and tests can use them
in-process:

    app = load_app(Path("my_app"))
    async with DevHost(app, port=0) as host:
        ...  # send requests to host.port
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from azure.core.exceptions import AzureError

from devhost.config import (
    DEFAULT_HTTP_PORT,
    HTTP_TRIGGER,
    ConfigurationError,
    HostConfig,
    LocalSettings,
    apply_settings,
    connection_string,
    discover_functions,
    find_settings_file,
    load_host_config,
    load_local_settings,
)
from devhost.http_trigger import HttpEndpoint, HttpServer, build_endpoints
from devhost.invocation import (
    Invoker,
    LoadedFunction,
    load_function,
    prepare_import_path,
    thread_pool_size,
)
from devhost.queue_trigger import LEASE_MARGIN_SECONDS, QueueListener

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# With an unbounded functionTimeout the HTTP server waits up to a year for requests in
# progress at shutdown, which is no limit in practice.
UNBOUNDED_SHUTDOWN_SECONDS = 365 * 24 * 3600.0


class HostStartError(Exception):
    """A trigger could not start, for example because queue storage is unreachable."""


@dataclass(frozen=True)
class FunctionApp:
    """A loaded function app: its host.json, local settings and imported functions."""

    root: Path
    host_config: HostConfig
    settings: LocalSettings | None
    functions: tuple[LoadedFunction, ...]


def load_app(
    app_root: Path,
    *,
    settings_file: Path | None = None,
    environ: MutableMapping[str, str] | None = None,
) -> FunctionApp:
    """Read the app's configuration, apply its local settings and import its functions.

    Settings go into `environ` (default `os.environ`) without replacing variables already
    set. Raises ConfigurationError when anything is invalid.
    """
    root = app_root.resolve()
    if not root.is_dir():
        raise ConfigurationError(f"App root {root} is not a directory.")
    target = os.environ if environ is None else environ

    settings_path = settings_file if settings_file is not None else find_settings_file(root)
    settings = load_local_settings(settings_path) if settings_path is not None else None
    if settings is not None:
        apply_settings(settings.values, target)

    host_config = load_host_config(root)
    configs = discover_functions(root, host_config, target)
    prepare_import_path(root)
    functions = tuple(load_function(config, root) for config in configs)
    return FunctionApp(root=root, host_config=host_config, settings=settings, functions=functions)


class DevHost:
    """Runs a loaded function app's triggers: an HTTP server and queue listeners."""

    def __init__(
        self,
        app: FunctionApp,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_HTTP_PORT,
        environ: MutableMapping[str, str] | None = None,
    ) -> None:
        """Prepare the triggers; raises ConfigurationError for a missing connection setting."""
        self.app = app
        target = os.environ if environ is None else environ
        timeout = app.host_config.function_timeout_seconds
        self.invoker = Invoker(
            function_timeout_seconds=timeout, thread_count=thread_pool_size(target)
        )

        http_functions = [
            function
            for function in app.functions
            if function.config.trigger.normalized_type == HTTP_TRIGGER
        ]
        self.endpoints: list[HttpEndpoint] = build_endpoints(
            http_functions, app.host_config.route_prefix
        )
        self.http_server = HttpServer(
            self.endpoints,
            self.invoker,
            host=host,
            port=port,
            shutdown_timeout_seconds=timeout if timeout is not None else UNBOUNDED_SHUTDOWN_SECONDS,
        )

        self.listeners: list[QueueListener] = []
        for function in app.functions:
            trigger = function.config.trigger
            if trigger.normalized_type == HTTP_TRIGGER:
                continue
            self.listeners.append(
                QueueListener(
                    function,
                    self.invoker,
                    app.host_config.queues,
                    connection_string=connection_string(function.name, trigger, target),
                    queue_name=str(trigger.settings["queueName"]),
                )
            )
        self._started: list[QueueListener] = []

    @property
    def port(self) -> int:
        """The HTTP port, known once `start` has returned (useful with port 0)."""
        return self.http_server.port

    async def start(self) -> None:
        """Create missing queues, start polling and listen for HTTP; raises HostStartError."""
        try:
            for listener in self.listeners:
                await listener.start()
                self._started.append(listener)
        except AzureError as error:
            await self._stop_listeners(timeout_seconds=0)
            raise HostStartError(
                f"Function {listener.function.name}: cannot open queue {listener.queue_name!r}. "
                f"Check that storage (Azurite) runs and the connection string is right: {error}"
            ) from error

        try:
            await self.http_server.start()
        except OSError as error:
            await self._stop_listeners(timeout_seconds=0)
            raise HostStartError(
                f"Cannot listen on {self.http_server.host}: {error.strerror}. Pick another "
                "address or port with --host and --port."
            ) from error

    def describe(self) -> list[str]:
        """Return one line per function: its name, trigger and, for HTTP, its URL."""
        lines = []
        for endpoint in self.endpoints:
            methods = f"{endpoint.methods_label} " if endpoint.methods_label else ""
            lines.append(f"{endpoint.function.name}: {methods}{self.http_server.url(endpoint)}")
        for listener in self.listeners:
            lines.append(f"{listener.function.name}: queueTrigger {listener.queue_name}")
        return lines

    @property
    def threads_running(self) -> int:
        """Synchronous invocations still running in the thread pool."""
        return self.invoker.threads_running

    async def stop(self) -> int:
        """Stop polling and accepting requests, wait for invocations in progress, close.

        The wait is bounded by host.json's functionTimeout plus a margin for completing the
        messages. Returns the number of queue invocations cut off at that bound.
        """
        logger.info("Stopping: no new messages or requests; waiting for invocations in progress.")
        for listener in self._started:
            listener.request_stop()
        timeout = self.app.host_config.function_timeout_seconds
        wait_seconds = None if timeout is None else timeout + LEASE_MARGIN_SECONDS
        _, abandoned = await asyncio.gather(
            self.http_server.stop(), self._stop_listeners(timeout_seconds=wait_seconds)
        )
        self.invoker.close()
        logger.info("Stopped.")
        return abandoned

    async def _stop_listeners(self, *, timeout_seconds: float | None) -> int:
        results = await asyncio.gather(
            *(listener.stop(timeout_seconds) for listener in self._started)
        )
        self._started.clear()
        return sum(results)

    async def __aenter__(self) -> DevHost:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
