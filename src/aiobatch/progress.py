"""Progress people can see for any `aiobatch.Client.map_files` run: rich bars, plain lines, a notebook display.

Each display is a `aiobatch.MapObserver`; pass one as ``observer=`` and close it when the run is over::

    from aiobatch import progress

    with progress.auto_observer() as shown:
        report = await client.map_files("texts", "wc -w < {input} > {output}", "{stem}.count",
                                        pool=pool, output_dir="counts", observer=shown)

`auto_observer` picks one for a stream: `RichProgress` on a terminal (bars for the upload, the pool's nodes,
the tasks and the downloads, then a summary table), `PlainProgress` in a pipe, in CI (``CI`` set), with
``TERM=dumb`` or without rich -- one timestamped line per event and the table as text, never a bar -- and
`NotebookProgress` draws one live display in a Jupyter notebook and an HTML table. All three keep their counts
in a `ProgressState` and draw a `Summary`, so they differ only in how they draw.

A caller that speaks of something other than inputs and outputs (the pet example speaks of videos and GIFs)
drives the same displays with `ProgressDisplay.show_stage`, `ProgressDisplay.show_done` and
`ProgressDisplay.show_summary`; see `aiobatch.demo.progress`.

rich is optional (in a checkout: ``python -m pip install -e '.[demo]'``, as the README's "Install in your
project" says); without it `auto_observer` falls back to plain lines.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any

from ._mapresults import FileResult, MapReport, Status, clip, failure_reason, short_node_id
from ._observer import MapObserver, StageKind
from ._pools import PoolStatus
from ._storage import TransferProgress
from ._watch import TaskEvent

__all__ = [
    "NotebookProgress",
    "PlainProgress",
    "ProgressDisplay",
    "ProgressState",
    "RichProgress",
    "Summary",
    "auto_observer",
    "format_size",
    "map_summary",
    "use_rich",
]


def format_size(size: int | None) -> str:
    """Bytes for people: ``"812 B"``, ``"45.1 KB"``, ``"3.2 MB"``.

    Example:
        >>> format_size(2_500_000)
        '2.5 MB'
    """
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------------
# What a display draws
# ----------------------------------------------------------------------------------------------------


@dataclass
class ProgressState:
    """A run's counts so far, built from the observer's calls, for any display to draw.

    Attributes:
        stage: the current stage's text.
        upload_total: bytes to upload.
        uploaded: bytes uploaded (or found already there) so far.
        pool: the pool's last status.
        names_by_task: task id -> input name, for the tasks in the job.
        running: task ids running now.
        done: input name -> how it ended, for every input whose result is final.
        downloaded: bytes of outputs downloaded so far.
    """

    stage: str = ""
    upload_total: int = 0
    uploaded: int = 0
    pool: PoolStatus | None = None
    names_by_task: dict[str, str] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    done: dict[str, Status] = field(default_factory=dict)
    downloaded: int = 0
    _transfer: dict[tuple[str, str], int] = field(default_factory=dict)

    def transfer(self, kind: str, progress: TransferProgress) -> tuple[int, bool]:
        """Record one transfer step; returns the new bytes and whether this blob just finished."""
        key = (kind, progress.name)
        before = self._transfer.get(key, 0)
        self._transfer[key] = progress.done
        finished = progress.done >= progress.total and before < progress.total
        return max(0, progress.done - before), finished or (progress.skipped and before == 0)

    @property
    def finished(self) -> int:
        """Inputs whose task ended (or could not be added) in this run: the skipped ones are not counted."""
        return sum(1 for status in self.done.values() if status != "skipped")

    @property
    def failed(self) -> int:
        """Inputs that failed."""
        return sum(1 for status in self.done.values() if status == "failed")

    @property
    def succeeded(self) -> int:
        """Inputs that succeeded in this run."""
        return sum(1 for status in self.done.values() if status == "succeeded")

    def pool_text(self) -> str:
        """The pool's nodes in one line, e.g. ``"2 of 3 nodes usable (1 starting, 2 idle)"``."""
        if self.pool is None:
            return "waiting for the pool"
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.pool.node_states.items())) or "no nodes yet"
        return f"{self.pool.usable_nodes} of {self.pool.target_nodes} nodes usable ({states})"

    def counts_text(self) -> str:
        """The tasks in one bracket, e.g. ``"[2/5 done, 1 failed, 3 running]"``."""
        total = len(self.names_by_task)
        return f"[{self.finished}/{total} done, {self.failed} failed, {len(self.running)} running]"


