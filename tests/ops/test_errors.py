"""Errors end the CLI with exit code 2 and one line on stderr, never a traceback or a secret."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from devhost.azurite import ACCOUNT_KEY, free_port
from ops.poison import main
from tests.ops.support import Cli, Result, parked_text

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run_main(*arguments: str) -> Result:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = main(list(arguments), stdout=stdout, stderr=stderr)
    return Result(code, stdout.getvalue(), stderr.getvalue())


def assert_one_line_error(result: Result) -> None:
    assert result.code == 2
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_missing_poison_queue(cli: Cli) -> None:
    result = cli("list")

    assert_one_line_error(result)
    assert f"Queue '{cli.queue_name}-poison' was not found" in result.stderr


def test_wrong_account_key_rejected(
    storage_connection_string: str, queue_name: str, poison_queue: QueueClient
) -> None:
    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    connection_string = storage_connection_string.replace(ACCOUNT_KEY, wrong_key)
    assert connection_string != storage_connection_string

    result = run_main("list", "--connection-string", connection_string, "--queue", queue_name)

    assert_one_line_error(result)
    assert "rejected the request (HTTP 403, AuthenticationFailed)" in result.stderr
    assert wrong_key not in result.stderr
    assert "AccountKey=" not in result.stderr


def test_malformed_connection_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    result = run_main("status", "--connection-string", "AccountKey=c2VjcmV0;garbage")

    assert_one_line_error(result)
    assert "connection string is malformed" in result.stderr
    assert "c2VjcmV0" not in result.stderr


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--since", "yesterday"], "Invalid --since value 'yesterday'"),
        (["--until", "5 days"], "Invalid --until value '5 days'"),
        (["--since", "1h", "--until", "2h"], "is later than --until"),
        (["--customer", "acme foodbank"], "Invalid --customer value 'acme foodbank'"),
        (["--limit", "0"], "Invalid --limit value 0"),
        (["--limit", "many"], "argument --limit: invalid int value: 'many'"),
        (["--visibility-timeout", "0"], "argument --visibility-timeout: invalid value '0'"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_bad_filter_values(
    cli: Cli, poison_queue: QueueClient, arguments: list[str], expected: str
) -> None:
    result = cli("list", *arguments)

    assert_one_line_error(result)
    assert expected in result.stderr


def test_bad_rate(cli: Cli) -> None:
    result = cli("replay", "--rate", "0")

    assert_one_line_error(result)
    assert "argument --rate: invalid value '0'" in result.stderr


def test_bad_queue_name(cli: Cli) -> None:
    result = run_main("list", "--connection-string", cli.connection_string, "--queue", "Bad_Q")

    assert_one_line_error(result)
    assert "Invalid --queue value 'Bad_Q'" in result.stderr


def test_both_connection_options(cli: Cli) -> None:
    result = run_main(
        "list",
        "--connection-string",
        cli.connection_string,
        "--account-url",
        "https://example.queue.core.windows.net",
    )

    assert_one_line_error(result)
    assert "either --connection-string or --account-url" in result.stderr


def test_no_connection_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("AzureWebJobsStorage"):
            monkeypatch.delenv(name)

    result = run_main("status")

    assert_one_line_error(result)
    assert "No storage account given" in result.stderr


def test_unreachable_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    connection_string = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
        f"QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )

    result = run_main("status", "--connection-string", connection_string)

    assert_one_line_error(result)
    assert "Could not connect to storage account devstoreaccount1" in result.stderr
    assert ACCOUNT_KEY not in result.stderr


def test_connection_from_local_settings(
    cli: Cli, poison_queue: QueueClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    monkeypatch.delenv("ONFLEET_EVENTS_QUEUE", raising=False)
    settings = {
        "Values": {
            "AzureWebJobsStorage": cli.connection_string,
            "ONFLEET_EVENTS_QUEUE": cli.queue_name,
        }
    }
    (tmp_path / "local.settings.json").write_text(json.dumps(settings), encoding="utf-8")
    poison_queue.send_message(parked_text("acme-foodbank"))

    result = run_main("list", "--json")

    assert result.code == 0, result.stderr
    assert len(json.loads(result.stdout)) == 1


def test_environment_beats_local_settings(
    cli: Cli, poison_queue: QueueClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"Values": {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}}
    (tmp_path / "local.settings.json").write_text(json.dumps(settings), encoding="utf-8")
    monkeypatch.setenv("AzureWebJobsStorage", cli.connection_string)
    monkeypatch.setenv("ONFLEET_EVENTS_QUEUE", cli.queue_name)
    poison_queue.send_message(parked_text("acme-foodbank"))

    result = run_main("list", "--json")

    assert result.code == 0, result.stderr
    assert len(json.loads(result.stdout)) == 1


def test_subprocess_error_has_no_traceback(cli: Cli, tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.poison",
            "list",
            "--connection-string",
            cli.connection_string,
            "--queue",
            cli.queue_name,
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.count("\n") == 1
    assert completed.stderr.startswith(
        f"error: Queue '{cli.queue_name}-poison' was not found in storage account "
        "devstoreaccount1 (127.0.0.1:"
    )
    assert completed.stderr.endswith(
        "; check --queue (or ONFLEET_EVENTS_QUEUE) and the connection settings.\n"
    )


def test_subprocess_list_and_status(
    cli: Cli, main_queue: QueueClient, poison_queue: QueueClient, tmp_path: Path
) -> None:
    poison_queue.send_message(parked_text("acme-foodbank", task="t-sub"))
    common = ["--connection-string", cli.connection_string, "--queue", cli.queue_name]

    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.poison", *arguments],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    listed = run("list", *common)
    status = run("status", *common)

    assert listed.returncode == 0
    assert "t-sub" in listed.stdout
    assert status.returncode == 1
    assert "about 1 message," in status.stdout
