"""Route templates of HTTP-triggered functions, matched as ASP.NET Core routing matches them.

The Functions host routes with ASP.NET Core, so this module follows its rules: literal
segments compare case-insensitively, a trailing slash is ignored, parameters are `{name}`,
`{name?}` (optional), `{name=default}`, `{*rest}` (catch-all) and take inline constraints
such as `{id:int}` or `{code:alpha:length(3)}`. Values are matched against the path after
Kestrel's decoding: percent-escapes are decoded except `%2F`, which stays as written so an
encoded slash never splits a segment.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import unquote

T = TypeVar("T")

INT32_RANGE = (-(2**31), 2**31 - 1)
INT64_RANGE = (-(2**63), 2**63 - 1)

_ENCODED_SLASH = re.compile(r"(%2[fF])")
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_ALPHA = re.compile(r"^[a-zA-Z]*$")
_CONSTRAINT_NAME = re.compile(r"[A-Za-z]+")


class RouteTemplateError(ValueError):
    """A route template in function.json cannot be parsed."""


@dataclass(frozen=True)
class Constraint:
    """One inline constraint such as `int` or `length(3)`, with its check."""

    text: str
    check: Callable[[str], bool]


@dataclass(frozen=True)
class Parameter:
    """A `{...}` part of a route template."""

    name: str
    optional: bool = False
    default: str | None = None
    catch_all: bool = False
    constraints: tuple[Constraint, ...] = ()

    def accepts(self, value: str) -> bool:
        return all(constraint.check(value) for constraint in self.constraints)


@dataclass(frozen=True)
class Segment:
    """One `/`-separated piece of a template: literal text and parameters."""

    parts: tuple[str | Parameter, ...]
    pattern: re.Pattern[str] | None = field(default=None, compare=False)

    @property
    def parameter(self) -> Parameter | None:
        """The parameter when it makes up the whole segment, else None."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Parameter):
            return self.parts[0]
        return None

    @property
    def precedence(self) -> int:
        """Rank for ordering routes; lower ranks are tried first, as in ASP.NET Core."""
        parameter = self.parameter
        if parameter is None:
            return 1 if all(isinstance(part, str) for part in self.parts) else 2
        if parameter.catch_all:
            return 6
        if parameter.optional or parameter.default is not None:
            return 5
        return 3 if parameter.constraints else 4


class RouteTemplate:
    """A parsed route template such as `orders/{id:int}/{tag?}`."""

    def __init__(self, template: str) -> None:
        self.text = template.strip("/")
        self.segments = tuple(_parse_segment(text) for text in _split_template(self.text))
        self.parameters = tuple(
            part
            for segment in self.segments
            for part in segment.parts
            if isinstance(part, Parameter)
        )
        _check_template(self.text, self.segments, self.parameters)

    @property
    def precedence(self) -> tuple[int, ...]:
        return tuple(segment.precedence for segment in self.segments)

    def match(self, path: Sequence[str]) -> dict[str, str] | None:
        """Return the route values when the decoded path segments match, else None."""
        values: dict[str, str] = {}
        for index, segment in enumerate(self.segments):
            parameter = segment.parameter
            if parameter is not None and parameter.catch_all:
                rest = "/".join(path[index:])
                _store(values, parameter, rest or parameter.default)
                return values if self._accepts(values) else None

            if index >= len(path):
                if parameter is None or not (parameter.optional or parameter.default is not None):
                    return None
                _store(values, parameter, parameter.default)
                continue

            text = path[index]
            if parameter is not None:
                if not text:
                    return None
                values[parameter.name] = text
                continue

            assert segment.pattern is not None
            match = segment.pattern.fullmatch(text)
            if match is None:
                return None
            names = [part.name for part in segment.parts if isinstance(part, Parameter)]
            values.update(zip(names, match.groups(), strict=True))

        if len(path) > len(self.segments):
            return None
        return values if self._accepts(values) else None

    def _accepts(self, values: dict[str, str]) -> bool:
        return all(
            parameter.accepts(values[parameter.name])
            for parameter in self.parameters
            if parameter.name in values
        )

    def __repr__(self) -> str:
        return f"RouteTemplate({self.text!r})"


