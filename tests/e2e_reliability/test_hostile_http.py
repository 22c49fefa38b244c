"""Hostile input over real HTTP: a fixed corpus against devhost, the function app's runner.

tests/test_hostile.py feeds generated input to the handler in-process. This module sends a
fixed corpus through sockets, so the HTTP server's parsing, routing and body reading are
part of what is tested. Requirements: no 500, every rejection a 4xx, and no queue write for
anything that is not signed.

Rejections come from two places. The function answers with a one-line `text/plain` reason
and `X-Content-Type-Options: nosniff`. devhost answers before the function runs when the
route or method does not match (an empty 404 or 405) or when the request cannot be parsed
(aiohttp's own 400 text). Those must still be 4xx.

The bridge here has its event processor turned off, so every enqueued envelope stays in the
queue for the last test, which compares the queue with the signed requests that got a 200.
"""

from __future__ import annotations

import gzip
import http.client
import json
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devhost.clienttrack import ClientTrackStandIn
from shared.envelope import decode_queue_text
from shared.signature import sign
from tests.e2e_reliability.support import (
    CUSTOMER,
    WEBHOOK_SECRET_HEX,
    ReliabilityBridge,
    clienttrack_secrets,
    running_bridge,
)

BODY_LIMIT_BYTES = 8192
KEY = bytes.fromhex(WEBHOOK_SECRET_HEX)
PATH = f"/onfleet/webhooks/{CUSTOMER}"
SOCKET_TIMEOUT_SECONDS = 3.0
JUNK_REQUESTS = 40
JUNK_SEED = 20261204


@dataclass
class Answer:
    """One HTTP response read from a socket; `status` is None when the server sent nothing."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def from_function(self) -> bool:
        return self.headers.get("x-content-type-options") == "nosniff"


@dataclass
class Corpus:
    """The module's bridge and the event ids of the signed requests that got a 200."""

    bridge: ReliabilityBridge
    accepted: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def corpus(
    storage_connection_string: str,
    reliability_app: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Corpus]:
    with (
        ClientTrackStandIn(clienttrack_secrets()) as standin,
        running_bridge(
            reliability_app,
            tmp_path_factory.mktemp("hostile-http"),
            storage_connection_string,
            standin,
            MAX_WEBHOOK_BODY_BYTES=str(BODY_LIMIT_BYTES),
            **{"AzureWebJobs.event_processor.Disabled": "true"},
        ) as bridge,
    ):
        yield Corpus(bridge)


