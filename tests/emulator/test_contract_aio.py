"""Contract tests: the unmodified ``azure.batch.aio.BatchClient`` (15.1) against the emulator, every operation.

Each test drives the real SDK over HTTP and asserts what the SDK hands back: typed models, typed exceptions with the
service's error codes, pollers that finish.  Nothing here reaches into the emulator except to check that a refused
request changed nothing.
"""

from __future__ import annotations

import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline import PipelineResponse

from _support import poll_until
from aiobatch.emulator import Emulator, Timings

pytestmark = pytest.mark.anyio

T = TypeVar("T")

UBUNTU = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


# --- fixtures and helpers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _hello_apps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An application folder with ``hello`` 1.0 and 2.0 (a one-line script each)."""
    apps = tmp_path_factory.mktemp("apps")
    for version in ("1.0", "2.0"):
        (apps / "hello").mkdir(exist_ok=True)
        with zipfile.ZipFile(apps / "hello" / f"{version}.zip", "w") as zf:
            info = zipfile.ZipInfo("hello.sh")
            info.external_attr = 0o755 << 16
            zf.writestr(info, f"#!/bin/sh\necho hello {version}\n")
    return apps


@pytest.fixture
def emulator_apps_dir(_hello_apps: Path) -> Path:
    return _hello_apps


class Responses:
    """Every raw HTTP answer the client saw (a ``raw_response_hook``)."""

    def __init__(self) -> None:
        self.seen: list[PipelineResponse[Any, Any]] = []

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        self.seen.append(response)

    def last(self, method: str, path_end: str) -> Any:
        for response in reversed(self.seen):
            request = response.http_request
            if request.method == method and request.url.split("?")[0].endswith(path_end):
                return response.http_response
        raise AssertionError(f"no {method} …{path_end} was sent")


@pytest.fixture
def responses() -> Responses:
    return Responses()


@pytest.fixture
async def batch(batch_emulator: Emulator, responses: Responses) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential, raw_response_hook=responses) as client:
        yield client


