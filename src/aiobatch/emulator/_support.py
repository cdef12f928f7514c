"""The support matrix: what the emulator does with every property of every request model of the API.

``support_matrix.txt`` (beside this module) holds one row a property, ``Model.property | status | note``, for every
property a client may write in a request body of the 2025-06-01 API (the models of ``api_schema.json`` reachable
from `_validate.REQUEST_BODIES`). The statuses:

- ``honoured``: done as the REST documentation describes;
- ``refused``: a request giving it is the service's 400 ``InvalidPropertyValue`` naming the property by its full
  path and saying that the emulator does not support it (``null``, ``false``, an empty list and the service's
  unlimited duration ask for nothing, and pass);
- ``partial``: honoured for some values and refused, the same way, for the others (a rule in `_VALUE_RULES`);
- ``accepted-not-simulated``: accepted and answered back, not simulated, where it cannot change what a task
  computes (a VM's disks, its network, OS upgrades);
- ``operation-not-emulated``: only operations that answer 501 ``OperationNotEmulated`` take it.

The validation middleware calls `check_body` on each body before its types are checked, so a refused property is
named even in a body with other faults; a task collection is checked task by task (`check_task`), each refused
task a ``clienterror`` of its own, as the service answers a collection. ``$expand=stats`` is answered for pools
(`_wire.render_pool_stats`: the period, no figures the emulator does not measure) and refused for jobs (`check_query`).

``python -m aiobatch.emulator._support`` writes the tables of docs/emulator.md (properties and operations)
between their markers; ``--check`` exits 1 when they are stale.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from ._model import ServiceError, invalid_property, utcnow
from ._types import FailureInfo, TaskOutcome
from ._wire import bad_query

#: Every status a row may have, in the order the docs list them.
STATUSES = ("honoured", "partial", "accepted-not-simulated", "refused", "operation-not-emulated")


#: The service's "unlimited" duration (`_wire.MAX_DURATION`): giving it asks for no limit.
_UNLIMITED = "P10675199DT2H48M5.4775807S"

#: Rows that a container runtime turns from refused to honoured (`_containers`).
CONTAINER_ROWS = frozenset(
    {
        ("BatchTaskCreateOptions", "containerSettings"),
        ("BatchStartTask", "containerSettings"),
        ("BatchTaskContainerSettings", "imageName"),
        ("BatchTaskContainerSettings", "containerRunOptions"),
        ("BatchTaskContainerSettings", "workingDirectory"),
        ("VirtualMachineConfiguration", "containerConfiguration"),
        ("BatchContainerConfiguration", "type"),
        ("BatchContainerConfiguration", "containerImageNames"),
    }
)


@dataclass(frozen=True)
class Row:
    """One row of the matrix."""

    model: str
    prop: str
    status: str
    note: str

    @property
    def name(self) -> str:
        """``Model.property``."""
        return f"{self.model}.{self.prop}"


def parse(text: str) -> dict[tuple[str, str], Row]:
    """The rows of a matrix file's text, by (model, property).

    Raises:
        ValueError: a malformed row, an unknown status or a property listed twice.
    """
    rows: dict[tuple[str, str], Row] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            continue
        parts = [part.strip() for part in stripped.split("|", 2)]
        if len(parts) != 3 or parts[0].count(".") != 1:
            raise ValueError(f"line {number}: not 'Model.property | status | note': {line!r}")
        model, prop = parts[0].split(".")
        if parts[1] not in STATUSES:
            raise ValueError(f"line {number}: unknown status {parts[1]!r} (one of {', '.join(STATUSES)})")
        if (model, prop) in rows:
            raise ValueError(f"line {number}: {parts[0]} listed twice")
        rows[(model, prop)] = Row(model, prop, parts[1], parts[2])
    return rows


@cache
def matrix() -> Mapping[tuple[str, str], Row]:
    """The matrix shipped beside this module (read once)."""
    return parse(resources.files(__package__).joinpath("support_matrix.txt").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class SupportContext:
    """What the emulator it checks for can do beyond the matrix's defaults.

    Attributes:
        container_runtime: the container runtime tasks may run in (``docker``, ``podman`` or a path), or None.
        runs_as_root: whether the emulator's processes have admin rights (then admin elevation is honoured).
    """

    container_runtime: str | None = None
    runs_as_root: bool = False

    @classmethod
    def of_this_process(cls, container_runtime: str | None = None) -> SupportContext:
        """The context of an emulator running in this process, as this process's user."""
        return cls(container_runtime=container_runtime, runs_as_root=hasattr(os, "geteuid") and os.geteuid() == 0)


