"""What a fan-out gives back: a `FileResult` per input, the `MapReport` of them all and its table.

Also the lines a display shows for a failure (`failure_line`, `failure_reason`, `tail_lines`), shared with
`aiobatch.progress` and `aiobatch.demo`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ._watch import TaskEvent

__all__ = [
    "STDERR_LINES",
    "FileResult",
    "MapReport",
    "Status",
    "clip",
    "failure_line",
    "failure_reason",
    "seconds_between",
    "short_node_id",
    "tail_lines",
]

#: Lines of a failed task's stderr a result keeps.
STDERR_LINES = 5

Status = Literal["succeeded", "failed", "skipped"]


def tail_lines(text: str, lines: int = STDERR_LINES) -> str:
    r"""The last *lines* non-blank lines of *text*, right-stripped.

    Example:
        >>> tail_lines("a\n\nb \nc\n", 2)
        'b\nc'
    """
    kept = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def failure_line(event: TaskEvent) -> str | None:
    """One line saying why a task failed: its exit code, or the service's failure in plain words.

    A plain non-zero exit says enough (the stderr tail beside it gives the command's reason); a failure the
    service reports (an input it could not download, an output it could not upload) gets the event's
    explanation, which says what to do about it. ``None`` for a task that succeeded.
    """
    if event.succeeded:
        return None
    if event.failure is None or event.failure.code in ("", "FailureExitCode"):
        return f"exit code {event.exit_code}" if event.exit_code is not None else "did not run"
    return event.explanation or event.error().message


def seconds_between(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    """Seconds from *start* to *end* (never negative), or ``None`` when either is unknown."""
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


@dataclass(frozen=True)
class FileResult:
    """How one input ended.

    Attributes:
        name: the input's name (its file name, or its path under the input folder).
        input: the local input file.
        status: ``"succeeded"``, ``"failed"``, or ``"skipped"`` (its outputs were all there already).
        outputs: the local output files in place, in the order the outputs are named.
        missing: outputs the task did not write (a task that exits 0 but writes no file fails with these).
        task_id: its Batch task id.
        exit_code: the command's exit code, when it ran.
        node_id: the node it ran on.
        start_time: when its last attempt started.
        end_time: when it completed.
        error: for a failure, why, in plain words (`TaskEvent.explanation`, or what went wrong with the outputs).
        stderr_tail: for a failed task, the last lines of its stderr.
        event: the task's completion event.
    """

    name: str
    input: Path
    status: Status
    outputs: tuple[Path, ...] = ()
    missing: tuple[str, ...] = ()
    task_id: str | None = None
    exit_code: int | None = None
    node_id: str | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    error: str | None = None
    stderr_tail: str = ""
    event: TaskEvent | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the input has all its outputs (it succeeded, or was skipped)."""
        return self.status != "failed"

    @property
    def seconds(self) -> float | None:
        """How long its last attempt ran on its node."""
        return seconds_between(self.start_time, self.end_time)


def failure_reason(result: FileResult) -> str:
    """One line saying why an input failed, for a table or a progress line (``""`` for one that did not fail).

    A task that ran and failed says so in `failure_line`'s words; a missing output, an output that could not be
    downloaded or a task that was never added says so in the result's own error.
    """
    if result.status != "failed":
        return ""
    event = result.event
    line = failure_line(event) if event is not None and not result.missing else None
    return line or result.error or ""


def clip(text: str, width: int) -> str:
    """*text* on one line (white space folded), cut to *width* characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def short_node_id(node_id: str | None, width: int = 24) -> str:
    """A node id fit for a table: Batch's are ~70 characters; keep the start and the distinctive end."""
    if not node_id:
        return "-"
    if len(node_id) <= width:
        return node_id
    keep = (width - 1) // 2
    return node_id[:keep] + "…" + node_id[-keep:]


@dataclass(frozen=True)
class MapReport:
    """What a fan-out did, input by input (in the order given).

    ``str(report)`` is `format`: a table, one row per input, and a line of totals.

    Attributes:
        results: one per input that has ended (every input, once the run is complete).
        run_id: the client's run id.
        job_id: the job (``None`` when nothing needed running).
        pool_id: the pool.
        elapsed: seconds from the start to the last result.
        complete: whether the run reached its end (not stopped early).
    """

    results: tuple[FileResult, ...]
    run_id: str
    job_id: str | None
    pool_id: str
    elapsed: float
    complete: bool = True

    @property
    def succeeded(self) -> int:
        """How many inputs succeeded."""
        return sum(1 for r in self.results if r.status == "succeeded")

    @property
    def failed(self) -> int:
        """How many inputs failed."""
        return sum(1 for r in self.results if r.status == "failed")

    @property
    def skipped(self) -> int:
        """How many inputs were skipped (their outputs were there already)."""
        return sum(1 for r in self.results if r.status == "skipped")

    @property
    def ok(self) -> bool:
        """Whether the run is complete and every input has its outputs."""
        return self.complete and all(r.ok for r in self.results)

    def summary(self) -> str:
        """One line: the counts, the time, the run and the job.

        Example:
            >>> MapReport((), "run-1", None, "pool", 1.25).summary()
            '0 succeeded, 0 failed, 0 skipped in 1.2 s (run run-1, pool pool)'
        """
        where = f"run {self.run_id}" + (f", job {self.job_id}" if self.job_id else "") + f", pool {self.pool_id}"
        stopped = "; stopped early" if not self.complete else ""
        return (
            f"{self.succeeded} succeeded, {self.failed} failed, {self.skipped} skipped in {self.elapsed:.1f} s "
            f"({where}){stopped}"
        )

    def format(self, *, width: int = 40) -> str:
        """The report as a table: input, status, exit code, node (shortened), seconds, and the outputs or the error.

        Args:
            width: the most characters of an input's name shown.

        Example:
            >>> row = FileResult("a.txt", Path("a.txt"), "skipped", outputs=(Path("out/a.n"),))
            >>> print(MapReport((row,), "run-1", None, "pool", 0.5).format())  # doctest: +NORMALIZE_WHITESPACE
            input  status   exit  node  seconds  outputs / error
            a.txt  skipped  -     -     -        out/a.n
            0 succeeded, 0 failed, 1 skipped in 0.5 s (run run-1, pool pool)
        """
        header = ("input", "status", "exit", "node", "seconds", "outputs / error")
        rows = [header]
        for r in self.results:
            if r.status == "failed":
                detail = failure_reason(r)
                last = r.stderr_tail.strip().splitlines()[-1:]
                detail += f" | stderr: {last[0]}" if last else ""
            else:
                detail = ", ".join(str(p) for p in r.outputs)
            rows.append(
                (
                    clip(r.name, width),
                    r.status,
                    "-" if r.exit_code is None else str(r.exit_code),
                    short_node_id(r.node_id),  # the result keeps the full id
                    "-" if r.seconds is None else f"{r.seconds:.1f}",
                    clip(detail, 160),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = ["  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]]) for row in rows]
        return "\n".join([*(line.rstrip() for line in lines), self.summary()])

    def __str__(self) -> str:
        return self.format()