def request(
    corpus: Corpus,
    method: str,
    target: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Send one request with `target` exactly as written (no normalising or encoding)."""
    connection = http.client.HTTPConnection("127.0.0.1", corpus.bridge.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        answer = Answer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()
    record_accepted(corpus, answer)
    return answer


def raw_request(corpus: Corpus, data: bytes, *, half_close: bool = False) -> Answer:
    """Write raw bytes to the server and parse the first response, if any."""
    with socket.create_connection(
        ("127.0.0.1", corpus.bridge.port), timeout=SOCKET_TIMEOUT_SECONDS
    ) as connection:
        connection.sendall(data)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    answer = parse_response(received)
    record_accepted(corpus, answer)
    return answer


def parse_response(data: bytes) -> Answer:
    if not data:
        return Answer(None)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(body)))
    return Answer(int(status_line.split()[1]), headers, body[:length])


def record_accepted(corpus: Corpus, answer: Answer) -> None:
    if answer.status == 200 and answer.headers.get("content-type") == "application/json":
        corpus.accepted.append(json.loads(answer.body)["eventId"])


def signed_headers(body: bytes, **extra: str) -> dict[str, str]:
    return {"X-Onfleet-Signature": sign(body, KEY), "Content-Type": "application/json", **extra}


def assert_rejected(answer: Answer, *statuses: int) -> None:
    """Check a 4xx (one of `statuses` when given) and, from the function, a one-line reason."""
    assert answer.status is not None, "the server closed the connection without an answer"
    assert 400 <= answer.status <= 499, answer
    if statuses:
        assert answer.status in statuses, answer
    if answer.from_function:
        text = answer.body.decode("utf-8")
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert text.strip(), "the rejection has no reason"
        assert "\n" not in text, f"the reason is not one line: {text!r}"


def assert_echoed(answer: Answer, check: str) -> None:
    assert answer.status == 200, answer
    assert answer.body == check.encode("utf-8")
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.headers["x-content-type-options"] == "nosniff"


# --- the handshake's check value -------------------------------------------------------------


def test_script_check_plain_text(corpus: Corpus) -> None:
    check = "<script>alert(document.cookie)</script>"
    answer = request(corpus, "GET", f"{PATH}?check=%3Cscript%3Ealert(document.cookie)%3C/script%3E")
    assert_echoed(answer, check)


@pytest.mark.parametrize(
    ("encoded", "check"),
    [
        ("a" * 1024, "a" * 1024),
        ("%C3%BCn%C3%AFc%C3%B8d%C3%A9%20%E2%9C%93%20%F0%9F%9A%9A", "ünïcødé ✓ 🚚"),
        ("%00%0D%0A", "\x00\r\n"),
        ("%22quoted%22", '"quoted"'),
        ("a%26check%3Db", "a&check=b"),
        ("..%2F..%2Fetc%2Fpasswd", "../../etc/passwd"),
    ],
    ids=["1024-chars", "unicode", "nul-crlf", "json-quoted", "ampersand", "traversal-text"],
)
def test_odd_check_echoed(corpus: Corpus, encoded: str, check: str) -> None:
    assert_echoed(request(corpus, "GET", f"{PATH}?check={encoded}"), check)


@pytest.mark.parametrize(
    "query",
    ["", "?check", "?check=", "?check=" + "a" * 1025, "?check=" + "a" * 9000],
    ids=["absent", "bare", "empty", "1025-chars", "over-line-limit"],
)
def test_bad_check_rejected(corpus: Corpus, query: str) -> None:
    assert_rejected(request(corpus, "GET", PATH + query), 400)


# --- customer ids and paths ------------------------------------------------------------------


def test_percent_encoded_known_customer(corpus: Corpus) -> None:
    encoded = CUSTOMER.replace("-", "%2D")
    assert_echoed(request(corpus, "GET", f"/onfleet/webhooks/{encoded}?check=ok"), "ok")


@pytest.mark.parametrize(
    "customer",
    [
        "caf%C3%A9",
        "%E2%80%8B" + CUSTOMER,
        CUSTOMER + "%00",
        CUSTOMER.upper(),
        "a%2Fb",
        "..%2Fx",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "x" * 65,
        "%F0%9F%9A%9A",
        "%FF%FE",
    ],
)
def test_odd_customer_id_404(corpus: Corpus, customer: str) -> None:
    get = request(corpus, "GET", f"/onfleet/webhooks/{customer}?check=x")
    post = request(corpus, "POST", f"/onfleet/webhooks/{customer}", body=b"{}")
    assert_rejected(get, 404)
    assert_rejected(post, 404)


@pytest.mark.parametrize(
    "target",
    [
        "/onfleet/webhooks/../x",
        "/onfleet/webhooks/%2e%2e",
        "/onfleet/webhooks/%2e%2e/x",
        "/onfleet/webhooks/./../../x",
        f"/onfleet/webhooks/{CUSTOMER}/extra",
        "/onfleet/webhooks/",
        "/onfleet/webhooks//" + CUSTOMER,
        "/../../etc/passwd",
    ],
)
def test_path_traversal_404(corpus: Corpus, target: str) -> None:
    assert_rejected(request(corpus, "GET", target + "?check=x"), 404)
    assert_rejected(request(corpus, "POST", target, body=b"{}"), 404)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE"])
def test_other_methods_405(corpus: Corpus, method: str) -> None:
    answer = request(corpus, method, f"{PATH}?check=x", body=b"{}")
    assert_rejected(answer, 405)
    assert "GET" in answer.headers["allow"]
    assert "POST" in answer.headers["allow"]


def test_unknown_method_token_400(corpus: Corpus) -> None:
    data = f"FROB {PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    assert_rejected(raw_request(corpus, data), 400)


# --- bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "status"),
    [(BODY_LIMIT_BYTES - 1, 200), (BODY_LIMIT_BYTES, 200), (BODY_LIMIT_BYTES + 1, 413)],
)
def test_body_size_limit(corpus: Corpus, size: int, status: int) -> None:
    prefix = b'{"triggerName":"taskCompleted","notes":"'
    body = prefix + b"x" * (size - len(prefix) - 2) + b'"}'
    assert len(body) == size
    answer = request(corpus, "POST", PATH, body=body, headers=signed_headers(body))
    if status == 200:
        assert answer.status == 200, answer
    else:
        assert_rejected(answer, status)


def test_unsigned_body_over_limit_413(corpus: Corpus) -> None:
    body = b"x" * (BODY_LIMIT_BYTES * 4)
    assert_rejected(request(corpus, "POST", PATH, body=body), 413)


def test_gzip_body_never_500(corpus: Corpus) -> None:
    plain = b'{"triggerName":"taskCompleted","taskId":"gzip"}'
    compressed = gzip.compress(plain)
    # The body is verified as sent, compressed bytes and all, as the Functions host passes
    # it on: only a signature over those bytes passes.
    for signed_over, status in ((plain, 401), (compressed, 200), (b"something else", 401)):
        headers = {"Content-Encoding": "gzip", "X-Onfleet-Signature": sign(signed_over, KEY)}
        answer = request(corpus, "POST", PATH, body=compressed, headers=headers)
        assert answer.status == status, answer
        if status != 200:
            assert_rejected(answer, status)


def test_gzip_bomb_rejected(corpus: Corpus) -> None:
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))
    headers = {"Content-Encoding": "gzip", "X-Onfleet-Signature": sign(bomb, KEY)}
    assert_rejected(request(corpus, "POST", PATH, body=bomb, headers=headers))


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_mislabelled_encoding_verified_as_sent(corpus: Corpus, encoding: str) -> None:
    body = b"this is not compressed"
    headers = {"Content-Encoding": encoding, "X-Onfleet-Signature": sign(body, KEY)}
    answer = request(corpus, "POST", PATH, body=body, headers=headers)
    assert answer.status == 200, answer


# --- framing: lying Content-Length and smuggling attempts ------------------------------------


def post_head(content_length: str, body: bytes, *, signature: str | None = None) -> bytes:
    lines = [
        f"POST {PATH} HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: close",
        f"Content-Length: {content_length}",
    ]
    if signature is not None:
        lines.append(f"X-Onfleet-Signature: {signature}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_content_length_shorter_than_body(corpus: Corpus) -> None:
    body = b'{"triggerName":"taskCompleted","taskId":"short-length"}'
    answer = raw_request(corpus, post_head("10", body, signature=sign(body, KEY)))
    assert_rejected(answer)


def test_content_length_longer_then_eof(corpus: Corpus) -> None:
    body = b'{"triggerName":"taskCompleted","taskId":"long-length"}'
    answer = raw_request(
        corpus, post_head(str(len(body) + 100), body, signature=sign(body, KEY)), half_close=True
    )
    # The body never completes, so the server may close without a response. It must not
    # respond with a 200 or a 500.
    if answer.status is not None:
        assert_rejected(answer)


def test_content_length_longer_then_silence(corpus: Corpus) -> None:
    body = b'{"triggerName":"taskCompleted","taskId":"stalled"}'
    answer = raw_request(corpus, post_head(str(len(body) + 100), body, signature=sign(body, KEY)))
    if answer.status is not None:
        assert_rejected(answer)


@pytest.mark.parametrize(
    "head",
    [
        "Content-Length: -1",
        "Content-Length: 0x2",
        "Content-Length: 2\r\nContent-Length: 3",
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked, identity",
    ],
    ids=["negative", "hex", "duplicate", "with-chunked", "odd-coding"],
)
def test_malformed_framing_400(corpus: Corpus, head: str) -> None:
    start = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}\r\n\r\n"
    data = start + "2\r\n{}\r\n0\r\n\r\n"
    assert_rejected(raw_request(corpus, data.encode()), 400)


def test_chunked_signed_body_accepted(corpus: Corpus) -> None:
    body = b'{"triggerName":"taskCompleted","taskId":"chunked"}'
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Transfer-Encoding: chunked\r\nX-Onfleet-Signature: {sign(body, KEY)}\r\n\r\n"
    )
    answer = raw_request(corpus, head.encode() + chunked)
    assert answer.status == 200, answer


# --- header junk -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    ["", " ", "sha512=" + "0" * 128, "ü" * 128, "0" * 10_000, sign(b"other", KEY)],
    ids=["empty", "blank", "prefixed", "unicode", "very-long", "other-body"],
)
def test_bad_signature_401(corpus: Corpus, signature: str) -> None:
    body = b'{"triggerName":"taskCompleted"}'
    answer = raw_request(corpus, post_head(str(len(body)), body, signature=signature))
    assert_rejected(answer, 400, 401)


def test_random_header_junk(corpus: Corpus) -> None:
    rng = random.Random(JUNK_SEED)
    token = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    body = b'{"triggerName":"taskCompleted","taskId":"junk"}'
    for _ in range(JUNK_REQUESTS):
        lines = []
        for _ in range(rng.randint(1, 30)):
            name = "".join(rng.choice(token) for _ in range(rng.randint(1, 40)))
            value = bytes(
                rng.choice([*range(0x20, 0x7F), *range(0x80, 0x100)])
                for _ in range(rng.randint(0, 200))
            )
            lines.append(name.encode() + b": " + value)
        head = post_head(str(len(body)), b"").rstrip(b"\r\n")
        data = head + b"\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + body
        assert_rejected(raw_request(corpus, data), 400, 401)


@pytest.mark.parametrize(
    "header",
    [b"X-\x01Bad: value", b": no-name", b"X-Nul: a\x00b", b"X-Long: " + b"a" * 20_000],
    ids=["control-in-name", "empty-name", "nul-in-value", "over-line-limit"],
)
def test_unparseable_header_400(corpus: Corpus, header: bytes) -> None:
    body = b"{}"
    data = post_head(str(len(body)), body).replace(b"\r\n\r\n", b"\r\n" + header + b"\r\n\r\n", 1)
    assert_rejected(raw_request(corpus, data), 400)


def test_too_many_headers_rejected(corpus: Corpus) -> None:
    headers = {f"X-Junk-{index}": "v" * 50 for index in range(200)}
    assert_rejected(request(corpus, "POST", PATH, body=b"{}", headers=headers))


# --- afterwards ------------------------------------------------------------------------------


def test_only_signed_requests_queued(corpus: Corpus) -> None:
    """Runs last in this module: every request above went to the same bridge and queue."""
    bridge = corpus.bridge
    queued = [decode_queue_text(text).event_id for text in all_queue_texts(bridge)]

    assert sorted(queued) == sorted(corpus.accepted)
    assert bridge.queue_depth() == len(corpus.accepted)
    log = bridge.log_text()
    assert "Executed 'Functions.webhook_ingest' (Failed" not in log


def all_queue_texts(bridge: ReliabilityBridge) -> list[str]:
    """Receive every message, hidden for a minute so each is read once, and leave them."""
    texts: list[str] = []
    with bridge.queue_client() as queue:
        for page in queue.receive_messages(messages_per_page=32, visibility_timeout=60).by_page():
            texts.extend(message.content for message in page)
    return texts