async def wait_for(probe: Callable[[], Awaitable[T]], *, within: float = 10.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy (``what`` names it in a failure)."""
    return await poll_until(probe, within, what=what)


def pool_options(pool_id: str, *, nodes: int = 1, **extra: Any) -> m.BatchPoolCreateOptions:
    return m.BatchPoolCreateOptions(
        id=pool_id,
        vm_size="Standard_D2s_v3",
        virtual_machine_configuration=UBUNTU,
        target_dedicated_nodes=nodes,
        **extra,
    )


async def ready_pool(batch: BatchClient, pool_id: str, *, nodes: int = 1, **extra: Any) -> m.BatchPool:
    """Create a pool and wait until it is steady with every node idle."""
    await batch.create_pool(pool_options(pool_id, nodes=nodes, **extra))

    async def ready() -> m.BatchPool | None:
        pool = await batch.get_pool(pool_id)
        if pool.allocation_state != m.AllocationState.STEADY:
            return None
        states = [n.state async for n in batch.list_nodes(pool_id)]
        return pool if len(states) == nodes and all(s == m.BatchNodeState.IDLE for s in states) else None

    return await wait_for(ready, what=f"pool {pool_id} ready")


async def finished(batch: BatchClient, job_id: str, task_id: str) -> m.BatchTask:
    async def done() -> m.BatchTask | None:
        task = await batch.get_task(job_id, task_id)
        return task if task.state == m.BatchTaskState.COMPLETED else None

    return await wait_for(done, what=f"task {task_id} completed")


async def download(batch: BatchClient, job_id: str, task_id: str, path: str) -> bytes:
    return b"".join([chunk async for chunk in await batch.download_task_file(job_id, task_id, path)])


def sh(script: str) -> str:
    return f"/bin/sh -c '{script}'"


def value(member: Any) -> str:
    """An enum member's wire value (the SDK hands back plain strings for values it does not know)."""
    return str(getattr(member, "value", member))


def code_of(exc: HttpResponseError) -> str | None:
    """The service's error code, as the SDK parsed it from the OData body."""
    return exc.error.code if exc.error is not None else None


def details_of(exc: HttpResponseError) -> dict[str, str]:
    """The error body's ``values`` (key -> value), as the SDK parsed them."""
    return {d.code: d.message for d in (exc.error.details if exc.error is not None else [])}


# --- pools --------------------------------------------------------------------------------------------------


async def test_pool_create_get_list_and_exists(batch: BatchClient, responses: Responses) -> None:
    start = m.BatchStartTask(command_line=sh("echo started"), wait_for_success=True)
    apps = [m.BatchApplicationPackageReference(application_id="hello", version="1.0")]
    await batch.create_pool(
        pool_options("pool-a", nodes=2, task_slots_per_node=3, start_task=start, application_package_references=apps)
    )
    created = responses.last("POST", "/pools")
    assert created.status_code == 201
    assert created.headers["ETag"].startswith("0x") and created.headers["Last-Modified"]
    assert created.headers["Location"].endswith("/pools/pool-a")

    pool = await batch.get_pool("pool-a")
    assert pool.id == "pool-a"
    assert pool.state == m.BatchPoolState.ACTIVE
    assert pool.allocation_state == m.AllocationState.RESIZING  # allocation is never instant
    assert pool.vm_size == "standard_d2s_v3"  # the service lower-cases the size
    assert pool.task_slots_per_node == 3
    assert pool.target_dedicated_nodes == 2 and pool.current_dedicated_nodes == 0
    assert pool.resize_timeout is not None and pool.resize_timeout.total_seconds() == 15 * 60
    assert pool.enable_auto_scale is False
    assert pool.start_task is not None and pool.start_task.command_line == start.command_line
    assert pool.start_task.wait_for_success is True
    assert [(r.application_id, r.version) for r in pool.application_package_references or []] == [("hello", "1.0")]
    assert pool.virtual_machine_configuration.image_reference.version == "latest"
    assert pool.task_scheduling_policy is not None
    # The real service answers "Spread" (capitalised), which the SDK leaves as a plain string.
    assert str(pool.task_scheduling_policy.node_fill_type).lower() == "spread"
    got = responses.last("GET", "/pools/pool-a")
    assert got.headers["ETag"] == pool.etag
    assert got.headers["Last-Modified"]

    # Case-insensitive ids: the same pool under another spelling.
    assert (await batch.get_pool("POOL-A")).id == "pool-a"
    await batch.create_pool(pool_options("pool-b", nodes=0))
    assert [p.id async for p in batch.list_pools()] == ["pool-a", "pool-b"]
    assert await batch.pool_exists("pool-a") is True
    assert responses.last("HEAD", "/pools/pool-a").headers["ETag"] == pool.etag


async def test_pool_exists_for_a_missing_pool_reaches_the_client_as_404(
    batch: BatchClient, responses: Responses
) -> None:
    # azure-batch 15.1.0's error policy raises on the HEAD's 404 instead of returning False; the 404 must get there.
    try:
        exists = await batch.pool_exists("nope")
    except ResourceNotFoundError as exc:
        assert exc.status_code == 404
    else:
        assert exists is False
    assert responses.last("HEAD", "/pools/nope").status_code == 404


async def test_nodes_go_creating_starting_waitingforstarttask_idle(tmp_path: Path) -> None:
    # Slower nodes than the fixture's, so that every state lasts long enough to be seen by a poller.
    timings = Timings(allocation_delay=0.1, node_start_delay=0.6, deletion_delay=0.05)
    async with Emulator(workdir=tmp_path, timings=timings) as emu, BatchClient(emu.endpoint, emu.credential) as batch:
        start = m.BatchStartTask(command_line=sh("sleep 0.4; echo booted"), wait_for_success=True)
        await batch.create_pool(pool_options("boot", start_task=start))
        seen: list[str] = []
        with anyio.fail_after(10):
            while not seen or seen[-1] != "idle":
                nodes = [n async for n in batch.list_nodes("boot")]
                if nodes and (not seen or seen[-1] != value(nodes[0].state)):
                    seen.append(value(nodes[0].state))
                await anyio.sleep(0.02)
        assert seen == ["creating", "starting", "waitingforstarttask", "idle"]

        node = nodes[0]
        assert node.id.startswith("tvmps_") and node.id.endswith("_d")
        assert node.is_dedicated is True
        assert node.scheduling_state == m.SchedulingState.ENABLED
        assert node.start_task_info is not None
        assert node.start_task_info.state == m.BatchStartTaskState.COMPLETED
        assert node.start_task_info.exit_code == 0
        assert node.start_task_info.result == m.BatchTaskExecutionResult.SUCCESS
        again = await batch.get_node("boot", node.id)
        assert again.id == node.id and again.state == m.BatchNodeState.IDLE
        assert again.virtual_machine_info is not None
        assert again.virtual_machine_info.image_reference.exact_version == "latest"
        with pytest.raises(ResourceNotFoundError) as missing:
            await batch.get_node("boot", "tvmps_nope_d")
        assert code_of(missing.value) == "NodeNotFound"


async def test_a_failing_start_task_leaves_the_node_starttaskfailed(batch: BatchClient) -> None:
    start = m.BatchStartTask(command_line=sh("echo broken >&2; exit 3"), wait_for_success=True)
    await batch.create_pool(pool_options("bad-start", start_task=start))

    async def failed() -> m.BatchNode | None:
        nodes = [n async for n in batch.list_nodes("bad-start")]
        return nodes[0] if nodes and nodes[0].state == m.BatchNodeState.START_TASK_FAILED else None

    node = await wait_for(failed, what="starttaskfailed")
    info = node.start_task_info
    assert info is not None and info.exit_code == 3
    assert info.result == m.BatchTaskExecutionResult.FAILURE
    assert info.failure_info is not None and info.failure_info.category == m.BatchErrorSourceCategory.USER_ERROR
    counts = [c async for c in batch.list_pool_node_counts()]
    assert counts[0].pool_id == "bad-start"
    assert counts[0].dedicated is not None and counts[0].dedicated.start_task_failed == 1


async def test_pool_resize_stop_resize_node_counts_and_delete(batch: BatchClient, responses: Responses) -> None:
    await ready_pool(batch, "sized", nodes=1)
    poller = await batch.begin_resize_pool(
        "sized", m.BatchPoolResizeOptions(target_dedicated_nodes=3), polling_interval=0.1
    )
    assert responses.last("POST", "/pools/sized/resize").status_code == 202
    await poller.result()
    pool = await batch.get_pool("sized")
    assert pool.allocation_state == m.AllocationState.STEADY
    assert pool.current_dedicated_nodes == 3 and pool.target_dedicated_nodes == 3
    assert not pool.resize_errors

    async def all_idle() -> bool:
        counts = [c async for c in batch.list_pool_node_counts()]
        return bool(counts) and counts[0].dedicated is not None and counts[0].dedicated.idle == 3

    await wait_for(all_idle, what="three idle nodes")
    counts = [c async for c in batch.list_pool_node_counts()]
    assert counts[0].dedicated.total == 3 and counts[0].low_priority is not None
    assert counts[0].low_priority.total == 0

    # A resize stopped half-way leaves the pool steady with a ResizeStopped error.
    await batch.begin_resize_pool("sized", m.BatchPoolResizeOptions(target_dedicated_nodes=5), polling_interval=0.1)
    stop = await batch.begin_stop_pool_resize("sized", polling_interval=0.1)
    assert responses.last("POST", "/pools/sized/stopresize").status_code == 202
    await stop.result()
    pool = await batch.get_pool("sized")
    assert pool.allocation_state == m.AllocationState.STEADY
    assert [e.code for e in pool.resize_errors or []] == ["ResizeStopped"]
    assert pool.current_dedicated_nodes == 3

    deleting = await batch.begin_delete_pool("sized", polling_interval=0.1)
    assert responses.last("DELETE", "/pools/sized").status_code == 202
    assert (await batch.get_pool("sized")).state == m.BatchPoolState.DELETING
    with anyio.fail_after(10):
        await deleting.result()
    with pytest.raises(ResourceNotFoundError) as gone:
        await batch.get_pool("sized")
    assert code_of(gone.value) == "PoolNotFound"


# --- jobs ---------------------------------------------------------------------------------------------------


async def test_job_create_get_list_update_and_delete(batch: BatchClient, responses: Responses) -> None:
    await batch.create_job(m.BatchJobCreateOptions(id="job-a", pool_info=m.BatchPoolInfo(pool_id="p"), priority=10))
    created = responses.last("POST", "/jobs")
    assert created.status_code == 201 and created.headers["ETag"] and created.headers["Last-Modified"]
    job = await batch.get_job("job-a")
    assert job.state == m.BatchJobState.ACTIVE
    assert job.priority == 10
    assert job.pool_info.pool_id == "p"
    assert job.all_tasks_complete_mode == m.BatchAllTasksCompleteMode.NO_ACTION
    assert job.constraints is not None and job.constraints.max_task_retry_count == 0
    assert job.execution_info is not None and job.execution_info.pool_id == "p"
    assert responses.last("GET", "/jobs/job-a").headers["ETag"] == job.etag

    await batch.create_job(m.BatchJobCreateOptions(id="job-b", pool_info=m.BatchPoolInfo(pool_id="p")))
    assert [j.id async for j in batch.list_jobs()] == ["job-a", "job-b"]

    await batch.update_job("job-a", m.BatchJobUpdateOptions(priority=500))
    assert responses.last("PATCH", "/jobs/job-a").status_code == 200
    updated = await batch.get_job("job-a")
    assert updated.priority == 500
    assert updated.etag != job.etag
    assert updated.all_tasks_complete_mode == m.BatchAllTasksCompleteMode.NO_ACTION  # PATCH leaves the rest alone

    deleting = await batch.begin_delete_job("job-b", polling_interval=0.1)
    assert responses.last("DELETE", "/jobs/job-b").status_code == 202
    with anyio.fail_after(10):
        await deleting.result()
    with pytest.raises(ResourceNotFoundError) as gone:
        await batch.get_job("job-b")
    assert code_of(gone.value) == "JobNotFound"


async def test_on_all_tasks_complete_set_by_patch_terminates_the_job(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t1", command_line=sh("echo one")))
    await finished(batch, "j", "t1")
    assert (await batch.get_job("j")).state == m.BatchJobState.ACTIVE  # noaction: the job stays active

    await batch.update_job(
        "j", m.BatchJobUpdateOptions(all_tasks_complete_mode=m.BatchAllTasksCompleteMode.TERMINATE_JOB)
    )

    async def completed() -> m.BatchJob | None:
        job = await batch.get_job("j")
        return job if job.state == m.BatchJobState.COMPLETED else None

    job = await wait_for(completed, what="job completed")
    assert job.execution_info is not None
    assert job.execution_info.termination_reason == "AllTasksComplete"
    assert job.execution_info.end_time is not None
    # A completed job takes no more tasks.
    with pytest.raises(HttpResponseError) as refused:
        await batch.create_task("j", m.BatchTaskCreateOptions(id="late", command_line=sh("true")))
    assert refused.value.status_code == 409
    assert code_of(refused.value) == "JobCompleted"


async def test_terminate_job_kills_running_tasks(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="long", command_line=sh("sleep 30")))

    async def running() -> bool:
        return (await batch.get_task("j", "long")).state == m.BatchTaskState.RUNNING

    await wait_for(running, what="task running")
    # azure-batch 15.1.0 builds no Content-Type (and fails) unless options are given and non-empty; the options
    # model is not exported, so a plain mapping stands in for it.
    options: Any = {"terminateReason": "UserTerminate"}
    poller = await batch.begin_terminate_job("j", options, polling_interval=0.1)
    with anyio.fail_after(10):
        await poller.result()
    job = await batch.get_job("j")
    assert job.state == m.BatchJobState.COMPLETED
    assert job.execution_info is not None and job.execution_info.termination_reason == "UserTerminate"
    task = await batch.get_task("j", "long")
    assert task.state == m.BatchTaskState.COMPLETED
    assert task.execution_info is not None and task.execution_info.result == m.BatchTaskExecutionResult.FAILURE
    assert task.execution_info.failure_info is not None
    assert task.execution_info.failure_info.code == "TaskEnded"


async def test_auto_pool_job_runs_and_its_pool_goes_with_the_job(batch: BatchClient) -> None:
    auto = m.BatchAutoPoolSpecification(
        pool_lifetime_option=m.BatchPoolLifetimeOption.JOB,
        keep_alive=False,
        pool=m.BatchPoolSpecification(
            vm_size="standard_d2s_v3", virtual_machine_configuration=UBUNTU, target_dedicated_nodes=1
        ),
    )
    await batch.create_job(
        m.BatchJobCreateOptions(
            id="auto",
            pool_info=m.BatchPoolInfo(auto_pool_specification=auto),
        )
    )
    job = await batch.get_job("auto")
    spec = job.pool_info.auto_pool_specification
    assert spec is not None and spec.keep_alive is False
    assert spec.pool_lifetime_option == m.BatchPoolLifetimeOption.JOB
    assert spec.pool is not None and spec.pool.task_slots_per_node == 1
    pool_id = job.execution_info.pool_id if job.execution_info else None
    assert pool_id, "the service names the auto pool in executionInfo.poolId"
    assert (await batch.get_pool(pool_id)).id == pool_id

    await batch.create_task_collection(
        "auto",
        m.BatchTaskGroup(
            task_values=[m.BatchTaskCreateOptions(id=f"t{i}", command_line=sh("echo hi")) for i in range(3)]
        ),
    )
    # As the service documents: with no tasks yet, terminatejob would end the job at once, so set it after adding.
    await batch.update_job(
        "auto", m.BatchJobUpdateOptions(all_tasks_complete_mode=m.BatchAllTasksCompleteMode.TERMINATE_JOB)
    )

    async def completed() -> bool:
        return (await batch.get_job("auto")).state == m.BatchJobState.COMPLETED

    await wait_for(completed, what="auto job completed")
    counts = await batch.get_job_task_counts("auto")
    assert counts.task_counts.completed == 3 and counts.task_counts.succeeded == 3

    async def pool_gone() -> bool:
        try:
            await batch.get_pool(pool_id)
        except ResourceNotFoundError:
            return True
        return False

    await wait_for(pool_gone, what="auto pool deleted")


# --- tasks --------------------------------------------------------------------------------------------------


async def test_task_create_get_list_counts_files_and_delete(batch: BatchClient, responses: Responses) -> None:
    await ready_pool(batch, "p", task_slots_per_node=2)
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task(
        "j", m.BatchTaskCreateOptions(id="ok", command_line=sh("echo out-$AZ_BATCH_TASK_ID; echo err >&2"))
    )
    created = responses.last("POST", "/jobs/j/tasks")
    assert created.status_code == 201 and created.headers["ETag"] and created.headers["Location"].endswith("/tasks/ok")
    await batch.create_task("j", m.BatchTaskCreateOptions(id="bad", command_line=sh("exit 7")))

    ok = await finished(batch, "j", "ok")
    assert responses.last("GET", "/jobs/j/tasks/ok").headers["ETag"] == ok.etag
    info = ok.execution_info
    assert info is not None and info.exit_code == 0 and info.result == m.BatchTaskExecutionResult.SUCCESS
    assert info.start_time is not None and info.end_time is not None and info.retry_count == 0
    assert ok.previous_state == m.BatchTaskState.RUNNING
    assert ok.node_info is not None and ok.node_info.pool_id == "p"
    assert ok.node_info.task_root_directory == "workitems/j/job-1/ok"
    assert ok.constraints is not None and ok.constraints.max_task_retry_count == 0
    assert ok.required_slots == 1

    bad = await finished(batch, "j", "bad")
    assert bad.execution_info is not None and bad.execution_info.exit_code == 7
    assert bad.execution_info.result == m.BatchTaskExecutionResult.FAILURE
    assert bad.execution_info.failure_info is not None
    assert bad.execution_info.failure_info.category == m.BatchErrorSourceCategory.USER_ERROR

    assert sorted([t.id async for t in batch.list_tasks("j")]) == ["bad", "ok"]
    counts = await batch.get_job_task_counts("j")
    assert (counts.task_counts.completed, counts.task_counts.succeeded, counts.task_counts.failed) == (2, 1, 1)
    assert counts.task_slot_counts.completed == 2

    files = {f.name: f async for f in batch.list_task_files("j", "ok")}
    assert {"stdout.txt", "stderr.txt", "wd"} <= set(files)
    assert files["wd"].is_directory is True
    assert files["stdout.txt"].is_directory is False and files["stdout.txt"].properties is not None
    assert await download(batch, "j", "ok", "stdout.txt") == b"out-ok\n"
    assert await download(batch, "j", "ok", "stderr.txt") == b"err\n"
    assert files["stdout.txt"].properties.content_length == len(b"out-ok\n")
    props = await batch.get_task_file_properties("j", "ok", "stdout.txt")
    assert props.content_length == len(b"out-ok\n") and props.is_directory is False
    # The service percent-encodes ocp-batch-file-url and the SDK passes it on as it is.
    assert props.url is not None and unquote(props.url).endswith("/jobs/j/tasks/ok/files/stdout.txt")
    with pytest.raises(ResourceNotFoundError) as no_file:
        await download(batch, "j", "ok", "nope.txt")
    assert no_file.value.status_code == 404  # a streamed download's error body is not parsed by the SDK

    await batch.delete_task("j", "bad")
    assert responses.last("DELETE", "/jobs/j/tasks/bad").status_code == 200
    with pytest.raises(ResourceNotFoundError) as gone:
        await batch.get_task("j", "bad")
    assert code_of(gone.value) == "TaskNotFound"
    assert [t.id async for t in batch.list_tasks("j")] == ["ok"]


async def test_terminate_task(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="long", command_line=sh("sleep 30")))

    async def running() -> bool:
        return (await batch.get_task("j", "long")).state == m.BatchTaskState.RUNNING

    await wait_for(running, what="task running")
    await batch.terminate_task("j", "long")
    task = await batch.get_task("j", "long")
    assert task.state == m.BatchTaskState.COMPLETED
    assert task.execution_info is not None and task.execution_info.failure_info is not None
    assert task.execution_info.failure_info.code == "TaskEnded"
    assert (await batch.get_job("j")).state == m.BatchJobState.ACTIVE


