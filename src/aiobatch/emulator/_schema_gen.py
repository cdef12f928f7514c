"""Write ``api_schema.json``: the wire types of the Batch API, read from the installed azure-batch SDK's models.

Run ``python -m aiobatch.emulator._schema_gen`` after upgrading azure-batch and commit the file it writes; a test
regenerates it and compares, so a drift of the SDK (a new property, a changed type) shows up as a failing test.
The emulator at runtime reads only the data file, never the SDK: the emulator does not import client code, and
the schema is the authority it checks request bodies against (`_validate`).

The SDK (15.x, api-version 2025-06-01) is generated from the service's TypeSpec: each model's ``rest_field`` gives
the wire name and visibility, its annotation the type (``Optional[...]`` for what may be left out), ``_enums``
the values of every enumeration. Per model and property the file records::

    "BatchPoolCreateOptions": {"properties": {"vmSize": {"type": {"kind": "string"}, "required": true,
                                                          "visibility": ["read", "create", ...]}, ...}}

with ``type`` one of ``{"kind": "string" | "int" | "float" | "bool" | "datetime" | "duration"}``,
``{"kind": "enum", "enum": NAME}``, ``{"kind": "model", "model": NAME}``, ``{"kind": "list", "items": TYPE}`` and
``{"kind": "map", "values": TYPE}``; ``required`` for a property the SDK types as non-optional and a client may
write (not read-only); ``maxLength`` where the documentation states one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import importlib.metadata
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

#: The committed data file, beside this module (shipped in the wheel).
SCHEMA_PATH = Path(__file__).with_name("api_schema.json")

#: "up to a maximum length of 1024", "cannot contain more than 64 characters": limits the docs state in prose.
_MAX_LENGTH = re.compile(r"(?:maximum length of|more than) (\d+) characters|maximum length of (\d+)")


def _type_of(annotation: Any, models: types.ModuleType) -> tuple[dict[str, Any], bool]:
    """(wire type, optional) of one annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        enums = [a for a in rest if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:  # Union[str, SomeEnum]: the SDK's "known values" of an extensible enumeration
            return {"kind": "enum", "enum": enums[0].__name__}, optional
        if len(rest) == 1:
            return _type_of(rest[0], models)[0], optional
        raise TypeError(f"unexpected union {annotation!r}")
    if origin is list:
        return {"kind": "list", "items": _type_of(args[0], models)[0]}, False
    if origin is dict:
        return {"kind": "map", "values": _type_of(args[1], models)[0]}, False
    if isinstance(annotation, type):
        name = annotation.__name__
        if issubclass(annotation, enum.Enum):
            return {"kind": "enum", "enum": name}, False
        if issubclass(annotation, bool):
            return {"kind": "bool"}, False
        if issubclass(annotation, int):
            return {"kind": "int"}, False
        if issubclass(annotation, float):
            return {"kind": "float"}, False
        if issubclass(annotation, str):
            return {"kind": "string"}, False
        if issubclass(annotation, dt.datetime):
            return {"kind": "datetime"}, False
        if issubclass(annotation, dt.timedelta):
            return {"kind": "duration"}, False
        if getattr(models, name, None) is annotation:
            return {"kind": "model", "model": name}, False
    raise TypeError(f"unexpected annotation {annotation!r}")


def _max_length(doc: str | None) -> int | None:
    match = _MAX_LENGTH.search(" ".join((doc or "").split()))
    return int(match.group(1) or match.group(2)) if match else None


def _field_docs(cls: type) -> dict[str, str]:
    """Each attribute's docstring (the string literal after its ``rest_field``), from the class's source."""
    source = inspect.getsource(cls)
    found = re.finditer(r'^    (\w+): .*?= rest_field\(.*?\)\n    """(.*?)"""', source, re.M | re.S)
    return {m.group(1): m.group(2) for m in found}


def build_schema() -> dict[str, Any]:
    """The schema of every model and enumeration of the installed azure-batch SDK."""
    from azure.batch import models
    from azure.batch._utils.model_base import Model
    from azure.batch.models import _enums, _models

    # The private module, not the package: some request bodies (BatchJobTerminateOptions) are not exported.
    model_classes = sorted(
        (c for c in vars(_models).values() if isinstance(c, type) and issubclass(c, Model) and c is not Model),
        key=lambda c: c.__name__,
    )
    out_models: dict[str, Any] = {}
    for cls in model_classes:
        hints = typing.get_type_hints(cls, localns={"_models": models})
        docs = _field_docs(cls)
        props: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for attr, rest in vars(klass).items():
                if attr.startswith("_") or not hasattr(rest, "_rest_name_input"):
                    continue
                wire_type, optional = _type_of(hints[attr], _models)
                visibility = list(rest._visibility or [])
                entry: dict[str, Any] = {"attr": attr, "type": wire_type}
                entry["required"] = not optional and visibility != ["read"]
                entry["visibility"] = visibility
                length = _max_length(docs.get(attr)) if wire_type["kind"] == "string" else None
                if length is not None:
                    entry["maxLength"] = length
                props[rest._rest_name_input or attr] = entry
        out_models[cls.__name__] = {"properties": props}
    enums = {
        name: [member.value for member in value]
        for name, value in sorted(vars(_enums).items())
        if isinstance(value, type) and issubclass(value, enum.Enum) and value.__module__ == _enums.__name__
    }
    return {
        "source": f"azure-batch {importlib.metadata.version('azure-batch')}",
        "apiVersion": _api_version(),
        "models": out_models,
        "enums": enums,
    }


def _api_version() -> str:
    from azure.batch._configuration import BatchClientConfiguration

    source = inspect.getsource(BatchClientConfiguration)
    match = re.search(r'api_version: str = kwargs\.pop\("api_version", "([^"]+)"\)', source)
    if match is None:
        raise RuntimeError("the SDK's default api-version was not found")
    return match.group(1)


def render(schema: dict[str, Any]) -> str:
    """The file's text: one model or enumeration per line, so a diff after an SDK upgrade reads well."""
    lines = ["{"]
    lines.append(f'"source": {json.dumps(schema["source"])},')
    lines.append(f'"apiVersion": {json.dumps(schema["apiVersion"])},')
    lines.append('"models": {')
    items = list(schema["models"].items())
    for index, (name, model) in enumerate(items):
        comma = "," if index < len(items) - 1 else ""
        lines.append(f"{json.dumps(name)}: {json.dumps(model, sort_keys=True)}{comma}")
    lines.append("},")
    lines.append('"enums": {')
    enums = list(schema["enums"].items())
    for index, (name, values) in enumerate(enums):
        comma = "," if index < len(enums) - 1 else ""
        lines.append(f"{json.dumps(name)}: {json.dumps(values)}{comma}")
    lines.append("}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, compare) the schema file; the exit status is 1 when ``--check`` finds a drift."""
    parser = argparse.ArgumentParser(prog="python -m aiobatch.emulator._schema_gen", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    parser.add_argument("--output", type=Path, default=SCHEMA_PATH, help="where to write (default: beside this module)")
    args = parser.parse_args(argv)
    text = render(build_schema())
    if args.check:
        same = args.output.exists() and args.output.read_text(encoding="utf-8") == text
        print(f"{args.output}: {'up to date' if same else 'differs from the installed SDK'}")
        return 0 if same else 1
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
