r"""The pet-video pipeline: MP4s in, animated GIFs out, one Batch task per video.

`examples/convert_pets.py`, the example notebook and the demo all run `convert_videos`; this module holds what
they share, so the script stays a thin edge (arguments, logging, progress display) and the logic is tested here.

`convert_videos` is `Client.map_files` with GIF specifics: it finds the videos that have no GIF yet
(`plan_conversions`), then the general fan-out uploads them, makes sure the pool exists and has a usable node,
creates a job, adds one task per video, and, as each task completes, downloads its GIF (or fetches the tail of
its stderr when it failed). What is GIF's own is here: the ffmpeg command (`ffmpeg_arguments`), the GIF names
(`gif_name_for`), the pool with the ffmpeg package (`gif_pool_spec`), the results in the words of videos
(`VideoResult`) and the check of a GIF (`check_gif`). Every step reports to a `Reporter`, which
`aiobatch.demo.progress` renders as rich progress bars, plain lines or a notebook display.

On the node each task sees its video as ``input.mp4`` and writes ``output.gif`` (the fan-out's fixed names); the
input blobs keep the real names. So a video may be called anything -- spaces, quotes, ``$``, ``%``, ``[`` or
letters of any script -- without that name ever reaching a shell, a glob (``outputFiles`` patterns are globs) or
a file system that refuses some characters (Windows nodes).

The conversion is the standard good-GIF recipe in one filter graph: ``fps`` and ``scale`` (lanczos) *before*
``split`` so that ``palettegen`` buffers only small frames, then ``palettegen``/``paletteuse``::

    fps=12,scale=min(480\,iw):-1:flags=lanczos,split[a][b];[a]palettegen[p];[b][p]paletteuse

Example:
    >>> import aiobatch; from aiobatch.demo import gifs  # doctest: +SKIP
    >>> async def main():  # doctest: +SKIP
    ...     pool = gifs.gif_pool_spec("pets", app=aiobatch.AppPackageRef("ffmpeg", "9.0.2"))
    ...     async with aiobatch.Client.from_env(cleanup=True) as client:
    ...         report = await gifs.convert_videos(client, gifs.find_videos("videos"), "gifs", pool=pool)
    ...     print(report.ok)
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread

from .._client import Client
from .._errors import ConfigurationError
from .._mapplan import output_present
from .._mapresults import FileResult, MapReport, failure_line, tail_lines
from .._observer import MapObserver, StageKind
from .._specs import IMAGES as _POOL_IMAGES
from .._specs import (
    AppPackageRef,
    EnvRef,
    OsFamily,
    PoolSpec,
    app_package_dir,
    command_line,
    quote_arg,
)
from .._template import node_name

__all__ = [
    "DEFAULT_INPUT_CONTAINER",
    "DEFAULT_OUTPUT_CONTAINER",
    "IMAGES",
    "INPUT_FILE",
    "OUTPUT_FILE",
    "ConversionPlan",
    "ConversionReport",
    "GifInfo",
    "GifSettings",
    "Reporter",
    "VideoResult",
    "check_gif",
    "check_gif_async",
    "convert_videos",
    "ffmpeg_arguments",
    "find_videos",
    "gif_command_line",
    "gif_name_for",
    "gif_pool_spec",
    "plan_conversions",
    "plural",
]

logger = logging.getLogger("aiobatch")

VIDEO_SUFFIX = ".mp4"
#: The video's file name on the node, as the fan-out names it (the blob keeps its real name).
INPUT_FILE = node_name("input", "video" + VIDEO_SUFFIX)
#: The GIF's file name on the node, as the fan-out names it (downloaded under the GIF's real name).
OUTPUT_FILE = node_name("output", "video.gif")
#: Lines of ffmpeg's stderr a failed video's result keeps.
_STDERR_LINES = 3
DEFAULT_INPUT_CONTAINER = "pets-input"
DEFAULT_OUTPUT_CONTAINER = "pets-output"

#: Marketplace image and node agent per OS: (publisher, offer, sku, node agent SKU id), from `PoolSpec`'s presets.
IMAGES: dict[OsFamily, tuple[str, str, str, str]] = {
    "linux": _POOL_IMAGES["ubuntu-24.04"].as_tuple(),
    "windows": _POOL_IMAGES["windows-2022"].as_tuple(),
}


# ----------------------------------------------------------------------------------------------------
# The conversion itself
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GifSettings:
    r"""How a video becomes a GIF: frame rate and width (the height keeps the aspect ratio).

    Args:
        fps: frames per second of the GIF; 10-15 looks smooth at a fraction of the video's size.
        width: the most pixels wide; a narrower video keeps its width (lanczos scaling).

    Raises:
        ConfigurationError: a frame rate or width out of range.

    Example:
        >>> GifSettings(fps=10, width=320).filter_graph()
        'fps=10,scale=min(320\\,iw):-1:flags=lanczos,split[a][b];[a]palettegen[p];[b][p]paletteuse'
    """

    fps: float = 12.0
    width: int = 480

    def __post_init__(self) -> None:
        if not 0 < self.fps <= 60:
            raise ConfigurationError(f"GIF frame rate must be above 0 and at most 60, not {self.fps!r}.")
        if not 16 <= self.width <= 4096:
            raise ConfigurationError(f"GIF width must be 16 to 4096 pixels, not {self.width!r}.")

    def filter_graph(self) -> str:
        """The ffmpeg filter graph: fps and scale (never up) first, then one palette generated and used."""
        scale = f"scale=min({self.width}\\,iw):-1:flags=lanczos"  # the escaped comma is inside min()
        return f"fps={self.fps:g},{scale},split[a][b];[a]palettegen[p];[b][p]paletteuse"


def ffmpeg_arguments(settings: GifSettings, source: str = INPUT_FILE, target: str = OUTPUT_FILE) -> list[str]:
    """Return ffmpeg's arguments (without the program) converting *source* to an endlessly looping GIF *target*.

    ``-loglevel error`` keeps stderr to the reason a conversion failed, which is what a summary shows.

    Example:
        >>> ffmpeg_arguments(GifSettings())[:4]
        ['-hide_banner', '-nostdin', '-loglevel', 'error']
    """
    graph = settings.filter_graph()
    return ["-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", source, "-vf", graph, "-loop", "0", target]


def gif_command_line(app: AppPackageRef, settings: GifSettings, *, os: OsFamily = "linux") -> str:
    r"""The task's command line: ffmpeg from the application package, quoted for the pool's OS.

    The package's folder comes from Batch's ``AZ_BATCH_APP_PACKAGE_*`` variable (see `aiobatch.app_package_dir`);
    the zip holds ``ffmpeg`` at its root on Linux and ``ffmpeg.exe`` on Windows.

    Example:
        >>> print(gif_command_line(AppPackageRef("ffmpeg", "9.0"), GifSettings(), os="windows")[:68])
        cmd /c ^"%AZ_BATCH_APP_PACKAGE_FFMPEG#9.0%\ffmpeg.exe^" -hide_banner
    """
    folder = app_package_dir(app.application_id, app.version, os=os)
    program = EnvRef(folder, "/ffmpeg" if os == "linux" else "\\ffmpeg.exe")
    return command_line([program, *ffmpeg_arguments(settings)], os=os)


def gif_name_for(video: str) -> str:
    """The GIF's file name for a video's: ``NAME.mp4`` becomes ``NAME.gif``, whatever characters NAME holds.

    Example:
        >>> gif_name_for("Mr. Whiskers (2).MP4")
        'Mr. Whiskers (2).gif'
    """
    if video.lower().endswith(VIDEO_SUFFIX) and len(video) > len(VIDEO_SUFFIX):
        return video[: -len(VIDEO_SUFFIX)] + ".gif"
    return video + ".gif"


def gif_pool_spec(
    pool_id: str,
    *,
    app: AppPackageRef,
    os: OsFamily = "linux",
    vm_size: str = "standard_d2s_v3",
    dedicated_nodes: int = 3,
    spot_nodes: int = 0,
    task_slots_per_node: int = 2,
) -> PoolSpec:
    """A pool for GIF conversions: the marketplace image for *os*, with the ffmpeg application package.

    The GIF encoder uses about one core, so *task_slots_per_node* should match the VM size's cores
    (``standard_d2s_v3`` has 2).

    Example:
        >>> spec = gif_pool_spec("pets", app=AppPackageRef("ffmpeg", "9.0.2"))
        >>> spec.dedicated_nodes, spec.node_agent_sku_id
        (3, 'batch.node.ubuntu 24.04')
    """
    publisher, offer, sku, agent = IMAGES[os]
    return PoolSpec(
        id=pool_id,
        vm_size=vm_size,
        image_publisher=publisher,
        image_offer=offer,
        image_sku=sku,
        node_agent_sku_id=agent,
        os=os,
        dedicated_nodes=dedicated_nodes,
        spot_nodes=spot_nodes,
        task_slots_per_node=task_slots_per_node,
        application_packages=(app,),
        display_name="aiobatch: MP4 to GIF",
    )


# ----------------------------------------------------------------------------------------------------
# Planning: what to convert
# ----------------------------------------------------------------------------------------------------


def find_videos(folder: str | os.PathLike[str]) -> list[Path]:
    """The ``.mp4`` files (any case of the suffix) directly in *folder*, sorted by name.

    Raises:
        ConfigurationError: *folder* is not a folder.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ConfigurationError(
            f"input folder {str(path)!r} does not exist or is not a folder: check the path, or create the "
            "folder and put the .mp4 videos to convert in it."
        )
    return sorted(
        (p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(VIDEO_SUFFIX)),
        key=lambda p: p.name,
    )