@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_task_collection_results_duplicates_and_limits(
    batch: BatchClient, batch_emulator: Emulator, responses: Responses
) -> None:
    # No pool: tasks stay active, which is all this test needs.
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="later")))
    first = await batch.create_task_collection(
        "j",
        m.BatchTaskGroup(
            task_values=[m.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true") for i in range(3)]
        ),
    )
    results = {r.task_id: r for r in first.result_values or []}
    assert set(results) == {"t0", "t1", "t2"}
    for result in results.values():
        assert result.status == m.BatchTaskAddStatus.SUCCESS
        assert result.etag and result.last_modified and result.location
        assert result.location.endswith(f"/jobs/j/tasks/{result.task_id}")

    again = await batch.create_task_collection(
        "j",
        m.BatchTaskGroup(
            task_values=[
                m.BatchTaskCreateOptions(id="t1", command_line="/bin/true"),  # exists
                m.BatchTaskCreateOptions(id="T2", command_line="/bin/true"),  # exists, differently cased
                m.BatchTaskCreateOptions(id="new", command_line="/bin/true"),
                m.BatchTaskCreateOptions(id="NEW", command_line="/bin/true"),  # duplicate within the request
                m.BatchTaskCreateOptions(id="bad id!", command_line="/bin/true"),
            ]
        ),
    )
    by_id = {r.task_id: r for r in again.result_values or []}
    assert set(by_id) == {"t1", "T2", "new", "NEW", "bad id!"}
    assert by_id["new"].status == m.BatchTaskAddStatus.SUCCESS
    for dup in ("t1", "T2", "NEW"):
        assert by_id[dup].status == m.BatchTaskAddStatus.CLIENT_ERROR
        assert by_id[dup].error is not None and by_id[dup].error.code == "TaskExists"
    assert by_id["bad id!"].status == m.BatchTaskAddStatus.CLIENT_ERROR
    assert by_id["bad id!"].error is not None and by_id["bad id!"].error.code == "InvalidPropertyValue"

    account = batch_emulator.account
    assert account is not None
    before = len(account.jobs["j"].tasks)
    too_many = [m.BatchTaskCreateOptions(id=f"x{i}", command_line="/bin/true") for i in range(101)]
    with pytest.raises(HttpResponseError) as over_count:
        await batch.create_task_collection("j", m.BatchTaskGroup(task_values=too_many))
    assert over_count.value.status_code == 400
    assert code_of(over_count.value)

    # About 1.2 MB of command lines in 100 tasks: the service refuses the body before looking at the tasks.
    huge = [m.BatchTaskCreateOptions(id=f"h{i}", command_line="echo " + "x" * 12_000) for i in range(100)]
    with pytest.raises(HttpResponseError) as too_large:
        await batch.create_task_collection("j", m.BatchTaskGroup(task_values=huge))
    assert too_large.value.status_code == 413
    assert code_of(too_large.value) == "RequestBodyTooLarge"
    assert len(account.jobs["j"].tasks) == before, "a refused collection must add nothing"
    assert responses.last("POST", "/jobs/j/addtaskcollection").headers["request-id"]


async def test_list_tasks_pages_follow_next_link_without_loss_or_duplicates(
    batch: BatchClient, responses: Responses
) -> None:
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="later")))
    ids = [f"task-{i:03d}" for i in range(53)]
    await batch.create_task_collection(
        "j", m.BatchTaskGroup(task_values=[m.BatchTaskCreateOptions(id=i, command_line="/bin/true") for i in ids[:50]])
    )
    await batch.create_task_collection(
        "j", m.BatchTaskGroup(task_values=[m.BatchTaskCreateOptions(id=i, command_line="/bin/true") for i in ids[50:]])
    )
    pages: list[list[str]] = []
    async for page in batch.list_tasks("j", max_results=10).by_page():
        pages.append([t.id async for t in page])
    assert [len(p) for p in pages] == [10, 10, 10, 10, 10, 3]
    assert [i for p in pages for i in p] == ids
    last = responses.last("GET", "/jobs/j/tasks")
    assert "odata.nextLink" not in last.json(), "the last page carries no nextLink"


