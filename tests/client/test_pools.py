"""ensure_pool (ownership by run id, lost answers, foreign pools) and wait_for_pool_ready's verdicts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import ServiceResponseError

from aiobatch import (
    RUN_ID_KEY,
    ConflictError,
    NotFoundError,
    PoolError,
    PoolResizeError,
    PoolStartTaskError,
    PoolStatus,
    PoolTimeoutError,
    StartTaskSpec,
)
from aiobatch._azurite import AzuriteServer
from aiobatch._pools import ensure_pool, judge_readiness
from aiobatch.emulator import Emulator, Quotas, Timings

from .test_client import FAST, make_client, pool_spec

pytestmark = pytest.mark.anyio


def _metadata(emulator: Emulator, pool_id: str) -> dict[str, str]:
    assert emulator.account is not None
    return {item["name"]: item["value"] for item in emulator.account.pools[pool_id].spec.get("metadata") or []}


async def _foreign_pool(emulator: Emulator, pool_id: str, nodes: int = 1) -> None:
    async with BatchClient(emulator.endpoint, emulator.credential) as batch:
        await batch.create_pool(
            m.BatchPoolCreateOptions(
                id=pool_id,
                vm_size="standard_d2s_v3",
                virtual_machine_configuration=m.VirtualMachineConfiguration(
                    image_reference=m.BatchVmImageReference(
                        publisher="canonical", offer="ubuntu-24_04-lts", sku="server"
                    ),
                    node_agent_sku_id="batch.node.ubuntu 24.04",
                ),
                target_dedicated_nodes=nodes,
            )
        )


# ----------------------------------------------------------------------------------------------------
# ensure_pool
# ----------------------------------------------------------------------------------------------------


async def test_ensure_pool_creates_and_tags_with_the_run_id(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite, run_id="run-a") as client:
        ref = await client.ensure_pool(pool_spec("tagged", nodes=2, metadata={"team": "pets"}))
        assert (ref.id, ref.created, ref.owned) == ("tagged", True, True)
        again = await client.ensure_pool(pool_spec("tagged", nodes=2))
        assert (again.created, again.owned) == (False, True)  # left alone, still ours
    assert _metadata(batch_emulator, "tagged") == {"team": "pets", RUN_ID_KEY: "run-a"}
    assert batch_emulator.account is not None
    assert batch_emulator.account.pools["tagged"].target_dedicated == 2


async def test_same_run_id_in_a_new_client_recognises_its_pool(
    batch_emulator: Emulator, azurite: AzuriteServer
) -> None:
    async with make_client(batch_emulator, azurite, run_id="resumable") as client:
        await client.ensure_pool(pool_spec("resumed"))
    async with make_client(batch_emulator, azurite, run_id="resumable") as client:
        ref = await client.ensure_pool(pool_spec("resumed"))
        assert (ref.created, ref.owned) == (False, True)
        assert client.created["pools"] == ("resumed",)


@pytest.mark.parametrize("whose", ["another run's", "this run's"])
async def test_a_pool_being_deleted_is_waited_for_then_created_anew(
    tmp_path: Path, azurite: AzuriteServer, whose: str
) -> None:
    """Running the same script twice in a row: the first run's pool is still being deleted when the second starts."""
    timings = Timings(allocation_delay=0.05, node_start_delay=0.05, deletion_delay=1.0)
    async with Emulator(workdir=tmp_path, timings=timings) as emu:
        async with make_client(emu, azurite, run_id="first") as client:
            await client.ensure_pool(pool_spec("again"))
            await client.delete_pool("again")  # returns at once; the pool stays "deleting" for a second
        assert emu.account is not None and emu.account.pools["again"].state == "deleting"
        async with make_client(emu, azurite, run_id="first" if whose == "this run's" else "second") as client:
            started = time.monotonic()
            ref = await client.ensure_pool(pool_spec("again"))
            waited = time.monotonic() - started
            assert (ref.created, ref.owned) == (True, True)
        assert 0.5 < waited < 10
        assert emu.account.pools["again"].state == "active"
        assert emu.account.created[("pool", "again")] == 2


async def test_a_pool_still_being_deleted_after_the_bound_is_a_clear_error(
    tmp_path: Path, azurite: AzuriteServer
) -> None:
    timings = Timings(allocation_delay=0.05, node_start_delay=0.05, deletion_delay=30.0)
    async with Emulator(workdir=tmp_path, timings=timings) as emu, make_client(emu, azurite) as client:
        await client.ensure_pool(pool_spec("slow-going"))
        await client.delete_pool("slow-going")
        started = time.monotonic()
        with pytest.raises(ConflictError) as caught:
            await client.ensure_pool(pool_spec("slow-going"), deletion_timeout=0.5)
        assert time.monotonic() - started < 5
    assert caught.value.code == "PoolBeingDeleted" and caught.value.resource_id == "slow-going"
    assert "still being deleted after 0.5 s" in str(caught.value) and "deletion_timeout" in str(caught.value)