def _store(values: dict[str, str], parameter: Parameter, value: str | None) -> None:
    # A missing optional parameter is left out of the route values, as ASP.NET Core does.
    if value is not None:
        values[parameter.name] = value


def _split_template(template: str) -> list[str]:
    if not template:
        return []
    # A "/" inside a parameter (for example in a regex constraint) does not end a segment.
    segments = []
    depth = 0
    current: list[str] = []
    for char in template:
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(depth - 1, 0)
        if char == "/" and depth == 0:
            segments.append("".join(current))
            current = []
        else:
            current.append(char)
    segments.append("".join(current))
    return segments


def _parse_segment(text: str) -> Segment:
    if not text:
        raise RouteTemplateError("a route template must not contain an empty segment ('//').")

    parts: list[str | Parameter] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if text.startswith("{{", index) or text.startswith("}}", index):
            literal.append(char)
            index += 2
        elif char == "{":
            end = _parameter_end(text, index)
            if literal:
                parts.append("".join(literal))
                literal = []
            body = text[index + 1 : end].replace("{{", "{").replace("}}", "}")
            parts.append(_parse_parameter(body))
            index = end + 1
        elif char == "}":
            raise RouteTemplateError(f"unmatched '}}' in route segment {text!r}.")
        else:
            literal.append(char)
            index += 1
    if literal:
        parts.append("".join(literal))

    segment = Segment(tuple(parts))
    if segment.parameter is not None:
        return segment
    for part in parts:
        if isinstance(part, Parameter) and (part.optional or part.catch_all):
            raise RouteTemplateError(
                f"parameter {part.name!r} in {text!r} must be a whole segment to be optional "
                "or catch-all."
            )
    # ASP.NET Core matches complex segments from the right: the last occurrence of each
    # literal ends the parameter before it. Greedy groups give the same split.
    pattern = "".join("(.+)" if isinstance(part, Parameter) else re.escape(part) for part in parts)
    return Segment(tuple(parts), re.compile(pattern, re.IGNORECASE | re.DOTALL))


def _parameter_end(text: str, start: int) -> int:
    index = start + 1
    while index < len(text):
        if text.startswith("{{", index) or text.startswith("}}", index):
            index += 2
        elif text[index] == "{":
            raise RouteTemplateError(f"'{{' inside a parameter in route segment {text!r}.")
        elif text[index] == "}":
            return index
        else:
            index += 1
    raise RouteTemplateError(f"unclosed '{{' in route segment {text!r}.")


def _parse_parameter(body: str) -> Parameter:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    optional = body.endswith("?")
    if optional:
        body = body[:-1]

    name_end = len(body)
    for marker in (":", "="):
        position = body.find(marker)
        if position != -1:
            name_end = min(name_end, position)
    name = body[:name_end]
    if not name or any(char in name for char in "/{}?*"):
        raise RouteTemplateError(f"invalid route parameter name {name!r}.")

    constraints = []
    rest = body[name_end:]
    while rest.startswith(":"):
        constraint, rest = _read_constraint(rest[1:], name)
        constraints.append(constraint)

    default = None
    if rest.startswith("="):
        default = rest[1:]
        if optional:
            raise RouteTemplateError(
                f"route parameter {name!r} cannot be both optional and have a default."
            )
    elif rest:
        raise RouteTemplateError(f"cannot parse {rest!r} in route parameter {name!r}.")

    return Parameter(
        name=name,
        optional=optional,
        default=default,
        catch_all=catch_all,
        constraints=tuple(constraints),
    )