#: The context of the app a request is for (set by `_app.build_app`).
SUPPORT_KEY: web.AppKey[SupportContext] = web.AppKey("support", SupportContext)


def context_of(request: web.Request) -> SupportContext:
    """The support context of the request's emulator (the defaults when the app has none)."""
    return request.app.get(SUPPORT_KEY) or SupportContext()


# -- value rules of partial rows ------------------------------------------------------------------------------

ValueRule = Callable[[Any, SupportContext], "str | None"]


def _admin(value: Any, context: SupportContext) -> str | None:
    if isinstance(value, str) and value.lower() == "admin" and not context.runs_as_root:
        return (
            "The emulator runs every task as its own operating-system user and cannot give a task admin rights. "
            "Run the emulator as root to run admin tasks, or use elevationLevel nonadmin."
        )
    return None


def _no_auto_pool(value: Any, context: SupportContext) -> str | None:
    if isinstance(value, dict) and value.get("autoPoolSpecification") is not None:
        return "A job's auto pool is set when it is created; the emulator does not change it: give a poolId."
    return None


def _not_job_schedule(value: Any, context: SupportContext) -> str | None:
    if isinstance(value, str) and value.lower() == "jobschedule":
        return "An auto pool that lives as long as its job schedule is not emulated: use poolLifetimeOption job."
    return None


#: The value-dependent checks of ``partial`` rows (a row whose check lives elsewhere, as the catalogue's, is not
#: here).
_VALUE_RULES: Mapping[tuple[str, str], ValueRule] = {
    ("AutoUserSpecification", "elevationLevel"): _admin,
    ("UserAccount", "elevationLevel"): _admin,
    ("BatchJobUpdateOptions", "poolInfo"): _no_auto_pool,
    ("BatchJob", "poolInfo"): _no_auto_pool,
    ("BatchAutoPoolSpecification", "poolLifetimeOption"): _not_job_schedule,
}


def _asks_for_nothing(value: object) -> bool:
    return value is None or value is False or value == [] or value == _UNLIMITED


def unsupported(path: str, value: object, reason: str) -> ServiceError:
    """The 400 of a property the emulator does not support: the service's ``InvalidPropertyValue`` naming it."""
    shown = value if isinstance(value, str | int | float) else "(set)"
    return invalid_property(path, shown, f"The aiobatch emulator does not support {path}. {reason}")


def _refusal(row: Row, value: object, context: SupportContext) -> str | None:
    if row.status == "refused":
        if _asks_for_nothing(value):
            return None
        if (row.model, row.prop) in CONTAINER_ROWS:
            if context.container_runtime is not None:
                return None
            return (
                "It runs no containers unless it is given a container runtime: start it with "
                "--container-runtime docker (Emulator(container_runtime='docker')), or podman."
            )
        return row.note[:1].upper() + row.note[1:] + "." if row.note else "Test it against Azure Batch."
    rule = _VALUE_RULES.get((row.model, row.prop))
    return rule(value, context) if rule is not None else None


def check_body(model: str, body: object, context: SupportContext) -> None:
    """Refuse the first property of ``body`` (a ``model``) that the matrix refuses for its value.

    The body's types are not checked yet: what is not of its type is passed over here and refused by `_validate`.
    A task collection's tasks are checked one by one by its handler (`check_task`), not here.

    Raises:
        ServiceError: 400 ``InvalidPropertyValue`` naming the property by its full path.
    """
    if model == "BatchTaskGroup" or not isinstance(body, dict):
        return
    _walk(model, body, "", context)


