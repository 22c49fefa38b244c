"""Settings that could lose events stop devhost at start-up, naming the setting.

tests/test_settings.py checks each rule on `load_settings`. This test starts the real runner
with one bad setting and checks that it exits before it takes a request or a message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devhost.azurite import PROJECT_ROOT, free_port
from tests.e2e_reliability.support import bridge_settings, write_settings_file

# python -m devhost exits with this code when the app's configuration is invalid.
EXIT_CONFIGURATION = 2
START_TIMEOUT_SECONDS = 60.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # Two calls of 5 + 200 s cannot finish within host.json's functionTimeout of 5 min,
        # so the message lease could end while the delivery still runs.
        ("CLIENTTRACK_READ_TIMEOUT_SECONDS", "200"),
        ("MAX_DELIVERY_ATTEMPTS", "0"),
        ("KEY_VAULT_URL", "vault.example.net"),
        ("ONFLEET_EVENTS_QUEUE", "q" * 57),
    ],
    ids=["timeout-over-lease", "no-attempts", "key-vault-url", "queue-name-too-long"],
)
def test_unsafe_setting_stops_devhost(
    storage_connection_string: str,
    reliability_app: Path,
    tmp_path: Path,
    name: str,
    value: str,
) -> None:
    settings = bridge_settings(storage_connection_string, "http://127.0.0.1:9/queue")
    settings[name] = value
    settings_file = write_settings_file(tmp_path / "local.settings.json", settings)
    command = [
        sys.executable, "-m", "devhost",
        "--app-root", str(reliability_app),
        "--settings", str(settings_file),
        "--port", str(free_port()),
    ]  # fmt: skip

    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        # Only the settings under test, so no variable of the developer's shell interferes.
        env={"PATH": os.environ.get("PATH", os.defpath), **settings},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_SECONDS,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == EXIT_CONFIGURATION, output
    assert name in output
    assert "Invalid function app configuration" in output
    assert "devhost ready" not in result.stdout
