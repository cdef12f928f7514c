"""Injected faults, aimed per request with the x-aiobatch-fault header or drawn from a seeded plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from aiobatch.emulator import FAULT_HEADER, Emulator, FaultPlan, Timings
from aiobatch.emulator._faults import REQUEST_KINDS

pytestmark = pytest.mark.anyio

IMAGE = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


def _pool(pool_id: str, **kwargs: Any) -> m.BatchPoolCreateOptions:
    return m.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", virtual_machine_configuration=IMAGE, **kwargs
    )


def _client(emulator: Emulator) -> BatchClient:
    # No SDK retries: each fault must reach the caller as it happened.
    return BatchClient(emulator.endpoint, emulator.credential, retry_total=0)


def _tasks(prefix: str, count: int) -> m.BatchTaskGroup:
    return m.BatchTaskGroup(
        task_values=[m.BatchTaskCreateOptions(id=f"{prefix}{i:03d}", command_line="/bin/true") for i in range(count)]
    )


@pytest.mark.parametrize(
    ("kind", "status", "code", "retry_after"),
    [
        ("429", 429, "TooManyRequests", "1"),
        ("503", 503, "ServerBusy", "1"),
        ("503-bare", 503, "ServerBusy", None),
        ("503; retry-after=3600", 503, "ServerBusy", "3600"),
    ],
)
async def test_busy_answers(
    batch_emulator: Emulator, kind: str, status: int, code: str, retry_after: str | None
) -> None:
    async with _client(batch_emulator) as batch:
        with pytest.raises(HttpResponseError) as caught:
            await batch.create_pool(_pool("p"), headers={FAULT_HEADER: kind})
        assert caught.value.status_code == status
        assert caught.value.error is not None and caught.value.error.code == code
        response: Any = caught.value.response
        assert response is not None and response.headers.get("Retry-After") == retry_after
    assert batch_emulator.account is not None and not batch_emulator.account.pools, "a refused request changes nothing"
    assert batch_emulator.ledger.injected[kind.split(";")[0]] == 1


async def test_reset_before_and_after_the_request_takes_effect(batch_emulator: Emulator) -> None:
    account = batch_emulator.account
    assert account is not None
    async with _client(batch_emulator) as batch:
        with pytest.raises((ServiceRequestError, ServiceResponseError)):
            await batch.create_pool(_pool("before"), headers={FAULT_HEADER: "reset-before"})
        with pytest.raises((ServiceRequestError, ServiceResponseError)):
            await batch.create_pool(_pool("after"), headers={FAULT_HEADER: "reset-after"})
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="after")))
        with pytest.raises((ServiceRequestError, ServiceResponseError, HttpResponseError)):
            await batch.get_job("j", headers={FAULT_HEADER: "truncate"})
    assert "before" not in account.pools and account.created[("pool", "before")] == 0
    assert "after" in account.pools and account.created[("pool", "after")] == 1
    assert batch_emulator.ledger.injected["truncate"] == 1


async def test_partial_commit_then_operation_timed_out(batch_emulator: Emulator) -> None:
    account = batch_emulator.account
    assert account is not None
    async with _client(batch_emulator) as batch:
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="none")))
        with pytest.raises(HttpResponseError) as caught:
            await batch.create_task_collection("j", _tasks("t", 100), headers={FAULT_HEADER: "partial-500"})
        assert caught.value.status_code == 500
        assert caught.value.error is not None and caught.value.error.code == "OperationTimedOut"
    committed = len(account.jobs["j"].tasks)
    assert 0 <= committed < 100
    assert sum(n for (kind, _), n in account.created.items() if kind == "task") == committed


async def test_per_task_server_errors_inside_a_200(batch_emulator: Emulator) -> None:
    async with _client(batch_emulator) as batch:
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="none")))
        result = await batch.create_task_collection(
            "j", _tasks("t", 50), headers={FAULT_HEADER: "task-error; rate=0.5"}
        )
    statuses = [r.status.lower() for r in result.result_values or []]
    assert {"success", "servererror"} == set(statuses)
    assert batch_emulator.account is not None
    assert len(batch_emulator.account.jobs["j"].tasks) == statuses.count("success")
    assert batch_emulator.ledger.injected["task-error"] == statuses.count("servererror")


async def test_seeded_plan_is_reproducible(tmp_path: Path) -> None:
    async def run(seed: int) -> list[int]:
        plan = FaultPlan(seed=seed, rates={"503": 0.3})
        async with Emulator(workdir=tmp_path / str(seed), faults=plan) as emu, _client(emu) as batch:
            outcomes = []
            for i in range(40):
                try:
                    await batch.create_job(m.BatchJobCreateOptions(id=f"j{i}", pool_info=m.BatchPoolInfo(pool_id="p")))
                    outcomes.append(201)
                except HttpResponseError as exc:
                    outcomes.append(exc.status_code or 0)
            assert emu.ledger.injected["503"] == outcomes.count(503)
            return outcomes

    first, again, other = await run(7), await run(7), await run(8)
    assert first == again and first != other
    assert 0 < first.count(503) < 40


async def test_preempted_and_unusable_nodes_requeue_their_tasks(tmp_path: Path) -> None:
    timings = Timings(allocation_delay=0.1, node_start_delay=0.05, node_recovery_delay=0.2)
    async with Emulator(workdir=tmp_path, timings=timings) as emu, BatchClient(emu.endpoint, emu.credential) as batch:
        await batch.create_pool(_pool("p", target_dedicated_nodes=1, target_low_priority_nodes=1))
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        await batch.create_task_collection(
            "j",
            m.BatchTaskGroup(
                task_values=[m.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/sleep 0.5") for i in range(2)]
            ),
        )
        assert emu.account is not None
        pool = emu.account.pools["p"]
        with anyio.fail_after(10):
            while sum(len(n.running) for n in pool.nodes.values()) < 2:
                await anyio.sleep(0.02)
        spot = next(n for n in pool.nodes.values() if not n.is_dedicated)
        dedicated = next(n for n in pool.nodes.values() if n.is_dedicated)
        await emu.lose_node("p", spot.id, state="preempted")
        await emu.lose_node("p", dedicated.id, state="unusable")
        states = {n.state for n in pool.nodes.values()}
        assert states == {"preempted", "unusable"}
        with anyio.fail_after(15):
            while (await batch.get_job_task_counts("j")).task_counts.completed < 2:
                await anyio.sleep(0.05)
        tasks = [t async for t in batch.list_tasks("j")]
        infos = [t.execution_info for t in tasks]
        assert all(i is not None and i.result == "success" and i.requeue_count == 1 for i in infos)
        assert all(emu.account.created[("task", f"j/{t.id}")] == 1 for t in tasks)


@pytest.mark.parametrize("moment", ["creating", "waitingforstarttask"])
async def test_a_node_lost_while_booting_stays_lost(tmp_path: Path, moment: str) -> None:
    # Neither the rest of its boot nor its start task may bring a lost node back before its recovery.
    timings = Timings(allocation_delay=0.05, node_start_delay=0.4, node_recovery_delay=60.0)
    async with Emulator(workdir=tmp_path, timings=timings) as emu, BatchClient(emu.endpoint, emu.credential) as batch:
        start = m.BatchStartTask(command_line="/bin/sh -c 'sleep 0.3'", wait_for_success=True)
        await batch.create_pool(_pool("p", target_dedicated_nodes=1, start_task=start))
        assert emu.account is not None
        pool = emu.account.pools["p"]
        with anyio.fail_after(10):
            while not pool.nodes or next(iter(pool.nodes.values())).state != moment:
                await anyio.sleep(0.005)
        node_id = await emu.lose_node("p", state="unusable")
        await anyio.sleep(1.0)  # the boot and the start task would both have finished by now
        [node] = [n async for n in batch.list_nodes("p")]
        assert (node.id, node.state) == (node_id, "unusable")


@pytest.mark.parametrize(
    ("header", "names_kinds"),
    [
        ("bogus", True),
        ("preempt", True),
        ("unusable", True),
        ("task-error; rate=0.5", False),  # addtaskcollection only
        ("partial-500", False),  # addtaskcollection only
        ("503; retry-after=soon", False),
        ("latency; seconds=-1", False),
        ("429; wait=3", False),
    ],
)
async def test_a_fault_header_that_is_not_a_request_fault_is_a_400_and_counts_nothing(
    batch_emulator: Emulator, header: str, names_kinds: bool
) -> None:
    async with _client(batch_emulator) as batch:
        with pytest.raises(HttpResponseError) as caught:
            await batch.create_pool(_pool("p"), headers={FAULT_HEADER: header})
        assert caught.value.status_code == 400
        assert caught.value.error is not None and caught.value.error.code == "InvalidHeaderValue"
        details = {d.code: d.message for d in caught.value.error.details}
        assert details["HeaderName"] == FAULT_HEADER and details["HeaderValue"] == header
        message = str(caught.value.error.message)
        assert FAULT_HEADER in message
        if names_kinds:
            assert "not a request-level fault kind" in message
            assert all(kind in message for kind in (*REQUEST_KINDS, "task-error"))
    assert batch_emulator.account is not None and not batch_emulator.account.pools
    assert not batch_emulator.ledger.injected, "nothing is recorded as injected"
    assert not batch_emulator.ledger.requests, "a refused fault header is not client traffic"


async def test_bad_fault_header_on_a_task_collection_adds_nothing(batch_emulator: Emulator) -> None:
    async with _client(batch_emulator) as batch:
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="none")))
        for header in ("task-error; rate=1.5", "preempt"):
            with pytest.raises(HttpResponseError) as caught:
                await batch.create_task_collection("j", _tasks("t", 5), headers={FAULT_HEADER: header})
            assert caught.value.status_code == 400
        assert [t async for t in batch.list_tasks("j")] == []
    assert not batch_emulator.ledger.injected
