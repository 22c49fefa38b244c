"""host.json, local.settings.json and message decoding rules, without a running host."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from devhost.config import (
    Binding,
    ConfigurationError,
    QueueOptions,
    apply_settings,
    connection_string,
    load_host_config,
    load_local_settings,
    parse_timespan,
)
from devhost.queue_trigger import (
    LEASE_MARGIN_SECONDS,
    RENEWED_LEASE_SECONDS,
    InvalidMessageEncodingError,
    decode_message,
    lease_seconds,
)


def write_host(root: Path, document: dict[str, Any]) -> Path:
    (root / "host.json").write_text(json.dumps(document), encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:05:00", 300.0),
        ("00:00:01", 1.0),
        ("00:00:00.5", 0.5),
        ("01:02:03", 3723.0),
        ("1.00:00:00", 86400.0),
        ("2", 172800.0),
        ("00:10", 600.0),
    ],
)
def test_parse_timespan(text: str, seconds: float) -> None:
    assert parse_timespan(text, setting="x") == seconds


@pytest.mark.parametrize("text", ["5 minutes", "00:60:00", "24:00:00", "", 300])
def test_parse_timespan_invalid(text: object) -> None:
    with pytest.raises(ConfigurationError):
        parse_timespan(text, setting="x")


def test_host_defaults(tmp_path: Path) -> None:
    config = load_host_config(write_host(tmp_path, {"version": "2.0"}))

    assert config.function_timeout_seconds == 300.0
    assert config.route_prefix == "api"
    assert config.queues == QueueOptions()
    assert config.queues.new_batch_threshold == 8
    assert config.queues.max_polling_interval_seconds == 60.0
    assert config.queues.visibility_timeout_seconds == 0.0
    assert config.queues.max_dequeue_count == 5
    assert config.queues.message_encoding == "base64"


def test_host_new_batch_threshold_default(tmp_path: Path) -> None:
    document = {"version": "2.0", "extensions": {"queues": {"batchSize": 10}}}

    config = load_host_config(write_host(tmp_path, document))

    assert config.queues.new_batch_threshold == 5


def test_host_project_file() -> None:
    project_root = Path(__file__).resolve().parents[2]

    config = load_host_config(project_root)

    assert config.route_prefix == ""
    assert config.queues.batch_size == 16


def test_host_function_timeout_unbounded(tmp_path: Path) -> None:
    config = load_host_config(write_host(tmp_path, {"version": "2.0", "functionTimeout": "-1"}))

    assert config.function_timeout_seconds is None


@pytest.mark.parametrize(
    "queues",
    [
        {"batchSize": 0},
        {"batchSize": 33},
        {"maxDequeueCount": 0},
        {"messageEncoding": "utf8"},
        {"maxPollingInterval": "00:00:00.05"},
        {"visibilityTimeout": "soon"},
    ],
)
def test_host_invalid_queue_options(tmp_path: Path, queues: dict[str, Any]) -> None:
    document = {"version": "2.0", "extensions": {"queues": queues}}

    with pytest.raises(ConfigurationError):
        load_host_config(write_host(tmp_path, document))


def test_host_version_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="version"):
        load_host_config(write_host(tmp_path, {}))


def test_settings_reject_non_string_values(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": {"PORT": 7072}}), encoding="utf-8")

    with pytest.raises(ConfigurationError, match="PORT"):
        load_local_settings(path)


def test_settings_read_port(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": {}, "Host": {"LocalHttpPort": 7075}}), encoding="utf-8")

    assert load_local_settings(path).local_http_port == 7075


def test_apply_settings_keeps_existing() -> None:
    environ = {"A": "environment"}

    applied = apply_settings({"A": "file", "B": "file"}, environ)

    assert environ == {"A": "environment", "B": "file"}
    assert applied == ["B"]


def queue_binding(**settings: str) -> Binding:
    return Binding(type="queueTrigger", direction="in", name="msg", settings=settings)


def test_connection_prefers_azurewebjobs_prefix() -> None:
    environ = {"AzureWebJobsMine": "prefixed", "Mine": "plain"}

    assert connection_string("f", queue_binding(connection="Mine"), environ) == "prefixed"


def test_connection_default_setting() -> None:
    environ = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}

    assert connection_string("f", queue_binding(), environ) == "UseDevelopmentStorage=true"


def test_connection_identity_based_rejected() -> None:
    environ = {"Mine__queueServiceUri": "https://account.queue.core.windows.net"}

    with pytest.raises(ConfigurationError, match="identity-based"):
        connection_string("f", queue_binding(connection="Mine"), environ)


def test_decode_base64() -> None:
    text = base64.b64encode(b"\x00\xffpayload").decode()

    assert decode_message(text, "base64") == b"\x00\xffpayload"


def test_decode_base64_ignores_whitespace() -> None:
    text = base64.b64encode(b"payload").decode()

    assert decode_message(f" {text[:4]}\r\n{text[4:]} ", "base64") == b"payload"


@pytest.mark.parametrize("text", ["not base64!", "YWJj=", "YQ", '{"json": true}'])
def test_decode_base64_invalid(text: str) -> None:
    with pytest.raises(InvalidMessageEncodingError):
        decode_message(text, "base64")


def test_decode_none_encoding() -> None:
    assert decode_message("caf\u00e9", "none") == "caf\u00e9".encode()


def test_lease_covers_function_timeout() -> None:
    assert lease_seconds(300.0) == 300 + LEASE_MARGIN_SECONDS
    assert lease_seconds(0.5) == 1 + LEASE_MARGIN_SECONDS
    assert lease_seconds(None) == RENEWED_LEASE_SECONDS
    assert lease_seconds(30 * 86400.0) == 7 * 86400
