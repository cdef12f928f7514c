"""Completion events: a poller whose cost follows what changed, not the size of the job.

Each poll asks for the job's task counts (one small request). Only when the counts say something new completed
does it list tasks, and then only those that changed recently::

    $filter=state eq 'completed' and stateTransitionTime ge datetime'<watermark - overlap>'
    $select=id,state,stateTransitionTime,executionInfo,nodeInfo

The watermark is the latest completion time seen; the overlap window (10 s, and at least twice the last
listing's duration) re-reads the last few seconds so a task that becomes visible late is not skipped, and a set
of the ids already reported drops the repeats. So every
task gives exactly one event, whatever retries or requeues it went through (a task reaches ``completed`` once).
Counts may lag behind listings: they decide *whether* to list, never what is done. Should a listing still leave
fewer tasks seen than the counts report complete, a full listing of completed tasks (rate-limited) closes the
gap.

The interval adapts: back to *poll_interval* when something changed, doubling up to *max_poll_interval* while
nothing does. Polls are spaced so that their answers come an interval apart (each starts early by what a poll
usually takes), so a task's event comes about one interval after the task ends at the most. The watch ends
when *expected* tasks have completed, or when the job itself has completed (terminated, or all tasks done with
``onAllTasksComplete=terminatejob``).
Without an expected count it also ends when the job holds no unfinished task: the counts show every task
complete (none active or running, at least one completed), each of them has been reported, and one further
poll shows the same -- so a task added between two polls is not missed. A job whose tasks are still being
added elsewhere, with pauses longer than that, needs the count (or ``terminatejob``) to be watched to its end.

Memory: the reported ids (one lower-cased string each), one page of tasks (at most 1,000) at a time, and the
watermark -- never the task objects. `TaskWatch` is a plain async iterator, not a generator and not a task
group: between events nothing runs, so a caller can ``break`` at any point and no work is left behind.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import unquote

import anyio
from azure.batch import models
from azure.batch.aio import BatchClient

from ._errors import ConfigurationError, DeadlineExceededError, NotFoundError, TaskFailedError
from ._redact import redact
from ._retry import RetryPolicy, call
from ._sas import sas_expiry
from ._specs import check_id, wire_value

__all__ = [
    "TaskEvent",
    "TaskFailure",
    "TaskSummary",
    "TaskWatch",
    "wait_for_tasks",
]

logger = logging.getLogger("aiobatch")

_SELECT = ["id", "state", "stateTransitionTime", "executionInfo", "nodeInfo"]
_PAGE_SIZE = 1000
_DONE_JOB_STATES = frozenset({"completed"})

EventKind = Literal["completed", "running"]


def _odata_time(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class TaskFailure:
    """Why the service says a task failed (its ``executionInfo.failureInfo``).

    Attributes:
        category: ``usererror`` (the command, its inputs or outputs) or ``servererror``.
        code: e.g. ``FailureExitCode``, ``ResourceFileDownloadError``, ``TaskEnded``.
        message: the service's explanation.
        details: extra name/value pairs the service gave.
    """

    category: str
    code: str
    message: str
    details: tuple[tuple[str, str], ...] = ()

    def sas_expired(self, at: dt.datetime | None = None) -> dt.datetime | None:
        """Tell whether the failure is storage refusing a SAS URL that had expired; return its expiry if so.

        Batch reports a refused resource-file download (``BlobAccessDenied``, ...) or output upload
        (``FileUploadAccessDenied``, ...) with the URL in the details, signature masked; its ``se`` says when
        the SAS expired. Storage does not say *why* it refused, so the expiry is compared with *at* (when the
        task ended; now if not known).

        Args:
            at: when the request was refused.

        Returns:
            The SAS's expiry if it had passed by *at*, else ``None``.
        """
        if "accessdenied" not in self.code.lower() and "authentication" not in self.code.lower():
            return None
        when = at or dt.datetime.now(dt.timezone.utc)
        for _, value in self.details:
            expiry = sas_expiry(value) if value.lower().startswith(("http://", "https://")) else None
            if expiry is not None and expiry <= when:
                return expiry
        return None


@dataclass(frozen=True)
class TaskEvent:
    """One task's change, as `TaskWatch` reports it: a completion (exactly once per task), or a start.

    Attributes:
        job_id: the job.
        task_id: the task.
        kind: ``"completed"``, or ``"running"`` (only with ``include_running=True``; best effort, once per task).
        succeeded: for a completion, whether the task succeeded; ``None`` for a running event.
        explanation: for a failure, why it failed and what to do, in plain words (e.g. "the SAS URL expired at
            ...; mint SAS URLs with a longer SasPolicy duration ..."); ``None`` otherwise. `failure` keeps the
            service's own fields. ``str(event)`` starts with it.
        exit_code: the exit code of its last attempt, if it ran.
        failure: why it failed, when the service reports a failure.
        retry_count: how often it was retried after failing.
        requeue_count: how often it was requeued (a node preempted, lost or removed).
        node_id: the node of its last attempt.
        start_time: when its last attempt started.
        end_time: when it completed.

    Example:
        >>> async def report(client, job_id):  # doctest: +SKIP
        ...     async for event in client.watch_tasks(job_id):
        ...         if event.failed:
        ...             print(event.task_id, event.exit_code, await event.stderr_tail())
    """

    job_id: str
    task_id: str
    kind: EventKind
    succeeded: bool | None
    explanation: str | None = None
    exit_code: int | None = None
    failure: TaskFailure | None = None
    retry_count: int = 0
    requeue_count: int = 0
    node_id: str | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    _batch: BatchClient | None = field(default=None, repr=False, compare=False)
    _policy: RetryPolicy | None = field(default=None, repr=False, compare=False)

    @property
    def failed(self) -> bool:
        """Whether this is the completion of a task that failed."""
        return self.kind == "completed" and self.succeeded is False

    def __str__(self) -> str:
        if self.kind == "running":
            return f"task {self.task_id!r} of job {self.job_id!r} is running on {self.node_id or 'a node'}"
        if self.explanation is None:
            return f"task {self.task_id!r} of job {self.job_id!r} succeeded"
        return f"task {self.task_id!r} of job {self.job_id!r} failed: {self.explanation}"

    def error(self) -> TaskFailedError:
        """Return a `TaskFailedError` describing this failure (to raise, or to collect)."""
        explanation = self.explanation or _explain(self.exit_code, self.failure, self.retry_count, self.end_time)
        return TaskFailedError(
            f"task {self.task_id!r} of job {self.job_id!r} failed: {explanation}",
            job_id=self.job_id,
            task_id=self.task_id,
            exit_code=self.exit_code,
            failure_code=self.failure.code if self.failure else None,
        )

    async def stderr_tail(self, max_bytes: int = 4096) -> str:
        """Fetch the last *max_bytes* of the task's ``stderr.txt`` from its node.

        Two requests: the file's size, then the byte range of its tail; only the tail is kept in memory. A task
        that never ran on a node (e.g. its resource files could not be downloaded), or whose node is gone,
        has no stderr: the result is then ``""``.

        Args:
            max_bytes: how much of the end of the file to return.

        Returns:
            The tail, decoded as UTF-8 (undecodable bytes replaced).

        Raises:
            AuthenticationError: the Batch credentials were refused.
        """
        if self._batch is None:
            return ""
        batch = self._batch

        async def fetch() -> bytes:
            # Ask for the last bytes only (the size first, then a range); keep only the tail of what arrives
            # all the same, so memory stays bounded whatever the answer holds.
            props = await batch.get_task_file_properties(self.job_id, self.task_id, "stderr.txt")
            size = int(props.content_length or 0)
            if size == 0 or max_bytes <= 0:
                return b""
            wanted = f"bytes={max(0, size - max_bytes)}-{size - 1}"
            stream = await batch.download_task_file(self.job_id, self.task_id, "stderr.txt", ocp_range=wanted)
            tail = bytearray()
            async for chunk in stream:
                tail += chunk
                if len(tail) > 2 * max_bytes:
                    del tail[: len(tail) - max_bytes]
            return bytes(tail[-max_bytes:])

        try:
            data = await call(
                fetch, policy=self._policy, resource="task", resource_id=self.task_id, action="read stderr of"
            )
        except NotFoundError:
            return ""
        return data.decode("utf-8", errors="replace")


#: Resource-file failures (the task's inputs were not downloaded, so its command never ran) -> what went wrong.
_INPUT_REFUSALS = {
    "blobnotfound": "missing",
    "resourcecontainernotfound": "missing",
    "blobaccessdenied": "refused",
    "resourcecontaineraccessdenied": "refused",
}


def _explain_input(failure: TaskFailure) -> str:
    """Explain a resource file that could not be downloaded: which blob, to which path, and what to check.

    The service puts the blob's URL in the failure's details (``BlobSource`` on Azure, ``Url`` in the emulator;
    the SAS signature is masked by then) and the file's path on the node in ``FilePath``. The command never ran,
    so the task has no stderr worth reading: the advice is about the upload and the SAS instead.
    """
    details = dict(failure.details)
    url = next((v for _, v in failure.details if v.lower().startswith(("http://", "https://"))), "")
    # The URL without its query (the SAS): the blob's address, percent-decoded so the name reads as uploaded.
    blob = unquote(url.split("?", 1)[0]) if url else ""
    container = "container" in failure.code.lower()
    what = f"{'input container' if container else 'input blob'} {blob!r}" if blob else "an input blob"
    into = f" (for {details['FilePath']!r})" if details.get("FilePath") else ""
    service = f"({failure.code}: {failure.message.rstrip('.')})"
    if _INPUT_REFUSALS[failure.code.lower()] == "missing":
        return (
            f"{what}{into} does not exist, so the task's command never ran {service}. Check that the file was "
            "uploaded under that name to that container before the task was submitted (upload_files), and that "
            "the container was not deleted meanwhile; then resubmit the task."
        )
    return (
        f"storage refused to let the node read {what}{into}, so the task's command never ran {service}. Check "
        "the SAS URL: minted for this storage account and this blob or container, with read permission, and a "
        "start time already passed (input_sas_url mints one); then resubmit the task."
    )


#: What a failed task's explanation advises when the command ran: its stderr, read from the event.
_STDERR_ADVICE = "Read its stderr (await event.stderr_tail()) and fix the command line or its inputs."


def _explain(
    exit_code: int | None,
    failure: TaskFailure | None,
    retry_count: int,
    end_time: dt.datetime | None,
    *,
    advice: str = _STDERR_ADVICE,
) -> str:
    """Say why a task failed and what to do: the plain reading first, the service's code and message after.

    *advice* closes an explanation of a command that ran and failed (a caller that holds the stderr says where).
    """
    expired = failure.sas_expired(end_time) if failure else None
    if failure is not None and expired is not None:
        return (
            f"its SAS URL expired at {expired.isoformat()}, before storage was reached "
            f"({failure.code}: {failure.message.rstrip('.')}). Mint SAS URLs whose expiry covers the queue wait, "
            "the run and the output upload (a longer SasPolicy duration), and resubmit the task."
        )
    if failure is not None and failure.code.lower() in _INPUT_REFUSALS:
        return _explain_input(failure)
    why = f"exit code {exit_code}" if exit_code is not None else (failure.code if failure else "no exit code")
    detail = f" {failure.code}: {failure.message.rstrip('.')}." if failure else ""
    return f"{why} after {retry_count} retries.{detail} {advice}"


def _event(
    job_id: str, task: models.BatchTask, kind: EventKind, batch: BatchClient, policy: RetryPolicy | None
) -> TaskEvent:
    info = task.execution_info
    failure = None
    if info is not None and info.failure_info is not None:
        fi = info.failure_info
        # A download failure can quote the resource file's URL: keep its SAS signature out of events.
        failure = TaskFailure(
            category=wire_value(fi.category),
            code=fi.code or "",
            message=redact(fi.message or ""),
            details=tuple((d.name or "", redact(d.value or "")) for d in fi.details or []),
        )
    succeeded: bool | None = None
    if kind == "completed":
        result = wire_value(info.result) if info is not None else ""
        # Older answers carry no executionInfo.result: judge by the exit code and failure info.
        fallback = failure is None and info is not None and info.exit_code == 0
        succeeded = result == "success" if result else fallback
    exit_code = info.exit_code if info is not None else None
    retry_count = (info.retry_count or 0) if info is not None else 0
    end_time = info.end_time if info is not None else None
    return TaskEvent(
        job_id=job_id,
        task_id=task.id or "",
        kind=kind,
        succeeded=succeeded,
        explanation=_explain(exit_code, failure, retry_count, end_time) if succeeded is False else None,
        exit_code=exit_code,
        failure=failure,
        retry_count=retry_count,
        requeue_count=(info.requeue_count or 0) if info is not None else 0,
        node_id=task.node_info.node_id if task.node_info is not None else None,
        start_time=info.start_time if info is not None else None,
        end_time=end_time,
        _batch=batch,
        _policy=policy,
    )


@dataclass
class _Listing:
    kind: EventKind
    filter: str
    full: bool
    pages: AsyncIterator[Any] | None = None
    broken: bool = False
    latest: dt.datetime | None = None
    started: float = 0.0
    #: The continuation token (``odata.nextLink``) of the page after the last one read.
    token: str | None = None


class TaskWatch:
    """An async iterator of `TaskEvent`: one completion per task of a job, as tasks complete.

    Build it with ``client.watch_tasks(job_id)`` (or directly, over a ``BatchClient``). Iterating drives the
    polls; between two events nothing runs, so breaking out of the loop stops everything. It can also be used
    as ``async with`` (or closed with `aclose`) to end it explicitly.

    Attributes:
        requests: requests sent so far (counts, listings, pages, job checks).
        events: events yielded so far.
    """

    def __init__(
        self,
        batch: BatchClient,
        job_id: str,
        *,
        expected: int | None = None,
        include_running: bool = False,
        poll_interval: float = 1.0,
        max_poll_interval: float = 15.0,
        overlap: float = 10.0,
        resync_interval: float = 60.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        check_id("job", job_id)
        if expected is not None and expected < 0:
            raise ConfigurationError(f"expected must be >= 0, not {expected}.", setting="expected")
        if poll_interval <= 0 or max_poll_interval < poll_interval or overlap < 0:
            raise ConfigurationError(
                "poll_interval must be positive, max_poll_interval >= poll_interval and overlap >= 0."
            )
        self.job_id = job_id
        self.expected = expected
        self.include_running = include_running
        self.requests = 0
        self.events = 0
        self._batch = batch
        self._policy = policy
        self._min_interval = poll_interval
        self._max_interval = max_poll_interval
        self._interval = poll_interval
        self._overlap = dt.timedelta(seconds=overlap)
        self._resync_interval = resync_interval
        self._seen: set[str] = set()
        self._running_seen: set[str] = set()
        self._watermark: dt.datetime | None = None
        self._buffer: deque[TaskEvent] = deque()
        self._listing: _Listing | None = None
        self._queue: deque[_Listing] = deque()
        self._polled = False
        self._poll_started = 0.0
        self._poll_took: float | None = None  # how long a poll and its listing take, smoothed
        self._listing_seconds = 0.0
        self._last_completed = -1
        self._last_running = -1
        self._counts_completed = 0
        self._last_resync = -float("inf")
        self._job_done = False
        #: The completed count of the last poll that found no unfinished task (without an expected count).
        self._settled: int | None = None
        self._final_resync = False
        self._finished = False

    def __repr__(self) -> str:
        return (
            f"TaskWatch(job_id={self.job_id!r}, completed={len(self._seen)}, expected={self.expected}, "
            f"requests={self.requests})"
        )

    @property
    def completed(self) -> int:
        """How many distinct tasks have been reported complete."""
        return len(self._seen)

    def __aiter__(self) -> TaskWatch:
        return self

    async def __anext__(self) -> TaskEvent:
        while not self._buffer:
            if self._finished:
                raise StopAsyncIteration
            await self._step()
        self.events += 1
        return self._buffer.popleft()

    async def aclose(self) -> None:
        """End the watch: later iteration stops at once. Safe to call twice; nothing runs in the background."""
        self._finished = True
        self._listing = None
        self._queue.clear()
        self._buffer.clear()

    async def __aenter__(self) -> TaskWatch:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- the state machine: each step sends at most one request ------------------------------------------

    def _all_seen(self) -> bool:
        return self.expected is not None and len(self._seen) >= self.expected

    async def _step(self) -> None:
        if self._listing is None and self._queue:
            self._listing = self._queue.popleft()
        if self._listing is not None:
            await self._read_page(self._listing)
            return
        if self._all_seen():
            self._finish(f"all {len(self._seen)} expected tasks completed")
            return
        if self._job_done:
            if self._gap() and not self._final_resync:
                self._final_resync = True
                self._queue_resync()
                return
            self._finish(f"job completed; {len(self._seen)} tasks completed")
            return
        if self._polled:
            # Polls are spaced so that their answers, not their starts, come an interval apart: the next one
            # starts early by what a poll and its listing usually take (smoothed, at most half an interval). A
            # task's event then comes about one interval after it ends at the most, not an interval plus a poll.
            took = anyio.current_time() - self._poll_started
            self._poll_took = took if self._poll_took is None else 0.7 * self._poll_took + 0.3 * took
            lead = min(self._poll_took, self._interval / 2)
            await anyio.sleep(max(0.0, self._poll_started + self._interval - lead - anyio.current_time()))
        await self._poll()

    def _finish(self, why: str) -> None:
        logger.debug("watch of job %r ends: %s (%d requests)", self.job_id, why, self.requests)
        self._finished = True

    def _gap(self) -> bool:
        return self._counts_completed > len(self._seen) or (
            self.expected is not None and self._job_done and len(self._seen) < self.expected
        )

    def _resync_if_due(self) -> None:
        """Queue a full listing of completed tasks unless one ran within the resync interval."""
        if time.monotonic() - self._last_resync >= self._resync_interval:
            self._queue_resync()

    def _queue_resync(self) -> None:
        self._last_resync = time.monotonic()
        logger.debug("job %r: listing every completed task to close a gap", self.job_id)
        self._queue.append(_Listing("completed", "state eq 'completed'", full=True))

    def _queue_recent(self) -> None:
        """Queue a listing of the tasks completed since the watermark (minus the overlap)."""
        clause = "state eq 'completed'"
        if self._watermark is not None:
            # At least twice the last listing's duration: a task that completed while earlier pages were being
            # read can carry a time before the watermark that later pages set.
            since = self._watermark - max(self._overlap, dt.timedelta(seconds=2 * self._listing_seconds))
            clause += f" and stateTransitionTime ge datetime'{_odata_time(since)}'"
        self._queue.append(_Listing("completed", clause, full=self._watermark is None))

    async def _request(self, fn: Callable[[], Any], action: str) -> Any:
        self.requests += 1
        return await call(fn, policy=self._policy, resource="job", resource_id=self.job_id, action=action)

    async def _poll(self) -> None:
        self._polled = True
        self._poll_started = anyio.current_time()
        result: models.BatchTaskCountsResult = await self._request(
            lambda: self._batch.get_job_task_counts(self.job_id), "get task counts of"
        )
        counts = result.task_counts
        completed, running, active = counts.completed or 0, counts.running or 0, counts.active or 0
        self._counts_completed = completed
        changed = completed != self._last_completed or (self.include_running and running != self._last_running)
        if completed != self._last_completed and completed > 0:
            self._queue_recent()
        elif completed > len(self._seen):
            self._resync_if_due()  # the counts have not moved, yet tasks are missing: a listing missed them
        if self.include_running and running and running != self._last_running:
            self._queue.append(_Listing("running", "state eq 'running'", full=True))
        self._last_completed, self._last_running = completed, running
        if changed:
            self._interval = self._min_interval
        else:
            self._interval = min(self._interval * 2, self._max_interval)
            if active == 0 and running == 0:
                await self._check_job()
        self._check_settled(completed, running, active)

    def _check_settled(self, completed: int, running: int, active: int) -> None:
        """Without an expected count, end once two polls in a row find every task complete and all reported.

        The first such poll may come before its listing reported the last tasks; the second, an interval later,
        finds the same count after they were all reported. A task added in between would have changed it.
        """
        if self.expected is not None or self._job_done:
            return
        settled = active == 0 and running == 0 and completed > 0
        if settled and completed == self._settled and len(self._seen) >= completed and not self._queue:
            self._finish(f"no unfinished task left; {len(self._seen)} tasks completed")
            return
        self._settled = completed if settled else None

    async def _check_job(self) -> None:
        job: models.BatchJob = await self._request(
            lambda: self._batch.get_job(self.job_id, select=["id", "state"]), "get"
        )
        if wire_value(job.state) in _DONE_JOB_STATES:
            self._job_done = True
            # One last listing from the watermark picks up what completed since the last poll.
            self._queue_recent()
            # Counts taken after completion are final: use them to judge whether a full listing is needed.
            counts = await self._request(lambda: self._batch.get_job_task_counts(self.job_id), "get task counts of")
            self._counts_completed = counts.task_counts.completed or 0

    async def _read_page(self, listing: _Listing) -> None:
        async def next_page() -> list[models.BatchTask] | None:
            if listing.pages is None or listing.broken:
                # A failed page is asked for again, from the nextLink the page before it gave (a new pager:
                # the SDK's cannot retry a page whose answer failed to parse). Restarting the whole listing
                # instead would, under faults, rarely get through a listing of many pages.
                if listing.pages is None:
                    listing.started = anyio.current_time()
                listing.broken = False
                listing.pages = self._batch.list_tasks(
                    self.job_id, filter=listing.filter, select=_SELECT, max_results=_PAGE_SIZE
                ).by_page(continuation_token=listing.token)
            self.requests += 1
            try:
                page = await listing.pages.__anext__()
                tasks = [task async for task in page]
            except StopAsyncIteration:
                self.requests -= 1  # the pager knew it was done without asking
                return None
            except BaseException:
                listing.broken = True
                raise
            listing.token = getattr(listing.pages, "continuation_token", None)
            return tasks

        tasks: list[models.BatchTask] | None = await call(
            next_page, policy=self._policy, resource="job", resource_id=self.job_id, action="list tasks of"
        )
        if tasks is None:
            self._listing_seconds = anyio.current_time() - listing.started
            latest = listing.latest
            if listing.kind == "completed" and latest is not None and (self._watermark or latest) <= latest:
                self._watermark = latest
            self._listing = None
            if listing.kind == "completed" and not listing.full and self._gap() and not self._job_done:
                self._resync_if_due()
            return
        new = 0
        for task in tasks:
            key = (task.id or "").lower()
            if listing.kind == "completed":
                if wire_value(task.state) != "completed":
                    continue
                when = task.state_transition_time
                if when is not None and (listing.latest is None or when > listing.latest):
                    listing.latest = when
                if key in self._seen:
                    continue
                self._seen.add(key)
                self._running_seen.discard(key)
            else:
                if wire_value(task.state) != "running" or key in self._running_seen or key in self._seen:
                    continue
                self._running_seen.add(key)
            self._buffer.append(_event(self.job_id, task, listing.kind, self._batch, self._policy))
            new += 1
        if new:
            self._interval = self._min_interval


# ----------------------------------------------------------------------------------------------------
# wait_for_tasks
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSummary:
    """How a job's tasks ended, from `wait_for_tasks`.

    Attributes:
        job_id: the job.
        completed: tasks that completed.
        succeeded: tasks that succeeded.
        failed: the failure events (ids, exit codes, reasons; ``await e.stderr_tail()`` for more).
        elapsed: seconds waited.
        requests: requests the watch sent.
    """

    job_id: str
    completed: int
    succeeded: int
    failed: tuple[TaskEvent, ...]
    elapsed: float
    requests: int

    @property
    def ok(self) -> bool:
        """Whether every task succeeded."""
        return not self.failed

    def raise_for_failures(self) -> TaskSummary:
        """Raise `TaskFailedError` for the first failed task if any failed; return self otherwise.

        Raises:
            TaskFailedError: the first failure; its message says how many failed in all.
        """
        if not self.failed:
            return self
        first = self.failed[0].error()
        if len(self.failed) > 1:
            raise TaskFailedError(
                f"{len(self.failed)} of {self.completed} tasks of job {self.job_id!r} failed; the first: {first}",
                job_id=self.job_id,
                task_id=first.task_id,
                exit_code=first.exit_code,
                failure_code=first.failure_code,
            )
        raise first


async def wait_for_tasks(
    watch: TaskWatch,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 (the error says how many tasks were still pending)
    on_event: Callable[[TaskEvent], object] | None = None,
) -> TaskSummary:
    """Consume a `TaskWatch` to its end and summarise; see ``Client.wait_for_tasks``.

    Args:
        watch: the watch.
        timeout: seconds to wait in all; ``None`` waits as long as it takes.
        on_event: called with each event (for progress display).

    Returns:
        The summary.

    Raises:
        DeadlineExceededError: the tasks were not all complete within *timeout*.
    """
    started = time.monotonic()
    succeeded = 0
    failed: list[TaskEvent] = []
    with anyio.move_on_after(timeout) as scope:
        async with watch:
            async for event in watch:
                if on_event is not None:
                    on_event(event)
                if event.kind != "completed":
                    continue
                if event.succeeded:
                    succeeded += 1
                else:
                    failed.append(event)
    elapsed = time.monotonic() - started
    if scope.cancelled_caught:
        total = f" of {watch.expected}" if watch.expected is not None else ""
        raise DeadlineExceededError(
            f"waiting for the tasks of job {watch.job_id!r}: {watch.completed}{total} completed after "
            f"{timeout:g} s ({len(failed)} failed). Wait longer (timeout=), or check the pool has usable nodes.",
            operation=f"waiting for the tasks of job {watch.job_id!r}",
            timeout=timeout or 0.0,
        )
    return TaskSummary(
        job_id=watch.job_id,
        completed=watch.completed,
        succeeded=succeeded,
        failed=tuple(failed),
        elapsed=elapsed,
        requests=watch.requests,
    )