@dataclass(frozen=True)
class Summary:
    """A run's summary table, ready for any display to draw: columns, one row per input, notes and totals.

    Attributes:
        title: a caption (``"run <run id>"``).
        columns: the column headings.
        rows: one row of cells per input, in the order given.
        statuses: how each row's input ended (a display may colour a failure or dim a skipped one).
        notes: (heading, text) pairs drawn under the table, e.g. a failure's stderr tail.
        totals: the closing line (counts and time).
        right: the indexes of the columns aligned right (numbers).
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    statuses: tuple[Status, ...]
    notes: tuple[tuple[str, str], ...]
    totals: str
    right: frozenset[int] = frozenset()

    def format(self) -> str:
        """The table as plain text: columns padded to their widest cell, then the notes indented, then the totals.

        Example:
            >>> table = Summary("run r", ("input", "status"), (("a.txt", "succeeded"),), ("succeeded",), (), "1 ok")
            >>> print(table.format())
            input  status
            a.txt  succeeded
            1 ok
        """
        rows = [self.columns, *self.rows]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.columns))]
        lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
        for heading, text in self.notes:
            lines.append(heading)
            lines.extend(f"    {line}" for line in text.splitlines())
        lines.append(self.totals)
        return "\n".join(lines)


def map_summary(report: MapReport, *, width: int = 40) -> Summary:
    """A `aiobatch.MapReport` as a `Summary`: input, status, exit code, node, seconds, and outputs or the error.

    Failures' stderr tails go under the table; the totals are `aiobatch.MapReport.summary`.

    Args:
        report: the run's report.
        width: the most characters of an input's name shown.

    Example:
        >>> from pathlib import Path
        >>> from aiobatch import FileResult, MapReport
        >>> row = FileResult("a.txt", Path("a.txt"), "skipped", outputs=(Path("out/a.n"),))
        >>> map_summary(MapReport((row,), "run-1", None, "pool", 0.5)).rows
        (('a.txt', 'skipped', '-', '-', '-', 'a.n'),)
    """
    rows: list[tuple[str, ...]] = []
    notes: list[tuple[str, str]] = []
    for r in report.results:
        detail = failure_reason(r) if r.status == "failed" else ", ".join(p.name for p in r.outputs)
        seconds = "-" if r.seconds is None else f"{r.seconds:.1f}"
        exit_code = "-" if r.exit_code is None else str(r.exit_code)
        rows.append((clip(r.name, width), r.status, exit_code, short_node_id(r.node_id), seconds, clip(detail, 100)))
        if r.status == "failed" and r.stderr_tail.strip():
            notes.append((f"{r.name}: stderr:", r.stderr_tail))
    return Summary(
        title=f"run {report.run_id}",
        columns=("input", "status", "exit", "node", "seconds", "outputs / error"),
        rows=tuple(rows),
        statuses=tuple(r.status for r in report.results),
        notes=tuple(notes),
        totals=report.summary(),
        right=frozenset({2, 4}),
    )


def _result_text(result: FileResult) -> tuple[str, str]:
    """A result as a progress line and, for a failure, the stderr tail to show under it."""
    if result.status == "skipped":
        return f"{result.name}: skipped (its outputs are already there)", ""
    if result.status == "failed":
        return f"{result.name}: FAILED ({failure_reason(result)})", result.stderr_tail.strip()
    seconds = f"{result.seconds:.1f} s" if result.seconds is not None else "-"
    outputs = ", ".join(p.name for p in result.outputs)
    return f"{result.name}: succeeded -> {outputs} ({seconds})", ""


# ----------------------------------------------------------------------------------------------------
# The displays
# ----------------------------------------------------------------------------------------------------


class ProgressDisplay(MapObserver):
    """What the three displays share: a `aiobatch.MapObserver` that keeps a `ProgressState` and draws it.

    The observer's calls keep the counts; ``show_*`` draw what a caller words itself (a stage, a result, the
    summary) -- `MapObserver.stage`, `MapObserver.result` and `MapObserver.finished` come through them in the
    words of inputs and outputs. A display is a context manager: leaving it (also on an error) calls `close`.

    Args:
        task_label: what the task bar is called (``"tasks"``).
        download_label: what the downloads are called (``"outputs"``).
    """

    def __init__(self, *, task_label: str = "tasks", download_label: str = "outputs") -> None:
        self.state = ProgressState()
        self.task_label = task_label
        self.download_label = download_label

    # -- what a caller words -------------------------------------------------------------------------

    def show_stage(self, text: str) -> None:
        """A stage begins; *text* says which."""
        self.state.stage = text

    def show_done(self, name: str, status: Status, text: str | None, *, detail: str = "") -> None:
        """An input's result is final: *text* is its line (``None``: none), *detail* lines to show under it."""
        self.state.done[name] = status

    def show_summary(self, summary: Summary) -> None:
        """The run is over: draw its summary table."""

    def close(self) -> None:
        """Stop drawing (also after an error or Ctrl-C); safe to call twice."""

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the observer ----------------------------------------------------------------------------------

    def stage(self, kind: StageKind, text: str, count: int) -> None:  # noqa: D102 (see MapObserver)
        self.show_stage(text)

    def upload_started(self, files: int, total_bytes: int) -> None:  # noqa: D102
        self.state.upload_total = total_bytes

    def upload_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        added, _ = self.state.transfer("up", progress)
        self.state.uploaded += added

    def pool_status(self, status: PoolStatus) -> None:  # noqa: D102
        self.state.pool = status

    def tasks_submitted(self, names_by_task: dict[str, str]) -> None:  # noqa: D102
        self.state.names_by_task.update(names_by_task)

    def task_event(self, event: TaskEvent, name: str) -> None:  # noqa: D102
        if event.kind == "running":
            self.state.running.add(event.task_id)
        else:
            self.state.running.discard(event.task_id)

    def download_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        added, _ = self.state.transfer("down", progress)
        self.state.downloaded += added

    def result(self, result: FileResult) -> None:  # noqa: D102
        text, detail = _result_text(result)
        self.show_done(result.name, result.status, text, detail=detail)

    def finished(self, report: MapReport) -> None:  # noqa: D102
        self.show_summary(map_summary(report))


