"""Pure functions: signatures, envelopes and retry delays."""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from shared.backoff import parse_retry_after, retry_delay_seconds
from shared.envelope import (
    MAX_INLINE_MESSAGE_BYTES,
    Failure,
    build_envelope,
    decode_envelope,
    decode_queue_text,
)
from shared.errors import ConfigurationError, EnvelopeError, SignatureError
from shared.signature import parse_secrets, sign, verify
from tests.helpers import TEST_BODY, TEST_SECRET_HEX, TEST_SIGNATURE


def test_public_vector() -> None:
    assert sign(TEST_BODY, bytes.fromhex(TEST_SECRET_HEX)) == TEST_SIGNATURE


def test_verify_rotation_any_key() -> None:
    keys = parse_secrets(f"00ff, {TEST_SECRET_HEX}", secret_name="s")
    verify(TEST_BODY, TEST_SIGNATURE, keys)


@pytest.mark.parametrize("header", [None, "", "   ", "abc", TEST_SIGNATURE + "0", "g" * 128])
def test_verify_malformed_header(header: str | None) -> None:
    with pytest.raises(SignatureError):
        verify(TEST_BODY, header, [bytes.fromhex(TEST_SECRET_HEX)])


def test_verify_wrong_key() -> None:
    with pytest.raises(SignatureError, match="matches none"):
        verify(TEST_BODY, TEST_SIGNATURE, [b"other"])


@pytest.mark.parametrize("stored", ["xyz", "abc", "00ff,zz", "", " , "])
def test_parse_secrets_rejects_non_hex(stored: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_secrets(stored, secret_name="onfleet-webhook-secret-x")
    assert "onfleet-webhook-secret-x" in str(raised.value)
    if stored.strip(" ,"):
        assert stored.rsplit(",", maxsplit=1)[-1] not in str(raised.value)


def test_parse_secrets_whitespace_tolerated() -> None:
    assert parse_secrets(f"\n {TEST_SECRET_HEX}\t", secret_name="s") == [
        bytes.fromhex(TEST_SECRET_HEX)
    ]


def test_envelope_roundtrip() -> None:
    envelope = build_envelope("c-1", b'{"triggerName": "taskFailed", "triggerId": 4, "time": 5}')
    decoded = decode_queue_text(envelope.to_queue_text())
    assert decoded == envelope
    assert decoded.trigger_name == "taskFailed"
    assert decoded.onfleet_time == 5


def test_envelope_keeps_unknown_fields() -> None:
    document = json.loads(build_envelope("c", b"x").to_json())
    document["futureField"] = {"a": 1}
    decoded = decode_envelope(json.dumps(document).encode())
    assert decoded.to_dict()["futureField"] == {"a": 1}


def test_envelope_failure_roundtrip() -> None:
    failure = Failure("retries-exhausted", 503, "detail", "2026-01-01T00:00:00.000Z", 8)
    envelope = build_envelope("c", b"{}").with_failure(failure)
    assert decode_queue_text(envelope.to_queue_text()).failure == failure


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[1]", "not an object"),
        (b'{"schemaVersion": 2}', "schemaVersion 2 is not supported"),
        (b'{"schemaVersion": 1, "customerId": "c", "body": "x"}', "eventId"),
        (
            b'{"schemaVersion": 1, "eventId": "' + b"e" * 64 + b'", "customerId": "c"}',
            "exactly one of",
        ),
        (
            b'{"schemaVersion": 1, "eventId": "'
            + b"e" * 64
            + b'", "customerId": "c", "body": "x", '
            b'"attempt": -1}',
            "attempt",
        ),
    ],
)
def test_decode_rejects(raw: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        decode_envelope(raw)


def test_decode_queue_text_not_base64() -> None:
    with pytest.raises(EnvelopeError, match="base64"):
        decode_queue_text("not base64!")


def test_inline_limit_leaves_room() -> None:
    assert MAX_INLINE_MESSAGE_BYTES + 4096 == 64 * 1024
    encoded = base64.b64encode(b"x" * 1000).decode()
    assert len(encoded) < MAX_INLINE_MESSAGE_BYTES


def test_backoff_grows_and_caps() -> None:
    rng = random.Random(7)
    ceilings = [
        max(retry_delay_seconds(n, base_seconds=2, cap_seconds=60, rng=rng) for _ in range(200))
        for n in (1, 2, 3, 4, 10)
    ]
    assert ceilings == [2, 4, 8, 16, 60]


def test_backoff_jitter_spreads() -> None:
    rng = random.Random(1)
    delays = {retry_delay_seconds(5, base_seconds=2, cap_seconds=600, rng=rng) for _ in range(100)}
    assert len(delays) > 10


def test_backoff_honours_retry_after() -> None:
    rng = random.Random(3)
    for _ in range(50):
        delay = retry_delay_seconds(
            1, base_seconds=1, cap_seconds=60, retry_after_seconds=7, rng=rng
        )
        assert delay >= 7


def test_backoff_caps_retry_after() -> None:
    assert retry_delay_seconds(1, base_seconds=1, cap_seconds=30, retry_after_seconds=3600) == 30


def test_retry_after_seconds() -> None:
    assert parse_retry_after("7") == 7


def test_retry_after_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(header, now=now) == 90


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5"])
def test_retry_after_unusable(value: str | None) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"eventId": "E" * 64}, "eventId is not 64 lowercase hex"),
        ({"customerId": "../other"}, "invalid customerId"),
        ({"customerId": "x" * 65}, "invalid customerId"),
        ({"body": None, "bodyBlob": "other-customer/" + "a" * 64}, "bodyBlob other than"),
        ({"body": None, "bodyBlob": ""}, "bodyBlob other than"),
    ],
)
def test_decode_rejects_forged_fields(change: dict[str, object], message: str) -> None:
    document = build_envelope("c-1", b"{}").to_dict()
    document.update(change)
    document = {key: value for key, value in document.items() if value is not None or key != "body"}
    with pytest.raises(EnvelopeError, match=message):
        decode_envelope(json.dumps(document).encode())
