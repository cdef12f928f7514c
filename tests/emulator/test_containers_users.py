"""Issue 16, items 1 and 4: container tasks and user identities, through the real ``azure.batch.aio.BatchClient``.

Without a container runtime, a container task or pool is the service's 400 naming the property and saying how to
enable it. With one, the task runs through it. There is no Docker on the machines these tests run on, so the
runtime is a fake: a small shell script standing in for ``docker`` that records its argv and runs the command on
the host (the command after the image, in the ``-w`` directory). It stands in for a service that is not there only to
shape the call -- what is asserted is the command the emulator builds and that the task's outcome comes from what
the runtime ran, not from a pretended container.

User identities: the test machine runs as root, where admin elevation is honoured; the refusal for a non-root
emulator is tested with ``os.geteuid`` patched to a non-root id (shaping the environment, nothing else).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError

from aiobatch.emulator import Emulator
from aiobatch.emulator import _support as support
from aiobatch.local import TEST_TIMINGS

pytestmark = pytest.mark.anyio

IMAGE = "fake/image:1"

UBUNTU = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)

FAKE_RUNTIME = """#!/bin/sh
# Stands in for docker: records its argv (one argument a line, then a blank line), then does what was asked
# on the host: "pull" succeeds, "run" runs the command after the image in the -w directory.
for arg in "$@"; do printf '%s\\n' "$arg"; done >> {log}
printf '\\n' >> {log}
[ "$1" = pull ] && exit 0
shift
while [ $# -gt 0 ]; do
  case "$1" in
    -w) cd "$2"; shift 2 ;;
    -v|-e) shift 2 ;;
    {image}) shift; break ;;
    *) shift ;;
  esac
done
exec "$@"
"""


def values(error: HttpResponseError) -> dict[str, str]:
    assert error.response is not None
    return {pair["key"]: pair["value"] for pair in error.response.json().get("values", [])}


async def refused(call: Any, prop: str) -> dict[str, str]:
    with pytest.raises(HttpResponseError) as caught:
        await call
    assert caught.value.status_code == 400
    assert caught.value.error is not None and caught.value.error.code == "InvalidPropertyValue"
    found = values(caught.value)
    assert found["PropertyName"] == prop
    assert "does not support" in found["Reason"]
    return found


async def completed(batch: BatchClient, job: str, task: str) -> m.BatchTask:
    with anyio.fail_after(20):
        while (got := await batch.get_task(job, task)).state != m.BatchTaskState.COMPLETED:
            await anyio.sleep(0.05)
    return got


async def download(batch: BatchClient, job: str, task: str, path: str) -> bytes:
    return b"".join([chunk async for chunk in await batch.download_task_file(job, task, path)])


@pytest.fixture
async def batch(batch_emulator: Emulator) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as client:
        yield client


def container_pool(pool_id: str = "p", **extra: Any) -> m.BatchPoolCreateOptions:
    config = m.VirtualMachineConfiguration(
        image_reference=UBUNTU.image_reference,
        node_agent_sku_id=UBUNTU.node_agent_sku_id,
        container_configuration=m.BatchContainerConfiguration(
            type=m.ContainerType.DOCKER_COMPATIBLE, container_image_names=[IMAGE]
        ),
    )
    return m.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", virtual_machine_configuration=config, **extra
    )


# --- containers ---------------------------------------------------------------------------------------------------


async def test_container_tasks_and_pools_are_refused_without_a_runtime(batch: BatchClient) -> None:
    """They ran on the host as if the image were there; now the 400 says how to point the emulator at a runtime."""
    found = await refused(batch.create_pool(container_pool()), "virtualMachineConfiguration.containerConfiguration")
    assert "--container-runtime" in found["Reason"]
    assert [p async for p in batch.list_pools()] == []
    await batch.create_pool(
        m.BatchPoolCreateOptions(id="p", vm_size="standard_d2s_v3", virtual_machine_configuration=UBUNTU)
    )
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    task = m.BatchTaskCreateOptions(
        id="t", command_line="true", container_settings=m.BatchTaskContainerSettings(image_name=IMAGE)
    )
    found = await refused(batch.create_task("j", task), "containerSettings")
    assert "container_runtime" in found["Reason"]
    result = await batch.create_task_collection("j", m.BatchTaskGroup(task_values=[task]))
    assert [r.status for r in result.result_values or []] == [m.BatchTaskAddStatus.CLIENT_ERROR]
    assert [t async for t in batch.list_tasks("j")] == []


@pytest.fixture
def fake_runtime(tmp_path: Path) -> tuple[Path, Path]:
    """(the fake runtime's path, the file it records its calls in)."""
    log = tmp_path / "runtime-calls.txt"
    script = tmp_path / "fake-docker"
    script.write_text(FAKE_RUNTIME.replace("{log}", str(log)).replace("{image}", IMAGE), encoding="utf-8")
    script.chmod(0o755)
    return script, log


def calls(log: Path) -> list[list[str]]:
    return [block.split("\n") for block in log.read_text(encoding="utf-8").split("\n\n") if block]


async def test_with_a_runtime_a_container_task_runs_through_it(tmp_path: Path, fake_runtime: tuple[Path, Path]) -> None:
    runtime, log = fake_runtime
    async with (
        Emulator(workdir=tmp_path / "emulator", timings=TEST_TIMINGS, container_runtime=runtime) as emulator,
        BatchClient(emulator.endpoint, emulator.credential) as batch,
    ):
        await batch.create_pool(container_pool(target_dedicated_nodes=1))
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        settings = m.BatchTaskContainerSettings(image_name=IMAGE, container_run_options="--cpus 1")
        command = "/bin/sh -c 'echo in $AZ_BATCH_TASK_ID; pwd'"  # no shell unless it starts one, as on Azure
        await batch.create_task(
            "j",
            m.BatchTaskCreateOptions(
                id="t",
                command_line=command,
                container_settings=settings,
                environment_settings=[m.EnvironmentSetting(name="MINE", value="1")],
            ),
        )
        task = await completed(batch, "j", "t")
        assert task.execution_info is not None and task.execution_info.result == m.BatchTaskExecutionResult.SUCCESS
        node = task.node_info
        assert node is not None and node.task_root_directory is not None
        out = (await download(batch, "j", "t", "stdout.txt")).decode()
        assert out.splitlines()[0] == "in t"
        wd = out.splitlines()[1]
        assert wd.endswith(f"{node.task_root_directory}/wd")
    made = calls(log)
    assert made[0] == ["pull", IMAGE]  # as the node started, before the task
    run = made[1]
    assert run[:3] == ["run", "--rm", "-v"]
    root, _, same = run[3].partition(":")
    assert root == same and wd.startswith(root)
    assert run[4:6] == ["-w", wd]
    passed = {run[i + 1] for i, arg in enumerate(run) if arg == "-e"}
    assert {"AZ_BATCH_TASK_ID", "AZ_BATCH_NODE_ROOT_DIR", "MINE"} <= passed and "PATH" not in passed
    assert run[-6:] == ["--cpus", "1", IMAGE, "/bin/sh", "-c", "echo in $AZ_BATCH_TASK_ID; pwd"]


async def test_a_container_runtime_that_does_not_exist_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="container runtime"):
        Emulator(container_runtime=tmp_path / "no-such-runtime")