class PlainProgress(ProgressDisplay):
    """Readable lines, one per notable event, with a timestamp, and the summary as text: for logs, pipes and CI.

    Args:
        stream: where to write (standard output by default).
        task_label: what the tasks are called.
        download_label: what the downloads are called.
    """

    def __init__(
        self, stream: IO[str] | None = None, *, task_label: str = "tasks", download_label: str = "outputs"
    ) -> None:
        super().__init__(task_label=task_label, download_label=download_label)
        self.stream = stream or sys.stdout
        self._started = time.monotonic()
        self._last_pool = ""

    def _line(self, text: str) -> None:
        self.stream.write(f"[{time.monotonic() - self._started:6.1f}s] {text}\n")
        self.stream.flush()

    def show_stage(self, text: str) -> None:  # noqa: D102 (see ProgressDisplay)
        super().show_stage(text)
        self._line(text)

    def show_done(self, name: str, status: Status, text: str | None, *, detail: str = "") -> None:  # noqa: D102
        super().show_done(name, status, text, detail=detail)
        if text is None:
            return
        counts = f" {self.state.counts_text()}" if status != "skipped" else ""
        below = "".join(f"\n      {line}" for line in detail.splitlines())
        self._line(f"  {text}{counts}{below}")

    def show_summary(self, summary: Summary) -> None:  # noqa: D102
        self.stream.write("\n" + summary.format() + "\n")
        self.stream.flush()

    def upload_progress(self, progress: TransferProgress) -> None:  # noqa: D102 (see MapObserver)
        added, finished = self.state.transfer("up", progress)
        self.state.uploaded += added
        if finished:
            what = "already uploaded" if progress.skipped else f"uploaded ({format_size(progress.total)})"
            self._line(f"  {progress.name}: {what}")

    def pool_status(self, status: PoolStatus) -> None:  # noqa: D102
        super().pool_status(status)
        text = f"pool {status.id}: allocation {status.allocation_state}, {self.state.pool_text()}"
        if text != self._last_pool:  # the pool is polled every second: a line only when something changed
            self._last_pool = text
            self._line(f"  {text}")

    def task_event(self, event: TaskEvent, name: str) -> None:  # noqa: D102
        super().task_event(event, name)
        if event.kind == "running":
            self._line(f"  {name}: running on {event.node_id or 'a node'}")


