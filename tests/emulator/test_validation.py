"""Issue 11: request bodies are checked against the 2025-06-01 types before anything is stored (`_validate`).

One test per reproduced finding, driving the unmodified ``azure.batch.aio.BatchClient``: its models are mappings
that serialize whatever they hold, so it sends a list where a string belongs as readily as a caller's bug would.
Only the 50,000-deep body goes as raw signed HTTP (the SDK's own ``json.dumps`` cannot encode it). Each refusal is
the service's 400 naming the property by its full path, and the account is left as it was.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError

from aiobatch.emulator import Emulator, _app, _schema_gen, _validate

from ._routes import app_routes
from ._shared_key import JSON_TYPE, rfc1123, send, signature

pytestmark = pytest.mark.anyio

UBUNTU = {
    "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"},
    "nodeAgentSKUId": "batch.node.ubuntu 22.04",
}
POOL = {"id": "p", "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": UBUNTU}


@pytest.fixture
async def batch(batch_emulator: Emulator) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as client:
        yield client


def state(emulator: Emulator) -> tuple[Any, ...]:
    """What a refused request must not change: every pool, job and task, with its ETag."""
    account = emulator.account
    assert account is not None
    return (
        sorted((p.id, p.etag) for p in account.pools.values()),
        sorted((j.id, j.etag, j.pool_id) for j in account.jobs.values()),
        sorted((j.id, t.id, t.etag) for j in account.jobs.values() for t in j.tasks.values()),
    )


async def refused(call: Any) -> HttpResponseError:
    """The error a call ends with; it must be a 400."""
    with pytest.raises(HttpResponseError) as caught:
        await call
    assert caught.value.status_code == 400, caught.value
    return caught.value


def detail(error: HttpResponseError, key: str) -> str | None:
    """One of the error body's ``values`` (``PropertyName``, ``Reason``, ...)."""
    assert error.response is not None
    values = {pair["key"]: pair["value"] for pair in error.response.json().get("values", [])}
    return values.get(key)


async def test_a_body_that_is_not_an_object_is_an_invalid_request_body(
    batch: BatchClient, batch_emulator: Emulator
) -> None:
    """A JSON list, a string or ``null`` for a pool, job or task answered 500 (AttributeError)."""
    await batch.create_pool(m.BatchPoolCreateOptions(POOL))
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    before = state(batch_emulator)
    for body in ([1, 2], "a string", None):
        for call in (
            batch.create_pool(body),  # type: ignore[arg-type]
            batch.create_job(body),  # type: ignore[arg-type]
            batch.create_task("j", body),  # type: ignore[arg-type]
            batch.update_job("j", body),  # type: ignore[arg-type]
            batch.update_pool("p", body),  # type: ignore[arg-type]
            batch.replace_pool_properties("p", body),  # type: ignore[arg-type]
        ):
            error = await refused(call)
            assert error.error is not None and error.error.code == "InvalidRequestBody"
    assert state(batch_emulator) == before


async def test_a_job_whose_pool_id_is_a_list_is_refused_at_the_door(
    batch: BatchClient, batch_emulator: Emulator
) -> None:
    """``poolInfo.poolId`` as a JSON list was accepted with 201, then killed the scheduler's dispatcher."""
    job = m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id=["p"]))  # type: ignore[arg-type]
    error = await refused(batch.create_job(job))
    assert error.error is not None and error.error.code == "InvalidPropertyValue"
    assert detail(error, "PropertyName") == "poolInfo.poolId"
    assert state(batch_emulator) == ([], [], [])


