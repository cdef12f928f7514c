"""Progress people can see: rich bars in a terminal, plain lines elsewhere (and in CI), a live notebook display.

Each is a `aiobatch.demo.gifs.Reporter`; `auto_reporter` picks one for a stream. All three share `ProgressState`,
which turns the pipeline's callbacks into counts (bytes up and down, node states, tasks running, done and
failed), so they differ only in how they draw it. The summary table -- video, result, GIF size, seconds,
node, and for a failure its exit code and the tail of ffmpeg's stderr -- is `summary_rows`, drawn by
`format_summary` (plain text), `RichReporter` (a rich table) or `NotebookReporter` (HTML).

rich is optional (``pip install 'aiobatch[demo]'``); without it `auto_reporter` falls back to plain lines.
"""

from __future__ import annotations

import html
import importlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from .._pools import PoolStatus
from .._storage import TransferProgress
from .._watch import TaskEvent
from .gifs import ConversionReport, Reporter, VideoResult

__all__ = [
    "NotebookReporter",
    "PlainReporter",
    "ProgressState",
    "RichReporter",
    "auto_reporter",
    "format_size",
    "format_summary",
    "summary_rows",
]

_RESULT_TEXT = {"converted": "converted", "failed": "FAILED", "present": "already there"}


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


@dataclass
class ProgressState:
    """Counts built from the pipeline's callbacks, for any display to draw.

    Attributes:
        stage: the current stage's text.
        upload_total: bytes to upload.
        uploaded: bytes uploaded (or found already there) so far.
        pool: the pool's last status.
        videos_by_task: task id -> video file name.
        running: task ids running now.
        done: results so far, by video.
        downloaded: bytes of GIFs downloaded so far.
    """

    stage: str = ""
    upload_total: int = 0
    uploaded: int = 0
    pool: PoolStatus | None = None
    videos_by_task: dict[str, str] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    done: dict[str, VideoResult] = field(default_factory=dict)
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
    def failed(self) -> int:
        """Videos that failed."""
        return sum(1 for r in self.done.values() if r.outcome == "failed")

    @property
    def converted(self) -> int:
        """Videos converted in this run."""
        return sum(1 for r in self.done.values() if r.outcome == "converted")

    def pool_text(self) -> str:
        """The pool's nodes in one line, e.g. ``"2 of 3 nodes usable (1 starting, 2 idle)"``."""
        if self.pool is None:
            return "waiting for the pool"
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.pool.node_states.items())) or "no nodes yet"
        return f"{self.pool.usable_nodes} of {self.pool.target_nodes} nodes usable ({states})"


def _short(node_id: str | None, width: int = 24) -> str:
    """A node id fit for a table: Batch's are ~70 characters; keep the start and the distinctive end."""
    if not node_id:
        return "-"
    if len(node_id) <= width:
        return node_id
    keep = (width - 1) // 2
    return node_id[:keep] + "…" + node_id[-keep:]


def summary_rows(report: ConversionReport) -> list[tuple[str, str, str, str, str]]:
    """The summary table's rows: video, result, GIF size, seconds, node.

    Example:
        >>> from aiobatch.demo.gifs import ConversionReport, VideoResult
        >>> r = ConversionReport((VideoResult("a.mp4", "a.gif", "converted", 1200, 2.5, "node-1"),), "run", "j", "p", 3)
        >>> summary_rows(r)
        [('a.mp4', 'converted', '1.2 KB', '2.5', 'node-1')]
    """
    rows = []
    for r in report.results:
        result = _RESULT_TEXT[r.outcome]
        if r.outcome == "failed" and r.error:
            result = f"FAILED ({r.error})"
        seconds = f"{r.seconds:.1f}" if r.seconds is not None else "-"
        rows.append((r.video, result, format_size(r.gif_size), seconds, _short(r.node_id)))
    return rows


