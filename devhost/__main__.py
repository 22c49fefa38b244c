"""`python -m devhost`: run this function app locally without Azure Functions Core Tools.

Exit codes: 0 after a clean stop (SIGINT or SIGTERM), 1 when a trigger cannot start (for
example, storage is unreachable or the port is taken), 2 when the app's configuration is
invalid. A second SIGINT or SIGTERM exits at once with code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from devhost.config import DEFAULT_HTTP_PORT, ConfigurationError
from devhost.host import DEFAULT_HOST, DevHost, HostStartError, load_app
from devhost.invocation import FunctionLoadError

logger = logging.getLogger("devhost")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXIT_START_FAILED = 1
EXIT_CONFIGURATION = 2
EXIT_FORCED = 1
READY_LINE = "devhost ready"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The Azure SDK logs every HTTP request at INFO, which would drown the invocation lines.
QUIET_LOGGERS = ("azure", "aiohttp.access")


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost",
        description="Run the HTTP and queue triggers of a v1-model Python function app locally.",
    )
    parser.add_argument(
        "--app-root",
        type=Path,
        default=PROJECT_ROOT,
        help="folder with host.json and one folder per function (default: %(default)s)",
    )
    parser.add_argument(
        "--settings",
        type=Path,
        default=None,
        help="settings file whose Values become environment variables not already set "
        "(default: local.settings.json in the app root, else local.settings.json.example)",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address the HTTP server binds to (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"HTTP port; 0 picks a free one (default: Host.LocalHttpPort from the settings "
        f"file, else {DEFAULT_HTTP_PORT})",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="minimum level of log lines on stderr (default: %(default)s)",
    )
    return parser.parse_args(argv)


def _configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level, format=LOG_FORMAT)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def main(argv: list[str] | None = None) -> int:
    arguments = _parse_arguments(argv)
    _configure_logging(arguments.log_level)

    try:
        app = load_app(arguments.app_root, settings_file=arguments.settings)
        port = arguments.port
        if port is None:
            configured = app.settings.local_http_port if app.settings is not None else None
            port = configured if configured is not None else DEFAULT_HTTP_PORT
        host = DevHost(app, host=arguments.host, port=port)
    except ConfigurationError as error:
        # An import failure shows the function's own traceback, which points at the bad line.
        cause = error.__cause__ if isinstance(error, FunctionLoadError) else None
        logger.error("Invalid function app configuration: %s", error, exc_info=cause)
        return EXIT_CONFIGURATION

    if app.settings is not None:
        logger.info("Loaded settings from %s.", app.settings.path)
    code = asyncio.run(_serve(host))

    if host.threads_running:
        # A synchronous function still runs in a pool thread, and the interpreter would wait
        # for it at exit however long it takes.
        logger.warning(
            "Exiting with %d synchronous invocations still running.", host.threads_running
        )
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code


async def _serve(host: DevHost) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            logger.info("Received %s; stopping gracefully (send it again to exit at once).", name)
            stop.set()
            return
        logger.warning("Received %s again; exiting without waiting for invocations.", name)
        logging.shutdown()
        os._exit(EXIT_FORCED)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)

    # A signal during start-up (storage retries can take several seconds) stops at once.
    starting = asyncio.create_task(host.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, HostStartError):
            await starting
        await host.stop()
        return 0
    try:
        starting.result()
    except HostStartError as error:
        logger.error("%s", error)
        host.invoker.close()
        return EXIT_START_FAILED

    for line in host.describe():
        print(line)
    print(READY_LINE, flush=True)

    await stop.wait()
    await host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