@pytest.mark.parametrize(
    ("kind", "body", "path"),
    [
        ("job", {"id": "j", "poolInfo": {"poolId": "p"}, "constraints": "soon"}, "constraints"),
        ("job", {"id": "j", "poolInfo": "p"}, "poolInfo"),
        ("job", {"id": "j", "poolInfo": {"poolId": "p"}, "priority": "high"}, "priority"),
        ("job", {"id": "j", "poolInfo": {"poolId": "p"}, "metadata": {"a": "b"}}, "metadata"),
        ("job", {"id": "j", "poolInfo": {"poolId": "p"}, "metadata": [{"name": "a", "value": 1}]}, "metadata[0].value"),
        ("job", {"id": "j", "poolInfo": {"poolId": "p"}, "constraints": {"maxTaskRetryCount": 2**40}}, None),
        ("pool", {**POOL, "targetDedicatedNodes": "2"}, "targetDedicatedNodes"),
        ("pool", {**POOL, "virtualMachineConfiguration": ["x"]}, "virtualMachineConfiguration"),
        ("pool", {**POOL, "startTask": {"commandLine": "true", "environmentSettings": [None]}}, None),
        ("pool", {**POOL, "metadata": [["name", "value"]]}, "metadata[0]"),
        ("pool", {**POOL, "enableInterNodeCommunication": "yes"}, "enableInterNodeCommunication"),
        ("task", {"id": "t", "commandLine": "true", "environmentSettings": {"A": "1"}}, "environmentSettings"),
        ("task", {"id": "t", "commandLine": "true", "resourceFiles": ["https://x/y"]}, "resourceFiles[0]"),
        ("task", {"id": "t", "commandLine": "true", "constraints": {"maxWallClockTime": 5}}, None),
        ("task", {"id": "t", "commandLine": ["true"]}, "commandLine"),
        ("task", {"id": 7, "commandLine": "true"}, "id"),
        ("task", {"id": "t", "commandLine": "true", "requiredSlots": 1.5}, "requiredSlots"),
        ("task", {"id": "t", "commandLine": "true", "userIdentity": {"autoUser": {"scope": "galaxy"}}}, None),
    ],
)
async def test_a_property_of_the_wrong_type_is_an_invalid_property_value_naming_its_path(
    batch: BatchClient, batch_emulator: Emulator, kind: str, body: dict[str, Any], path: str | None
) -> None:
    """About 40 such bodies answered 500 (AttributeError, ValueError) or were stored as sent."""
    await batch.create_pool(m.BatchPoolCreateOptions({**POOL, "id": "base"}))
    await batch.create_job(m.BatchJobCreateOptions(id="base", pool_info=m.BatchPoolInfo(pool_id="base")))
    before = state(batch_emulator)
    # The SDK's operations take a JSON mapping as well as a model, and send it as given.
    if kind == "pool":
        error = await refused(batch.create_pool(body))  # type: ignore[arg-type]
    elif kind == "job":
        error = await refused(batch.create_job(body))  # type: ignore[arg-type]
    else:
        error = await refused(batch.create_task("base", body))  # type: ignore[arg-type]
    assert error.error is not None and error.error.code == "InvalidPropertyValue", error
    name = detail(error, "PropertyName")
    if path is not None:
        assert name == path
    assert name and detail(error, "Reason")
    assert state(batch_emulator) == before


async def test_a_missing_required_property_is_named_with_its_path(batch: BatchClient) -> None:
    await batch.create_pool(m.BatchPoolCreateOptions(POOL))
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    error = await refused(batch.create_pool(m.BatchPoolCreateOptions({"id": "q"})))
    assert error.error is not None and error.error.code == "MissingRequiredProperty"
    assert detail(error, "PropertyName") == "vmSize"
    output = {"filePattern": "*.txt", "destination": {"container": {"containerUrl": "https://x/c"}}}
    task = m.BatchTaskCreateOptions({"id": "t", "commandLine": "true", "outputFiles": [output]})
    error = await refused(batch.create_task("j", task))
    assert detail(error, "PropertyName") == "outputFiles[0].uploadOptions"


