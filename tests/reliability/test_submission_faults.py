"""Issue 8, clauses 1 and 2: submission holds under faults, and gives up on time when a fault never clears.

Clause 1: N tasks under 20% mixed faults of every kind exist exactly once, with one event each. Every request
of the run -- pool and job creation, every ``addtaskcollection`` chunk, every poll and listing of the watch --
draws from 20% request faults of all the emulator's kinds (429, 503 with and without Retry-After, a 500 after
committing part of a chunk, latency, a reset before and after the request took effect, a truncated answer);
chunks also get per-task ``servererror`` results, and nodes are preempted or go unusable mid-task. The oracle
is the emulator's own account: the tasks the job holds, and how many times each was committed.

Clause 2: a fault that never clears (503 with or without Retry-After, 429, a reset, per-task ``servererror``,
``Retry-After: 3600``) ends in a typed error, by the policy's deadline, after at most its attempts per chunk --
counted by the server (``ledger.requests``), not by the client. Waits are jittered from the policy's seeded
RNG: the server sees the backoffs that seed gives, and two seeds give different ones.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from typing import Any

import anyio
import pytest

from aiobatch import AiobatchError, RetryPolicy, ServiceUnavailableError, SubmissionError, SubmitResult, TaskSpec
from aiobatch._azurite import AzuriteServer
from aiobatch.emulator import Emulator, FaultPlan

from ._runs import (
    MIXED_REQUEST_FAULTS,
    QUICK,
    account_of,
    add_foreign_task,
    aim,
    arm,
    client,
    ids,
    lower,
    patient_policy,
    pool_spec,
    task_commits,
)
from .conftest import FaultRecorder, Scale

pytestmark = [pytest.mark.anyio]


@pytest.mark.clause(1)
async def test_every_task_exists_once_with_one_event_under_mixed_faults(
    azurite: AzuriteServer, seed: int, scale: Scale, fault_record: FaultRecorder
) -> None:
    n = scale.pick(1_000, 10_000)
    rng = random.Random(f"{seed}:clause1")
    plan = FaultPlan(
        seed=rng.randrange(2**31),
        rates={**MIXED_REQUEST_FAULTS, "task-error": 0.05, "preempt": 0.02, "unusable": 0.01},
        task_error_rate=0.3,
        retry_after=0,  # Retry-After is honoured (clause 2 shows it); here it would only make the run slow
        latency=0.05,
    )
    task_ids = ids("Clip", n)
    foreign = task_ids[rng.randrange(n)]  # someone else's task, already in the job under one of our ids
    async with Emulator(timings=QUICK) as emu:
        arm(emu, plan)
        # Every kind at least once on a chunk, whatever the draws (a CI-sized run sends few chunks).
        kinds = [*MIXED_REQUEST_FAULTS, "task-error"]
        rng.shuffle(kinds)
        aim(emu, "/addtaskcollection", kinds)
        policy = patient_policy(seed)
        async with client(emu, azurite.connection_string, retry_policy=policy) as c:
            # Spot nodes can be preempted; any node can go unusable. Both requeue their tasks.
            await c.ensure_pool(pool_spec("pool", dedicated=2, spot=2, slots=8))
            await c.wait_for_pool_ready("pool", poll_interval=0.05, max_poll_interval=0.2, timeout=60)
            await c.create_job("job", pool_id="pool", on_all_tasks_complete="terminatejob")
            await add_foreign_task(emu, "job", foreign, policy)

            specs = [TaskSpec(id=t, command_line="/bin/true") for t in task_ids]
            with anyio.fail_after(scale.pick(60, 600)):
                result = await c.submit_tasks("job", specs, concurrency=8)
                events = Counter[str]()
                async for event in c.watch_tasks("job", expected=n, poll_interval=0.1, max_poll_interval=0.5):
                    assert event.kind == "completed"
                    events[event.task_id.lower()] += 1

        account = account_of(emu)
        job = account.jobs["job"]
        # What the client says: the foreign id is a conflict, never a success; everything else went in.
        assert result.conflicts == (foreign,), result.conflicts
        assert foreign in result.failed and set(result.failed) == {foreign}, result.failed
        assert lower(result.added) | lower(result.existing) == lower(task_ids) - {foreign.lower()}
        # What the server says: exactly n tasks, each committed once (the foreign one by its owner).
        assert len(job.tasks) == n
        assert set(job.tasks) == lower(task_ids)
        commits = task_commits(account, "job")
        assert set(commits) == lower(task_ids)
        twice = {t: k for t, k in commits.items() if k != 1}
        assert not twice, f"tasks committed more than once: {sorted(twice.items())[:10]}"
        # One completion event per task, none lost, none doubled.
        assert set(events) == lower(task_ids)
        doubled = {t: k for t, k in events.items() if k != 1}
        assert not doubled, f"tasks reported more than once: {sorted(doubled.items())[:10]}"
        assert all(t.state == "completed" for t in job.tasks.values())

        injected = emu.ledger.injected
        fault_record(injected, source="emulator")
        print(f"clause 1: {n} tasks, {result.requests} addtaskcollection requests, injected {dict(injected)}")
        # The run really was under every kind of fault.
        for kind in (*MIXED_REQUEST_FAULTS, "task-error"):
            assert injected[kind] > 0, f"no {kind} fault was injected; the test proves nothing about it"
        assert injected["preempt"] + injected["unusable"] > 0
        requeued = sum(1 for t in job.tasks.values() if t.requeue_count)
        assert requeued > 0, "no task was requeued: preemption was not exercised"


# ----------------------------------------------------------------------------------------------------
# Clause 2: bounded
# ----------------------------------------------------------------------------------------------------

ADD = "/addtaskcollection"


def forever(kind: str, *, retry_after: float = 0, **options: Any) -> FaultPlan:
    """A plan where every ``addtaskcollection`` request gets *kind*."""
    return FaultPlan(rates={kind: 1.0}, operations=(ADD,), retry_after=retry_after, **options)


async def submit_under(
    plan: FaultPlan, policy: RetryPolicy, connection_string: str, n: int = 100
) -> tuple[Emulator, BaseException | SubmitResult, float]:
    """Submit *n* tasks (one chunk for 100) under *plan*; what happened, and how long it took."""
    async with Emulator(timings=QUICK) as emu, client(emu, connection_string, retry_policy=policy) as c:
        await c.create_job("job", pool_id="nowhere")  # no pool: nothing runs, the test measures submission only
        arm(emu, plan)
        started = time.monotonic()
        outcome: BaseException | SubmitResult
        try:
            outcome = await c.submit_tasks("job", [TaskSpec(id=t, command_line="/bin/true") for t in ids("t", n)])
        except AiobatchError as exc:
            outcome = exc
        return emu, outcome, time.monotonic() - started


@pytest.mark.clause(2)
@pytest.mark.parametrize("kind", ["503", "503-bare", "429", "reset-before"])
async def test_a_fault_that_never_clears_ends_after_the_configured_attempts(
    azurite: AzuriteServer, seed: int, kind: str, fault_record: FaultRecorder
) -> None:
    policy = RetryPolicy(attempts=5, deadline=20.0, initial=0.01, maximum=0.05, jitter=0.01, rng=random.Random(seed))
    emu, outcome, elapsed = await submit_under(forever(kind), policy, azurite.connection_string)
    assert isinstance(outcome, SubmissionError), outcome
    assert isinstance(outcome.__cause__, ServiceUnavailableError), repr(outcome.__cause__)
    assert "5 attempts" in str(outcome.__cause__)
    assert emu.ledger.count("POST", ADD) == policy.attempts  # the server's count, not the client's
    assert elapsed < policy.deadline
    assert len(outcome.failed) == 100 and not outcome.added
    assert not task_commits(account_of(emu), "job"), "a request that never took effect created tasks"
    fault_record(emu.ledger.injected, source="emulator")


@pytest.mark.clause(2)
async def test_per_task_server_errors_forever_end_in_a_typed_error(
    azurite: AzuriteServer, seed: int, fault_record: FaultRecorder
) -> None:
    policy = RetryPolicy(attempts=4, deadline=20.0, initial=0.01, maximum=0.05, jitter=0.01, rng=random.Random(seed))
    plan = forever("task-error", task_error_rate=1.0)
    emu, outcome, elapsed = await submit_under(plan, policy, azurite.connection_string)
    assert isinstance(outcome, SubmissionError), outcome
    assert isinstance(outcome.__cause__, ServiceUnavailableError)
    assert emu.ledger.count("POST", ADD) == policy.attempts
    assert emu.ledger.injected["task-error"] == 100 * policy.attempts
    assert len(outcome.failed) == 100 and not outcome.added and not outcome.existing
    assert all("still failing when the retry policy gave up" in why for why in outcome.failed.values())
    assert elapsed < policy.deadline
    assert not task_commits(account_of(emu), "job")
    fault_record(emu.ledger.injected, source="emulator")


@pytest.mark.clause(2)
async def test_retry_after_beyond_the_deadline_gives_up_at_once(
    azurite: AzuriteServer, seed: int, fault_record: FaultRecorder
) -> None:
    policy = RetryPolicy(attempts=6, deadline=30.0, initial=0.01, maximum=0.05, jitter=0.01, rng=random.Random(seed))
    emu, outcome, elapsed = await submit_under(forever("503", retry_after=3600), policy, azurite.connection_string)
    assert isinstance(outcome, SubmissionError), outcome
    assert isinstance(outcome.__cause__, ServiceUnavailableError)
    assert "Retry-After" in str(outcome.__cause__) and "3600" in str(outcome.__cause__)
    # Waiting an hour would pass the deadline: no second request, no waiting at all.
    assert emu.ledger.count("POST", ADD) == 1
    assert elapsed < 2.0
    fault_record(emu.ledger.injected, source="emulator")


@pytest.mark.clause(2)
async def test_the_deadline_bounds_a_fault_that_never_clears(
    azurite: AzuriteServer, seed: int, fault_record: FaultRecorder
) -> None:
    policy = RetryPolicy(attempts=1000, deadline=1.0, initial=0.05, maximum=0.2, jitter=0.02, rng=random.Random(seed))
    emu, outcome, elapsed = await submit_under(forever("503-bare"), policy, azurite.connection_string)
    assert isinstance(outcome, SubmissionError), outcome
    assert isinstance(outcome.__cause__, ServiceUnavailableError)
    assert "deadline" in str(outcome.__cause__)
    requests = emu.ledger.count("POST", ADD)
    assert 3 <= requests < 20, requests  # waits of 0.05, 0.1, 0.2, 0.2, ... fit the second 5 to 8 times
    assert elapsed <= policy.deadline + 0.5  # no wait ends past the deadline; one last request may be in flight
    fault_record(emu.ledger.injected, source="emulator")


@pytest.mark.clause(2)
async def test_retry_after_is_honoured(azurite: AzuriteServer, seed: int) -> None:
    policy = RetryPolicy(attempts=2, deadline=10.0, initial=0.01, maximum=0.05, jitter=0.01, rng=random.Random(seed))
    emu, outcome, _ = await submit_under(forever("429", retry_after=1), policy, azurite.connection_string)
    assert isinstance(outcome, SubmissionError)
    first, second = emu.ledger.times("POST", ADD)
    assert second - first >= 1.0, "the retry came before the service's Retry-After"


@pytest.mark.clause(2)
async def test_two_seeds_give_different_retry_timings(azurite: AzuriteServer, seed: int) -> None:
    attempts = 6

    def policy(rng_seed: str) -> RetryPolicy:
        return RetryPolicy(
            attempts=attempts, deadline=30.0, initial=0.02, maximum=0.1, jitter=0.2, rng=random.Random(rng_seed)
        )

    gaps: dict[str, list[float]] = {}
    for name in ("a", "b"):
        rng_seed = f"{seed}:jitter:{name}"
        emu, outcome, _ = await submit_under(forever("503-bare"), policy(rng_seed), azurite.connection_string)
        assert isinstance(outcome, SubmissionError)
        times = emu.ledger.times("POST", ADD)
        assert len(times) == attempts
        gaps[name] = [b - a for a, b in itertools.pairwise(times)]
        # The server saw the waits this seed gives: the policy's backoff, drawn from the same RNG.
        replay = policy(rng_seed)
        expected = [replay.backoff(n) for n in range(1, attempts)]
        for seen, wanted in zip(gaps[name], expected, strict=True):
            assert wanted - 0.005 <= seen <= wanted + 0.1, (gaps[name], expected)
    difference = sum(abs(a - b) for a, b in zip(gaps["a"], gaps["b"], strict=True))
    assert difference > 0.05, f"two seeds, the same timings: {gaps}"
