"""Fixtures for the poison-queue CLI tests: the two queues on Azurite and an in-process runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from tests.ops.support import Cli


@pytest.fixture
def cli(
    storage_connection_string: str,
    queue_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    # A local.settings.json in the project folder must not leak into the tests.
    monkeypatch.chdir(tmp_path)
    return Cli(storage_connection_string, queue_name)


@pytest.fixture
def main_queue(storage_connection_string: str, queue_name: str) -> Iterator[QueueClient]:
    client = QueueClient.from_connection_string(storage_connection_string, queue_name)
    client.create_queue()
    yield client
    client.delete_queue()


@pytest.fixture
def poison_queue(storage_connection_string: str, queue_name: str) -> Iterator[QueueClient]:
    client = QueueClient.from_connection_string(storage_connection_string, f"{queue_name}-poison")
    client.create_queue()
    yield client
    client.delete_queue()