class RichProgress(ProgressDisplay):
    """Live rich progress bars (upload, pool nodes, tasks, downloads), failures as they come, a summary table.

    Args:
        console: a ``rich.console.Console``; one on standard output by default.
        task_label: what the task bar is called.
        download_label: what the downloads are called.
    """

    def __init__(self, console: Any = None, *, task_label: str = "tasks", download_label: str = "outputs") -> None:
        super().__init__(task_label=task_label, download_label=download_label)
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console or Console(log_path=False)
        self._bytes = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<12}"),
            BarColumn(),
            DownloadColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._counts = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._live = Live(Group(self._bytes, self._counts), console=self.console, refresh_per_second=8)
        self._live.start()
        self._upload: Any = None
        self._pool: Any = None
        self._tasks: Any = None
        self._download: Any = None

    def show_stage(self, text: str) -> None:  # noqa: D102 (see ProgressDisplay)
        super().show_stage(text)
        self.console.log(text, markup=False, highlight=False)

    def show_done(self, name: str, status: Status, text: str | None, *, detail: str = "") -> None:  # noqa: D102
        super().show_done(name, status, text, detail=detail)
        if status == "failed" and text is not None:
            self.console.log(text, style="red", markup=False, highlight=False)
        self._update_tasks()

    def show_summary(self, summary: Summary) -> None:  # noqa: D102
        from rich.table import Table

        if self._download is not None:  # the outputs' sizes are known only now
            self._bytes.update(self._download, total=self.state.downloaded, completed=self.state.downloaded)
        self.close()
        table = Table(title=summary.title, title_justify="left")
        for i, name in enumerate(summary.columns):
            table.add_column(name, justify="right" if i in summary.right else "left")
        for row, status in zip(summary.rows, summary.statuses, strict=True):
            table.add_row(*row, style={"failed": "red", "skipped": "dim"}.get(status))
        self.console.print(table)
        for heading, text in summary.notes:
            self.console.print(heading, style="bold", markup=False, highlight=False)
            self.console.print(text, style="red", markup=False, highlight=False)
        self.console.print(summary.totals, markup=False, highlight=False)

    def close(self) -> None:  # noqa: D102
        self._live.stop()

    def upload_started(self, files: int, total_bytes: int) -> None:  # noqa: D102 (see MapObserver)
        super().upload_started(files, total_bytes)
        self._upload = self._bytes.add_task(f"upload {files}", total=total_bytes)

    def upload_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        super().upload_progress(progress)
        if self._upload is not None:
            self._bytes.update(self._upload, completed=self.state.uploaded)

    def pool_status(self, status: PoolStatus) -> None:  # noqa: D102
        super().pool_status(status)
        detail = f"{status.allocation_state}; " + self.state.pool_text()
        if self._pool is None:
            self._pool = self._counts.add_task("pool nodes", total=status.target_nodes or None, detail=detail)
        self._counts.update(self._pool, completed=status.usable_nodes, total=status.target_nodes, detail=detail)

    def tasks_submitted(self, names_by_task: dict[str, str]) -> None:  # noqa: D102
        super().tasks_submitted(names_by_task)
        total = len(self.state.names_by_task)
        self._tasks = self._counts.add_task(self.task_label, total=total, detail="queued")
        self._download = self._bytes.add_task("download", total=None)

    def _update_tasks(self) -> None:
        if self._tasks is None:
            return
        detail = f"{len(self.state.running)} running, {self.state.failed} failed"
        self._counts.update(self._tasks, completed=self.state.finished, detail=detail)

    def task_event(self, event: TaskEvent, name: str) -> None:  # noqa: D102
        super().task_event(event, name)
        self._update_tasks()

    def download_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        super().download_progress(progress)
        if self._download is not None:
            self._bytes.update(self._download, completed=self.state.downloaded)