# --- applications -------------------------------------------------------------------------------------------


async def test_applications_list_and_get(batch: BatchClient) -> None:
    apps = [a async for a in batch.list_applications()]
    assert [(a.id, sorted(a.versions)) for a in apps] == [("hello", ["1.0", "2.0"])]
    assert apps[0].display_name is None
    app = await batch.get_application("hello")
    assert app.id == "hello" and sorted(app.versions) == ["1.0", "2.0"]
    with pytest.raises(ResourceNotFoundError) as missing:
        await batch.get_application("nope")
    assert code_of(missing.value) == "ApplicationNotFound"


async def test_application_packages_reach_the_task(batch: BatchClient) -> None:
    apps = [m.BatchApplicationPackageReference(application_id="hello", version="2.0")]
    await ready_pool(batch, "p", application_package_references=apps)
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task(
        "j", m.BatchTaskCreateOptions(id="t", command_line=sh("$AZ_BATCH_APP_PACKAGE_hello_2_0/hello.sh"))
    )
    task = await finished(batch, "j", "t")
    assert task.execution_info is not None and task.execution_info.exit_code == 0
    assert await download(batch, "j", "t", "stdout.txt") == b"hello 2.0\n"


#: What a shell adds to the environment it prints; everything else was given to the process.
SHELL_ADDED = {"PWD", "OLDPWD", "SHLVL", "_"}


