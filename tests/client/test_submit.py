"""submit_tasks: 2,500 tasks exactly once, chunking and body splits, retries, TaskExists judged by the ledger."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp import web
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import ServiceResponseError

from aiobatch import (
    ConfigurationError,
    NotFoundError,
    RetryPolicy,
    ServiceUnavailableError,
    SubmissionError,
    SubmissionLedger,
    TaskSpec,
)
from aiobatch._azurite import AzuriteServer
from aiobatch._submit import RUN_ID_VARIABLE, submit_tasks
from aiobatch.emulator import Emulator

from ._stub import StubServer, batch_error, sequence
from .test_client import FAST, OK, make_client, tasks

pytestmark = pytest.mark.anyio


def _tasks_in(emulator: Emulator, job_id: str) -> dict[str, Any]:
    assert emulator.account is not None
    return dict(emulator.account.jobs[job_id.lower()].tasks)


async def _job(emulator: Emulator, job_id: str = "job") -> None:
    """A job on a pool that does not exist: tasks stay active, nothing runs (cheap)."""
    async with BatchClient(emulator.endpoint, emulator.credential) as batch:
        await batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id="nowhere")))


class _Faulty:
    """Wraps a BatchClient and shapes faults in create_task_collection; everything else passes through."""

    def __init__(self, batch: BatchClient, fault: Any) -> None:
        self._batch = batch
        self._fault = fault
        self.calls: list[list[str]] = []

    async def create_task_collection(self, job_id: str, group: m.BatchTaskGroup, **kwargs: Any) -> Any:
        ids = [t.id for t in group.task_values]
        self.calls.append(ids)
        return await self._fault(self._batch, job_id, group, len(self.calls), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)


# ----------------------------------------------------------------------------------------------------
# Scale and chunking
# ----------------------------------------------------------------------------------------------------


async def test_2500_tasks_exactly_once(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    await _job(batch_emulator)
    specs = tasks(2500)
    async with make_client(batch_emulator, azurite) as client:
        started = time.monotonic()
        result = await client.submit_tasks("job", specs)
        elapsed = time.monotonic() - started
    assert result.ok and len(result.added) == 2500 and result.existing == ()
    assert result.added == tuple(s.id for s in specs)  # in the order given
    assert result.requests == 25  # 100 per request
    in_job = _tasks_in(batch_emulator, "job")
    assert len(in_job) == 2500
    assert set(in_job) == {s.id.lower() for s in specs}
    print(f"2,500 tasks submitted in {elapsed:.2f} s ({result.requests} requests)")


async def test_large_bodies_are_split_before_sending(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    await _job(batch_emulator)
    big = tasks(100, environment={"PAYLOAD": "x" * 20_000})  # ~2 MB in all
    async with make_client(batch_emulator, azurite) as client:
        result = await client.submit_tasks("job", big)
    assert len(result.added) == 100 and result.requests >= 3
    assert len(_tasks_in(batch_emulator, "job")) == 100


# These two send over-limit bodies on purpose; aiohttp warns about any raw body over 1 MiB.
OVERSIZED = pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")


@OVERSIZED
async def test_413_halves_the_chunk(batch_emulator: Emulator) -> None:
    await _job(batch_emulator)
    big = tasks(100, environment={"PAYLOAD": "x" * 15_000})  # ~1.5 MB: over the service's 1 MiB
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        # An estimate that lets everything through, so the service's 413 has to do the splitting.
        result = await submit_tasks(batch, "job", big, policy=FAST, max_body_bytes=50_000_000)
    assert result.ok and len(result.added) == 100
    assert result.requests == 3  # 100 -> 413, then 50 + 50
    assert len(_tasks_in(batch_emulator, "job")) == 100


@OVERSIZED
async def test_a_task_too_large_on_its_own_fails_with_the_reason(batch_emulator: Emulator) -> None:
    await _job(batch_emulator)
    specs = [*tasks(2), TaskSpec(id="huge", command_line=OK, environment={"PAYLOAD": "x" * 1_500_000})]
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        result = await submit_tasks(batch, "job", specs, policy=FAST, max_body_bytes=50_000_000)
    assert set(result.added) == {"t00000", "t00001"}
    assert list(result.failed) == ["huge"] and result.failed["huge"].startswith("RequestBodyTooLarge")
    assert "huge" not in _tasks_in(batch_emulator, "job")


async def test_duplicate_ids_are_refused_before_sending(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        with pytest.raises(ConfigurationError, match="case-insensitively"):
            await client.submit_tasks(
                "job", [TaskSpec(id="Same", command_line=OK), TaskSpec(id="same", command_line=OK)]
            )


# ----------------------------------------------------------------------------------------------------
# TaskExists: ours (ambiguous earlier attempt) or someone else's (a conflict)
# ----------------------------------------------------------------------------------------------------


async def test_a_foreign_task_is_a_conflict_never_a_success(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    await _job(batch_emulator)
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_task("job", m.BatchTaskCreateOptions(id="t00003", command_line="echo theirs"))
    async with make_client(batch_emulator, azurite) as client:
        result = await client.submit_tasks("job", tasks(5))
        # Submitting again with the same client: still someone else's, never taken for ours.
        again = await client.submit_tasks("job", tasks(5))
    assert result.conflicts == ("t00003",)
    assert set(result.added) == {"t00000", "t00001", "t00002", "t00004"}
    assert "t00003" not in result.existing
    assert result.failed["t00003"].startswith("TaskExists") and "did not create it" in result.failed["t00003"]
    assert _tasks_in(batch_emulator, "job")["t00003"].command_line == "echo theirs"
    with pytest.raises(SubmissionError) as caught:
        result.raise_for_failures()
    assert caught.value.failed.keys() == {"t00003"} and len(caught.value.added) == 4
    assert again.conflicts == ("t00003",) and len(again.existing) == 4


async def test_taskexists_after_a_lost_answer_counts_as_added(batch_emulator: Emulator) -> None:
    await _job(batch_emulator)

    async def lose_first_answer(batch: BatchClient, job_id: str, group: Any, n: int, **kwargs: Any) -> Any:
        answer = await batch.create_task_collection(job_id, group, **kwargs)
        if n == 1:
            raise ServiceResponseError("connection reset after the tasks were added")
        return answer

    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        faulty = _Faulty(batch, lose_first_answer)
        result = await submit_tasks(faulty, "job", tasks(10), policy=FAST)  # type: ignore[arg-type]
    assert len(faulty.calls) == 2 and faulty.calls[0] == faulty.calls[1]
    assert result.ok and result.added == () and len(result.existing) == 10
    assert len(_tasks_in(batch_emulator, "job")) == 10


async def test_a_foreign_task_behind_a_lost_answer_is_still_a_conflict(batch_emulator: Emulator) -> None:
    """The lost answer said TaskExists for someone else's task: the retry's TaskExists must not make it ours."""
    await _job(batch_emulator)

    async def lose_first_answer(batch: BatchClient, job_id: str, group: Any, n: int, **kwargs: Any) -> Any:
        answer = await batch.create_task_collection(job_id, group, **kwargs)
        if n == 1:
            raise ServiceResponseError("connection reset after the request took effect")
        return answer

    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_task("job", m.BatchTaskCreateOptions(id="t00003", command_line="echo theirs"))
        faulty = _Faulty(batch, lose_first_answer)
        result = await submit_tasks(faulty, "job", tasks(6), policy=FAST)  # type: ignore[arg-type]
    assert len(faulty.calls) == 2
    assert result.conflicts == ("t00003",) and "t00003" in result.failed
    assert len(result.existing) == 5 and "t00003" not in result.existing
    env = {e["name"]: e["value"] for e in _tasks_in(batch_emulator, "job")["t00000"].spec["environmentSettings"]}
    assert env[RUN_ID_VARIABLE]  # every task this run sends carries its run id: how the two were told apart


async def test_resubmitting_with_the_same_client_recognises_its_tasks(
    batch_emulator: Emulator, azurite: AzuriteServer
) -> None:
    await _job(batch_emulator)
    async with make_client(batch_emulator, azurite) as client:
        first = await client.submit_tasks("job", tasks(30))
        again = await client.submit_tasks("job", tasks(40))
    assert len(first.added) == 30
    assert (len(again.existing), len(again.added), again.failed) == (30, 10, {})
    assert len(_tasks_in(batch_emulator, "job")) == 40
    # Another client (another ledger) did not create them: for it they are conflicts.
    async with make_client(batch_emulator, azurite) as other:
        theirs = await other.submit_tasks("job", tasks(5))
    assert len(theirs.conflicts) == 5 and theirs.added == () and theirs.existing == ()


async def test_a_resumed_run_recognises_what_its_earlier_process_added(
    batch_emulator: Emulator, azurite: AzuriteServer
) -> None:
    """A new client given the crashed run's id (a new process: a new ledger) counts that run's tasks as existing."""
    await _job(batch_emulator)
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        await batch.create_task("job", m.BatchTaskCreateOptions(id="t00007", command_line="echo theirs"))
    async with make_client(batch_emulator, azurite, run_id="nightly-1") as first:
        done = await first.submit_tasks("job", tasks(5))
    assert len(done.added) == 5
    async with make_client(batch_emulator, azurite, run_id="nightly-1") as resumed:
        result = await resumed.submit_tasks("job", tasks(10))
    assert sorted(result.existing) == [f"t{i:05d}" for i in range(5)]
    assert sorted(result.added) == [f"t{i:05d}" for i in (5, 6, 8, 9)]
    assert result.conflicts == ("t00007",) and "did not create it" in result.failed["t00007"]
    assert len(_tasks_in(batch_emulator, "job")) == 10
    # A new run (a new id) still calls them all someone else's.
    async with make_client(batch_emulator, azurite) as other:
        theirs = await other.submit_tasks("job", tasks(3))
    assert len(theirs.conflicts) == 3 and theirs.existing == ()


def test_a_ledger_is_resumed_when_given_a_run_id() -> None:
    assert SubmissionLedger("run-a").resumed and not SubmissionLedger().resumed
    assert not SubmissionLedger("run-a", resumed=False).resumed
    assert "resumed=True" in repr(SubmissionLedger("run-a"))


# ----------------------------------------------------------------------------------------------------
# Per-task server errors
# ----------------------------------------------------------------------------------------------------


def _server_error_for(ids: list[str], spelling: str) -> list[m.BatchTaskCreateResult]:
    return [
        m.BatchTaskCreateResult(
            status=spelling,
            task_id=task_id,
            error=m.BatchError(code="ServerBusy", message=m.BatchErrorMessage(value="The server is busy.")),
        )
        for task_id in ids
    ]


@pytest.mark.parametrize("spelling", ["serverError", "servererror", "ServerError"])
async def test_per_task_server_errors_are_retried_once_each(batch_emulator: Emulator, spelling: str) -> None:
    await _job(batch_emulator)

    async def half_busy_first(batch: BatchClient, job_id: str, group: Any, n: int, **kwargs: Any) -> Any:
        if n > 1:
            return await batch.create_task_collection(job_id, group, **kwargs)
        values = group.task_values
        answer = await batch.create_task_collection(job_id, m.BatchTaskGroup(task_values=values[::2]), **kwargs)
        refused = [t.id for t in values[1::2]]
        return m.BatchCreateTaskCollectionResult(
            result_values=[*answer.result_values, *_server_error_for(refused, spelling)]
        )

    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        faulty = _Faulty(batch, half_busy_first)
        result = await submit_tasks(faulty, "job", tasks(10), policy=FAST)  # type: ignore[arg-type]
    assert len(faulty.calls) == 2
    assert faulty.calls[1] == [f"t{i:05d}" for i in range(1, 10, 2)]  # only the refused ones again
    assert result.ok and len(result.added) == 10
    assert len(_tasks_in(batch_emulator, "job")) == 10


async def test_server_errors_forever_end_as_failures_within_the_policy(batch_emulator: Emulator) -> None:
    await _job(batch_emulator)

    async def always_busy(batch: BatchClient, job_id: str, group: Any, n: int, **kwargs: Any) -> Any:
        return m.BatchCreateTaskCollectionResult(
            result_values=_server_error_for([t.id for t in group.task_values], "serverError")
        )

    policy = RetryPolicy(attempts=3, deadline=5.0, initial=0.01, maximum=0.02, jitter=0.01)
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        faulty = _Faulty(batch, always_busy)
        with pytest.raises(SubmissionError) as caught:
            await submit_tasks(faulty, "job", tasks(4), policy=policy)  # type: ignore[arg-type]
    assert len(faulty.calls) == 3
    error = caught.value
    assert isinstance(error.__cause__, ServiceUnavailableError)
    assert error.added == () and set(error.failed) == {f"t{i:05d}" for i in range(4)}
    assert all("ServerBusy" in why and "gave up" in why for why in error.failed.values())
    assert "serverError" in str(error) and "Submit them again later" in str(error)


# ----------------------------------------------------------------------------------------------------
# Whole-request failures, through the real SDK pipeline
# ----------------------------------------------------------------------------------------------------


async def test_503_forever_costs_exactly_the_policys_attempts() -> None:
    """azure-core's retry is off for these calls: even a BatchClient built with default retries sends one
    request per attempt of aiobatch's policy, so the layers never multiply."""
    policy = RetryPolicy(attempts=3, deadline=10.0, initial=0.01, maximum=0.02, jitter=0.01)
    async with StubServer(batch_error(503, "ServerBusy")) as stub:
        from azure.core.credentials import AzureNamedKeyCredential

        async with BatchClient(stub.url, AzureNamedKeyCredential("acct", "a2V5a2V5")) as batch:  # default retries
            with pytest.raises(SubmissionError) as caught:
                await submit_tasks(batch, "job", tasks(5), policy=policy)
    assert len(stub.seen) == 3
    assert isinstance(caught.value.__cause__, ServiceUnavailableError)
    assert "3 attempts" in str(caught.value)
    assert set(caught.value.failed) == {f"t{i:05d}" for i in range(5)}
    assert all("may have taken effect" in why for why in caught.value.failed.values())


