"""The request-validation layer: every request body checked against the API's types before a handler runs.

The types come from ``api_schema.json``, generated from the azure-batch SDK's models (api-version 2025-06-01) by
`_schema_gen`. A middleware reads the body of each operation listed in `REQUEST_BODIES`, parses it and checks it
property by property: JSON type, required properties, enumeration values (case-insensitively, as the service
compares them), 32-bit integers, documented maximum lengths, and no NUL or other control characters where no
caller could mean them. Only then does the handler run, reading the body with `body_of`; a refused request has
changed nothing. Properties the schema does not know are left alone, as the service ignores them.

Errors are the service's 400s, naming the property by its full path (``poolInfo.poolId``,
``value[3].constraints.maxTaskRetryCount``):

- ``InvalidRequestBody``: not JSON, not a JSON object, nested deeper than `MAX_DEPTH`, ``NaN``/``Infinity``;
- ``MissingRequiredProperty``: a required property left out or ``null``;
- ``InvalidPropertyValue``: a property of the wrong type, out of range, not one of its enumeration's values, or
  holding characters the service refuses;
- ``InvalidQueryParameterValue``: a ``timeout`` that is not a number of seconds, a ``recursive`` that is not
  ``true`` or ``false``;
- ``RequestBodyTooLarge`` (413): a body over the operation's limit.

Semantic rules that need the account (an application package exists, exactly one resource file source) stay
with the handlers in `_wire`, which can now assume well-typed input.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import _support as support
from ._model import ID_PATTERN, ServiceError, invalid_body, invalid_property, missing_property
from ._wire import MAX_COLLECTION_BODY_BYTES, bad_query, parse_duration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The model each operation's body must be, by (method, route path as in `build_app`'s route table).
REQUEST_BODIES: Mapping[tuple[str, str], str] = {
    ("POST", "/pools"): "BatchPoolCreateOptions",
    ("PATCH", "/pools/{pool}"): "BatchPoolUpdateOptions",
    ("POST", "/pools/{pool}/updateproperties"): "BatchPoolReplaceOptions",
    ("POST", "/pools/{pool}/resize"): "BatchPoolResizeOptions",
    ("POST", "/pools/{pool}/enableautoscale"): "BatchPoolEnableAutoScaleOptions",
    ("POST", "/pools/{pool}/evaluateautoscale"): "BatchPoolEvaluateAutoScaleOptions",
    ("POST", "/jobs"): "BatchJobCreateOptions",
    ("PATCH", "/jobs/{job}"): "BatchJobUpdateOptions",
    ("PUT", "/jobs/{job}"): "BatchJob",
    ("POST", "/jobs/{job}/terminate"): "BatchJobTerminateOptions",
    ("POST", "/jobs/{job}/disable"): "BatchJobDisableOptions",
    ("POST", "/jobs/{job}/tasks"): "BatchTaskCreateOptions",
    ("POST", "/jobs/{job}/addtaskcollection"): "BatchTaskGroup",
    ("PUT", "/jobs/{job}/tasks/{task}"): "BatchTask",
    ("POST", "/pools/{pool}/removenodes"): "BatchNodeRemoveOptions",
    ("POST", "/jobschedules"): "BatchJobScheduleCreateOptions",
    ("PATCH", "/jobschedules/{schedule}"): "BatchJobScheduleUpdateOptions",
    ("PUT", "/jobschedules/{schedule}"): "BatchJobSchedule",
    ("POST", "/pools/{pool}/nodes/{node}/users"): "BatchNodeUserCreateOptions",
    ("PUT", "/pools/{pool}/nodes/{node}/users/{user}"): "BatchNodeUserReplaceOptions",
    ("POST", "/pools/{pool}/nodes/{node}/reboot"): "BatchNodeRebootOptions",
    ("POST", "/pools/{pool}/nodes/{node}/reimage"): "BatchNodeReimageOptions",
    ("POST", "/pools/{pool}/nodes/{node}/deallocate"): "BatchNodeDeallocateOptions",
    ("POST", "/pools/{pool}/nodes/{node}/disablescheduling"): "BatchNodeDisableSchedulingOptions",
    ("POST", "/pools/{pool}/nodes/{node}/uploadbatchservicelogs"): "UploadBatchServiceLogsOptions",
}

#: Bodies with a limit of their own below the application's (addtaskcollection: about 1 MB).
BODY_LIMITS: Mapping[str, int] = {"BatchTaskGroup": MAX_COLLECTION_BODY_BYTES}

#: How deeply a body's JSON may nest (the service's JSON reader refuses deeper documents; so does the emulator,
#: rather than recurse through them).
MAX_DEPTH = 64

#: The service's integers are 32-bit.
INT32 = (-(2**31), 2**31 - 1)

#: Characters no property may hold: NUL and the other C0 controls except tab and line breaks, and lone UTF-16
#: surrogates (which no file name, environment variable or process argument can carry).
_TEXT_REFUSED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
#: Ids, names, paths and URLs refuse every control character, tab and line breaks included.
_NAME_REFUSED = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
#: Properties (by wire name) that are ids, names, paths or URLs.
_NAME_PROPERTIES = frozenset(
    {
        "id",
        "name",
        "poolId",
        "applicationId",
        "version",
        "vmSize",
        "nodeAgentSKUId",
        "autoPoolIdPrefix",
        "filePath",
        "filePattern",
        "path",
        "blobPrefix",
        "fileMode",
        "httpUrl",
        "storageContainerUrl",
        "autoStorageContainerName",
        "containerUrl",
    }
)

#: Rules of single properties beyond their type: (model, property) -> (pattern the value must match, reason).
_PROPERTY_RULES: Mapping[tuple[str, str], tuple[re.Pattern[str], str]] = {
    ("BatchPoolInfo", "poolId"): (
        ID_PATTERN,
        "The pool id can contain any combination of alphanumeric characters including hyphens and underscores, "
        "and cannot contain more than 64 characters.",
    ),
    ("EnvironmentSetting", "name"): (
        re.compile(r"^[^=]+$"),
        "An environment variable's name must not be empty and must not contain '='.",
    ),
    ("HttpHeader", "name"): (
        re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"),
        "An HTTP header's name must be a token: letters, digits and !#$%&'*+.^_`|~-.",
    ),
}

_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?(?:Z|[+-]\d{2}:\d{2})$", re.I)

#: The checked body of the request being handled, from the middleware to its handler (both run in one task).
_BODY: ContextVar[dict[str, Any]] = ContextVar("aiobatch_emulator_body")


def _shown(value: object) -> str:
    """A property's value as an error shows it: JSON, shortened (a refused value may be megabytes)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 200 else text[:200] + "..."