async def test_another_runs_pool_is_a_conflict_unless_reused(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite, run_id="first") as client:
        await client.ensure_pool(pool_spec("shared"))
    async with make_client(batch_emulator, azurite, run_id="second") as client:
        with pytest.raises(ConflictError) as caught:
            await client.ensure_pool(pool_spec("shared"))
        assert "run 'first'" in str(caught.value) and "reuse_existing=True" in str(caught.value)
        assert "aiobatch cleanup --run-id first" in str(caught.value), "names the command that sweeps the old run"
        assert caught.value.code == "PoolExists" and caught.value.resource_id == "shared"
        ref = await client.ensure_pool(pool_spec("shared"), reuse_existing=True)
        assert (ref.created, ref.owned) == (False, False)
        assert client.created["pools"] == ()


async def test_a_pool_aiobatch_did_not_create_is_a_conflict(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    await _foreign_pool(batch_emulator, "handmade")
    async with make_client(batch_emulator, azurite) as client:
        with pytest.raises(ConflictError, match="something other than aiobatch") as caught:
            await client.ensure_pool(pool_spec("handmade"))
        assert "aiobatch cleanup" not in str(caught.value), "no run to sweep: the pool was not made by aiobatch"
        with pytest.raises(ConflictError, match="force=True"):
            await client.delete_pool("handmade")
        assert await client.delete_pool("handmade", force=True)


class _LoseFirstCreateAnswer:
    """Shapes one fault: the first create_pool takes effect, then its answer is lost (a dropped connection)."""

    def __init__(self, batch: BatchClient) -> None:
        self._batch = batch
        self.creates = 0

    async def create_pool(self, pool: Any, **kwargs: Any) -> None:
        self.creates += 1
        await self._batch.create_pool(pool, **kwargs)
        if self.creates == 1:
            raise ServiceResponseError("connection reset after the request was sent")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)


async def test_a_create_whose_answer_was_lost_is_recognised_as_ours(batch_emulator: Emulator) -> None:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        lossy = _LoseFirstCreateAnswer(batch)
        ref = await ensure_pool(lossy, pool_spec("lost"), run_id="run-lost", policy=FAST)  # type: ignore[arg-type]
    assert lossy.creates == 2
    assert (ref.created, ref.owned) == (True, True)
    assert _metadata(batch_emulator, "lost")[RUN_ID_KEY] == "run-lost"


