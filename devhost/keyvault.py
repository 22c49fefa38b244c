"""A local stand-in for Azure Key Vault's secrets REST API, served over HTTPS.

It serves `GET /secrets/{name}`, `GET /secrets/{name}/{version}` and `PUT /secrets/{name}`
with `?api-version=...`, so the real `azure.keyvault.secrets.aio.SecretClient` runs unchanged
against it, challenge flow included:

- A request without `Authorization: Bearer <token>` gets 401 with the challenge
  `WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="https://vault.azure.net"` and Key Vault's `AKV10000` error body. The client then
  asks its credential for a token and sends the request again.
- A bearer token other than the stand-in's `token` also gets 401 with the challenge, which
  the client raises as `ClientAuthenticationError`.
- A found secret returns 200 with Key Vault's secret bundle; an unknown one returns 404 with
  code `SecretNotFound`, which the client raises as `ResourceNotFoundError`.

Entra ID cannot run here, so tests pass `StaticTokenCredential(vault.token)`.

Client settings that make the real aio client work with the stand-in (checked against
azure-core 1.41 and azure-keyvault-secrets 4.12, and exercised by tests/standins):

    SecretClient(
        vault_url=vault.url,
        credential=StaticTokenCredential(vault.token),
        connection_verify=str(vault.ca_path),
        verify_challenge_resource=False,
    )

- `connection_verify=<CA file path>` makes the client trust the stand-in's certificate. The
  client hands its keyword arguments to azure-core's `ConnectionConfiguration`, and the
  aiohttp transport (`AioHttpTransport._build_ssl_config`) turns a path into
  `ssl.create_default_context(cafile=path)` for every request. `True`, the default, uses the
  system's CAs, so the connection fails with `ServiceRequestError`. The same keyword is also
  accepted per call, such as `get_secret(name, connection_verify=...)`.
- `verify_challenge_resource=False` turns off the check that the challenge's resource
  (`vault.azure.net`) is a parent domain of the vault's host. Without it the client raises
  `ValueError` ("does not match the requested domain"), because the stand-in's host is
  127.0.0.1.
- Retries come from azure-core's `AsyncRetryPolicy`: `retry_total=0` turns them off, so an
  injected 429 or 503 surfaces at once as `HttpResponseError`. With retries on, the policy
  retries 429 and 503, waiting for the `Retry-After` the stand-in sends.

`python -m devhost.keyvault` serves the per-customer secrets of a local settings file on
https://127.0.0.1:7073 and prints the vault URL and the CA file to trust.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import re
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from secrets import token_urlsafe
from types import TracebackType
from typing import Any

import trustme
from aiohttp import web
from azure.core.credentials import AccessToken

from devhost.clienttrack import (
    PROJECT_ROOT,
    LocalServer,
    drop_connection,
    local_secrets,
    local_settings_path,
)
from shared.errors import ConfigurationError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 7073
DEFAULT_CA_PATH = PROJECT_ROOT / ".run" / "keyvault-ca.pem"
# The client passes the challenge's tenant to its credential only, so it is never contacted.
CHALLENGE_TENANT_ID = "00000000-0000-0000-0000-000000000000"
CHALLENGE_HEADER = (
    f'Bearer authorization="https://login.microsoftonline.com/{CHALLENGE_TENANT_ID}", '
    'resource="https://vault.azure.net"'
)
# Key Vault's own scope, which the client requests from its credential after the challenge.
VAULT_SCOPE = "https://vault.azure.net/.default"
DEFAULT_RETRY_AFTER_SECONDS = 1.0
TOKEN_LIFETIME_SECONDS = 3600
# Prefixes of the secret names the bridge reads. The CLI loads only these from a settings file.
SECRET_NAME_PREFIXES = (
    "onfleet-webhook-secret-",
    "clienttrack-subscription-key-",
    "clienttrack-api-key-",
)

_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_NOT_FOUND_TEMPLATE = (
    "A secret with (name/id) {} was not found in this key vault. If you recently deleted this "
    "secret you may be able to recover it using the correct recovery command. For help "
    "resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
)


class StaticTokenCredential:
    """An `AsyncTokenCredential` that returns one fixed bearer token, for tests.

    `requested_scopes` lists the scopes of every `get_token` call, so tests can check that the
    client asked for Key Vault's scope.
    """

    def __init__(self, token: str, *, lifetime_seconds: int = TOKEN_LIFETIME_SECONDS) -> None:
        self._token = token
        self._lifetime_seconds = lifetime_seconds
        self.requested_scopes: list[str] = []

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        self.requested_scopes.extend(scopes)
        return AccessToken(self._token, int(time.time()) + self._lifetime_seconds)

    async def close(self) -> None:
        """Do nothing, because the credential has no connections to close."""

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.close()


@dataclass(frozen=True)
class SecretVersion:
    """One stored version of a secret."""

    version: str
    value: str
    created: int
    updated: int
    content_type: str | None = None


@dataclass(frozen=True)
class _Fault:
    status: int | None
    retry_after_seconds: float | None


class KeyVaultStandIn(LocalServer):
    """Key Vault's secrets API on a local HTTPS port with a certificate made at start.

    `token` is the only bearer token accepted; a random one is made when it is None, unless
    `accept_any_token` is set. The CA certificate is written to `ca_path`, which defaults to a
    temporary file removed at stop. `reads` counts authenticated GETs per secret name,
    whatever the response, including injected faults.
    """

    scheme = "https"

    def __init__(
        self,
        secrets: Mapping[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        accept_any_token: bool = False,
        ca_path: Path | None = None,
    ) -> None:
        super().__init__(host=host, port=port)
        self.token = token if token is not None else token_urlsafe(32)
        self.accept_any_token = accept_any_token
        self.reads: Counter[str] = Counter()
        self.challenges = 0
        self.rejected_tokens = 0
        self._given_ca_path = ca_path
        self._ca_path: Path | None = None
        self._temporary_directory: Path | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._secrets: dict[str, list[SecretVersion]] = {}
        self._faults: deque[_Fault] = deque()
        for name, value in (secrets or {}).items():
            self.set_secret(name, value)

    @property
    def url(self) -> str:
        """The vault URL to give `SecretClient`."""
        return self.base_url

    @property
    def ca_path(self) -> Path:
        """PEM file of the CA that signed the server certificate, present while running."""
        if self._ca_path is None:
            raise RuntimeError("The Key Vault stand-in has no CA file until it is started.")
        return self._ca_path

    def credential(self) -> StaticTokenCredential:
        """Return a credential whose token this stand-in accepts."""
        return StaticTokenCredential(self.token)

    def set_secret(self, name: str, value: str, *, content_type: str | None = None) -> str:
        """Store `value` as a new version of `name`, as Key Vault does, and return the version."""
        return self._add_version(name, value, content_type).version

    def _add_version(self, name: str, value: str, content_type: str | None) -> SecretVersion:
        _check_name(name)
        now = int(time.time())
        version = SecretVersion(uuid.uuid4().hex, value, now, now, content_type)
        with self._lock:
            self._secrets.setdefault(name, []).append(version)
        return version

    def delete_secret(self, name: str) -> None:
        """Remove every version of `name`, so that reading it returns 404."""
        with self._lock:
            self._secrets.pop(name, None)

    def secret_names(self) -> list[str]:
        with self._lock:
            return sorted(self._secrets)

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 429,
        retry_after_seconds: float | None = DEFAULT_RETRY_AFTER_SECONDS,
    ) -> None:
        """Fail the next `count` authenticated reads with `status`.

        `Retry-After` is sent with 429 and 503 responses unless `retry_after_seconds` is None.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"Fault status {status!r} is not a 4xx or 5xx status.")
        retry_after = retry_after_seconds if status in (429, 503) else None
        with self._lock:
            self._faults.extend(_Fault(status, retry_after) for _ in range(count))

    def drop_next(self, count: int = 1) -> None:
        """Close the connection of the next `count` authenticated reads without a response.

        aiohttp's client (3.14) resends an idempotent request once after a dropped connection,
        so the default aio SecretClient fails only when two reads in a row are dropped.
        azure-core 1.41 then raises `ServiceRequestError` ("Server disconnected").
        """
        with self._lock:
            self._faults.extend(_Fault(None, None) for _ in range(count))

    def server_ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl_context

    async def on_start(self) -> None:
        authority = trustme.CA()
        names = dict.fromkeys((self.host, "127.0.0.1", "localhost"))
        certificate = authority.issue_cert(*names)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)

        if self._given_ca_path is not None:
            ca_path = self._given_ca_path
            ca_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._temporary_directory = Path(tempfile.mkdtemp(prefix="keyvault-standin-"))
            ca_path = self._temporary_directory / "ca.pem"
        authority.cert_pem.write_to_path(str(ca_path))
        self._ca_path = ca_path
        self._ssl_context = context

    async def on_stop(self) -> None:
        if self._temporary_directory is not None:
            shutil.rmtree(self._temporary_directory, ignore_errors=True)
            self._temporary_directory = None
            self._ca_path = None

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/secrets/{name}", self._handle_get)
        app.router.add_get("/secrets/{name}/", self._handle_get)
        app.router.add_get("/secrets/{name}/{version}", self._handle_get)
        app.router.add_put("/secrets/{name}", self._handle_put)
        return app

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        version = request.match_info.get("version", "")
        challenge = self._challenge_unauthenticated(request)
        if challenge is not None:
            return challenge
        self.reads[name] += 1

        invalid = _invalid_request(request, name)
        if invalid is not None:
            return invalid
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            logger.info("GET secret %s: injected %s", name, fault.status or "dropped connection")
            if fault.status is None:
                return drop_connection(request)
            return _fault_response(fault)

        with self._lock:
            versions = list(self._secrets.get(name, ()))
        found = _find_version(versions, version)
        if found is None:
            missing = f"{name}/{version}" if version else name
            logger.info("GET secret %s: 404", missing)
            return _error(404, "SecretNotFound", _NOT_FOUND_TEMPLATE.format(missing))
        logger.info("GET secret %s: 200", name)
        return _json(200, self._bundle(name, found))

    async def _handle_put(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        challenge = self._challenge_unauthenticated(request)
        if challenge is not None:
            return challenge
        invalid = _invalid_request(request, name)
        if invalid is not None:
            return invalid

        try:
            document = json.loads(await request.read())
        except ValueError:
            return _bad_request(request, "The request body is not valid JSON.")
        value = document.get("value") if isinstance(document, dict) else None
        if not isinstance(value, str):
            return _bad_request(request, "Property value is missing or not a string.")
        content_type = document.get("contentType")
        stored = self._add_version(
            name, value, content_type if isinstance(content_type, str) else None
        )
        logger.info("PUT secret %s: 200", name)
        return _json(200, self._bundle(name, stored))

    def _challenge_unauthenticated(self, request: web.Request) -> web.Response | None:
        """Return the 401 challenge for a request without an accepted bearer token."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self.challenges += 1
            logger.debug("%s %s: 401 challenge, no bearer token", request.method, request.path)
            return _challenge("AKV10000: Request is missing a Bearer or PoP token.")
        if not self.accept_any_token and not hmac.compare_digest(
            token.encode("utf-8"), self.token.encode("utf-8")
        ):
            self.rejected_tokens += 1
            logger.info("%s %s: 401, bearer token not accepted", request.method, request.path)
            return _challenge("The bearer token is not valid for this vault.")
        return None

    def _bundle(self, name: str, version: SecretVersion) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "value": version.value,
            "id": f"{self.base_url}/secrets/{name}/{version.version}",
            "attributes": {
                "enabled": True,
                "created": version.created,
                "updated": version.updated,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": {},
        }
        if version.content_type is not None:
            bundle["contentType"] = version.content_type
        return bundle


def _check_name(name: str) -> None:
    if not _SECRET_NAME.match(name):
        raise ValueError(
            f"Secret name {name!r} is invalid: Key Vault allows 1 to 127 letters, digits and "
            "hyphens."
        )


def _find_version(versions: list[SecretVersion], version: str) -> SecretVersion | None:
    if not versions:
        return None
    if not version:
        return versions[-1]
    return next((stored for stored in versions if stored.version == version), None)


def _invalid_request(request: web.Request, name: str) -> web.Response | None:
    if not request.query.get("api-version"):
        return _bad_request(
            request,
            "Query parameter api-version is missing. The Azure SDK sends it on every request.",
        )
    if not _SECRET_NAME.match(name):
        return _bad_request(
            request,
            f"Secret name {name!r} is invalid: expected 1 to 127 letters, digits and hyphens.",
        )
    return None


def _bad_request(request: web.Request, message: str) -> web.Response:
    logger.info("%s %s: 400, %s", request.method, request.path, message)
    return _error(400, "BadParameter", message)


def _challenge(message: str) -> web.Response:
    response = _error(401, "Unauthorized", message)
    response.headers["WWW-Authenticate"] = CHALLENGE_HEADER
    return response


def _fault_response(fault: _Fault) -> web.Response:
    status = fault.status or 500
    if status == 429:
        response = _error(
            429,
            "Throttled",
            "Request was not processed because too many requests were received.",
        )
    elif status == 503:
        response = _error(503, "ServiceUnavailable", "The service is temporarily unavailable.")
    else:
        response = _error(status, "InternalError", "The request failed (injected fault).")
    if fault.retry_after_seconds is not None:
        response.headers["Retry-After"] = f"{fault.retry_after_seconds:g}"
    return response


def _error(status: int, code: str, message: str) -> web.Response:
    return _json(status, {"error": {"code": code, "message": message}})


def _json(status: int, document: dict[str, Any]) -> web.Response:
    response = web.json_response(document, status=status)
    response.headers["x-ms-request-id"] = str(uuid.uuid4())
    return response


# --- command line ---------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost.keyvault",
        description="Serve the bridge's per-customer secrets through Key Vault's REST API "
        "over HTTPS on 127.0.0.1, with a certificate made at start.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--secrets-from",
        type=Path,
        help="local settings file whose onfleet-webhook-secret-*, clienttrack-subscription-key-* "
        "and clienttrack-api-key-* values are served (default: local.settings.json, else "
        "local.settings.json.example); environment variables of the same names take precedence",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=DEFAULT_CA_PATH,
        help="where to write the CA certificate clients must trust (default: .run/keyvault-ca.pem)",
    )
    parser.add_argument(
        "--token",
        help="the only bearer token to accept (default: accept any bearer token)",
    )
    return parser.parse_args(argv)


async def _serve(vault: KeyVaultStandIn, settings_path: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    await vault.start()
    names = vault.secret_names()
    print(f"Key Vault stand-in at {vault.url}", flush=True)
    print(f"CA certificate to trust: {vault.ca_path}", flush=True)
    print(f"{len(names)} secrets from {settings_path}: {', '.join(names) or '(none)'}", flush=True)
    try:
        await stop.wait()
    finally:
        await vault.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    settings_path = local_settings_path(args.secrets_from)
    try:
        values = local_secrets(settings_path)
        served = {
            name: value for name, value in values.items() if name.startswith(SECRET_NAME_PREFIXES)
        }
        vault = KeyVaultStandIn(
            served,
            host=args.host,
            port=args.port,
            token=args.token,
            accept_any_token=args.token is None,
            ca_path=args.ca_file,
        )
    except (ConfigurationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    try:
        asyncio.run(_serve(vault, settings_path))
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
