"""Issue 16, item 1: what the emulator accepted and silently ignored is now honoured or refused as Azure does.

Every test drives the unmodified ``azure.batch.aio.BatchClient`` (15.1, api-version 2025-06-01).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError

from aiobatch.emulator import Emulator

pytestmark = pytest.mark.anyio

UBUNTU = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


def pool(pool_id: str = "p", **extra: Any) -> m.BatchPoolCreateOptions:
    return m.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", virtual_machine_configuration=UBUNTU, **extra
    )


@pytest.fixture
async def batch(batch_emulator: Emulator) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as client:
        yield client


def values(error: HttpResponseError) -> dict[str, str]:
    assert error.response is not None
    return {pair["key"]: pair["value"] for pair in error.response.json().get("values", [])}


async def not_modified(call: Any) -> None:
    """The read answered 304 (raised by the SDK as ResourceNotModifiedError, or for the operations its _patch
    wraps, such as get_pool, as ResourceModifiedError: either way an HttpResponseError with status 304)."""
    with pytest.raises(HttpResponseError) as caught:
        await call
    assert caught.value.status_code == 304, caught.value


async def refused(call: Any, status: int, code: str) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as caught:
        await call
    assert caught.value.status_code == status, caught.value
    assert caught.value.error is not None and caught.value.error.code == code, caught.value
    return caught.value


# --- api-version ---------------------------------------------------------------------------------------------


async def test_an_unknown_api_version_is_the_services_400(batch_emulator: Emulator) -> None:
    """``2099-01-01.99.0`` was answered as if it were 2025-06-01."""
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential, api_version="2099-01-01.99.0") as batch:
        with pytest.raises(HttpResponseError) as caught:
            await batch.create_pool(pool())
    error = caught.value
    assert error.status_code == 400 and error.error is not None and error.error.code == "InvalidQueryParameterValue"
    assert values(error)["QueryParameterName"] == "api-version"
    assert values(error)["QueryParameterValue"] == "2099-01-01.99.0"
    assert batch_emulator.account is not None and not batch_emulator.account.pools


@pytest.mark.parametrize("version", ["2024-02-01.19.0", "2024-07-01.20.0", "2025-06-01"])
async def test_the_versions_of_the_sdks_in_use_are_answered(batch_emulator: Emulator, version: str) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential, api_version=version) as batch:
        assert [p async for p in batch.list_pools()] == []


# --- conditional headers -------------------------------------------------------------------------------------


async def _job_and_task(batch: BatchClient) -> None:
    await batch.create_pool(pool())
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="true"))


async def test_if_none_match_on_a_job_or_a_task_that_has_not_changed_is_a_304(batch: BatchClient) -> None:
    """Pools answered 304; jobs and tasks answered 200 and the whole body again."""
    await _job_and_task(batch)
    job, task = await batch.get_job("j"), await batch.get_task("j", "t")
    await not_modified(batch.get_job("j", etag=job.etag, match_condition=MatchConditions.IfModified))
    await not_modified(batch.get_task("j", "t", etag=task.etag, match_condition=MatchConditions.IfModified))
    # The SDK sends the ETag quoted, as HTTP writes it; a matching If-Match passes, a stale one is a 412.
    await batch.update_job(
        "j", m.BatchJobUpdateOptions(priority=5), etag=job.etag, match_condition=MatchConditions.IfNotModified
    )
    assert (await batch.get_job("j", etag=job.etag, match_condition=MatchConditions.IfModified)).priority == 5
    await refused(
        batch.update_job(
            "j", m.BatchJobUpdateOptions(priority=6), etag=job.etag, match_condition=MatchConditions.IfNotModified
        ),
        412,
        "ConditionNotMet",
    )


async def test_if_modified_since_and_if_unmodified_since_on_pools_jobs_and_tasks(batch: BatchClient) -> None:
    """Both headers were ignored: every read answered 200, every write went through."""
    await _job_and_task(batch)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    earlier = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    reads = (
        lambda **kw: batch.get_pool("p", **kw),
        lambda **kw: batch.get_job("j", **kw),
        lambda **kw: batch.get_task("j", "t", **kw),
    )
    for read in reads:
        await not_modified(read(if_modified_since=later))
        assert (await read(if_modified_since=earlier)).id  # modified since: the entity
        await refused(read(if_unmodified_since=earlier), 412, "ConditionNotMet")
        assert (await read(if_unmodified_since=later)).id
    # Writes: a condition not met is a 412, and nothing changes.
    patch = m.BatchPoolUpdateOptions(metadata=[m.BatchMetadataItem(name="a", value="b")])
    await refused(batch.update_pool("p", patch, if_unmodified_since=earlier), 412, "ConditionNotMet")
    await refused(batch.update_pool("p", patch, if_modified_since=later), 412, "ConditionNotMet")
    await refused(
        batch.update_job("j", m.BatchJobUpdateOptions(priority=3), if_modified_since=later), 412, "ConditionNotMet"
    )
    await refused(batch.delete_task("j", "t", if_unmodified_since=earlier), 412, "ConditionNotMet")
    assert not (await batch.get_pool("p")).metadata
    assert (await batch.get_job("j")).priority == 0
    await batch.update_pool("p", patch, if_unmodified_since=later)
    assert (await batch.get_pool("p")).metadata


# --- tasks -----------------------------------------------------------------------------------------------------


def _exit_conditions(action: str) -> m.ExitConditions:
    return m.ExitConditions(exit_codes=[m.ExitCodeMapping(code=3, exit_options=m.ExitOptions(job_action=action))])


async def test_a_job_action_while_the_job_does_nothing_on_task_failure_is_the_services_400(batch: BatchClient) -> None:
    """The job action was accepted and ignored; Azure refuses it when ``onTaskFailure`` is noaction."""
    await batch.create_pool(pool())
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    task = m.BatchTaskCreateOptions(id="t", command_line="true", exit_conditions=_exit_conditions("terminate"))
    error = await refused(batch.create_task("j", task), 400, "InvalidPropertyValue")
    assert values(error)["PropertyName"] == "exitConditions.exitCodes[0].exitOptions.jobAction"
    result = await batch.create_task_collection("j", m.BatchTaskGroup(task_values=[task]))
    assert [r.status for r in result.result_values or []] == [m.BatchTaskAddStatus.CLIENT_ERROR]
    # A job action of none asks for nothing; with performexitoptionsjobaction the action is allowed.
    await batch.create_task(
        "j", m.BatchTaskCreateOptions(id="n", command_line="true", exit_conditions=_exit_conditions("none"))
    )
    await batch.create_job(
        m.BatchJobCreateOptions(
            id="k", pool_info=m.BatchPoolInfo(pool_id="p"), task_failure_mode="performexitoptionsjobaction"
        )
    )
    await batch.create_task("k", task)
    assert [t.id async for t in batch.list_tasks("j")] == ["n"]


async def test_a_task_needing_more_slots_than_a_node_has_is_accepted_and_logged_as_on_azure(
    batch: BatchClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Azure accepts it and never runs it (it does not validate the conflict at submission); the log says why."""
    await batch.create_pool(pool(task_slots_per_node=2))
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    with caplog.at_level(logging.WARNING, logger="aiobatch.emulator"):
        await batch.create_task("j", m.BatchTaskCreateOptions(id="big", command_line="true", required_slots=3))
    assert (await batch.get_task("j", "big")).state == m.BatchTaskState.ACTIVE
    assert any("requires 3 slots" in r.getMessage() for r in caplog.records)


