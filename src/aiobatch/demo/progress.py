"""The pet pipeline's progress, in the words of videos and GIFs, drawn by `aiobatch.progress`'s displays.

Each class here is a `aiobatch.demo.gifs.Reporter` (itself a `aiobatch.MapObserver`) drawn by one of the
general displays -- `PlainReporter` is a `aiobatch.progress.PlainProgress`, `RichReporter` a
`aiobatch.progress.RichProgress`, `NotebookReporter` a `aiobatch.progress.NotebookProgress` -- and
`auto_reporter` picks one for a stream as `aiobatch.progress.auto_observer` does (plain lines in a pipe and
in CI). What is the pipeline's own is the wording: a video's line
(``converted -> NAME.gif (size, seconds)``) and the summary table -- video, result, GIF size, seconds, node, and
for a failure its exit code and the tail of ffmpeg's stderr -- built by `gif_summary` and printed as text by
`format_summary`.

rich is optional (in a checkout: ``python -m pip install -e '.[demo]'``, as the README's "Install in your
project" says); without it `auto_reporter` falls back to plain lines.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from .._mapresults import Status, short_node_id
from ..progress import (
    NotebookProgress,
    PlainProgress,
    ProgressDisplay,
    RichProgress,
    Summary,
    format_size,
    use_rich,
)
from .gifs import ConversionReport, Outcome, Reporter, VideoResult

__all__ = [
    "NotebookReporter",
    "PlainReporter",
    "RichReporter",
    "auto_reporter",
    "format_size",
    "format_summary",
    "gif_summary",
    "summary_rows",
]

_RESULT_TEXT = {"converted": "converted", "failed": "FAILED", "present": "already there"}
#: A video's outcome as the general displays count it.
_STATUS: dict[Outcome, Status] = {"converted": "succeeded", "failed": "failed", "present": "skipped"}
#: The pipeline's words for the tasks and the downloads.
_LABELS = {"task_label": "convert", "download_label": "GIFs"}


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
        rows.append((r.video, result, format_size(r.gif_size), seconds, short_node_id(r.node_id)))
    return rows


def _totals(report: ConversionReport) -> str:
    parts = [f"{report.count('converted')} converted"]
    if report.count("present"):
        parts.append(f"{report.count('present')} already there")
    parts.append(f"{report.count('failed')} failed")
    return ", ".join(parts) + f" in {report.elapsed:.1f} s"


def gif_summary(report: ConversionReport) -> Summary:
    """The pipeline's report as a `aiobatch.progress.Summary`: the rows above, ffmpeg's stderr tails, the totals.

    Example:
        >>> from aiobatch.demo.gifs import ConversionReport, VideoResult
        >>> r = ConversionReport((VideoResult("a.mp4", "a.gif", "present", 1200),), "run", None, "p", 3)
        >>> gif_summary(r).totals
        '0 converted, 1 already there, 0 failed in 3.0 s'
    """
    return Summary(
        title=f"run {report.run_id}",
        columns=("video", "result", "GIF size", "seconds", "node"),
        rows=tuple(summary_rows(report)),
        statuses=tuple(_STATUS[r.outcome] for r in report.results),
        notes=tuple(
            (f"{r.video}: ffmpeg said:", r.stderr_tail)
            for r in report.results
            if r.outcome == "failed" and r.stderr_tail
        ),
        totals=_totals(report),
        right=frozenset({2, 3}),
    )


def format_summary(report: ConversionReport) -> str:
    """The summary as a plain-text table, failures' stderr tails under it, and the totals.

    Example:
        >>> from aiobatch.demo.gifs import ConversionReport, VideoResult
        >>> r = ConversionReport((VideoResult("a.mp4", "a.gif", "converted", 1200, 2.5, "node-1"),), "run", "j", "p", 3)
        >>> print(format_summary(r).splitlines()[0])
        video  result     GIF size  seconds  node
    """
    return gif_summary(report).format()


def _video_line(result: VideoResult) -> tuple[str | None, str]:
    """A video's progress line (none for one whose GIF was there already) and, for a failure, ffmpeg's stderr."""
    if result.outcome == "present":
        return None, ""
    if result.outcome == "converted":
        seconds = f"{result.seconds:.1f} s" if result.seconds is not None else "-"
        return f"{result.video}: converted -> {result.gif} ({format_size(result.gif_size)}, {seconds})", ""
    return f"{result.video}: FAILED ({result.error})", result.stderr_tail


class _GifDisplay(Reporter, ProgressDisplay):
    """A `Reporter` drawn by one of `aiobatch.progress`'s displays: the pipeline's words, the display's drawing.

    The fan-out's hooks that keep counts (bytes, pool nodes, task events) are the display's own; the three the
    pipeline words (`Reporter.stage`, `Reporter.result`, `Reporter.finished`) are `Reporter`'s, which come first.
    """

    def stage_line(self, text: str) -> None:
        self.show_stage(text)

    def video_done(self, result: VideoResult) -> None:
        text, detail = _video_line(result)
        self.show_done(result.video, _STATUS[result.outcome], text, detail=detail)

    def conversion_finished(self, report: ConversionReport) -> None:
        self.show_summary(gif_summary(report))


class PlainReporter(_GifDisplay, PlainProgress):
    """Readable lines, one per notable event, with a timestamp: for logs, pipes and CI.

    Args:
        stream: where to write (standard output by default).
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        PlainProgress.__init__(self, stream, **_LABELS)


class RichReporter(_GifDisplay, RichProgress):
    """Live rich progress bars (upload, pool nodes, conversions, downloads) and a summary table.

    Args:
        console: a ``rich.console.Console``; one on standard output by default.
    """

    def __init__(self, console: Any = None) -> None:
        RichProgress.__init__(self, console, **_LABELS)


class NotebookReporter(_GifDisplay, NotebookProgress):
    """One live display in a Jupyter notebook (updated in place) and an HTML summary table at the end.

    Args:
        refresh: the fewest seconds between two updates of the display.
    """

    def __init__(self, *, refresh: float = 0.25) -> None:
        NotebookProgress.__init__(self, refresh=refresh, **_LABELS)


def auto_reporter(stream: IO[str] | None = None, *, plain: bool | None = None) -> PlainReporter | RichReporter:
    """Rich progress bars on a terminal; plain lines when *stream* is not one, in CI (``CI`` set), or without rich.

    Args:
        stream: where progress goes (standard output by default).
        plain: force plain lines (``True``) or rich (``False``); by default decided as above.

    Returns:
        A reporter; call its ``close()`` when done (also after an error).
    """
    stream = stream or sys.stdout
    if use_rich(stream, plain):
        from rich.console import Console

        return RichReporter(Console(file=stream, log_path=False))
    return PlainReporter(stream)
