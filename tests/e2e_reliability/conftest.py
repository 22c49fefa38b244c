"""Fixtures of the reliability tests: one copy of the app per session, a bridge per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devhost.clienttrack import ClientTrackStandIn
from tests.e2e_reliability.support import (
    ReliabilityBridge,
    clienttrack_secrets,
    copy_app,
    running_bridge,
)


@pytest.fixture(scope="session")
def reliability_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_app(tmp_path_factory.mktemp("reliability-app"))


@pytest.fixture
def standin() -> Iterator[ClientTrackStandIn]:
    with ClientTrackStandIn(clienttrack_secrets()) as server:
        yield server


@pytest.fixture
def bridge(
    reliability_app: Path,
    tmp_path: Path,
    storage_connection_string: str,
    standin: ClientTrackStandIn,
) -> Iterator[ReliabilityBridge]:
    with running_bridge(reliability_app, tmp_path, storage_connection_string, standin) as running:
        yield running
