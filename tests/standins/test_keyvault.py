"""The Key Vault stand-in serves the real aio SecretClient over HTTPS on 127.0.0.1.

Retries: most tests create the client with `retry_total=0`, so an injected fault surfaces on
the first response. The exhaustion test keeps retries on with `retry_total=2` and
`retry_backoff_factor=0`, and the Retry-After test uses the client's default retry policy.
Apart from azure-core's retries, aiohttp 3.14 itself resends an idempotent request once when
the server drops the connection.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.keyvault.secrets.aio import SecretClient

from devhost.azurite import free_port
from devhost.keyvault import VAULT_SCOPE, KeyVaultStandIn, StaticTokenCredential
from tests.standins.support import PROJECT_ROOT, wait_for

SECRET_NAME = "onfleet-webhook-secret-acme"
SECRET_VALUE = "6f6e666c656574"
API_VERSION = "7.6"


@pytest.fixture
async def vault() -> AsyncIterator[KeyVaultStandIn]:
    async with KeyVaultStandIn({SECRET_NAME: SECRET_VALUE}) as stand_in:
        yield stand_in


def make_client(
    vault: KeyVaultStandIn,
    credential: StaticTokenCredential | None = None,
    *,
    default_retries: bool = False,
    **options: Any,
) -> SecretClient:
    """Create the real client with the options the stand-in requires, and retries off by default."""
    settings: dict[str, Any] = {
        "connection_verify": str(vault.ca_path),
        "verify_challenge_resource": False,
    }
    if not default_retries:
        settings["retry_total"] = 0
    settings.update(options)
    return SecretClient(vault.url, credential or vault.credential(), **settings)


def retry_after(error: HttpResponseError) -> str | None:
    response: Any = error.response
    return None if response is None else response.headers.get("Retry-After")


def trusting(vault: KeyVaultStandIn) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(vault.ca_path))


async def test_found_secret_returned(vault: KeyVaultStandIn) -> None:
    credential = vault.credential()

    async with make_client(vault, credential) as client:
        secret = await client.get_secret(SECRET_NAME)

    assert secret.value == SECRET_VALUE
    assert secret.name == SECRET_NAME
    assert secret.properties.enabled is True
    assert secret.properties.recovery_level == "Recoverable+Purgeable"
    assert secret.id == f"{vault.url}/secrets/{SECRET_NAME}/{secret.properties.version}"
    assert credential.requested_scopes == [VAULT_SCOPE]


async def test_unknown_secret_not_found(vault: KeyVaultStandIn) -> None:
    async with make_client(vault) as client:
        with pytest.raises(ResourceNotFoundError) as raised:
            await client.get_secret("onfleet-webhook-secret-nobody")

    assert raised.value.status_code == 404
    assert "onfleet-webhook-secret-nobody was not found" in str(raised.value.message)


async def test_versions_kept_on_set(vault: KeyVaultStandIn) -> None:
    async with make_client(vault) as client:
        first = await client.get_secret(SECRET_NAME)
        vault.set_secret(SECRET_NAME, "rotated")
        latest = await client.get_secret(SECRET_NAME)
        pinned = await client.get_secret(SECRET_NAME, first.properties.version)
        with pytest.raises(ResourceNotFoundError):
            await client.get_secret(SECRET_NAME, "0" * 32)

    assert latest.value == "rotated"
    assert latest.properties.version != first.properties.version
    assert pinned.value == SECRET_VALUE


async def test_deleted_secret_not_found(vault: KeyVaultStandIn) -> None:
    vault.delete_secret(SECRET_NAME)

    async with make_client(vault) as client:
        with pytest.raises(ResourceNotFoundError):
            await client.get_secret(SECRET_NAME)


async def test_client_set_secret_stored(vault: KeyVaultStandIn) -> None:
    async with make_client(vault) as client:
        await client.set_secret("clienttrack-api-key-acme", "api-key")
        secret = await client.get_secret("clienttrack-api-key-acme")

    assert secret.value == "api-key"
    assert vault.secret_names() == ["clienttrack-api-key-acme", SECRET_NAME]


async def test_reads_count_authenticated_gets(vault: KeyVaultStandIn) -> None:
    async with make_client(vault) as client:
        await client.get_secret(SECRET_NAME)
        await client.get_secret(SECRET_NAME)
        with pytest.raises(ResourceNotFoundError):
            await client.get_secret("missing")

    assert vault.reads[SECRET_NAME] == 2
    assert vault.reads["missing"] == 1


async def test_unauthenticated_get_not_counted(vault: KeyVaultStandIn) -> None:
    async with httpx.AsyncClient(verify=trusting(vault)) as client:
        await client.get(f"{vault.url}/secrets/{SECRET_NAME}", params={"api-version": API_VERSION})

    assert vault.reads[SECRET_NAME] == 0
    assert vault.challenges == 1


async def test_missing_token_gets_challenge(vault: KeyVaultStandIn) -> None:
    url = f"{vault.url}/secrets/{SECRET_NAME}"

    async with httpx.AsyncClient(verify=trusting(vault)) as client:
        response = await client.get(url, params={"api-version": API_VERSION})

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        'Bearer authorization="https://login.microsoftonline.com/'
        '00000000-0000-0000-0000-000000000000", resource="https://vault.azure.net"'
    )
    assert response.json()["error"]["code"] == "Unauthorized"


async def test_bearer_token_reads_secret(vault: KeyVaultStandIn) -> None:
    url = f"{vault.url}/secrets/{SECRET_NAME}"
    headers = {"Authorization": f"Bearer {vault.token}"}

    async with httpx.AsyncClient(verify=trusting(vault)) as client:
        response = await client.get(url, params={"api-version": API_VERSION}, headers=headers)

    assert response.status_code == 200
    assert response.json()["value"] == SECRET_VALUE
    assert response.json()["attributes"]["enabled"] is True


async def test_missing_api_version_400(vault: KeyVaultStandIn) -> None:
    headers = {"Authorization": f"Bearer {vault.token}"}

    async with httpx.AsyncClient(verify=trusting(vault)) as client:
        response = await client.get(f"{vault.url}/secrets/{SECRET_NAME}", headers=headers)

    assert response.status_code == 400


async def test_wrong_token_rejected(vault: KeyVaultStandIn) -> None:
    async with make_client(vault, StaticTokenCredential("not-the-token")) as client:
        with pytest.raises(ClientAuthenticationError):
            await client.get_secret(SECRET_NAME)

    assert vault.rejected_tokens >= 1
    assert vault.reads[SECRET_NAME] == 0


async def test_throttled_read_without_retries(vault: KeyVaultStandIn) -> None:
    vault.fail_next(1, status=429)

    async with make_client(vault, retry_total=0) as client:
        with pytest.raises(HttpResponseError) as raised:
            await client.get_secret(SECRET_NAME)

    assert raised.value.status_code == 429
    assert retry_after(raised.value) == "1"
    assert vault.reads[SECRET_NAME] == 1


async def test_throttled_reads_exhaust_retries(vault: KeyVaultStandIn) -> None:
    vault.fail_next(3, status=429, retry_after_seconds=None)

    async with make_client(vault, retry_total=2, retry_backoff_factor=0) as client:
        with pytest.raises(HttpResponseError) as raised:
            await client.get_secret(SECRET_NAME)

    assert raised.value.status_code == 429
    assert vault.reads[SECRET_NAME] == 3


async def test_retry_after_honoured(vault: KeyVaultStandIn) -> None:
    vault.fail_next(1, status=429, retry_after_seconds=1)

    async with make_client(vault, default_retries=True) as client:
        client_started = time.perf_counter()
        secret = await client.get_secret(SECRET_NAME)
        elapsed = time.perf_counter() - client_started

    assert secret.value == SECRET_VALUE
    assert vault.reads[SECRET_NAME] == 2
    assert elapsed >= 1.0


async def test_unavailable_read_503(vault: KeyVaultStandIn) -> None:
    vault.fail_next(1, status=503, retry_after_seconds=5)

    async with make_client(vault) as client:
        with pytest.raises(HttpResponseError) as raised:
            await client.get_secret(SECRET_NAME)

    assert raised.value.status_code == 503
    assert retry_after(raised.value) == "5"


async def test_dropped_connection_raises(vault: KeyVaultStandIn) -> None:
    # aiohttp resends an idempotent request once after a disconnect, so drop two in a row.
    vault.drop_next(2)

    async with make_client(vault) as client:
        with pytest.raises(ServiceRequestError, match="Server disconnected"):
            await client.get_secret(SECRET_NAME)
        after = await client.get_secret(SECRET_NAME)

    assert after.value == SECRET_VALUE
    assert vault.reads[SECRET_NAME] == 3


async def test_single_drop_resent_by_aiohttp(vault: KeyVaultStandIn) -> None:
    vault.drop_next(1)

    async with make_client(vault) as client:
        secret = await client.get_secret(SECRET_NAME)

    assert secret.value == SECRET_VALUE
    assert vault.reads[SECRET_NAME] == 2


async def test_untrusted_without_connection_verify(vault: KeyVaultStandIn) -> None:
    client = SecretClient(
        vault.url, vault.credential(), verify_challenge_resource=False, retry_total=0
    )

    async with client:
        with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get_secret(SECRET_NAME)


async def test_challenge_resource_checked_by_default(vault: KeyVaultStandIn) -> None:
    client = SecretClient(
        vault.url, vault.credential(), connection_verify=str(vault.ca_path), retry_total=0
    )

    async with client:
        with pytest.raises(ValueError, match="verify_challenge_resource=False"):
            await client.get_secret(SECRET_NAME)


async def test_temporary_ca_removed_at_stop() -> None:
    stand_in = KeyVaultStandIn()
    await stand_in.start()
    ca_path = stand_in.ca_path
    exists_while_running = ca_path.exists()
    await stand_in.stop()

    assert exists_while_running
    assert not ca_path.exists()


def test_thread_mode_serves_sync_clients() -> None:
    with KeyVaultStandIn({SECRET_NAME: SECRET_VALUE}) as vault:
        response = httpx.get(
            f"{vault.url}/secrets/{SECRET_NAME}",
            params={"api-version": API_VERSION},
            headers={"Authorization": f"Bearer {vault.token}"},
            verify=trusting(vault),
        )

    assert response.status_code == 200
    assert response.json()["value"] == SECRET_VALUE


def test_invalid_secret_name_rejected() -> None:
    with pytest.raises(ValueError, match="invalid"):
        KeyVaultStandIn({"bad_name": "value"})


def test_cli_serves_settings_secrets(tmp_path: Path) -> None:
    settings = tmp_path / "local.settings.json"
    values = {SECRET_NAME: SECRET_VALUE, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    settings.write_text(json.dumps({"Values": values}), encoding="utf-8")
    ca_path, output = tmp_path / "ca.pem", tmp_path / "stdout.txt"
    port = free_port()
    command = [
        sys.executable, "-m", "devhost.keyvault", "--port", str(port),
        "--secrets-from", str(settings), "--ca-file", str(ca_path),
    ]  # fmt: skip
    environment = {key: value for key, value in os.environ.items() if "secret" not in key}

    with output.open("w") as stdout:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=stdout, stderr=subprocess.STDOUT, env=environment
        )
    try:
        wait_for(lambda: "CA certificate to trust" in output.read_text())
        base = f"https://127.0.0.1:{port}/secrets"
        context = ssl.create_default_context(cafile=str(ca_path))
        params, headers = {"api-version": API_VERSION}, {"Authorization": "Bearer any-token"}
        found = httpx.get(f"{base}/{SECRET_NAME}", params=params, headers=headers, verify=context)
        skipped = httpx.get(
            f"{base}/AzureWebJobsStorage", params=params, headers=headers, verify=context
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)

    printed = output.read_text()
    assert found.status_code == 200
    assert found.json()["value"] == SECRET_VALUE
    assert skipped.status_code == 404
    assert f"Key Vault stand-in at https://127.0.0.1:{port}" in printed
    assert SECRET_VALUE not in printed
    assert process.returncode == 0