async def test_delete_pool_treats_not_found_as_done(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await client.ensure_pool(pool_spec("short-lived"))
        assert await client.delete_pool("short-lived", wait=True)
        assert batch_emulator.account is not None
        assert "short-lived" not in batch_emulator.account.pools
        assert not await client.delete_pool("short-lived")
        assert not await client.delete_pool("never-existed")


# ----------------------------------------------------------------------------------------------------
# wait_for_pool_ready against the emulator
# ----------------------------------------------------------------------------------------------------


async def test_wait_for_pool_ready(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await client.ensure_pool(pool_spec("ready", nodes=3))
        status = await client.wait_for_pool_ready("ready", poll_interval=0.05, timeout=10)
    assert status.allocation_state == "steady"
    assert (status.usable_nodes, status.target_nodes) == (3, 3)
    assert status.node_states == {"idle": 3}


@pytest.fixture
async def small_quota(tmp_path: Path) -> AsyncIterator[Emulator]:
    """An account whose dedicated core quota holds one standard_d2s_v3 node (2 cores)."""
    emulator = Emulator(
        workdir=tmp_path / "quota",
        timings=Timings(allocation_delay=0.1, node_start_delay=0.05, deletion_delay=0.05),
        quotas=Quotas(dedicated_cores=2),
    )
    async with emulator:
        yield emulator


async def test_quota_resize_error_fails_fast(small_quota: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(small_quota, azurite) as client:
        await client.ensure_pool(pool_spec("too-big", nodes=3))
        started = time.monotonic()
        with pytest.raises(PoolResizeError) as caught:
            await client.wait_for_pool_ready("too-big", poll_interval=0.05, timeout=60)
    assert time.monotonic() - started < 5  # at once, not at the timeout
    err = caught.value
    assert err.pool_id == "too-big"
    assert [code for code, _ in err.errors] == ["AccountCoreQuotaReached"]
    assert "1 usable where 3 are needed" in str(err)
    assert "quota increase" in str(err)


async def test_resize_error_with_enough_usable_nodes_is_not_fatal(
    small_quota: Emulator, azurite: AzuriteServer
) -> None:
    async with make_client(small_quota, azurite) as client:
        await client.ensure_pool(pool_spec("partial", nodes=3))
        status = await client.wait_for_pool_ready("partial", min_nodes=1, poll_interval=0.05, timeout=10)
    assert status.usable_nodes == 1
    assert status.resize_errors and status.resize_errors[0][0] == "AccountCoreQuotaReached"


async def test_no_quota_at_all_fails_fast(tmp_path: Path, azurite: AzuriteServer) -> None:
    emulator = Emulator(
        workdir=tmp_path / "none",
        timings=Timings(allocation_delay=0.1, node_start_delay=0.05, deletion_delay=0.05),
        quotas=Quotas(dedicated_cores=0),
    )
    async with emulator, make_client(emulator, azurite) as client:
        await client.ensure_pool(pool_spec("nothing", nodes=1))
        with pytest.raises(PoolResizeError, match="0 usable where 1 are needed"):
            await client.wait_for_pool_ready("nothing", poll_interval=0.05, timeout=60)


async def test_start_task_failure_fails_fast(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    spec = pool_spec("bad-start", nodes=2, start_task=StartTaskSpec(command_line="/bin/sh -c 'exit 3'"))
    async with make_client(batch_emulator, azurite) as client:
        await client.ensure_pool(spec)
        started = time.monotonic()
        with pytest.raises(PoolStartTaskError) as caught:
            await client.wait_for_pool_ready("bad-start", poll_interval=0.05, timeout=60)
    assert time.monotonic() - started < 10
    assert len(caught.value.failed_nodes) == 2
    assert "stderr.txt" in str(caught.value) and "bad-start" in str(caught.value)


async def test_timeout(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await client.ensure_pool(pool_spec("slow", nodes=1))
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError) as caught:
            await client.wait_for_pool_ready("slow", poll_interval=0.02, timeout=0.1)
    assert time.monotonic() - started < 2
    assert caught.value.timeout == 0.1 and "timeout=" in str(caught.value)


async def test_wait_for_a_missing_pool_is_not_found(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        with pytest.raises(NotFoundError, match="ensure_pool"):
            await client.wait_for_pool_ready("missing", poll_interval=0.05, timeout=5)


# ----------------------------------------------------------------------------------------------------
# The readiness judgement, case by case
# ----------------------------------------------------------------------------------------------------


def _status(**fields: Any) -> PoolStatus:
    base: dict[str, Any] = {
        "id": "p",
        "state": "active",
        "allocation_state": "steady",
        "target_nodes": 2,
        "usable_nodes": 0,
        "coming_nodes": 0,
        "node_states": {},
        "resize_errors": (),
        "failed_start_nodes": (),
    }
    base.update(fields)
    return PoolStatus(**base)


def test_judge_ready_when_steady_with_enough_usable_nodes() -> None:
    assert judge_readiness(_status(usable_nodes=2, node_states={"idle": 2}))
    # A stale resize error does not matter when the nodes are there.
    assert judge_readiness(_status(usable_nodes=2, resize_errors=(("AllocationTimedout", "old"),)))


def test_judge_waits_while_resizing_or_nodes_are_coming() -> None:
    assert not judge_readiness(_status(allocation_state="resizing"))
    assert not judge_readiness(_status(usable_nodes=2, allocation_state="resizing"))
    assert not judge_readiness(_status(coming_nodes=2, resize_errors=(("X", "y"),)))
    assert not judge_readiness(_status(usable_nodes=1, coming_nodes=1, failed_start_nodes=("n",)))


def test_judge_min_nodes() -> None:
    assert judge_readiness(_status(usable_nodes=1), min_nodes=1)
    with pytest.raises(PoolError, match="asks for 2 nodes, fewer than the 3"):
        judge_readiness(_status(usable_nodes=2), min_nodes=3)


def test_judge_unusable_nodes_and_deleting_pools() -> None:
    with pytest.raises(PoolError, match="unusable"):
        judge_readiness(_status(node_states={"unusable": 2}))
    with pytest.raises(PoolError, match="being deleted"):
        judge_readiness(_status(state="deleting"))


def test_judge_partial_start_task_failure_that_leaves_too_few_nodes() -> None:
    with pytest.raises(PoolStartTaskError, match="1 of the nodes"):
        judge_readiness(_status(usable_nodes=1, failed_start_nodes=("n2",), node_states={"idle": 1}))
