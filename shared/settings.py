"""Settings of the Function App, read once per worker process and validated.

Every value comes from an app setting (an environment variable in Azure, `Values` in
local.settings.json). A missing or malformed setting raises `ConfigurationError` at start-up
with the setting's name and the expected form, so a bad deployment fails before it takes an
event instead of losing one later.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.errors import ConfigurationError

POISON_QUEUE_SUFFIX = "-poison"
MAX_QUEUE_NAME_LENGTH = 63
# The Functions host lets a function run this long when host.json sets no functionTimeout
# (Consumption plan default).
DEFAULT_FUNCTION_TIMEOUT_SECONDS = 300.0
# Onfleet abandons a webhook request after this long and counts it as failed.
ONFLEET_TIMEOUT_SECONDS = 10.0
# A year; the window only needs to outlast Onfleet's retries and operators' replays.
MAX_DEDUPE_WINDOW_HOURS = 24 * 365
# The queue extension's default number of tries before the host moves a message to poison.
DEFAULT_MAX_DEQUEUE_COUNT = 5
# Storage Queues refuse a visibility timeout beyond seven days.
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600
# The Functions host reads HTTP bodies up to 100 MB; a larger limit could never apply.
MAX_HOST_BODY_BYTES = 100 * 1024 * 1024
# A 401 or 403 re-reads the secrets and calls ClientTrack once more, so one delivery can
# take two full calls.
CALLS_PER_DELIVERY = 2

_QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
_CONTAINER_NAME = _QUEUE_NAME
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_TRIGGER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"


@dataclass(frozen=True)
class Settings:
    """Validated settings of one worker process."""

    storage_connection_string: str | None
    storage_account_name: str | None
    events_queue: str
    payload_container: str
    max_webhook_body_bytes: int
    ingest_timeout_seconds: float
    key_vault_url: str | None
    secret_cache_seconds: float
    secret_refresh_min_seconds: float
    max_secret_reads_per_second: float
    forwarded_triggers: frozenset[str] | None
    clienttrack_url: str
    clienttrack_connect_timeout_seconds: float
    clienttrack_read_timeout_seconds: float
    clienttrack_max_connections: int
    max_delivery_attempts: int
    retry_base_seconds: float
    retry_max_delay_seconds: float
    dedupe_window_hours: float
    dedupe_table: str
    function_timeout_seconds: float
    max_dequeue_count: int

    @property
    def poison_queue(self) -> str:
        """Name of the queue that parked and host-moved messages land in."""
        return self.events_queue + POISON_QUEUE_SUFFIX

    def forwards(self, trigger_name: str | None) -> bool:
        """Tell whether events of this trigger go to ClientTrack.

        An event without a trigger name is forwarded so the processor can park it with a
        reason instead of it vanishing at the edge. Names compare without case, because a
        list written `TaskCompleted` would otherwise skip every taskCompleted event.
        """
        if self.forwarded_triggers is None or trigger_name is None:
            return True
        return trigger_name.lower() in self.forwarded_triggers


def load_settings(
    environ: Mapping[str, str] | None = None, *, host_json: Path | None = None
) -> Settings:
    """Read and validate every setting; raise `ConfigurationError` on the first bad one."""
    env = os.environ if environ is None else environ
    read = _Reader(env)

    connection_string = read.optional("AzureWebJobsStorage")
    account_name = read.optional("AzureWebJobsStorage__accountName")
    if connection_string is None and account_name is None:
        raise ConfigurationError(
            "Setting AzureWebJobsStorage is missing: set it to a Storage connection string "
            "(UseDevelopmentStorage=true for Azurite), or set AzureWebJobsStorage__accountName "
            "to use the managed identity."
        )

    if connection_string is not None:
        _check_connection_string(connection_string)
    events_queue = read.string("ONFLEET_EVENTS_QUEUE", "onfleet-events")
    _check_queue_name(events_queue)
    payload_container = read.string("CLAIM_CHECK_CONTAINER", "onfleet-payloads")
    if not (3 <= len(payload_container) <= 63 and _CONTAINER_NAME.match(payload_container)):
        raise ConfigurationError(
            f"Setting CLAIM_CHECK_CONTAINER is invalid: {payload_container!r}. Expected 3 to 63 "
            "lowercase letters, digits and single hyphens, starting and ending with a letter "
            "or digit."
        )

    host_config = _read_host_json(host_json or _HOST_JSON)
    key_vault_url = read.optional("KEY_VAULT_URL")
    if key_vault_url is not None:
        _check_key_vault_url(key_vault_url)

    settings = Settings(
        storage_connection_string=connection_string,
        storage_account_name=account_name,
        events_queue=events_queue,
        payload_container=payload_container,
        max_webhook_body_bytes=read.integer(
            "MAX_WEBHOOK_BODY_BYTES", 1024 * 1024, minimum=1, maximum=MAX_HOST_BODY_BYTES
        ),
        ingest_timeout_seconds=read.number(
            "INGEST_TIMEOUT_SECONDS", 8.0, minimum=0.5, maximum=ONFLEET_TIMEOUT_SECONDS - 0.5
        ),
        key_vault_url=key_vault_url,
        secret_cache_seconds=read.number("SECRET_CACHE_SECONDS", 300.0, minimum=0.0),
        secret_refresh_min_seconds=read.number("SECRET_REFRESH_MIN_SECONDS", 30.0, minimum=0.0),
        max_secret_reads_per_second=read.number("MAX_SECRET_READS_PER_SECOND", 20.0, minimum=0.1),
        forwarded_triggers=_parse_triggers(read.optional("FORWARDED_TRIGGERS")),
        clienttrack_url=_require_http_url(read, "CLIENTTRACK_INTEGRATION_QUEUE_URL"),
        clienttrack_connect_timeout_seconds=read.number(
            "CLIENTTRACK_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1
        ),
        clienttrack_read_timeout_seconds=read.number(
            "CLIENTTRACK_READ_TIMEOUT_SECONDS", 30.0, minimum=0.1
        ),
        clienttrack_max_connections=read.integer(
            "CLIENTTRACK_MAX_CONNECTIONS", 100, minimum=1, maximum=10_000
        ),
        max_delivery_attempts=read.integer("MAX_DELIVERY_ATTEMPTS", 8, minimum=1, maximum=1000),
        retry_base_seconds=read.number("RETRY_BASE_SECONDS", 2.0, minimum=0.0),
        retry_max_delay_seconds=read.number(
            "RETRY_MAX_DELAY_SECONDS", 600.0, minimum=0.0, maximum=MAX_VISIBILITY_SECONDS
        ),
        dedupe_window_hours=read.number(
            "DEDUPE_WINDOW_HOURS", 72.0, minimum=0.0, maximum=MAX_DEDUPE_WINDOW_HOURS
        ),
        dedupe_table=read.string("DEDUPE_TABLE", "onfleetdeliveries"),
        function_timeout_seconds=_function_timeout_seconds(host_config),
        max_dequeue_count=_max_dequeue_count(host_config),
    )

    if not _TABLE_NAME.match(settings.dedupe_table):
        raise ConfigurationError(
            f"Setting DEDUPE_TABLE is invalid: {settings.dedupe_table!r}. Expected 3 to 63 "
            "letters and digits, starting with a letter."
        )
    call_seconds = (
        settings.clienttrack_connect_timeout_seconds + settings.clienttrack_read_timeout_seconds
    )
    if CALLS_PER_DELIVERY * call_seconds >= settings.function_timeout_seconds:
        raise ConfigurationError(
            "Settings CLIENTTRACK_CONNECT_TIMEOUT_SECONDS and CLIENTTRACK_READ_TIMEOUT_SECONDS "
            f"add up to {call_seconds:g} s; twice that must stay below host.json's "
            f"functionTimeout ({settings.function_timeout_seconds:g} s), or the host could "
            "abandon a delivery mid-call and deliver it again."
        )
    if settings.retry_base_seconds > settings.retry_max_delay_seconds:
        raise ConfigurationError(
            f"Setting RETRY_BASE_SECONDS ({settings.retry_base_seconds:g}) is larger than "
            f"RETRY_MAX_DELAY_SECONDS ({settings.retry_max_delay_seconds:g}); lower the base "
            "or raise the cap."
        )
    return settings


class _Reader:
    """Typed access to a mapping of setting names to strings."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def optional(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def string(self, name: str, default: str) -> str:
        value = self.optional(name)
        return default if value is None else value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(
                f"Setting {name} is not an integer: {raw!r}. Expected a whole number from "
                f"{minimum} to {maximum}."
            ) from None
        if not minimum <= value <= maximum:
            raise ConfigurationError(
                f"Setting {name} is out of range: {value}. Expected {minimum} to {maximum}."
            )
        return value

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float = float("inf")
    ) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value):
            raise ConfigurationError(
                f"Setting {name} is not a number: {raw!r}. Expected a decimal number such as "
                f"{default:g}."
            )
        if not minimum <= value <= maximum:
            raise ConfigurationError(
                f"Setting {name} is out of range: {value:g}. Expected at least {minimum:g}"
                + (f" and at most {maximum:g}." if maximum != float("inf") else ".")
            )
        return value


