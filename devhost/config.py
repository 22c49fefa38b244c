"""Read a v1-model function app: host.json, local.settings.json and each function.json.

Everything here runs before the first function is imported. A mistake in the app's
configuration therefore stops `python -m devhost` at start-up with `ConfigurationError`
(exit code 2) and a message naming the file, the function folder and the binding, instead
of failing later on the first request or message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST_JSON = "host.json"
FUNCTION_JSON = "function.json"
LOCAL_SETTINGS = "local.settings.json"
LOCAL_SETTINGS_EXAMPLE = "local.settings.json.example"
DEFAULT_SCRIPT_FILE = "__init__.py"
DEFAULT_ENTRY_POINT = "main"
DEFAULT_CONNECTION = "AzureWebJobsStorage"
DEFAULT_ROUTE_PREFIX = "api"
DEFAULT_HTTP_PORT = 7071

# Defaults of the Functions host (v4) and of its Storage queues extension (v5), used when
# host.json leaves a value out.
DEFAULT_FUNCTION_TIMEOUT_SECONDS = 300.0
DEFAULT_BATCH_SIZE = 16
MAX_BATCH_SIZE = 32
DEFAULT_MAX_POLLING_INTERVAL_SECONDS = 60.0
MIN_POLLING_INTERVAL_SECONDS = 0.1
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 0.0
DEFAULT_MAX_DEQUEUE_COUNT = 5
MESSAGE_ENCODINGS = ("base64", "none")

HTTP_TRIGGER = "httptrigger"
HTTP_OUTPUT = "http"
QUEUE_TRIGGER = "queuetrigger"
TRIGGER_TYPES = (HTTP_TRIGGER, QUEUE_TRIGGER)

# .NET TimeSpan text as host.json uses it: "[-][d.]hh:mm[:ss[.fffffff]]", or a whole
# number of days.
_TIMESPAN = re.compile(
    r"^(?P<sign>-)?(?:(?P<days>\d+)\.)?(?P<hours>\d+):(?P<minutes>\d+)"
    r"(?::(?P<seconds>\d+)(?:\.(?P<fraction>\d{1,7}))?)?$"
)
_SETTING_REFERENCE = re.compile(r"%([^%]+)%")
# Storage queue names: 3 to 63 lowercase letters, digits and single hyphens, starting and
# ending with a letter or digit.
_QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
MAX_QUEUE_NAME_LENGTH = 63


class ConfigurationError(Exception):
    """The function app's configuration is invalid, so devhost cannot start it."""


@dataclass(frozen=True)
class QueueOptions:
    """The `extensions.queues` section of host.json, with the extension's defaults."""

    batch_size: int = DEFAULT_BATCH_SIZE
    new_batch_threshold: int = DEFAULT_BATCH_SIZE // 2
    max_polling_interval_seconds: float = DEFAULT_MAX_POLLING_INTERVAL_SECONDS
    visibility_timeout_seconds: float = DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT
    message_encoding: str = "base64"


@dataclass(frozen=True)
class HostConfig:
    """The parts of host.json that devhost honours."""

    function_timeout_seconds: float | None
    route_prefix: str
    queues: QueueOptions
    function_names: tuple[str, ...] | None


@dataclass(frozen=True)
class Binding:
    """One entry of a function.json `bindings` list, with `%NAME%` references resolved."""

    type: str
    direction: str
    name: str
    settings: Mapping[str, Any]

    @property
    def normalized_type(self) -> str:
        """The binding type in lowercase, because the host compares types case-insensitively."""
        return self.type.lower()


@dataclass(frozen=True)
class FunctionConfig:
    """One function folder: its function.json, resolved against the app root."""

    name: str
    directory: Path
    script_file: Path
    entry_point: str
    bindings: tuple[Binding, ...]

    @property
    def trigger(self) -> Binding:
        for binding in self.bindings:
            if binding.normalized_type in TRIGGER_TYPES:
                return binding
        raise AssertionError(f"function {self.name!r} was validated without a trigger")

    @property
    def return_binding(self) -> Binding | None:
        for binding in self.bindings:
            if binding.name == "$return":
                return binding
        return None


