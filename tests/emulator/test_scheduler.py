"""Execution semantics through the real SDK: slots, retries, wall clock, kills, quotas, start tasks, auto-pools."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient

from _support import poll_until
from aiobatch.emulator import Emulator, Quotas, Timings
from aiobatch.emulator._model import Node, Pool
from aiobatch.emulator._types import TaskOutcome, TaskRun

pytestmark = pytest.mark.anyio

IMAGE = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


def pool(pool_id: str, nodes: int = 1, **kwargs: object) -> m.BatchPoolCreateOptions:
    return m.BatchPoolCreateOptions(
        id=pool_id,
        vm_size="standard_d2s_v3",
        virtual_machine_configuration=IMAGE,
        target_dedicated_nodes=nodes,
        **kwargs,
    )


async def until(check: Callable[[], Awaitable[bool]], limit: float = 20.0) -> None:
    """Poll ``check`` until it holds, as a client would; fail after ``limit`` seconds."""
    await poll_until(check, limit, interval=0.05)


async def wait_completed(batch: BatchClient, job_id: str, count: int) -> list[m.BatchTask]:
    async def done() -> bool:
        counts = await batch.get_job_task_counts(job_id)
        return counts.task_counts.completed >= count

    await until(done)
    return [t async for t in batch.list_tasks(job_id)]


async def test_slots_bound_concurrency_and_spread_over_nodes(batch_emulator: Emulator, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_pool(pool("p", nodes=2, task_slots_per_node=2))
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        # Each task records how many tasks are running alongside it.
        script = (
            f"ls {marks} | wc -l > count.txt; touch {marks}/$AZ_BATCH_TASK_ID; sleep 0.4; rm {marks}/$AZ_BATCH_TASK_ID"
        )
        tasks = [m.BatchTaskCreateOptions(id=f"t{i}", command_line=f"/bin/sh -c '{script}'") for i in range(8)]
        await batch.create_task_collection("j", m.BatchTaskGroup(task_values=tasks))
        done = await wait_completed(batch, "j", 8)
        assert all(t.execution_info and t.execution_info.result == "success" for t in done)
        assert len({t.node_info.node_id for t in done if t.node_info}) == 2
        peak = max(int((_wd(batch_emulator, t) / "count.txt").read_text()) for t in done if t.node_info)
        assert peak <= 3, "at most 4 tasks (2 nodes x 2 slots) may run at once"
        starts = sorted(t.execution_info.start_time for t in done if t.execution_info and t.execution_info.start_time)
        # 8 tasks of 0.4 s in 4 slots need two waves: the fifth start comes after the first ends.
        assert (starts[4] - starts[0]).total_seconds() >= 0.3


def _wd(emulator: Emulator, task: m.BatchTask) -> Path:
    assert task.node_info is not None and emulator.account is not None
    node = emulator.account.pools[task.node_info.pool_id.lower()].nodes[task.node_info.node_id]
    return node.root / task.node_info.task_root_directory / "wd"


async def test_failing_task_runs_max_retries_plus_one_then_fails(batch_emulator: Emulator) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_pool(pool("p"))
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        await batch.create_task(
            "j",
            m.BatchTaskCreateOptions(
                id="flaky",
                command_line="/bin/sh -c 'echo attempt >> $AZ_BATCH_NODE_SHARED_DIR/log; exit 3'",
                constraints=m.BatchTaskConstraints(max_task_retry_count=2),
            ),
        )
        [task] = await wait_completed(batch, "j", 1)
        info = task.execution_info
        assert info is not None
        assert info.result == "failure" and info.exit_code == 3 and info.retry_count == 2
        assert info.failure_info is not None and info.failure_info.code == "FailureExitCode"
        assert info.failure_info.category == "usererror"
        assert batch_emulator.account is not None
        node = next(iter(batch_emulator.account.pools["p"].nodes.values()))
        assert (node.root / "shared" / "log").read_text().split() == ["attempt"] * 3, "k retries = k + 1 attempts"


async def test_max_wall_clock_time_ends_the_task(batch_emulator: Emulator) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_pool(pool("p"))
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        import datetime as dt

        await batch.create_task(
            "j",
            m.BatchTaskCreateOptions(
                id="slow",
                command_line="/bin/sleep 30",
                constraints=m.BatchTaskConstraints(max_wall_clock_time=dt.timedelta(seconds=1)),
            ),
        )
        [task] = await wait_completed(batch, "j", 1)
        assert task.execution_info is not None and task.execution_info.result == "failure"
        assert task.execution_info.failure_info is not None
        assert task.execution_info.failure_info.code == "TaskEnded"
        assert task.execution_info.end_time and task.execution_info.start_time
        assert (task.execution_info.end_time - task.execution_info.start_time).total_seconds() < 10


async def _running_pid(batch: BatchClient, emulator: Emulator, job: str, task_id: str) -> int:
    async def started() -> bool:
        task = await batch.get_task(job, task_id)
        return task.state == "running" and (_wd(emulator, task) / "pid").exists()

    await until(started)
    task = await batch.get_task(job, task_id)
    return int((_wd(emulator, task) / "pid").read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("how", ["terminate_job", "delete_job", "terminate_task", "delete_pool"])
async def test_ending_work_kills_its_processes(batch_emulator: Emulator, how: str) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_pool(pool("p"))
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        await batch.create_task(
            "j", m.BatchTaskCreateOptions(id="long", command_line="/bin/sh -c 'echo $$ > pid; exec sleep 60'")
        )
        pid = await _running_pid(batch, batch_emulator, "j", "long")
        assert _alive(pid)
        assert batch_emulator.account is not None
        node_root = next(iter(batch_emulator.account.pools["p"].nodes.values())).root
        if how == "terminate_job":
            await (
                await batch.begin_terminate_job(
                    "j", m._models.BatchJobTerminateOptions(termination_reason="UserTerminate"), polling_interval=0.05
                )
            ).result()
            task = await batch.get_task("j", "long")
            assert task.state == "completed" and task.execution_info.failure_info.code == "TaskEnded"
            assert (await batch.get_job("j")).state == "completed"
        elif how == "delete_job":
            await (await batch.begin_delete_job("j", polling_interval=0.05)).result()
        elif how == "terminate_task":
            await batch.terminate_task("j", "long")
            assert (await batch.get_task("j", "long")).state == "completed"
        else:
            await (await batch.begin_delete_pool("p", polling_interval=0.05)).result()
            assert not node_root.exists(), "deleting a pool removes its nodes' directories"
        await until(lambda: _false_async(_alive(pid)), limit=10)


async def _false_async(value: bool) -> bool:
    return not value


async def test_quota_gives_resize_error_instead_of_nodes(tmp_path: Path) -> None:
    emulator = Emulator(
        workdir=tmp_path, timings=Timings(allocation_delay=0.1, node_start_delay=0.05), quotas=Quotas(dedicated_cores=4)
    )
    async with emulator, BatchClient(emulator.endpoint, emulator.credential) as batch:
        await batch.create_pool(pool("big", nodes=3))  # 3 x 2 cores > 4

        async def steady() -> bool:
            return (await batch.get_pool("big")).allocation_state == "steady"

        await until(steady)
        got = await batch.get_pool("big")
        assert got.current_dedicated_nodes == 2
        assert got.resize_errors and got.resize_errors[0].code == "AccountCoreQuotaReached"
        assert "quota" in (got.resize_errors[0].message or "").lower()


async def test_start_task_states_and_failure(batch_emulator: Emulator) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_pool(
            pool("good", start_task=m.BatchStartTask(command_line="/bin/sh -c 'sleep 0.3'", wait_for_success=True))
        )
        await batch.create_pool(
            pool("bad", start_task=m.BatchStartTask(command_line="/bin/sh -c 'exit 7'", wait_for_success=True))
        )
        seen: set[str] = set()

        async def idle() -> bool:
            nodes = [n async for n in batch.list_nodes("good")]
            seen.update(n.state.lower() for n in nodes if n.state)
            return bool(nodes) and nodes[0].state == "idle"

        await until(idle)
        assert "waitingforstarttask" in seen

        async def failed() -> bool:
            nodes = [n async for n in batch.list_nodes("bad")]
            return bool(nodes) and nodes[0].state == "starttaskfailed"

        await until(failed)
        [node] = [n async for n in batch.list_nodes("bad")]
        assert node.start_task_info is not None and node.start_task_info.exit_code == 7
        assert node.start_task_info.failure_info is not None


async def test_auto_pool_lives_and_dies_with_its_job(batch_emulator: Emulator) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        spec = m.BatchAutoPoolSpecification(
            pool_lifetime_option=m.BatchPoolLifetimeOption.JOB,
            keep_alive=False,
            pool=m.BatchPoolSpecification(
                vm_size="standard_d2s_v3", virtual_machine_configuration=IMAGE, target_dedicated_nodes=1
            ),
        )
        await batch.create_job(
            m.BatchJobCreateOptions(id="auto", pool_info=m.BatchPoolInfo(auto_pool_specification=spec))
        )
        pool_id = (await batch.get_job("auto")).execution_info.pool_id
        assert pool_id and [p.id async for p in batch.list_pools()] == [pool_id]
        await batch.create_task("auto", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        await batch.update_job(
            "auto", m.BatchJobUpdateOptions(all_tasks_complete_mode=m.BatchAllTasksCompleteMode.TERMINATE_JOB)
        )

        async def pool_gone() -> bool:
            return [p async for p in batch.list_pools()] == []

        await until(pool_gone)
        job = await batch.get_job("auto")
        assert job.state == "completed" and job.execution_info.termination_reason == "AllTasksComplete"


async def test_app_package_environment(batch_emulator: Emulator, tmp_path: Path) -> None:
    import zipfile

    apps = tmp_path / "apps" / "tool"
    apps.mkdir(parents=True)
    with zipfile.ZipFile(apps / "1.2.zip", "w") as zf:
        info = zipfile.ZipInfo("run.sh")
        info.external_attr = 0o755 << 16
        zf.writestr(info, "#!/bin/sh\necho packaged $1\n")
    emulator = Emulator(apps_dir=tmp_path / "apps", workdir=tmp_path / "w", timings=Timings(0.1, 0.05))
    async with emulator, BatchClient(emulator.endpoint, emulator.credential) as batch:
        apps_seen = [a.id async for a in batch.list_applications()]
        assert apps_seen == ["tool"]
        await batch.create_pool(
            pool(
                "p",
                application_package_references=[
                    m.BatchApplicationPackageReference(application_id="tool", version="1.2")
                ],
            )
        )
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        await batch.create_task(
            "j", m.BatchTaskCreateOptions(id="t", command_line="/bin/sh -c '$AZ_BATCH_APP_PACKAGE_tool_1_2/run.sh ok'")
        )
        [task] = await wait_completed(batch, "j", 1)
        out = b"".join([c async for c in await batch.download_task_file("j", "t", "stdout.txt")])
        assert out == b"packaged ok\n", task.execution_info


# -- the scheduler's background work cannot die silently (issue 11) -------------------------------------------------


async def _run_one(batch: BatchClient, job_id: str, task_id: str = "t") -> m.BatchTask:
    await batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task(job_id, m.BatchTaskCreateOptions(id=task_id, command_line="/bin/true"))
    [task] = await wait_completed(batch, job_id, 1)
    return task


async def test_a_job_the_dispatcher_fails_on_is_logged_and_others_still_run(
    batch_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A job that made the dispatcher raise once stopped scheduling for every job, silently and for good."""
    caplog.set_level(logging.ERROR, logger="aiobatch.emulator")
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_pool(pool("p"))
        await batch.create_job(m.BatchJobCreateOptions(id="bad", pool_info=m.BatchPoolInfo(pool_id="p")))
        assert batch_emulator.account is not None
        # What a malformed body once smuggled in (a poolInfo.poolId that is a JSON list); the door now refuses
        # it, so the test plants it behind the door to prove the dispatcher's own resilience.
        batch_emulator.account.jobs["bad"].pool_id = ["p"]  # type: ignore[assignment]
        await batch.create_task("bad", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        task = await _run_one(batch, "good")
        assert task.execution_info is not None and task.execution_info.result == "success"
        # Deleting the bad job leaves a dispatcher that still schedules.
        await (await batch.begin_delete_job("bad", polling_interval=0.1)).result()
        task = await _run_one(batch, "after")
        assert task.execution_info is not None and task.execution_info.result == "success"
    failures = [r for r in caplog.records if "dispatching" in r.getMessage()]
    assert len(failures) == 1, "logged once for the job, not on every wake-up"
    assert "'bad'" in failures[0].getMessage() and failures[0].exc_info is not None


async def test_an_emulator_failure_running_one_task_fails_that_task_only(
    batch_emulator: Emulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug of the emulator's own while running a task used to leave it ``running`` forever."""
    from aiobatch.emulator import _scheduler

    real = _scheduler.run_task

    async def broken_for_one(run: TaskRun, http: object) -> TaskOutcome:
        if run.task_id == "unlucky":
            raise RuntimeError("emulator bug")
        return await real(run, http)  # type: ignore[arg-type]

    monkeypatch.setattr(_scheduler, "run_task", broken_for_one)
    caplog.set_level(logging.ERROR, logger="aiobatch.emulator")
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_pool(pool("p"))
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        tasks = [m.BatchTaskCreateOptions(id=i, command_line="/bin/true") for i in ("unlucky", "fine")]
        await batch.create_task_collection("j", m.BatchTaskGroup(task_values=tasks))
        done = {t.id: t for t in await wait_completed(batch, "j", 2)}
    unlucky = done["unlucky"].execution_info
    assert unlucky is not None and unlucky.result == "failure"
    assert unlucky.failure_info is not None and unlucky.failure_info.category == "servererror"
    assert done["fine"].execution_info is not None and done["fine"].execution_info.result == "success"
    assert any("'unlucky'" in r.getMessage() and "'j'" in r.getMessage() for r in caplog.records)


async def test_an_emulator_failure_booting_a_node_makes_it_unusable_not_stuck(
    batch_emulator: Emulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiobatch.emulator._scheduler import Scheduler

    real = Scheduler._boot_node
    calls = 0

    async def first_boot_fails(self: Scheduler, pool_: Pool, node: Node) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("emulator bug")
        await real(self, pool_, node)

    monkeypatch.setattr(Scheduler, "_boot_node", first_boot_fails)
    caplog.set_level(logging.ERROR, logger="aiobatch.emulator")
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_pool(pool("p", nodes=2))

        async def settled() -> bool:
            states = sorted(n.state for n in [n async for n in batch.list_nodes("p")])
            return states == ["idle", "unusable"]

        await until(settled)
        task = await _run_one(batch, "j")
        assert task.execution_info is not None and task.execution_info.result == "success"
    assert any("booting node" in r.getMessage() and "'p'" in r.getMessage() for r in caplog.records)


def test_each_emulator_keeps_its_own_timings() -> None:
    """The fixtures share one Timings object: a test that slowed its emulator's deletions slowed every later test's."""
    shared = Timings(deletion_delay=0.05)
    first, second = Emulator(timings=shared), Emulator(timings=shared)
    first.timings.deletion_delay = 30.0
    assert second.timings.deletion_delay == 0.05 and shared.deletion_delay == 0.05
