"""Issue 8, clause 4: `watch_tasks` yields exactly one completion event per task, whatever happened on the way.

- Nodes preempted (spot) and gone unusable mid-task, at seeded moments and by the emulator's own draws: the
  tasks are requeued and run again; each still gives one event, with the requeue count the server has.
- A task with ``maxTaskRetryCount=k`` that keeps failing gives one event, after k+1 attempts (counted on the
  nodes), carrying ``retry_count == k``.
- 10% faults on every call the watch makes -- task counts, the job, the task listings and the pages their
  ``odata.nextLink`` leads to (a page of 7 tasks forces many) -- lose and double no event.

The oracle is the emulator's account: which tasks exist and completed, their retry and requeue counts.
"""

from __future__ import annotations

import random
from collections import Counter

import anyio
import pytest

from aiobatch import TaskEvent, TaskSpec
from aiobatch._azurite import AzuriteServer
from aiobatch.emulator import Emulator, FaultPlan

from ._runs import QUICK, account_of, aim, arm, client, ids, lower, patient_policy, pool_spec
from .conftest import FaultRecorder, Scale

pytestmark = [pytest.mark.anyio, pytest.mark.clause(4)]

#: The request-level kinds a watch's GETs can meet (partial-500 is for addtaskcollection only).
LIST_FAULTS = ("429", "503", "503-bare", "latency", "reset-before", "reset-after", "truncate")


def tally(events: list[TaskEvent]) -> Counter[str]:
    """Completion events per task (lower-cased ids)."""
    return Counter(e.task_id.lower() for e in events if e.kind == "completed")


async def test_preempted_and_unusable_nodes_give_one_event_per_task(
    azurite: AzuriteServer, seed: int, scale: Scale, fault_record: FaultRecorder
) -> None:
    n = scale.pick(200, 2_000)
    rng = random.Random(f"{seed}:clause4:nodes")
    plan = FaultPlan(seed=rng.randrange(2**31), rates={"preempt": 0.08, "unusable": 0.04})
    task_ids = ids("task", n)
    events: list[TaskEvent] = []
    lost: Counter[str] = Counter()
    async with Emulator(timings=QUICK) as emu:
        account = account_of(emu)
        async with client(emu, azurite.connection_string, retry_policy=patient_policy(seed)) as c:
            await c.ensure_pool(pool_spec("pool", dedicated=2, spot=2, slots=4))
            await c.wait_for_pool_ready("pool", poll_interval=0.05, max_poll_interval=0.2, timeout=30)
            await c.create_job("job", pool_id="pool", on_all_tasks_complete="terminatejob")
            arm(emu, plan)

            async def lose_nodes() -> None:
                # Besides the emulator's own draws: a busy node lost at seeded moments, spot ones preempted.
                while True:
                    await anyio.sleep(rng.uniform(0.1, 0.4))
                    pool = account.pools["pool"]
                    busy = sorted(node.id for node in pool.nodes.values() if node.running)
                    if not busy:
                        continue
                    node_id = rng.choice(busy)
                    state = "preempted" if node_id.endswith("_p") and rng.random() < 0.7 else "unusable"
                    await emu.lose_node("pool", node_id, state=state)
                    lost[state] += 1

            specs = [TaskSpec(id=t, command_line="/bin/sleep 0.05") for t in task_ids]
            with anyio.fail_after(scale.pick(90, 900)):
                await c.submit_tasks("job", specs)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lose_nodes)
                    async for event in c.watch_tasks("job", poll_interval=0.1, max_poll_interval=0.5):
                        events.append(event)
                    tg.cancel_scope.cancel()

        job = account.jobs["job"]
        counts = tally(events)
        assert set(counts) == lower(task_ids), "events were lost"
        assert set(counts.values()) == {1}, f"events doubled: {[t for t, k in counts.items() if k > 1][:10]}"
        assert all(e.succeeded for e in events)
        requeued = {key: task.requeue_count for key, task in job.tasks.items() if task.requeue_count}
        assert requeued, "no task was requeued: the test did not exercise preemption"
        for event in events:
            assert event.requeue_count == job.tasks[event.task_id.lower()].requeue_count
        injected = emu.ledger.injected
        fault_record(injected, source="emulator")
        fault_record(lost, source="emulator-lose_node")
        print(f"clause 4: {len(requeued)} of {n} tasks requeued; injected {dict(injected)}, lost {dict(lost)}")