def check_task(request: web.Request, body: object) -> None:
    """`check_body` for one task of a task collection.

    Raises:
        ServiceError: as `check_body`.
    """
    if isinstance(body, dict):
        _walk("BatchTaskCreateOptions", body, "", context_of(request))


def _walk(model: str, body: dict[str, Any], prefix: str, context: SupportContext) -> None:
    from ._validate import schema  # _validate imports this module

    properties = schema().models[model]["properties"]
    rows = matrix()
    for name, value in body.items():
        prop = properties.get(name)
        row = rows.get((model, name))
        if prop is None or row is None or value is None:
            continue
        path = f"{prefix}{name}"
        reason = _refusal(row, value, context)
        if reason is not None:
            raise unsupported(path, value, reason)
        _walk_value(prop["type"], value, path, context)


def _walk_value(kind: Mapping[str, Any], value: object, path: str, context: SupportContext) -> None:
    if kind["kind"] == "model" and isinstance(value, dict):
        _walk(kind["model"], value, f"{path}.", context)
    elif kind["kind"] == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            _walk_value(kind["items"], item, f"{path}[{index}]", context)
    elif kind["kind"] == "map" and isinstance(value, dict):
        for key, item in value.items():
            _walk_value(kind["values"], item, f"{path}.{key}", context)


def expands_stats(request: web.Request) -> bool:
    """Whether the request asks for ``stats`` (``$expand=stats``) and its ``$select``, if any, keeps them."""
    expand = {part.strip().lower() for part in request.query.get("$expand", "").split(",") if part.strip()}
    selected = {part.strip() for part in request.query.get("$select", "").split(",") if part.strip()}
    return "stats" in expand and (not selected or "stats" in selected)


def check_query(request: web.Request) -> None:
    """Refuse a job's ``$expand=stats`` whose statistics the answer would carry: the emulator keeps none.

    A pool's are answered (`_wire.render_pool_stats`); a job's statistics are all required figures (CPU times,
    I/O), which the emulator does not measure. With a ``$select`` that leaves ``stats`` out nothing is expanded,
    and the request is answered. ``$expand`` values other than ``stats`` are refused the same way: the API defines
    no other.

    Raises:
        ServiceError: 400 ``InvalidQueryParameterValue`` naming ``$expand``.
    """
    value = request.query.get("$expand")
    if value is None or not value.strip():
        return
    expand = {part.strip().lower() for part in value.split(",") if part.strip()}
    if expand == {"stats"} and (request.path.startswith("/pools") or not expands_stats(request)):
        return
    # The code of any query parameter value the service refuses; the refusal itself is the emulator's.
    raise bad_query(
        "$expand",
        value,
        "The aiobatch emulator does not support $expand here: it does not measure a job's statistics "
        "(CPU times, I/O). Leave it out (or $select properties other than stats), or test statistics "
        "against Azure Batch.",
    )


def unknown_user(user_identity: object, pool_spec: Mapping[str, Any]) -> TaskOutcome | None:
    """The failed attempt of a task whose ``userIdentity.username`` is none of its pool's ``userAccounts``, else None.

    As on Azure, the task is accepted (its job's pool may change) and fails when it would run: a user error, with
    nothing run. The code and message are guessed: the REST reference does not list this failure's.
    """
    name = user_identity.get("username") if isinstance(user_identity, dict) else None
    if not isinstance(name, str) or not name:
        return None
    accounts = {
        str(account.get("name")) for account in pool_spec.get("userAccounts") or [] if isinstance(account, dict)
    }
    if name in accounts:
        return None
    now = utcnow()
    failure = FailureInfo(
        "usererror",
        "UserNotFound",  # guessed
        f"The user {name} specified in the task's userIdentity does not exist on the node",  # guessed
        (("UserName", name),),
    )
    return TaskOutcome(now, now, None, failure)


