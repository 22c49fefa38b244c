"""No secret appears in the bridge's logs, HTTP responses, queue messages or CLI output.

Scenarios from every part of the bridge run with distinctive secret values: ingest
(accepted, rejected, unknown customer, 503 from a malformed secret and from unreachable
storage, with app-settings and Key Vault secret stores), the processor (delivered, retried,
refused with 401, parked with a reason, missing configuration), the operators' CLI (status,
list, show, replay, export, an error) and devhost's own log at DEBUG. Log records are
captured at DEBUG from the root logger and from the SDKs' loggers (azure, httpx, httpcore,
aiohttp).

A secret is looked for as stored and in the other forms it could take on the way out:
hex-decoded (webhook secrets are hex), hex-encoded, with the `ApiKey ` prefix, and
base64-decoded (the storage account key). Queue messages are base64 and are decoded first.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from devhost.azurite import ACCOUNT_NAME, free_port
from devhost.clienttrack import ClientTrackStandIn, ScriptedResponse
from devhost.keyvault import KeyVaultStandIn
from devhost.processes import ManagedProcess
from ops.poison import main as ops_main
from shared.envelope import build_envelope
from shared.processor import Outcome
from shared.runtime import Runtime
from shared.secrets import AppSettingsSecretStore, KeyVaultSecretStore, SecretStore
from shared.settings import load_settings
from shared.signature import sign
from tests.e2e_reliability.support import DELIVERY_LINE, copy_app, wait_until, write_settings_file


def _hex(text: str) -> str:
    return text.encode("utf-8").hex()


WEBHOOK_SECRET_HEX = _hex("leak-canary-webhook-secret-5e7a")
ROTATED_SECRET_HEX = _hex("leak-canary-rotated-secret-91c2")
NON_HEX_SECRET = "leak-canary-not-hex-passphrase-0a9f"
SUBSCRIPTION_KEY = "leak-canary-subscription-key-3b8d"
API_KEY = "leak-canary-api-key-c04f"
PREFIXED_SUBSCRIPTION_KEY = "leak-canary-prefixed-subscription-8e21"
PREFIXED_API_KEY = "leak-canary-prefixed-api-key-a7d3"
STALE_SUBSCRIPTION_KEY = "leak-canary-stale-subscription-77e1"
STALE_API_KEY = "leak-canary-stale-api-key-e5a0"
NEW_SUBSCRIPTION_KEY = "leak-canary-current-subscription-41b9"
NEW_API_KEY = "leak-canary-current-api-key-0c55"
STORAGE_ACCOUNT_KEY = base64.b64encode(b"leak-canary-storage-account-key-6d2e").decode("ascii")
VAULT_TOKEN = "leak-canary-vault-token-2f61"

SECRETS = (
    WEBHOOK_SECRET_HEX,
    ROTATED_SECRET_HEX,
    NON_HEX_SECRET,
    SUBSCRIPTION_KEY,
    API_KEY,
    PREFIXED_SUBSCRIPTION_KEY,
    PREFIXED_API_KEY,
    STALE_SUBSCRIPTION_KEY,
    STALE_API_KEY,
    NEW_SUBSCRIPTION_KEY,
    NEW_API_KEY,
    STORAGE_ACCOUNT_KEY,
    VAULT_TOKEN,
)

CUSTOMER = "leak-pantry"
PREFIXED = "leak-prefixed"
REFUSED = "leak-refused"
UNCONFIGURED = "leak-unconfigured"
NON_HEX = "leak-non-hex"
BODY_LIMIT_BYTES = 4096
SDK_LOGGERS = ("azure", "httpx", "httpcore", "aiohttp", "urllib3")


def leak_forms() -> dict[str, str]:
    """Map each lowercase form a secret could leak in to a label naming it without the value."""
    forms: dict[str, str] = {}
    for index, secret in enumerate(SECRETS):
        label = f"secret #{index}"
        forms[secret.lower()] = f"{label} as stored"
        forms[f"apikey {secret}".lower()] = f"{label} with the ApiKey prefix"
        forms[_hex(secret)] = f"{label} hex-encoded"
        try:
            decoded = bytes.fromhex(secret).decode("utf-8")
        except ValueError:
            pass
        else:
            forms[decoded.lower()] = f"{label} hex-decoded"
        try:
            unwrapped = base64.b64decode(secret, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            pass
        else:
            forms[unwrapped.lower()] = f"{label} base64-decoded"
    return forms


LEAK_FORMS = leak_forms()


@dataclass
class Outputs:
    """Everything a scenario produced, by where it came from."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: str) -> None:
        self.items.append((where, text))

    def add_response(self, where: str, status: int, headers: dict[str, str], body: str) -> None:
        header_text = "\n".join(f"{name}: {value}" for name, value in headers.items())
        self.add(f"{where} (HTTP {status})", f"{header_text}\n\n{body}")

    def add_queue(self, connection_string: str, queue_name: str) -> None:
        """Add every message of a queue, base64-decoded when it is base64, and leave them."""
        with QueueClient.from_connection_string(connection_string, queue_name) as queue:
            try:
                pages = queue.receive_messages(messages_per_page=32, visibility_timeout=30)
                texts = [message.content for page in pages.by_page() for message in page]
            except ResourceNotFoundError:
                return
        for text in texts:
            self.add(f"queue {queue_name}", text)
            try:
                decoded = base64.b64decode(text, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                continue
            self.add(f"queue {queue_name}, decoded", decoded)

    def assert_no_secret(self) -> None:
        assert self.items, "the scenario produced no output to check"
        for where, text in self.items:
            lowered = text.lower()
            found = [label for form, label in LEAK_FORMS.items() if form in lowered]
            assert not found, f"{where} contains {', '.join(found)}"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every log record at DEBUG, the SDKs' own loggers included."""
    caplog.set_level(logging.DEBUG)
    for name in SDK_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def app_settings(connection_string: str, queue_name: str, clienttrack_url: str) -> dict[str, str]:
    """Return the bridge's settings with every secret of every scenario customer."""
    return {
        "AzureWebJobsStorage": connection_string,
        "ONFLEET_EVENTS_QUEUE": queue_name,
        "CLAIM_CHECK_CONTAINER": f"{queue_name}-payloads",
        "DEDUPE_TABLE": "dedupe" + queue_name.replace("-", ""),
        "CLIENTTRACK_INTEGRATION_QUEUE_URL": clienttrack_url,
        "MAX_WEBHOOK_BODY_BYTES": str(BODY_LIMIT_BYTES),
        "RETRY_BASE_SECONDS": "1",
        "RETRY_MAX_DELAY_SECONDS": "1",
        # A rotation in progress: the new secret first, the old one still accepted.
        f"onfleet-webhook-secret-{CUSTOMER}": f"{ROTATED_SECRET_HEX},{WEBHOOK_SECRET_HEX}",
        f"onfleet-webhook-secret-{PREFIXED}": WEBHOOK_SECRET_HEX,
        f"onfleet-webhook-secret-{REFUSED}": WEBHOOK_SECRET_HEX,
        f"onfleet-webhook-secret-{NON_HEX}": NON_HEX_SECRET,
        f"clienttrack-subscription-key-{CUSTOMER}": SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{CUSTOMER}": API_KEY,
        f"clienttrack-subscription-key-{PREFIXED}": PREFIXED_SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{PREFIXED}": f"ApiKey {PREFIXED_API_KEY}",
        f"clienttrack-subscription-key-{REFUSED}": STALE_SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{REFUSED}": STALE_API_KEY,
    }


def standin_secrets() -> dict[str, str]:
    """ClientTrack's keys: the refused customer's were rotated, so the bridge's copy is stale."""
    return {
        f"clienttrack-subscription-key-{CUSTOMER}": SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{CUSTOMER}": API_KEY,
        f"clienttrack-subscription-key-{PREFIXED}": PREFIXED_SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{PREFIXED}": PREFIXED_API_KEY,
        f"clienttrack-subscription-key-{REFUSED}": NEW_SUBSCRIPTION_KEY,
        f"clienttrack-api-key-{REFUSED}": NEW_API_KEY,
    }


def echoing_body(subscription_key: str, api_key: str) -> dict[str, str]:
    """A ClientTrack error body that repeats the credentials it was sent."""
    return {
        "message": f"Rejected subscription key {subscription_key} and API key {api_key}.",
        "authorization": f"ApiKey {api_key}",
    }


def onfleet_body(task_id: str) -> bytes:
    document = {
        "time": 1767270905312,
        "triggerId": 3,
        "triggerName": "taskCompleted",
        "taskId": task_id,
        "workerId": "worker-1",
        "adminId": None,
        "actionContext": {"type": "WORKER", "id": "worker-1"},
        "data": {"task": {"id": task_id}},
    }
    return json.dumps(document).encode("utf-8")


def signed(body: bytes, secret_hex: str = WEBHOOK_SECRET_HEX) -> dict[str, str]:
    return {"X-Onfleet-Signature": sign(body, bytes.fromhex(secret_hex))}


def unreachable_storage() -> str:
    """A connection string with the canary account key, pointing at ports nothing serves."""
    endpoints = ";".join(
        f"{kind}Endpoint=http://127.0.0.1:{free_port()}/{ACCOUNT_NAME}"
        for kind in ("Blob", "Queue", "Table")
    )
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};"
        f"AccountKey={STORAGE_ACCOUNT_KEY};{endpoints};"
    )