@dataclass(frozen=True)
class Schema:
    """The wire types of the API: models (with their properties) and enumerations, as `_schema_gen` wrote them."""

    api_version: str
    models: Mapping[str, Mapping[str, Any]]
    enums: Mapping[str, frozenset[str]]

    def check(self, model: str, body: object) -> dict[str, Any]:
        """Return ``body`` if it is a valid ``model``, else raise the service's 400 naming the property.

        Raises:
            ServiceError: ``InvalidRequestBody`` when ``body`` is not a JSON object; ``MissingRequiredProperty``
                or ``InvalidPropertyValue`` naming the first property at fault by its full path.
        """
        if not isinstance(body, dict):
            raise invalid_body(f"The request body must be a JSON object ({model}), not {_json_kind(body)}.")
        self._check_model(model, body, "")
        return body

    def _check_model(self, model: str, value: dict[str, Any], prefix: str) -> None:
        for name, prop in self.models[model]["properties"].items():
            path = f"{prefix}{name}"
            item = value.get(name)
            if item is None:
                if prop["required"]:
                    raise missing_property(path)
                continue
            self._check_value(prop["type"], item, path, (model, name), prop.get("maxLength"))

    def _check_value(
        self, kind: Mapping[str, Any], value: object, path: str, owner: tuple[str, str], max_length: int | None
    ) -> None:
        match kind["kind"]:
            case "string":
                if not isinstance(value, str):
                    raise _wrong_type(path, value, "a string")
                _check_text(value, path, owner, max_length)
            case "int":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise _wrong_type(path, value, "an integer")
                if not INT32[0] <= value <= INT32[1]:
                    raise invalid_property(path, value, "The value must be a 32-bit integer.")
            case "float":
                if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                    raise _wrong_type(path, value, "a number")
            case "bool":
                if not isinstance(value, bool):
                    raise _wrong_type(path, value, "true or false")
            case "datetime":
                if not isinstance(value, str) or not _DATETIME.match(value):
                    raise invalid_property(path, _shown(value), "The value must be an ISO 8601 date and time.")
            case "duration":
                if not isinstance(value, str):
                    raise _wrong_type(path, value, "an ISO 8601 duration (a string)")
                parse_duration(value, path)
            case "enum":
                allowed = self.enums[kind["enum"]]
                if not isinstance(value, str) or value.lower() not in allowed:
                    raise invalid_property(path, _shown(value), f"Use one of: {', '.join(sorted(allowed))}.")
            case "model":
                if not isinstance(value, dict):
                    raise _wrong_type(path, value, "a JSON object")
                self._check_model(kind["model"], value, f"{path}.")
            case "list":
                if not isinstance(value, list):
                    raise _wrong_type(path, value, "a JSON array")
                for index, item in enumerate(value):
                    if item is None:
                        raise invalid_property(f"{path}[{index}]", "null", "A list may not hold null.")
                    self._check_value(kind["items"], item, f"{path}[{index}]", owner, None)
            case "map":
                if not isinstance(value, dict):
                    raise _wrong_type(path, value, "a JSON object")
                for key, item in value.items():
                    _check_text(key, f"{path}.{key}", owner, None, name=True)
                    self._check_value(kind["values"], item, f"{path}.{key}", owner, None)
            case other:  # pragma: no cover - a schema file from a newer generator
                raise AssertionError(f"unknown kind {other!r} in api_schema.json")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(path: str, value: object, expected: str) -> ServiceError:
    return invalid_property(path, _shown(value), f"The value must be {expected}, not {_json_kind(value)}.")