def parse_timespan(value: object, *, setting: str) -> float:
    """Parse a .NET TimeSpan string ("00:05:00", "1.02:00:00", "2") into seconds."""
    if not isinstance(value, str):
        raise ConfigurationError(
            f'{setting} must be a TimeSpan string such as "00:05:00", not {value!r}.'
        )

    text = value.strip()
    if text.isdigit():
        return int(text) * 86400.0

    match = _TIMESPAN.match(text)
    if match is None:
        raise ConfigurationError(
            f'{setting} must be a TimeSpan string such as "00:05:00", not {value!r}.'
        )
    hours = int(match["hours"])
    minutes = int(match["minutes"])
    seconds = int(match["seconds"] or 0)
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ConfigurationError(
            f"{setting} {value!r} is out of range: hours must be 0-23 and minutes and seconds "
            '0-59 (write days as "d.hh:mm:ss").'
        )

    fraction = float(f"0.{match['fraction']}") if match["fraction"] else 0.0
    total = int(match["days"] or 0) * 86400 + hours * 3600 + minutes * 60 + seconds + fraction
    return -total if match["sign"] else total


def load_host_config(app_root: Path) -> HostConfig:
    """Read host.json from the app root and apply the host's defaults."""
    path = app_root / HOST_JSON
    document = _read_json_object(path, missing=f"{path} not found; every function app needs one.")
    version = document.get("version")
    if version != "2.0":
        raise ConfigurationError(
            f'{path}: "version" must be "2.0" (Functions runtime 2.x and later), not {version!r}.'
        )

    extensions = _object_member(document, "extensions", path)
    http = _object_member(extensions, "http", path)
    route_prefix = http.get("routePrefix", DEFAULT_ROUTE_PREFIX)
    if not isinstance(route_prefix, str):
        raise ConfigurationError(
            f"{path}: extensions.http.routePrefix must be a string, not {route_prefix!r}."
        )

    names = document.get("functions")
    if names is not None and not (
        isinstance(names, list) and all(isinstance(name, str) for name in names)
    ):
        raise ConfigurationError(f'{path}: "functions" must be a list of function names.')

    return HostConfig(
        function_timeout_seconds=_function_timeout(document.get("functionTimeout"), path),
        route_prefix=route_prefix.strip("/"),
        queues=_queue_options(_object_member(extensions, "queues", path), path),
        function_names=tuple(names) if names is not None else None,
    )


def _function_timeout(value: object, path: Path) -> float | None:
    if value is None:
        return DEFAULT_FUNCTION_TIMEOUT_SECONDS
    # "-1" means unbounded, which the host allows on Premium and Dedicated plans.
    if value in ("-1", -1):
        return None
    seconds = parse_timespan(value, setting=f"{path}: functionTimeout")
    if seconds <= 0:
        raise ConfigurationError(f"{path}: functionTimeout must be positive, not {value!r}.")
    return seconds