def _check_queue_name(name: str) -> None:
    if not (3 <= len(name) <= MAX_QUEUE_NAME_LENGTH and _QUEUE_NAME.match(name)):
        raise ConfigurationError(
            f"Setting ONFLEET_EVENTS_QUEUE is invalid: {name!r}. Expected 3 to 63 lowercase "
            "letters, digits and single hyphens, starting and ending with a letter or digit."
        )
    poison = name + POISON_QUEUE_SUFFIX
    if len(poison) > MAX_QUEUE_NAME_LENGTH:
        raise ConfigurationError(
            f"Setting ONFLEET_EVENTS_QUEUE is too long: {name!r} has {len(name)} characters, so "
            f"its poison queue {poison!r} would exceed the {MAX_QUEUE_NAME_LENGTH}-character "
            f"limit. Use at most {MAX_QUEUE_NAME_LENGTH - len(POISON_QUEUE_SUFFIX)} characters."
        )


def _check_connection_string(connection_string: str) -> None:
    from azure.storage.queue import QueueClient

    try:
        QueueClient.from_connection_string(connection_string, "settings-check")
    except ValueError:
        # The value holds the account key, so the message names the setting, not the value.
        raise ConfigurationError(
            "Setting AzureWebJobsStorage is not a Storage connection string. Expected "
            "DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=... "
            "or UseDevelopmentStorage=true."
        ) from None


