"""Issue 8, clause 3: pools -- ours recognised after a lost answer, another's never adopted or deleted unasked,
and a pool that cannot serve gives a typed error within one poll of that becoming knowable.

"Knowable" is measured on the server: a probe watches the emulator's model and notes the moment the pool's
state first decides the verdict (allocation steady with a quota error and too few nodes; every node failed its
start task; every node unusable). The client's typed error must follow within one poll: the longest wait
between polls plus the poll's own requests.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest

from aiobatch import (
    ConflictError,
    PoolError,
    PoolResizeError,
    PoolStartTaskError,
    PoolStatus,
    StartTaskSpec,
)
from aiobatch._azurite import AzuriteServer
from aiobatch._retry import sdk_client_kwargs
from aiobatch.emulator import Emulator, FaultPlan, Quotas, Timings
from aiobatch.emulator._model import Pool

from ._runs import account_of, arm, client, disarm, patient_policy, pool_spec
from .conftest import FaultRecorder

pytestmark = [pytest.mark.anyio, pytest.mark.clause(3)]

#: Allocation takes a second, so the client has backed off to its longest wait before the verdict is knowable.
SLOW_ALLOCATION = Timings(allocation_delay=1.0, node_start_delay=0.1, deletion_delay=0.02, node_recovery_delay=60.0)
POLL = 0.05
MAX_POLL = 0.3
#: One poll: the longest wait between polls, plus its two requests (pool, nodes) on a loaded CI machine.
ONE_POLL = MAX_POLL + 0.35


async def test_a_create_whose_answer_was_lost_is_recognised_as_ours(
    azurite: AzuriteServer, seed: int, fault_record: FaultRecorder
) -> None:
    async with Emulator(timings=SLOW_ALLOCATION) as emu:
        # Every create takes effect and its connection drops before the answer (the retry meets a 409).
        arm(emu, FaultPlan(seed=seed, rates={"reset-after": 1.0}, operations=("POST /pools", "POST /jobs")))
        async with client(emu, azurite.connection_string, retry_policy=patient_policy(seed), cleanup=True) as c:
            pool = await c.ensure_pool(pool_spec("pool"))
            job = await c.create_job("job", pool_id="pool")
            disarm(emu)
            assert (pool.created, pool.owned) == (True, True)
            assert (job.created, job.owned) == (True, True)
            assert c.created["pools"] == ("pool",) and c.created["jobs"] == ("job",)
        account = account_of(emu)
        # The first create took effect (its answer lost), the retry met it: one commit each.
        assert emu.ledger.count("POST /pools") == 2 and emu.ledger.count("POST /jobs") == 2
        assert account.created[("pool", "pool")] == 1 and account.created[("job", "job")] == 1
        # Recognised as ours, so cleanup deleted both.
        assert account.deleted[("pool", "pool")] == 1 and account.deleted[("job", "job")] == 1
        fault_record(emu.ledger.injected, source="emulator")


@pytest.mark.parametrize("owner", ["untagged", "another run"])
async def test_a_pool_this_run_did_not_create_is_never_adopted_unasked_nor_deleted(
    azurite: AzuriteServer, seed: int, owner: str
) -> None:
    async with Emulator(timings=SLOW_ALLOCATION) as emu:
        if owner == "untagged":
            from azure.batch.aio import BatchClient

            from aiobatch._specs import to_pool_model

            async with BatchClient(emu.endpoint, emu.credential, **sdk_client_kwargs()) as batch:
                await batch.create_pool(to_pool_model(pool_spec("pool")))
        else:
            async with client(emu, azurite.connection_string, run_id="someone-else") as theirs:
                await theirs.ensure_pool(pool_spec("pool"))
        async with client(emu, azurite.connection_string, retry_policy=patient_policy(seed), cleanup=True) as c:
            with pytest.raises(ConflictError) as caught:
                await c.ensure_pool(pool_spec("pool"))
            assert caught.value.code == "PoolExists" and "reuse_existing=True" in str(caught.value)
            if owner == "another run":
                assert "someone-else" in str(caught.value)
            ref = await c.ensure_pool(pool_spec("pool"), reuse_existing=True)  # asked for in so many words
            assert (ref.created, ref.owned) == (False, False)
            assert c.created["pools"] == ()
            with pytest.raises(ConflictError):
                await c.delete_pool("pool")  # not ours: refused without force=True
        account = account_of(emu)
        assert "pool" in account.pools and account.pools["pool"].state == "active"
        assert account.deleted[("pool", "pool")] == 0, "a pool this run did not create was deleted"
        assert account.created[("pool", "pool")] == 1


async def _verdict_time(
    emu: Emulator, pool_id: str, decided: Callable[[Pool], bool], wait: Callable[[], object]
) -> tuple[BaseException | PoolStatus, float, float]:
    """Run *wait* while probing the model; return its outcome, when it ended and when *decided* first held.

    The probe samples every 5 ms. When *wait* ends between two samples, *decided* is checked once more and the
    last sample that saw it not hold stands for when it became knowable: the reported delay is then an upper bound.
    """
    account = account_of(emu)
    knowable: list[float] = []
    ended: list[float] = []
    outcome: list[BaseException | PoolStatus] = []
    last_no = [anyio.current_time()]

    def holds() -> bool:
        pool = account.pools.get(pool_id)
        return pool is not None and decided(pool)

    async def probe() -> None:
        while not knowable:
            if holds():
                knowable.append(anyio.current_time())
                return
            last_no[0] = anyio.current_time()
            await anyio.sleep(0.005)

    async def waiter() -> None:
        try:
            outcome.append(await wait())  # type: ignore[misc]
        except Exception as exc:
            outcome.append(exc)
        ended.append(anyio.current_time())
        if not knowable and holds():  # as the answer came, between two samples
            knowable.append(last_no[0])

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            tg.start_soon(waiter)
            await anyio.lowlevel.checkpoint()
            while not ended:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    return outcome[0], ended[0], knowable[0] if knowable else float("nan")


async def test_a_quota_error_is_reported_within_one_poll(azurite: AzuriteServer, seed: int) -> None:
    async with (
        Emulator(timings=SLOW_ALLOCATION, quotas=Quotas(dedicated_cores=1)) as emu,
        client(emu, azurite.connection_string, retry_policy=patient_policy(seed)) as c,
    ):
        await c.ensure_pool(pool_spec("pool", dedicated=2))

        def decided(pool: Pool) -> bool:
            return pool.allocation_state == "steady" and bool(pool.resize_errors)

        outcome, ended, knowable = await _verdict_time(
            emu,
            "pool",
            decided,
            lambda: c.wait_for_pool_ready("pool", poll_interval=POLL, max_poll_interval=MAX_POLL, timeout=20),
        )
    assert isinstance(outcome, PoolResizeError), outcome
    assert "quota" in str(outcome).lower() and outcome.pool_id == "pool"
    print(f"typed error {ended - knowable:.3f} s after it was knowable")
    assert 0 <= ended - knowable <= ONE_POLL, f"typed error {ended - knowable:.2f} s after it was knowable"


async def test_start_task_failure_on_every_node_is_reported_within_one_poll(azurite: AzuriteServer, seed: int) -> None:
    async with (
        Emulator(timings=SLOW_ALLOCATION) as emu,
        client(emu, azurite.connection_string, retry_policy=patient_policy(seed)) as c,
    ):
        start = StartTaskSpec(command_line="/bin/sh -c 'sleep 0.3; exit 3'", wait_for_success=True)
        await c.ensure_pool(pool_spec("pool", dedicated=2, start_task=start))

        def decided(pool: Pool) -> bool:
            states = [n.state for n in pool.nodes.values()]
            return pool.allocation_state == "steady" and len(states) == 2 and set(states) == {"starttaskfailed"}

        outcome, ended, knowable = await _verdict_time(
            emu,
            "pool",
            decided,
            lambda: c.wait_for_pool_ready("pool", poll_interval=POLL, max_poll_interval=MAX_POLL, timeout=20),
        )
    assert isinstance(outcome, PoolStartTaskError), outcome
    assert len(outcome.failed_nodes) == 2
    print(f"typed error {ended - knowable:.3f} s after it was knowable")
    assert 0 <= ended - knowable <= ONE_POLL, f"typed error {ended - knowable:.2f} s after it was knowable"


async def test_every_node_unusable_is_reported_within_one_poll(azurite: AzuriteServer, seed: int) -> None:
    rng = random.Random(f"{seed}:unusable")
    async with (
        Emulator(timings=SLOW_ALLOCATION) as emu,
        client(emu, azurite.connection_string, retry_policy=patient_policy(seed)) as c,
    ):
        # The start task keeps the nodes on their way (waitingforstarttask) while the client waits.
        start = StartTaskSpec(command_line="/bin/sleep 30", wait_for_success=True)
        await c.ensure_pool(pool_spec("pool", dedicated=2, start_task=start))
        account = account_of(emu)

        async def break_nodes() -> None:
            while len(account.pools["pool"].nodes) < 2:
                await anyio.sleep(0.01)
            await anyio.sleep(rng.uniform(0.5, 1.5))  # mid-wait, at a seeded moment
            for node_id in list(account.pools["pool"].nodes):
                await emu.lose_node("pool", node_id, state="unusable")

        def decided(pool: Pool) -> bool:
            states = [n.state for n in pool.nodes.values()]
            return len(states) == 2 and set(states) == {"unusable"}

        async with anyio.create_task_group() as tg:
            tg.start_soon(break_nodes)
            outcome, ended, knowable = await _verdict_time(
                emu,
                "pool",
                decided,
                lambda: c.wait_for_pool_ready("pool", poll_interval=POLL, max_poll_interval=MAX_POLL, timeout=20),
            )
    assert isinstance(outcome, PoolError) and not isinstance(outcome, PoolResizeError | PoolStartTaskError), outcome
    assert "unusable" in str(outcome)
    print(f"typed error {ended - knowable:.3f} s after it was knowable")
    assert 0 <= ended - knowable <= ONE_POLL, f"typed error {ended - knowable:.2f} s after it was knowable"


async def test_a_stale_resize_error_with_usable_nodes_is_not_fatal(azurite: AzuriteServer, seed: int) -> None:
    # Room for one of two nodes: the pool reports a quota error and has one usable node.
    async with (
        Emulator(timings=SLOW_ALLOCATION, quotas=Quotas(dedicated_cores=2)) as emu,
        client(emu, azurite.connection_string, retry_policy=patient_policy(seed)) as c,
    ):
        await c.ensure_pool(pool_spec("pool", dedicated=2))
        status = await c.wait_for_pool_ready(
            "pool", min_nodes=1, poll_interval=POLL, max_poll_interval=MAX_POLL, timeout=20
        )
        assert status.usable_nodes == 1 and status.resize_errors, status.describe()
        # Asking for both nodes, the same error is the verdict.
        with pytest.raises(PoolResizeError):
            await c.wait_for_pool_ready("pool", poll_interval=POLL, max_poll_interval=MAX_POLL, timeout=20)
