"""The pipeline's async code never blocks the event loop, submits the largest video first, and explains failures.

Blocking is caught where it happens rather than timed: the file-system, subprocess and sleep calls that block
(and the ffmpeg helpers, which run ffmpeg or zip it) are wrapped so that a call made on the event loop's own
thread from `aiobatch.demo` or `aiobatch.local` code is recorded -- also through the standard library, e.g. a
sync exit callback. A worker thread (`anyio.to_thread`) is where such calls belong, and is not recorded; nor is
blocking inside a module they await (the emulator, Azurite's launcher), which those modules answer for. Unlike a
slow-callback or ticker check, this cannot flake on a loaded machine, and it names the line at fault.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import pytest

import aiobatch
import aiobatch.demo.gifs
import aiobatch.demo.run
import aiobatch.local
from aiobatch import AppPackageRef, SasPolicy, SubmitResult, TaskSpec
from aiobatch.demo.ffmpeg import ffmpeg_version
from aiobatch.demo.gifs import convert_videos, gif_pool_spec
from aiobatch.local import LocalBatch

from .conftest import Pipeline, make_clips
from .test_convert_pets import assert_gif, assert_nothing_left

pytestmark = pytest.mark.anyio

PACKAGE = os.path.dirname(aiobatch.__file__) + os.sep
WATCHED_FILES = {aiobatch.demo.gifs.__file__, aiobatch.demo.run.__file__, aiobatch.local.__file__}

BLOCKING: list[tuple[object, str]] = [
    (Path, "stat lstat exists is_file is_dir iterdir glob rglob open read_text read_bytes write_text write_bytes"),
    (Path, "mkdir unlink rmdir touch rename replace"),
    (os, "stat listdir scandir walk remove unlink rmdir makedirs"),
    (shutil, "rmtree copyfile copy copy2 copytree move"),
    (subprocess, "run call check_call check_output"),
    (subprocess.Popen, "wait communicate"),
    (time, "sleep"),
    # Each of these runs ffmpeg, reads /proc or zips ~80 MB.
    (aiobatch.local, "ffmpeg_version build_ffmpeg_package"),
    (aiobatch.demo.run, "ffmpeg_version ffmpeg_executable child_processes"),
]


class LoopGuard:
    """Records blocking calls made on the event loop's thread directly from the demo (gifs.py, run.py) or local.py."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for owner, names in BLOCKING:
            for name in names.split():
                monkeypatch.setattr(owner, name, self._guarded(name, getattr(owner, name)))

    def _guarded(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._check(name)
            return original(*args, **kwargs)

        return guarded

    def _check(self, name: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a worker thread, or no loop at all: fine
        # The nearest aiobatch frame decides whose call it is: the library's own code through the standard
        # library (a sync exit callback run by an AsyncExitStack), not a module gifs.py merely awaits.
        frame: FrameType | None = sys._getframe(2)  # _check <- guarded <- the caller
        while frame is not None and not frame.f_code.co_filename.startswith(PACKAGE):
            frame = frame.f_back
        if frame is not None and frame.f_code.co_filename in WATCHED_FILES:
            where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} in {frame.f_code.co_name}"
            self.calls.append(f"{name} on the event loop, from {where}")


@pytest.fixture
def loop_guard(monkeypatch: pytest.MonkeyPatch) -> LoopGuard:
    return LoopGuard(monkeypatch)


class Recording(aiobatch.Client):
    """A client that notes the order of the tasks it submits, and can hold them back (to let SAS URLs expire)."""

    submitted: list[str]
    hold: float = 0.0

    async def submit_tasks(
        self, job_id: str, tasks: Iterable[TaskSpec], *, concurrency: int = 4, final: bool = True
    ) -> SubmitResult:
        specs = list(tasks)
        self.submitted = [spec.id for spec in specs]
        await anyio.sleep(self.hold)
        return await super().submit_tasks(job_id, specs, concurrency=concurrency, final=final)


def clip_sizes(videos: Sequence[Path]) -> dict[str, int]:
    return {v.name: v.stat().st_size for v in videos}


async def test_convert_videos_blocks_nothing_and_submits_the_largest_first(
    pipeline: Pipeline, tmp_path: Path, loop_guard: LoopGuard
) -> None:
    folder = tmp_path / "videos"
    # Sizes unlike the names' order: longer clips are bigger files.
    videos = [
        *make_clips(folder, ["a short.mp4"], seconds=0.5),
        *make_clips(folder, ["b long.mp4"], seconds=3.0),
        *make_clips(folder, ["c middle.mp4"], seconds=1.5),
    ]
    out = tmp_path / "gifs"
    out.mkdir()
    make_clips(folder, ["d done.mp4"])
    (out / "d done.gif").write_bytes(b"GIF89a...")
    videos.append(folder / "d done.mp4")  # its GIF is there: reported, not converted
    sizes = clip_sizes(videos[:3])
    assert len(set(sizes.values())) == 3, sizes
    spec = gif_pool_spec("order", app=AppPackageRef("ffmpeg", ffmpeg_version()), dedicated_nodes=1)

    async with Recording.from_env(pipeline.env, cleanup=True) as client:
        assert isinstance(client, Recording)
        report = await convert_videos(
            client,
            videos,
            out,
            pool=spec,
            input_container=pipeline.input_container,
            output_container=pipeline.output_container,
        )
    blocked = list(loop_guard.calls)  # before this test's own checks, which block (check_gif) on purpose

    assert blocked == []
    assert report.ok, report
    assert [r.video for r in report.results] == [v.name for v in videos]  # the order given, not the size order
    assert [r.outcome for r in report.results] == ["converted"] * 3 + ["present"]
    by_task = {r.task_id: r.video for r in report.results if r.task_id}
    assert [by_task[t] for t in client.submitted] == sorted(sizes, key=lambda name: -sizes[name])
    for name in ("a short.gif", "b long.gif", "c middle.gif"):
        assert_gif(out / name)
    await assert_nothing_left(pipeline)


async def test_an_expired_sas_reads_as_such_in_the_report(pipeline: Pipeline, tmp_path: Path) -> None:
    videos = make_clips(tmp_path / "videos", ["a.mp4"])
    spec = gif_pool_spec("sas", app=AppPackageRef("ffmpeg", ffmpeg_version()), dedicated_nodes=1)
    brief = SasPolicy(duration=0, margin=1, backdate=60)

    async with Recording.from_env(pipeline.env, sas_policy=brief, cleanup=True) as client:
        assert isinstance(client, Recording)
        client.hold = 2.2  # the SAS URLs are minted just before submitting; they expire meanwhile
        report = await convert_videos(
            client,
            videos,
            tmp_path / "gifs",
            pool=spec,
            input_container=pipeline.input_container,
            output_container=pipeline.output_container,
        )

    (result,) = report.results
    assert result.outcome == "failed" and result.error is not None, result
    assert "SAS URL expired at" in result.error and "BlobAccessDenied" in result.error, result.error
    assert "sig=" not in result.error or "sig=***" in result.error
    await assert_nothing_left(pipeline)


async def test_local_batch_blocks_nothing_on_the_way_in_or_out(
    ffmpeg_apps_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    def link_package(apps: Path, *, version: str | None = None) -> Path:
        """The session's package, linked in: zipping ~80 MB again would only make the test slow."""
        name = Path("ffmpeg") / f"{version}.zip"
        (apps / "ffmpeg").mkdir(parents=True, exist_ok=True)
        try:
            os.link(ffmpeg_apps_dir / name, apps / name)
        except OSError:  # another file system
            shutil.copyfile(ffmpeg_apps_dir / name, apps / name)
        return apps / name

    monkeypatch.setattr(aiobatch.local, "build_ffmpeg_package", link_package)
    guard = LoopGuard(monkeypatch)  # after the stand-in, so that calling it on the loop is caught too

    async with LocalBatch(ffmpeg=True) as local:  # a temporary apps folder, removed on the way out
        apps = local.apps_dir
        assert apps is not None and (apps / "ffmpeg" / f"{local.ffmpeg_app.version}.zip").is_file()
        assert await local.leftovers() == []

    assert guard.calls == []
    assert not apps.exists()
