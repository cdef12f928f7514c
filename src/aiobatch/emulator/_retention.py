"""Task ``constraints.retentionTime``: a completed task's directory is deleted once its retention elapses.

As the REST reference says of ``retentionTime``: "The minimum time to retain the Task directory on the Compute Node
where it ran, from the time it completes execution. After this time, the Batch service may delete the Task
directory and all its contents. The default is 7 days".  The emulator deletes it when the time is up on its clock
(so ``--clock-speed`` shortens it alike); from then on the task's files answer 404 ``TaskFilesCleanedup``.

One timer serves every task: completed tasks wait in a heap ordered by expiry, holding ids (not the task), so a
task deleted meanwhile is simply skipped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path

from ._clock import Clock, wait_event
from ._model import Account, ServiceError

__all__ = ["Retention", "files_cleaned_up"]

#: A directory that is not a task's, and whether it still belongs to the run that was timed.
_Other = tuple[Path, Callable[[], bool]]


def files_cleaned_up() -> ServiceError:
    """The answer to a file request of a task whose directory its retention time removed."""
    # guessed: the status is not recorded; the code and message are the service's (BatchErrorCode.TaskFilesCleanedup,
    # "the task files have been cleaned up").
    return ServiceError(404, "TaskFilesCleanedup", "The task files have been cleaned up.")


class Retention:
    """Deletes completed tasks' directories when their retention time elapses on ``clock``.

    Args:
        account: Where tasks are looked up when their time comes.
        clock: The emulator's clock.
        remove: Deletes directories (off the event loop).
    """

    def __init__(self, account: Account, clock: Clock, remove: Callable[[list[Path]], Awaitable[None]]) -> None:
        self._account = account
        self._clock = clock
        self._remove = remove
        #: (expiry, seq, job key, task key, end time, other directory): a task's entry, or, with the last item
        #: set, a directory of a job preparation or release task and what says it is still that run's.
        self._heap: list[tuple[dt.datetime, int, str, str, dt.datetime, _Other | None]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, job_key: str, task_key: str, end_time: dt.datetime, seconds: float) -> None:
        """Delete the directory of the task completed at ``end_time`` after ``seconds`` of the service's time."""
        try:
            expiry = end_time + dt.timedelta(seconds=seconds)
        except OverflowError:
            return  # beyond any date: never
        self._push(expiry, (job_key, task_key, end_time, None))

    def add_directory(
        self, path: Path, end_time: dt.datetime, seconds: float, still_current: Callable[[], bool]
    ) -> None:
        """Delete ``path`` ``seconds`` of the service's time after ``end_time``, if ``still_current()`` then.

        For the directories of job preparation and release tasks, which are not tasks of the job.
        """
        try:
            expiry = end_time + dt.timedelta(seconds=seconds)
        except OverflowError:
            return
        self._push(expiry, ("", "", end_time, (path, still_current)))

    def _push(self, expiry: dt.datetime, entry: tuple[str, str, dt.datetime, _Other | None]) -> None:
        first = not self._heap or expiry < self._heap[0][0]
        heapq.heappush(self._heap, (expiry, next(self._seq), *entry))
        if first:
            self._changed.set()

    async def run(self) -> None:
        """Delete directories as their retention elapses, until cancelled."""
        while True:
            self._changed.clear()
            if not self._heap:
                await self._changed.wait()
                continue
            wait = (self._heap[0][0] - self._clock.now()).total_seconds()
            if wait > 0:
                # Woken early when an earlier expiry arrives; never sleeps more than a minute of real time at once.
                real = min(60.0, self._clock.real_seconds(wait))
                await wait_event(self._changed, real)
                continue
            await self._expire(self._clock.now())

    async def _expire(self, now: dt.datetime) -> None:
        dirs: list[Path] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, job_key, task_key, end_time, other = heapq.heappop(self._heap)
            if other is not None:
                path, still_current = other
                if still_current():
                    dirs.append(path)
                continue
            job = self._account.jobs.get(job_key)
            task = job.tasks.get(task_key) if job is not None else None
            # Only the attempt that completed then: a task reactivated and run again keeps its new directory.
            if task is None or task.state != "completed" or task.end_time is not end_time or task.task_dir is None:
                continue
            dirs.append(task.task_dir)
            task.files_expired = True
        if dirs:
            await self._remove(dirs)
