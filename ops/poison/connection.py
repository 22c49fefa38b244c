"""Find the storage account, queue and claim-check container, and build the Azure clients.

The account comes from the first of these that is set:

1. `--connection-string`;
2. `--account-url`, authenticated with `DefaultAzureCredential`;
3. the app setting `AzureWebJobsStorage` (a connection string);
4. `AzureWebJobsStorage__queueServiceUri` or `AzureWebJobsStorage__accountName`, for a
   managed identity.

App settings are read from the environment, then from `Values` in a
local.settings.json in the current directory. Queue clients get no message encode or decode
policy, because the CLI reads and writes the base64 text itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from ops.poison.errors import CliError, storage_errors

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient, QueueProperties

DEFAULT_QUEUE = "onfleet-events"
DEFAULT_CONTAINER = "onfleet-payloads"
POISON_SUFFIX = "-poison"
LOCAL_SETTINGS_FILE = "local.settings.json"
MAX_QUEUE_NAME_LENGTH = 63
# A CLI call can wait longer than the ingest path, but azure-storage's default of a 15 s
# first backoff makes an unreachable endpoint look like a hang.
STORAGE_RETRY_TOTAL = 3
STORAGE_INITIAL_BACKOFF_SECONDS = 1
STORAGE_BACKOFF_BASE = 2
STORAGE_CONNECTION_TIMEOUT_SECONDS = 10
STORAGE_READ_TIMEOUT_SECONDS = 60

_QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")


@dataclass(frozen=True)
class ConnectionOptions:
    """The account, queue and container to use, from options and app settings combined."""

    connection_string: str | None
    account_url: str | None
    blob_account_url: str | None
    queue: str
    container: str

    @property
    def poison_queue(self) -> str:
        return self.queue + POISON_SUFFIX


def read_app_settings(
    environ: Mapping[str, str] | None = None, directory: Path | None = None
) -> dict[str, str]:
    """Merge `Values` of ./local.settings.json with the environment, the environment winning."""
    settings: dict[str, str] = {}
    path = (directory or Path.cwd()) / LOCAL_SETTINGS_FILE
    if path.is_file():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            raise CliError(
                f"{path} is not readable JSON; fix it or pass --connection-string."
            ) from None
        values = document.get("Values") if isinstance(document, dict) else None
        if isinstance(values, dict):
            settings.update({key: value for key, value in values.items() if isinstance(value, str)})
    environment = os.environ if environ is None else environ
    settings.update({key: value for key, value in environment.items() if value.strip()})
    return settings


def resolve_connection(
    *,
    connection_string: str | None,
    account_url: str | None,
    blob_account_url: str | None,
    queue: str | None,
    container: str | None,
    settings: Mapping[str, str],
) -> ConnectionOptions:
    """Combine command-line options with app settings; raise `CliError` if none names an account."""
    if connection_string and account_url:
        raise CliError("Pass either --connection-string or --account-url, not both.")

    if not connection_string and not account_url:
        connection_string = _setting(settings, "AzureWebJobsStorage")
        if connection_string is None:
            account_url = _setting(settings, "AzureWebJobsStorage__queueServiceUri")
            account_name = _setting(settings, "AzureWebJobsStorage__accountName")
            if account_url is None and account_name is not None:
                account_url = f"https://{account_name}.queue.core.windows.net"
            blob_account_url = blob_account_url or _setting(
                settings, "AzureWebJobsStorage__blobServiceUri"
            )
        if connection_string is None and account_url is None:
            raise CliError(
                "No storage account given: pass --connection-string or --account-url, set "
                "AzureWebJobsStorage, or run from the folder that contains local.settings.json."
            )

    if account_url is not None:
        _check_url(account_url, "--account-url")
    if blob_account_url is not None:
        _check_url(blob_account_url, "--blob-account-url")

    queue_name = queue or _setting(settings, "ONFLEET_EVENTS_QUEUE") or DEFAULT_QUEUE
    check_queue_name(queue_name, option="--queue")
    if len(queue_name + POISON_SUFFIX) > MAX_QUEUE_NAME_LENGTH:
        raise CliError(
            f"Invalid --queue value {queue_name!r}: its poison queue name would exceed "
            f"{MAX_QUEUE_NAME_LENGTH} characters."
        )
    return ConnectionOptions(
        connection_string=connection_string,
        account_url=account_url,
        blob_account_url=blob_account_url,
        queue=queue_name,
        container=container or _setting(settings, "CLAIM_CHECK_CONTAINER") or DEFAULT_CONTAINER,
    )


def check_queue_name(name: str, *, option: str) -> None:
    """Raise `CliError` unless `name` is a valid Storage queue name."""
    if not (3 <= len(name) <= MAX_QUEUE_NAME_LENGTH and _QUEUE_NAME.match(name)):
        raise CliError(
            f"Invalid {option} value {name!r}: a queue name is 3 to 63 lowercase letters, digits "
            "and single hyphens, starting and ending with a letter or digit."
        )


class Storage:
    """Queue and blob clients for one storage account, sharing one credential."""

    def __init__(self, options: ConnectionOptions) -> None:
        self.options = options
        self._credential: TokenCredential | None = None
        # Building a client parses the connection string, so a malformed one fails here.
        probe = self.queue(options.queue)
        self.account = f"{probe.account_name} ({probe.primary_hostname})"

    def queue(self, name: str) -> QueueClient:
        from azure.storage.queue import QueueClient

        if self.options.connection_string is not None:
            try:
                return QueueClient.from_connection_string(
                    self.options.connection_string, name, **_client_options()
                )
            except ValueError:
                # The SDK's message can quote parts of the string, which may hold the key.
                raise CliError(
                    "The storage connection string is malformed: expected "
                    "AccountName=...;AccountKey=...;QueueEndpoint=... pairs, or "
                    "UseDevelopmentStorage=true for Azurite."
                ) from None
        assert self.options.account_url is not None
        return QueueClient(
            self.options.account_url, name, credential=self._token_credential(), **_client_options()
        )

    def container(self) -> ContainerClient:
        from azure.storage.blob import ContainerClient

        name = self.options.container
        if self.options.connection_string is not None:
            try:
                return ContainerClient.from_connection_string(
                    self.options.connection_string, name, **_client_options()
                )
            except ValueError:
                raise CliError(
                    "The storage connection string has no usable Blob endpoint, so the "
                    "claim-checked body cannot be read; add BlobEndpoint=... to it."
                ) from None
        blob_url = self.options.blob_account_url or _blob_url_for(self.options.account_url)
        if blob_url is None:
            raise CliError(
                "Cannot derive the Blob endpoint from --account-url "
                f"{_without_query(self.options.account_url or '')}; pass --blob-account-url."
            )
        return ContainerClient(
            blob_url, name, credential=self._token_credential(), **_client_options()
        )

    def ensure_queue(self, client: QueueClient, *, create: bool = False) -> QueueProperties:
        """Return the queue's properties, creating the queue first if it is missing and `create`.

        Raise `CliError` naming the queue if it is missing and `create` is off.
        """
        with storage_errors(self.account):
            try:
                return client.get_queue_properties()
            except ResourceNotFoundError:
                if not create:
                    raise CliError(
                        f"Queue {client.queue_name!r} was not found in storage account "
                        f"{self.account}; check --queue (or ONFLEET_EVENTS_QUEUE) and the "
                        "connection settings."
                    ) from None
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            return client.get_queue_properties()

    def _token_credential(self) -> TokenCredential:
        if self._credential is None:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential


def _client_options() -> dict[str, Any]:
    return {
        "retry_total": STORAGE_RETRY_TOTAL,
        "initial_backoff": STORAGE_INITIAL_BACKOFF_SECONDS,
        "increment_base": STORAGE_BACKOFF_BASE,
        "connection_timeout": STORAGE_CONNECTION_TIMEOUT_SECONDS,
        "read_timeout": STORAGE_READ_TIMEOUT_SECONDS,
    }


def _setting(settings: Mapping[str, str], name: str) -> str | None:
    value = settings.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _check_url(url: str, option: str) -> None:
    parts = urlsplit(url)
    # Account URLs are used with DefaultAzureCredential, and Azure SDK clients send a token
    # only over HTTPS.
    if parts.scheme != "https" or not parts.hostname:
        raise CliError(
            f"Invalid {option} value {_without_query(url)!r}: expected an https URL such as "
            "https://myaccount.queue.core.windows.net."
        )


def _blob_url_for(queue_url: str | None) -> str | None:
    """Turn https://account.queue.core.windows.net into https://account.blob.core.windows.net."""
    if queue_url is None:
        return None
    parts = urlsplit(queue_url)
    labels = (parts.hostname or "").split(".")
    if len(labels) < 3 or labels[1] != "queue":
        return None
    labels[1] = "blob"
    netloc = ".".join(labels) + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _without_query(url: str) -> str:
    # The query of an account URL may be a SAS token, which is a secret.
    return url.split("?", 1)[0]