@dataclass(frozen=True)
class ConversionPlan:
    """Which videos need converting and which already have their GIF in the output folder.

    Attributes:
        todo: videos to convert.
        present: videos whose GIF is already in the output folder (a re-run skips them).
        gif_names: video file name -> GIF file name, for every video.
    """

    todo: tuple[Path, ...]
    present: tuple[Path, ...]
    gif_names: dict[str, str]


def plan_conversions(videos: Sequence[Path], output_dir: str | os.PathLike[str]) -> ConversionPlan:
    """Split *videos* into those to convert and those whose GIF is already in *output_dir*.

    A GIF is written to the output folder only once it is complete (downloads are renamed into place), so
    a non-empty GIF there is a finished one.

    Raises:
        ConfigurationError: two videos would make the same GIF (e.g. ``a.mp4`` and ``a.MP4``), or two videos
            share a file name.
    """
    out = Path(output_dir)
    gif_names: dict[str, str] = {}
    by_gif: dict[str, str] = {}
    for video in videos:
        if video.name in gif_names:
            raise ConfigurationError(f"two videos are called {video.name!r}; give each video its own name.")
        gif = gif_name_for(video.name)
        other = by_gif.get(gif.casefold())
        if other is not None:
            raise ConfigurationError(
                f"videos {other!r} and {video.name!r} would both become {gif!r}; rename one of them."
            )
        by_gif[gif.casefold()] = video.name
        gif_names[video.name] = gif
    todo: list[Path] = []
    present: list[Path] = []
    for video in videos:
        target = out / gif_names[video.name]
        (present if output_present(target) else todo).append(video)
    return ConversionPlan(todo=tuple(todo), present=tuple(present), gif_names=gif_names)


