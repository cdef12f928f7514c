"""Issue 16: node operations through the real ``azure.batch.aio.BatchClient``.

Reboot, reimage, deallocate and start, scheduling, removal and resize-down with each ``nodeDeallocationOption``,
``resizeTimeout``, node users and remote login, extensions, node files, service-log upload and pool usage
metrics. A task that must keep running waits for a flag file in the node's shared directory (which the test
writes when it wants the task to end), so nothing here sleeps for the task's sake.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.batch.models import _models as private_models
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

from aiobatch._azurite import AzuriteServer
from aiobatch.emulator import Emulator
from aiobatch.emulator._nodes import NodeSpan
from aiobatch.emulator._scheduler import Scheduler

from .test_contract_aio import UBUNTU, code_of, pool_options, ready_pool, sh, wait_for

pytestmark = pytest.mark.anyio

#: A task that runs until the test writes ``go`` into the node's shared directory, then succeeds.
WAIT_FOR_GO = sh('while [ ! -f "$AZ_BATCH_NODE_SHARED_DIR/go" ]; do sleep 0.05; done')
#: A task that runs for longer than any test: it only ends by being stopped.
LONG = 'python3 -c "import time; time.sleep(30)"'
FAST = {"polling_interval": 0.05}


@pytest.fixture
async def batch(batch_emulator: Emulator) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as client:
        yield client


def scheduler_of(emulator: Emulator) -> Scheduler:
    scheduler = emulator._scheduler
    assert scheduler is not None
    return scheduler


def node_root(emulator: Emulator, pool_id: str, node_id: str) -> Path:
    assert emulator.account is not None
    return emulator.account.pools[pool_id.lower()].nodes[node_id].root


def release(emulator: Emulator, pool_id: str, node_id: str) -> None:
    """Let `WAIT_FOR_GO` tasks on the node finish."""
    (node_root(emulator, pool_id, node_id) / "shared" / "go").touch()


async def nodes_of(batch: BatchClient, pool_id: str) -> list[m.BatchNode]:
    return [n async for n in batch.list_nodes(pool_id)]


async def task_on_node(batch: BatchClient, pool_id: str, task_id: str, command: str = LONG, **extra: Any) -> str:
    """Create job ``j`` (first time) and run a task; the id of the node it runs on once it runs."""
    if not [j async for j in batch.list_jobs()]:
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id=pool_id)))
    await batch.create_task("j", m.BatchTaskCreateOptions(id=task_id, command_line=command, **extra))

    async def running() -> str | None:
        task = await batch.get_task("j", task_id)
        if task.state == m.BatchTaskState.RUNNING and task.node_info is not None:
            return task.node_info.node_id
        return None

    return await wait_for(running, what=f"task {task_id} running")


async def task_state(batch: BatchClient, task_id: str) -> m.BatchTask:
    return await batch.get_task("j", task_id)


async def node_state_is(batch: BatchClient, pool_id: str, node_id: str, *states: str) -> bool:
    return (await batch.get_node(pool_id, node_id)).state in states


def assert_ended(task: m.BatchTask) -> None:
    assert task.state == m.BatchTaskState.COMPLETED
    assert task.execution_info is not None and task.execution_info.result == m.BatchTaskExecutionResult.FAILURE
    assert task.execution_info.failure_info is not None and task.execution_info.failure_info.code == "TaskEnded"


async def requeued(batch: BatchClient, task_id: str) -> bool:
    task = await task_state(batch, task_id)
    return task.execution_info is not None and task.execution_info.requeue_count >= 1


# -- reboot, reimage, deallocate, start ----------------------------------------------------------------------------


async def test_reboot_with_requeue_runs_the_task_again_and_terminate_ends_it(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    node = await task_on_node(batch, "p", "t1")
    poller = await batch.begin_reboot_node(
        "p", node, private_models.BatchNodeRebootOptions(node_reboot_kind="requeue"), **FAST
    )
    await poller.result()
    after = await batch.get_node("p", node)
    assert after.state in ("starting", "idle", "running") and after.last_boot_time is not None
    await wait_for(lambda: requeued(batch, "t1"), what="t1 requeued")

    async def t1_running_again() -> bool:
        return (await task_state(batch, "t1")).state == m.BatchTaskState.RUNNING

    await wait_for(t1_running_again, what="t1 run again on the rebooted node")
    poller = await batch.begin_reboot_node(
        "p", node, private_models.BatchNodeRebootOptions(node_reboot_kind="terminate"), **FAST
    )
    await poller.result()
    assert_ended(await task_state(batch, "t1"))
    await wait_for(lambda: node_state_is(batch, "p", node, "idle"), what="node idle after reboot")


async def test_reboot_with_taskcompletion_waits_for_the_task_and_takes_no_new_one(
    batch: BatchClient, batch_emulator: Emulator
) -> None:
    await ready_pool(batch, "p")
    node = await task_on_node(batch, "p", "t1", WAIT_FOR_GO)
    await batch.begin_reboot_node(
        "p", node, private_models.BatchNodeRebootOptions(node_reboot_kind="taskcompletion"), **FAST
    )
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t2", command_line="true"))
    assert (await batch.get_node("p", node)).state == m.BatchNodeState.REBOOTING
    assert (await task_state(batch, "t1")).state == m.BatchTaskState.RUNNING
    assert (await task_state(batch, "t2")).state == m.BatchTaskState.ACTIVE  # not on a rebooting node
    release(batch_emulator, "p", node)

    async def both_done() -> bool:
        states = [(await task_state(batch, t)).state for t in ("t1", "t2")]
        return states == [m.BatchTaskState.COMPLETED] * 2

    await wait_for(both_done, what="t1 done, then t2 run after the reboot")
    t1 = await task_state(batch, "t1")
    assert t1.execution_info is not None and t1.execution_info.exit_code == 0


async def test_reimage_wipes_the_node_and_its_users(batch: BatchClient, batch_emulator: Emulator) -> None:
    await ready_pool(batch, "p")
    (node,) = [n.id for n in await nodes_of(batch, "p")]
    assert node is not None
    (node_root(batch_emulator, "p", node) / "shared" / "left-behind").write_text("x")
    await batch.create_node_user("p", node, m.BatchNodeUserCreateOptions(name="alice", password="pw-1"))
    poller = await batch.begin_reimage_node(
        "p", node, private_models.BatchNodeReimageOptions(node_reimage_option="requeue"), **FAST
    )
    await poller.result()
    await wait_for(lambda: node_state_is(batch, "p", node, "idle"), what="node idle after reimage")
    assert not (node_root(batch_emulator, "p", node) / "shared" / "left-behind").exists()
    assert (node_root(batch_emulator, "p", node) / "shared").is_dir()
    with pytest.raises(ResourceNotFoundError) as caught:
        await batch.delete_node_user("p", node, "alice")
    assert code_of(caught.value) == "NodeUserNotFound"


async def test_deallocate_then_start(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    node = await task_on_node(batch, "p", "t1")
    poller = await batch.begin_deallocate_node(
        "p", node, private_models.BatchNodeDeallocateOptions(node_deallocate_option="requeue"), **FAST
    )
    await poller.result()
    await wait_for(lambda: node_state_is(batch, "p", node, "deallocated"), what="node deallocated")
    task = await task_state(batch, "t1")
    assert task.state == m.BatchTaskState.ACTIVE and task.execution_info is not None
    assert task.execution_info.requeue_count == 1
    with pytest.raises(HttpResponseError) as caught:
        await batch.begin_reboot_node("p", node, private_models.BatchNodeRebootOptions(node_reboot_kind="requeue"))
    assert caught.value.status_code == 409

    poller = await batch.begin_start_node("p", node, **FAST)
    await poller.result()
    await wait_for(lambda: node_state_is(batch, "p", node, "running"), what="the started node runs the requeued task")
    with pytest.raises(HttpResponseError) as caught:
        await batch.begin_start_node("p", node)
    assert caught.value.status_code == 409 and code_of(caught.value) == "OperationInvalidForCurrentState"


async def test_disable_scheduling_terminates_and_holds_new_tasks_until_enabled(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    node = await task_on_node(batch, "p", "t1")
    await batch.disable_node_scheduling(
        "p", node, m.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option="terminate")
    )
    assert (await batch.get_node("p", node)).scheduling_state == m.SchedulingState.DISABLED
    assert_ended(await task_state(batch, "t1"))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t2", command_line="true"))
    await wait_for(lambda: node_state_is(batch, "p", node, "idle"), what="node idle")
    assert (await task_state(batch, "t2")).state == m.BatchTaskState.ACTIVE
    await batch.enable_node_scheduling("p", node)
    assert (await batch.get_node("p", node)).scheduling_state == m.SchedulingState.ENABLED

    async def t2_done() -> bool:
        return (await task_state(batch, "t2")).state == m.BatchTaskState.COMPLETED

    await wait_for(t2_done, what="t2 run once scheduling is enabled")


async def test_disable_scheduling_requeue_puts_the_task_back(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    node = await task_on_node(batch, "p", "t1")
    await batch.disable_node_scheduling(
        "p", node, m.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option="requeue")
    )
    task = await task_state(batch, "t1")
    assert task.state == m.BatchTaskState.ACTIVE and task.execution_info is not None
    assert task.execution_info.requeue_count == 1


# -- leaving the pool ------------------------------------------------------------------------------------------------


async def removed(batch: BatchClient, pool_id: str, node_id: str) -> bool:
    pool = await batch.get_pool(pool_id)
    ids = {n.id for n in await nodes_of(batch, pool_id)}
    return pool.allocation_state == m.AllocationState.STEADY and node_id not in ids


@pytest.mark.parametrize("option", ["requeue", "terminate"])
async def test_remove_nodes_with_requeue_or_terminate(batch: BatchClient, option: str) -> None:
    await ready_pool(batch, "p", nodes=2)
    node = await task_on_node(batch, "p", "t1")
    poller = await batch.begin_remove_nodes(
        "p", m.BatchNodeRemoveOptions(node_ids=[node], node_deallocation_option=option), **FAST
    )
    await poller.result()
    assert await removed(batch, "p", node)
    pool = await batch.get_pool("p")
    assert pool.target_dedicated_nodes == 1 and pool.current_dedicated_nodes == 1
    task = await task_state(batch, "t1")
    if option == "terminate":
        assert_ended(task)
    else:
        assert task.execution_info is not None and task.execution_info.requeue_count == 1

        async def elsewhere() -> bool:
            task = await task_state(batch, "t1")
            return task.state == m.BatchTaskState.RUNNING and task.node_info is not None

        await wait_for(elsewhere, what="t1 run again on the other node")


@pytest.mark.parametrize("option", ["taskcompletion", "retaineddata"])
async def test_remove_nodes_waiting_for_the_task(batch: BatchClient, batch_emulator: Emulator, option: str) -> None:
    await ready_pool(batch, "p", nodes=2)
    node = await task_on_node(
        batch, "p", "t1", WAIT_FOR_GO, constraints=m.BatchTaskConstraints(retention_time=dt.timedelta(seconds=1))
    )
    await batch.begin_remove_nodes("p", m.BatchNodeRemoveOptions(node_ids=[node], node_deallocation_option=option))
    assert (await batch.get_node("p", node)).state == m.BatchNodeState.LEAVING_POOL
    assert (await batch.get_pool("p")).allocation_state == m.AllocationState.RESIZING
    assert (await task_state(batch, "t1")).state == m.BatchTaskState.RUNNING
    release(batch_emulator, "p", node)
    await wait_for(lambda: removed(batch, "p", node), what="node removed after its task")
    task = await task_state(batch, "t1")
    assert task.execution_info is not None and task.execution_info.exit_code == 0
    if option == "retaineddata":  # the node stayed until the task's 1-second retention had passed
        assert task.execution_info.end_time is not None
        assert dt.datetime.now(dt.timezone.utc) - task.execution_info.end_time >= dt.timedelta(seconds=0.9)


async def test_resize_down_honours_the_deallocation_option(batch: BatchClient, batch_emulator: Emulator) -> None:
    await ready_pool(batch, "p")
    node = await task_on_node(batch, "p", "t1", WAIT_FOR_GO)
    await batch.begin_resize_pool(
        "p", m.BatchPoolResizeOptions(target_dedicated_nodes=0, node_deallocation_option="taskcompletion")
    )
    await wait_for(lambda: node_state_is(batch, "p", node, "leavingpool"), what="node leaving")
    assert (await task_state(batch, "t1")).state == m.BatchTaskState.RUNNING
    release(batch_emulator, "p", node)
    await wait_for(lambda: removed(batch, "p", node), what="node gone after its task")
    task = await task_state(batch, "t1")
    assert task.execution_info is not None and task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS


async def test_resize_down_with_terminate_ends_the_task(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    node = await task_on_node(batch, "p", "t1")
    await batch.begin_resize_pool(
        "p", m.BatchPoolResizeOptions(target_dedicated_nodes=0, node_deallocation_option="terminate")
    )
    await wait_for(lambda: removed(batch, "p", node), what="node gone")
    assert_ended(await task_state(batch, "t1"))


async def test_a_shrink_that_cannot_finish_in_time_stops_with_a_resize_error(
    batch: BatchClient, batch_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ready_pool(batch, "p")
    node = await task_on_node(batch, "p", "t1", WAIT_FOR_GO)
    # The scheduler's clock seam: 5 minutes of the service's time pass in 0.3 seconds.
    monkeypatch.setattr(scheduler_of(batch_emulator), "real_seconds", lambda seconds: seconds / 1000)
    await batch.begin_resize_pool(
        "p",
        m.BatchPoolResizeOptions(
            target_dedicated_nodes=0, node_deallocation_option="taskcompletion", resize_timeout=dt.timedelta(minutes=5)
        ),
    )

    async def stopped() -> m.BatchPool | None:
        pool = await batch.get_pool("p")
        return pool if pool.allocation_state == m.AllocationState.STEADY else None

    pool = await wait_for(stopped, what="the resize timed out")
    assert pool.resize_errors is not None and [e.code for e in pool.resize_errors] == ["ResizeTimedOut"]
    assert pool.resize_timeout == dt.timedelta(minutes=5)
    assert (await batch.get_node("p", node)).state == m.BatchNodeState.RUNNING  # stays, still working
    release(batch_emulator, "p", node)


async def test_a_resize_timeout_under_five_minutes_is_refused(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    for call in (
        batch.begin_resize_pool(
            "p", m.BatchPoolResizeOptions(target_dedicated_nodes=0, resize_timeout=dt.timedelta(minutes=4))
        ),
        batch.begin_remove_nodes(
            "p", m.BatchNodeRemoveOptions(node_ids=["tvmps_x_d"], resize_timeout=dt.timedelta(minutes=1))
        ),
    ):
        with pytest.raises(HttpResponseError) as caught:
            await call
        assert caught.value.status_code == 400 and code_of(caught.value) == "InvalidPropertyValue"


async def test_remove_nodes_refuses_an_unknown_node_and_a_resizing_pool(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    with pytest.raises(ResourceNotFoundError) as caught:
        await batch.begin_remove_nodes("p", m.BatchNodeRemoveOptions(node_ids=["tvmps_nope_d"]))
    assert code_of(caught.value) == "NodeNotFound"
    await batch.begin_resize_pool("p", m.BatchPoolResizeOptions(target_dedicated_nodes=2))
    (node,) = [n.id for n in await nodes_of(batch, "p")]
    with pytest.raises(HttpResponseError) as conflict:
        await batch.begin_remove_nodes("p", m.BatchNodeRemoveOptions(node_ids=[str(node)]))
    assert conflict.value.status_code == 409 and code_of(conflict.value) == "PoolNotSteady"


async def test_autoscale_node_deallocation_option_is_honoured(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    node = await task_on_node(batch, "p", "t1")
    await batch.enable_pool_auto_scale(
        "p",
        m.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = 0; $NodeDeallocationOption = terminate;",
            auto_scale_evaluation_interval=dt.timedelta(minutes=5),
        ),
    )
    await wait_for(lambda: removed(batch, "p", node), what="node gone by the formula")
    assert_ended(await task_state(batch, "t1"))


# -- users, remote login, extensions ---------------------------------------------------------------------------------


async def test_node_users_create_replace_delete_and_no_secret_is_kept(
    batch: BatchClient, batch_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiobatch")
    await ready_pool(batch, "p")
    (node,) = [str(n.id) for n in await nodes_of(batch, "p")]
    secret = "S3cret-pw-never-shown"
    await batch.create_node_user(
        "p",
        node,
        m.BatchNodeUserCreateOptions(name="alice", password=secret, is_admin=True, ssh_public_key="ssh-rsa AAAA"),
    )
    with pytest.raises(HttpResponseError) as caught:
        await batch.create_node_user("p", node, m.BatchNodeUserCreateOptions(name="Alice", password="x"))
    assert caught.value.status_code == 409 and code_of(caught.value) == "NodeUserExists"
    with pytest.raises(HttpResponseError) as bad:
        await batch.create_node_user("p", node, m.BatchNodeUserCreateOptions(name="bad name!", password="x"))
    assert bad.value.status_code == 400 and code_of(bad.value) == "InvalidPropertyValue"
    assert secret not in str(bad.value)

    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    await batch.replace_node_user(
        "p", node, "alice", m.BatchNodeUserReplaceOptions(password="other", expiry_time=expiry)
    )
    assert batch_emulator.account is not None
    user = batch_emulator.account.pools["p"].nodes[node].users["alice"]
    assert user.is_admin and user.has_password and not user.has_ssh_public_key
    assert abs((user.expiry_time - expiry).total_seconds()) < 1
    assert secret not in repr(user) and secret not in caplog.text
    assert (
        secret
        not in scheduler_of(batch_emulator)
        .nodes.service_log(
            batch_emulator.account.pools["p"].nodes[node], dt.datetime.min.replace(tzinfo=dt.timezone.utc), None
        )
        .decode()
    )

    await batch.delete_node_user("p", node, "alice")
    with pytest.raises(ResourceNotFoundError) as gone:
        await batch.replace_node_user("p", node, "alice", m.BatchNodeUserReplaceOptions(password="x"))
    assert code_of(gone.value) == "NodeUserNotFound"


async def test_remote_login_settings(batch: BatchClient) -> None:
    await ready_pool(batch, "p", nodes=2)
    ports = set()
    for node in await nodes_of(batch, "p"):
        assert node.id is not None
        settings = await batch.get_node_remote_login_settings("p", node.id)
        assert settings.remote_login_ip_address == "127.0.0.1"
        ports.add(settings.remote_login_port)
    assert len(ports) == 2


async def test_node_extensions_list_and_get(batch: BatchClient) -> None:
    """A node lists its pool's extensions: none, since the emulator refuses them (they install software)."""
    await ready_pool(batch, "plain")
    (plain,) = [str(n.id) for n in await nodes_of(batch, "plain")]
    assert [e async for e in batch.list_node_extensions("plain", plain)] == []
    with pytest.raises(ResourceNotFoundError) as caught:
        await batch.get_node_extension("plain", plain, "monitor")
    assert code_of(caught.value) == "NodeExtensionNotFound"

    options = pool_options("ext")
    # A configuration of its own: pool_options shares one UBUNTU object between every test.
    options.virtual_machine_configuration = m.VirtualMachineConfiguration(
        image_reference=UBUNTU.image_reference,
        node_agent_sku_id=UBUNTU.node_agent_sku_id,
        extensions=[m.VMExtension(name="monitor", publisher="Microsoft.Azure.Monitor", type="AzureMonitorLinuxAgent")],
    )
    with pytest.raises(HttpResponseError) as refused:
        await batch.create_pool(options)
    assert refused.value.status_code == 400
    assert refused.value.response is not None
    assert "virtualMachineConfiguration.extensions" in refused.value.response.text()


