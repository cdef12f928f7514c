"""Build Batch application package zips, such as ffmpeg from the pip-installed ``imageio-ffmpeg`` binary.

The same zip serves both targets: put it at ``<apps dir>/<id>/<version>.zip`` for the emulator, or upload it to
a real account (``az batch application package create``).  Zipping is blocking work: call these through
``anyio.to_thread.run_sync`` from async code.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from pathlib import Path

__all__ = ["FFMPEG_APP_ID", "build_ffmpeg_package", "ffmpeg_executable", "ffmpeg_version"]

#: The application id the example and the tests use for ffmpeg.
FFMPEG_APP_ID = "ffmpeg"


def ffmpeg_executable() -> Path:
    """The static ffmpeg binary that ships inside the ``imageio-ffmpeg`` wheel.

    Raises:
        RuntimeError: ``imageio-ffmpeg`` is not installed; the message says how to install it.
    """
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "ffmpeg is needed: install imageio-ffmpeg, which ships a static binary (`python -m pip install "
            "imageio-ffmpeg`, or `python -m pip install -e '.[ffmpeg]'` in an aiobatch checkout)"
        ) from None
    return Path(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_version() -> str:
    """The version of that binary as a package version string, e.g. ``9.0.2``."""
    import imageio_ffmpeg

    raw = str(imageio_ffmpeg.get_ffmpeg_version())
    match = re.search(r"\d+(?:\.\d+)*", raw)  # builds report e.g. "n9.0.2-17-g2a571b6068-20260930"
    return match.group(0).strip(".") if match else "1.0"


def build_ffmpeg_package(apps_dir: Path, *, app_id: str = FFMPEG_APP_ID, version: str | None = None) -> Path:
    """Write ``apps_dir/<app_id>/<version>.zip`` holding an executable ``ffmpeg`` at its root.

    A task finds it at ``$AZ_BATCH_APP_PACKAGE_<APP_ID>_<VERSION>/ffmpeg`` (Linux; dots become underscores).
    An existing zip of the same version is reused.

    Args:
        apps_dir: The folder of application packages (the emulator's ``--apps``).
        app_id: The application id.
        version: The package version; the binary's own version by default.

    Returns:
        The zip's path.

    Example:
        >>> build_ffmpeg_package(Path("apps"))  # doctest: +SKIP
        PosixPath('apps/ffmpeg/9.0.2.zip')
    """
    version = version or ffmpeg_version()
    target = apps_dir / app_id / f"{version}.zip"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    binary = ffmpeg_executable()
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    info = zipfile.ZipInfo("ffmpeg", date_time=(2024, 1, 1, 0, 0, 0))
    info.external_attr = (stat.S_IFREG | 0o755) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(tmp, "w") as zf, binary.open("rb") as src, zf.open(info, "w") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    tmp.replace(target)
    return target