# ----------------------------------------------------------------------------------------------------
# Results and progress
# ----------------------------------------------------------------------------------------------------

Outcome = Literal["converted", "failed", "present"]


@dataclass(frozen=True)
class VideoResult:
    """How one video ended.

    Attributes:
        video: the video's file name.
        gif: the GIF's file name.
        outcome: ``"converted"``, ``"failed"``, or ``"present"`` (its GIF was already there).
        gif_size: bytes of the GIF, when there is one.
        seconds: how long the task ran on its node.
        node_id: the node it ran on.
        task_id: its Batch task id.
        exit_code: ffmpeg's exit code, when it ran.
        error: one line saying why it failed.
        stderr_tail: the last lines of ffmpeg's stderr, for a failure.
    """

    video: str
    gif: str
    outcome: Outcome
    gif_size: int | None = None
    seconds: float | None = None
    node_id: str | None = None
    task_id: str | None = None
    exit_code: int | None = None
    error: str | None = None
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the video has its GIF."""
        return self.outcome != "failed"


@dataclass(frozen=True)
class ConversionReport:
    """What `convert_videos` did, video by video (in the order given).

    Attributes:
        results: one per video.
        run_id: the client's run id.
        job_id: the job the tasks ran in (``None`` when nothing needed converting).
        pool_id: the pool.
        elapsed: seconds from start to the last GIF.
    """

    results: tuple[VideoResult, ...]
    run_id: str
    job_id: str | None
    pool_id: str
    elapsed: float

    @property
    def ok(self) -> bool:
        """Whether every video has its GIF."""
        return all(r.ok for r in self.results)

    def count(self, outcome: Outcome) -> int:
        """How many videos ended with *outcome*."""
        return sum(1 for r in self.results if r.outcome == outcome)


class Reporter(MapObserver):
    """Receives the pipeline's progress: a `aiobatch.MapObserver` that speaks of videos and GIFs.

    `convert_videos` hands it to `aiobatch.Client.map_files` as the observer, so the fan-out's hooks reach it as
    they are (`upload_progress`, `pool_status`, `task_event`, ...), except three, which come in the pipeline's
    words: a stage as a line (`stage_line`: ``"uploading 6 videos ..."``), a video's result once its GIF is
    measured (`video_done`, not `result`), and the pipeline's report (`conversion_finished`, not `finished`).
    Every method does nothing here; subclass and override what you show. `aiobatch.demo.progress` has three:
    rich progress bars, plain lines, and a notebook display.
    """

    # What the stage lines name; set by `conversion_started` (class defaults: a subclass need not call __init__).
    _pool_id = ""
    _vm_size = ""
    _input_container = ""
    _job_id = ""

    def conversion_started(self, pool: PoolSpec, input_container: str, job_id: str) -> None:
        """The conversion is about to start: on *pool*, from *input_container*, in job *job_id*."""
        self._pool_id, self._vm_size = pool.id, pool.vm_size
        self._input_container, self._job_id = input_container, job_id

    def stage(self, kind: StageKind, text: str, count: int) -> None:
        """The fan-out's stage, worded for videos and passed to `stage_line`."""
        if kind == "upload":
            text = f"uploading {plural(count, 'video')} to container {self._input_container!r}"
        elif kind == "pool":
            text = f"making sure pool {self._pool_id!r} has a usable node ({self._vm_size})"
        elif kind == "submit":
            text = f"adding {plural(count, 'task')} to job {self._job_id!r}"
        elif kind == "run":
            text = f"converting {plural(count, 'video')} on pool {self._pool_id!r}"
        self.stage_line(text)

    def result(self, result: FileResult) -> None:
        """Nothing: a video's result comes to `video_done`, once its GIF is measured."""

    def finished(self, report: MapReport) -> None:
        """Nothing: the pipeline's report comes to `conversion_finished`."""

    def stage_line(self, text: str) -> None:
        """A new stage begins (``"uploading 6 videos ..."``, ``"making sure pool ..."``)."""

    def video_done(self, result: VideoResult) -> None:
        """A video's result is final."""

    def conversion_finished(self, report: ConversionReport) -> None:
        """Everything is done; the report is final."""


