"""aiobatch.demo.gifs and aiobatch.demo.progress without services: names, plans, command lines, reports."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import pytest

from aiobatch import AppPackageRef, ConfigurationError
from aiobatch.demo.gifs import (
    ConversionReport,
    GifSettings,
    VideoResult,
    find_videos,
    gif_command_line,
    gif_name_for,
    gif_pool_spec,
    plan_conversions,
)
from aiobatch.demo.progress import PlainReporter, auto_reporter, format_size, format_summary


@pytest.mark.parametrize(
    ("video", "gif"),
    [
        ("cat.mp4", "cat.gif"),
        ("Mr. Whiskers (2).MP4", "Mr. Whiskers (2).gif"),
        ("a.b.mp4", "a.b.gif"),
        ("猫 🐈.mp4", "猫 🐈.gif"),
        (".mp4", ".mp4.gif"),
    ],
)
def test_gif_names(video: str, gif: str) -> None:
    assert gif_name_for(video) == gif


def test_find_videos_takes_mp4s_only(tmp_path: Path) -> None:
    for name in ("b.mp4", "A.MP4", "notes.txt", "c.mov"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.mp4").mkdir()
    assert [p.name for p in find_videos(tmp_path)] == ["A.MP4", "b.mp4"]
    with pytest.raises(ConfigurationError, match="does not exist"):
        find_videos(tmp_path / "missing")


def test_plan_skips_gifs_that_are_there_and_refuses_clashes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "done.gif").write_bytes(b"GIF89a...")
    (out / "empty.gif").write_bytes(b"")  # not a finished GIF
    videos = [tmp_path / n for n in ("done.mp4", "empty.mp4", "new.mp4")]
    plan = plan_conversions(videos, out)
    assert [p.name for p in plan.present] == ["done.mp4"]
    assert [p.name for p in plan.todo] == ["empty.mp4", "new.mp4"]
    with pytest.raises(ConfigurationError, match="would both become"):
        plan_conversions([tmp_path / "a.mp4", tmp_path / "a.MP4"], out)


def test_filter_graph_scales_before_the_palette() -> None:
    graph = GifSettings(fps=12, width=480).filter_graph()
    assert graph.index("fps=12") < graph.index("scale=") < graph.index("split") < graph.index("palettegen")
    assert "flags=lanczos" in graph and "paletteuse" in graph
    with pytest.raises(ConfigurationError):
        GifSettings(width=4)


def test_command_lines_for_both_oses() -> None:
    app = AppPackageRef("ffmpeg", "9.0.2")
    linux = gif_command_line(app, GifSettings())
    program, script = shlex.split(linux)[:2], shlex.split(linux)[2]
    assert program == ["/bin/bash", "-c"]
    assert shlex.split(script)[0] == "${AZ_BATCH_APP_PACKAGE_ffmpeg_9_0_2}/ffmpeg"
    assert shlex.split(script)[-3:] == ["-loop", "0", "output.gif"]
    windows = gif_command_line(app, GifSettings(), os="windows")
    assert windows.startswith('cmd /c ^"%AZ_BATCH_APP_PACKAGE_FFMPEG#9.0.2%\\ffmpeg.exe^" ')
    spec = gif_pool_spec("p", app=app, os="windows")
    assert spec.os == "windows" and spec.node_agent_sku_id == "batch.node.windows amd64"
    assert spec.application_packages == (app,)


def report() -> ConversionReport:
    return ConversionReport(
        (
            VideoResult("cat.mp4", "cat.gif", "converted", 12_345, 2.25, "tvmps_" + "a" * 60 + "_d", "t1", 0),
            VideoResult(
                "bad.mp4",
                "bad.gif",
                "failed",
                None,
                0.1,
                "node-2",
                "t2",
                1,
                "exit code 1",
                "input.mp4: Invalid data found when processing input",
            ),
            VideoResult("old.mp4", "old.gif", "present", 999),
        ),
        run_id="r1",
        job_id="j",
        pool_id="p",
        elapsed=4.0,
    )


def test_summary_table() -> None:
    text = format_summary(report())
    lines = text.splitlines()
    assert lines[0].split() == ["video", "result", "GIF", "size", "seconds", "node"]
    assert lines[1].startswith("cat.mp4 ") and "12.3 KB" in lines[1] and "2.2" in lines[1]
    assert "FAILED (exit code 1)" in lines[2]
    assert "already there" in lines[3]
    assert "    input.mp4: Invalid data found when processing input" in lines
    assert lines[-1] == "1 converted, 1 already there, 1 failed in 4.0 s"
    assert format_size(999) == "999 B" and format_size(2_000_000) == "2.0 MB"


def test_plain_reporter_writes_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    reporter = auto_reporter(stream)  # not a terminal: plain lines
    assert isinstance(reporter, PlainReporter)
    reporter.stage_line("uploading 1 video")
    for result in report().results:
        reporter.video_done(result)
    reporter.conversion_finished(report())
    out = stream.getvalue()
    assert "uploading 1 video\n" in out and "cat.mp4: converted -> cat.gif" in out
    assert "bad.mp4: FAILED (exit code 1)" in out and "Invalid data" in out


def test_ci_forces_plain_lines_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("CI", "true")
    assert isinstance(auto_reporter(Tty()), PlainReporter)
    monkeypatch.delenv("CI")
    monkeypatch.delenv("TERM", raising=False)
    rich = auto_reporter(Tty())
    assert not isinstance(rich, PlainReporter)
    rich.close()