async def test_a_wrongly_typed_task_in_a_collection_refuses_the_request_naming_it(
    batch: BatchClient, batch_emulator: Emulator
) -> None:
    """The property is named from the body's root: ``value[3].constraints.maxTaskRetryCount``."""
    await batch.create_pool(m.BatchPoolCreateOptions(POOL))
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    tasks = [{"id": f"t{i}", "commandLine": "true"} for i in range(5)]
    tasks[3]["constraints"] = {"maxTaskRetryCount": "3"}
    before = state(batch_emulator)
    error = await refused(batch.create_task_collection("j", m.BatchTaskGroup({"value": tasks})))
    assert detail(error, "PropertyName") == "value[3].constraints.maxTaskRetryCount"
    assert state(batch_emulator) == before, "no task of a refused collection is added"


async def test_nul_in_a_command_line_or_an_environment_variable_name_is_refused(
    batch: BatchClient, batch_emulator: Emulator
) -> None:
    """Both were accepted with 201 and stored."""
    await batch.create_pool(m.BatchPoolCreateOptions(POOL))
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    before = state(batch_emulator)
    error = await refused(batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="echo a\x00b")))
    assert detail(error, "PropertyName") == "commandLine"
    env = [m.EnvironmentSetting(name="A\x00B", value="1")]
    task = m.BatchTaskCreateOptions(id="t", command_line="true", environment_settings=env)
    error = await refused(batch.create_task("j", task))
    assert detail(error, "PropertyName") == "environmentSettings[0].name"
    env = [m.EnvironmentSetting(name="A=B", value="1")]
    task = m.BatchTaskCreateOptions(id="t", command_line="true", environment_settings=env)
    error = await refused(batch.create_task("j", task))
    assert detail(error, "PropertyName") == "environmentSettings[0].name"
    start = m.BatchStartTask(command_line="true", resource_files=[m.ResourceFile(http_url="https://x/\x01")])
    error = await refused(batch.create_pool(m.BatchPoolCreateOptions({**POOL, "id": "q", "startTask": start})))
    assert detail(error, "PropertyName") == "startTask.resourceFiles[0].httpUrl"
    assert state(batch_emulator) == before


async def test_json_nested_50000_deep_is_an_invalid_request_body(batch_emulator: Emulator) -> None:
    """It answered 500 (RecursionError). Raw signed HTTP: the SDK's own json.dumps cannot encode such a body."""
    deep = b'{"id": "p", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    key = batch_emulator.credential.named_key.key
    async with aiohttp.ClientSession() as session:
        for path in ("/pools", "/jobs"):
            url = f"{batch_emulator.endpoint}{path}?api-version=2025-06-01"
            status, _, body = await send(session, "POST", url, account=batch_emulator.account_name, key=key, body=deep)
            assert status == 400 and body["code"] == "InvalidRequestBody"
        nan = b'{"id": "p", "vmSize": "a", "targetDedicatedNodes": NaN}'
        url = f"{batch_emulator.endpoint}/pools?api-version=2025-06-01"
        status, _, body = await send(session, "POST", url, account=batch_emulator.account_name, key=key, body=nan)
        assert status == 400 and body["code"] == "InvalidRequestBody"
    assert state(batch_emulator) == ([], [], [])


async def test_a_body_over_the_size_limit_is_a_413_with_a_batch_error_body(batch_emulator: Emulator) -> None:
    """aiohttp refused it itself, with a plain-text answer no Batch client can read as an error."""
    big = b'{"id": "p", "displayName": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    url = f"{batch_emulator.endpoint}/pools?api-version=2025-06-01"
    headers = {"ocp-date": rfc1123(dt.datetime.now(dt.timezone.utc)), "Content-Type": JSON_TYPE}
    to_sign = {**headers, "Content-Length": str(len(big))}
    key = batch_emulator.credential.named_key.key
    headers["Authorization"] = signature("POST", url, to_sign, batch_emulator.account_name, key)
    async with aiohttp.ClientSession() as session, session.post(url, data=io.BytesIO(big), headers=headers) as answer:
        status, body = answer.status, await answer.json(content_type=None)
    assert status == 413 and body["code"] == "RequestBodyTooLarge"


