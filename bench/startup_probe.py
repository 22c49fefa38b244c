"""Serve requests through one function module in a fresh interpreter, for `bench.startup`.

`python -m bench.startup_probe MODULE CUSTOMER_ID [--timed]` imports MODULE
(`webhook_ingest` or `event_processor`) with the app settings in the environment, then
calls its `main` twice: with a signed POST for `webhook_ingest`, with an envelope for
`event_processor`, which delivers it to a ClientTrack stand-in run in a thread.

Without `--timed`, a profile hook on the main thread records the module of every function
called during the two requests. With `--timed`, nothing is recorded and the two requests are
timed instead, the first one paying for building the clients and the deferred imports.
The result is one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import json
import os
import sys
import time
from types import FrameType, ModuleType
from typing import Any


def main(argv: list[str]) -> int:
    module_name, customer_id = argv[0], argv[1]
    timed = "--timed" in argv[2:]

    module = importlib.import_module(module_name)
    stand_in = _start_clienttrack() if module_name == "event_processor" else None
    requests = [_request(module_name, customer_id, number) for number in (1, 2)]
    loaded_before_requests = set(sys.modules)

    ran: set[str] = set()

    def record(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            ran.add(str(frame.f_globals.get("__name__")))
        elif event == "c_call":
            ran.add(str(getattr(arg, "__module__", None)))

    if not timed:
        sys.setprofile(record)
    try:
        statuses, durations = asyncio.run(_serve(module, requests))
    finally:
        sys.setprofile(None)
        if stand_in is not None:
            delivered = stand_in.stats()["delivered"]
            stand_in.stop_thread()
    if stand_in is not None:
        statuses = [*statuses, f"{delivered} delivered"]

    result: dict[str, Any] = {
        "status": statuses,
        "imported_by_request": sorted(set(sys.modules) - loaded_before_requests),
    }
    if timed:
        result["first_request_ms"] = round(durations[0] * 1000, 1)
        result["second_request_ms"] = round(durations[1] * 1000, 1)
    else:
        result["ran"] = sorted(ran)
    print(json.dumps(result))
    return 0


def _start_clienttrack() -> Any:
    """Run the ClientTrack stand-in in a thread and point the app's settings at it."""
    from devhost.clienttrack import ClientTrackStandIn
    from shared.settings import reset_settings

    stand_in = ClientTrackStandIn(dict(os.environ), keep_requests=False)
    stand_in.start_in_thread()
    os.environ["CLIENTTRACK_INTEGRATION_QUEUE_URL"] = stand_in.url
    reset_settings()
    return stand_in


def _body(number: int) -> bytes:
    # The current time makes every probe's events new to the dedupe ledger, which would
    # otherwise skip the second probe's deliveries as repeats of the first probe's.
    document = {
        "time": time.time_ns() // 1_000_000 + number,
        "triggerId": 3,
        "triggerName": "taskCompleted",
        "taskId": "probe-task",
        "workerId": "probe-worker",
        "adminId": None,
        "actionContext": {"type": "WORKER", "id": "probe-worker"},
        "data": {"task": {"id": "probe-task", "state": 3}},
    }
    return json.dumps(document).encode("utf-8")


def _request(module_name: str, customer_id: str, number: int) -> Any:
    import azure.functions as func

    body = _body(number)
    if module_name == "webhook_ingest":
        # Signed here with hmac rather than shared.signature, which the request path
        # imports on first use; importing it here would hide that import.
        key = bytes.fromhex(os.environ["BENCH_PROBE_SECRET_HEX"])
        signature = hmac.new(key, body, hashlib.sha512).hexdigest()
        return func.HttpRequest(
            "POST",
            f"http://127.0.0.1/onfleet/webhooks/{customer_id}",
            headers={"X-Onfleet-Signature": signature},
            route_params={"customerId": customer_id},
            body=body,
        )
    from shared.envelope import build_envelope

    envelope = build_envelope(customer_id, body)
    return func.QueueMessage(id=f"probe-{number}", body=envelope.to_json().encode("utf-8"))


async def _serve(module: ModuleType, requests: list[Any]) -> tuple[list[str], list[float]]:
    """Call the function with each request on one event loop, as the worker would."""
    from shared.runtime import get_runtime

    statuses: list[str] = []
    durations: list[float] = []
    try:
        for request in requests:
            started = time.perf_counter()
            response = await module.main(request)
            durations.append(time.perf_counter() - started)
            statuses.append(str(response.status_code) if response is not None else "returned")
    finally:
        await get_runtime().close()
    return statuses, durations


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
