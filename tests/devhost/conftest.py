"""Fixtures for the devhost tests: start `python -m devhost` on a toy app and clean up."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from devhost.azurite import free_port
from tests.devhost.toyapp import DevhostProcess, devhost_env

StartDevhost = Callable[..., DevhostProcess]


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """Folder where toy functions write what they received."""
    path = tmp_path / "output"
    path.mkdir()
    return path


@pytest.fixture
def start_devhost(
    tmp_path: Path, storage_connection_string: str, output_dir: Path
) -> Iterator[StartDevhost]:
    """Start devhost on a toy app and wait until it is ready; kill it after the test."""
    started: list[DevhostProcess] = []

    def start(
        app_root: Path,
        *,
        env: Mapping[str, str] | None = None,
        arguments: Sequence[str] = (),
    ) -> DevhostProcess:
        process = DevhostProcess(
            app_root,
            port=free_port(),
            env=devhost_env(storage_connection_string, output_dir, **(env or {})),
            log_path=tmp_path / f"devhost-{len(started)}.log",
            arguments=arguments,
        )
        started.append(process)
        process.start()
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def queue(storage_connection_string: str, queue_name: str) -> Iterator[QueueClient]:
    """A client for the test's own queue, created empty; deletes it and its poison queue after."""
    client = QueueClient.from_connection_string(storage_connection_string, queue_name)
    client.create_queue()
    yield client
    client.delete_queue()
    # Only some tests create the poison queue.
    with (
        QueueClient.from_connection_string(
            storage_connection_string, f"{queue_name}-poison"
        ) as poison,
        contextlib.suppress(ResourceNotFoundError),
    ):
        poison.delete_queue()
    client.close()