def _queue_options(section: Mapping[str, Any], path: Path) -> QueueOptions:
    prefix = f"{path}: extensions.queues"
    batch_size = _int_setting(section, "batchSize", DEFAULT_BATCH_SIZE, prefix)
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ConfigurationError(
            f"{prefix}.batchSize must be between 1 and {MAX_BATCH_SIZE}, not {batch_size}."
        )
    new_batch_threshold = _int_setting(section, "newBatchThreshold", batch_size // 2, prefix)
    if new_batch_threshold < 0:
        raise ConfigurationError(
            f"{prefix}.newBatchThreshold must not be negative, not {new_batch_threshold}."
        )
    max_dequeue_count = _int_setting(section, "maxDequeueCount", DEFAULT_MAX_DEQUEUE_COUNT, prefix)
    if max_dequeue_count < 1:
        raise ConfigurationError(
            f"{prefix}.maxDequeueCount must be at least 1, not {max_dequeue_count}."
        )

    max_polling_interval = DEFAULT_MAX_POLLING_INTERVAL_SECONDS
    if "maxPollingInterval" in section:
        max_polling_interval = _interval_setting(section["maxPollingInterval"], prefix)
        if max_polling_interval < MIN_POLLING_INTERVAL_SECONDS:
            raise ConfigurationError(
                f"{prefix}.maxPollingInterval must be at least 00:00:00.1, not "
                f"{section['maxPollingInterval']!r}."
            )
    visibility_timeout = DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    if "visibilityTimeout" in section:
        visibility_timeout = parse_timespan(
            section["visibilityTimeout"], setting=f"{prefix}.visibilityTimeout"
        )
        if visibility_timeout < 0:
            raise ConfigurationError(f"{prefix}.visibilityTimeout must not be negative.")

    encoding = section.get("messageEncoding", "base64")
    if not isinstance(encoding, str) or encoding.lower() not in MESSAGE_ENCODINGS:
        raise ConfigurationError(
            f'{prefix}.messageEncoding must be "base64" or "none", not {encoding!r}.'
        )

    return QueueOptions(
        batch_size=batch_size,
        new_batch_threshold=new_batch_threshold,
        max_polling_interval_seconds=max_polling_interval,
        visibility_timeout_seconds=visibility_timeout,
        max_dequeue_count=max_dequeue_count,
        message_encoding=encoding.lower(),
    )


def _interval_setting(value: object, prefix: str) -> float:
    # The extension also accepts maxPollingInterval as a number of milliseconds.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1000
    return parse_timespan(value, setting=f"{prefix}.maxPollingInterval")


def _int_setting(section: Mapping[str, Any], key: str, default: int, prefix: str) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{prefix}.{key} must be a whole number, not {value!r}.")
    return value


def find_settings_file(app_root: Path) -> Path | None:
    """Return local.settings.json, else local.settings.json.example, else None."""
    for name in (LOCAL_SETTINGS, LOCAL_SETTINGS_EXAMPLE):
        path = app_root / name
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class LocalSettings:
    """The `Values` and `Host` sections of a local.settings.json file."""

    path: Path
    values: Mapping[str, str]
    local_http_port: int | None


def load_local_settings(path: Path) -> LocalSettings:
    """Read a local.settings.json file, whose `Values` must all be strings."""
    document = _read_json_object(path, missing=f"Settings file {path} not found.")
    if document.get("IsEncrypted") is True:
        raise ConfigurationError(
            f"{path} is encrypted (IsEncrypted is true). Decrypt it with "
            "`func settings decrypt`, because devhost reads only plain-text settings."
        )

    raw_values = _object_member(document, "Values", path)
    values: dict[str, str] = {}
    for name, value in raw_values.items():
        if not isinstance(value, str):
            raise ConfigurationError(
                f"{path}: Values.{name} must be a string, not {value!r}. Quote the value."
            )
        values[name] = value

    port = _object_member(document, "Host", path).get("LocalHttpPort")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise ConfigurationError(f"{path}: Host.LocalHttpPort must be a number, not {port!r}.")
    return LocalSettings(path=path, values=values, local_http_port=port)


def apply_settings(values: Mapping[str, str], environ: MutableMapping[str, str]) -> list[str]:
    """Copy settings into the environment without replacing variables already set.

    Returns the names copied.

    Core Tools does the same, so a variable exported in the shell wins over the file.
    """
    applied = []
    for name, value in values.items():
        if name not in environ:
            environ[name] = value
            applied.append(name)
    return applied


def discover_functions(
    app_root: Path, host: HostConfig, environ: Mapping[str, str]
) -> list[FunctionConfig]:
    """Read every `*/function.json` under the app root and validate its bindings.

    Disabled functions (`"disabled": true`, or the app setting `AzureWebJobs.<name>.Disabled`
    set to true) and functions left out of host.json's `functions` list are skipped.
    """
    functions = []
    for path in sorted(app_root.glob(f"*/{FUNCTION_JSON}")):
        name = path.parent.name
        if host.function_names is not None and name not in host.function_names:
            continue
        config = _read_function(path, environ)
        if config is not None:
            functions.append(config)

    if host.function_names is not None:
        found = {function.name for function in functions}
        missing = [name for name in host.function_names if name not in found]
        if missing:
            raise ConfigurationError(
                f"host.json lists functions that have no {FUNCTION_JSON} or are disabled: "
                f"{', '.join(missing)}."
            )
    return functions


def _read_function(path: Path, environ: Mapping[str, str]) -> FunctionConfig | None:
    name = path.parent.name
    document = _read_json_object(path, missing=f"{path} not found.")
    if _is_disabled(document.get("disabled"), environ.get(f"AzureWebJobs.{name}.Disabled")):
        return None

    script_name = document.get("scriptFile") or DEFAULT_SCRIPT_FILE
    entry_point = document.get("entryPoint") or DEFAULT_ENTRY_POINT
    if not isinstance(script_name, str) or not isinstance(entry_point, str):
        raise ConfigurationError(f"{path}: scriptFile and entryPoint must be strings.")
    script_file = (path.parent / script_name).resolve()
    if not script_file.is_file():
        raise ConfigurationError(
            f"Function {name}: scriptFile {script_name!r} does not exist ({script_file})."
        )

    raw_bindings = document.get("bindings")
    if not isinstance(raw_bindings, list) or not raw_bindings:
        raise ConfigurationError(f'Function {name}: {path} has no "bindings" list.')
    bindings = tuple(_read_binding(name, item, environ) for item in raw_bindings)
    _check_bindings(name, bindings)

    return FunctionConfig(
        name=name,
        directory=path.parent.resolve(),
        script_file=script_file,
        entry_point=entry_point,
        bindings=bindings,
    )


def _is_disabled(flag: object, setting: str | None) -> bool:
    if flag is True or (isinstance(flag, str) and flag.lower() == "true"):
        return True
    return setting is not None and setting.strip().lower() in ("true", "1")


def _read_binding(function: str, item: object, environ: Mapping[str, str]) -> Binding:
    if not isinstance(item, dict):
        raise ConfigurationError(f"Function {function}: each binding must be a JSON object.")
    binding_type = item.get("type")
    direction = item.get("direction")
    name = item.get("name")
    if not (isinstance(binding_type, str) and isinstance(direction, str) and isinstance(name, str)):
        raise ConfigurationError(
            f'Function {function}: binding {item!r} needs string "type", "direction" and '
            '"name" fields.'
        )

    settings = {
        key: _resolve_references(value, function=function, binding=name, environ=environ)
        for key, value in item.items()
    }
    return Binding(type=binding_type, direction=direction.lower(), name=name, settings=settings)


def _resolve_references(
    value: object, *, function: str, binding: str, environ: Mapping[str, str]
) -> object:
    """Replace each `%NAME%` in a string setting with the app setting NAME."""
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        setting = match.group(1)
        if setting not in environ:
            raise ConfigurationError(
                f"Function {function}, binding {binding!r}: app setting {setting!r} referenced "
                f"as %{setting}% is not set; add it to local.settings.json Values or the "
                "environment."
            )
        return environ[setting]

    return _SETTING_REFERENCE.sub(substitute, value)


def _check_bindings(function: str, bindings: Sequence[Binding]) -> None:
    for binding in bindings:
        kind = binding.normalized_type
        supported = (kind in TRIGGER_TYPES and binding.direction == "in") or (
            kind == HTTP_OUTPUT and binding.direction == "out"
        )
        if not supported:
            raise ConfigurationError(
                f"Function {function}: binding {binding.name!r} of type {binding.type!r} "
                f"(direction {binding.direction!r}) is not supported by devhost, which runs "
                "httpTrigger, http output and queueTrigger bindings only."
            )

    triggers = [binding for binding in bindings if binding.normalized_type in TRIGGER_TYPES]
    if len(triggers) != 1:
        raise ConfigurationError(
            f"Function {function}: a function needs exactly one trigger binding, found "
            f"{len(triggers)}."
        )
    trigger = triggers[0]
    outputs = [binding for binding in bindings if binding.normalized_type == HTTP_OUTPUT]
    if outputs and trigger.normalized_type != HTTP_TRIGGER:
        raise ConfigurationError(
            f"Function {function}: http output binding {outputs[0].name!r} needs an httpTrigger."
        )
    if len(outputs) > 1:
        raise ConfigurationError(f"Function {function}: more than one http output binding.")

    if trigger.normalized_type == QUEUE_TRIGGER:
        _check_queue_name(function, trigger)
    else:
        _check_http_trigger(function, trigger)


def _check_queue_name(function: str, trigger: Binding) -> None:
    queue_name = trigger.settings.get("queueName")
    if not isinstance(queue_name, str) or not queue_name:
        raise ConfigurationError(
            f"Function {function}: queueTrigger binding {trigger.name!r} has no queueName."
        )
    if len(queue_name) > MAX_QUEUE_NAME_LENGTH or not _QUEUE_NAME.match(queue_name):
        raise ConfigurationError(
            f"Function {function}: queue name {queue_name!r} is invalid. Use 3 to 63 lowercase "
            "letters, digits and single hyphens, starting and ending with a letter or digit."
        )


def _check_http_trigger(function: str, trigger: Binding) -> None:
    methods = trigger.settings.get("methods")
    if methods is not None and not (
        isinstance(methods, list) and all(isinstance(method, str) for method in methods)
    ):
        raise ConfigurationError(
            f'Function {function}: httpTrigger "methods" must be a list of strings.'
        )
    route = trigger.settings.get("route")
    if route is not None and not isinstance(route, str):
        raise ConfigurationError(f'Function {function}: httpTrigger "route" must be a string.')


def connection_string(function: str, trigger: Binding, environ: Mapping[str, str]) -> str:
    """Look up the Storage connection string a queue trigger's `connection` setting names.

    The host tries `AzureWebJobs<name>` first and then `<name>`, so both spellings work.
    """
    name = trigger.settings.get("connection") or DEFAULT_CONNECTION
    if not isinstance(name, str):
        raise ConfigurationError(f'Function {function}: "connection" must be a setting name.')

    for candidate in (f"AzureWebJobs{name}", name):
        value = environ.get(candidate)
        if value:
            return value

    identity_keys = [key for key in environ if key.startswith(f"{name}__")]
    if identity_keys:
        raise ConfigurationError(
            f"Function {function}: connection {name!r} is identity-based ({identity_keys[0]}), "
            f"but devhost supports connection strings only. Set {name} to a connection string."
        )
    raise ConfigurationError(
        f"Function {function}: connection setting {name!r} is not set. Set it to a Storage "
        "connection string (UseDevelopmentStorage=true for Azurite on its default ports)."
    )


def _read_json_object(path: Path, *, missing: str) -> dict[str, Any]:
    try:
        # utf-8-sig also accepts a leading byte order mark, which some Windows editors write.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigurationError(missing) from None
    except OSError as error:
        raise ConfigurationError(f"Cannot read {path}: {error.strerror}.") from error

    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigurationError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}."
        ) from error
    if not isinstance(document, dict):
        raise ConfigurationError(f"{path} must contain a JSON object.")
    return document


def _object_member(document: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    value = document.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigurationError(f'{path}: "{key}" must be a JSON object.')
    return value
