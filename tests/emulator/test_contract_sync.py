"""Contract tests for the synchronous ``azure.batch.BatchClient`` (15.1): a smaller tour than the aio suite.

The emulator runs on the test's event loop, so each scenario runs the blocking client in a worker thread
(``anyio.to_thread.run_sync``) and the loop stays free to answer it.
"""

from __future__ import annotations

import base64
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.core.pipeline import PipelineRequest

from aiobatch.emulator import Emulator, Timings

pytestmark = pytest.mark.anyio

T = TypeVar("T")

UBUNTU = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


#: The SDK types ``polling_interval`` as int; it takes float seconds, and short polls keep these tests fast.
POLL: Any = 0.1
WRONG_KEY = base64.b64encode(b"not the account key, but well formed").decode()


async def in_thread(
    emu: Emulator, scenario: Callable[[BatchClient], T], credential: AzureNamedKeyCredential | None = None
) -> T:
    def run() -> T:
        with BatchClient(emu.endpoint, credential or emu.credential) as batch:
            return scenario(batch)

    return await anyio.to_thread.run_sync(run)


def poll(probe: Callable[[], Any], what: str, limit: float = 10.0) -> Any:
    deadline = time.monotonic() + limit
    while not (value := probe()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def ready_pool(batch: BatchClient, pool_id: str, nodes: int = 1) -> None:
    batch.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=UBUNTU,
            target_dedicated_nodes=nodes,
            task_slots_per_node=2,
        )
    )
    poll(
        lambda: (
            batch.get_pool(pool_id).allocation_state == m.AllocationState.STEADY
            and [n.state for n in batch.list_nodes(pool_id)] == [m.BatchNodeState.IDLE] * nodes
        ),
        f"pool {pool_id} ready",
    )


