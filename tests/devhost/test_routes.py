"""Route templates and path decoding, checked against ASP.NET Core routing's rules."""

from __future__ import annotations

import pytest

from devhost.routes import (
    MethodNotAllowed,
    Route,
    RouteMatch,
    Router,
    RouteTemplate,
    RouteTemplateError,
    split_path,
)


@pytest.mark.parametrize(
    ("raw_path", "segments"),
    [
        ("/", []),
        ("/a/b", ["a", "b"]),
        ("/a/b/", ["a", "b"]),
        ("/a/b?x=1", ["a", "b"]),
        ("/a%20b/c%C3%A9", ["a b", "c\u00e9"]),
        ("/a%2Fb/c", ["a%2Fb", "c"]),
        ("/a%2fb", ["a%2fb"]),
        ("/a/./b/../c", ["a", "c"]),
        ("/a/%2E%2E/c", ["c"]),
        ("/a%FFb", ["a%FFb"]),
    ],
)
def test_split_path(raw_path: str, segments: list[str]) -> None:
    assert split_path(raw_path) == segments


@pytest.mark.parametrize(
    ("template", "path", "values"),
    [
        ("onfleet/webhooks/{customerId}", ["onfleet", "webhooks", "demo"], {"customerId": "demo"}),
        ("onfleet/webhooks/{customerId}", ["ONFLEET", "Webhooks", "Demo"], {"customerId": "Demo"}),
        ("onfleet/webhooks/{customerId}", ["onfleet", "webhooks"], None),
        ("onfleet/webhooks/{customerId}", ["onfleet", "webhooks", "a", "b"], None),
        ("items/{id:int}", ["items", "42"], {"id": "42"}),
        ("items/{id:int}", ["items", "-7"], {"id": "-7"}),
        ("items/{id:int}", ["items", "2147483648"], None),
        ("items/{id:int}", ["items", "4x"], None),
        ("items/{id:long}", ["items", "2147483648"], {"id": "2147483648"}),
        ("items/{name:alpha}", ["items", "abcXYZ"], {"name": "abcXYZ"}),
        ("items/{name:alpha}", ["items", "abc1"], None),
        ("items/{name:length(3)}", ["items", "abc"], {"name": "abc"}),
        ("items/{name:length(3)}", ["items", "abcd"], None),
        ("items/{name:minlength(2):maxlength(3)}", ["items", "a"], None),
        ("items/{id:range(1,5)}", ["items", "5"], {"id": "5"}),
        ("items/{id:range(1,5)}", ["items", "6"], None),
        (
            "items/{id:guid}",
            ["items", "9f1c2b1e-0d5b-4c47-9a3b-1f0f6f7e2a11"],
            {"id": "9f1c2b1e-0d5b-4c47-9a3b-1f0f6f7e2a11"},
        ),
        ("items/{code:regex(^[a-c]+$)}", ["items", "ABC"], {"code": "ABC"}),
        ("items/{code:regex(^[a-c]+$)}", ["items", "abd"], None),
        ("items/{id?}", ["items"], {}),
        ("items/{id?}", ["items", "7"], {"id": "7"}),
        ("items/{id=none}", ["items"], {"id": "none"}),
        ("files/{*rest}", ["files", "a", "b%2Fc"], {"rest": "a/b%2Fc"}),
        ("files/{*rest}", ["files"], {}),
        (
            "files/{name}.{ext}",
            ["files", "report.final.pdf"],
            {"name": "report.final", "ext": "pdf"},
        ),
        ("files/{name}.{ext}", ["files", "report"], None),
        ("v/{a}-{b}-{c}", ["v", "1-2-3-4"], {"a": "1-2", "b": "3", "c": "4"}),
        ("", [], {}),
        ("", ["x"], None),
    ],
)
def test_template_match(template: str, path: list[str], values: dict[str, str] | None) -> None:
    assert RouteTemplate(template).match(path) == values


@pytest.mark.parametrize(
    "template",
    [
        "items/{id",
        "items/id}",
        "items//{id}",
        "items/{}",
        "items/{id:unknown}",
        "items/{id?}/more",
        "items/{*rest}/more",
        "items/{id}/{ID}",
        "items/{id?=3}",
        "items/{id:length(a)}",
    ],
)
def test_template_invalid(template: str) -> None:
    with pytest.raises(RouteTemplateError):
        RouteTemplate(template)


def test_router_prefers_literal_over_parameter() -> None:
    router = Router(
        [
            Route(RouteTemplate("items/{id}"), None, "by-id"),
            Route(RouteTemplate("items/new"), None, "new"),
        ]
    )

    new = router.resolve("GET", ["items", "new"])
    other = router.resolve("GET", ["items", "7"])

    assert isinstance(new, RouteMatch)
    assert new.route.target == "new"
    assert isinstance(other, RouteMatch)
    assert other.route.target == "by-id"


def test_router_method_not_allowed() -> None:
    router = Router([Route(RouteTemplate("hooks"), frozenset({"POST", "PUT"}), "hooks")])

    result = router.resolve("GET", ["hooks"])

    assert isinstance(result, MethodNotAllowed)
    assert result.allowed == frozenset({"POST", "PUT"})


def test_router_unknown_path() -> None:
    router = Router([Route(RouteTemplate("hooks"), None, "hooks")])

    assert router.resolve("GET", ["other"]) is None


def test_router_method_case_insensitive() -> None:
    router = Router([Route(RouteTemplate("hooks"), frozenset({"POST"}), "hooks")])

    assert isinstance(router.resolve("post", ["hooks"]), RouteMatch)