def _read_constraint(text: str, parameter: str) -> tuple[Constraint, str]:
    match = _CONSTRAINT_NAME.match(text)
    if match is None:
        raise RouteTemplateError(f"missing constraint name after ':' in parameter {parameter!r}.")
    name = match.group(0)
    index = match.end()
    arguments: str | None = None
    if text.startswith("(", index):
        depth = 0
        for position in range(index, len(text)):
            if text[position] == "(":
                depth += 1
            elif text[position] == ")":
                depth -= 1
                if depth == 0:
                    arguments = text[index + 1 : position]
                    index = position + 1
                    break
        else:
            raise RouteTemplateError(f"unclosed '(' in constraint {name!r} of {parameter!r}.")

    written = text[:index]
    return Constraint(written, _constraint_check(name.lower(), arguments, written)), text[index:]


def _constraint_check(name: str, arguments: str | None, written: str) -> Callable[[str], bool]:
    def numbers() -> list[int]:
        try:
            return [int(argument) for argument in (arguments or "").split(",")]
        except ValueError:
            message = f"constraint {written!r} needs whole-number arguments."
            raise RouteTemplateError(message) from None

    checks: dict[str, Callable[[], Callable[[str], bool]]] = {
        "int": lambda: lambda value: _integer_in(value, *INT32_RANGE),
        "long": lambda: lambda value: _integer_in(value, *INT64_RANGE),
        "bool": lambda: lambda value: value.strip().lower() in ("true", "false"),
        "guid": lambda: _is_guid,
        "alpha": lambda: lambda value: _ALPHA.match(value) is not None,
        "double": lambda: _is_float,
        "float": lambda: _is_float,
        "decimal": lambda: _is_float,
        "minlength": lambda: _length_check(numbers(), written, minimum_only=True),
        "maxlength": lambda: _length_check(numbers(), written, maximum_only=True),
        "length": lambda: _length_check(numbers(), written),
        "min": lambda: _range_check(numbers(), written, minimum_only=True),
        "max": lambda: _range_check(numbers(), written, maximum_only=True),
        "range": lambda: _range_check(numbers(), written),
        "regex": lambda: _regex_check(arguments, written),
    }
    factory = checks.get(name)
    if factory is None:
        raise RouteTemplateError(
            f"route constraint {written!r} is not supported by devhost. Supported: "
            f"{', '.join(sorted(checks))}."
        )
    return factory()


def _integer_in(value: str, low: int, high: int) -> bool:
    return _INTEGER.match(value) is not None and low <= int(value) <= high


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value.strip())
    except ValueError:
        return False
    return True


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _length_check(
    numbers: list[int], written: str, *, minimum_only: bool = False, maximum_only: bool = False
) -> Callable[[str], bool]:
    if len(numbers) == 1 and minimum_only:
        return lambda value: len(value) >= numbers[0]
    if len(numbers) == 1 and maximum_only:
        return lambda value: len(value) <= numbers[0]
    if len(numbers) == 1 and not (minimum_only or maximum_only):
        return lambda value: len(value) == numbers[0]
    if len(numbers) == 2 and not (minimum_only or maximum_only):
        return lambda value: numbers[0] <= len(value) <= numbers[1]
    raise RouteTemplateError(f"constraint {written!r} has the wrong number of arguments.")


def _range_check(
    numbers: list[int], written: str, *, minimum_only: bool = False, maximum_only: bool = False
) -> Callable[[str], bool]:
    if len(numbers) == 1 and minimum_only:
        return lambda value: _integer_in(value, numbers[0], INT64_RANGE[1])
    if len(numbers) == 1 and maximum_only:
        return lambda value: _integer_in(value, INT64_RANGE[0], numbers[0])
    if len(numbers) == 2 and not (minimum_only or maximum_only):
        return lambda value: _integer_in(value, numbers[0], numbers[1])
    raise RouteTemplateError(f"constraint {written!r} has the wrong number of arguments.")


