"""aiobatch.progress for any map_files run: plain lines in a pipe and in CI, rich bars on a terminal, one summary.

The run is a word count (not the GIF pipeline) against the emulator and Azurite, with a good input, a failing
one and one whose output is already there; the displays hear it through the `MapObserver` hook.
"""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from aiobatch import FileResult, MapObserver, MapReport, PoolSpec
from aiobatch._azurite import AzuriteServer
from aiobatch.emulator import Emulator
from aiobatch.progress import (
    PlainProgress,
    ProgressDisplay,
    RichProgress,
    auto_observer,
    map_summary,
)

from .test_client import make_client

pytestmark = pytest.mark.anyio

COMMAND = "if grep -q FAIL {input}; then echo 'cannot count' {name} >&2; exit 3; fi; wc -w < {input} > {output}"
#: A timestamped event line, as PlainProgress writes them.
EVENT = re.compile(r"^\[\s*\d+\.\d+s\] ")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Tee(MapObserver):
    """Hands every call to several displays, so one run drives them all."""

    def __init__(self, *displays: ProgressDisplay) -> None:
        self.displays = displays

    def __getattribute__(self, name: str) -> object:
        if name.startswith("_") or name == "displays":
            return object.__getattribute__(self, name)

        def each(*args: object) -> None:
            for display in object.__getattribute__(self, "displays"):
                getattr(display, name)(*args)

        return each


async def word_count(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path, observer: MapObserver
) -> MapReport:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a b.txt").write_text("one two three")
    (folder / "bad.txt").write_text("FAIL")
    (folder / "done.txt").write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "done.n").write_text("1")
    tag = uuid.uuid4().hex[:8]
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        return await client.map_files(
            folder,
            COMMAND,
            "{stem}.n",
            pool=PoolSpec.ubuntu_24_04("words", dedicated_nodes=1, task_slots_per_node=4),
            output_dir=out,
            input_container=f"in-{tag}",
            output_container=f"out-{tag}",
            poll_interval=0.05,
            observer=observer,
        )


async def test_plain_and_rich_displays_follow_a_word_count(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    pipe = io.StringIO()
    plain = auto_observer(pipe)  # not a terminal: plain lines
    terminal = io.StringIO()
    rich = RichProgress(Console(file=terminal, force_terminal=True, width=120, log_path=False))
    with plain, rich:
        report = await word_count(batch_emulator, azurite, tmp_path, Tee(plain, rich))
    assert isinstance(plain, PlainProgress)
    assert (report.succeeded, report.failed, report.skipped) == (1, 1, 1)

    text = pipe.getvalue()
    events, _, summary = text.partition("\n\n")
    lines = events.splitlines()
    assert "\x1b" not in text and "━" not in text  # no colour, no bars
    # One timestamped line per event; a failure's stderr tail is indented under its line.
    assert all(EVENT.match(line) or line.startswith("      ") for line in lines), lines
    assert any(re.search(r"\] uploading 2 files to container 'in-", line) for line in lines), lines
    assert any("a b.txt: uploaded (" in line for line in lines)
    assert any("pool words: allocation steady, 1 of 1 nodes usable" in line for line in lines), lines
    assert any(re.search(r"\] adding 2 tasks to job ", line) for line in lines), lines
    assert any("a b.txt: running on " in line for line in lines), lines
    assert any("done.txt: skipped (its outputs are already there)" in line for line in lines)
    assert any(re.search(r"a b\.txt: succeeded -> a b\.n \([\d.]+ s\) \[\d/2 done", line) for line in lines)
    failed = next(i for i, line in enumerate(lines) if "bad.txt: FAILED (exit code 3)" in line)
    assert lines[failed + 1] == "      cannot count bad.txt"
    # The summary table: one row per input in the order given, the stderr tail under it, the totals.
    rows = summary.strip().splitlines()
    assert rows[0].split() == ["input", "status", "exit", "node", "seconds", "outputs", "/", "error"]
    assert rows[1].split()[:4] == ["a", "b.txt", "succeeded", "0"] and rows[1].endswith("a b.n")
    assert rows[2].split()[:3] == ["bad.txt", "failed", "3"] and rows[2].endswith("exit code 3")
    assert rows[3].split()[:2] == ["done.txt", "skipped"]
    assert rows[4:6] == ["bad.txt: stderr:", "    cannot count bad.txt"]
    assert rows[-1] == report.summary() and rows[-1].startswith("1 succeeded, 1 failed, 1 skipped in ")

    drawn = terminal.getvalue()
    assert "\x1b[" in drawn  # a terminal: drawn with colours
    assert f"run {report.run_id}" in drawn and "outputs / error" in drawn
    assert "bad.txt: FAILED (exit code 3)" in drawn and "cannot count bad.txt" in drawn
    assert "tasks" in drawn and "pool nodes" in drawn and "upload 2" in drawn
    assert report.summary() in drawn


def test_auto_observer_is_quiet_in_a_pipe_and_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    assert isinstance(auto_observer(io.StringIO()), PlainProgress)  # a pipe
    monkeypatch.setenv("CI", "true")
    assert isinstance(auto_observer(Tty()), PlainProgress)  # CI, even on a terminal
    monkeypatch.setenv("CI", "0")
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(auto_observer(Tty()), PlainProgress)
    monkeypatch.delenv("TERM")
    assert isinstance(auto_observer(Tty(), plain=True), PlainProgress)
    with auto_observer(Tty()) as display:
        assert isinstance(display, RichProgress)


def test_the_summary_of_a_report() -> None:
    ok = FileResult("a.txt", Path("a.txt"), "succeeded", outputs=(Path("out/a.n"), Path("out/x/a.log")), exit_code=0)
    bad = FileResult("b.txt", Path("b.txt"), "failed", error="not submitted: nope", stderr_tail="line 1\nline 2")
    summary = map_summary(MapReport((ok, bad), "run-1", "job", "pool", 2.0))
    assert summary.title == "run run-1"
    assert summary.rows[0] == ("a.txt", "succeeded", "0", "-", "-", "a.n, a.log")
    assert summary.rows[1][:2] == ("b.txt", "failed") and summary.rows[1][-1] == "not submitted: nope"
    assert summary.statuses == ("succeeded", "failed")
    text = summary.format().splitlines()
    assert text[3:5] == ["b.txt: stderr:", "    line 1"] and text[-1].startswith("1 succeeded, 1 failed, 0 skipped")