# ----------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """*count* and *noun*, the noun in the plural unless the count is one.

    Example:
        >>> plural(1, "video"), plural(3, "video"), plural(0, "GIF"), plural(2, "process", "processes")
        ('1 video', '3 videos', '0 GIFs', '2 processes')
    """
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def _plan_and_measure(videos: Sequence[Path], out: Path) -> tuple[ConversionPlan, dict[str, int], dict[str, int]]:
    """`plan_conversions`, plus the bytes of each GIF already there and of each video to convert (blocking).

    Returns:
        The plan; GIF sizes by video name (present videos); video sizes by video name (videos to convert).
    """
    plan = plan_conversions(videos, out)
    gif_sizes = {v.name: (out / plan.gif_names[v.name]).stat().st_size for v in plan.present}
    video_sizes = {v.name: v.stat().st_size for v in plan.todo}
    return plan, gif_sizes, video_sizes


def _command_template(app: AppPackageRef, settings: GifSettings, os: OsFamily) -> str:
    """`gif_command_line`'s program and arguments as a `Client.map_files` template: ``{input}`` to ``{output}``."""
    folder = app_package_dir(app.application_id, app.version, os=os)
    program = EnvRef(folder, "/ffmpeg" if os == "linux" else "\\ffmpeg.exe")
    placeholders = ("{input}", "{output}")
    words = [quote_arg(program, os=os)]
    words += [a if a in placeholders else quote_arg(a, os=os) for a in ffmpeg_arguments(settings, *placeholders)]
    # A literal brace in a quoted argument would read as a placeholder: double it.
    return " ".join(w if w in placeholders else w.replace("{", "{{").replace("}", "}}") for w in words)