# -- node files ------------------------------------------------------------------------------------------------------


async def test_node_files_list_get_properties_and_delete(batch: BatchClient, batch_emulator: Emulator) -> None:
    await ready_pool(batch, "p")
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=sh("echo hello-node")))

    async def done() -> m.BatchTask | None:
        task = await task_state(batch, "t")
        return task if task.state == m.BatchTaskState.COMPLETED else None

    task = await wait_for(done, what="t done")
    assert task.node_info is not None and task.node_info.node_id is not None
    node = task.node_info.node_id
    top = {f.name: f.is_directory async for f in batch.list_node_files("p", node)}
    assert {"startup", "shared", "workitems", "applications"} <= set(top) and all(top.values())
    everything = {f.name async for f in batch.list_node_files("p", node, recursive=True)}
    stdout = "workitems/j/job-1/t/stdout.txt"
    assert stdout in everything

    body = b"".join([c async for c in await batch.download_node_file("p", node, stdout)])
    assert body == b"hello-node\n"
    ranged = b"".join([c async for c in await batch.download_node_file("p", node, stdout, ocp_range="bytes=0-4")])
    assert ranged == b"hello"
    props = await batch.get_node_file_properties("p", node, stdout)
    assert props.content_length == len(body) and props.is_directory is False

    await batch.delete_node_file("p", node, stdout)
    with pytest.raises(ResourceNotFoundError):
        await batch.get_node_file_properties("p", node, stdout)
    with pytest.raises(ResourceNotFoundError) as caught:
        await batch.delete_node_file("p", node, stdout)
    assert code_of(caught.value) == "FileNotFound"  # (the SDK reads no error body from a download or a HEAD)


