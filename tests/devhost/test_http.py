"""HTTP triggers under `python -m devhost`: routing, request and response fidelity, errors."""

from __future__ import annotations

import hashlib
import http.client
import json
from pathlib import Path

from tests.devhost.conftest import StartDevhost
from tests.devhost.toyapp import http_function, request, write_app

ECHO = """
    import json

    import azure.functions as func


    async def main(req: func.HttpRequest) -> func.HttpResponse:
        report = {
            "method": req.method,
            "url": req.url,
            "route": dict(req.route_params),
            "params": dict(req.params),
            "headers": dict(req.headers),
            "bodyLength": len(req.get_body()),
        }
        return func.HttpResponse(json.dumps(report), mimetype="application/json")
"""

SYNC_ECHO = """
    import json
    import threading

    import azure.functions as func


    def main(req: func.HttpRequest) -> func.HttpResponse:
        report = {
            "route": dict(req.route_params),
            "thread": threading.current_thread().name,
        }
        return func.HttpResponse(json.dumps(report), mimetype="application/json")
"""


def test_route_parameter_reaches_function(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"echo": (http_function(route="items/{itemId}"), ECHO)})
    devhost = start_devhost(app)

    response = request(devhost.port, "GET", "/api/items/abc-1?x=1&x=2&empty=")

    assert response.status == 200
    report = response.json()
    assert report["route"] == {"itemId": "abc-1"}
    assert report["method"] == "GET"
    assert report["params"] == {"x": "1,2", "empty": ""}
    assert report["url"] == f"http://127.0.0.1:{devhost.port}/api/items/abc-1?x=1&x=2&empty="


def test_route_defaults_to_function_name(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"echo": (http_function(), ECHO)})
    devhost = start_devhost(app)

    assert request(devhost.port, "GET", "/api/echo").status == 200
    assert request(devhost.port, "GET", "/api/ECHO/").status == 200
    assert request(devhost.port, "GET", "/api/echo/more").status == 404


def test_route_prefix_empty(tmp_path: Path, start_devhost: StartDevhost) -> None:
    host = {"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}
    app = write_app(
        tmp_path / "app",
        {"hook": (http_function(route="onfleet/webhooks/{customerId}"), ECHO)},
        host=host,
    )
    devhost = start_devhost(app)

    response = request(devhost.port, "POST", "/onfleet/webhooks/demo-1", body=b"{}")
    assert response.status == 200
    assert response.json()["route"] == {"customerId": "demo-1"}
    assert request(devhost.port, "POST", "/api/onfleet/webhooks/demo-1").status == 404


def test_start_up_prints_urls(tmp_path: Path, start_devhost: StartDevhost) -> None:
    host = {"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}
    app = write_app(
        tmp_path / "app",
        {
            "hook": (http_function(route="onfleet/webhooks/{customerId}"), ECHO),
            "anything": (http_function(methods=None), ECHO),
        },
        host=host,
    )
    devhost = start_devhost(app)

    url = f"http://127.0.0.1:{devhost.port}"
    assert f"hook: [GET,POST] {url}/onfleet/webhooks/{{customerId}}" in devhost.stdout_lines
    assert f"anything: {url}/anything" in devhost.stdout_lines
    assert devhost.stdout_lines[-1] == "devhost ready"


def test_method_not_allowed_405(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"echo": (http_function(methods=["post"]), ECHO)})
    devhost = start_devhost(app)

    response = request(devhost.port, "GET", "/api/echo")

    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert request(devhost.port, "POST", "/api/echo", body=b"").status == 200


def test_unknown_path_404(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"echo": (http_function(), ECHO)})
    devhost = start_devhost(app)

    assert request(devhost.port, "GET", "/api/other").status == 404
    assert request(devhost.port, "GET", "/echo").status == 404


def test_raw_body_and_headers_reach_function(tmp_path: Path, start_devhost: StartDevhost) -> None:
    code = """
        import hashlib

        import azure.functions as func


        def main(req: func.HttpRequest) -> func.HttpResponse:
            body = req.get_body()
            headers = {
                "X-Body-Sha256": hashlib.sha256(body).hexdigest(),
                "X-Seen-Signature": req.headers.get("x-onfleet-signature", "missing"),
                "X-Seen-Content-Type": req.headers.get("Content-Type", "missing"),
            }
            return func.HttpResponse(body, headers=headers, mimetype="application/octet-stream")
    """
    app = write_app(tmp_path / "app", {"raw": (http_function(), code)})
    devhost = start_devhost(app)
    # Not valid UTF-8 and not JSON, with CR LF and NUL bytes: only a byte-exact path survives.
    body = bytes(range(256)) + b"\r\n\x00{not json"

    response = request(
        devhost.port,
        "POST",
        "/api/raw",
        body=body,
        headers={"X-Onfleet-Signature": "ab12", "Content-Type": "application/json"},
    )

    assert response.status == 200
    assert response.body == body
    assert response.headers["X-Body-Sha256"] == hashlib.sha256(body).hexdigest()
    assert response.headers["X-Seen-Signature"] == "ab12"
    assert response.headers["X-Seen-Content-Type"] == "application/json"


def test_repeated_headers_are_joined(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"echo": (http_function(), ECHO)})
    devhost = start_devhost(app)

    connection = http.client.HTTPConnection("127.0.0.1", devhost.port, timeout=30)
    connection.putrequest("GET", "/api/echo")
    connection.putheader("X-Multi", "a")
    connection.putheader("x-multi", "b")
    connection.endheaders()
    report = json.loads(connection.getresponse().read())
    connection.close()

    assert report["headers"]["x-multi"] == "a,b"


