"""Start-up of `python -m devhost`: configuration errors, settings files, the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devhost.azurite import ACCOUNT_KEY, ACCOUNT_NAME, free_port
from tests.devhost.conftest import StartDevhost
from tests.devhost.toyapp import (
    devhost_env,
    http_function,
    queue_function,
    request,
    run_to_exit,
    write_app,
)

EXIT_START_FAILED = 1
EXIT_CONFIGURATION = 2

ENVIRONMENT_ECHO = """
    import json
    import os

    import azure.functions as func


    def main(req: func.HttpRequest) -> func.HttpResponse:
        names = req.params["names"].split(",")
        values = {name: os.environ.get(name) for name in names}
        return func.HttpResponse(json.dumps(values), mimetype="application/json")
"""

NOOP = """
    def main(req):
        return "ok"
"""

QUEUE_NOOP = """
    def main(msg):
        pass
"""


def write_settings(path: Path, values: dict[str, str]) -> None:
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}), encoding="utf-8")


def read_environment(port: int, *names: str) -> dict[str, Any]:
    response = request(port, "GET", f"/api/env?names={','.join(names)}")
    assert response.status == 200
    result: dict[str, Any] = response.json()
    return result


@pytest.mark.parametrize(
    ("binding", "label"),
    [
        (
            {"type": "blobTrigger", "direction": "in", "name": "blob", "path": "c/{name}"},
            "'blob' of type 'blobTrigger'",
        ),
        (
            {"type": "queue", "direction": "out", "name": "outbox", "queueName": "q"},
            "'outbox' of type 'queue'",
        ),
    ],
)
def test_unsupported_binding_exits_2(
    tmp_path: Path,
    storage_connection_string: str,
    output_dir: Path,
    binding: dict[str, str],
    label: str,
) -> None:
    function_json = http_function()
    if binding["direction"] == "in":
        function_json["bindings"] = [binding]
    else:
        function_json["bindings"].append(binding)
    app = write_app(tmp_path / "app", {"unsupported_fn": (function_json, NOOP)})

    result = run_to_exit(app, devhost_env(storage_connection_string, output_dir))

    assert result.returncode == EXIT_CONFIGURATION
    assert "unsupported_fn" in result.stderr
    assert label in result.stderr
    assert "devhost ready" not in result.stdout


def test_missing_script_file_exits_2(
    tmp_path: Path, storage_connection_string: str, output_dir: Path
) -> None:
    function_json = http_function()
    function_json["scriptFile"] = "handler.py"
    app = write_app(tmp_path / "app", {"scriptless": (function_json, NOOP)})

    result = run_to_exit(app, devhost_env(storage_connection_string, output_dir))

    assert result.returncode == EXIT_CONFIGURATION
    assert "scriptless" in result.stderr
    assert "handler.py" in result.stderr


def test_missing_setting_reference_exits_2(
    tmp_path: Path, storage_connection_string: str, output_dir: Path
) -> None:
    app = write_app(
        tmp_path / "app", {"consumer": (queue_function("%TOY_UNSET_QUEUE%"), QUEUE_NOOP)}
    )

    result = run_to_exit(app, devhost_env(storage_connection_string, output_dir))

    assert result.returncode == EXIT_CONFIGURATION
    assert "TOY_UNSET_QUEUE" in result.stderr
    assert "consumer" in result.stderr


def test_parameter_without_binding_exits_2(
    tmp_path: Path, storage_connection_string: str, output_dir: Path
) -> None:
    code = """
        def main(req, extra):
            return "ok"
    """
    app = write_app(tmp_path / "app", {"mismatch": (http_function(), code)})

    result = run_to_exit(app, devhost_env(storage_connection_string, output_dir))

    assert result.returncode == EXIT_CONFIGURATION
    assert "'extra'" in result.stderr


def test_import_error_exits_2(
    tmp_path: Path, storage_connection_string: str, output_dir: Path
) -> None:
    code = """
        import toy_module_that_does_not_exist


        def main(req):
            return "ok"
    """
    app = write_app(tmp_path / "app", {"broken": (http_function(), code)})

    result = run_to_exit(app, devhost_env(storage_connection_string, output_dir))

    assert result.returncode == EXIT_CONFIGURATION
    assert "toy_module_that_does_not_exist" in result.stderr
    assert str(Path("broken", "__init__.py")) in result.stderr


def test_missing_connection_setting_exits_2(
    tmp_path: Path, storage_connection_string: str, output_dir: Path
) -> None:
    function_json = queue_function("toy-queue")
    function_json["bindings"][0]["connection"] = "ToyStorage"
    app = write_app(tmp_path / "app", {"consumer": (function_json, QUEUE_NOOP)})

    result = run_to_exit(app, devhost_env(storage_connection_string, output_dir))

    assert result.returncode == EXIT_CONFIGURATION
    assert "'ToyStorage'" in result.stderr


def test_settings_do_not_override_environment(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"env": (http_function(), ENVIRONMENT_ECHO)})
    write_settings(
        app / "local.settings.json",
        {"TOY_GREETING": "from-settings", "TOY_ONLY_IN_SETTINGS": "settings-value"},
    )
    devhost = start_devhost(app, env={"TOY_GREETING": "from-environment"})

    values = read_environment(devhost.port, "TOY_GREETING", "TOY_ONLY_IN_SETTINGS")

    assert values["TOY_GREETING"] == "from-environment"
    assert values["TOY_ONLY_IN_SETTINGS"] == "settings-value"


def test_example_settings_fallback(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"env": (http_function(), ENVIRONMENT_ECHO)})
    write_settings(app / "local.settings.json.example", {"TOY_SOURCE": "example"})
    devhost = start_devhost(app)

    assert read_environment(devhost.port, "TOY_SOURCE") == {"TOY_SOURCE": "example"}


def test_settings_option_wins(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"env": (http_function(), ENVIRONMENT_ECHO)})
    write_settings(app / "local.settings.json", {"TOY_SOURCE": "local"})
    chosen = tmp_path / "chosen.json"
    write_settings(chosen, {"TOY_SOURCE": "chosen"})
    devhost = start_devhost(app, arguments=["--settings", str(chosen)])

    assert read_environment(devhost.port, "TOY_SOURCE") == {"TOY_SOURCE": "chosen"}


def test_missing_settings_option_file_exits_2(
    tmp_path: Path, storage_connection_string: str, output_dir: Path
) -> None:
    app = write_app(tmp_path / "app", {"env": (http_function(), ENVIRONMENT_ECHO)})
    missing = tmp_path / "absent.json"

    result = run_to_exit(
        app, devhost_env(storage_connection_string, output_dir), "--settings", str(missing)
    )

    assert result.returncode == EXIT_CONFIGURATION
    assert str(missing) in result.stderr


def test_disabled_function_not_served(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(
        tmp_path / "app",
        {"on": (http_function(), NOOP), "off": (http_function(), NOOP)},
    )
    write_settings(app / "local.settings.json", {"AzureWebJobs.off.Disabled": "true"})
    devhost = start_devhost(app)

    assert request(devhost.port, "GET", "/api/on").status == 200
    assert request(devhost.port, "GET", "/api/off").status == 404
    assert not any(line.startswith("off:") for line in devhost.stdout_lines)


def test_unreachable_storage_exits_1(
    tmp_path: Path, storage_connection_string: str, output_dir: Path
) -> None:
    # A port this test picked and left closed, so the connection is refused at once.
    closed_port = free_port()
    unreachable = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"QueueEndpoint=http://127.0.0.1:{closed_port}/{ACCOUNT_NAME};"
    )
    app = write_app(tmp_path / "app", {"consumer": (queue_function("toy-queue"), QUEUE_NOOP)})
    env = devhost_env(storage_connection_string, output_dir, AzureWebJobsStorage=unreachable)

    result = run_to_exit(app, env)

    assert result.returncode == EXIT_START_FAILED
    assert "cannot open queue 'toy-queue'" in result.stderr
    assert "devhost ready" not in result.stdout
