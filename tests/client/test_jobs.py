"""create_job (idempotent, ownership, auto-pools, deferred onAllTasksComplete), terminate_job, delete_job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import ServiceRequestError

from aiobatch import RUN_ID_KEY, ConfigurationError, ConflictError
from aiobatch._azurite import AzuriteServer
from aiobatch._jobs import create_job
from aiobatch.emulator import Emulator, Timings

from .test_client import FAST, make_client, pool_spec, tasks

pytestmark = pytest.mark.anyio


def _job(emulator: Emulator, job_id: str) -> Any:
    assert emulator.account is not None
    return emulator.account.jobs[job_id.lower()]


def _metadata(emulator: Emulator, job_id: str) -> dict[str, str]:
    return {item["name"]: item["value"] for item in _job(emulator, job_id).spec.get("metadata") or []}


async def test_create_job_is_idempotent_for_this_run(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite, run_id="run-j") as client:
        await client.ensure_pool(pool_spec("p"))
        first = await client.create_job("job", pool_id="p", metadata={"purpose": "test"})
        second = await client.create_job("job", pool_id="p")
    assert (first.created, first.owned, first.pool_id) == (True, True, "p")
    assert (second.created, second.owned) == (False, True)
    assert _metadata(batch_emulator, "job") == {"purpose": "test", RUN_ID_KEY: "run-j"}
    assert _job(batch_emulator, "job").on_all_tasks_complete == "noaction"


async def test_another_runs_job_is_a_conflict_unless_reused(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite, run_id="one") as client:
        await client.ensure_pool(pool_spec("p"))
        await client.create_job("busy", pool_id="p")
    async with make_client(batch_emulator, azurite, run_id="two") as client:
        with pytest.raises(ConflictError, match="run 'one'") as caught:
            await client.create_job("busy", pool_id="p")
        assert caught.value.code == "JobExists"
        ref = await client.create_job("busy", pool_id="p", reuse_existing=True)
        assert not ref.owned
        with pytest.raises(ConflictError, match="force=True"):
            await client.delete_job("busy")


async def test_a_job_being_deleted_is_waited_for_then_created_anew(tmp_path: Path, azurite: AzuriteServer) -> None:
    timings = Timings(allocation_delay=0.05, node_start_delay=0.05, deletion_delay=1.0)
    async with Emulator(workdir=tmp_path, timings=timings) as emu:
        async with make_client(emu, azurite, run_id="first") as client:
            await client.ensure_pool(pool_spec("p"))
            await client.create_job("nightly", pool_id="p")
            await client.delete_job("nightly")  # returns at once; the job stays "deleting" for a second
            assert emu.account is not None and emu.account.jobs["nightly"].state == "deleting"
        async with make_client(emu, azurite, run_id="second") as client:
            started = time.monotonic()
            ref = await client.create_job("nightly", pool_id="p")
            waited = time.monotonic() - started
            assert (ref.created, ref.owned) == (True, True)
            with pytest.raises(ConflictError) as caught:  # and when it takes longer than the bound, a clear error
                await client.delete_job("nightly")
                await client.create_job("nightly", pool_id="p", deletion_timeout=0.3)
        assert 0.5 < waited < 10
        assert emu.account.created[("job", "nightly")] == 2
    assert caught.value.code == "JobBeingDeleted" and "still being deleted after 0.3 s" in str(caught.value)


class _DropFirstCreate:
    """Shapes one fault: the first create_job takes effect, then the connection drops."""

    def __init__(self, batch: BatchClient) -> None:
        self._batch = batch
        self.creates = 0

    async def create_job(self, job: Any, **kwargs: Any) -> None:
        self.creates += 1
        await self._batch.create_job(job, **kwargs)
        if self.creates == 1:
            raise ServiceRequestError("connection dropped")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)


async def test_a_lost_create_answer_is_recognised(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await client.ensure_pool(pool_spec("p"))
        lossy = _DropFirstCreate(client.batch)
        ref = await create_job(lossy, "lossy", run_id=client.run_id, pool_id="p", policy=FAST)  # type: ignore[arg-type]
    assert lossy.creates == 2
    assert (ref.created, ref.owned) == (True, True)


async def test_pool_choice_is_checked(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        with pytest.raises(ConfigurationError, match="exactly one of pool_id"):
            await client.create_job("j")
        with pytest.raises(ConfigurationError, match="exactly one of pool_id"):
            await client.create_job("j", pool_id="p", auto_pool=pool_spec("p"))
        with pytest.raises(ConfigurationError, match="job id"):
            await client.create_job("bad id", pool_id="p")


async def test_auto_pool_lives_and_dies_with_the_job(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite, run_id="auto-run") as client:
        ref = await client.create_job(
            "auto", auto_pool=pool_spec("autopets", nodes=1), on_all_tasks_complete="terminatejob"
        )
        assert ref.auto_pool and ref.pool_id and ref.pool_id.startswith("autopets")
        assert batch_emulator.account is not None
        pool = batch_emulator.account.pools[ref.pool_id.lower()]
        assert {i["name"]: i["value"] for i in pool.spec.get("metadata") or []}[RUN_ID_KEY] == "auto-run"
        # Created with noaction: a terminatejob job with no tasks would have completed already.
        assert _job(batch_emulator, "auto").state == "active"
        await client.submit_tasks("auto", tasks(3))
        assert _job(batch_emulator, "auto").on_all_tasks_complete == "terminatejob"
        summary = await client.wait_for_tasks("auto", timeout=20, poll_interval=0.05, max_poll_interval=0.2)
        assert summary.succeeded == 3
        assert await client.delete_job("auto", wait=True)
        assert "auto" not in batch_emulator.account.jobs
        assert ref.pool_id.lower() not in batch_emulator.account.pools or (
            batch_emulator.account.pools[ref.pool_id.lower()].state == "deleting"
        )


async def test_terminatejob_waits_for_the_final_submission(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await client.ensure_pool(pool_spec("p"))
        await client.wait_for_pool_ready("p", poll_interval=0.05, timeout=10)
        await client.create_job("two-parts", pool_id="p", on_all_tasks_complete="terminatejob")
        await client.submit_tasks("two-parts", tasks(2, prefix="a"), final=False)
        assert _job(batch_emulator, "two-parts").on_all_tasks_complete == "noaction"
        await client.submit_tasks("two-parts", tasks(2, prefix="b"))
        assert _job(batch_emulator, "two-parts").on_all_tasks_complete == "terminatejob"
        summary = await client.wait_for_tasks("two-parts", timeout=20, poll_interval=0.05, max_poll_interval=0.2)
        assert summary.completed == 4
    assert _job(batch_emulator, "two-parts").state in ("terminating", "completed")


async def test_terminate_and_delete_treat_done_as_done(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await client.ensure_pool(pool_spec("p"))
        await client.create_job("ending", pool_id="p")
        assert await client.terminate_job("ending")
        assert not await client.terminate_job("missing")
        assert await client.delete_job("ending", wait=True)
        assert not await client.delete_job("ending")
        assert not await client.delete_job("never-was", force=True)


async def test_job_on_a_foreign_pool_is_created(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_job(m.BatchJobCreateOptions(id="raw", pool_info=m.BatchPoolInfo(pool_id="x")))
    async with make_client(batch_emulator, azurite) as client:
        with pytest.raises(ConflictError, match="something other than aiobatch"):
            await client.create_job("raw", pool_id="x")
