"""The observer of a fan-out: what `Client.map_files` tells as it goes, for a display to show.

Stages, bytes, pool nodes, task events and results. A module apart from the results: a result is plain data a
caller keeps; the observer is an interface that a display (`aiobatch.progress`, `aiobatch.demo.gifs`) subclasses
and the run calls.
"""

from __future__ import annotations

from typing import Literal

from ._mapresults import FileResult, MapReport
from ._pools import PoolStatus
from ._storage import TransferProgress
from ._watch import TaskEvent

__all__ = ["MapObserver", "StageKind"]

StageKind = Literal["upload", "pool", "pool-reused", "submit", "run"]


class MapObserver:
    """Receives a fan-out's progress; every method does nothing here. Subclass and override what you show.

    Pass one as ``observer=`` to `Client.map_files`. Its methods are called on the event loop, between two
    requests: keep them quick (update a display, append to a list), never blocking.
    """

    def stage(self, kind: StageKind, text: str, count: int) -> None:
        """A stage begins; *text* says which in a line.

        *kind* is ``"upload"`` (of *count* files), ``"pool"``, ``"pool-reused"``, ``"submit"`` (of *count* tasks)
        or ``"run"`` (*count* tasks).
        """

    def upload_started(self, files: int, total_bytes: int) -> None:
        """The upload of *files* inputs, *total_bytes* in all, begins."""

    def upload_progress(self, progress: TransferProgress) -> None:
        """Bytes of one input went up (or it was already there: ``progress.skipped``)."""

    def pool_status(self, status: PoolStatus) -> None:
        """The pool's allocation and node states, as last seen while waiting for it."""

    def tasks_submitted(self, names_by_task: dict[str, str]) -> None:
        """These tasks (task id -> input name) are in the job."""

    def task_event(self, event: TaskEvent, name: str) -> None:
        """The task of input *name* started running or completed."""

    def download_progress(self, progress: TransferProgress) -> None:
        """Bytes of one output came down."""

    def result(self, result: FileResult) -> None:
        """An input's result is final (also a skipped one)."""

    def finished(self, report: MapReport) -> None:
        """The run reached its end; the report is final."""
