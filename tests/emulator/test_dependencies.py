"""Issue 16, item 2: task dependencies, through the unmodified ``azure.batch.aio.BatchClient``.

``usesTaskDependencies`` on the job; ``dependsOn`` by ids and id ranges; a dependent stays ``active`` and does not
run until what it depends on has succeeded (or completed with ``dependencyAction`` satisfy); a failure blocks its
dependents for good. The unit tests at the end drive the index (`_dependencies.Dependencies`) directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError

from aiobatch.emulator import Emulator
from aiobatch.emulator._dependencies import EXPANDED_RANGE, MAX_TASK_IDS_LENGTH, Dependencies

from .test_contract_aio import finished, ready_pool, sh, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def batch(batch_emulator: Emulator) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as client:
        yield client


async def job_with_dependencies(batch: BatchClient, job_id: str = "j", *, slots: int = 4) -> None:
    await ready_pool(batch, "p", task_slots_per_node=slots)
    await batch.create_job(
        m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id="p"), uses_task_dependencies=True)
    )


def task(
    task_id: str, command: str = "true", *, ids: list[str] | None = None, **extra: object
) -> m.BatchTaskCreateOptions:
    depends = m.BatchTaskDependencies(task_ids=ids) if ids is not None else extra.pop("depends_on", None)
    return m.BatchTaskCreateOptions(id=task_id, command_line=command, depends_on=depends, **extra)  # type: ignore[arg-type]


async def add(batch: BatchClient, job_id: str, *tasks: m.BatchTaskCreateOptions) -> None:
    result = await batch.create_task_collection(job_id, m.BatchTaskGroup(task_values=list(tasks)))
    assert [r.status for r in result.result_values or []] == [m.BatchTaskAddStatus.SUCCESS] * len(tasks), result


async def stays_waiting(batch: BatchClient, job_id: str, task_id: str, seconds: float = 0.4) -> None:
    """The task is active and has never started, for ``seconds``."""
    with anyio.move_on_after(seconds):
        while True:
            got = await batch.get_task(job_id, task_id)
            assert got.state == m.BatchTaskState.ACTIVE, got.state
            assert got.execution_info is None or got.execution_info.start_time is None
            await anyio.sleep(0.05)


# --- refusals ----------------------------------------------------------------------------------------------------


async def test_depends_on_in_a_job_without_task_dependencies_is_the_services_400(batch: BatchClient) -> None:
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_task("j", task("b", ids=["a"]))
    assert caught.value.status_code == 400
    assert caught.value.error is not None and caught.value.error.code == "TaskDependenciesNotSpecifiedOnJob"
    result = await batch.create_task_collection("j", m.BatchTaskGroup(task_values=[task("b", ids=["a"])]))
    [one] = result.result_values or []
    assert one.status == m.BatchTaskAddStatus.CLIENT_ERROR
    assert one.error is not None and one.error.code == "TaskDependenciesNotSpecifiedOnJob"
    # An empty dependsOn names nothing: accepted, as the service accepts it.
    await batch.create_task("j", task("c", ids=[]))


async def test_task_ids_over_64000_characters_are_the_services_400(batch: BatchClient) -> None:
    await batch.create_job(
        m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p"), uses_task_dependencies=True)
    )
    ids = [f"{n:064d}" for n in range(MAX_TASK_IDS_LENGTH // 64 + 1)]
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_task("j", task("b", ids=ids))
    assert caught.value.status_code == 400
    assert caught.value.error is not None and caught.value.error.code == "TaskDependencyListTooLong"
    await batch.create_task("j", task("c", ids=ids[:-1]))  # exactly 64,000: accepted


async def test_a_reversed_range_is_refused(batch: BatchClient) -> None:
    await batch.create_job(
        m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p"), uses_task_dependencies=True)
    )
    ranges = m.BatchTaskDependencies(task_id_ranges=[m.BatchTaskIdRange(start=5, end=2)])
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_task("j", task("b", depends_on=ranges))
    assert caught.value.status_code == 400


# --- scheduling ---------------------------------------------------------------------------------------------


async def test_a_chain_runs_in_dependency_order_whatever_the_order_tasks_are_added(batch: BatchClient) -> None:
    await job_with_dependencies(batch)
    await add(
        batch,
        "j",
        task("c", sh("echo c"), ids=["b"]),
        task("b", sh("sleep 0.3"), ids=["a"]),
        task("a", sh("sleep 0.3")),
    )
    got = await batch.get_task("j", "c")
    assert got.depends_on is not None and got.depends_on.task_ids == ["b"]
    a, b, c = [await finished(batch, "j", t) for t in ("a", "b", "c")]
    for before, after in ((a, b), (b, c)):
        assert before.execution_info and after.execution_info
        assert after.execution_info.start_time >= before.execution_info.end_time  # type: ignore[operator]
    assert c.execution_info is not None and c.execution_info.result == m.BatchTaskExecutionResult.SUCCESS


async def test_a_dependent_waits_for_a_task_added_later(batch: BatchClient) -> None:
    await job_with_dependencies(batch)
    await batch.create_task("j", task("late-dependent", ids=["First"]))
    await stays_waiting(batch, "j", "late-dependent")
    await batch.create_task("j", task("first"))  # ids are case-insensitive
    await finished(batch, "j", "late-dependent")


async def test_a_range_holds_the_dependent_until_every_task_in_it_has_succeeded(batch: BatchClient) -> None:
    await job_with_dependencies(batch)
    ranges = m.BatchTaskDependencies(task_id_ranges=[m.BatchTaskIdRange(start=1, end=3)])
    await add(batch, "j", task("merge", depends_on=ranges), task("1"), task("2"), task("07"), task("x"))
    await finished(batch, "j", "2")
    await stays_waiting(batch, "j", "merge", 0.2)  # "3" does not exist yet ("07" is not an integer id in it)
    await add(batch, "j", task("3", sh("sleep 0.2")))
    merge = await finished(batch, "j", "merge")
    three = await batch.get_task("j", "3")
    assert merge.execution_info and three.execution_info
    assert merge.execution_info.start_time >= three.execution_info.end_time  # type: ignore[operator]


async def test_a_failed_dependency_blocks_its_dependents(batch: BatchClient) -> None:
    await job_with_dependencies(batch)
    await add(
        batch,
        "j",
        task("bad", sh("exit 3"), constraints=m.BatchTaskConstraints(max_task_retry_count=1)),
        task("after", ids=["bad"]),
    )
    bad = await finished(batch, "j", "bad")
    assert bad.execution_info is not None and bad.execution_info.retry_count == 1
    await stays_waiting(batch, "j", "after")
    counts = await batch.get_job_task_counts("j")
    assert counts.task_counts.active == 1 and counts.task_counts.failed == 1


def _on_exit(code: int, action: str) -> m.ExitConditions:
    return m.ExitConditions(
        exit_codes=[m.ExitCodeMapping(code=code, exit_options=m.ExitOptions(dependency_action=action))]
    )


async def test_dependency_action_satisfy_lets_dependents_of_a_failed_task_run(batch: BatchClient) -> None:
    await job_with_dependencies(batch)
    await add(
        batch,
        "j",
        task("bad", sh("exit 3"), exit_conditions=_on_exit(3, "satisfy")),
        task("after", ids=["bad"]),
    )
    after = await finished(batch, "j", "after")
    assert after.execution_info is not None and after.execution_info.result == m.BatchTaskExecutionResult.SUCCESS


async def test_dependency_action_block_on_exit_code_0_holds_dependents(batch: BatchClient) -> None:
    await job_with_dependencies(batch)
    await add(batch, "j", task("good", exit_conditions=_on_exit(0, "block")), task("after", ids=["good"]))
    await finished(batch, "j", "good")
    await stays_waiting(batch, "j", "after")


async def test_reactivating_a_failed_dependency_that_then_succeeds_releases_its_dependents(batch: BatchClient) -> None:
    await job_with_dependencies(batch)
    # Fails on its first run, succeeds on the next (its working directory outlives an attempt).
    flaky = sh("test -f marker && exit 0; touch marker; exit 3")
    await add(batch, "j", task("flaky", flaky), task("after", ids=["flaky"]))
    await finished(batch, "j", "flaky")
    await stays_waiting(batch, "j", "after", 0.2)
    await batch.reactivate_task("j", "flaky")
    await finished(batch, "j", "after")


async def test_deleting_a_waiting_task_leaves_the_others_alone(batch: BatchClient) -> None:
    await job_with_dependencies(batch)
    await add(batch, "j", task("a", sh("sleep 0.3")), task("b", ids=["a"]), task("c", ids=["a"]))
    await batch.delete_task("j", "b")
    await finished(batch, "j", "c")
    assert sorted([t.id async for t in batch.list_tasks("j")]) == ["a", "c"]


async def test_a_job_terminating_when_all_tasks_complete_waits_for_blocked_tasks(batch: BatchClient) -> None:
    """A blocked task is active: the job is not complete (as on Azure, it stays active until someone acts)."""
    await job_with_dependencies(batch)
    await add(batch, "j", task("bad", sh("exit 1")), task("after", ids=["bad"]))
    # Set once the tasks are there: a job with no tasks at all would complete at once.
    await batch.update_job("j", m.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    await finished(batch, "j", "bad")
    await stays_waiting(batch, "j", "after", 0.2)
    assert (await batch.get_job("j")).state == m.BatchJobState.ACTIVE
    await batch.terminate_task("j", "after")

    async def completed() -> bool:
        return (await batch.get_job("j")).state == m.BatchJobState.COMPLETED

    await wait_for(completed, what="job completed")


# --- the index ---------------------------------------------------------------------------------------------------


def test_the_index_counts_ids_and_ranges_and_releases_each_dependent_once() -> None:
    deps = Dependencies()
    assert not deps.add("free", None)
    assert not deps.add("empty", {"taskIds": []})
    assert deps.add("d", {"taskIds": ["A", "a", "2"], "taskIdRanges": [{"start": 1, "end": 3}, {"start": 2, "end": 4}]})
    # "a" once (ids are case-insensitive), 1..4 merged: 5 dependencies; "2" is named alone and in the range, but
    # a range this narrow is indexed id by id, so it is one dependency.
    assert deps.satisfy("a") == []
    for n in ("1", "2", "3"):
        assert deps.satisfy(n) == []
    assert deps.satisfy("3") == []  # a second completion counts nothing
    assert deps.satisfy("4") == ["d"]
    assert not deps.is_waiting("d")


def test_a_wide_range_counts_what_is_already_satisfied_and_releases_on_the_last() -> None:
    deps = Dependencies()
    end = EXPANDED_RANGE + 10
    for n in range(1, end):
        deps.satisfy(str(n))
    assert deps.add("merge", {"taskIdRanges": [{"start": 1, "end": end}]})
    assert deps.add("other", {"taskIdRanges": [{"start": 0, "end": end}]})
    assert deps.satisfy(f"0{end}") == []  # not a plain integer id: not in the range
    assert deps.satisfy(str(end)) == ["merge"]
    assert deps.satisfy("0") == ["other"]


def test_a_forgotten_dependent_is_never_released_and_a_waiting_one_is_not_counted_twice() -> None:
    deps = Dependencies()
    assert deps.add("d", {"taskIds": ["a"]})
    assert deps.add("d", {"taskIds": ["a"]})  # reactivated while still waiting
    assert deps.add("e", {"taskIds": ["a"]})
    deps.forget("d")
    assert deps.satisfy("a") == ["e"]


def test_a_wide_range_already_satisfied_does_not_wait() -> None:
    deps = Dependencies()
    for n in range(2 * EXPANDED_RANGE + 1):
        deps.satisfy(str(n))
    deps.satisfy("x")
    assert not deps.add("merge", {"taskIdRanges": [{"start": 1, "end": EXPANDED_RANGE + 500}]})
    assert deps.add("more", {"taskIdRanges": [{"start": 1, "end": 2 * EXPANDED_RANGE + 1}]})
    assert deps.satisfy(str(2 * EXPANDED_RANGE + 1)) == ["more"]