# --- ingest ----------------------------------------------------------------------------------


async def send_ingest_requests(runtime: Runtime, outputs: Outputs, label: str) -> None:
    """Send one request of every kind the webhook handles, and record the responses."""
    accepted = onfleet_body(f"ingest-{uuid.uuid4().hex[:8]}")
    too_large = b"x" * (BODY_LIMIT_BYTES + 1)
    requests = [
        ("GET", CUSTOMER, "check-value", {}, b""),
        ("GET", CUSTOMER, None, {}, b""),
        ("GET", "nobody", "check-value", {}, b""),
        ("POST", CUSTOMER, None, signed(accepted), accepted),
        ("POST", CUSTOMER, None, signed(accepted, ROTATED_SECRET_HEX), accepted),
        ("POST", CUSTOMER, None, {"X-Onfleet-Signature": "0" * 128}, accepted),
        ("POST", CUSTOMER, None, {}, accepted),
        ("POST", "nobody", None, signed(accepted), accepted),
        ("POST", CUSTOMER, None, signed(too_large), too_large),
        ("POST", NON_HEX, None, signed(accepted), accepted),
        ("PUT", CUSTOMER, None, {}, b""),
    ]
    statuses = []
    for method, customer_id, check, headers, body in requests:
        response = await runtime.ingest.handle(
            method, customer_id, check=check, headers=headers, body=body
        )
        statuses.append(response.status)
        outputs.add_response(
            f"{label}: {method} {customer_id}", response.status, response.headers, response.body
        )
    assert statuses == [200, 400, 404, 200, 200, 401, 401, 404, 413, 503, 405]