def parse_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


async def test_tasks_get_a_nodes_environment_with_the_jobs_and_their_own_settings(
    batch: BatchClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the caller's environment holds never reaches a task: not its credentials, not its PATH.
    monkeypatch.setenv("AZURE_BATCH_ACCOUNT_KEY", "Y2FuYXJ5LWJhdGNoLWtleQ==")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a;AccountKey=Y2FuYXJ5")
    monkeypatch.setenv("SOME_API_TOKEN", "canary-token")
    start = m.BatchStartTask(command_line=sh("env > $AZ_BATCH_NODE_SHARED_DIR/start.env"), wait_for_success=True)
    apps = [m.BatchApplicationPackageReference(application_id="hello", version="1.0")]
    await ready_pool(batch, "p", start_task=start, application_package_references=apps)
    settings = [m.EnvironmentSetting(name="SHARED", value="job"), m.EnvironmentSetting(name="OVERRIDDEN", value="job")]
    await batch.create_job(
        m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p"), common_environment_settings=settings)
    )
    own = [m.EnvironmentSetting(name="OVERRIDDEN", value="task")]
    command = sh("env; echo ---; cat $AZ_BATCH_NODE_SHARED_DIR/start.env")
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=command, environment_settings=own))
    task = await finished(batch, "j", "t")
    assert task.execution_info is not None and task.execution_info.exit_code == 0, task.execution_info
    printed, started = (await download(batch, "j", "t", "stdout.txt")).decode().split("---\n")

    env = parse_env(printed)
    assert (env["SHARED"], env["OVERRIDDEN"]) == ("job", "task")  # the task's own settings win over the job's
    assert env["AZ_BATCH_APP_PACKAGE_hello_1_0"].endswith("hello_1.0")
    assert (env["AZ_BATCH_JOB_ID"], env["AZ_BATCH_TASK_ID"], env["AZ_BATCH_POOL_ID"]) == ("j", "t", "p")
    assert env["PATH"].startswith("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:")
    assert env["HOME"] == env["AZ_BATCH_TASK_WORKING_DIR"]
    assert {k for k in env if not k.startswith("AZ_BATCH_")} - SHELL_ADDED == {"PATH", "HOME", "SHARED", "OVERRIDDEN"}

    # The start task: the pool's packages are there for it to install; no job, no task id, no caller's variables.
    start_env = parse_env(started)
    assert start_env["AZ_BATCH_APP_PACKAGE_hello_1_0"] == env["AZ_BATCH_APP_PACKAGE_hello_1_0"]
    assert start_env["AZ_BATCH_TASK_WORKING_DIR"] == start_env["AZ_BATCH_NODE_STARTUP_WORKING_DIR"]
    assert start_env["AZ_BATCH_TASK_USER_IDENTITY"] == "PoolNonAdmin"
    assert not {"AZ_BATCH_JOB_ID", "AZ_BATCH_TASK_ID", "SHARED"} & set(start_env)
    assert {k for k in start_env if not k.startswith("AZ_BATCH_")} - SHELL_ADDED == {"PATH", "HOME"}