async def test_enumerations_compare_without_case_and_refuse_unknown_values(batch: BatchClient) -> None:
    await batch.create_pool(m.BatchPoolCreateOptions({**POOL, "taskSchedulingPolicy": {"nodeFillType": "PACK"}}))
    job = {"id": "j", "poolInfo": {"poolId": "p"}, "onAllTasksComplete": "TerminateJob"}
    await batch.create_job(m.BatchJobCreateOptions(job))
    assert (await batch.get_job("j")).all_tasks_complete_mode == m.BatchAllTasksCompleteMode.TERMINATE_JOB
    error = await refused(batch.create_job(m.BatchJobCreateOptions({**job, "id": "k", "onTaskFailure": "panic"})))
    assert detail(error, "PropertyName") == "onTaskFailure"


async def test_malformed_query_parameters_are_refused(batch_emulator: Emulator) -> None:
    key = batch_emulator.credential.named_key.key
    async with aiohttp.ClientSession() as session:
        # "²" (percent-encoded) passes str.isdigit() but not int(): maxresults and $skiptoken answered 500.
        for query in ("timeout=soon", "timeout=-1", "recursive=perhaps", "maxresults=%C2%B2", "$skiptoken=%C2%B2"):
            url = f"{batch_emulator.endpoint}/pools?api-version=2025-06-01&{query}"
            status, _, body = await send(session, "GET", url, account=batch_emulator.account_name, key=key)
            assert status == 400 and body["code"] == "InvalidQueryParameterValue", query


async def test_an_unexpected_error_is_a_logged_500_with_a_batch_error_body(
    batch: BatchClient, batch_emulator: Emulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A remaining bug answers as the service answers its own failures, not with a dropped connection.

    The fault is shaped by replacing one rendering function with one that raises.
    """
    await batch.create_pool(m.BatchPoolCreateOptions(POOL))
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))

    def broken(job: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(_app.wire, "render_task_counts", broken)
    with caplog.at_level(logging.ERROR, logger="aiobatch.emulator"), pytest.raises(HttpResponseError) as caught:
        await batch.get_job_task_counts("j", retry_total=0)
    assert caught.value.status_code == 500 and caught.value.error is not None
    assert caught.value.error.code == "InternalServerError"
    assert any("a bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    monkeypatch.undo()
    assert (await batch.get_job_task_counts("j")).task_counts.active == 0


def test_every_operation_with_a_body_has_a_model() -> None:
    """A new POST/PUT/PATCH route cannot slip past the layer: it has a body model or is known to take none."""
    bodiless = {
        ("POST", "/pools/{pool}/stopresize"),
        ("POST", "/pools/{pool}/disableautoscale"),
        ("POST", "/jobs/{job}/tasks/{task}/terminate"),
        ("POST", "/jobs/{job}/enable"),
        ("POST", "/jobs/{job}/tasks/{task}/reactivate"),
        ("POST", "/jobschedules/{schedule}/disable"),
        ("POST", "/jobschedules/{schedule}/enable"),
        ("POST", "/jobschedules/{schedule}/terminate"),
        ("POST", "/pools/{pool}/nodes/{node}/start"),
        ("POST", "/pools/{pool}/nodes/{node}/enablescheduling"),
    }
    writes = {route for route in app_routes() if route[0] in ("POST", "PUT", "PATCH")}
    assert writes == set(_validate.REQUEST_BODIES) | bodiless
    known = _validate.schema().models
    assert all(model in known for model in _validate.REQUEST_BODIES.values())


def test_the_schema_file_is_what_the_installed_sdk_generates() -> None:
    """Regenerating ``api_schema.json`` from the installed azure-batch gives the committed file (no SDK drift)."""
    assert _schema_gen.render(_schema_gen.build_schema()) == _schema_gen.SCHEMA_PATH.read_text(encoding="utf-8"), (
        "azure-batch's models changed: run `python -m aiobatch.emulator._schema_gen` and review the diff"
    )
    assert _validate.schema().api_version == "2025-06-01"