# -- the docs ---------------------------------------------------------------------------------------------------

DOCS_PATH = Path(__file__).resolve().parents[3] / "docs" / "emulator.md"
BEGIN, END = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"


def operations() -> list[tuple[str, str, str, bool]]:
    """(SDK operation, method, path, emulated) of every request builder of the installed azure-batch SDK."""
    import re

    from azure.batch._operations import _operations as sdk

    from ._app import NOT_EMULATED

    def shape(path: str) -> str:
        return re.sub(r"\{[^}]*\}", "{}", path.replace(":.+", ""))

    not_emulated = {(method, shape(path)) for method, path, _ in NOT_EMULATED}
    source = Path(sdk.__file__).read_text(encoding="utf-8")
    found = []
    for builder in re.split(r"^def ", source, flags=re.M)[1:]:
        name = re.match(r"build_batch_(\w+)_request", builder)
        url = re.search(r'_url = "([^"]+)"', builder)
        method = re.search(r'HttpRequest\(method="(\w+)"', builder)
        if name and url and method:
            key = (method.group(1), shape(url.group(1)))
            found.append((name.group(1), method.group(1), url.group(1), key not in not_emulated))
    return sorted(found, key=lambda op: (op[2], op[1]))


def render_docs(rows: Mapping[tuple[str, str], Row], ops: list[tuple[str, str, str, bool]]) -> str:
    """The generated part of docs/emulator.md: the operations, then the properties, by status."""
    counts = {status: sum(1 for r in rows.values() if r.status == status) for status in STATUSES}
    served = sum(1 for op in ops if op[3])
    lines = [
        BEGIN,
        "<!-- generated by `python -m aiobatch.emulator._support` from support_matrix.txt: do not edit -->",
        "",
        f"**Operations**: {served} of {len(ops)} emulated; the others answer 501 `OperationNotEmulated`.",
        "",
        "| operation | request | emulated |",
        "|---|---|---|",
    ]
    lines += [f"| `{name}` | `{method} {path}` | {'yes' if ok else '501'} |" for name, method, path, ok in ops]
    lines += [
        "",
        "**Request properties**: "
        + ", ".join(f"{counts[status]} {status}" for status in STATUSES if counts[status])
        + ".",
        "",
        "| property | status | note |",
        "|---|---|---|",
    ]
    for row in sorted(rows.values(), key=lambda r: (r.model, r.prop)):
        note = row.note.replace("|", "\\|")
        lines.append(f"| `{row.name}` | {row.status} | {note} |")
    lines.append(END)
    return "\n".join(lines)


def updated_docs(text: str) -> str:
    """``text`` (docs/emulator.md) with the generated part between its markers rewritten."""
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + render_docs(matrix(), operations()) + text[stop:]


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check``, compare) the docs' tables; exit status 1 when ``--check`` finds them stale."""
    parser = argparse.ArgumentParser(prog="python -m aiobatch.emulator._support", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the docs instead of writing them")
    parser.add_argument("--docs", type=Path, default=DOCS_PATH, help="the docs file (default: docs/emulator.md)")
    args = parser.parse_args(argv)
    text = args.docs.read_text(encoding="utf-8")
    new = updated_docs(text)
    if args.check:
        print(f"{args.docs}: {'up to date' if new == text else 'stale: run python -m aiobatch.emulator._support'}")
        return 0 if new == text else 1
    args.docs.write_text(new, encoding="utf-8")
    print(f"wrote {args.docs}")
    return 0


__all__ = [
    "CONTAINER_ROWS",
    "STATUSES",
    "SUPPORT_KEY",
    "Row",
    "SupportContext",
    "check_body",
    "check_query",
    "check_task",
    "context_of",
    "expands_stats",
    "main",
    "matrix",
    "operations",
    "parse",
    "render_docs",
    "unknown_user",
    "unsupported",
    "updated_docs",
]


if __name__ == "__main__":
    sys.exit(main())