async def _video_result(result: FileResult, gif: str) -> VideoResult:
    """A video's result from its fan-out result (``gif`` is its GIF's file name)."""
    base = VideoResult(
        result.name,
        gif,
        "converted",
        seconds=result.seconds,
        node_id=result.node_id,
        task_id=result.task_id,
        exit_code=result.exit_code,
    )
    if result.status != "failed":
        size = (await anyio.Path(result.outputs[0]).stat()).st_size
        return replace(base, outcome="converted" if result.status == "succeeded" else "present", gif_size=size)
    event = result.event
    why = failure_line(event) if event is not None and not event.succeeded else None
    return replace(
        base, outcome="failed", error=why or result.error, stderr_tail=tail_lines(result.stderr_tail, _STDERR_LINES)
    )


async def convert_videos(
    client: Client,
    videos: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    pool: PoolSpec,
    settings: GifSettings | None = None,
    job_id: str | None = None,
    input_container: str = DEFAULT_INPUT_CONTAINER,
    output_container: str = DEFAULT_OUTPUT_CONTAINER,
    reuse_pool: bool = False,
    min_nodes: int = 1,
    pool_timeout: float = 1800.0,
    task_retries: int = 0,
    task_timeout: float | None = 3600.0,
    reporter: Reporter | None = None,
) -> ConversionReport:
    """Convert each video to an animated GIF with one Batch task per video; see the module docstring.

    Videos whose GIF is already in *output_dir* are skipped, so a re-run converts only what is missing (and,
    when nothing is, touches neither Storage nor Batch). A video that cannot be converted fails its own task:
    its result carries ffmpeg's exit code and the tail of its stderr, and the other videos go on.

    What the run creates -- containers, the job, the pool -- is the client's to delete: open it with
    ``cleanup=True`` to delete them on the way out, also on error and on cancellation (Ctrl-C).

    Args:
        client: an open client.
        videos: the MP4 files.
        output_dir: where the GIFs go (created if missing).
        pool: the pool spec; it must reference the ffmpeg application package (see `gif_pool_spec`).
        settings: frame rate and width.
        job_id: the job id; ``gifs-<run id>`` by default.
        input_container: the container the videos are uploaded to.
        output_container: the container the tasks write GIFs to.
        reuse_pool: run on an existing pool with *pool*'s id that this run did not create (it is then left
            alone on cleanup); it must reference *pool*'s application package (checked before any task is
            added). Off by default: such a pool is then a `aiobatch.ConfigurationError`, because a pool that
            merely shares the id may lack ffmpeg. A pool created earlier by this same run is always used.
        min_nodes: usable nodes to wait for before adding tasks (more join as they come).
        pool_timeout: seconds to wait for them.
        task_retries: retries of a failed conversion (a corrupt video fails every time).
        task_timeout: seconds one conversion may run.
        reporter: receives progress (see `aiobatch.demo.progress`).

    Returns:
        One result per video, in the order given.

    Raises:
        ConfigurationError: two videos would make the same GIF; the pool spec has no application package; the
            pool exists and is not this run's (without *reuse_pool*); or the reused pool lacks the package
            (``setting`` is ``"reuse_pool"`` for the last two).
        AiobatchError: a step failed for good (the pool could not get nodes, a request kept failing, ...).
    """
    started = time.monotonic()
    reporter = reporter or Reporter()
    settings = settings or GifSettings()
    if not pool.application_packages:
        raise ConfigurationError(f"pool {pool.id!r} references no application package: ffmpeg comes from one.")
    app = pool.application_packages[0]
    paths = [Path(v) for v in videos]
    out = Path(output_dir)
    plan, gif_sizes, _ = await anyio.to_thread.run_sync(_plan_and_measure, paths, out)
    results: dict[str, VideoResult] = {}
    for video in plan.present:
        gif = plan.gif_names[video.name]
        result = VideoResult(video.name, gif, "present", gif_size=gif_sizes[video.name])
        results[video.name] = result
        reporter.video_done(result)

    def report(job: str | None) -> ConversionReport:
        ordered = tuple(results[p.name] for p in paths if p.name in results)
        return ConversionReport(ordered, client.run_id, job, pool.id, time.monotonic() - started)

    if not plan.todo:
        every = "the GIF is" if len(paths) == 1 else f"all {len(paths)} GIFs are"
        reporter.stage_line(f"{every} already in {out}; nothing to convert")
        final = report(None)
        reporter.conversion_finished(final)
        return final

    # The general fan-out does the work -- upload, pool, job, one task per video (the largest first), each GIF
    # downloaded as its task ends; what is GIF-specific is the command, the names and the words shown.
    job_id = job_id or f"gifs-{client.run_id}"
    reporter.conversion_started(pool, input_container, job_id)
    conversions = client.map_files(
        plan.todo,
        _command_template(app, settings, pool.os),
        gif_name_for,
        pool=pool,
        output_dir=out,
        job_id=job_id,
        input_container=input_container,
        output_container=output_container,
        reuse_pool=reuse_pool,
        min_nodes=min_nodes,
        pool_timeout=pool_timeout,
        retries=task_retries,
        timeout=task_timeout,
        observer=reporter,
    )
    async with conversions:
        async for converted in conversions:
            result = await _video_result(converted, plan.gif_names[converted.name])
            results[result.video] = result
            reporter.video_done(result)
    final = report(conversions.report.job_id)
    reporter.conversion_finished(final)
    logger.info(
        "converted %s, %d failed, %d already there, in %.1f s",
        plural(final.count("converted"), "video"),
        final.count("failed"),
        final.count("present"),
        final.elapsed,
    )
    return final


