"""Serve HTTP-triggered functions on an aiohttp server, as the Functions host does.

Each request is matched against the functions' route templates, behind host.json's
`extensions.http.routePrefix`. It then becomes the `func.HttpRequest` the Python worker
builds, with raw body bytes, headers, query and route parameters. The function's
`func.HttpResponse` goes back with its status, headers and body unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
from aiohttp import web
from azure.functions.http import HttpRequest as WorkerHttpRequest
from multidict import CIMultiDict

from devhost.config import HTTP_OUTPUT, ConfigurationError
from devhost.invocation import InvocationResult, Invoker, LoadedFunction
from devhost.routes import (
    MethodNotAllowed,
    Route,
    Router,
    RouteTemplate,
    RouteTemplateError,
    split_path,
)

logger = logging.getLogger(__name__)

# The Functions host rejects request bodies above 100 MB (104857600 bytes) with 413. aiohttp's
# own default limit of 1 MiB would return 413 before the function could decide.
MAX_REQUEST_BODY_BYTES = 100 * 1024 * 1024
# aiohttp computes these from the body it sends, so a stale value from the function must
# not reach the client.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


@dataclass(frozen=True)
class HttpEndpoint:
    """An HTTP-triggered function with its full route and allowed methods."""

    function: LoadedFunction
    route: Route[LoadedFunction]

    @property
    def path(self) -> str:
        return "/" + self.route.template.text

    @property
    def methods_label(self) -> str:
        """Allowed methods as Core Tools prints them ("[GET,POST]"), or "" for any method."""
        methods = self.route.methods
        if methods is None:
            return ""
        return "[" + ",".join(sorted(methods)) + "]"


def build_endpoints(functions: Iterable[LoadedFunction], route_prefix: str) -> list[HttpEndpoint]:
    """Parse each HTTP function's route (default: its name) under the route prefix."""
    endpoints = []
    for function in functions:
        trigger = function.config.trigger
        route = trigger.settings.get("route") or function.name
        full = "/".join(part for part in (route_prefix.strip("/"), route.strip("/")) if part)
        try:
            template = RouteTemplate(full)
        except RouteTemplateError as error:
            raise ConfigurationError(
                f"Function {function.name}: route {route!r} is invalid: {error}"
            ) from None

        methods = trigger.settings.get("methods")
        allowed = frozenset(method.upper() for method in methods) if methods else None
        endpoints.append(HttpEndpoint(function, Route(template, allowed, function)))
    return endpoints


class HttpServer:
    """An aiohttp server that routes requests to HTTP-triggered functions."""

    def __init__(
        self,
        endpoints: Sequence[HttpEndpoint],
        invoker: Invoker,
        *,
        host: str,
        port: int,
        shutdown_timeout_seconds: float,
    ) -> None:
        self.endpoints = list(endpoints)
        self.host = host
        self._requested_port = port
        self._invoker = invoker
        self._router = Router(endpoint.route for endpoint in self.endpoints)
        app = web.Application(client_max_size=MAX_REQUEST_BODY_BYTES)
        app.router.add_route("*", "/{path:.*}", self._handle)
        # The per-invocation log line replaces aiohttp's access log. The Functions host
        # passes request bodies as sent, without undoing Content-Encoding, so devhost does
        # not decompress them either.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=shutdown_timeout_seconds,
            auto_decompress=False,
        )
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port the server listens on, known once `start` has returned."""
        if self._port is None:
            raise RuntimeError("HttpServer.port is known only after start().")
        return self._port

    def url(self, endpoint: HttpEndpoint) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{endpoint.path}"

    async def start(self) -> None:
        """Listen on the host and port; port 0 picks a free port."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop accepting connections, then wait for requests in progress up to the timeout."""
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = split_path(request.raw_path)
        resolved = self._router.resolve(request.method, path)
        if resolved is None:
            logger.info("No function matches %s %s; returned 404.", request.method, request.path)
            return web.Response(status=404)
        if isinstance(resolved, MethodNotAllowed):
            logger.info("%s is not allowed on %s; returned 405.", request.method, request.path)
            return web.Response(status=405, headers={"Allow": ", ".join(sorted(resolved.allowed))})

        body = await request.read()
        function = resolved.route.target
        function_request = to_function_request(request, body, resolved.values)
        result = await self._invoker.invoke(function, function_request)
        return to_web_response(function, result)


def to_function_request(
    request: web.Request, body: bytes, route_values: Mapping[str, str]
) -> func.HttpRequest:
    """Build the request object the Python worker passes to an HTTP function."""
    raw_query = request.raw_path.partition("?")[2]
    return WorkerHttpRequest(
        method=request.method,
        url=f"{request.scheme}://{request.host}{request.raw_path}",
        headers=_join_values(request.headers.items()),
        params=_join_values(parse_qsl(raw_query, keep_blank_values=True)),
        route_params=dict(route_values),
        body_type="bytes",
        body=body,
    )


def _join_values(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    # The host passes repeated headers and query keys to the worker as one value joined with
    # "," (ASP.NET Core's StringValues), keyed case-insensitively by the first spelling.
    joined: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for name, value in items:
        key = spelling.setdefault(name.lower(), name)
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined


def to_web_response(function: LoadedFunction, result: InvocationResult) -> web.Response:
    """Turn an invocation's HTTP output into the aiohttp response; failures become 500."""
    if not result.succeeded:
        return web.Response(status=500)

    value = _http_output(function, result)
    if value is None:
        # With no HTTP output the host returns 204 No Content (Functions 2.x and later).
        return web.Response(status=204)
    if isinstance(value, str):
        return web.Response(
            status=200,
            body=value.encode("utf-8"),
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
    if not isinstance(value, func.HttpResponse):
        logger.error(
            "Function '%s' (Id=%s) set its HTTP output to a %s; returned 500. Set an "
            "azure.functions.HttpResponse or a str.",
            function.name,
            result.invocation_id,
            type(value).__name__,
        )
        return web.Response(status=500)

    try:
        return _convert_response(value)
    except (TypeError, ValueError) as error:
        logger.error(
            "Function '%s' (Id=%s) returned an HttpResponse that cannot be sent: %s; returned 500.",
            function.name,
            result.invocation_id,
            error,
        )
        return web.Response(status=500)


def _http_output(function: LoadedFunction, result: InvocationResult) -> Any:
    return_binding = function.config.return_binding
    if return_binding is not None and return_binding.normalized_type == HTTP_OUTPUT:
        return result.return_value
    for binding in function.config.bindings:
        if binding.normalized_type == HTTP_OUTPUT and binding.name in result.outputs:
            return result.outputs[binding.name]
    return None


def _convert_response(response: func.HttpResponse) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in response.headers.items():
        if name.lower() not in _FRAMING_HEADERS:
            headers.add(name, value)

    # Same rule as the worker's HttpResponseConverter: mimetype and charset apply only when
    # the function set no Content-Type header, and charset only to text/* types.
    if "Content-Type" not in headers:
        mimetype = response.mimetype
        content_type = f"{mimetype}; charset={response.charset}"
        headers["Content-Type"] = content_type if mimetype.startswith("text/") else mimetype

    return web.Response(status=int(response.status_code), body=response.get_body(), headers=headers)