# --- pool PATCH ---------------------------------------------------------------------------------------------------


async def test_patching_the_shape_of_an_empty_pool_changes_it(batch: BatchClient, batch_emulator: Emulator) -> None:
    """vmSize, displayName and taskSlotsPerNode answered 200 and changed nothing."""
    await batch.create_pool(pool())
    await batch.update_pool(
        "p",
        m.BatchPoolUpdateOptions(
            vm_size="standard_d4s_v3",
            display_name="renamed",
            task_slots_per_node=4,
            task_scheduling_policy=m.BatchTaskSchedulingPolicy(node_fill_type="pack"),
        ),
    )
    got = await batch.get_pool("p")
    assert (got.vm_size, got.display_name, got.task_slots_per_node) == ("standard_d4s_v3", "renamed", 4)
    assert got.task_scheduling_policy is not None and got.task_scheduling_policy.node_fill_type == "Pack"
    account = batch_emulator.account
    assert account is not None
    assert account.pools["p"].task_slots_per_node == 4  # what the scheduler fills nodes by
    # A value the pool could not have been created with is the create's 400, and changes nothing.
    await refused(batch.update_pool("p", m.BatchPoolUpdateOptions(task_slots_per_node=0)), 400, "InvalidPropertyValue")
    assert (await batch.get_pool("p")).task_slots_per_node == 4


async def test_patching_the_shape_of_a_pool_with_nodes_is_a_conflict(batch: BatchClient) -> None:
    await batch.create_pool(pool(target_dedicated_nodes=1))
    with anyio.fail_after(20):
        while (await batch.get_pool("p")).current_dedicated_nodes != 1:
            await anyio.sleep(0.05)
    error = await refused(
        batch.update_pool("p", m.BatchPoolUpdateOptions(task_slots_per_node=2)), 409, "OperationInvalidForCurrentState"
    )
    assert values(error)["PropertyName"] == "taskSlotsPerNode"
    assert (await batch.get_pool("p")).task_slots_per_node == 1
    # What may change on a pool with nodes still does.
    await batch.update_pool("p", m.BatchPoolUpdateOptions(metadata=[m.BatchMetadataItem(name="a", value="b")]))