# ----------------------------------------------------------------------------------------------------
# Checking a GIF
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GifInfo:
    """What `check_gif` found: the logical screen size and how many frames decoded."""

    width: int
    height: int
    frames: int
    size: int


def check_gif(path: str | os.PathLike[str], ffmpeg: str | os.PathLike[str]) -> GifInfo:
    """Decode a GIF from start to end with ffmpeg and return its size and frame count (blocking).

    Raises:
        ValueError: not a GIF, or ffmpeg could not decode it (the message has ffmpeg's reason).
    """
    data = Path(path).read_bytes()
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        raise ValueError(f"{os.fspath(path)!r} is not a GIF")
    width, height = struct.unpack("<HH", data[6:10])
    proc = subprocess.run(
        [os.fspath(ffmpeg), "-v", "error", "-nostdin", "-i", os.fspath(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or proc.stderr.strip():
        raise ValueError(
            f"{os.fspath(path)!r} does not decode: {tail_lines(proc.stderr, _STDERR_LINES) or proc.returncode}"
        )
    frames = data.count(b"\x21\xf9\x04") or 1  # graphic control extensions: one per frame
    return GifInfo(width=width, height=height, frames=frames, size=len(data))


async def check_gif_async(path: str | os.PathLike[str], ffmpeg: str | os.PathLike[str]) -> GifInfo:
    """`check_gif` in a worker thread."""
    return await anyio.to_thread.run_sync(check_gif, path, ffmpeg)