async def run_ingest(
    settings: dict[str, str], store: SecretStore, outputs: Outputs, label: str
) -> None:
    runtime = Runtime(load_settings(settings), secret_store=store)
    try:
        await send_ingest_requests(runtime, outputs, label)
    finally:
        await runtime.close()


@pytest.fixture
async def vault() -> AsyncIterator[KeyVaultStandIn]:
    secrets = app_settings("UseDevelopmentStorage=true", "unused", "http://127.0.0.1:9/q")
    stored = {
        name: value
        for name, value in secrets.items()
        if name.startswith(("onfleet-", "clienttrack-"))
    }
    async with KeyVaultStandIn(stored, token=VAULT_TOKEN) as server:
        yield server


async def test_ingest_outputs_no_secret(
    storage_connection_string: str,
    queue_name: str,
    vault: KeyVaultStandIn,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    settings = app_settings(storage_connection_string, queue_name, "http://127.0.0.1:9/q")
    outputs = Outputs()

    await run_ingest(settings, AppSettingsSecretStore(settings), outputs, "app settings")
    key_vault = KeyVaultSecretStore(
        vault.url, credential=vault.credential(), connection_verify=str(vault.ca_path)
    )
    await run_ingest(settings, key_vault, outputs, "Key Vault")

    broken = {**settings, "AzureWebJobsStorage": unreachable_storage()}
    runtime = Runtime(load_settings(broken), secret_store=AppSettingsSecretStore(broken))
    body = onfleet_body("storage-down")
    try:
        response = await runtime.ingest.handle(
            "POST", CUSTOMER, check=None, headers=signed(body), body=body
        )
    finally:
        await runtime.close()
    assert response.status == 503
    outputs.add_response("storage down", response.status, response.headers, response.body)

    outputs.add_queue(storage_connection_string, queue_name)
    outputs.add("log", debug_logs.text)
    assert "onfleet-webhook-secret-leak-non-hex" in debug_logs.text
    outputs.assert_no_secret()


# --- processor and the operators' CLI --------------------------------------------------------


async def process_every_outcome(settings: dict[str, str], standin: ClientTrackStandIn) -> None:
    """Drive the processor through delivered, retried, parked, refused and unconfigured."""
    runtime = Runtime(load_settings(settings), secret_store=AppSettingsSecretStore(settings))
    processor = runtime.processor
    cases = [
        (CUSTOMER, ScriptedResponse(200), Outcome.DELIVERED),
        (
            CUSTOMER,
            ScriptedResponse(503, body=echoing_body(SUBSCRIPTION_KEY, API_KEY)),
            Outcome.RETRY_SCHEDULED,
        ),
        (
            CUSTOMER,
            ScriptedResponse(400, body=echoing_body(SUBSCRIPTION_KEY, API_KEY)),
            Outcome.PARKED,
        ),
        (
            PREFIXED,
            ScriptedResponse(422, body=echoing_body(PREFIXED_SUBSCRIPTION_KEY, PREFIXED_API_KEY)),
            Outcome.PARKED,
        ),
        (REFUSED, None, Outcome.PARKED),
        (UNCONFIGURED, None, Outcome.PARKED),
    ]
    try:
        for index, (customer_id, scripted, expected) in enumerate(cases):
            if scripted is not None:
                standin.script([scripted])
            envelope = build_envelope(customer_id, onfleet_body(f"processor-{index}"))
            message = base64.b64decode(envelope.to_queue_text())
            assert await processor.process(message) is expected, (customer_id, scripted)
    finally:
        await runtime.close()


@pytest.fixture
async def standin() -> AsyncIterator[ClientTrackStandIn]:
    async with ClientTrackStandIn(standin_secrets()) as server:
        yield server


async def test_processor_outputs_no_secret(
    storage_connection_string: str,
    queue_name: str,
    standin: ClientTrackStandIn,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    settings = app_settings(storage_connection_string, queue_name, standin.url)

    await process_every_outcome(settings, standin)

    outputs = Outputs()
    outputs.add_queue(storage_connection_string, queue_name)
    outputs.add_queue(storage_connection_string, queue_name + "-poison")
    outputs.add("log", debug_logs.text)
    assert "Rejected subscription key" in debug_logs.text
    assert "auth-refused" in debug_logs.text
    outputs.assert_no_secret()


def run_cli(outputs: Outputs, *arguments: str) -> tuple[int, str]:
    """Run the CLI in-process, record its output and return its exit code and stdout."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = ops_main(list(arguments), stdout=stdout, stderr=stderr)
    outputs.add(f"ops.poison {arguments[0]} stdout", stdout.getvalue())
    outputs.add(f"ops.poison {arguments[0]} stderr", stderr.getvalue())
    return code, stdout.getvalue()


async def test_ops_cli_output_no_secret(
    storage_connection_string: str,
    queue_name: str,
    standin: ClientTrackStandIn,
    tmp_path: Path,
    debug_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = app_settings(storage_connection_string, queue_name, standin.url)
    await process_every_outcome(settings, standin)
    # A local.settings.json in the project folder must not leak into the CLI's settings.
    monkeypatch.chdir(tmp_path)
    connection = ["--connection-string", storage_connection_string, "--queue", queue_name]
    outputs = Outputs()

    assert run_cli(outputs, "status", *connection)[0] == 1
    assert run_cli(outputs, "list", *connection)[0] == 0
    code, listed = run_cli(outputs, "list", "--json", *connection)
    assert code == 0
    rows = json.loads(listed)
    assert len(rows) == 4
    for row in rows:
        assert run_cli(outputs, "show", row["id"], *connection)[0] == 0
        assert run_cli(outputs, "show", "--json", row["id"], *connection)[0] == 0
    assert run_cli(outputs, "replay", "--dry-run", *connection)[0] == 0
    archive = tmp_path / "poison.jsonl"
    assert run_cli(outputs, "export", "--out", str(archive), *connection)[0] == 0
    outputs.add("export file", archive.read_text(encoding="utf-8"))
    assert run_cli(outputs, "replay", *connection)[0] == 0
    broken = ["--connection-string", unreachable_storage(), "--queue", queue_name]
    assert run_cli(outputs, "status", *broken)[0] == 2

    outputs.add("log", debug_logs.text)
    outputs.assert_no_secret()


# --- devhost ---------------------------------------------------------------------------------


@pytest.fixture
def devhost_with_standin(
    storage_connection_string: str, queue_name: str, tmp_path: Path
) -> Iterator[tuple[ManagedProcess, ClientTrackStandIn]]:
    app = copy_app(tmp_path / "app")
    with ClientTrackStandIn(standin_secrets()) as standin:
        settings = app_settings(storage_connection_string, queue_name, standin.url)
        settings_file = write_settings_file(tmp_path / "local.settings.json", settings)
        port = free_port()
        process = ManagedProcess(
            "devhost",
            "devhost",
            [
                "--port", str(port),
                "--settings", str(settings_file),
                "--app-root", str(app),
                "--log-level", "DEBUG",
            ],
            log_path=tmp_path / "devhost.log",
            env=settings,
            port=port,
        )  # fmt: skip
        process.start()
        try:
            yield process, standin
        finally:
            process.stop()


def test_devhost_log_no_secret(
    devhost_with_standin: tuple[ManagedProcess, ClientTrackStandIn],
) -> None:
    process, _ = devhost_with_standin
    assert process.port is not None
    base = f"http://127.0.0.1:{process.port}/onfleet/webhooks/"
    delivered = onfleet_body("devhost-delivered")
    refused = onfleet_body("devhost-refused")
    outputs = Outputs()

    answers = [
        httpx.get(base + CUSTOMER, params={"check": "check-value"}),
        httpx.post(base + CUSTOMER, content=delivered, headers=signed(delivered)),
        httpx.post(base + REFUSED, content=refused, headers=signed(refused)),
        httpx.post(base + CUSTOMER, content=delivered, headers={"X-Onfleet-Signature": "f" * 128}),
        httpx.post(base + "nobody", content=delivered, headers=signed(delivered)),
        httpx.post(base + NON_HEX, content=delivered, headers=signed(delivered)),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 401, 404, 503]
    for answer in answers:
        outputs.add_response(
            f"devhost {answer.request.method} {answer.request.url.path}",
            answer.status_code,
            dict(answer.headers),
            answer.text,
        )

    def outcomes() -> list[str]:
        return [match["outcome"] for match in DELIVERY_LINE.finditer(process.log_text())]

    wait_until(lambda: sorted(outcomes()) == ["delivered", "parked"], "both deliveries")
    log = process.log_text()
    assert " DEBUG " in log
    outputs.add("devhost log", log)
    outputs.assert_no_secret()