async def test_a_task_failing_every_attempt_gives_one_event_after_k_plus_one_attempts(
    azurite: AzuriteServer, seed: int
) -> None:
    rng = random.Random(f"{seed}:clause4:retries")
    retries = {f"fails-{k}": k for k in (0, 1, rng.randint(2, 4))}
    ok = [f"ok-{i}" for i in range(5)]
    events: list[TaskEvent] = []
    async with Emulator(timings=QUICK) as emu:
        async with client(emu, azurite.connection_string, retry_policy=patient_policy(seed)) as c:
            await c.ensure_pool(pool_spec("pool", dedicated=1, slots=4))
            await c.wait_for_pool_ready("pool", poll_interval=0.05, max_poll_interval=0.2, timeout=30)
            await c.create_job("job", pool_id="pool")
            specs = [
                TaskSpec(id=task_id, command_line="/bin/sh -c 'exit 7'", max_task_retry_count=k)
                for task_id, k in retries.items()
            ] + [TaskSpec(id=task_id, command_line="/bin/true") for task_id in ok]
            with anyio.fail_after(60):
                await c.submit_tasks("job", specs)
                async for event in c.watch_tasks("job", poll_interval=0.05, max_poll_interval=0.2):
                    events.append(event)
        account = account_of(emu)
        job = account.jobs["job"]
        counts = tally(events)
        assert set(counts) == lower([*retries, *ok]) and set(counts.values()) == {1}
        by_id = {e.task_id: e for e in events}
        for task_id, k in retries.items():
            event = by_id[task_id]
            assert event.failed and event.exit_code == 7 and event.retry_count == k, event
            assert job.tasks[task_id].retry_count == k  # the server retried it k times: k+1 attempts
        assert all(by_id[t].succeeded for t in ok)
        # Attempts as the nodes counted them: k+1 for each failing task, one for each other.
        starts = sum(node.total_tasks_run for node in account.pools["pool"].nodes.values())
        assert starts == sum(k + 1 for k in retries.values()) + len(ok)


async def test_faults_on_list_calls_and_next_pages_lose_and_double_no_event(
    azurite: AzuriteServer, seed: int, scale: Scale, fault_record: FaultRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pages of 7 tasks: every listing of more than a handful of completions follows odata.nextLink.
    monkeypatch.setattr("aiobatch._watch._PAGE_SIZE", 7)
    n = scale.pick(400, 4_000)
    rng = random.Random(f"{seed}:clause4:lists")
    rates = dict.fromkeys(LIST_FAULTS, 0.1 / len(LIST_FAULTS))
    plan = FaultPlan(seed=rng.randrange(2**31), rates=rates, operations=("GET /jobs/job",), retry_after=0, latency=0.05)
    task_ids = ids("task", n)
    events: list[TaskEvent] = []
    async with Emulator(timings=QUICK) as emu:
        async with client(emu, azurite.connection_string, retry_policy=patient_policy(seed)) as c:
            await c.ensure_pool(pool_spec("pool", dedicated=2, slots=8))
            await c.wait_for_pool_ready("pool", poll_interval=0.05, max_poll_interval=0.2, timeout=30)
            await c.create_job("job", pool_id="pool", on_all_tasks_complete="terminatejob")
            arm(emu, plan)
            # Each kind at least once on a page reached through odata.nextLink, whatever the draws.
            kinds = list(LIST_FAULTS) * 2
            rng.shuffle(kinds)
            left = aim(emu, lambda request: "$skiptoken" in request.query, kinds)
            specs = [TaskSpec(id=t, command_line="/bin/true") for t in task_ids]
            with anyio.fail_after(scale.pick(90, 900)):
                await c.submit_tasks("job", specs)
                async for event in c.watch_tasks("job", poll_interval=0.05, max_poll_interval=0.3):
                    events.append(event)
        counts = tally(events)
        assert set(counts) == lower(task_ids), f"{n - len(counts)} events lost"
        assert set(counts.values()) == {1}, f"events doubled: {[t for t, k in counts.items() if k > 1][:10]}"
        assert all(t.state == "completed" for t in account_of(emu).jobs["job"].tasks.values())
        listings = emu.ledger.count("GET /jobs/job/tasks")
        assert not left, f"the watch followed too few nextLink pages to meet every fault ({listings} listing requests)"
        injected = emu.ledger.injected
        fault_record(injected, source="emulator")
        print(f"clause 4: {listings} listing requests (pages of 7), injected {dict(injected)}")


async def test_a_failed_next_page_is_fetched_again_not_the_whole_listing(
    azurite: AzuriteServer, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 70 completed tasks in pages of 7: ten pages. The fifth page's answer is cut off once (and then a later
    # page's connection reset after it was served): each is fetched again from its nextLink, so the listing
    # costs one request more per fault, not a restart from the first page (which, with many pages under
    # faults, would rarely finish).
    monkeypatch.setattr("aiobatch._watch._PAGE_SIZE", 7)
    async with Emulator(timings=QUICK) as emu:
        async with client(emu, azurite.connection_string, retry_policy=patient_policy(seed)) as c:
            await c.ensure_pool(pool_spec("pool", dedicated=1, slots=8))
            await c.wait_for_pool_ready("pool", poll_interval=0.05, max_poll_interval=0.2, timeout=30)
            await c.create_job("job", pool_id="pool", on_all_tasks_complete="terminatejob")
            await c.submit_tasks("job", [TaskSpec(id=t, command_line="/bin/true") for t in ids("t", 70)])
            with anyio.fail_after(30):
                while account_of(emu).jobs["job"].state != "completed":
                    await anyio.sleep(0.05)
            aim(emu, lambda request: request.query.get("$skiptoken") in ("28", "56"), ["truncate", "reset-after"])
            before = emu.ledger.count("GET /jobs/job/tasks")
            events = [event async for event in c.watch_tasks("job", expected=70, poll_interval=0.05)]
        assert set(tally(events).values()) == {1} and len(events) == 70
        assert emu.ledger.injected["truncate"] == 1 and emu.ledger.injected["reset-after"] == 1
        assert emu.ledger.count("GET /jobs/job/tasks") - before == 10 + 2
