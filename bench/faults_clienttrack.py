"""The ClientTrack stand-in of the fault-injection run, with injected timeouts.

`python -m bench.faults_clienttrack` runs `devhost.clienttrack.ClientTrackStandIn` with its
own fault settings (dropped connections, then failure statuses in turn) and adds one more
fault kind: a response held back for `--timeout-delay-ms`, longer than the bridge's
`CLIENTTRACK_READ_TIMEOUT_SECONDS`, so the bridge's call times out. The late response is
`TIMEOUT_STATUS` (504), not a 2xx: the stand-in models a ClientTrack that did not take the
event, so a timed-out call never counts as a delivery, and the record file shows each
injected timeout as one 504.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devhost.clienttrack import (
    ClientTrackStandIn,
    FaultSettings,
    ScriptedResponse,
    local_secrets,
)
from shared.errors import ConfigurationError

TIMEOUT_STATUS = 504


class TimeoutInjectingStandIn(ClientTrackStandIn):
    """The ClientTrack stand-in, responding to a fraction of accepted requests too late."""

    def __init__(
        self,
        secrets: Mapping[str, str],
        *,
        timeout_rate: float,
        timeout_delay_seconds: float,
        **options: Any,
    ) -> None:
        super().__init__(secrets, **options)
        if not 0.0 <= timeout_rate <= 1.0:
            raise ValueError(f"timeout_rate must be between 0 and 1, got {timeout_rate!r}.")
        self.timeout_rate = timeout_rate
        self.timeout_delay_seconds = timeout_delay_seconds
        seed = self.faults.seed
        # A generator of its own, so adding timeouts leaves the other faults' sequence as the
        # seed makes it.
        self._timeout_random = random.Random(None if seed is None else seed + 1)

    def _next_response(self) -> ScriptedResponse:
        # Overrides the stand-in's choice of response: a timeout first, else its own faults.
        if self._timeout_random.random() < self.timeout_rate:
            return ScriptedResponse(TIMEOUT_STATUS, delay_seconds=self.timeout_delay_seconds)
        return super()._next_response()


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1.")
    return value


def _statuses(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of HTTP statuses such as 500,503,429."
        ) from None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults_clienttrack",
        description="Run the ClientTrack stand-in with failure statuses, dropped connections "
        "and timeouts, for the fault-injection run.",
    )
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument(
        "--settings", type=Path, required=True, help="settings file with the clienttrack-* secrets"
    )
    parser.add_argument(
        "--record", type=Path, required=True, help="JSON Lines file of accepted requests"
    )
    parser.add_argument(
        "--fail-rate", type=_rate, default=0.0, help="fraction that gets a failure status"
    )
    parser.add_argument(
        "--statuses", type=_statuses, default=(500,), help="failure statuses, used in turn"
    )
    parser.add_argument(
        "--retry-after", type=float, default=None, help="Retry-After seconds on 429 and 503"
    )
    parser.add_argument(
        "--drop-connection-rate",
        type=_rate,
        default=0.0,
        help="fraction whose connection is closed without a response",
    )
    parser.add_argument(
        "--timeout-rate", type=_rate, default=0.0, help="fraction whose response comes too late"
    )
    parser.add_argument(
        "--timeout-delay-ms",
        type=float,
        default=0.0,
        help="how long a timed-out request waits before its 504, in milliseconds",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed of the faults")
    return parser.parse_args(argv)


async def _serve(stand_in: TimeoutInjectingStandIn) -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stand_in.start()
    print(f"ClientTrack stand-in with faults listening on {stand_in.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await stand_in.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # One INFO line per request would cost more than the requests themselves in a long run.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    try:
        faults = FaultSettings(
            fail_rate=args.fail_rate,
            statuses=args.statuses,
            retry_after_seconds=args.retry_after,
            drop_connection_rate=args.drop_connection_rate,
            seed=args.seed,
        )
        stand_in = TimeoutInjectingStandIn(
            local_secrets(args.settings),
            timeout_rate=args.timeout_rate,
            timeout_delay_seconds=args.timeout_delay_ms / 1000.0,
            port=args.port,
            faults=faults,
            record_path=args.record,
            keep_requests=False,
        )
    except (ConfigurationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    asyncio.run(_serve(stand_in))
    return 0


if __name__ == "__main__":
    sys.exit(main())