def _check_text(value: str, path: str, owner: tuple[str, str], max_length: int | None, *, name: bool = False) -> None:
    refused = _NAME_REFUSED if name or owner[1] in _NAME_PROPERTIES else _TEXT_REFUSED
    found = refused.search(value)
    if found is not None:
        raise invalid_property(
            path,
            _shown(value),
            f"The value contains a character the service does not accept here (U+{ord(found.group()):04X}).",
        )
    if max_length is not None and len(value) > max_length:
        raise invalid_property(path, _shown(value), f"The value must be at most {max_length} characters long.")
    rule = _PROPERTY_RULES.get(owner)
    if rule is not None and not rule[0].match(value):
        raise invalid_property(path, _shown(value), rule[1])


@cache
def schema() -> Schema:
    """The schema shipped beside this module (read once)."""
    raw = json.loads(resources.files(__package__).joinpath("api_schema.json").read_text(encoding="utf-8"))
    return Schema(
        api_version=raw["apiVersion"],
        models=raw["models"],
        enums={name: frozenset(v.lower() for v in values) for name, values in raw["enums"].items()},
    )


def parse_json(raw: bytes) -> Any:
    """A request body's JSON, or the service's ``InvalidRequestBody``; an empty body is an empty object.

    ``NaN`` and ``Infinity`` are not JSON (Python's parser accepts them; the emulator would then write them back
    into answers no client can read), and nesting is bounded so that no walk over the body can exhaust the stack.
    """
    if not raw.strip():
        return {}

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        body = json.loads(raw, parse_constant=no_constant)
    except RecursionError:
        raise invalid_body(f"The JSON is nested more than {MAX_DEPTH} levels deep.") from None
    except ValueError as error:  # also UnicodeDecodeError: the body is not UTF-8
        raise invalid_body(f"The body is not valid JSON: {str(error)[:200]}") from None
    if _depth(body) > MAX_DEPTH:
        raise invalid_body(f"The JSON is nested more than {MAX_DEPTH} levels deep.")
    return body


def _depth(value: object) -> int:
    """How deeply ``value`` nests, without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_query(request: web.Request) -> None:
    """The query parameters every operation shares, beyond ``api-version`` (`_wire.api_version_of`).

    Raises:
        ServiceError: 400 ``InvalidQueryParameterValue`` for a ``timeout`` that is not a whole number of
            seconds or a ``recursive`` that is not ``true``/``false``.
    """
    for name, value in request.query.items():
        lowered = name.lower()
        if lowered == "timeout" and not (value.isascii() and value.isdigit() and int(value) <= INT32[1]):
            raise bad_query(name, value, "The timeout must be a whole number of seconds.")
        if lowered == "recursive" and value.lower() not in ("true", "false"):
            raise bad_query(name, value, "recursive must be true or false.")


def body_of(request: web.Request) -> dict[str, Any]:
    """The request's body, as the validation middleware parsed and checked it."""
    del request  # the body travels in a context variable: aiohttp before 3.12 has no typed request keys
    return _BODY.get()


def body_model(request: web.Request) -> str | None:
    """The model the request's body must be, or None for an operation that takes no body."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return REQUEST_BODIES.get((request.method, resource.canonical))


def validation_middleware() -> Middleware:
    """An aiohttp middleware that checks the query and the body of each request before its handler runs."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        check_query(request)
        support.check_query(request)
        model = body_model(request)
        if model is not None:
            limit = BODY_LIMITS.get(model)
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raw = None
            if raw is None or (limit is not None and len(raw) > limit):
                raise ServiceError(
                    413,
                    "RequestBodyTooLarge",
                    "The request body is too large and exceeds the maximum permissible limit.",
                )
            parsed = parse_json(raw)
            # What the emulator does not support is named first (`_support`), then the types are checked.
            support.check_body(model, parsed, support.context_of(request))
            token = _BODY.set(schema().check(model, parsed))
            try:
                return await handler(request)
            finally:
                _BODY.reset(token)
        return await handler(request)

    return middleware


__all__ = [
    "REQUEST_BODIES",
    "Schema",
    "body_model",
    "body_of",
    "check_query",
    "parse_json",
    "schema",
    "validation_middleware",
]
