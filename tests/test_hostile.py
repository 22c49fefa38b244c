"""Hostile input against the webhook handler: property-based and a fixed corpus.

Every rejection must be a 4xx with a one-line reason, nothing may crash into a 500, and no
request without a valid signature may write to the queue.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.ingest import IngestHandler, IngestResponse
from shared.runtime import Runtime
from shared.secrets import AppSettingsSecretStore
from shared.settings import load_settings
from tests.helpers import CUSTOMER, TEST_SECRET_HEX, base_env, signature_for
from tests.helpers import drain as drain_queue

HYPOTHESIS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BAD_SECRET_CUSTOMER = "bad-secret"
NON_HEX_SECRET = "not-hex-but-a-passphrase"


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    runtime: Runtime
    env: dict[str, str]

    @property
    def handler(self) -> IngestHandler:
        return self.runtime.ingest

    def post(
        self, body: bytes, headers: dict[str, str], customer_id: str = CUSTOMER
    ) -> IngestResponse:
        return self.loop.run_until_complete(
            self.handler.handle("POST", customer_id, check=None, headers=headers, body=body)
        )

    def get(self, customer_id: str, check: str | None) -> IngestResponse:
        return self.loop.run_until_complete(
            self.handler.handle("GET", customer_id, check=check, headers={}, body=b"")
        )

    def queued(self) -> list[str]:
        return self.loop.run_until_complete(
            drain_queue(self.env["AzureWebJobsStorage"], self.env["ONFLEET_EVENTS_QUEUE"])
        )


@pytest.fixture
def harness(storage_connection_string: str, queue_name: str) -> Iterator[Harness]:
    env = base_env(
        storage_connection_string,
        queue_name,
        MAX_WEBHOOK_BODY_BYTES="4096",
        **{f"onfleet-webhook-secret-{BAD_SECRET_CUSTOMER}": NON_HEX_SECRET},
    )
    loop = asyncio.new_event_loop()

    async def build() -> Runtime:
        return Runtime(load_settings(env), secret_store=AppSettingsSecretStore(env))

    runtime = loop.run_until_complete(build())
    yield Harness(loop, runtime, env)
    loop.run_until_complete(runtime.close())
    loop.close()


def assert_one_line_rejection(response: IngestResponse) -> None:
    assert 400 <= response.status < 500, response
    assert response.content_type.startswith("text/plain")
    assert response.body.strip()
    assert "\n" not in response.body
    assert response.headers["X-Content-Type-Options"] == "nosniff"


hex_signatures = st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=260)
any_signatures = st.one_of(st.text(max_size=300), hex_signatures)


@HYPOTHESIS
@given(body=st.binary(max_size=5000), signature=any_signatures)
def test_random_signature_rejected(harness: Harness, body: bytes, signature: str) -> None:
    response = harness.post(body, {"X-Onfleet-Signature": signature})
    assert_one_line_rejection(response)
    assert response.status == (413 if len(body) > 4096 else 401)


@HYPOTHESIS
@given(length=st.integers(min_value=0, max_value=300), upper=st.booleans())
def test_signature_every_length_rejected(harness: Harness, length: int, upper: bool) -> None:
    real = signature_for(b"{}")
    candidate = (real * 3)[:length]
    if length == len(real):
        candidate = candidate[:-1] + ("0" if candidate[-1] != "0" else "1")
    if upper:
        candidate = candidate.upper()
    response = harness.post(b"{}", {"X-Onfleet-Signature": candidate})
    assert_one_line_rejection(response)
    assert response.status == 401


@HYPOTHESIS
@given(
    headers=st.dictionaries(
        st.text(string.ascii_letters + "-", min_size=1, max_size=40),
        st.text(max_size=200),
        max_size=10,
    )
)
def test_random_headers_rejected(harness: Harness, headers: dict[str, str]) -> None:
    headers.pop("X-Onfleet-Signature", None)
    response = harness.post(b'{"triggerName": "taskCompleted"}', headers)
    assert_one_line_rejection(response)


@HYPOTHESIS
@given(customer_id=st.text(max_size=80))
def test_random_customer_id_never_500(harness: Harness, customer_id: str) -> None:
    response = harness.post(b"{}", {"X-Onfleet-Signature": signature_for(b"{}")}, customer_id)
    if customer_id == CUSTOMER:
        assert response.status == 200
    else:
        assert_one_line_rejection(response)
        assert response.status == 404
        assert response.body == "Not found: unknown customer."


@HYPOTHESIS
@given(check=st.text(min_size=1, max_size=1024))
def test_check_echoed_exactly(harness: Harness, check: str) -> None:
    response = harness.get(CUSTOMER, check)
    assert response.status == 200
    assert response.body == check
    assert response.content_type == "text/plain; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@HYPOTHESIS
@given(check=st.text(min_size=1025, max_size=5000))
def test_long_check_rejected(harness: Harness, check: str) -> None:
    response = harness.get(CUSTOMER, check)
    assert_one_line_rejection(response)
    assert response.status == 400


def test_script_check_is_plain_text(harness: Harness) -> None:
    check = "<script>alert(document.cookie)</script>"
    response = harness.get(CUSTOMER, check)
    assert response.status == 200
    assert response.body == check
    assert response.content_type == "text/plain; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_non_hex_secret_not_500(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    body = b"{}"
    response = harness.post(body, {"X-Onfleet-Signature": signature_for(body)}, BAD_SECRET_CUSTOMER)
    assert response.status == 503
    assert NON_HEX_SECRET not in response.body
    assert NON_HEX_SECRET not in caplog.text
    assert f"onfleet-webhook-secret-{BAD_SECRET_CUSTOMER}" in caplog.text


@pytest.mark.parametrize("size", [4095, 4096, 4097, 10_000])
def test_size_limit_boundary(harness: Harness, size: int) -> None:
    body = b"x" * size
    response = harness.post(body, {"X-Onfleet-Signature": signature_for(body)})
    assert response.status == (200 if size <= 4096 else 413)


def test_gzip_body_verified_as_sent(harness: Harness) -> None:
    import gzip

    plain = b'{"triggerName": "taskCompleted"}'
    compressed = gzip.compress(plain)
    signed_plain = {"X-Onfleet-Signature": signature_for(plain), "Content-Encoding": "gzip"}
    assert harness.post(compressed, signed_plain).status == 401
    signed_raw = {"X-Onfleet-Signature": signature_for(compressed), "Content-Encoding": "gzip"}
    assert harness.post(compressed, signed_raw).status == 200


def test_method_other_than_get_post_405(harness: Harness) -> None:
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        response = harness.loop.run_until_complete(
            harness.handler.handle(method, CUSTOMER, check=None, headers={}, body=b"")
        )
        assert response.status == 405, method
        assert response.headers["Allow"] == "GET, POST"


def test_nothing_unsigned_queued(harness: Harness) -> None:
    """Runs last in this module: every random request above used the same queue."""
    for body in (b"", b"{}", b"\x00" * 10):
        harness.post(body, {"X-Onfleet-Signature": "0" * 128})
        harness.post(body, {})
    assert harness.queued() == []


def test_known_secret_hex_not_in_rejections(harness: Harness) -> None:
    response = harness.post(b"{}", {"X-Onfleet-Signature": "f" * 128})
    assert TEST_SECRET_HEX not in response.body