def test_large_body_reaches_function(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"echo": (http_function(), ECHO)})
    devhost = start_devhost(app)
    body = b"x" * (3 * 1024 * 1024)

    response = request(devhost.port, "POST", "/api/echo", body=body)

    assert response.status == 200
    assert response.json()["bodyLength"] == len(body)


def test_response_passes_unchanged(tmp_path: Path, start_devhost: StartDevhost) -> None:
    code = """
        import azure.functions as func


        def main(req: func.HttpRequest) -> func.HttpResponse:
            return func.HttpResponse(
                "h\\u00e9llo",
                status_code=418,
                headers={"X-One": "1", "Cache-Control": "no-store"},
                mimetype="text/html",
                charset="iso-8859-1",
            )
    """
    app = write_app(tmp_path / "app", {"teapot": (http_function(), code)})
    devhost = start_devhost(app)

    response = request(devhost.port, "GET", "/api/teapot")

    assert response.status == 418
    assert response.headers["X-One"] == "1"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"] == "text/html; charset=iso-8859-1"
    assert response.body == "h\u00e9llo".encode("iso-8859-1")


def test_response_content_type_rules(tmp_path: Path, start_devhost: StartDevhost) -> None:
    code = """
        import azure.functions as func


        def main(req: func.HttpRequest) -> func.HttpResponse:
            kind = req.params["kind"]
            if kind == "json":
                return func.HttpResponse(b"{}", mimetype="application/json")
            if kind == "header":
                headers = {"Content-Type": "application/problem+json"}
                return func.HttpResponse(b"{}", headers=headers, mimetype="text/plain")
            if kind == "str":
                return "plain"
            return func.HttpResponse(status_code=204)
    """
    app = write_app(tmp_path / "app", {"kinds": (http_function(), code)})
    devhost = start_devhost(app)

    json_response = request(devhost.port, "GET", "/api/kinds?kind=json")
    header_response = request(devhost.port, "GET", "/api/kinds?kind=header")
    str_response = request(devhost.port, "GET", "/api/kinds?kind=str")
    empty_response = request(devhost.port, "GET", "/api/kinds?kind=empty")

    assert json_response.headers["Content-Type"] == "application/json"
    assert header_response.headers["Content-Type"] == "application/problem+json"
    assert str_response.status == 200
    assert str_response.body == b"plain"
    assert str_response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert empty_response.status == 204
    assert empty_response.body == b""


def test_function_exception_gives_500(tmp_path: Path, start_devhost: StartDevhost) -> None:
    code = """
        import azure.functions as func


        def main(req: func.HttpRequest) -> func.HttpResponse:
            raise RuntimeError("toy failure 7f3a")
    """
    app = write_app(tmp_path / "app", {"boom": (http_function(), code)})
    devhost = start_devhost(app)

    response = request(devhost.port, "GET", "/api/boom")

    assert response.status == 500
    assert b"toy failure" not in response.body
    assert "Traceback (most recent call last)" in devhost.stderr
    assert "RuntimeError: toy failure 7f3a" in devhost.stderr
    assert [match["outcome"] for match in devhost.executed("boom")] == ["Failed"]


def test_none_return_gives_500(tmp_path: Path, start_devhost: StartDevhost) -> None:
    code = """
        def main(req):
            return None
    """
    app = write_app(tmp_path / "app", {"nothing": (http_function(), code)})
    devhost = start_devhost(app)

    assert request(devhost.port, "GET", "/api/nothing").status == 500


def test_invocation_log_line(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"echo": (http_function(), ECHO)})
    devhost = start_devhost(app)

    request(devhost.port, "GET", "/api/echo")
    request(devhost.port, "GET", "/api/echo")

    lines = devhost.executed("echo")
    assert [match["outcome"] for match in lines] == ["Succeeded", "Succeeded"]
    assert lines[0]["id"] != lines[1]["id"]


def test_route_values_are_percent_decoded(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"echo": (http_function(route="items/{itemId}"), ECHO)})
    devhost = start_devhost(app)

    spaced = request(devhost.port, "GET", "/api/items/a%20b%C3%A9")
    slashed = request(devhost.port, "GET", "/api/items/a%2Fb")

    assert spaced.json()["route"] == {"itemId": "a b\u00e9"}
    assert slashed.json()["route"] == {"itemId": "a%2Fb"}


def test_route_constraints_and_optional(tmp_path: Path, start_devhost: StartDevhost) -> None:
    route = "orders/{id:int}/{tag:alpha?}"
    app = write_app(tmp_path / "app", {"orders": (http_function(route=route), ECHO)})
    devhost = start_devhost(app)

    assert request(devhost.port, "GET", "/api/orders/12").json()["route"] == {"id": "12"}
    tagged = request(devhost.port, "GET", "/api/orders/12/red").json()
    assert tagged["route"] == {"id": "12", "tag": "red"}
    assert request(devhost.port, "GET", "/api/orders/x").status == 404
    assert request(devhost.port, "GET", "/api/orders/12/r3d").status == 404
    assert request(devhost.port, "GET", "/api/orders/99999999999").status == 404


def test_sync_function_runs_in_thread(tmp_path: Path, start_devhost: StartDevhost) -> None:
    app = write_app(tmp_path / "app", {"sync": (http_function(route="s/{name}"), SYNC_ECHO)})
    devhost = start_devhost(app)

    response = request(devhost.port, "GET", "/api/s/x")

    assert response.status == 200
    assert response.json()["route"] == {"name": "x"}
    assert response.json()["thread"].startswith("devhost-function")