def _totals(report: ConversionReport) -> str:
    parts = [f"{report.count('converted')} converted"]
    if report.count("present"):
        parts.append(f"{report.count('present')} already there")
    parts.append(f"{report.count('failed')} failed")
    return ", ".join(parts) + f" in {report.elapsed:.1f} s"


def format_summary(report: ConversionReport) -> str:
    """The summary as a plain-text table, failures' stderr tails under it, and the totals.

    Example:
        >>> from aiobatch.demo.gifs import ConversionReport, VideoResult
        >>> r = ConversionReport((VideoResult("a.mp4", "a.gif", "converted", 1200, 2.5, "node-1"),), "run", "j", "p", 3)
        >>> print(format_summary(r).splitlines()[0])
        video  result     GIF size  seconds  node
    """
    header = ("video", "result", "GIF size", "seconds", "node")
    rows = summary_rows(report)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [header, *rows]]
    for r in report.results:
        if r.outcome == "failed" and r.stderr_tail:
            lines.append(f"{r.video}: ffmpeg said:")
            lines.extend(f"    {line}" for line in r.stderr_tail.splitlines())
    lines.append(_totals(report))
    return "\n".join(lines)


class PlainReporter(Reporter):
    """Readable lines, one per notable event, with a timestamp: for logs, pipes and CI.

    Args:
        stream: where to write (standard output by default).
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.state = ProgressState()
        self._started = time.monotonic()
        self._last_pool = ""

    def _line(self, text: str) -> None:
        self.stream.write(f"[{time.monotonic() - self._started:6.1f}s] {text}\n")
        self.stream.flush()

    def stage(self, text: str) -> None:  # noqa: D102 (see Reporter)
        self.state.stage = text
        self._line(text)

    def upload_started(self, files: int, total_bytes: int) -> None:  # noqa: D102
        self.state.upload_total = total_bytes

    def upload_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        added, finished = self.state.transfer("up", progress)
        self.state.uploaded += added
        if finished:
            what = "already uploaded" if progress.skipped else f"uploaded ({format_size(progress.total)})"
            self._line(f"  {progress.name}: {what}")

    def pool_status(self, status: PoolStatus) -> None:  # noqa: D102
        self.state.pool = status
        text = f"pool {status.id}: allocation {status.allocation_state}, {self.state.pool_text()}"
        if text != self._last_pool:
            self._last_pool = text
            self._line(f"  {text}")

    def tasks_submitted(self, videos_by_task: dict[str, str]) -> None:  # noqa: D102
        self.state.videos_by_task.update(videos_by_task)

    def _counts(self) -> str:
        total = len(self.state.videos_by_task)
        finished = sum(1 for r in self.state.done.values() if r.task_id is not None)
        return f"[{finished}/{total} done, {self.state.failed} failed, {len(self.state.running)} running]"

    def task_event(self, event: TaskEvent, video: str) -> None:  # noqa: D102
        if event.kind == "running":
            self.state.running.add(event.task_id)
            self._line(f"  {video}: running on {event.node_id or 'a node'}")
        else:
            self.state.running.discard(event.task_id)

    def download_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        added, _ = self.state.transfer("down", progress)
        self.state.downloaded += added

    def video_done(self, result: VideoResult) -> None:  # noqa: D102
        self.state.done[result.video] = result
        if result.outcome == "present":
            return
        if result.outcome == "converted":
            seconds = f"{result.seconds:.1f} s" if result.seconds is not None else "-"
            text = f"  {result.video}: converted -> {result.gif} ({format_size(result.gif_size)}, {seconds})"
        else:
            text = f"  {result.video}: FAILED ({result.error})"
            if result.stderr_tail:
                text += "\n" + "\n".join(f"      {line}" for line in result.stderr_tail.splitlines())
        self._line(f"{text} {self._counts()}")

    def finished(self, report: ConversionReport) -> None:  # noqa: D102
        self.stream.write("\n" + format_summary(report) + "\n")
        self.stream.flush()


class RichReporter(Reporter):
    """Live rich progress bars (upload, pool nodes, conversions, downloads) and a summary table.

    Args:
        console: a ``rich.console.Console``; one on standard output by default.
    """

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
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
        self.state = ProgressState()
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
        from rich.console import Group
        from rich.live import Live

        self._live = Live(Group(self._bytes, self._counts), console=self.console, refresh_per_second=8)
        self._live.start()
        self._upload: Any = None
        self._pool: Any = None
        self._tasks: Any = None
        self._download: Any = None

    def stage(self, text: str) -> None:  # noqa: D102 (see Reporter)
        self.state.stage = text
        self.console.log(text)

    def upload_started(self, files: int, total_bytes: int) -> None:  # noqa: D102
        self.state.upload_total = total_bytes
        self._upload = self._bytes.add_task(f"upload {files}", total=total_bytes)

    def upload_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        added, _ = self.state.transfer("up", progress)
        self.state.uploaded += added
        if self._upload is not None:
            self._bytes.update(self._upload, completed=self.state.uploaded)

    def pool_status(self, status: PoolStatus) -> None:  # noqa: D102
        self.state.pool = status
        detail = f"{status.allocation_state}; " + self.state.pool_text()
        if self._pool is None:
            self._pool = self._counts.add_task("pool nodes", total=status.target_nodes or None, detail=detail)
        self._counts.update(self._pool, completed=status.usable_nodes, total=status.target_nodes, detail=detail)

    def tasks_submitted(self, videos_by_task: dict[str, str]) -> None:  # noqa: D102
        self.state.videos_by_task.update(videos_by_task)
        total = len(self.state.videos_by_task)
        self._tasks = self._counts.add_task("convert", total=total, detail="queued")
        self._download = self._bytes.add_task("download", total=None)

    def _update_tasks(self) -> None:
        if self._tasks is None:
            return
        finished = sum(1 for r in self.state.done.values() if r.task_id is not None)
        detail = f"{len(self.state.running)} running, {self.state.failed} failed"
        self._counts.update(self._tasks, completed=finished, detail=detail)

    def task_event(self, event: TaskEvent, video: str) -> None:  # noqa: D102
        if event.kind == "running":
            self.state.running.add(event.task_id)
        else:
            self.state.running.discard(event.task_id)
        self._update_tasks()

    def download_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        added, _ = self.state.transfer("down", progress)
        self.state.downloaded += added
        if self._download is not None:
            self._bytes.update(self._download, completed=self.state.downloaded)

    def video_done(self, result: VideoResult) -> None:  # noqa: D102
        self.state.done[result.video] = result
        if result.outcome == "failed":
            self.console.log(f"[red]{result.video}: FAILED ({result.error})[/red]", markup=True, highlight=False)
        self._update_tasks()

    def finished(self, report: ConversionReport) -> None:  # noqa: D102
        from rich.table import Table

        if self._download is not None:  # GIF sizes are known only now
            self._bytes.update(self._download, total=self.state.downloaded, completed=self.state.downloaded)
        self.close()
        table = Table(title=f"run {report.run_id}", title_justify="left")
        for name, justify in (("video", "left"), ("result", "left"), ("GIF size", "right"), ("seconds", "right")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        table.add_column("node")
        for row, result in zip(summary_rows(report), report.results, strict=True):
            style = {"failed": "red", "present": "dim"}.get(result.outcome)
            table.add_row(*row, style=style)
        self.console.print(table)
        for r in report.results:
            if r.outcome == "failed" and r.stderr_tail:
                self.console.print(f"[bold]{r.video}[/bold]: ffmpeg said:", highlight=False)
                self.console.print(r.stderr_tail, style="red", markup=False, highlight=False)
        self.console.print(_totals(report), highlight=False)

    def close(self) -> None:  # noqa: D102
        self._live.stop()


class NotebookReporter(Reporter):
    """One live display in a Jupyter notebook (updated in place) and an HTML summary table at the end.

    It needs IPython (any Jupyter kernel has it); updates are throttled to a few per second.
    """

    def __init__(self, *, refresh: float = 0.25) -> None:
        ipd = importlib.import_module("IPython.display")
        self._html: Any = ipd.HTML
        self._display: Any = ipd.display
        self.state = ProgressState()
        self._refresh = refresh
        self._drawn = 0.0
        self._started = time.monotonic()
        self._handle: Any = self._display(self._html(self._render()), display_id=True)

    def _render(self) -> str:
        s = self.state
        total = len(s.videos_by_task)
        finished = sum(1 for r in s.done.values() if r.task_id is not None)
        lines = [
            f"<b>{html.escape(s.stage or 'starting')}</b> ({time.monotonic() - self._started:.0f} s)",
            f"upload: {format_size(s.uploaded)} of {format_size(s.upload_total)}",
            f"pool: {html.escape(s.pool_text())}",
            f"tasks: {finished} of {total} done, {len(s.running)} running, {s.failed} failed",
            f"GIFs downloaded: {format_size(s.downloaded)}",
        ]
        return "<div style='font-family: monospace'>" + "<br>".join(lines) + "</div>"

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._drawn >= self._refresh:
            self._drawn = now
            if self._handle is not None:
                self._handle.update(self._html(self._render()))

    def stage(self, text: str) -> None:  # noqa: D102 (see Reporter)
        self.state.stage = text
        self._draw(force=True)

    def upload_started(self, files: int, total_bytes: int) -> None:  # noqa: D102
        self.state.upload_total = total_bytes
        self._draw()

    def upload_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        self.state.uploaded += self.state.transfer("up", progress)[0]
        self._draw()

    def pool_status(self, status: PoolStatus) -> None:  # noqa: D102
        self.state.pool = status
        self._draw()

    def tasks_submitted(self, videos_by_task: dict[str, str]) -> None:  # noqa: D102
        self.state.videos_by_task.update(videos_by_task)
        self._draw()

    def task_event(self, event: TaskEvent, video: str) -> None:  # noqa: D102
        (self.state.running.add if event.kind == "running" else self.state.running.discard)(event.task_id)
        self._draw()

    def download_progress(self, progress: TransferProgress) -> None:  # noqa: D102
        self.state.downloaded += self.state.transfer("down", progress)[0]
        self._draw()

    def video_done(self, result: VideoResult) -> None:  # noqa: D102
        self.state.done[result.video] = result
        self._draw()

    def finished(self, report: ConversionReport) -> None:  # noqa: D102
        self.state.stage = "done"
        self._draw(force=True)
        head = "".join(f"<th>{h}</th>" for h in ("video", "result", "GIF size", "seconds", "node"))
        body = []
        for row, result in zip(summary_rows(report), report.results, strict=True):
            cells = "".join(f"<td>{html.escape(c)}</td>" for c in row)
            body.append(f"<tr>{cells}</tr>")
            if result.outcome == "failed" and result.stderr_tail:
                body.append(f"<tr><td colspan=5><pre>{html.escape(result.stderr_tail)}</pre></td></tr>")
        table = f"<table><tr>{head}</tr>{''.join(body)}</table><p>{html.escape(_totals(report))}</p>"
        self._display(self._html(table))


def _plain_wanted(stream: IO[str]) -> bool:
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        return True
    if os.environ.get("TERM") == "dumb":
        return True
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def auto_reporter(stream: IO[str] | None = None, *, plain: bool | None = None) -> Reporter:
    """Rich progress bars on a terminal; plain lines when *stream* is not one, in CI (``CI`` set), or without rich.

    Args:
        stream: where progress goes (standard output by default).
        plain: force plain lines (``True``) or rich (``False``); by default decided as above.

    Returns:
        A reporter; call its ``close()`` when done (also after an error).
    """
    stream = stream or sys.stdout
    if plain is None:
        plain = _plain_wanted(stream)
    if not plain:
        try:
            from rich.console import Console
        except ImportError:
            return PlainReporter(stream)
        return RichReporter(Console(file=stream, log_path=False))
    return PlainReporter(stream)
