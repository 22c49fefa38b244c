"""devhost.send signs what it posts so that shared.signature.verify accepts it on the server."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from devhost.azurite import free_port
from devhost.clienttrack import LocalServer
from devhost.send import main, signing_key, webhook_url
from shared.errors import ConfigurationError, SignatureError
from shared.signature import SIGNATURE_HEADER, verify
from tests.standins.support import PROJECT_ROOT

CUSTOMER = "acme-pantry"
FIRST_SECRET = "6f6e666c6565742d6669727374"
SECOND_SECRET = "6f6e666c6565742d7365636f6e64"
SAMPLES = sorted((PROJECT_ROOT / "samples").glob("*.json"))


class WebhookReceiver(LocalServer):
    """A minimal webhook endpoint that verifies signatures the way the bridge does."""

    def __init__(self, secrets: list[str], *, quote_check: bool = False) -> None:
        super().__init__()
        self.keys = [bytes.fromhex(secret) for secret in secrets]
        self.quote_check = quote_check
        self.bodies: list[bytes] = []

    @property
    def url(self) -> str:
        return f"{self.base_url}/onfleet/webhooks/{CUSTOMER}"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/onfleet/webhooks/{customer}", self._post)
        app.router.add_get("/onfleet/webhooks/{customer}", self._get)
        return app

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(body, request.headers.get(SIGNATURE_HEADER), self.keys)
        except SignatureError as error:
            return web.Response(status=401, text=str(error))
        self.bodies.append(body)
        customer = request.match_info["customer"]
        event_id = hashlib.sha256(customer.encode() + b"\n" + body).hexdigest()
        return web.json_response({"eventId": event_id})

    async def _get(self, request: web.Request) -> web.Response:
        check = request.query.get("check", "")
        text = json.dumps(check) if self.quote_check else check
        return web.Response(text=text, content_type="text/plain")


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "local.settings.json"
    values = {f"onfleet-webhook-secret-{CUSTOMER}": f"{FIRST_SECRET}, {SECOND_SECRET}"}
    path.write_text(json.dumps({"Values": values}), encoding="utf-8")
    return path


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver([FIRST_SECRET]) as server:
        yield server


def run(settings_file: Path, url: str, *extra: str) -> int:
    return main(["--settings", str(settings_file), "--customer", CUSTOMER, "--url", url, *extra])


def test_samples_posted_with_valid_signature(
    receiver: WebhookReceiver, settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = run(settings_file, receiver.url)

    lines = capsys.readouterr().out.splitlines()
    assert exit_code == 0
    assert sorted(receiver.bodies) == sorted(path.read_bytes() for path in SAMPLES)
    assert len(lines) == len(SAMPLES)
    for line in lines:
        name, status, event_id = line.split(" ")
        body = (PROJECT_ROOT / "samples" / name).read_bytes()
        assert status == "200"
        assert event_id == hashlib.sha256(CUSTOMER.encode() + b"\n" + body).hexdigest()


def test_first_secret_of_rotation_signs(
    settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with WebhookReceiver([SECOND_SECRET]) as second_only:
        exit_code = run(settings_file, second_only.url, str(SAMPLES[0]))

    assert exit_code == 1
    assert f"{SAMPLES[0].name} 401 -" in capsys.readouterr().out
    assert second_only.bodies == []


def test_repeat_and_concurrency(
    receiver: WebhookReceiver, settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = run(
        settings_file, receiver.url, str(SAMPLES[0]), "--repeat", "5", "--concurrency", "3"
    )

    lines = capsys.readouterr().out.splitlines()
    assert exit_code == 0
    assert len(receiver.bodies) == 5
    assert len({line.split(" ")[2] for line in lines}) == 1


def test_check_echoed(
    receiver: WebhookReceiver, settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = run(settings_file, receiver.url, "--check", "a1b2 c3+d4")

    assert exit_code == 0
    assert capsys.readouterr().out.strip() == "check 200 echoed"


def test_check_quoted_not_echoed(settings_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with WebhookReceiver([FIRST_SECRET], quote_check=True) as quoting:
        exit_code = run(settings_file, quoting.url, "--check", "a1b2")

    assert exit_code == 1
    assert capsys.readouterr().out.startswith("check 200 not echoed")


def test_connection_refused_fails(settings_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/onfleet/webhooks/{CUSTOMER}"

    exit_code = run(settings_file, url, str(SAMPLES[0]))

    assert exit_code == 1
    assert capsys.readouterr().out.startswith(f"{SAMPLES[0].name} error - ConnectError")


def test_missing_secret_exits_2(
    receiver: WebhookReceiver, settings_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = main(
        ["--settings", str(settings_file), "--customer", "nobody", "--url", receiver.url]
    )

    assert exit_code == 2
    assert "onfleet-webhook-secret-nobody" in capsys.readouterr().err
    assert receiver.bodies == []


def test_signing_key_hides_bad_value() -> None:
    secrets = {f"onfleet-webhook-secret-{CUSTOMER}": "not-hex-secret"}

    with pytest.raises(ConfigurationError) as raised:
        signing_key(secrets, CUSTOMER)

    assert "not-hex-secret" not in str(raised.value)


def test_signing_key_takes_first() -> None:
    secrets = {f"onfleet-webhook-secret-{CUSTOMER}": f"{FIRST_SECRET}\n{SECOND_SECRET}"}

    assert signing_key(secrets, CUSTOMER) == bytes.fromhex(FIRST_SECRET)


def test_default_url_names_customer() -> None:
    assert webhook_url("demo-foodbank") == "http://127.0.0.1:7071/onfleet/webhooks/demo-foodbank"
