"""The CLI's one error type, and the funnel that turns Azure SDK errors into it.

A `CliError` is printed as one line on stderr and ends the command with exit code 2. Messages
name the queue, account or option involved but never a connection string or account key,
because operators paste this output into tickets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)


class CliError(Exception):
    """A failure the CLI reports as one line on stderr with exit code 2."""


@contextmanager
def storage_errors(account: str) -> Iterator[None]:
    """Translate azure-core errors raised in the block into `CliError`s naming `account`."""
    try:
        yield
    except ClientAuthenticationError as error:
        if error.response is None:
            # Raised before any request left: a connection string's AccountKey that is not
            # base64, or no Azure AD credential available to DefaultAzureCredential.
            raise CliError(
                f"Could not authenticate to storage account {account}: check the AccountKey of "
                "the connection string, or sign in with `az login` (or a managed identity) "
                "when using --account-url."
            ) from None
        raise CliError(_rejected_message(account, error)) from None
    except ResourceNotFoundError as error:
        raise CliError(
            f"A queue, message or blob was not found in storage account {account} "
            f"({_code(error)}); check --queue and the connection settings."
        ) from None
    except HttpResponseError as error:
        if error.status_code in (401, 403):
            raise CliError(_rejected_message(account, error)) from None
        raise CliError(
            f"Storage request to account {account} failed with HTTP {error.status_code} "
            f"({_code(error)}); retry, or check the account in the Azure portal."
        ) from None
    except (ServiceRequestError, ServiceResponseError):
        raise CliError(
            f"Could not connect to storage account {account}: the connection failed or timed "
            "out. Check the endpoint and that the service (or Azurite) is running."
        ) from None


def _rejected_message(account: str, error: HttpResponseError) -> str:
    return (
        f"Storage account {account} rejected the request (HTTP {error.status_code}, "
        f"{_code(error)}): check the AccountKey or SAS of the connection string, or that the "
        "identity has the Storage Queue Data Contributor role."
    )


def _code(error: HttpResponseError) -> str:
    # azure-storage sets error_code on the errors it raises (a StorageErrorCode enum for known
    # codes, else a string); azure-core does not declare the attribute.
    code = getattr(error, "error_code", None)
    return str(getattr(code, "value", code) or "no error code")
