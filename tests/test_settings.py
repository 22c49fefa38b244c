"""Settings validation: a bad deployment fails at start-up with the setting's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import ConfigurationError
from shared.settings import load_settings, parse_timespan

BASE = {
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "CLIENTTRACK_INTEGRATION_QUEUE_URL": "https://api.example.org/integration/queue",
}


def test_defaults() -> None:
    settings = load_settings(BASE)
    assert settings.events_queue == "onfleet-events"
    assert settings.poison_queue == "onfleet-events-poison"
    assert settings.payload_container == "onfleet-payloads"
    assert settings.max_webhook_body_bytes == 1024 * 1024
    assert settings.secret_cache_seconds == 300
    assert settings.secret_refresh_min_seconds == 30
    assert settings.forwarded_triggers is None
    assert settings.max_delivery_attempts == 8
    assert settings.dedupe_window_hours == 72
    assert settings.key_vault_url is None


def test_missing_storage_names_setting() -> None:
    with pytest.raises(ConfigurationError, match="AzureWebJobsStorage is missing"):
        load_settings({"CLIENTTRACK_INTEGRATION_QUEUE_URL": "https://x.example/q"})


def test_missing_clienttrack_url() -> None:
    with pytest.raises(ConfigurationError, match="CLIENTTRACK_INTEGRATION_QUEUE_URL is missing"):
        load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_WEBHOOK_BODY_BYTES", "1MB", "MAX_WEBHOOK_BODY_BYTES is not an integer: '1MB'"),
        ("MAX_WEBHOOK_BODY_BYTES", "0", "MAX_WEBHOOK_BODY_BYTES is out of range: 0"),
        ("MAX_DELIVERY_ATTEMPTS", "0", "MAX_DELIVERY_ATTEMPTS is out of range: 0"),
        ("SECRET_CACHE_SECONDS", "five", "SECRET_CACHE_SECONDS is not a number: 'five'"),
        ("SECRET_CACHE_SECONDS", "nan", "SECRET_CACHE_SECONDS is not a number"),
        ("SECRET_CACHE_SECONDS", "-1", "SECRET_CACHE_SECONDS is out of range"),
        ("KEY_VAULT_URL", "http://vault.example", "KEY_VAULT_URL is invalid"),
        ("KEY_VAULT_URL", "not a url", "KEY_VAULT_URL is invalid"),
        ("KEY_VAULT_URL", "https://vault.example:99999/", "KEY_VAULT_URL has an invalid port"),
        ("CLIENTTRACK_INTEGRATION_QUEUE_URL", "ftp://x/y", "is invalid: 'ftp://x/y'"),
        ("ONFLEET_EVENTS_QUEUE", "Bad_Name", "ONFLEET_EVENTS_QUEUE is invalid: 'Bad_Name'"),
        ("ONFLEET_EVENTS_QUEUE", "a--b", "ONFLEET_EVENTS_QUEUE is invalid"),
        ("ONFLEET_EVENTS_QUEUE", "q" * 60, "poison queue"),
        ("CLAIM_CHECK_CONTAINER", "UPPER", "CLAIM_CHECK_CONTAINER is invalid"),
        ("FORWARDED_TRIGGERS", "taskCompleted,task-failed", "'task-failed'"),
        ("DEDUPE_TABLE", "1table", "DEDUPE_TABLE is invalid"),
        ("RETRY_MAX_DELAY_SECONDS", "700000", "RETRY_MAX_DELAY_SECONDS is out of range"),
        ("INGEST_TIMEOUT_SECONDS", "12", "INGEST_TIMEOUT_SECONDS is out of range"),
    ],
)
def test_invalid_setting_named(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        load_settings({**BASE, name: value})


def test_queue_name_fits_poison_suffix() -> None:
    assert load_settings({**BASE, "ONFLEET_EVENTS_QUEUE": "q" * 56}).poison_queue == "q" * 56 + (
        "-poison"
    )
    with pytest.raises(ConfigurationError, match="at most 56 characters"):
        load_settings({**BASE, "ONFLEET_EVENTS_QUEUE": "q" * 57})


def test_delivery_timeout_longer_than_lease(tmp_path: Path) -> None:
    host_json = tmp_path / "host.json"
    host_json.write_text('{"version": "2.0", "functionTimeout": "00:01:00"}')
    env = {
        **BASE,
        "CLIENTTRACK_READ_TIMEOUT_SECONDS": "30",
        "CLIENTTRACK_CONNECT_TIMEOUT_SECONDS": "5",
    }
    with pytest.raises(ConfigurationError, match="functionTimeout"):
        load_settings(env, host_json=host_json)


def test_retry_base_above_cap() -> None:
    with pytest.raises(ConfigurationError, match="RETRY_BASE_SECONDS"):
        load_settings({**BASE, "RETRY_BASE_SECONDS": "60", "RETRY_MAX_DELAY_SECONDS": "10"})


def test_forwarded_triggers_parsed() -> None:
    settings = load_settings(
        {**BASE, "FORWARDED_TRIGGERS": " taskCompleted, taskFailed\ntaskStarted"}
    )
    assert settings.forwarded_triggers == frozenset({"taskcompleted", "taskfailed", "taskstarted"})
    assert settings.forwards("taskFailed")
    assert not settings.forwards("workerDuty")
    assert settings.forwards(None)


def test_forwarded_triggers_star_means_all() -> None:
    assert load_settings({**BASE, "FORWARDED_TRIGGERS": "*"}).forwarded_triggers is None


def test_blank_setting_uses_default() -> None:
    assert load_settings({**BASE, "MAX_DELIVERY_ATTEMPTS": "  "}).max_delivery_attempts == 8


def test_project_host_json_read() -> None:
    assert load_settings(BASE).function_timeout_seconds == 300


@pytest.mark.parametrize(
    ("text", "seconds"), [("00:05:00", 300), ("1.02:00:00", 93600), ("00:00:01.5", 1.5)]
)
def test_timespan(text: str, seconds: float) -> None:
    assert parse_timespan(text, name="x") == seconds


def test_timespan_invalid() -> None:
    with pytest.raises(ConfigurationError, match="'5 minutes'"):
        parse_timespan("5 minutes", name="host.json functionTimeout")