async def test_common_environment_settings_outlive_job_updates(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    settings = [m.EnvironmentSetting(name="STAGE", value="one")]
    await batch.create_job(
        m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p"), common_environment_settings=settings)
    )
    await batch.update_job("j", m.BatchJobUpdateOptions(priority=7))
    job = await batch.get_job("j")
    await batch.replace_job("j", m.BatchJob(pool_info=job.pool_info, priority=8))
    assert [(s.name, s.value) for s in (await batch.get_job("j")).common_environment_settings or []] == [
        ("STAGE", "one")
    ]
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=sh("echo stage=$STAGE")))
    await finished(batch, "j", "t")
    assert await download(batch, "j", "t", "stdout.txt") == b"stage=one\n"


async def test_pass_env_gives_tasks_only_the_variables_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LICENSE_SERVER", "lic.example:27000")
    monkeypatch.setenv("AZURE_BATCH_ACCOUNT_KEY", "Y2FuYXJ5LWJhdGNoLWtleQ==")
    timings = Timings(allocation_delay=0.05, node_start_delay=0.0)
    emulator = Emulator(workdir=tmp_path, timings=timings, pass_env=["LICENSE_SERVER", "NOT_SET_ANYWHERE"])
    async with emulator as emu, BatchClient(emu.endpoint, emu.credential) as batch:
        await ready_pool(batch, "p")
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/usr/bin/env"))
        await finished(batch, "j", "t")
        env = parse_env((await download(batch, "j", "t", "stdout.txt")).decode())
    assert env["LICENSE_SERVER"] == "lic.example:27000"
    assert "AZURE_BATCH_ACCOUNT_KEY" not in env and "NOT_SET_ANYWHERE" not in env