def _regex_check(expression: str | None, written: str) -> Callable[[str], bool]:
    # ASP.NET Core matches the expression case-insensitively and unanchored. Python's `re`
    # accepts most .NET patterns but not all of them.
    try:
        pattern = re.compile(expression or "", re.IGNORECASE)
    except re.error as error:
        raise RouteTemplateError(f"constraint {written!r} is not a valid regex: {error}.") from None
    return lambda value: pattern.search(value) is not None


def _check_template(
    text: str, segments: Sequence[Segment], parameters: Sequence[Parameter]
) -> None:
    names = [parameter.name.lower() for parameter in parameters]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RouteTemplateError(f"route {text!r} repeats parameter {duplicates[0]!r}.")

    for index, segment in enumerate(segments):
        parameter = segment.parameter
        is_last = index == len(segments) - 1
        if parameter is not None and parameter.catch_all and not is_last:
            raise RouteTemplateError(
                f"catch-all parameter {parameter.name!r} must be the last segment of {text!r}."
            )
        if parameter is not None and parameter.optional and not is_last:
            later = segments[index + 1 :]
            if any(
                later_segment.parameter is None or not later_segment.parameter.optional
                for later_segment in later
            ):
                raise RouteTemplateError(
                    f"optional parameter {parameter.name!r} must be followed only by optional "
                    f"parameters in {text!r}."
                )


def split_path(raw_path: str) -> list[str]:
    """Split a raw request path into decoded segments, as Kestrel presents it to routing.

    Percent-escapes are decoded except `%2F`. The `.` and `..` segments are removed, and one
    trailing slash is ignored.
    """
    text = raw_path.split("?", 1)[0].split("#", 1)[0]
    pieces = text.split("/")
    if pieces and pieces[0] == "":
        pieces = pieces[1:]
    if pieces and pieces[-1] == "":
        pieces = pieces[:-1]

    segments: list[str] = []
    for piece in pieces:
        decoded = _decode_segment(piece)
        if decoded == ".":
            continue
        if decoded == "..":
            if segments:
                segments.pop()
            continue
        segments.append(decoded)
    return segments


def _decode_segment(piece: str) -> str:
    decoded = []
    for chunk in _ENCODED_SLASH.split(piece):
        if _ENCODED_SLASH.fullmatch(chunk):
            decoded.append(chunk)
            continue
        try:
            decoded.append(unquote(chunk, errors="strict"))
        except UnicodeDecodeError:
            # Kestrel leaves escapes that are not valid UTF-8 as they were written.
            decoded.append(chunk)
    return "".join(decoded)


@dataclass(frozen=True)
class Route(Generic[T]):
    """A route template bound to a target (a function) and its allowed methods."""

    template: RouteTemplate
    methods: frozenset[str] | None
    target: T

    def allows(self, method: str) -> bool:
        return self.methods is None or method.upper() in self.methods


@dataclass(frozen=True)
class RouteMatch(Generic[T]):
    route: Route[T]
    values: dict[str, str]


@dataclass(frozen=True)
class MethodNotAllowed:
    allowed: frozenset[str]


class Router(Generic[T]):
    """Ordered routes: the most specific template wins, then the order they were added."""

    def __init__(self, routes: Iterable[Route[T]]) -> None:
        indexed = list(enumerate(routes))
        indexed.sort(key=lambda item: (item[1].template.precedence, item[0]))
        self.routes = [route for _, route in indexed]

    def resolve(self, method: str, path: Sequence[str]) -> RouteMatch[T] | MethodNotAllowed | None:
        """Find the route for a request: a match, a path match with the wrong method, or None."""
        allowed: set[str] = set()
        for route in self.routes:
            values = route.template.match(path)
            if values is None:
                continue
            if route.allows(method):
                return RouteMatch(route, values)
            allowed.update(route.methods or ())
        if allowed:
            return MethodNotAllowed(frozenset(allowed))
        return None