async def test_retry_after_is_honoured() -> None:
    async def accept(request: web.Request, n: int) -> web.StreamResponse:
        body = await request.json()
        values = [{"status": "success", "taskId": t["id"]} for t in body["value"]]
        return web.json_response({"value": values})

    throttled = batch_error(429, "TooManyRequests", headers={"Retry-After": "0.4"})
    async with StubServer(sequence(throttled, accept)) as stub:
        from azure.core.credentials import AzureNamedKeyCredential

        async with BatchClient(stub.url, AzureNamedKeyCredential("acct", "a2V5a2V5")) as batch:
            started = time.monotonic()
            result = await submit_tasks(batch, "job", tasks(3), policy=FAST)
            waited = time.monotonic() - started
    assert len(stub.seen) == 2 and len(result.added) == 3
    assert waited >= 0.4


async def test_each_chunk_is_sent_as_measured_and_resent_as_is() -> None:
    """A chunk's body is the compact encoding measured against the limit, byte for byte, on every attempt."""
    bodies: list[bytes] = []

    async def accept(request: web.Request, n: int) -> web.StreamResponse:
        body = await request.read()
        bodies.append(body)
        if n == 1:  # the second request: the service is busy; its retry must carry the same bytes
            return await batch_error(503, "ServerBusy")(request, n)
        values = [{"status": "success", "taskId": t["id"]} for t in json.loads(body)["value"]]
        return web.json_response({"value": values})

    specs = [TaskSpec(id=f"t{i:03d}", command_line=OK, environment={"PAD": "x" * (i * 37 % 400)}) for i in range(60)]
    async with StubServer(accept) as stub:
        from azure.core.credentials import AzureNamedKeyCredential

        async with BatchClient(stub.url, AzureNamedKeyCredential("acct", "a2V5a2V5")) as batch:
            result = await submit_tasks(batch, "job", specs, policy=FAST, max_body_bytes=4_000, concurrency=1)
    assert result.ok and result.added == tuple(s.id for s in specs)
    assert bodies[2] == bodies[1], "the retry re-sends the chunk's bytes"
    assert all("addtaskcollection" in seen.path and "api-version=" in seen.query for seen in stub.seen)
    assert all(s.headers["Content-Type"].startswith("application/json") for s in stub.seen)
    sent = [json.loads(b)["value"] for b in bodies[:1] + bodies[2:]]
    assert [t["id"] for chunk in sent for t in chunk] == [s.id for s in specs], "each task once, in order"
    for body, chunk in zip(bodies[:1] + bodies[2:], sent, strict=True):
        assert len(body) <= 4_000 and body == json.dumps({"value": chunk}, separators=(",", ":")).encode()


