"""Ctrl-C during the watch: the script stops, deletes its job, pool and containers, and leaves no process."""

from __future__ import annotations

import signal
import stat
import subprocess
import zipfile
from pathlib import Path

import anyio
import pytest
from azure.batch.aio import BatchClient
from azure.storage.blob.aio import BlobServiceClient

from aiobatch._processes import child_processes
from aiobatch.demo.ffmpeg import ffmpeg_version

from .conftest import Pipeline, make_clips

pytestmark = pytest.mark.anyio

MARKER = "aiobatch-slow-ffmpeg"


@pytest.fixture
def emulator_apps_dir(tmp_path: Path) -> Path:
    """An "ffmpeg" package whose ffmpeg takes a minute, so the conversions are still running at Ctrl-C."""
    apps = tmp_path / "apps"
    target = apps / "ffmpeg" / f"{ffmpeg_version()}.zip"
    target.parent.mkdir(parents=True)
    info = zipfile.ZipInfo("ffmpeg", date_time=(2024, 1, 1, 0, 0, 0))
    info.external_attr = (stat.S_IFREG | 0o755) << 16
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr(info, f"#!/bin/sh\n# {MARKER}\necho converting >&2\nexec sleep 60\n")
    return apps


def sleepers() -> list[tuple[int, str]]:
    return [(pid, cmd) for pid, cmd in child_processes() if "sleep 60" in cmd or MARKER in cmd]


async def test_ctrl_c_during_the_watch_stops_cleanly_and_deletes_everything(pipeline: Pipeline, tmp_path: Path) -> None:
    make_clips(tmp_path / "videos", ["a.mp4", "b.mp4", "c.mp4"])
    command = pipeline.command(tmp_path / "videos", tmp_path / "gifs")
    output = ""
    async with await anyio.open_process(command, env=pipeline.env, stderr=subprocess.STDOUT) as process:
        assert process.stdout is not None
        with anyio.fail_after(60):
            async for chunk in process.stdout:
                output += chunk.decode()
                if "running on" in output:
                    break
        with anyio.fail_after(20):  # "running" comes before the node has downloaded the inputs
            while not sleepers():
                await anyio.sleep(0.05)
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(60):
            async for chunk in process.stdout:
                output += chunk.decode()
            code = await process.wait()

    assert code == 130, output
    assert "interrupted: stopping and deleting what this run created" in output
    assert "what this run created was deleted" in output
    assert "Traceback" not in output
    async with BatchClient(pipeline.emulator.endpoint, pipeline.emulator.credential) as batch:
        with anyio.fail_after(10):
            while [p.id async for p in batch.list_pools()] or [j.id async for j in batch.list_jobs()]:
                await anyio.sleep(0.1)
    async with BlobServiceClient.from_connection_string(pipeline.azurite.connection_string) as blobs:
        names = [c.name async for c in blobs.list_containers()]
    assert pipeline.input_container not in names and pipeline.output_container not in names
    with anyio.fail_after(10):
        while sleepers():
            await anyio.sleep(0.1)
    assert not (tmp_path / "gifs").exists() or not list((tmp_path / "gifs").iterdir())
