"""Secrets from Key Vault: the real aio SecretClient against an HTTPS stand-in on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest
from azure.storage.queue.aio import QueueClient

from devhost.clienttrack import ClientTrackStandIn
from devhost.keyvault import KeyVaultStandIn
from shared.errors import SecretStoreUnavailable
from shared.processor import Outcome
from shared.runtime import Runtime
from shared.secrets import KeyVaultSecretStore
from shared.settings import load_settings
from tests.helpers import CUSTOMER, TEST_SECRET_HEX, base_env, sample_body, signed_post

SECRETS = {
    f"onfleet-webhook-secret-{CUSTOMER}": TEST_SECRET_HEX,
    f"clienttrack-subscription-key-{CUSTOMER}": "kv-subscription-key",
    f"clienttrack-api-key-{CUSTOMER}": "kv-api-key",
}


@pytest.fixture
async def vault() -> AsyncIterator[KeyVaultStandIn]:
    async with KeyVaultStandIn(SECRETS) as server:
        yield server


def vault_store(vault: KeyVaultStandIn, **options: object) -> KeyVaultSecretStore:
    return KeyVaultSecretStore(
        vault.url, credential=vault.credential(), connection_verify=str(vault.ca_path), **options
    )


async def test_found_secret(vault: KeyVaultStandIn) -> None:
    store = vault_store(vault)
    try:
        assert await store.get(f"clienttrack-api-key-{CUSTOMER}") == "kv-api-key"
    finally:
        await store.close()


async def test_missing_secret_none(vault: KeyVaultStandIn) -> None:
    store = vault_store(vault)
    try:
        assert await store.get("onfleet-webhook-secret-nobody") is None
    finally:
        await store.close()


@pytest.mark.parametrize("status", [429, 503, 500])
async def test_throttling_unavailable(vault: KeyVaultStandIn, status: int) -> None:
    store = vault_store(vault, retry_total=0)
    try:
        vault.fail_next(1, status=status)
        with pytest.raises(SecretStoreUnavailable, match=f"HTTP {status}"):
            await store.get(f"clienttrack-api-key-{CUSTOMER}")
    finally:
        await store.close()


async def test_unreachable_vault_unavailable(vault: KeyVaultStandIn) -> None:
    from devhost.azurite import free_port

    store = KeyVaultSecretStore(
        f"https://127.0.0.1:{free_port()}/",
        credential=vault.credential(),
        connection_verify=str(vault.ca_path),
        retry_total=0,
    )
    try:
        with pytest.raises(SecretStoreUnavailable, match="could not be reached") as raised:
            await store.get(f"clienttrack-api-key-{CUSTOMER}")
        assert "kv-api-key" not in str(raised.value)
    finally:
        await store.close()


async def test_wrong_token_unavailable(vault: KeyVaultStandIn) -> None:
    from devhost.keyvault import StaticTokenCredential

    store = KeyVaultSecretStore(
        vault.url,
        credential=StaticTokenCredential("not-the-token"),
        connection_verify=str(vault.ca_path),
    )
    try:
        with pytest.raises(SecretStoreUnavailable, match="rejected the identity"):
            await store.get(f"clienttrack-api-key-{CUSTOMER}")
    finally:
        await store.close()


async def open_runtime(
    vault: KeyVaultStandIn, connection_string: str, queue_name: str, url: str, **extra: str
) -> Runtime:
    env = base_env(connection_string, queue_name, CLIENTTRACK_INTEGRATION_QUEUE_URL=url, **extra)
    for name in SECRETS:
        env.pop(name)
    env["KEY_VAULT_URL"] = vault.url
    return Runtime(load_settings(env), secret_store=vault_store(vault))


async def test_ingest_unknown_customer_404(
    vault: KeyVaultStandIn, storage_connection_string: str, queue_name: str
) -> None:
    runtime = await open_runtime(
        vault, storage_connection_string, queue_name, "http://127.0.0.1:9/"
    )
    try:
        request = signed_post(b"{}", customer_id="nobody")
        response = await runtime.ingest.handle(
            "POST", "nobody", check=None, headers=request.headers, body=b"{}"
        )
        assert response.status == 404
    finally:
        await runtime.close()


async def test_ingest_vault_outage_503(
    vault: KeyVaultStandIn, storage_connection_string: str, queue_name: str
) -> None:
    runtime = await open_runtime(
        vault, storage_connection_string, queue_name, "http://127.0.0.1:9/"
    )
    try:
        vault.fail_next(10, status=503, retry_after_seconds=None)
        request = signed_post(b"{}")
        response = await runtime.ingest.handle(
            "POST", CUSTOMER, check=None, headers=request.headers, body=b"{}"
        )
        assert response.status == 503
    finally:
        await runtime.close()


async def test_reads_once_per_cache_period(
    vault: KeyVaultStandIn, storage_connection_string: str, queue_name: str
) -> None:
    secrets = {name: value for name, value in SECRETS.items() if "clienttrack" in name}
    async with ClientTrackStandIn(secrets) as standin:
        runtime = await open_runtime(vault, storage_connection_string, queue_name, standin.url)
        queue = QueueClient.from_connection_string(storage_connection_string, queue_name)
        try:
            bodies = [sample_body(taskId=f"task-{index}") for index in range(200)]
            requests = [signed_post(body) for body in bodies]
            responses = await asyncio.gather(
                *(
                    runtime.ingest.handle(
                        "POST", CUSTOMER, check=None, headers=request.headers, body=body
                    )
                    for request, body in zip(requests, bodies, strict=True)
                )
            )
            assert {response.status for response in responses} == {200}

            delivered = 0
            while delivered < 200:
                messages = [m async for m in queue.receive_messages(max_messages=32)]
                assert messages, f"queue empty after {delivered} deliveries"
                outcomes = await asyncio.gather(
                    *(runtime.processor.process(base64.b64decode(m.content)) for m in messages)
                )
                for message in messages:
                    await queue.delete_message(message)
                delivered += outcomes.count(Outcome.DELIVERED)

            assert dict(vault.reads) == dict.fromkeys(SECRETS, 1)
            assert len(standin.accepted_requests) == 200
        finally:
            await queue.close()
            await runtime.close()


async def test_cache_expiry_rereads(
    vault: KeyVaultStandIn, storage_connection_string: str, queue_name: str
) -> None:
    runtime = await open_runtime(
        vault,
        storage_connection_string,
        queue_name,
        "http://127.0.0.1:9/",
        SECRET_CACHE_SECONDS="0.5",
    )
    try:
        name = f"clienttrack-api-key-{CUSTOMER}"
        assert await runtime.secrets.get(name) == "kv-api-key"
        assert await runtime.secrets.get(name) == "kv-api-key"
        assert vault.reads[name] == 1
        await asyncio.sleep(0.6)
        vault.set_secret(name, "kv-api-key-2")
        assert await runtime.secrets.get(name) == "kv-api-key-2"
        assert vault.reads[name] == 2
    finally:
        await runtime.close()