# --- user identity ------------------------------------------------------------------------------------------------


async def test_a_task_run_as_an_unknown_user_fails_as_on_azure(batch: BatchClient) -> None:
    """An unknown userName ran like any other task; now the task fails (UserNotFound) without running."""
    await batch.create_pool(
        m.BatchPoolCreateOptions(
            id="p",
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=UBUNTU,
            target_dedicated_nodes=1,
            user_accounts=[m.UserAccount(name="alice", password="pw-not-logged")],
        )
    )
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    for task_id, user in (("known", "alice"), ("unknown", "bob")):
        await batch.create_task(
            "j",
            m.BatchTaskCreateOptions(
                id=task_id,
                command_line='/bin/sh -c "echo $AZ_BATCH_TASK_USER > mine.txt"',
                user_identity=m.UserIdentity(username=user),
            ),
        )
    known = await completed(batch, "j", "known")
    assert known.execution_info is not None and known.execution_info.exit_code == 0
    assert await download(batch, "j", "known", "wd/mine.txt") == b"alice\n"
    unknown = await completed(batch, "j", "unknown")
    info = unknown.execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.FAILURE and info.exit_code is None
    assert info.failure_info is not None and info.failure_info.code == "UserNotFound"
    assert info.failure_info.category == "usererror"


@pytest.fixture
async def non_root_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BatchClient]:
    """A client of an emulator that runs as a user without admin rights."""
    monkeypatch.setattr(support.os, "geteuid", lambda: 1000)
    async with (
        Emulator(workdir=tmp_path / "emulator", timings=TEST_TIMINGS) as emulator,
        BatchClient(emulator.endpoint, emulator.credential) as batch,
    ):
        yield batch


async def test_admin_elevation_is_refused_by_an_emulator_without_admin_rights(non_root_batch: BatchClient) -> None:
    """admin and nonadmin ran alike; an emulator that cannot give a task admin rights now says so."""
    batch = non_root_batch
    admin = m.UserIdentity(auto_user=m.AutoUserSpecification(scope="task", elevation_level="admin"))
    pool = m.BatchPoolCreateOptions(
        id="p",
        vm_size="standard_d2s_v3",
        virtual_machine_configuration=UBUNTU,
        user_accounts=[m.UserAccount(name="root-ish", password="pw", elevation_level="admin")],
    )
    found = await refused(batch.create_pool(pool), "userAccounts[0].elevationLevel")
    assert "root" in found["Reason"]
    await batch.create_pool(
        m.BatchPoolCreateOptions(id="p", vm_size="standard_d2s_v3", virtual_machine_configuration=UBUNTU)
    )
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await refused(
        batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="true", user_identity=admin)),
        "userIdentity.autoUser.elevationLevel",
    )
    nonadmin = m.UserIdentity(auto_user=m.AutoUserSpecification(scope="task", elevation_level="nonadmin"))
    await batch.create_task("j", m.BatchTaskCreateOptions(id="n", command_line="true", user_identity=nonadmin))


async def test_admin_elevation_is_honoured_by_an_emulator_running_as_root(batch_emulator: Emulator) -> None:
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        pytest.skip("the emulator does not run as root here")
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_pool(
            m.BatchPoolCreateOptions(
                id="p", vm_size="standard_d2s_v3", virtual_machine_configuration=UBUNTU, target_dedicated_nodes=1
            )
        )
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        admin = m.UserIdentity(auto_user=m.AutoUserSpecification(scope="task", elevation_level="admin"))
        await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="id -u", user_identity=admin))
        await completed(batch, "j", "t")
        assert await download(batch, "j", "t", "stdout.txt") == b"0\n"


def test_the_cli_refuses_a_container_runtime_it_cannot_find(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aiobatch.emulator.__main__ import build_parser, main

    assert main(["--container-runtime", str(tmp_path / "no-such-runtime")]) == 2
    assert "--container-runtime" in capsys.readouterr().err
    assert build_parser().parse_args(["--container-runtime", "podman"]).container_runtime == "podman"