@pytest.mark.parametrize("name", ["", "A=1", "AZ_BATCH_TASK_ID", "az_batch_node_id", "NUL\0"])
def test_pass_env_refuses_what_is_not_a_name_it_may_pass(name: str) -> None:
    with pytest.raises(ValueError, match="pass_env"):
        Emulator(pass_env=[name])


# --- errors -------------------------------------------------------------------------------------------------


async def test_not_found_errors(batch: BatchClient) -> None:
    cases: list[tuple[Callable[[], Awaitable[Any]], str]] = [
        (lambda: batch.get_pool("nope"), "PoolNotFound"),
        (lambda: batch.get_job("nope"), "JobNotFound"),
        (lambda: batch.create_task("nope", m.BatchTaskCreateOptions(id="t", command_line="x")), "JobNotFound"),
    ]
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    cases.append((lambda: batch.get_task("j", "nope"), "TaskNotFound"))
    cases.append((lambda: batch.get_job_task_counts("nope"), "JobNotFound"))
    for call, code in cases:
        with pytest.raises(ResourceNotFoundError) as caught:
            await call()
        assert caught.value.status_code == 404
        assert code_of(caught.value) == code
        assert caught.value.error is not None and "RequestId:" in caught.value.error.message
        assert not details_of(caught.value), "a 404 carries no details"


async def test_exists_errors(batch: BatchClient) -> None:
    await batch.create_pool(pool_options("p", nodes=0))
    with pytest.raises(ResourceExistsError) as pool_exists:
        await batch.create_pool(pool_options("P", nodes=0))  # ids are case-insensitive
    assert pool_exists.value.status_code == 409
    assert code_of(pool_exists.value) == "PoolExists"

    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    with pytest.raises(ResourceExistsError) as job_exists:
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    assert code_of(job_exists.value) == "JobExists"

    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    with pytest.raises(ResourceExistsError) as task_exists:
        await batch.create_task("j", m.BatchTaskCreateOptions(id="T", command_line="/bin/true"))
    assert code_of(task_exists.value) == "TaskExists"


async def test_invalid_property_value_carries_name_value_and_reason(
    batch: BatchClient, batch_emulator: Emulator
) -> None:
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_pool(pool_options("p", nodes=0, task_slots_per_node=0))
    assert caught.value.status_code == 400
    assert code_of(caught.value) == "InvalidPropertyValue"
    details = details_of(caught.value)
    assert details["PropertyName"] == "taskSlotsPerNode"
    assert details["PropertyValue"] == "0"
    assert details["Reason"]
    assert batch_emulator.account is not None and not batch_emulator.account.pools


async def test_a_windows_image_is_refused_with_a_clear_400(batch: BatchClient, batch_emulator: Emulator) -> None:
    windows = m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(
            publisher="MicrosoftWindowsServer", offer="WindowsServer", sku="2022-datacenter"
        ),
        node_agent_sku_id="batch.node.windows amd64",
    )
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_pool(
            m.BatchPoolCreateOptions(id="win", vm_size="standard_d2s_v3", virtual_machine_configuration=windows)
        )
    assert caught.value.status_code == 400
    assert code_of(caught.value) == "InvalidPropertyValue"
    reason = details_of(caught.value)["Reason"]
    assert "Linux" in reason and "Windows" in reason
    assert batch_emulator.account is not None and not batch_emulator.account.pools


@pytest.mark.parametrize("bad_id", ["has space", "x" * 65, "dots.are.bad", "ünïcode"])
async def test_invalid_ids_are_refused(batch: BatchClient, bad_id: str) -> None:
    with pytest.raises(HttpResponseError) as pool_error:
        await batch.create_pool(pool_options(bad_id, nodes=0))
    with pytest.raises(HttpResponseError) as job_error:
        await batch.create_job(m.BatchJobCreateOptions(id=bad_id, pool_info=m.BatchPoolInfo(pool_id="p")))
    for caught in (pool_error, job_error):
        assert caught.value.status_code == 400
        assert code_of(caught.value) == "InvalidPropertyValue"
        assert details_of(caught.value)["PropertyName"] == "id"


async def test_every_answer_carries_request_id_and_data_service_version(
    batch: BatchClient, responses: Responses
) -> None:
    await batch.create_pool(pool_options("p", nodes=0))
    await batch.get_pool("p")
    [p async for p in batch.list_pools()]
    with pytest.raises(ResourceNotFoundError):
        await batch.get_job("nope")
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    await batch.get_job("j")
    await batch.get_task("j", "t")
    await batch.get_job_task_counts("j")
    assert len(responses.seen) >= 8
    for seen in responses.seen:
        headers = seen.http_response.headers
        assert headers.get("DataServiceVersion") == "3.0", seen.http_request.url
        assert len(headers.get("request-id", "")) == 36, seen.http_request.url
        assert headers.get("Date"), seen.http_request.url
    for method, path in (("GET", "/pools/p"), ("GET", "/jobs/j"), ("GET", "/jobs/j/tasks/t")):
        headers = responses.last(method, path).headers
        assert headers["ETag"].startswith("0x8DE") and headers["Last-Modified"].endswith("GMT")
    assert "ETag" not in responses.last("GET", "/pools").headers, "lists carry no ETag"


