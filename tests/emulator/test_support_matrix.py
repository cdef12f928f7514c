"""Issue 16, item 1: the support matrix lists every request property of the installed SDK, and is what happens.

The matrix (``aiobatch/emulator/support_matrix.txt``) is checked against the request models of the committed schema
(``api_schema.json``), and each of those models' writable properties against the installed SDK's model class, read
live: a new SDK's property fails here until it has a row (a new model fails the schema's own test first).

Every refused row, and every value rule of a partial row, is then sent for real -- a JSON body through the
unmodified ``azure.batch.aio.BatchClient``'s pipeline (``send_request``: Shared Key signing, its error mapping)
-- and must come back as the service's 400 naming the property.
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError, StreamConsumedError
from azure.core.rest import HttpRequest

from aiobatch.emulator import Emulator
from aiobatch.emulator import _support as support
from aiobatch.emulator._app import NOT_EMULATED
from aiobatch.emulator._validate import REQUEST_BODIES, schema
from aiobatch.local import TEST_TIMINGS

pytestmark = pytest.mark.anyio

SCHEMA: Any = schema().models

#: A value each partial row's rule refuses (a row with a rule and no probe here fails a test).
PROBES: dict[tuple[str, str], Any] = {
    ("AutoUserSpecification", "elevationLevel"): "admin",
    ("UserAccount", "elevationLevel"): "admin",
    ("BatchJobUpdateOptions", "poolInfo"): {"autoPoolSpecification": {"poolLifetimeOption": "job"}},
    ("BatchJob", "poolInfo"): {"autoPoolSpecification": {"poolLifetimeOption": "job"}},
    ("BatchAutoPoolSpecification", "poolLifetimeOption"): "jobschedule",
}


def _model_of(kind: dict[str, Any]) -> str | None:
    while kind["kind"] in ("list", "map"):
        kind = kind.get("items") or kind["values"]
    return kind["model"] if kind["kind"] == "model" else None


def _writable(model: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, prop in SCHEMA[model]["properties"].items():
        if prop["visibility"] != ["read"]:
            yield name, prop


def request_properties() -> set[tuple[str, str]]:
    """(model, property) of every property a client may write in a request body of the installed SDK."""
    seen: set[str] = set()
    todo = deque(sorted(set(REQUEST_BODIES.values())))
    found = set()
    while todo:
        model = todo.popleft()
        if model in seen:
            continue
        seen.add(model)
        for name, prop in _writable(model):
            found.add((model, name))
            inner = _model_of(prop["type"])
            if inner is not None:
                todo.append(inner)
    return found


def test_the_matrix_lists_every_request_property_of_the_sdk_and_no_other() -> None:
    rows = set(support.matrix())
    sdk = request_properties()
    assert len(sdk) > 400, len(sdk)  # the walk broke if it finds far fewer
    assert not sdk - rows, f"properties the matrix does not list: {sorted(sdk - rows)}"
    assert not rows - sdk, f"rows naming properties the SDK does not have: {sorted(rows - sdk)}"


def test_the_request_models_have_the_installed_sdks_properties() -> None:
    """The schema's request models, property by property, against the SDK's classes (cheap: no source parsing)."""
    from azure.batch.models import _models

    for model in sorted({name for name, _ in request_properties()}):
        cls = getattr(_models, model)
        fields = {}
        for klass in reversed(cls.__mro__):
            for attr, rest in vars(klass).items():
                if not attr.startswith("_") and hasattr(rest, "_rest_name_input"):
                    fields[rest._rest_name_input or attr] = list(rest._visibility or [])
        sdk = {name for name, visibility in fields.items() if visibility != ["read"]}
        assert sdk == {name for name, _ in _writable(model)}, model


def test_every_row_has_a_known_status_and_none_says_silently() -> None:
    for row in support.matrix().values():
        assert row.status in support.STATUSES
        assert "silent" not in row.note.lower(), row
        if row.status in ("refused", "partial", "accepted-not-simulated"):
            assert row.note, f"{row.name}: say why"
    with pytest.raises(ValueError, match="unknown status"):
        support.parse("BatchPoolCreateOptions.id | ignored | \n")
    with pytest.raises(ValueError, match="listed twice"):
        support.parse("A.b | honoured | \nA.b | refused | x\n")


def test_every_value_rule_belongs_to_a_partial_row_and_has_a_probe() -> None:
    rows = support.matrix()
    for key in support._VALUE_RULES:
        assert rows[key].status == "partial", key
        assert key in PROBES, key


def test_the_docs_tables_are_current() -> None:
    assert support.main(["--check"]) == 0, "run: python -m aiobatch.emulator._support"


# -- refusals, for real -------------------------------------------------------------------------------------------

#: Route placeholders filled with ids: the refusal comes before any lookup, so nothing needs to exist.
_IDS = {"{pool}": "p", "{job}": "j", "{task}": "t", "{node}": "n", "{schedule}": "s", "{user}": "u"}

_SAMPLES: dict[str, Any] = {
    "string": "x",
    "int": 1,
    "float": 1.5,
    "bool": True,
    "datetime": "2030-01-01T00:00:00Z",
    "duration": "PT1H",
}


def _sample(kind: dict[str, Any]) -> Any:
    match kind["kind"]:
        case "enum":
            return "x"  # the support check comes before the types: any value that asks for something
        case "model":
            return {}
        case "list":
            return [_sample(kind["items"])]
        case "map":
            return {"k": _sample(kind["values"])}
        case simple:
            return _SAMPLES[simple]


def _wrap(kind: dict[str, Any], inner: Any) -> Any:
    """``inner`` (an object of the model ``kind`` holds) where a property of type ``kind`` puts it."""
    match kind["kind"]:
        case "list":
            return [_wrap(kind["items"], inner)]
        case "map":
            return {"k": _wrap(kind["values"], inner)}
        case _:
            return inner


def _routes() -> list[tuple[str, str, str]]:
    """(method, URL path, root model) of every emulated operation that takes a body."""
    not_emulated = {(method, path) for method, path, _ in NOT_EMULATED}
    out = []
    for (method, route), model in sorted(REQUEST_BODIES.items()):
        if (method, route) in not_emulated or model == "BatchTaskGroup":
            continue
        path = route
        for placeholder, value in _IDS.items():
            path = path.replace(placeholder, value)
        out.append((method, path, model))
    return out


def probe(row: support.Row, value: Any) -> tuple[str, str, dict[str, Any], str]:
    """(method, path, body, expected property path) of a request giving ``row``'s property ``value``.

    The shortest way in from an operation's body through properties that are not themselves refused; for a
    property only a refused one leads to (a mount's account name), the refusal names that ancestor.
    """
    for through_refused in (False, True):
        found = _way_in(row, through_refused)
        if found is not None:
            method, path, steps = found
            body: Any = {row.prop: value}
            names = [row.prop]
            for parent, prop in reversed(steps):
                kind = SCHEMA[parent]["properties"][prop]["type"]
                body = {prop: _wrap(kind, body)}
                suffix = "[0]" if kind["kind"] == "list" else ".k" if kind["kind"] == "map" else ""
                names.insert(0, prop + suffix)
            refused_at = [i for i, step in enumerate(steps) if support.matrix()[step].status == "refused"]
            expected = ".".join(names[: refused_at[0] + 1]) if refused_at else ".".join(names)
            return method, path, body, expected.removesuffix("[0]").removesuffix(".k")
    raise AssertionError(f"no emulated operation takes {row.name}")


def _way_in(row: support.Row, through_refused: bool) -> tuple[str, str, tuple[tuple[str, str], ...]] | None:
    rows = support.matrix()
    queue: deque[tuple[str, str, str, tuple[tuple[str, str], ...]]] = deque(
        (method, path, model, ()) for method, path, model in _routes()
    )
    seen: set[str] = set()
    while queue:
        method, path, model, steps = queue.popleft()
        if model == row.model:
            return method, path, steps
        if model in seen:
            continue
        seen.add(model)
        for name, prop in _writable(model):
            inner = _model_of(prop["type"])
            blocked = rows[(model, name)].status == "refused" or (model, name) in support._VALUE_RULES
            if inner is not None and (through_refused or not blocked):
                queue.append((method, path, inner, (*steps, (model, name))))
    return None


def test_a_row_is_operation_not_emulated_exactly_when_no_emulated_operation_takes_it() -> None:
    """A stale ``operation-not-emulated`` row (its operation emulated since) would hide a property's real status."""
    wrong = [
        f"{row.name}: {row.status}"
        for row in support.matrix().values()
        if row.model != "BatchTaskGroup"  # addtaskcollection's envelope: its tasks are BatchTaskCreateOptions
        and (row.status == "operation-not-emulated") == (_way_in(row, through_refused=True) is not None)
    ]
    assert not wrong, wrong


def refused_cases() -> list[tuple[support.Row, Any]]:
    """Every refused row with a sample value, and every partial row's probe."""
    cases = []
    for key, row in sorted(support.matrix().items()):
        if row.status == "refused":
            kind = SCHEMA[row.model]["properties"][row.prop]["type"]
            cases.append((row, _sample(kind)))
        elif key in support._VALUE_RULES:
            cases.append((row, PROBES[key]))
    return cases


@pytest.fixture
async def batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BatchClient]:
    """A client of an emulator running as a user without admin rights (``os.geteuid`` patched: the test machine
    may run as root, where admin elevation is honoured), so that every refused row is refused."""
    monkeypatch.setattr(support.os, "geteuid", lambda: 1000)
    async with (
        Emulator(workdir=tmp_path / "emulator", timings=TEST_TIMINGS) as emulator,
        BatchClient(emulator.endpoint, emulator.credential) as client,
    ):
        yield client


