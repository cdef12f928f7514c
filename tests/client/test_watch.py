"""watch_tasks: exactly one event per task (retries included), cheap polls, a clean break; wait_for_tasks."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import inspect
import logging
from collections import Counter
from typing import Any

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient

from aiobatch import Client, DeadlineExceededError, TaskEvent, TaskFailedError, TaskSpec, TaskWatch
from aiobatch._azurite import AzuriteServer
from aiobatch.emulator import Emulator

from .test_client import make_client, pool_spec, tasks

pytestmark = pytest.mark.anyio

FAIL = "/bin/sh -c 'echo broken >&2; exit 3'"
QUICK: dict[str, Any] = {"poll_interval": 0.05, "max_poll_interval": 0.2}


async def _ready_job(client: Client, job_id: str = "job", *, terminate: bool = False) -> None:
    await client.ensure_pool(pool_spec("pool", nodes=2, task_slots_per_node=8))
    await client.wait_for_pool_ready("pool", poll_interval=0.05, timeout=10)
    await client.create_job(job_id, pool_id="pool", on_all_tasks_complete="terminatejob" if terminate else "noaction")


async def test_exactly_one_event_per_task_with_failures_and_retries(
    batch_emulator: Emulator, azurite: AzuriteServer
) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        ok = tasks(30, prefix="ok")
        bad = tasks(10, command=FAIL, prefix="bad", max_task_retry_count=2)
        await client.submit_tasks("job", ok + bad)
        events = [e async for e in client.watch_tasks("job", **QUICK)]
    per_task = Counter(e.task_id for e in events)
    assert len(per_task) == 40 and set(per_task.values()) == {1}
    succeeded = [e for e in events if e.succeeded]
    failed = [e for e in events if e.failed]
    assert len(succeeded) == 30 and all(e.exit_code == 0 and e.retry_count == 0 for e in succeeded)
    assert len(failed) == 10
    for event in failed:
        assert (event.exit_code, event.retry_count) == (3, 2)  # 3 attempts in all, one event
        assert event.failure is not None and event.failure.category == "usererror"
        assert event.node_id and event.start_time and event.end_time and event.end_time >= event.start_time
    assert batch_emulator.account is not None
    oracle = batch_emulator.account.jobs["job"].tasks
    assert sorted(t.retry_count for k, t in oracle.items() if k.startswith("bad")) == [2] * 10


async def test_the_watch_ends_when_the_job_completes(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as submitter:
        await _ready_job(submitter, terminate=True)
        await submitter.submit_tasks("job", tasks(12))
    # A client that did not submit knows no count: it stops when the job completes.
    async with make_client(batch_emulator, azurite) as watcher:
        watch = watcher.watch_tasks("job", **QUICK)
        assert watch.expected is None
        events = [e async for e in watch]
    assert len({e.task_id for e in events}) == 12 == len(events)


async def _raw_tasks(batch: BatchClient, ids: list[str], command: str = "/bin/true") -> None:
    options = [m.BatchTaskCreateOptions(id=task_id, command_line=command) for task_id in ids]
    result = await batch.create_task_collection("job", m.BatchTaskGroup(task_values=options))
    assert {r.status.lower() for r in result.result_values or []} == {"success"}


async def test_without_a_count_the_watch_ends_when_no_task_is_unfinished(
    batch_emulator: Emulator, azurite: AzuriteServer
) -> None:
    """noaction: the job never completes, so only the tasks can tell the watch it is done."""
    async with (
        make_client(batch_emulator, azurite) as client,
        BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch,
    ):
        await _ready_job(client)  # onAllTasksComplete=noaction
        await _raw_tasks(batch, [f"raw{i}" for i in range(5)])
        watch = client.watch_tasks("job", **QUICK)
        assert watch.expected is None  # this client submitted nothing
        events: list[TaskEvent] = []
        with anyio.fail_after(15):
            async for event in watch:
                events.append(event)
                if len(events) == 5:
                    # Added after the first five were reported and before the watch polls again: the poll that
                    # would have confirmed "nothing unfinished" finds them instead.
                    await _raw_tasks(batch, ["late0", "late1"], command="/bin/sh -c 'sleep 0.3'")
        job = await batch.get_job("job")
    assert sorted(e.task_id for e in events) == sorted([f"raw{i}" for i in range(5)] + ["late0", "late1"])
    assert all(e.succeeded for e in events)
    assert job.state == m.BatchJobState.ACTIVE  # the watch ended on the tasks, not on the job


async def test_expected_count_ends_the_watch(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.submit_tasks("job", tasks(5))
        watch = client.watch_tasks("job", **QUICK)
        assert watch.expected == 5
        with anyio.fail_after(10):
            events = [e async for e in watch]
    assert len(events) == 5


async def test_running_events_on_request(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.submit_tasks("job", tasks(4, command="/bin/sh -c 'sleep 0.6'"))
        events = [e async for e in client.watch_tasks("job", include_running=True, **QUICK)]
    kinds = Counter(e.kind for e in events)
    assert kinds["completed"] == 4
    assert 1 <= kinds["running"] <= 4
    assert all(e.succeeded is None for e in events if e.kind == "running")
    for task_id in {e.task_id for e in events if e.kind == "running"}:
        order = [e.kind for e in events if e.task_id == task_id]
        assert order == ["running", "completed"]


async def test_breaking_out_leaves_nothing_running(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.submit_tasks("job", tasks(20))
        before = asyncio.all_tasks()
        watch = client.watch_tasks("job", **QUICK)
        assert not inspect.isasyncgen(watch)  # no generator finaliser to schedule an aclose() task
        async for _event in watch:
            break
        requests = watch.requests
        del watch, _event
        gc.collect()
        await asyncio.sleep(0.3)
        # Only the emulator (running the job's tasks in this same loop) may have started tasks since.
        started = [t for t in asyncio.all_tasks() - before if "aiobatch.emulator" not in repr(t.get_coro())]
        assert started == []
        assert requests > 0


async def test_a_watch_sends_no_request_after_a_break(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.submit_tasks("job", tasks(20, command="/bin/sh -c 'sleep 0.2'"))
        async with client.watch_tasks("job", **QUICK) as watch:
            async for _ in watch:
                break
            sent = watch.requests
            await anyio.sleep(0.5)
            assert watch.requests == sent
        assert [e async for e in watch] == []  # closed: ends at once


async def test_polls_cost_in_proportion_to_change(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.submit_tasks("job", tasks(300))
        watch = client.watch_tasks("job", poll_interval=0.1, max_poll_interval=1.0)
        events = [e async for e in watch]
        assert len(events) == 300
        per_task = watch.requests / len(events)
        print(f"watch: {watch.requests} requests for {len(events)} completions ({per_task:.3f} per task)")
        assert per_task < 0.5

        # An idle job: polls back off, and only the cheap counts request is sent.
        await client.create_job("idle", pool_id="pool")
        idle = client.watch_tasks("idle", expected=1, poll_interval=0.05, max_poll_interval=0.4)
        with anyio.move_on_after(1.5):
            async for _ in idle:
                pass
        assert idle.requests <= 2 * 8  # ~7 polls (0.05, 0.1, 0.2, 0.4, 0.4, ...), each counts + job check


async def test_stderr_tail_of_a_failed_task(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    noisy = "/bin/sh -c 'i=0; while [ $i -lt 2000 ]; do echo line-$i >&2; i=$((i+1)); done; exit 7'"
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.submit_tasks(
            "job", [TaskSpec(id="noisy", command_line=noisy), TaskSpec(id="plain", command_line=FAIL)]
        )
        async for event in client.watch_tasks("job", **QUICK):
            assert event.failed
            if event.task_id == "noisy":
                tail = await event.stderr_tail(max_bytes=100)
                assert tail.endswith("line-1999\n") and len(tail) <= 100
                assert event.exit_code == 7
                with pytest.raises(TaskFailedError, match="exit code 7"):
                    raise event.error()
            else:
                assert await event.stderr_tail() == "broken\n"


async def test_wait_for_tasks_summary_and_failures(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    seen: list[Any] = []
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.submit_tasks("job", tasks(6) + tasks(2, command=FAIL, prefix="bad"))
        summary = await client.wait_for_tasks("job", timeout=20, on_event=seen.append, **QUICK)
    assert (summary.completed, summary.succeeded, len(summary.failed)) == (8, 6, 2)
    assert len(seen) == 8 and not summary.ok
    with pytest.raises(TaskFailedError, match="2 of 8 tasks"):
        summary.raise_for_failures()


async def test_wait_for_tasks_timeout(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.submit_tasks("job", tasks(3, command="/bin/sh -c 'sleep 5'"))
        with anyio.fail_after(3), pytest.raises(DeadlineExceededError) as caught:
            await client.wait_for_tasks("job", timeout=0.3, **QUICK)
    assert "0 of 3 completed" in str(caught.value)


async def test_watch_of_a_missing_job(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    from aiobatch import NotFoundError

    async with make_client(batch_emulator, azurite) as client:
        with pytest.raises(NotFoundError, match="no-job"):
            async for _ in client.watch_tasks("no-job"):
                pass


def test_watch_arguments_are_checked() -> None:
    from aiobatch import ConfigurationError

    with pytest.raises(ConfigurationError):
        TaskWatch(None, "job", poll_interval=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TaskWatch(None, "job", expected=-1)  # type: ignore[arg-type]


async def test_failure_events_carry_no_sas_signature(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    from aiobatch import resource_file

    url = "http://127.0.0.1:9/inputs/cat.mp4?sv=2024-11-04&sp=r&sig=TOPSECRETSIGNATURE%3D"
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.submit_tasks(
            "job", [TaskSpec(id="nofile", command_line="cat cat.mp4", resource_files=[resource_file(url)])]
        )
        events = [e async for e in client.watch_tasks("job", **QUICK)]
    assert len(events) == 1 and events[0].failed
    failure = events[0].failure
    assert failure is not None and failure.code
    assert "TOPSECRETSIGNATURE" not in repr(events[0]) and "TOPSECRETSIGNATURE" not in str(events[0].error())


async def test_an_expired_sas_is_explained_on_the_event_itself(
    batch_emulator: Emulator, azurite: AzuriteServer
) -> None:
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    from aiobatch import resource_file

    expired = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    sas = generate_blob_sas(
        azurite.account_name, "inputs", "cat.mp4", account_key=azurite.account_key,
        permission=BlobSasPermissions(read=True), expiry=expired, start=expired - dt.timedelta(hours=1),
    )  # fmt: skip
    url = f"{azurite.blob_endpoint}/inputs/cat.mp4?{sas}"
    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.submit_tasks(
            "job", [TaskSpec(id="stale", command_line="cat cat.mp4", resource_files=[resource_file(url)])]
        )
        (event,) = [e async for e in client.watch_tasks("job", **QUICK)]
    assert event.failed and event.failure is not None
    assert event.failure.code == "BlobAccessDenied"  # the service's own fields stay as they were
    assert event.explanation is not None
    assert event.explanation.startswith("its SAS URL expired at 2020-01-01T00:00:00+00:00")
    assert "longer SasPolicy duration" in event.explanation
    for shown in (str(event), repr(event), str(event.error())):
        assert "SAS URL expired at 2020-01-01" in shown and "SasPolicy" in shown
        assert "sig=" not in shown.replace("sig=***", "")
    assert str(event).startswith("task 'stale' of job 'job' failed: its SAS URL expired")


def test_explanations_of_other_outcomes() -> None:
    from aiobatch import TaskFailure

    failure = TaskFailure("usererror", "FailureExitCode", "The task exited with an exit code representing a failure")
    failed = TaskEvent("job", "t1", "completed", False, explanation=None, exit_code=3, failure=failure)
    assert "exit code 3" in str(failed.error()) and "stderr_tail" in str(failed.error())
    ok = TaskEvent("job", "t2", "completed", True, exit_code=0)
    assert ok.explanation is None and str(ok) == "task 't2' of job 'job' succeeded"


async def test_a_missing_input_blob_is_named_with_advice_that_fits(
    batch_emulator: Emulator, azurite: AzuriteServer
) -> None:
    from aiobatch import resource_file

    async with make_client(batch_emulator, azurite) as client:
        await _ready_job(client)
        await client.ensure_container("inputs")
        url = await client.input_sas_url("inputs", "never uploaded.txt")  # a valid SAS for a blob that is not there
        spec = TaskSpec(id="orphan", command_line="cat data/in.txt", resource_files=[resource_file(url, "data/in.txt")])
        await client.submit_tasks("job", [spec])
        (event,) = [e async for e in client.watch_tasks("job", **QUICK)]
    assert event.failed and event.failure is not None and event.failure.code == "BlobNotFound"
    explanation = event.explanation or ""
    assert f"input blob '{azurite.blob_endpoint}/inputs/never uploaded.txt'" in explanation, explanation
    assert "'data/in.txt'" in explanation and "does not exist" in explanation
    assert "uploaded under that name" in explanation and "BlobNotFound" in explanation
    assert "stderr" not in explanation, "the command never ran: its stderr is empty, reading it helps nobody"
    assert "sig=" not in explanation and "?" not in explanation, "the blob is named without its SAS"
    assert str(event.error()).endswith(explanation)


def test_a_refused_input_blob_advises_checking_the_sas() -> None:
    from aiobatch import TaskFailure

    # The real service's details for a refused resource file: the URL (signature masked) and the path on the node.
    failure = TaskFailure(
        "usererror",
        "BlobAccessDenied",
        "Access for one of the specified Azure Blob(s) is denied",
        (
            (
                "BlobSource",
                "https://acct.blob.core.windows.net/inputs/cat%201.mp4?sv=2024-11-04&sp=r&se=2099-01-01T00%3A00%3A00Z&sig=***",
            ),
            ("FilePath", "/mnt/batch/tasks/workitems/job/job-1/t1/wd/cat 1.mp4"),
        ),
    )
    event = TaskEvent("job", "t1", "completed", False, failure=failure)
    explanation = str(event.error())
    assert "input blob 'https://acct.blob.core.windows.net/inputs/cat 1.mp4'" in explanation
    assert "'/mnt/batch/tasks/workitems/job/job-1/t1/wd/cat 1.mp4'" in explanation
    assert "Check the SAS URL" in explanation and "read permission" in explanation
    assert "stderr" not in explanation


class _Collect(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_the_sdks_failsafe_deserialization_warning_stays_out_of_the_users_output(
    batch_emulator: Emulator, azurite: AzuriteServer
) -> None:
    """The SDK logs a traceback at WARNING for each error answer without a body (a HEAD); the error is raised anyway."""
    from aiobatch import resource_file

    root = logging.getLogger()
    user = _Collect(logging.WARNING)  # a user's handler: warnings and worse on stderr
    root.addHandler(user)
    sdk = logging.getLogger("azure.batch._utils.model_base")
    try:
        async with make_client(batch_emulator, azurite) as client:
            await _ready_job(client)
            url = f"{azurite.blob_endpoint}/inputs/absent.txt"
            spec = TaskSpec(id="never-ran", command_line="cat absent.txt", resource_files=[resource_file(url)])
            await client.submit_tasks("job", [spec])
            (event,) = [e async for e in client.watch_tasks("job", **QUICK)]
            assert await event.stderr_tail() == ""  # the task never ran: HEAD stderr.txt is a 404 without a body
            sdk.warning("a different problem")  # the same logger's other records still reach the user
            previous = sdk.level
            sdk.setLevel(logging.DEBUG)  # and whoever asks for the SDK's DEBUG records still gets this one
            debug = _Collect(logging.DEBUG)
            sdk.addHandler(debug)
            try:
                assert await event.stderr_tail() == ""
            finally:
                sdk.removeHandler(debug)
                sdk.setLevel(previous)
    finally:
        root.removeHandler(user)
    assert "a different problem" in user.messages
    assert not [m for m in user.messages if "failsafe deserialization" in m], user.messages
    assert [m for m in debug.messages if "failsafe deserialization" in m]
