"""An existing pool is used only when asked (--reuse-pool), and only if it has the ffmpeg package."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from azure.batch.aio import BatchClient

import aiobatch
from aiobatch import AppPackageRef, PoolSpec
from aiobatch.demo.ffmpeg import ffmpeg_version
from aiobatch.demo.gifs import IMAGES, Reporter, convert_videos, gif_pool_spec

from .conftest import Pipeline, make_clips
from .test_convert_pets import assert_gif, assert_nothing_left

pytestmark = pytest.mark.anyio


def bare_pool(pool_id: str) -> PoolSpec:
    publisher, offer, sku, agent = IMAGES["linux"]
    return PoolSpec(
        id=pool_id,
        vm_size="standard_d2s_v3",
        image_publisher=publisher,
        image_offer=offer,
        image_sku=sku,
        node_agent_sku_id=agent,
        dedicated_nodes=1,
    )


async def someone_elses_pool(pipeline: Pipeline, spec: PoolSpec) -> None:
    """A pool another run (or a person) made earlier, which this test's run must not take over quietly."""
    async with aiobatch.Client.from_env(pipeline.env, run_id="someone-else") as client:
        await client.ensure_pool(spec)


async def jobs_and_pools(pipeline: Pipeline) -> tuple[list[str], list[str]]:
    async with BatchClient(pipeline.emulator.endpoint, pipeline.emulator.credential) as batch:
        with anyio.fail_after(10):
            while True:
                jobs = [j.id or "" async for j in batch.list_jobs()]
                if not jobs:
                    break
                await anyio.sleep(0.1)
        return jobs, [p.id or "" async for p in batch.list_pools()]


async def delete_pool(pipeline: Pipeline, pool_id: str) -> None:
    async with aiobatch.Client.from_env(pipeline.env) as client:
        await client.delete_pool(pool_id, force=True, wait=True)


async def test_an_existing_pool_is_not_taken_over_without_reuse_pool(pipeline: Pipeline, tmp_path: Path) -> None:
    make_clips(tmp_path / "videos", ["a.mp4"])
    await someone_elses_pool(pipeline, bare_pool("convert-pets"))  # the script's default --pool-id

    run = await pipeline.run(tmp_path / "videos", tmp_path / "gifs")

    assert run.code == 2, run.output
    error = next(line for line in run.output.splitlines() if line.startswith("error:"))
    assert "'convert-pets' already exists" in error and "--reuse-pool" in error and "--pool-id" in error
    assert "Traceback" not in run.output
    assert await jobs_and_pools(pipeline) == ([], ["convert-pets"])  # no job; the pool is left alone
    await delete_pool(pipeline, "convert-pets")
    await assert_nothing_left(pipeline)


async def test_a_reused_pool_without_ffmpeg_fails_before_any_task(pipeline: Pipeline, tmp_path: Path) -> None:
    make_clips(tmp_path / "videos", ["a.mp4"])
    await someone_elses_pool(pipeline, bare_pool("bare"))

    run = await pipeline.run(tmp_path / "videos", tmp_path / "gifs", "--pool-id", "bare", "--reuse-pool")

    assert run.code == 2, run.output
    assert "reusing existing pool 'bare'" in run.output
    error = next(line for line in run.output.splitlines() if line.startswith("error:"))
    assert "lacks the ffmpeg application package" in error and "has no application package" in error
    assert "--reuse-pool" in error and "exit code 127" not in run.output
    assert "adding" not in run.output  # no task was submitted
    assert await jobs_and_pools(pipeline) == ([], ["bare"])
    await delete_pool(pipeline, "bare")
    await assert_nothing_left(pipeline)


async def test_a_reused_pool_with_ffmpeg_is_used_and_said_so(pipeline: Pipeline, tmp_path: Path) -> None:
    make_clips(tmp_path / "videos", ["a.mp4"])
    app = AppPackageRef("ffmpeg", ffmpeg_version())
    await someone_elses_pool(pipeline, gif_pool_spec("shared", app=app, dedicated_nodes=1))

    run = await pipeline.run(tmp_path / "videos", tmp_path / "gifs", "--pool-id", "shared", "--reuse-pool")

    assert run.code == 0, run.output
    assert run.output.count("reusing existing pool 'shared'") == 1
    assert_gif(tmp_path / "gifs" / "a.gif")
    assert await jobs_and_pools(pipeline) == ([], ["shared"])  # the job is deleted; the pool is not ours
    await delete_pool(pipeline, "shared")
    await assert_nothing_left(pipeline)


class Stages(Reporter):
    def __init__(self) -> None:
        self.stages: list[str] = []

    def stage_line(self, text: str) -> None:
        self.stages.append(text)


async def test_a_pool_this_run_created_earlier_is_ours_not_reused(pipeline: Pipeline, tmp_path: Path) -> None:
    videos = make_clips(tmp_path / "videos", ["a.mp4"])
    spec = gif_pool_spec("mine", app=AppPackageRef("ffmpeg", ffmpeg_version()), dedicated_nodes=1)
    async with aiobatch.Client.from_env(pipeline.env, run_id="run-1") as first:
        await first.ensure_pool(spec)
    stages = Stages()
    async with aiobatch.Client.from_env(pipeline.env, run_id="run-1", cleanup=True) as again:
        report = await convert_videos(
            again,
            videos,
            tmp_path / "gifs",
            pool=spec,
            input_container=pipeline.input_container,
            output_container=pipeline.output_container,
            reporter=stages,
        )
    assert report.ok, report
    assert not any("reusing" in s for s in stages.stages), stages.stages
    assert "uploading 1 video to container" in stages.stages[0]
    assert_gif(tmp_path / "gifs" / "a.gif")
    await assert_nothing_left(pipeline)
