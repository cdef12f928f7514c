"""Pipeline tests: examples/convert_pets.py as a user runs it, against the emulator and Azurite."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from aiobatch._azurite import AzuriteServer
from aiobatch.demo.ffmpeg import ffmpeg_executable, ffmpeg_version
from aiobatch.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "convert_pets.py"


@pytest.fixture
def emulator_apps_dir(ffmpeg_apps_dir: Path) -> Path:
    return ffmpeg_apps_dir


@dataclass
class Run:
    code: int
    output: str


@dataclass
class Pipeline:
    """Runs the script against this test's emulator and the session's Azurite, with containers of its own."""

    emulator: Emulator
    azurite: AzuriteServer
    input_container: str
    output_container: str

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AZURE_BATCH_ENDPOINT": self.emulator.endpoint,
            "AZURE_BATCH_ACCOUNT_NAME": self.emulator.account_name,
            "AZURE_BATCH_ACCOUNT_KEY": self.emulator.credential.named_key.key,
            "AZURE_STORAGE_CONNECTION_STRING": self.azurite.connection_string,
            "PYTHONUNBUFFERED": "1",
            "CI": "true",
        }

    def command(self, input_dir: Path, output_dir: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            str(SCRIPT),
            "--input",
            str(input_dir),
            "--output",
            str(output_dir),
            "--app-version",
            ffmpeg_version(),
            "--width",
            "64",
            "--fps",
            "5",
            "--input-container",
            self.input_container,
            "--output-container",
            self.output_container,
            *extra,
        ]

    async def run(self, input_dir: Path, output_dir: Path, *extra: str, limit: float = 120) -> Run:
        with anyio.fail_after(limit):
            done = await anyio.run_process(
                self.command(input_dir, output_dir, *extra), env=self.env, check=False, stderr=subprocess.STDOUT
            )
        return Run(done.returncode, done.stdout.decode())


@pytest.fixture
def pipeline(batch_emulator: Emulator, azurite: AzuriteServer) -> Pipeline:
    suffix = uuid.uuid4().hex[:8]
    return Pipeline(batch_emulator, azurite, f"in-{suffix}", f"out-{suffix}")


def make_clips(folder: Path, names: Sequence[str], *, seconds: float = 1.0) -> list[Path]:
    """Tiny MP4s (64x48, 10 fps) from ffmpeg's test sources."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = ["testsrc", "smptebars", "rgbtestsrc", "testsrc2"]
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        subprocess.run(
            [
                str(ffmpeg_executable()),
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                f"{sources[i % len(sources)]}=duration={seconds}:size=64x48:rate=10",
                "-pix_fmt",
                "yuv420p",
                "-y",
                str(path),
            ],
            check=True,
        )
        paths.append(path)
    return paths