async def test_node_files_hostile_entries_are_not_found(
    batch: BatchClient, batch_emulator: Emulator, tmp_path: Path
) -> None:
    """A FIFO and a link out of the node's directory: not listed, not served (404), never blocking."""
    await ready_pool(batch, "p")
    (node,) = [str(n.id) for n in await nodes_of(batch, "p")]
    shared = node_root(batch_emulator, "p", node) / "shared"
    outside = tmp_path / "outside.txt"
    outside.write_text("secret outside the node")
    os.mkfifo(shared / "fifo")
    (shared / "out").symlink_to(outside)
    (shared / "dir-out").symlink_to(tmp_path)
    listed = {f.name async for f in batch.list_node_files("p", node, recursive=True)}
    assert not {"shared/fifo", "shared/out", "shared/dir-out"} & listed
    for name in ("shared/fifo", "shared/out", "shared/dir-out/outside.txt", "../outside.txt"):
        with pytest.raises(ResourceNotFoundError):
            b"".join([c async for c in await batch.download_node_file("p", node, name)])
        with pytest.raises(ResourceNotFoundError):
            await batch.get_node_file_properties("p", node, name)
    with pytest.raises(ResourceNotFoundError) as caught:
        await batch.delete_node_file("p", node, "../outside.txt")
    assert code_of(caught.value) == "FileNotFound"
    await batch.delete_node_file("p", node, "shared/out")  # the link goes, never its target
    assert outside.exists() and not (shared / "out").is_symlink()


