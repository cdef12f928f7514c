"""ffmpeg from an application package on a 3-node pool, MP4s in as SAS resource files, GIFs out to a container."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import subprocess
from pathlib import Path

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.storage.blob import BlobSasPermissions, ContainerSasPermissions, generate_blob_sas, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

from aiobatch._azurite import AzuriteServer
from aiobatch.demo.ffmpeg import ffmpeg_executable, ffmpeg_version
from aiobatch.emulator import Emulator

pytestmark = pytest.mark.anyio

WIDTH = 160
VIDEOS = {"cat": "testsrc", "dog": "smptebars", "rabbit": "rgbtestsrc", "hamster": "testsrc2", "parrot": "pal100bars"}


def _make_video(path: Path, source: str) -> None:
    subprocess.run(
        [
            str(ffmpeg_executable()),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"{source}=duration=1.5:size=320x240:rate=12",
            "-pix_fmt",
            "yuv420p",
            "-y",
            str(path),
        ],
        check=True,
    )


def _gif_size(data: bytes) -> tuple[int, int]:
    assert data[:6] in (b"GIF87a", b"GIF89a"), "not a GIF"
    width, height = struct.unpack("<HH", data[6:10])
    return width, height


async def test_ffmpeg_app_package_on_three_nodes(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    for name, source in VIDEOS.items():
        await anyio.to_thread.run_sync(_make_video, tmp_path / f"{name}.mp4", source)
    version = ffmpeg_version()
    env_var = "AZ_BATCH_APP_PACKAGE_ffmpeg_" + version.replace(".", "_")
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)

    async with BlobServiceClient.from_connection_string(azurite.connection_string) as blobs:
        inputs, outputs = blobs.get_container_client("pipeline-in"), blobs.get_container_client("pipeline-out")
        await inputs.create_container()
        await outputs.create_container()
        for name in VIDEOS:
            await inputs.upload_blob(f"{name}.mp4", (tmp_path / f"{name}.mp4").read_bytes())
        out_sas = generate_container_sas(
            azurite.account_name,
            "pipeline-out",
            account_key=azurite.account_key,
            permission=ContainerSasPermissions(create=True, write=True),
            expiry=expiry,
        )
        out_url = f"{outputs.url}?{out_sas}"

        def input_url(blob: str) -> str:
            sas = generate_blob_sas(
                azurite.account_name,
                "pipeline-in",
                blob,
                account_key=azurite.account_key,
                permission=BlobSasPermissions(read=True),
                expiry=expiry,
            )
            return f"{inputs.url}/{blob}?{sas}"

        async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
            await batch.create_pool(
                m.BatchPoolCreateOptions(
                    id="ffmpeg-pool",
                    vm_size="standard_d2s_v3",
                    virtual_machine_configuration=m.VirtualMachineConfiguration(
                        image_reference=m.BatchVmImageReference(
                            publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
                        ),
                        node_agent_sku_id="batch.node.ubuntu 22.04",
                    ),
                    target_dedicated_nodes=3,
                    application_package_references=[
                        m.BatchApplicationPackageReference(application_id="ffmpeg", version=version)
                    ],
                )
            )
            await batch.create_job(m.BatchJobCreateOptions(id="gifs", pool_info=m.BatchPoolInfo(pool_id="ffmpeg-pool")))
            tasks = []
            for name in VIDEOS:
                graph = f"fps=8,scale={WIDTH}:-1:flags=lanczos,split[a][b];[a]palettegen[p];[b][p]paletteuse"
                command = f'/bin/bash -c \'"${env_var}/ffmpeg" -v error -i {name}.mp4 -vf "{graph}" -y {name}.gif\''
                tasks.append(
                    m.BatchTaskCreateOptions(
                        id=f"convert-{name}",
                        command_line=command,
                        resource_files=[m.ResourceFile(http_url=input_url(f"{name}.mp4"), file_path=f"{name}.mp4")],
                        output_files=[
                            m.OutputFile(
                                file_pattern=f"{name}.gif",
                                destination=m.OutputFileDestination(
                                    container=m.OutputFileBlobContainerDestination(container_url=out_url)
                                ),
                                upload_options=m.OutputFileUploadConfiguration(
                                    upload_condition=m.OutputFileUploadCondition.TASK_SUCCESS
                                ),
                            )
                        ],
                    )
                )
            result = await batch.create_task_collection("gifs", m.BatchTaskGroup(task_values=tasks))
            assert {r.status.lower() for r in result.result_values or []} == {"success"}

            for _ in range(600):
                counts = await batch.get_job_task_counts("gifs")
                if counts.task_counts.completed == len(VIDEOS):
                    break
                await asyncio.sleep(0.1)
            done = [t async for t in batch.list_tasks("gifs")]
            for task in done:
                assert task.execution_info is not None
                if task.execution_info.result != "success":
                    stderr = b"".join([c async for c in await batch.download_task_file("gifs", task.id, "stderr.txt")])
                    pytest.fail(f"{task.id}: {task.execution_info.failure_info} {stderr.decode()}")
            nodes_used = {t.node_info.node_id for t in done if t.node_info}
            assert len(nodes_used) == 3, "the five conversions should spread over all three nodes"

        names = sorted([b.name async for b in outputs.list_blobs()])
        assert names == sorted(f"{n}.gif" for n in VIDEOS)
        for name in VIDEOS:
            data = await (await outputs.download_blob(f"{name}.gif")).readall()
            assert _gif_size(data) == (WIDTH, WIDTH * 240 // 320)
            gif = tmp_path / f"{name}.gif"
            gif.write_bytes(data)
            decoded = await anyio.run_process(
                [str(ffmpeg_executable()), "-v", "error", "-i", str(gif), "-f", "null", "-"], check=False
            )
            assert decoded.returncode == 0, decoded.stderr