async def _send(batch: BatchClient, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = HttpRequest(
        method,
        f"{path}?api-version=2025-06-01",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json; odata=minimalmetadata"},
    )
    try:
        response = await batch.send_request(request)
    except HttpResponseError as error:  # the SDK's pipeline raises a Batch error itself
        assert error.response is not None
        response = error.response
    with contextlib.suppress(StreamConsumedError):  # the SDK's error path has read it already
        await response.read()
    return response.status_code, response.json() if response.content else {}


async def test_every_refused_property_is_a_400_naming_it(batch: BatchClient) -> None:
    """One request per refused row (and per partial row's refused value), each told what it gave is unsupported.

    The rows run in one test against one emulator: ~100 emulators would cost more than the requests.
    """
    failures = []
    cases = refused_cases()
    refused_rows = [row for row in support.matrix().values() if row.status == "refused"]
    assert len(cases) >= len(refused_rows) > 50  # every refused row is sent (and the matrix did not go empty)
    for row, value in cases:
        method, path, body, expected = probe(row, value)
        status, answer = await _send(batch, method, path, body)
        found = {pair["key"]: pair["value"] for pair in answer.get("values", [])}
        if (
            status != 400
            or answer.get("code") != "InvalidPropertyValue"
            or found.get("PropertyName") != expected
            or "does not support" not in found.get("Reason", "")
        ):
            failures.append((row.name, method, path, body, status, answer.get("code"), found))
    assert not failures, "\n".join(map(str, failures))


async def test_a_refused_property_in_a_task_collection_fails_that_task_only(batch: BatchClient) -> None:
    """As the service answers a collection: the task that asks for what is unsupported is a clienterror."""
    await _send(
        batch,
        "POST",
        "/pools",
        {
            "id": "p",
            "vmSize": "standard_d2s_v3",
            "virtualMachineConfiguration": {
                "imageReference": {
                    "publisher": "canonical",
                    "offer": "0001-com-ubuntu-server-jammy",
                    "sku": "22_04-lts",
                },
                "nodeAgentSKUId": "batch.node.ubuntu 22.04",
            },
        },
    )
    status, _ = await _send(batch, "POST", "/jobs", {"id": "j", "poolInfo": {"poolId": "p"}})
    assert status == 201
    tasks = [
        {"id": "ok", "commandLine": "true"},
        {
            "id": "mpi",
            "commandLine": "true",
            "multiInstanceSettings": {"numberOfInstances": 2, "coordinationCommandLine": "true"},
        },
    ]
    status, answer = await _send(batch, "POST", "/jobs/j/addtaskcollection", {"value": tasks})
    assert status == 200
    results = {r["taskId"]: r for r in answer["value"]}
    assert results["ok"]["status"] == "success"
    assert results["mpi"]["status"] == "clienterror"
    values = {pair["key"]: pair["value"] for pair in results["mpi"]["error"]["values"]}
    assert values["PropertyName"] == "multiInstanceSettings"


async def test_asking_for_nothing_is_not_refused(batch: BatchClient) -> None:
    """null, false and an empty list ask for nothing: a refused property given so passes."""
    status, answer = await _send(
        batch,
        "POST",
        "/jobs",
        {"id": "j", "poolInfo": {"poolId": "p"}, "allowTaskPreemption": False, "usesTaskDependencies": None},
    )
    assert status == 201, answer


async def test_expand_stats_is_answered_for_pools_and_refused_for_jobs(batch: BatchClient) -> None:
    """``$expand=stats`` was ignored. A pool's stats hold the period only (their figures are optional in the API
    and not measured here); a job's are all required figures (CPU times, I/O) the emulator does not measure, so
    it is a 400 naming ``$expand``, unless ``$select`` leaves stats out and nothing would be expanded."""
    await batch.create_pool(
        m.BatchPoolCreateOptions(
            id="p",
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=m.VirtualMachineConfiguration(
                image_reference=m.BatchVmImageReference(
                    publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
                ),
                node_agent_sku_id="batch.node.ubuntu 22.04",
            ),
        )
    )
    pool = await batch.get_pool("p", expand=["stats"])
    stats = pool.pool_statistics
    assert stats is not None and pool.url is not None and stats.url == f"{pool.url}/stats"
    assert stats.start_time == pool.creation_time and stats.last_update_time >= stats.start_time
    assert stats.usage_statistics is None and stats.resource_statistics is None
    listed = [p async for p in batch.list_pools(expand=["stats"])]
    assert listed[0].pool_statistics is not None
    assert (await batch.get_pool("p")).pool_statistics is None

    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    with pytest.raises(HttpResponseError) as caught:
        await batch.get_job("j", expand=["stats"])
    error = caught.value
    assert error.status_code == 400 and error.error is not None and error.error.code == "InvalidQueryParameterValue"
    assert error.response is not None
    values = {pair["key"]: pair["value"] for pair in error.response.json()["values"]}
    assert values["QueryParameterName"] == "$expand" and "does not support" in values["Reason"]
    with pytest.raises(HttpResponseError) as caught:
        [j async for j in batch.list_jobs(expand=["stats"])]
    assert caught.value.status_code == 400
    assert [j.id async for j in batch.list_jobs(select=["id"], expand=["stats"])] == ["j"]
