"""Fixtures shared by every suite: a real Azurite, reached over its real ports.

When `AZURITE_CONNECTION_STRING` is set (as `.ci/run` does), the tests use that Azurite;
otherwise the session starts its own on free ports in a temporary directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from devhost.azurite import running_azurite


@pytest.fixture(scope="session")
def storage_connection_string() -> Iterator[str]:
    given = os.environ.get("AZURITE_CONNECTION_STRING")
    if given:
        yield given
        return
    with running_azurite() as azurite:
        yield azurite.connection_string


@pytest.fixture
def queue_name() -> str:
    """A queue name no other test uses, so tests never see each other's messages."""
    return f"t{uuid.uuid4().hex[:20]}"
