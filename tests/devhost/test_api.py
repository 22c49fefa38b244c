"""The programmatic API: `load_app` and `DevHost` running inside the test's event loop."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import aiohttp
import pytest
from azure.storage.queue.aio import QueueClient

from devhost import queue_trigger
from devhost.host import DevHost, load_app
from tests.devhost.toyapp import http_function, queue_function, write_app

HTTP_CODE = """
    import azure.functions as func


    async def main(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("hello " + req.route_params["name"])
"""

QUEUE_CODE = """
    import asyncio

    received = []
    arrived = asyncio.Event()


    async def main(msg):
        received.append(msg.get_body())
        arrived.set()
"""


async def test_devhost_in_process(
    tmp_path: Path, storage_connection_string: str, queue_name: str
) -> None:
    # Module names are unique to this test because the app is imported into this process.
    app_root = write_app(
        tmp_path / "app",
        {
            "api_hello": (http_function(route="hello/{name}"), HTTP_CODE),
            "api_consumer": (queue_function("%API_QUEUE%"), QUEUE_CODE),
        },
        host={"version": "2.0", "extensions": {"queues": {"maxPollingInterval": "00:00:01"}}},
    )
    environ = {"AzureWebJobsStorage": storage_connection_string, "API_QUEUE": queue_name}
    app = load_app(app_root, environ=environ)
    consumer = next(function for function in app.functions if function.name == "api_consumer")
    module = consumer.callable.__globals__

    async with DevHost(app, port=0, environ=environ) as host:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{host.port}/api/hello/tester") as response,
        ):
            status = response.status
            text = await response.text()

        async with QueueClient.from_connection_string(
            storage_connection_string, queue_name
        ) as queue:
            await queue.send_message(base64.b64encode(b"in-process").decode())
            await asyncio.wait_for(module["arrived"].wait(), timeout=20)
            await queue.delete_queue()

    assert status == 200
    assert text == "hello tester"
    assert module["received"] == [b"in-process"]
    assert host.describe() == [
        f"api_hello: [GET,POST] http://127.0.0.1:{host.port}/api/hello/{{name}}",
        f"api_consumer: queueTrigger {queue_name}",
    ]


SLOW_CODE = """
    import asyncio

    calls = []
    finished = asyncio.Event()


    async def main(msg):
        calls.append(msg.dequeue_count)
        await asyncio.sleep(3.5)
        finished.set()
"""


async def test_lease_renewed_without_timeout(
    tmp_path: Path,
    storage_connection_string: str,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 2 s lease renewed every second must keep a 3.5 s invocation from being redelivered.
    monkeypatch.setattr(queue_trigger, "RENEWED_LEASE_SECONDS", 2)
    app_root = write_app(
        tmp_path / "app",
        {"api_slow": (queue_function(queue_name), SLOW_CODE)},
        host={
            "version": "2.0",
            "functionTimeout": "-1",
            "extensions": {"queues": {"maxPollingInterval": "00:00:00.2"}},
        },
    )
    environ = {"AzureWebJobsStorage": storage_connection_string}
    app = load_app(app_root, environ=environ)
    module = app.functions[0].callable.__globals__

    async with (
        DevHost(app, port=0, environ=environ),
        QueueClient.from_connection_string(storage_connection_string, queue_name) as queue,
    ):
        await queue.send_message(base64.b64encode(b"slow").decode())
        await asyncio.wait_for(module["finished"].wait(), timeout=20)
        await asyncio.sleep(0.5)
        properties = await queue.get_queue_properties()
        await queue.delete_queue()

    assert module["calls"] == [1]
    assert properties.approximate_message_count == 0