# --- updates, conflicts and smaller operations ----------------------------------------------------------------


async def test_pool_update_replace_properties_and_the_deleting_pool(
    batch: BatchClient, responses: Responses, batch_emulator: Emulator
) -> None:
    start = m.BatchStartTask(command_line=sh("echo hi"))
    metadata = [m.BatchMetadataItem(name="owner", value="me")]
    await batch.create_pool(pool_options("p", nodes=0, start_task=start, metadata=metadata))

    await batch.update_pool("p", m.BatchPoolUpdateOptions(metadata=[m.BatchMetadataItem(name="k", value="v")]))
    pool = await batch.get_pool("p")
    assert [(i.name, i.value) for i in pool.metadata or []] == [("k", "v")]
    assert pool.start_task is not None, "PATCH leaves what it does not name"

    await batch.replace_pool_properties("p", m.BatchPoolReplaceOptions(application_package_references=[], metadata=[]))
    replaced = responses.last("POST", "/pools/p/updateproperties")
    assert replaced.status_code == 204
    assert replaced.headers["DataServiceId"].endswith("/pools/p/updateproperties")
    pool = await batch.get_pool("p")
    assert pool.start_task is None and not pool.metadata, "updateproperties removes what it leaves out"

    # The pool stays deleting while the refusals are tried: with the fixture's 0.05 s it could be gone before the
    # last of them on a loaded machine, answering 404 instead (seen in CI runs).
    batch_emulator.timings.deletion_delay = 30.0
    await batch.begin_delete_pool("p", polling_interval=0.1)
    conflicts: list[Callable[[], Awaitable[Any]]] = [
        lambda: batch.update_pool("p", m.BatchPoolUpdateOptions(metadata=[])),
        lambda: batch.begin_delete_pool("p", polling_interval=0.1),
        lambda: batch.begin_resize_pool("p", m.BatchPoolResizeOptions(target_dedicated_nodes=1)),
        lambda: batch.create_pool(pool_options("p", nodes=0)),
    ]
    for conflict in conflicts:
        with pytest.raises(ResourceExistsError) as caught:
            await conflict()
        assert code_of(caught.value) == "PoolBeingDeleted"


async def test_on_all_tasks_complete_cannot_go_back_to_noaction(batch: BatchClient) -> None:
    # No pool: the task stays active, so terminatejob does not end the job under the test.
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="later")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    terminate = m.BatchAllTasksCompleteMode.TERMINATE_JOB
    await batch.update_job("j", m.BatchJobUpdateOptions(all_tasks_complete_mode=terminate))
    with pytest.raises(HttpResponseError) as caught:
        await batch.update_job(
            "j",
            m.BatchJobUpdateOptions(all_tasks_complete_mode=m.BatchAllTasksCompleteMode.NO_ACTION, priority=7),
        )
    assert caught.value.status_code == 400 and code_of(caught.value) == "InvalidPropertyValue"
    assert details_of(caught.value)["PropertyName"] == "onAllTasksComplete"
    job = await batch.get_job("j")
    assert job.all_tasks_complete_mode == terminate
    assert job.priority == 0, "a refused update changes nothing"


async def test_delete_task_files(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=sh("echo hi; echo x > out.txt")))
    await finished(batch, "j", "t")
    await batch.delete_task_file("j", "t", "stdout.txt")
    names = {f.name async for f in batch.list_task_files("j", "t")}
    assert "stdout.txt" not in names and "stderr.txt" in names
    with pytest.raises(HttpResponseError) as not_empty:
        await batch.delete_task_file("j", "t", "wd")
    assert not_empty.value.status_code == 409
    await batch.delete_task_file("j", "t", "wd", recursive=True)
    assert "wd" not in {f.name async for f in batch.list_task_files("j", "t")}
    with pytest.raises(ResourceNotFoundError):
        await batch.delete_task_file("j", "t", "stdout.txt")


async def test_client_request_id_is_returned_when_asked_for(batch: BatchClient, responses: Responses) -> None:
    await batch.create_pool(pool_options("p", nodes=0))
    await batch.get_pool("p", headers={"return-client-request-id": "true"})
    asked = responses.last("GET", "/pools/p")
    assert asked.headers["client-request-id"] == asked.request.headers["client-request-id"]
    await batch.get_pool("p")
    assert "client-request-id" not in responses.last("GET", "/pools/p").headers
    with pytest.raises(ResourceNotFoundError):
        await batch.get_job("nope", headers={"return-client-request-id": "true"})
    assert responses.last("GET", "/jobs/nope").headers["client-request-id"]


async def test_download_a_byte_range_of_a_task_file(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=sh("printf 0123456789 >&2")))
    await finished(batch, "j", "t")

    async def part(wanted: str) -> bytes:
        stream = await batch.download_task_file("j", "t", "stderr.txt", ocp_range=wanted)
        return b"".join([chunk async for chunk in stream])

    assert await part("bytes=2-5") == b"2345"  # the end is inclusive
    assert await part("bytes=7-") == b"789"
    assert await part("bytes=8-100") == b"89"
    with pytest.raises(HttpResponseError) as bad:
        await part("bytes=5-2")
    assert bad.value.status_code == 400
