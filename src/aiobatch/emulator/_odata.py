"""``$filter`` parsing and evaluation for list operations, limited to what the service supports.

The grammar is the OData subset Batch accepts: comparisons (``eq ne gt ge lt le``), ``startswith(prop, 'x')``,
``and`` / ``or`` / ``not`` and parentheses; literals are quoted strings (``''`` escapes a quote), integers,
``true``/``false`` and ``datetime'...'``.  Each list operation accepts only the properties (and operators) the
service's "OData filters in Batch" page lists for it; anything else is the service's 400.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any

from ._model import ServiceError

Predicate = Callable[[Mapping[str, Any]], bool]

_ORDER = ("eq", "ne", "gt", "ge", "lt", "le")
_ALL = frozenset(_ORDER)
_EQ = frozenset({"eq", "ne"})
_STARTS = "startswith"

#: Properties `$filter` accepts per list operation, with the operators allowed on each: the tables of the service's
#: "OData filters in Batch" page.  A property that is not listed is the service's 400, even when the emulator
#: could evaluate it, so that code tested here relies only on what the real service promises.
SUPPORTED: dict[str, dict[str, frozenset[str]]] = {
    "pools": {
        "id": _ALL | {_STARTS},
        "state": _EQ,
        "stateTransitionTime": _ALL,
        "allocationState": _EQ,
        "allocationStateTransitionTime": _ALL,
        "creationTime": _ALL,
        "enableAutoScale": _EQ,
        "lastModified": _ALL,
        "vmSize": _EQ,
        "enableInterNodeCommunication": _EQ,
    },
    "jobs": {
        "id": _ALL | {_STARTS},
        "state": _EQ,
        "stateTransitionTime": _ALL,
        "creationTime": _ALL,
        "lastModified": _ALL,
        "executionInfo/startTime": _ALL,
        "executionInfo/endTime": _ALL,
        "executionInfo/poolId": _ALL | {_STARTS},
    },
    "jobschedules": {
        "id": _ALL | {_STARTS},
        "state": _EQ,
        "stateTransitionTime": _ALL,
        "creationTime": _ALL,
        "lastModified": _ALL,
    },
    "jobpreparationandreleasetaskstatus": {
        "nodeId": _EQ,
        "poolId": _EQ,
        "jobPreparationTaskExecutionInfo/state": _EQ,
        "jobReleaseTaskExecutionInfo/state": _EQ,
    },
    "tasks": {
        "id": _ALL | {_STARTS},
        "state": _EQ,
        "stateTransitionTime": _ALL,
        "creationTime": _ALL,
        # The page spells it lastModifiedTime; the property itself is lastModified.  Both are accepted.
        "lastModifiedTime": _ALL,
        "lastModified": _ALL,
        "executionInfo/startTime": _ALL,
        "executionInfo/endTime": _ALL,
        "executionInfo/exitCode": _ALL,
        "executionInfo/result": _EQ,
    },
    "nodes": {
        "state": _EQ,
        "stateTransitionTime": _ALL,
        "lastBootTime": _ALL,
        "allocationTime": _ALL,
        "startTaskInfo/state": frozenset({"eq"}),
        "startTaskInfo/result": _EQ,
        "startTaskInfo/exitCode": _ALL,
        "startTaskInfo/startTime": _ALL,
        "startTaskInfo/endTime": _ALL,
    },
    "poolnodecounts": {"poolId": frozenset({"eq"})},
    "supportedimages": {"osType": _EQ, "verificationType": _EQ, "nodeAgentSKUId": _EQ},
    "files": {"name": frozenset({_STARTS})},
    "extensions": {},
    "poolusagemetrics": {"poolId": frozenset({"eq", _STARTS}), "startTime": _ALL, "endTime": _ALL},
    "applications": {},
}

#: Filter names that stand for another property of the rendered item.
_ALIASES = {"lastModifiedTime": "lastModified"}

_TOKEN = re.compile(
    r"\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<dt>datetime'[^']*')|(?P<str>'(?:[^']|'')*')"
    r"|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][A-Za-z0-9_/]*))"
)


def _bad(expression: str, reason: str) -> ServiceError:
    return ServiceError(
        400,
        "InvalidQueryParameterValue",
        "Value for one of the query parameters specified in the request URI is invalid.",
        [("QueryParameterName", "$filter"), ("QueryParameterValue", expression), ("Reason", reason)],
    )


def _tokens(expression: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expression):
        if expression[pos:].strip() == "":
            break
        match = _TOKEN.match(expression, pos)
        if not match or match.end() == pos:
            raise _bad(expression, f"Unexpected text at position {pos}.")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _literal(kind: str, text: str) -> Any:
    if kind == "str":
        return text[1:-1].replace("''", "'")
    if kind == "num":
        return float(text) if "." in text else int(text)
    if kind == "dt":
        return parse_timestamp(text[9:-1])
    raise ValueError(text)


def parse_timestamp(text: str) -> dt.datetime:
    """A service timestamp (``2026-01-22T21:38:06.247087Z``, up to 7 fractional digits) as a datetime."""
    base, _, fraction = text.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(f"{base}.{(fraction + '000000')[:6]}+00:00")


def _value(item: Mapping[str, Any], path: str) -> Any:
    path = _ALIASES.get(path, path)
    value: Any = item
    for part in path.split("/"):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if isinstance(expected, dt.datetime):
        if isinstance(actual, str):
            actual = parse_timestamp(actual)
        elif not isinstance(actual, dt.datetime):  # a view's times are datetimes already
            return op == "ne"
        if expected.tzinfo is None:
            expected = expected.replace(tzinfo=dt.timezone.utc)
    elif isinstance(expected, str) and isinstance(actual, str):
        actual, expected = actual.lower(), expected.lower()
    elif isinstance(expected, bool) or isinstance(actual, bool):
        pass
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if actual is None:
        return False
    try:
        return bool(
            {
                "gt": actual > expected,
                "ge": actual >= expected,
                "lt": actual < expected,
                "le": actual <= expected,
            }[op]
        )
    except TypeError:
        return False


def parse_filter(expression: str | None, operation: str) -> Predicate | None:
    """Compile a ``$filter`` for a list operation into a predicate over rendered JSON items (or views of them).

    Args:
        expression: The ``$filter`` value, or None.
        operation: A key of `SUPPORTED`.

    Returns:
        The predicate, or None when there is no filter.

    Raises:
        ServiceError: the service's 400 for a malformed filter or an unsupported property or operator.
    """
    if expression is None or not expression.strip():
        return None
    allowed = SUPPORTED[operation]
    tokens = _tokens(expression)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return tokens[pos] if pos < len(tokens) else None

    def take(kind: str | None = None, word: str | None = None) -> tuple[str, str]:
        nonlocal pos
        token = peek()
        if token is None or (kind and token[0] != kind) or (word and token[1].lower() != word):
            raise _bad(expression, f"Expected {word or kind} at token {pos + 1}.")
        pos += 1
        return token

    def check(prop: str, op: str) -> None:
        if prop not in allowed:
            raise _bad(expression, f"The property '{prop}' is not supported in a filter on this list operation.")
        if op not in allowed[prop]:
            raise _bad(expression, f"The operator '{op}' is not supported for property '{prop}'.")

    def primary() -> Predicate:
        token = peek()
        if token is None:
            raise _bad(expression, "The filter ends early.")
        if token[0] == "lp":
            take("lp")
            inner = disjunction()
            take("rp")
            return inner
        if token[0] == "word" and token[1].lower() == "not":
            take("word")
            negated = primary()
            return lambda item: not negated(item)
        if token[0] == "word" and token[1].lower() == _STARTS:
            take("word")
            take("lp")
            prop = take("word")[1]
            take("comma")
            kind, text = take()
            take("rp")
            if kind != "str":
                raise _bad(expression, "startswith takes a quoted string.")
            check(prop, _STARTS)
            prefix = _literal(kind, text).lower()
            return lambda item: str(_value(item, prop) or "").lower().startswith(prefix)
        prop = take("word")[1]
        op = take("word")[1].lower()
        if op not in _ORDER:
            raise _bad(expression, f"'{op}' is not a comparison operator.")
        kind, text = take()
        if kind == "word" and text.lower() in ("true", "false"):
            expected: Any = text.lower() == "true"
        elif kind in ("str", "num", "dt"):
            try:
                expected = _literal(kind, text)
            except ValueError:
                raise _bad(expression, f"'{text}' is not a valid literal.") from None
        else:
            raise _bad(expression, f"'{text}' is not a literal.")
        check(prop, op)
        return lambda item: _compare(_value(item, prop), op, expected)

    def conjunction() -> Predicate:
        parts = [primary()]
        while (token := peek()) is not None and token[0] == "word" and token[1].lower() == "and":
            take("word")
            parts.append(primary())
        return parts[0] if len(parts) == 1 else (lambda item: all(p(item) for p in parts))

    def disjunction() -> Predicate:
        parts = [conjunction()]
        while (token := peek()) is not None and token[0] == "word" and token[1].lower() == "or":
            take("word")
            parts.append(conjunction())
        return parts[0] if len(parts) == 1 else (lambda item: any(p(item) for p in parts))

    predicate = disjunction()
    if pos != len(tokens):
        raise _bad(expression, f"Unexpected '{tokens[pos][1]}' after the end of the expression.")
    return predicate