async def test_node_operations_on_unknown_nodes_are_node_not_found(batch: BatchClient) -> None:
    await ready_pool(batch, "p")
    with pytest.raises(ResourceNotFoundError) as caught:
        [f async for f in batch.list_node_files("p", "tvmps_nope_d")]
    assert code_of(caught.value) == "NodeNotFound"
    with pytest.raises(ResourceNotFoundError):
        await batch.get_node_remote_login_settings("p", "tvmps_nope_d")


# -- service logs and usage metrics ----------------------------------------------------------------------------------


async def test_upload_node_logs_writes_the_nodes_lines_to_the_container(
    batch: BatchClient, azurite: AzuriteServer
) -> None:
    await ready_pool(batch, "p")
    (node,) = [str(n.id) for n in await nodes_of(batch, "p")]
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as blobs:
        container = blobs.get_container_client("node-logs")
        await container.create_container()
        sas = generate_container_sas(
            azurite.account_name,
            "node-logs",
            account_key=azurite.account_key,
            permission=ContainerSasPermissions(create=True, write=True),
            expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
        )
        result = await batch.upload_node_logs(
            "p",
            node,
            m.UploadBatchServiceLogsOptions(
                container_url=f"{container.url}?{sas}",
                start_time=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5),
            ),
        )
        assert result.number_of_files_uploaded == 1
        assert result.virtual_directory_name is not None
        assert result.virtual_directory_name.split("/")[1:3] == ["p", node]
        names = [b.name async for b in container.list_blobs(name_starts_with=result.virtual_directory_name)]
        assert len(names) == 1
        text = (await (await container.download_blob(names[0])).readall()).decode()
        assert "node state: idle" in text