async def test_sync_pool_job_tasks_files_and_deletion(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> None:
        ready_pool(batch, "p")
        assert batch.pool_exists("p") is True
        assert [p.id for p in batch.list_pools()] == ["p"]
        node = next(iter(batch.list_nodes("p")))
        assert batch.get_node("p", node.id).state == m.BatchNodeState.IDLE
        assert [c.pool_id for c in batch.list_pool_node_counts()] == ["p"]

        batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        tasks = [m.BatchTaskCreateOptions(id=f"t{i}", command_line=f"/bin/sh -c 'echo task {i}'") for i in range(7)]
        result = batch.create_task_collection("j", m.BatchTaskGroup(task_values=tasks))
        assert sorted(r.status for r in result.result_values or []) == [m.BatchTaskAddStatus.SUCCESS] * 7

        poll(lambda: batch.get_job_task_counts("j").task_counts.completed == 7, "tasks completed")
        counts = batch.get_job_task_counts("j").task_counts
        assert (counts.succeeded, counts.failed, counts.active) == (7, 0, 0)
        pages = [[t.id for t in page] for page in batch.list_tasks("j", max_results=3).by_page()]
        assert pages == [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6"]]
        done = list(batch.list_tasks("j", filter="executionInfo/result eq 'success'", select=["id", "executionInfo"]))
        assert len(done) == 7 and all(t.execution_info is not None and t.execution_info.exit_code == 0 for t in done)

        task = batch.get_task("j", "t3")
        assert task.state == m.BatchTaskState.COMPLETED and task.node_info is not None
        assert {f.name for f in batch.list_task_files("j", "t3")} >= {"stdout.txt", "stderr.txt", "wd"}
        assert b"".join(batch.download_task_file("j", "t3", "stdout.txt")) == b"task 3\n"
        assert batch.get_task_file_properties("j", "t3", "stdout.txt").content_length == len(b"task 3\n")

        batch.update_job("j", m.BatchJobUpdateOptions(priority=100))
        assert batch.get_job("j").priority == 100
        batch.delete_task("j", "t6")
        with pytest.raises(ResourceNotFoundError):
            batch.get_task("j", "t6")

        options: Any = {"terminateReason": "UserTerminate"}  # 15.1.0 needs non-empty options here
        batch.begin_terminate_job("j", options, polling_interval=POLL).result()
        job = batch.get_job("j")
        assert job.state == m.BatchJobState.COMPLETED
        assert job.execution_info is not None and job.execution_info.termination_reason == "UserTerminate"
        batch.begin_delete_job("j", polling_interval=POLL).result()
        with pytest.raises(ResourceNotFoundError):
            batch.get_job("j")

        batch.begin_resize_pool("p", m.BatchPoolResizeOptions(target_dedicated_nodes=2), polling_interval=POLL).result()
        assert batch.get_pool("p").current_dedicated_nodes == 2
        batch.begin_delete_pool("p", polling_interval=POLL).result()
        with pytest.raises(ResourceNotFoundError) as gone:
            batch.get_pool("p")
        assert gone.value.error is not None and gone.value.error.code == "PoolNotFound"

    await in_thread(batch_emulator, scenario)
    assert batch_emulator.account is not None and not batch_emulator.account.pools


async def test_sync_errors_and_applications(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> None:
        with pytest.raises(ResourceNotFoundError) as pool_missing:
            batch.get_pool("nope")
        assert pool_missing.value.error is not None and pool_missing.value.error.code == "PoolNotFound"

        batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        with pytest.raises(ResourceExistsError) as job_exists:
            batch.create_job(m.BatchJobCreateOptions(id="J", pool_info=m.BatchPoolInfo(pool_id="p")))
        assert job_exists.value.error is not None and job_exists.value.error.code == "JobExists"

        batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        with pytest.raises(ResourceExistsError) as task_exists:
            batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        assert task_exists.value.error is not None and task_exists.value.error.code == "TaskExists"
        with pytest.raises(ResourceNotFoundError) as task_missing:
            batch.get_task("j", "nope")
        assert task_missing.value.error is not None and task_missing.value.error.code == "TaskNotFound"

        with pytest.raises(HttpResponseError) as invalid:
            batch.create_pool(
                m.BatchPoolCreateOptions(
                    id="p", vm_size="standard_d2s_v3", virtual_machine_configuration=UBUNTU, target_dedicated_nodes=-1
                )
            )
        assert invalid.value.status_code == 400
        details = {d.code: d.message for d in invalid.value.error.details} if invalid.value.error else {}
        assert details["PropertyName"] == "targetDedicatedNodes" and details["PropertyValue"] == "-1"

        assert list(batch.list_applications()) == []
        with pytest.raises(ResourceNotFoundError):
            batch.get_application("nope")

    await in_thread(batch_emulator, scenario)


def code_of(exc: HttpResponseError) -> str | None:
    return exc.error.code if exc.error is not None else None


def nothing_created(emu: Emulator) -> None:
    assert emu.account is not None
    assert not emu.account.pools and not emu.account.jobs, "a refused request must change nothing"
    assert not emu.account.created, "a refused request must commit nothing"


def pool_options(pool_id: str, nodes: int = 1) -> m.BatchPoolCreateOptions:
    return m.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", virtual_machine_configuration=UBUNTU, target_dedicated_nodes=nodes
    )


def _strip_authorization(request: PipelineRequest[Any]) -> None:
    # The custom hook runs after the Shared Key policy has signed: what goes out carries no signature at all.
    request.http_request.headers.pop("Authorization", None)


async def test_sync_wrong_key_is_403_authentication_failed(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> None:
        with pytest.raises(HttpResponseError) as caught:
            batch.create_pool(pool_options("p"))
        assert caught.value.status_code == 403
        assert code_of(caught.value) == "AuthenticationFailed"
        response: Any = caught.value.response
        assert response is not None and response.headers["request-id"]
        with pytest.raises(HttpResponseError) as listing:
            list(batch.list_pools())
        assert listing.value.status_code == 403 and code_of(listing.value) == "AuthenticationFailed"

    await in_thread(batch_emulator, scenario, AzureNamedKeyCredential(batch_emulator.account_name, WRONG_KEY))
    nothing_created(batch_emulator)


async def test_sync_missing_signature_is_401(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> None:
        with pytest.raises(ClientAuthenticationError) as caught:
            batch.create_job(
                m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")),
                raw_request_hook=_strip_authorization,
            )
        assert caught.value.status_code == 401
        assert code_of(caught.value) == "MissingRequiredHeader"

    await in_thread(batch_emulator, scenario)
    nothing_created(batch_emulator)


async def test_sync_auto_pool_goes_with_its_deleted_job(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> str:
        auto = m.BatchAutoPoolSpecification(
            pool_lifetime_option=m.BatchPoolLifetimeOption.JOB,
            keep_alive=False,
            pool=m.BatchPoolSpecification(
                vm_size="standard_d2s_v3", virtual_machine_configuration=UBUNTU, target_dedicated_nodes=1
            ),
        )
        batch.create_job(m.BatchJobCreateOptions(id="auto", pool_info=m.BatchPoolInfo(auto_pool_specification=auto)))
        job = batch.get_job("auto")
        spec = job.pool_info.auto_pool_specification
        assert spec is not None and spec.keep_alive is False
        assert spec.pool_lifetime_option == m.BatchPoolLifetimeOption.JOB
        pool_id = job.execution_info.pool_id if job.execution_info else None
        assert pool_id, "the service names the auto pool in executionInfo.poolId"
        assert batch.pool_exists(pool_id) is True
        assert [p.id for p in batch.list_pools()] == [pool_id]

        batch.create_task("auto", m.BatchTaskCreateOptions(id="t", command_line="/bin/sh -c 'echo auto'"))
        poll(lambda: batch.get_task("auto", "t").state == m.BatchTaskState.COMPLETED, "task on the auto pool")
        assert b"".join(batch.download_task_file("auto", "t", "stdout.txt")) == b"auto\n"

        batch.begin_delete_job("auto", polling_interval=POLL).result()

        def pool_gone() -> bool:
            try:
                batch.get_pool(pool_id)
            except ResourceNotFoundError as exc:
                assert code_of(exc) == "PoolNotFound"
                return True
            return False

        poll(pool_gone, "the auto pool deleted with its job")
        assert list(batch.list_pools()) == []
        return pool_id

    await in_thread(batch_emulator, scenario)
    assert batch_emulator.account is not None and not batch_emulator.account.pools


async def test_sync_terminate_task(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> None:
        ready_pool(batch, "p")
        batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        batch.create_task("j", m.BatchTaskCreateOptions(id="long", command_line="/bin/sh -c 'sleep 30'"))
        poll(lambda: batch.get_task("j", "long").state == m.BatchTaskState.RUNNING, "task running")
        batch.terminate_task("j", "long")
        task = batch.get_task("j", "long")
        assert task.state == m.BatchTaskState.COMPLETED
        assert task.execution_info is not None and task.execution_info.failure_info is not None
        assert task.execution_info.failure_info.code == "TaskEnded"
        assert batch.get_job("j").state == m.BatchJobState.ACTIVE

    with anyio.fail_after(15):  # a task that was not killed would hold this for its 30 s
        await in_thread(batch_emulator, scenario)


@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_sync_task_collection_limits(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> None:
        batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="later")))
        too_many = [m.BatchTaskCreateOptions(id=f"x{i}", command_line="/bin/true") for i in range(101)]
        with pytest.raises(HttpResponseError) as over_count:
            batch.create_task_collection("j", m.BatchTaskGroup(task_values=too_many))
        assert over_count.value.status_code == 400
        assert code_of(over_count.value) == "InvalidPropertyValue"
        details = {d.code: d.message for d in over_count.value.error.details} if over_count.value.error else {}
        assert details["PropertyName"] == "value" and details["PropertyValue"] == "101"

        # About 1.2 MB of command lines in 100 tasks: refused before the tasks are looked at.
        huge = [m.BatchTaskCreateOptions(id=f"h{i}", command_line="echo " + "x" * 12_000) for i in range(100)]
        with pytest.raises(HttpResponseError) as too_large:
            batch.create_task_collection("j", m.BatchTaskGroup(task_values=huge))
        assert too_large.value.status_code == 413
        assert code_of(too_large.value) == "RequestBodyTooLarge"
        assert list(batch.list_tasks("j")) == []

    await in_thread(batch_emulator, scenario)
    assert batch_emulator.account is not None and not batch_emulator.account.jobs["j"].tasks


@pytest.mark.parametrize(
    ("operation", "expression"),
    [("pools", "targetDedicatedNodes gt 1"), ("jobs", "priority eq 0"), ("tasks", "commandLine eq 'x'")],
)
async def test_sync_unsupported_filter_is_the_service_400(
    batch_emulator: Emulator, operation: str, expression: str
) -> None:
    def scenario(batch: BatchClient) -> None:
        batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        listing: dict[str, Callable[[], Any]] = {
            "pools": lambda: batch.list_pools(filter=expression),
            "jobs": lambda: batch.list_jobs(filter=expression),
            "tasks": lambda: batch.list_tasks("j", filter=expression),
        }
        with pytest.raises(HttpResponseError) as caught:
            list(listing[operation]())
        assert caught.value.status_code == 400
        assert code_of(caught.value) == "InvalidQueryParameterValue"
        details = {d.code: d.message for d in caught.value.error.details} if caught.value.error else {}
        assert details["QueryParameterName"] == "$filter"
        assert details["QueryParameterValue"] == expression
        assert details["Reason"]

    await in_thread(batch_emulator, scenario)


async def test_sync_applications_get_and_list(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    (apps / "hello").mkdir(parents=True)
    for version in ("1.0", "2.0"):
        with zipfile.ZipFile(apps / "hello" / f"{version}.zip", "w") as zf:
            zf.writestr("hello.sh", f"#!/bin/sh\necho hello {version}\n")
    (apps / "hello" / "default").write_text("2.0\n")
    timings = Timings(allocation_delay=0.05, node_start_delay=0.05, deletion_delay=0.05)

    def scenario(batch: BatchClient) -> None:
        listed = list(batch.list_applications())
        assert [(a.id, sorted(a.versions)) for a in listed] == [("hello", ["1.0", "2.0"])]
        app = batch.get_application("hello")
        assert app.id == "hello" and sorted(app.versions) == ["1.0", "2.0"]
        assert batch.get_application("HELLO").id == "hello", "application ids are case-insensitive"
        with pytest.raises(ResourceNotFoundError) as missing:
            batch.get_application("nope")
        assert code_of(missing.value) == "ApplicationNotFound"

    async with Emulator(apps_dir=apps, workdir=tmp_path / "w", timings=timings) as emu:
        await in_thread(emu, scenario)


async def test_sync_task_files_and_stdout(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> None:
        ready_pool(batch, "p")
        batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        script = "/bin/sh -c 'echo out; echo err >&2; echo data > result.txt; exit 3'"
        batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=script))
        poll(lambda: batch.get_task("j", "t").state == m.BatchTaskState.COMPLETED, "task completed")
        task = batch.get_task("j", "t")
        assert task.execution_info is not None and task.execution_info.exit_code == 3
        top = {f.name: f for f in batch.list_task_files("j", "t")}
        assert {"stdout.txt", "stderr.txt", "wd"} <= set(top)
        assert top["wd"].is_directory and not top["stdout.txt"].is_directory
        everything = {f.name for f in batch.list_task_files("j", "t", recursive=True)}
        assert "wd/result.txt" in everything
        assert b"".join(batch.download_task_file("j", "t", "stdout.txt")) == b"out\n"
        assert b"".join(batch.download_task_file("j", "t", "stderr.txt")) == b"err\n"
        assert b"".join(batch.download_task_file("j", "t", "wd/result.txt")) == b"data\n"
        with pytest.raises(ResourceNotFoundError) as missing:
            batch.download_task_file("j", "t", "nope.txt")
        assert missing.value.status_code == 404

    await in_thread(batch_emulator, scenario)


async def test_sync_missing_pool_and_job_are_404(batch_emulator: Emulator) -> None:
    def scenario(batch: BatchClient) -> None:
        # azure-batch 15.1's error policy raises on a HEAD's 404 rather than returning False; either way a 404.
        try:
            exists = batch.pool_exists("nope")
        except ResourceNotFoundError as exc:
            assert exc.status_code == 404
        else:
            assert exists is False
        with pytest.raises(ResourceNotFoundError) as pool_missing:
            batch.get_pool("nope")
        assert pool_missing.value.status_code == 404 and code_of(pool_missing.value) == "PoolNotFound"
        with pytest.raises(ResourceNotFoundError) as job_missing:
            batch.get_job("nope")
        assert job_missing.value.status_code == 404 and code_of(job_missing.value) == "JobNotFound"
        with pytest.raises(ResourceNotFoundError) as job_delete:
            batch.begin_delete_job("nope", polling_interval=POLL).result()
        assert code_of(job_delete.value) == "JobNotFound"

    await in_thread(batch_emulator, scenario)
