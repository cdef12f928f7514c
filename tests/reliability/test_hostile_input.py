"""Issue 11, clause 11: hostile input gets a 4xx with a Batch error body, never a 500, a stall or a change of state.

Hypothesis throws generated requests at every route of the emulator's route table (read from its router, so a new
route is covered without being listed here), signed with Shared Key so that they reach the handlers:

- bodies: the schema's own models with one property, at any depth, replaced by a value of another type, a string
  with NUL or control characters, ``null`` or deep nesting; arbitrary JSON; bytes that are not JSON, not UTF-8,
  nested 50,000 deep, or ``NaN``;
- ids in the URL: any text (percent-encoded), dot segments, encoded NUL and slashes, up to 2,000 characters (longer
  request lines are refused by aiohttp's HTTP parser, before the application, with a plain 400);
- query strings: ``$filter``, ``$select``, ``maxresults``, ``timeout``, ``recursive``, ``$skiptoken`` and
  ``api-version`` with hostile values; headers ``If-Match``, ``If-None-Match``, ``ocp-range``.

For each example: the answer is a 4xx with a Batch (OData) error body, or a 2xx/304 for a request that happened to
be valid and harmless; the server still answers ``GET /pools`` within 5 s; and a refused request left the account
as it was (every pool, job and task spec, and the record of what was ever created or deleted).

The account holds a pool with no core quota, so no generated task can ever run. The task-file routes are fuzzed
in a test of their own against an emulator with a node and a finished task, since those handlers are being
hardened separately: a failure there is visible on its own.

The example budget is fixed and small in CI; ``AIOBATCH_SOAK=1`` (``nox -s soak``) runs a larger one. Examples
are drawn from the session's seed.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from yarl import URL

from aiobatch.emulator import Emulator, Quotas, Timings
from aiobatch.emulator._app import NOT_EMULATED, NOT_EMULATED_STATUS
from aiobatch.emulator._validate import REQUEST_BODIES, schema
from emulator._routes import app_routes
from emulator._shared_key import signature

from .conftest import Scale

pytestmark = pytest.mark.clause(11)

T = TypeVar("T")
API = "2025-06-01"
UBUNTU = {
    "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"},
    "nodeAgentSKUId": "batch.node.ubuntu 22.04",
}
#: A valid body of each model the routes take: what a mutation starts from.
TEMPLATES: dict[str, dict[str, Any]] = {
    "BatchPoolCreateOptions": {"id": "fz", "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": UBUNTU},
    "BatchPoolUpdateOptions": {"metadata": [{"name": "a", "value": "b"}]},
    "BatchPoolReplaceOptions": {"applicationPackageReferences": [], "metadata": []},
    "BatchPoolResizeOptions": {"targetDedicatedNodes": 0},
    "BatchPoolEnableAutoScaleOptions": {
        "autoScaleFormula": "$TargetDedicatedNodes = 0;",
        "autoScaleEvaluationInterval": "PT5M",
    },
    "BatchPoolEvaluateAutoScaleOptions": {"autoScaleFormula": "$TargetDedicatedNodes = 0;"},
    "BatchJobCreateOptions": {"id": "fz", "poolInfo": {"poolId": "p"}},
    "BatchJobUpdateOptions": {"priority": 1},
    "BatchJob": {"poolInfo": {"poolId": "p"}},
    "BatchJobTerminateOptions": {"terminateReason": "fuzz"},
    "BatchTaskCreateOptions": {"id": "fz", "commandLine": "/bin/true"},
    "BatchTaskGroup": {"value": [{"id": "fz", "commandLine": "/bin/true"}]},
    # Bodies of operations the emulator does not perform (their answer is 501, see check_one).
    "BatchNodeRemoveOptions": {"nodeList": ["n"]},
    "BatchJobDisableOptions": {"disableTasks": "requeue"},
    "BatchJobScheduleCreateOptions": {"id": "fz", "schedule": {}, "jobSpecification": {"poolInfo": {"poolId": "p"}}},
    "BatchJobScheduleUpdateOptions": {"metadata": []},
    "BatchJobSchedule": {"jobSpecification": {"poolInfo": {"poolId": "p"}}},
    "BatchTask": {"constraints": {"maxTaskRetryCount": 1}},
    "BatchNodeUserCreateOptions": {"name": "u"},
    "BatchNodeUserReplaceOptions": {"password": "x"},
    "BatchNodeRebootOptions": {"nodeRebootOption": "requeue"},
    "BatchNodeReimageOptions": {"nodeReimageOption": "requeue"},
    "BatchNodeDeallocateOptions": {"nodeDeallocateOption": "requeue"},
    "BatchNodeDisableSchedulingOptions": {"nodeDisableSchedulingOption": "requeue"},
    "UploadBatchServiceLogsOptions": {"containerUrl": "https://x.blob/c", "startTime": "2025-01-01T00:00:00Z"},
}
POOL = {"id": "p", "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": UBUNTU}
TASK = {"id": "t", "commandLine": "/bin/sh -c 'echo out; echo err >&2'"}
#: Routes whose operation the emulator does not perform: a valid request to them answers 501 (final, never retried;
#: see `_app.NOT_EMULATED_STATUS`), the one 5xx this test accepts, and only there.
NOT_EMULATED_ROUTES = frozenset((method, re.sub(r":[^}]*", "", path)) for method, path, _ in NOT_EMULATED)
QUERY_NAMES = ("$filter", "$select", "maxresults", "timeout", "recursive", "$skiptoken", "api-version")


# --- the server, on an event loop of its own ---------------------------------------------------------------------


class LoopThread:
    """An event loop in a thread: hypothesis drives synchronous examples, the emulator needs a running loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hostile-input-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop and return its result."""

        async def wrapped() -> T:
            return await coro

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Target:
    """A running emulator, a session to it and the ids that exist in it."""

    loop: LoopThread
    emulator: Emulator
    session: aiohttp.ClientSession
    known: dict[str, str]
    unsettled: bool = False
    outcomes: Counter[str] = field(default_factory=Counter)

    async def create(self, path: str, body: dict[str, Any]) -> None:
        """POST a valid create body; it must be accepted."""
        status, raw = await self.request("POST", path, query=f"api-version={API}", body=json.dumps(body).encode())
        assert status == 201, raw

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send one Shared Key-signed request (path and query already percent-encoded)."""
        url = f"{self.emulator.endpoint}{path}" + (f"?{query}" if query else "")
        sent = {"ocp-date": format_datetime(dt.datetime.now(dt.timezone.utc), usegmt=True), **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json; odata=minimalmetadata"
        to_sign = dict(sent)
        if method not in ("GET", "HEAD"):
            to_sign["Content-Length"] = str(len(body or b""))
        key = self.emulator.credential.named_key.key
        sent["Authorization"] = signature(method, url, to_sign, self.emulator.account_name, key)
        # encoded=True: the path goes out byte for byte as generated (yarl would otherwise re-encode and normalize it).
        async with self.session.request(
            method, URL(url, encoded=True), data=body, headers=sent, allow_redirects=False
        ) as response:
            raw = await response.read()
            return response.status, raw


def state(emulator: Emulator) -> tuple[Any, ...]:
    """What a refused request must not change: specs of pools, jobs and tasks, and the create/delete record."""
    account = emulator.account
    assert account is not None

    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    return (
        sorted(
            (p.id, p.state, dump(p.spec), p.target_dedicated, p.target_low_priority) for p in account.pools.values()
        ),
        sorted((j.id, j.state, dump(j.spec), j.pool_id) for j in account.jobs.values()),
        sorted((j.id, t.id, dump(t.spec)) for j in account.jobs.values() for t in j.tasks.values()),
        sorted(account.created.items()),
        sorted(account.deleted.items()),
    )


def busy(emulator: Emulator) -> bool:
    """Whether something an accepted request started is still under way (a deletion, a resize, a termination)."""
    account = emulator.account
    assert account is not None
    return any(p.state != "active" or p.allocation_state != "steady" for p in account.pools.values()) or any(
        j.state not in ("active", "completed") for j in account.jobs.values()
    )


async def settle(target: Target) -> None:
    """Wait (bounded) until the account stops changing on its own, then bring back pool p, job j and task t."""
    for _ in range(500):
        if not busy(target.emulator):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the account kept changing for 5 s after an accepted request")
    account = target.emulator.account
    assert account is not None
    if "p" not in account.pools:
        await target.create("/pools", POOL)
    if "j" not in account.jobs:
        await target.create("/jobs", {"id": "j", "poolInfo": {"poolId": "p"}})
    if account.jobs["j"].state == "active" and "t" not in account.jobs["j"].tasks:
        await target.create("/jobs/j/tasks", TASK)
    for _ in range(500):
        if not busy(target.emulator):
            return
        await asyncio.sleep(0.01)


def _start(tmp: Path, *, with_node: bool) -> Iterator[Target]:
    loop = LoopThread()
    # No core quota: no node is ever allocated, so no task a generated body creates can run.
    quotas = Quotas() if with_node else Quotas(dedicated_cores=0, low_priority_cores=0)
    emulator = Emulator(
        workdir=tmp / "emulator",
        timings=Timings(allocation_delay=0.1, node_start_delay=0.05, deletion_delay=0.05),
        quotas=quotas,
    )

    async def open_() -> Target:
        await emulator.start()
        target = Target(loop, emulator, aiohttp.ClientSession(), {})
        await target.create("/pools", {**POOL, "targetDedicatedNodes": 1 if with_node else 0})
        await target.create("/jobs", {"id": "j", "poolInfo": {"poolId": "p"}})
        await target.create("/jobs/j/tasks", TASK)
        target.known = {"pool": "p", "job": "j", "task": "t"}
        if with_node:
            account = emulator.account
            assert account is not None
            for _ in range(500):  # the task runs and finishes: its files exist
                task = account.jobs["j"].tasks["t"]
                if task.state == "completed":
                    break
                await asyncio.sleep(0.02)
            assert account.jobs["j"].tasks["t"].state == "completed"
            target.known["node"] = next(iter(account.pools["p"].nodes.values())).id
        return target

    target = loop.run(open_())
    try:
        yield target
    finally:

        async def close() -> None:
            await target.session.close()
            await emulator.stop()

        loop.run(close())
        loop.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """An emulator holding pool ``p`` (no quota, no nodes), job ``j`` and task ``t`` (never run)."""
    yield from _start(tmp_path_factory.mktemp("hostile"), with_node=False)


@pytest.fixture(scope="module")
def files_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """An emulator whose task ``j``/``t`` ran on a node and left its files."""
    yield from _start(tmp_path_factory.mktemp("hostile-files"), with_node=True)


# --- strategies ----------------------------------------------------------------------------------------------


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, small."""
    leaves = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | hostile_text()
    )
    return st.recursive(
        leaves,
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
        max_leaves=8,
    )


def hostile_text() -> st.SearchStrategy[str]:
    """Strings a careless or hostile caller sends: control characters, surrogates, very long, empty."""
    return st.one_of(
        st.text(max_size=24),
        st.sampled_from(["", "\x00", "a\x00b", "\x1b[2J", "\t\n\r", "\ud800", "=", "a=b", "../..", "/etc/passwd"]),
        # Digits that are not ASCII: "²" passes str.isdigit() but not int(); a fullwidth one passes both.
        st.sampled_from(["\u00b2", "1\u00b2", "\uff11", "\u0663", "-1", "0", "1e3", "2147483648", "9" * 20]),
        st.integers(min_value=65, max_value=6000).map(lambda n: "x" * n),
    )


def deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def replacement() -> st.SearchStrategy[Any]:
    """A value to put where a property was."""
    return st.one_of(
        json_values(),
        hostile_text(),
        st.integers(min_value=2**31, max_value=2**64),
        st.integers(min_value=60, max_value=70).map(deep),
        st.sampled_from([None, True, 1.5, [], {}, [None], [1], ["x"], {"a": 1}]),
    )


@st.composite
def mutated(draw: st.DrawFn, model: str) -> Any:
    """A valid body of ``model`` with one property, at a depth the schema allows, replaced."""
    models = schema().models
    body = copy.deepcopy(TEMPLATES[model])
    node: Any = body
    current = model
    for _ in range(4):
        props = sorted(p for p, spec in models[current]["properties"].items() if spec["visibility"] != ["read"])
        if not props:
            break
        name = draw(st.sampled_from(props))
        kind = models[current]["properties"][name]["type"]
        inner = kind["items"] if kind["kind"] == "list" else kind
        if inner["kind"] == "model" and draw(st.booleans()):
            child = node.get(name)
            if kind["kind"] == "list":
                if not isinstance(child, list) or not child or not isinstance(child[0], dict):
                    child = node[name] = [{}]
                node = child[0]
            else:
                if not isinstance(child, dict):
                    child = node[name] = {}
                node = child
            current = inner["model"]
            continue
        node[name] = draw(replacement())
        return body
    return body


def raw_bodies() -> st.SearchStrategy[bytes]:
    """Bodies that are not (usable) JSON."""
    return st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                b"[" * 50_000 + b"]" * 50_000,
                b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,
                b'{"id": NaN}',
                b'{"id": "p", "targetDedicatedNodes": 1e999}',
                b'{"id": ' + b"9" * 5000 + b"}",
                b'{"id": "\xff\xfe"}',
                b'{"id": "p"',
                b"null",
                b"[]",
                b'"text"',
                b"  ",
            ]
        ),
    )


@st.composite
def bodies(draw: st.DrawFn, model: str | None) -> bytes | None:
    choice = draw(st.integers(0, 3))
    if model is not None and choice <= 1:
        return json.dumps(draw(mutated(model))).encode()
    if choice == 2:
        return json.dumps(draw(json_values())).encode()
    if choice == 3:
        return draw(raw_bodies()) or None  # an empty body is no body
    return None


def hostile_ids() -> st.SearchStrategy[str]:
    """Ids for URL segments, percent-encoded."""
    return st.one_of(
        st.text(min_size=1, max_size=40).map(lambda s: quote(s, safe="")),
        st.sampled_from(["..", ".", "%2e%2e", "%00", "a%00b", "%2F", "a%2Fb", "%ff", "%25", "%20", "~", "%0d%0a"]),
        st.integers(min_value=65, max_value=2000).map(lambda n: "x" * n),
    )


@st.composite
def queries(draw: st.DrawFn) -> str:
    params = draw(st.dictionaries(st.sampled_from(QUERY_NAMES), hostile_text().map(lambda s: s[:300]), max_size=3))
    if "api-version" not in params or draw(st.integers(0, 4)) > 0:
        params["api-version"] = API
    return "&".join(
        f"{quote(k, safe='$')}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in params.items()
    )


def headers() -> st.SearchStrategy[dict[str, str]]:
    # Stripped: the server strips a header's surrounding blanks, which the signature would then not cover.
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).map(str.strip)
    return st.dictionaries(st.sampled_from(["If-Match", "If-None-Match", "ocp-range"]), printable, max_size=2)


@st.composite
def requests(draw: st.DrawFn, routes: list[tuple[str, str]], known: dict[str, str]) -> tuple[str, str, str, Any, bool]:
    """(method, path, query, body-and-headers, whether the route is not emulated) for one of ``routes``."""
    method, template = draw(st.sampled_from(routes))
    # Every placeholder of the template, whatever its name (a new route's too): a file path for {path}, else an
    # id that exists (half the time, when there is one) or a hostile one.
    segments: dict[str, str] = {}
    for name in re.findall(r"\{(\w+)[^}]*\}", template):
        if name == "path":
            segments[name] = draw(file_paths())
        elif name in known and draw(st.booleans()):
            segments[name] = known[name]
        else:
            segments[name] = draw(hostile_ids())
    path = re.sub(r"\{(\w+)[^}]*\}", lambda match: segments[match.group(1)], template)
    # GET and HEAD go without a body (as every client sends them); any other method may carry one it ignores.
    body = None if method in ("GET", "HEAD") else draw(bodies(REQUEST_BODIES.get((method, template))))
    return method, path, draw(queries()), (body, draw(headers())), (method, template) in NOT_EMULATED_ROUTES


def file_paths() -> st.SearchStrategy[str]:
    """File paths in a task's directory, percent-encoded: real files, traversal, NUL, very long names."""
    return st.one_of(
        st.sampled_from(["stdout.txt", "stderr.txt", "wd", "wd/", "./stdout.txt", "..", "../..", "%2e%2e/%2e%2e"]),
        st.sampled_from(["stdout.txt%00", "%00", "a%00b", "wd/%00", "..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "%ff"]),
        st.integers(min_value=200, max_value=2000).map(lambda n: "n" * n),
        st.lists(st.text(min_size=1, max_size=12).map(lambda s: quote(s, safe="")), min_size=1, max_size=4).map(
            "/".join
        ),
    )


# --- the property --------------------------------------------------------------------------------------------


def check_one(
    target: Target,
    method: str,
    path: str,
    query: str,
    extra: tuple[bytes | None, dict[str, str]],
    not_emulated: bool = False,
) -> None:
    body, sent_headers = extra

    async def exchange() -> tuple[int, bytes, int, Any, Any]:
        if target.unsettled:
            await settle(target)
        before = state(target.emulator)
        status, raw = await target.request(method, path, query=query, body=body, headers=sent_headers)
        after = state(target.emulator)
        # No stall: the server answers the next request promptly (asyncio.wait_for: Python 3.10 has no timeout()).
        ping, _ = await asyncio.wait_for(target.request("GET", "/pools", query=f"api-version={API}"), 5)
        return status, raw, ping, before, after

    status, raw, ping, before, after = target.loop.run(exchange())
    # An accepted request may set things moving (a deletion, a resize): the next example waits for them to end.
    target.unsettled = status < 400
    shown = f"{method} {path[:200]}?{query[:200]} body={(body or b'')[:200]!r} headers={sent_headers}"
    # The service's own throttle is the other 5xx: a second enableautoscale within 30 s is its 503.
    throttled = status == 503 and path.endswith("/enableautoscale") and b"TooManyEnableAutoScaleRequests" in raw
    assert status < 500 or throttled or (not_emulated and status == NOT_EMULATED_STATUS), (
        f"{status} for {shown}: {raw[:500]!r}"
    )
    assert ping == 200, f"GET /pools answered {ping} after {shown}"
    if status >= 400:
        try:
            error = json.loads(raw) if method != "HEAD" else {}
        except ValueError:
            raise AssertionError(f"{status} without a Batch error body for {shown}: {raw[:300]!r}") from None
        target.outcomes[f"{status} {error.get('code', '')}".strip()] += 1
        if method != "HEAD":
            assert isinstance(error.get("code"), str) and isinstance(error["message"]["value"], str), raw[:300]
        assert before == after, f"a refused request changed the account: {shown}"
    else:
        target.outcomes[str(status)] += 1
        assert status in (200, 201, 202, 204, 304), f"{status} for {shown}"


def run_property(
    scale: Scale, session_seed: int, routes: list[tuple[str, str]], target: Target, ci: int, soak: int
) -> None:
    budget = scale.pick(ci, soak)

    @hypothesis_seed(session_seed)
    @settings(
        max_examples=budget,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(request=requests(routes, target.known))
    def hostile(request: tuple[str, str, str, Any, bool]) -> None:
        check_one(target, *request)

    hostile()
    # Which answers the examples got (pytest shows it with -s, or with a failure): evidence they reached handlers.
    print("answers:", ", ".join(f"{k} x{n}" for k, n in target.outcomes.most_common()))


def test_hostile_requests_to_every_route_get_a_4xx_and_change_nothing(target: Target, scale: Scale, seed: int) -> None:
    routes = [route for route in app_routes() if "/files" not in route[1]]
    assert len(routes) >= 25, routes
    run_property(scale, seed, routes, target, ci=500, soak=5000)


def test_hostile_file_paths_get_a_4xx(files_target: Target, scale: Scale, seed: int) -> None:
    """The task-file routes, with traversal, NUL, very long and odd names (hardened in their own branch)."""
    routes = [route for route in app_routes() if "/files" in route[1]]
    assert routes
    run_property(scale, seed, routes, files_target, ci=200, soak=2000)