async def test_pool_usage_metrics_count_core_hours_per_pool_and_hour(
    batch: BatchClient, batch_emulator: Emulator
) -> None:
    nodes = scheduler_of(batch_emulator).nodes
    hour = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=3)
    # Two 2-core nodes: one for the whole hour, one for half of it and a quarter of the next.
    nodes.departed.extend(
        [
            NodeSpan("old", "Standard_D2s_v3", hour - dt.timedelta(minutes=10), hour + dt.timedelta(hours=1)),
            NodeSpan("old", "Standard_D2s_v3", hour + dt.timedelta(minutes=30), hour + dt.timedelta(minutes=75)),
        ]
    )
    rows = [
        r
        async for r in batch.list_pool_usage_metrics(
            start_time=hour, end_time=hour + dt.timedelta(hours=2), filter="poolId eq 'old'"
        )
    ]
    assert [(r.pool_id, r.start_time, r.total_core_hours) for r in rows] == [
        ("old", hour, pytest.approx(3.0)),
        ("old", hour + dt.timedelta(hours=1), pytest.approx(0.5)),
    ]
    assert rows[0].end_time == hour + dt.timedelta(hours=1) and rows[0].vm_size == "standard_d2s_v3"
    # Without times: only the last hour that is over, in which "old" had no node.
    assert [r async for r in batch.list_pool_usage_metrics(filter="poolId eq 'old'")] == []


async def test_pool_usage_metrics_count_the_nodes_still_in_their_pool(
    batch: BatchClient, batch_emulator: Emulator
) -> None:
    await ready_pool(batch, "live", nodes=2)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)  # two hours on, the last full hour is all theirs
    rows = scheduler_of(batch_emulator).nodes.usage_metrics(None, None, now=later)
    assert [(r["poolId"], r["totalCoreHours"]) for r in rows] == [("live", pytest.approx(4.0))]
