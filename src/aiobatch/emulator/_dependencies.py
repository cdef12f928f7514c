"""Task dependencies: which tasks of a job wait for which, and when a waiting task is released.

A job created with ``usesTaskDependencies`` holds one `Dependencies` index. A task whose ``dependsOn`` names
tasks (``taskIds``) or integer id ranges (``taskIdRanges``, inclusive: ``{"start": 9, "end": 12}`` is tasks
``9``, ``10``, ``11`` and ``12``) stays ``active`` and is not queued for dispatch until every task it names has
completed with a ``dependencyAction`` of ``satisfy`` (the default for a task that succeeded; ``block``, the default
for every other exit condition, keeps its dependents waiting for good, as on Azure: "If any of those Tasks fail and
exhaust their retry counts, this Task will never be scheduled").

A dependency may name a task that does not exist yet (it may be added later, in any order); the dependent waits for
it. Only ids written as plain non-negative integers (``7``, not ``07`` or ``7a``) are in a range.

Cost: adding a task and completing one cost time in the size of *its* dependencies and dependents, not in the
number of tasks in the job. Each dependent keeps a count of unsatisfied dependencies; tasks it waits on by id (and
ranges of at most `EXPANDED_RANGE` ids) are indexed by id, so a completion finds its dependents at once. Wider
ranges are few in practice (a merge task over thousands of frames): a completion of an integer id scans the
distinct wide ranges, and adding a task that waits on one counts what is already satisfied in it (walking the
shorter of the range and the job's succeeded tasks).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ._model import ServiceError, invalid_property

#: The combined length of a task's ``dependsOn.taskIds`` that the service accepts (else TaskDependencyListTooLong).
MAX_TASK_IDS_LENGTH = 64_000

#: Ranges of at most this many ids are indexed id by id; wider ones are scanned when an integer id completes.
EXPANDED_RANGE = 1_000

_INTEGER_ID = re.compile(r"^(0|[1-9][0-9]*)$")


def _number(key: str) -> int | None:
    """The integer a task id stands for in a range, or None when the id is not a plain integer."""
    return int(key) if _INTEGER_ID.match(key) else None


def check_depends_on(depends_on: Mapping[str, Any] | None, uses_task_dependencies: bool) -> None:
    """The service's refusals of a task's ``dependsOn`` (the validation layer has checked its types).

    Raises:
        ServiceError: 400 ``TaskDependenciesNotSpecifiedOnJob`` when the job was not created with
            ``usesTaskDependencies``; 400 ``TaskDependencyListTooLong`` past 64,000 characters of task ids;
            400 ``InvalidPropertyValue`` for a range whose start is negative or above its end.
    """
    if not depends_on or not (depends_on.get("taskIds") or depends_on.get("taskIdRanges")):
        return
    if not uses_task_dependencies:
        raise ServiceError(
            400,
            "TaskDependenciesNotSpecifiedOnJob",
            "A task was specified as depending on other tasks, but the job did not specify that it would use task "
            "dependencies.",
            [("Reason", "Create the job with usesTaskDependencies set to true.")],
        )
    ids = depends_on.get("taskIds") or []
    if sum(len(i) for i in ids) > MAX_TASK_IDS_LENGTH:
        raise ServiceError(
            400,
            "TaskDependencyListTooLong",
            "A task was specified as depending on other tasks, but the list of dependencies was too long to be stored.",
            [("Reason", f"The task ids total more than {MAX_TASK_IDS_LENGTH} characters; use taskIdRanges.")],
        )
    for index, item in enumerate(depends_on.get("taskIdRanges") or []):
        start, end = item["start"], item["end"]
        if start < 0 or end < start:  # guessed: the service's code for a reversed range is not recorded
            raise invalid_property(
                f"dependsOn.taskIdRanges[{index}]",
                f"{start}-{end}",
                "A task id range needs 0 <= start <= end.",
            )


def _merged(ranges: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Ranges as sorted, non-overlapping (start, end) pairs."""
    out: list[tuple[int, int]] = []
    for start, end in sorted((int(r["start"]), int(r["end"])) for r in ranges):
        if out and start <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


class Dependencies:
    """The dependency index of one job: who waits for whom, and what each completion releases.

    Keys are lower-cased task ids (task ids are case-insensitive).
    """

    __slots__ = ("_by_id", "_satisfied", "_waiting", "_wide")

    def __init__(self) -> None:
        #: Tasks that completed with dependencyAction satisfy.
        self._satisfied: set[str] = set()
        #: Dependent task -> how many of its dependencies are not yet satisfied.
        self._waiting: dict[str, int] = {}
        #: Dependency id -> the dependents waiting for it.
        self._by_id: dict[str, list[str]] = {}
        #: Wide range -> the dependents waiting for (part of) it.
        self._wide: dict[tuple[int, int], list[str]] = {}

    def add(self, key: str, depends_on: Mapping[str, Any] | None) -> bool:
        """Register a task of the job; True when it must wait (it is then not to be queued).

        A task already waiting (terminated, then reactivated) keeps its place: it is not counted twice.
        """
        if key in self._waiting:
            return True
        if not depends_on:
            return False
        missing = 0
        ids = {str(i).lower() for i in depends_on.get("taskIds") or []}
        for start, end in _merged(depends_on.get("taskIdRanges") or []):
            if end - start < EXPANDED_RANGE:
                ids.update(str(n) for n in range(start, end + 1))
                continue
            unsatisfied = end - start + 1 - self._satisfied_within(start, end)
            if unsatisfied:
                self._wide.setdefault((start, end), []).append(key)
                missing += unsatisfied
        for dependency in ids:
            if dependency not in self._satisfied:
                self._by_id.setdefault(dependency, []).append(key)
                missing += 1
        # An id named both alone and inside a wide range counts twice, and is satisfied twice: the count holds.
        if missing:
            self._waiting[key] = missing
        return missing > 0

    def _satisfied_within(self, start: int, end: int) -> int:
        """How many ids from ``start`` to ``end`` are satisfied, walking the shorter of the range and the set."""
        if end - start + 1 <= len(self._satisfied):
            return sum(1 for n in range(start, end + 1) if str(n) in self._satisfied)
        return sum(1 for key in self._satisfied if (n := _number(key)) is not None and start <= n <= end)

    def is_waiting(self, key: str) -> bool:
        """Whether the task waits for dependencies."""
        return key in self._waiting

    def forget(self, key: str) -> None:
        """A waiting task was deleted: it waits no more (its entries are skipped as they are met)."""
        self._waiting.pop(key, None)

    def satisfy(self, key: str) -> list[str]:
        """The task completed with dependencyAction ``satisfy``: return the dependents that no longer wait."""
        if key in self._satisfied:
            return []
        self._satisfied.add(key)
        released: list[str] = []
        for dependent in self._by_id.pop(key, ()):
            self._count_down(dependent, released)
        number = _number(key)
        if number is not None:
            for bounds, dependents in list(self._wide.items()):
                if bounds[0] <= number <= bounds[1]:
                    for dependent in dependents:
                        self._count_down(dependent, released)
                    still = [d for d in dependents if d in self._waiting]
                    if still:
                        self._wide[bounds] = still
                    else:
                        del self._wide[bounds]
        return released

    def _count_down(self, dependent: str, released: list[str]) -> None:
        left = self._waiting.get(dependent)
        if left is None:  # deleted, or released already
            return
        if left <= 1:
            del self._waiting[dependent]
            released.append(dependent)
        else:
            self._waiting[dependent] = left - 1


__all__ = ["EXPANDED_RANGE", "MAX_TASK_IDS_LENGTH", "Dependencies", "check_depends_on"]