async def test_a_chunk_is_signed_and_labelled_as_the_client_configures() -> None:
    """Chunks skip the SDK's operation, not the client's signing, user agent or headers."""

    async def accept(request: web.Request, n: int) -> web.StreamResponse:
        values = [{"status": "success", "taskId": t["id"]} for t in (await request.json())["value"]]
        return web.json_response({"value": values})

    async with StubServer(accept) as stub:
        from azure.core.credentials import AzureNamedKeyCredential

        async with BatchClient(
            stub.url, AzureNamedKeyCredential("acct", "a2V5a2V5"), user_agent="my-app/1.0", headers={"x-extra": "1"}
        ) as batch:
            result = await submit_tasks(batch, "job", tasks(3), policy=FAST)
    assert result.ok and len(stub.seen) == 1
    headers = stub.seen[0].headers
    assert headers["Authorization"].startswith("SharedKey acct:") and "ocp-date" in {k.lower() for k in headers}
    assert "my-app/1.0" in headers["User-Agent"] and headers["x-extra"] == "1"


async def test_a_missing_job_stops_the_submission(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        with pytest.raises(SubmissionError) as caught:
            await client.submit_tasks("no-such-job", tasks(3))
    assert isinstance(caught.value.__cause__, NotFoundError)
    assert "create_job" in str(caught.value)
    assert caught.value.added == ()


async def test_the_ledger_counts_what_was_sent() -> None:
    ledger = SubmissionLedger()
    ledger.sent("Job").update({"a", "b"})
    assert ledger.count("job") == 2
    assert "tasks=2" in repr(ledger)
    assert json.dumps(sorted(ledger.sent("JOB"))) == '["a", "b"]'