class NotebookProgress(ProgressDisplay):
    """One live display in a Jupyter notebook (updated in place) and an HTML summary table at the end.

    It needs IPython (any Jupyter kernel has it); updates are throttled to a few per second.

    Args:
        refresh: the fewest seconds between two updates of the display.
        task_label: what the tasks are called.
        download_label: what the downloads are called.
    """

    def __init__(self, *, refresh: float = 0.25, task_label: str = "tasks", download_label: str = "outputs") -> None:
        super().__init__(task_label=task_label, download_label=download_label)
        ipd = importlib.import_module("IPython.display")
        self._html: Any = ipd.HTML
        self._display: Any = ipd.display
        self._refresh = refresh
        self._drawn = 0.0
        self._started = time.monotonic()
        self._handle: Any = self._display(self._html(self._render()), display_id=True)

    def _render(self) -> str:
        s = self.state
        lines = [
            f"<b>{html.escape(s.stage or 'starting')}</b> ({time.monotonic() - self._started:.0f} s)",
            f"upload: {format_size(s.uploaded)} of {format_size(s.upload_total)}",
            f"pool: {html.escape(s.pool_text())}",
            f"{html.escape(self.task_label)}: {s.finished} of {len(s.names_by_task)} done, {len(s.running)} running, "
            f"{s.failed} failed",
            f"{html.escape(self.download_label)} downloaded: {format_size(s.downloaded)}",
        ]
        return "<div style='font-family: monospace'>" + "<br>".join(lines) + "</div>"

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._drawn >= self._refresh:
            self._drawn = now
            if self._handle is not None:
                self._handle.update(self._html(self._render()))

    def show_stage(self, text: str) -> None:  # noqa: D102 (see ProgressDisplay)
        super().show_stage(text)
        self._draw(force=True)

    def show_done(self, name: str, status: Status, text: str | None, *, detail: str = "") -> None:  # noqa: D102
        super().show_done(name, status, text, detail=detail)
        self._draw()

    def show_summary(self, summary: Summary) -> None:  # noqa: D102
        self.state.stage = "done"
        self._draw(force=True)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in summary.columns)
        body = ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in summary.rows]
        for heading, text in summary.notes:
            note = f"{html.escape(heading)}<pre>{html.escape(text)}</pre>"
            body.append(f"<tr><td colspan={len(summary.columns)}>{note}</td></tr>")
        table = f"<table><tr>{head}</tr>{''.join(body)}</table><p>{html.escape(summary.totals)}</p>"
        self._display(self._html(table))

    def upload_started(self, files: int, total_bytes: int) -> None:  # noqa: D102 (see MapObserver)
        super().upload_started(files, total_bytes)
        self._draw()

    def upload_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        super().upload_progress(progress)
        self._draw()

    def pool_status(self, status: PoolStatus) -> None:  # noqa: D102
        super().pool_status(status)
        self._draw()

    def tasks_submitted(self, names_by_task: dict[str, str]) -> None:  # noqa: D102
        super().tasks_submitted(names_by_task)
        self._draw()

    def task_event(self, event: TaskEvent, name: str) -> None:  # noqa: D102
        super().task_event(event, name)
        self._draw()

    def download_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        super().download_progress(progress)
        self._draw()


# ----------------------------------------------------------------------------------------------------
# Choosing one
# ----------------------------------------------------------------------------------------------------


def _plain_wanted(stream: IO[str]) -> bool:
    """Whether progress on *stream* should be plain lines: CI, a dumb terminal, or not a terminal at all."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        return True
    if os.environ.get("TERM") == "dumb":
        return True
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def use_rich(stream: IO[str], plain: bool | None = None) -> bool:
    """Whether `auto_observer` draws rich bars on *stream*: a terminal, not CI, rich installed, *plain* not set.

    Args:
        stream: where progress goes.
        plain: ``True`` forces plain lines, ``False`` rich (when installed); ``None`` decides as above.

    Example:
        >>> import io
        >>> use_rich(io.StringIO())  # not a terminal
        False
    """
    if plain is None:
        plain = _plain_wanted(stream)
    return not plain and importlib.util.find_spec("rich") is not None


def auto_observer(
    stream: IO[str] | None = None,
    *,
    plain: bool | None = None,
    task_label: str = "tasks",
    download_label: str = "outputs",
) -> ProgressDisplay:
    """Rich progress bars on a terminal; plain lines when *stream* is not one, in CI (``CI`` set), or without rich.

    Args:
        stream: where progress goes (standard output by default).
        plain: force plain lines (``True``) or rich (``False``); by default decided as above (`use_rich`).
        task_label: what the tasks are called.
        download_label: what the downloads are called.

    Returns:
        A display to pass as ``observer=``; close it when done (``with`` does), also after an error.

    Example:
        >>> import io
        >>> type(auto_observer(io.StringIO())).__name__
        'PlainProgress'
    """
    stream = stream or sys.stdout
    if use_rich(stream, plain):
        from rich.console import Console

        return RichProgress(Console(file=stream, log_path=False), task_label=task_label, download_label=download_label)
    return PlainProgress(stream, task_label=task_label, download_label=download_label)
