"""examples/convert_pets.py end to end: bad inputs, re-runs, odd names (emulator + Azurite + real ffmpeg)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from azure.batch.aio import BatchClient

from aiobatch.demo.ffmpeg import ffmpeg_executable
from aiobatch.demo.gifs import check_gif

from .conftest import Pipeline, make_clips

pytestmark = pytest.mark.anyio


def assert_gif(path: Path, width: int = 64) -> None:
    info = check_gif(path, ffmpeg_executable())
    assert info.width == width and info.frames >= 2, info


async def assert_nothing_left(pipeline: Pipeline) -> None:
    async with BatchClient(pipeline.emulator.endpoint, pipeline.emulator.credential) as batch:
        for _ in range(50):
            pools = [p.id async for p in batch.list_pools()]
            jobs = [j.id async for j in batch.list_jobs()]
            if not pools and not jobs:
                break
            import anyio

            await anyio.sleep(0.1)
        assert (pools, jobs) == ([], [])
    from azure.storage.blob.aio import BlobServiceClient

    async with BlobServiceClient.from_connection_string(pipeline.azurite.connection_string) as blobs:
        names = [c.name async for c in blobs.list_containers()]
    assert pipeline.input_container not in names and pipeline.output_container not in names


async def test_a_corrupt_video_fails_alone(pipeline: Pipeline, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    make_clips(videos, ["cat.mp4", "dog.mp4"])
    (videos / "broken.mp4").write_bytes(os.urandom(4000))
    (videos / "cat.mp4").read_bytes()
    truncated = (videos / "dog.mp4").read_bytes()[:600]
    (videos / "truncated.mp4").write_bytes(truncated)
    out = tmp_path / "gifs"

    run = await pipeline.run(videos, out)

    assert run.code == 1, run.output
    assert_gif(out / "cat.gif")
    assert_gif(out / "dog.gif")
    assert not (out / "broken.gif").exists() and not (out / "truncated.gif").exists()
    lines = run.output.splitlines()
    broken = next(line for line in lines if line.startswith("broken.mp4 ") and "FAILED" in line)
    assert "exit code" in broken
    assert "Invalid data found when processing input" in run.output  # ffmpeg's own words, from its stderr
    assert "2 converted, 2 failed" in run.output
    await assert_nothing_left(pipeline)


async def test_a_rerun_converts_only_what_is_missing(pipeline: Pipeline, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    make_clips(videos, ["a.mp4", "b.mp4", "c.mp4"])
    out = tmp_path / "gifs"
    first = await pipeline.run(videos, out)
    assert first.code == 0, first.output
    assert "3 converted, 0 failed" in first.output
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    (out / "b.gif").unlink()
    second = await pipeline.run(videos, out)
    assert second.code == 0, second.output
    assert "1 converted, 2 already there, 0 failed" in second.output
    assert "b.mp4: uploaded" in second.output and "a.mp4: uploaded" not in second.output
    assert_gif(out / "b.gif")

    third = await pipeline.run(videos, out)
    assert third.code == 0, third.output
    assert "nothing to convert" in third.output
    assert "0 converted, 3 already there, 0 failed" in third.output
    assert "uploading" not in third.output and "pool" not in third.output.split("nothing to convert")[1]
    assert (out / "a.gif").stat().st_mtime_ns == stamps["a.gif"]
    assert (out / "c.gif").stat().st_mtime_ns == stamps["c.gif"]
    await assert_nothing_left(pipeline)


async def test_names_with_spaces_quotes_and_other_scripts(pipeline: Pipeline, tmp_path: Path) -> None:
    names = ["my cat.mp4", "Ünïcödé 猫 🐈.mp4", "it's 100% $HOME & [x] `y`.MP4", "-dash.mp4"]
    videos = tmp_path / "vidéos à moi"
    make_clips(videos, names)
    out = tmp_path / "gifs out"

    run = await pipeline.run(videos, out)

    assert run.code == 0, run.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["my cat.gif", "Ünïcödé 猫 🐈.gif", "it's 100% $HOME & [x] `y`.gif", "-dash.gif"]
    )
    for gif in out.iterdir():
        assert_gif(gif)
    await assert_nothing_left(pipeline)


async def test_keep_leaves_the_job_pool_and_containers(pipeline: Pipeline, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    make_clips(videos, ["a.mp4"])
    run = await pipeline.run(videos, tmp_path / "gifs", "--keep", "--pool-id", "kept-pool")
    assert run.code == 0, run.output
    assert "kept job" in run.output
    async with BatchClient(pipeline.emulator.endpoint, pipeline.emulator.credential) as batch:
        assert [p.id async for p in batch.list_pools()] == ["kept-pool"]
        assert len([j.id async for j in batch.list_jobs()]) == 1


async def test_missing_settings_are_a_usage_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    import anyio

    from .conftest import SCRIPT

    make_clips(tmp_path / "v", ["a.mp4"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    done = await anyio.run_process(
        [sys.executable, str(SCRIPT), "--input", str(tmp_path / "v"), "--output", str(tmp_path / "o")],
        env=env,
        check=False,
        stderr=subprocess.STDOUT,
    )
    assert done.returncode == 2
    assert "AZURE_BATCH_ENDPOINT is not set" in done.stdout.decode()
