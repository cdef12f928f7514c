"""The one-command demo: the local services, ``examples/convert_pets.py`` on sample videos, and the checks after.

`run_demo` starts the Batch emulator and Azurite with `aiobatch.local.LocalBatch` (building the ffmpeg
application package), runs the script as a user would, then checks every GIF and that nothing was left behind.

The demo's cache -- the ffmpeg application package (``apps/ffmpeg/<version>.zip``, ~80 MB, built once and
reused) and the sample videos (``videos/``) -- lives in one folder of its own, never beside the GIFs: the
*cache_dir* given to `run_demo`, by default `default_cache_dir` (``$AIOBATCH_CACHE_DIR``, else
``$XDG_CACHE_HOME/aiobatch``, ``~/.cache/aiobatch``; ``%LOCALAPPDATA%/aiobatch`` on Windows,
``~/Library/Caches/aiobatch`` on macOS). ``examples/run_demo.py`` uses ``build/demo/`` in the checkout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from .._processes import child_processes
from ..local import LocalBatch
from .ffmpeg import ffmpeg_executable, ffmpeg_version
from .gifs import check_gif, find_videos, gif_name_for, plural
from .samples import write_sample_videos

__all__ = ["CACHE_DIR_ENV", "DemoResult", "default_cache_dir", "run_demo"]

#: The environment variable naming the demo's cache folder (see `default_cache_dir`).
CACHE_DIR_ENV = "AIOBATCH_CACHE_DIR"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the demo keeps what it builds once: the ffmpeg package and the sample videos.

    ``$AIOBATCH_CACHE_DIR`` when set; otherwise the platform's per-user cache folder: ``$XDG_CACHE_HOME/aiobatch``
    or ``~/.cache/aiobatch`` on Linux, ``~/Library/Caches/aiobatch`` on macOS, ``%LOCALAPPDATA%/aiobatch`` on
    Windows.

    Example:
        >>> default_cache_dir({"AIOBATCH_CACHE_DIR": "/tmp/c"}).as_posix()
        '/tmp/c'
    """
    env = os.environ if environ is None else environ
    if env.get(CACHE_DIR_ENV, "").strip():
        return Path(env[CACHE_DIR_ENV]).expanduser()
    if sys.platform == "win32":
        base = env.get("LOCALAPPDATA", "").strip()
        return Path(base) / "aiobatch" if base else Path.home() / "AppData" / "Local" / "aiobatch"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "aiobatch"
    xdg = env.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "aiobatch"


@dataclass(frozen=True)
class DemoResult:
    """How the demo went: the script's exit code, the GIFs checked, and anything left behind."""

    exit_code: int
    gifs: tuple[Path, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether the script succeeded, every GIF decoded, and nothing was left behind."""
        return self.exit_code == 0 and not self.problems


async def run_demo(
    script: str | os.PathLike[str],
    *,
    input_dir: str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    script_args: Sequence[str] = (),
    width: int = 480,
    say: Callable[[str], object] = print,
) -> DemoResult:
    """Start the local services, run *script* (``examples/convert_pets.py``) on the videos, check the results.

    Without *input_dir*, sample videos (`write_sample_videos`) are written to ``videos/`` in *cache_dir*; the
    ffmpeg application package is built into ``apps/`` there (once). Nothing is written beside *output_dir*.
    The script runs as a child process with the `LocalBatch.environ` variables -- exactly as a user runs it against
    Azure. Afterwards every expected GIF must decode with ffmpeg and be at most *width* pixels wide, and no
    pool, job, container or process may be left.

    Ctrl-C reaches the script too (same process group); the demo waits for it to clean up, then stops the
    services.

    Args:
        script: the conversion script.
        input_dir: the videos; sample videos by default.
        output_dir: where the GIFs go.
        cache_dir: the package and sample-video cache; `default_cache_dir` by default.
        script_args: more arguments for the script.
        width: the GIFs' most pixels wide.
        say: where progress lines go.

    Returns:
        The script's exit code, the GIFs, and the problems found (empty when all is well).
    """
    out = Path(output_dir)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    log = say
    # Reading /proc, listing folders and running ffmpeg all block: each goes to a worker thread.
    before = await anyio.to_thread.run_sync(child_processes)  # e.g. a test session's own Azurite
    processes_before = {pid for pid, _ in before}
    if input_dir is None:
        inputs = cache / "videos"
        log(f"writing sample videos to {inputs}")
        videos = await anyio.to_thread.run_sync(lambda: write_sample_videos(inputs))
    else:
        inputs = Path(input_dir)
        videos = await anyio.to_thread.run_sync(find_videos, inputs)
    if not videos:
        return DemoResult(2, (), (f"no .mp4 files in {inputs}",))
    problems: list[str] = []
    version = await anyio.to_thread.run_sync(ffmpeg_version)
    log(f"starting the Batch emulator and Azurite, building the ffmpeg {version} application package")
    # The package is cached: building it zips ~80 MB, and the next run reuses it. Never beside the output,
    # which may be a user's own folder.
    log(f"ffmpeg application package cache: {cache / 'apps'}")
    async with LocalBatch(apps_dir=cache / "apps", ffmpeg=True) as local:
        assert local.ffmpeg_app.version is not None
        command = [
            sys.executable,
            os.fspath(script),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--app-version",
            local.ffmpeg_app.version,
            "--width",
            str(width),
            *script_args,
        ]
        env = {**os.environ, **local.environ, "PYTHONUNBUFFERED": "1"}
        count = plural(len(videos), "video")
        log(f"running {Path(script).name} on {count} against {local.environ['AZURE_BATCH_ENDPOINT']}")
        with _sigint_deferred():
            process = await anyio.open_process(command, env=env, stdin=None, stdout=None, stderr=None)
            try:
                exit_code = await process.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(60):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
        problems += [f"left behind: {what}" for what in await local.leftovers()]
    gifs: list[Path] = []
    ffmpeg = await anyio.to_thread.run_sync(ffmpeg_executable)
    for video in videos if exit_code != 130 else ():  # after Ctrl-C, only what was left behind matters
        gif = out / gif_name_for(video.name)
        if not await anyio.Path(gif).is_file():
            problems.append(f"no GIF for {video.name!r}")
            continue
        try:
            info = await anyio.to_thread.run_sync(check_gif, gif, ffmpeg)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if info.width > width or info.frames < 2:
            problems.append(f"{gif.name!r} is {info.width}x{info.height} with {info.frames} frames")
        gifs.append(gif)
    after = await anyio.to_thread.run_sync(child_processes)
    problems += [f"process left running: {pid} {cmd[:80]}" for pid, cmd in after if pid not in processes_before]
    return DemoResult(exit_code, tuple(gifs), tuple(problems))


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """While the script runs, Ctrl-C is the script's to handle (it gets the signal too); the demo waits."""
    if sys.platform == "win32":
        yield None
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        yield None
    finally:
        signal.signal(signal.SIGINT, previous)
