"""Parts of the CLI that need no storage: time filters, ages, settings and the rate limiter."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ops.poison.connection import read_app_settings, resolve_connection
from ops.poison.errors import CliError
from ops.poison.messages import FilterError, build_selection, decode_message, parse_time
from ops.poison.output import Progress, RateLimiter, format_age
from tests.ops.support import parked_text

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        ("3d", NOW - timedelta(days=3)),
        ("1w", NOW - timedelta(weeks=1)),
        ("90s", NOW - timedelta(seconds=90)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2024-04-30T08:00:00Z", datetime(2024, 4, 30, 8, tzinfo=UTC)),
        ("2024-04-30T10:00:00+02:00", datetime(2024, 4, 30, 8, tzinfo=UTC)),
        ("2024-04-30T08:00:00", datetime(2024, 4, 30, 8, tzinfo=UTC)),
        ("2024-04-30", datetime(2024, 4, 30, tzinfo=UTC)),
    ],
)
def test_parse_time_forms(text: str, expected: datetime) -> None:
    assert parse_time(text, option="--since", now=NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "3 days", "-2h", "2y", "h"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(FilterError, match="--since"):
        parse_time(text, option="--since", now=NOW)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, "0s"), (59, "59s"), (61, "1m01s"), (3600 + 120, "1h02m"), (3 * 86400 + 4 * 3600, "3d4h")],
)
def test_format_age(seconds: int, expected: str) -> None:
    assert format_age(NOW - timedelta(seconds=seconds), NOW) == expected


def test_selection_limit_keeps_oldest() -> None:
    older = decode_message("b", parked_text("acme-foodbank"), inserted_on=NOW - timedelta(hours=1))
    newer = decode_message("a", parked_text("acme-foodbank"), inserted_on=NOW)

    selection = build_selection(limit=1, now=NOW)

    assert selection.apply([newer, older]) == [older]


def test_replay_text_resets_attempt() -> None:
    message = decode_message("m", parked_text("acme-foodbank", attempts=7))

    replayed = decode_message("r", message.replay_text())

    assert replayed.envelope is not None
    assert replayed.envelope.attempt == 0
    assert replayed.envelope.failure is None
    assert replayed.kind == "host-moved"


def test_account_name_setting_builds_url() -> None:
    options = resolve_connection(
        connection_string=None,
        account_url=None,
        blob_account_url=None,
        queue=None,
        container=None,
        settings={"AzureWebJobsStorage__accountName": "prodbridge"},
    )

    assert options.account_url == "https://prodbridge.queue.core.windows.net"
    assert options.connection_string is None
    assert options.queue == "onfleet-events"
    assert options.poison_queue == "onfleet-events-poison"
    assert options.container == "onfleet-payloads"


def test_option_beats_settings() -> None:
    options = resolve_connection(
        connection_string="UseDevelopmentStorage=true",
        account_url=None,
        blob_account_url=None,
        queue="other-events",
        container="other-payloads",
        settings={
            "AzureWebJobsStorage": "AccountName=x;AccountKey=eA==",
            "ONFLEET_EVENTS_QUEUE": "settings-events",
            "CLAIM_CHECK_CONTAINER": "settings-payloads",
        },
    )

    assert options.connection_string == "UseDevelopmentStorage=true"
    assert options.queue == "other-events"
    assert options.container == "other-payloads"


def test_account_url_with_sas_not_echoed() -> None:
    with pytest.raises(CliError) as raised:
        resolve_connection(
            connection_string=None,
            account_url="ftp://example.net/?sig=c2VjcmV0",
            blob_account_url=None,
            queue=None,
            container=None,
            settings={},
        )

    assert "c2VjcmV0" not in str(raised.value)


def test_local_settings_read(tmp_path: Path) -> None:
    document = {"Values": {"AzureWebJobsStorage": "from-file", "ONFLEET_EVENTS_QUEUE": "q-file"}}
    (tmp_path / "local.settings.json").write_text(json.dumps(document), encoding="utf-8")

    settings = read_app_settings({"ONFLEET_EVENTS_QUEUE": "q-env"}, tmp_path)

    assert settings["AzureWebJobsStorage"] == "from-file"
    assert settings["ONFLEET_EVENTS_QUEUE"] == "q-env"


def test_local_settings_invalid(tmp_path: Path) -> None:
    (tmp_path / "local.settings.json").write_text("{", encoding="utf-8")

    with pytest.raises(CliError, match=r"local\.settings\.json is not readable JSON"):
        read_app_settings({}, tmp_path)


def test_rate_limiter_spaces_calls() -> None:
    limiter = RateLimiter(20)

    started = time.monotonic()
    for _ in range(5):
        limiter.wait()
    elapsed = time.monotonic() - started

    assert elapsed >= 0.19


def test_progress_silent_off_terminal() -> None:
    stream = io.StringIO()
    progress = Progress("replay", 3, stream)

    progress.advance()
    progress.finish()

    assert stream.getvalue() == ""


def test_unknown_reason_rejected() -> None:
    with pytest.raises(FilterError, match="retries-exausted"):
        build_selection(reasons=["retries-exausted"])
    assert build_selection(reasons=["retries-exhausted", "host-moved"]).reasons