def _check_key_vault_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigurationError(
            f"Setting KEY_VAULT_URL is invalid: {url!r}. Expected an https URL such as "
            "https://my-vault.vault.azure.net/, or leave it unset to read secrets from app "
            "settings."
        )
    try:
        _ = parts.port
    except ValueError:
        raise ConfigurationError(f"Setting KEY_VAULT_URL has an invalid port: {url!r}.") from None


def _require_http_url(read: _Reader, name: str) -> str:
    url = read.optional(name)
    if url is None:
        raise ConfigurationError(
            f"Setting {name} is missing: set it to the ClientTrack integration queue endpoint, "
            "for example https://api.example.org/clienttrack/integration/queue."
        )
    parts = urlsplit(url)
    try:
        _ = parts.port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"Setting {name} is invalid: {url!r}. Expected an http or https URL."
        )
    return url


def _parse_triggers(raw: str | None) -> frozenset[str] | None:
    if raw is None or raw == "*":
        return None
    names = frozenset(name.lower() for name in re.split(r"[\s,]+", raw) if name)
    for name in names:
        if not _TRIGGER_NAME.match(name):
            raise ConfigurationError(
                f"Setting FORWARDED_TRIGGERS has an invalid trigger name: {name!r}. Expected "
                "Onfleet trigger names such as taskCompleted,taskFailed separated by commas, "
                "or * for all."
            )
    return names


def _read_host_json(host_json: Path) -> dict[str, Any]:
    try:
        config = json.loads(host_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ConfigurationError(
            f"host.json at {host_json} is not readable JSON: {error}"
        ) from None
    return config if isinstance(config, dict) else {}


def _function_timeout_seconds(config: dict[str, Any]) -> float:
    raw = config.get("functionTimeout")
    if raw is None:
        return DEFAULT_FUNCTION_TIMEOUT_SECONDS
    return parse_timespan(str(raw), name="host.json functionTimeout")


def _max_dequeue_count(config: dict[str, Any]) -> int:
    queues = config.get("extensions", {}).get("queues", {})
    raw = queues.get("maxDequeueCount", DEFAULT_MAX_DEQUEUE_COUNT)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        raise ConfigurationError(
            f"host.json extensions.queues.maxDequeueCount is invalid: {raw!r}. Expected a "
            "whole number of at least 1."
        )
    return raw


def parse_timespan(text: str, *, name: str) -> float:
    """Convert a .NET TimeSpan such as `00:05:00` or `1.02:00:00` to seconds."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)", text.strip())
    if match is None:
        raise ConfigurationError(
            f"{name} is not a time span: {text!r}. Expected hh:mm:ss, for example 00:05:00."
        )
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


_cached: Settings | None = None


def get_settings() -> Settings:
    """Return this worker's settings, loading them on first use."""
    global _cached
    if _cached is None:
        _cached = load_settings()
    return _cached


def reset_settings() -> None:
    """Forget the loaded settings so the next `get_settings` reads the environment again."""
    global _cached
    _cached = None
