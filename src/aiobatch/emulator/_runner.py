"""One attempt of one task on one node: directories, environment, resource files, process, output files.

The scheduler calls :func:`run_task` once per attempt and gets back a :class:`TaskOutcome`, or cancels the
coroutine when the task is terminated, its job deleted or its node removed. The steps mirror a node agent's:

1. create the task directory and its working directory ``wd/``;
2. download the resource files into ``wd/`` (a failure ends the attempt before anything runs);
3. run the command line as a local process in its own session, stdout and stderr streamed to files;
4. upload the output files that match their patterns and upload conditions, logging to
   ``fileuploadout.txt`` and ``fileuploaderr.txt`` beside ``stdout.txt``.

Failures are reported (``executionInfo.failureInfo``) with the codes, categories and messages the real service
uses. Sources: the ``TaskFailureInformationCodes`` class of the Batch .NET SDK (``BatchErrorCodeStrings.cs``),
the "Batch Status and Error Codes" REST reference (task error codes, categories and messages), Microsoft's
Batch "Error handling" page (``maxWallClockTime`` ends a task with ``TaskEnded``, category ``ServerError``),
the "Persist task data" page (``FileUploadContainerNotFound`` and its message) and failure records of real
tasks (``FailureExitCode``: "The task exited with an exit code representing a failure"). Messages the sources
do not give are written in the same style.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fnmatch
import json
import logging
import os
import re
import shlex
import signal
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO
from urllib.parse import unquote

import aiohttp
import anyio

from . import _clock, _files
from ._files import TransferError, mask_sas
from ._types import FailureInfo, OutputFile, ResourceFile, TaskOutcome, TaskRun

__all__ = ["KILL_GRACE", "NODE_PATH", "run_task", "task_environment"]

log = logging.getLogger("aiobatch.emulator")

#: Seconds between SIGTERM and SIGKILL when a task's processes are stopped (wall clock, termination).
KILL_GRACE = 2.0
#: The permission bits a resource file gets on Linux when its ``fileMode`` is not set (REST spec: 0770).
DEFAULT_FILE_MODE = 0o770

_WILDCARD = re.compile(r"[*?\[]")
_ENV_REF = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _now() -> dt.datetime:
    return _clock.now()


async def run_task(run: TaskRun, http: aiohttp.ClientSession) -> TaskOutcome:
    """Run one attempt of a task (or a start task) on a node and report how it ended.

    Creates ``run.task_dir`` and its ``wd/``, downloads the resource files, runs ``run.command_line`` (split
    like a POSIX shell would, but exec'd directly: Batch on Linux runs no shell unless the command line names
    one), then uploads the output files the upload conditions select. Never raises for a failure of the task
    itself: those come back as ``failure_info``.

    Cancelling the coroutine stops the task: its whole process group gets SIGTERM, then SIGKILL after
    :data:`KILL_GRACE` seconds; the coroutine waits for the processes to be gone, then re-raises the
    cancellation. Output files are not uploaded then.

    Args:
        run: what to run, where, and with which files.
        http: the session used for every download and upload.

    Returns:
        The attempt's start and end times, the process's exit code (None when it never ran) and, when the
        attempt failed, the failure as the service reports it.

    Example:
        >>> outcome = await run_task(run, session)  # doctest: +SKIP
        >>> outcome.result, outcome.exit_code  # doctest: +SKIP
        ('success', 0)
    """
    start = _now()
    clock = asyncio.get_running_loop().time
    # maxWallClockTime is the service's time: a real wait on the emulator's clock (shorter when it runs faster).
    limit = run.max_wall_clock_time
    deadline = clock() + _clock.current().real_seconds(limit) if limit is not None else None
    wd = run.task_dir / "wd"
    try:
        wd.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        cannot = FailureInfo(
            "servererror",
            "ResourceDirectoryCreateFailed",
            "Failure encountered creating resource directory for the task",
            (("Reason", str(exc)),),
        )
        return TaskOutcome(start, _now(), None, cannot)

    env = task_environment(run)
    # maxWallClockTime counts from the start of the attempt, as startTime does: downloads included.
    failure: FailureInfo | None
    with anyio.move_on_after(_remaining(deadline, clock)) as scope:
        failure = await _download_resource_files(run.resource_files, wd, http)
    if scope.cancelled_caught:
        return TaskOutcome(start, _now(), None, _wall_clock_failure(run.max_wall_clock_time))
    if failure is not None:
        log.debug("task %s: resource file download failed: %s", run.task_id, failure.code)
        return TaskOutcome(start, _now(), None, failure)

    exit_code, failure, timed_out = await _run_process(run, wd, env, _remaining(deadline, clock))
    if exit_code is None:  # the process never started: nothing to upload
        return TaskOutcome(start, _now(), None, failure)
    if timed_out:
        failure = _wall_clock_failure(run.max_wall_clock_time)

    if run.output_files and not run.is_start_task:
        upload_failure = await _upload_output_files(run, wd, env, http, succeeded=failure is None)
        # The process's own failure, when there is one, is the more useful of the two to report.
        failure = failure or upload_failure
    return TaskOutcome(start, _now(), exit_code, failure)


def _remaining(deadline: float | None, clock: Callable[[], float]) -> float:
    return float("inf") if deadline is None else max(0.0, deadline - clock())


def _wall_clock_failure(limit: float | None) -> FailureInfo:
    return FailureInfo(
        "servererror",
        "TaskEnded",
        "The task was ended because it exceeded its maximum wall clock time",
        (("MaxWallClockTime", f"PT{limit:g}S"),),
    )


# --- environment --------------------------------------------------------------------------------------------


#: The directories a Linux node's task process finds programs in before Batch adds the node's own (Ubuntu's
#: default PATH, as tasks on real nodes print it).
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def task_environment(run: TaskRun) -> dict[str, str]:
    """Return the environment of a task's process: a Linux node's, never the emulator's own.

    A node gives a task an environment of its own, not its submitter's: the sources are Microsoft's "Azure Batch
    runtime environment variables" page and the environment tasks print on real Ubuntu nodes (Microsoft's
    quickstarts show one). Built in this order, a later layer winning over an earlier one:

    1. The node's base: ``PATH`` is `NODE_PATH` followed by ``AZ_BATCH_NODE_SHARED_DIR`` and
       ``AZ_BATCH_TASK_WORKING_DIR``, and ``HOME`` is ``AZ_BATCH_TASK_WORKING_DIR``, both as on a node. There is
       no ``LANG`` or ``LC_ALL``, as a node sets none: a command that needs a UTF-8 locale must ask for one in
       its environment settings here as there. There is no ``USER`` or ``LOGNAME``: the process runs as the
       emulator's own user, and naming the node's would mislead programs that trust those variables.
    2. ``run.passed_environment``: variables of the emulator's own environment that its user named
       (``Emulator(pass_env=...)``, ``--pass-env``); none by default.
    3. The ``AZ_BATCH_*`` variables. Every task, the start task included, gets ``AZ_BATCH_ACCOUNT_NAME``,
       ``AZ_BATCH_ACCOUNT_URL``, ``AZ_BATCH_POOL_ID``, ``AZ_BATCH_NODE_ID``, ``AZ_BATCH_NODE_IS_DEDICATED``,
       ``AZ_BATCH_NODE_ROOT_DIR``, ``AZ_BATCH_NODE_SHARED_DIR``, ``AZ_BATCH_NODE_STARTUP_DIR``,
       ``AZ_BATCH_NODE_STARTUP_WORKING_DIR`` (the start task's ``wd``), ``AZ_BATCH_NODE_MOUNTS_DIR``,
       ``AZ_BATCH_TASK_DIR``, ``AZ_BATCH_TASK_WORKING_DIR``, ``AZ_BATCH_TASK_USER`` and
       ``AZ_BATCH_TASK_USER_IDENTITY``; every task but the start task gets ``AZ_BATCH_JOB_ID`` and
       ``AZ_BATCH_TASK_ID``. Not set, because what they describe does not exist here: the multi-instance
       variables (``AZ_BATCH_HOST_LIST``, ``AZ_BATCH_NODE_LIST``, ``AZ_BATCH_MASTER_NODE``,
       ``AZ_BATCH_IS_CURRENT_NODE_MASTER``, ``AZ_BATCH_TASK_SHARED_DIR``, ``CCP_NODES``: MPI tasks are refused),
       ``AZ_BATCH_AUTHENTICATION_TOKEN`` (retired), ``AZ_BATCH_CERTIFICATES_DIR`` (certificates are retired and
       the emulator has none) and ``AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES`` (no disk-full state).
    4. ``run.app_package_environment``: ``AZ_BATCH_APP_PACKAGE_<id>_<version>`` (and ``AZ_BATCH_APP_PACKAGE_<id>``
       for a package referenced without a version) for each package of the pool and of the task.
    5. ``run.job_environment``: the job's ``commonEnvironmentSettings``.
    6. ``run.environment``: the task's own ``environmentSettings``, which override the job's, as on Azure.
    """
    root = run.node_root
    wd = run.task_dir / "wd"
    shared = root / "shared"
    env = {"PATH": f"{NODE_PATH}:{shared}:{wd}", "HOME": str(wd)}
    env.update(run.passed_environment)
    env.update(
        {
            "AZ_BATCH_ACCOUNT_NAME": run.account_name,
            "AZ_BATCH_ACCOUNT_URL": run.account_url,
            "AZ_BATCH_POOL_ID": run.pool_id,
            "AZ_BATCH_NODE_ID": run.node_id,
            "AZ_BATCH_NODE_IS_DEDICATED": "true" if run.node_is_dedicated else "false",
            "AZ_BATCH_NODE_ROOT_DIR": str(root),
            "AZ_BATCH_NODE_SHARED_DIR": str(shared),
            "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
            "AZ_BATCH_NODE_STARTUP_WORKING_DIR": str(root / "startup" / "wd"),
            "AZ_BATCH_NODE_MOUNTS_DIR": str(root / "fsmounts"),
            "AZ_BATCH_TASK_DIR": str(run.task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(wd),
            "AZ_BATCH_TASK_USER": run.task_user,
            "AZ_BATCH_TASK_USER_IDENTITY": run.task_user_identity,
        }
    )
    if not run.is_start_task:
        env["AZ_BATCH_TASK_ID"] = run.task_id
        if run.job_id is not None:
            env["AZ_BATCH_JOB_ID"] = run.job_id
    env.update(run.app_package_environment)
    env.update(run.job_environment)
    env.update(run.environment)
    return env


# --- resource files -----------------------------------------------------------------------------------------


def _inside(base: Path, relative: str) -> Path | None:
    """Return ``base / relative`` if it stays inside *base* (not absolute, no escaping ``..``), else None."""
    if not relative or os.path.isabs(relative):
        return None
    target = Path(os.path.normpath(base / relative))
    return target if target == base or base in target.parents else None


def _file_mode(resource: ResourceFile) -> int:
    if resource.file_mode:
        with contextlib.suppress(ValueError):
            return int(resource.file_mode, 8)
    return DEFAULT_FILE_MODE


def _bad_path(
    file_path: str, reason: str = "the path must be relative and stay inside the working directory"
) -> FailureInfo:
    return FailureInfo(
        "usererror",
        "ResourceFileCreateFailed",
        "Failure encountered creating resource file",
        (("FilePath", file_path), ("Reason", reason)),
    )


async def _download_resource_files(
    resources: tuple[ResourceFile, ...], wd: Path, http: aiohttp.ClientSession
) -> FailureInfo | None:
    """Download every resource file into *wd*; return the first failure, or None when all arrived."""
    for resource in resources:
        if resource.http_url:
            failure = await _download_http(resource, wd, http)
        elif resource.storage_container_url:
            failure = await _download_container(resource, resource.storage_container_url, wd, http)
        else:
            # autoStorageContainerName needs the account's linked storage, which the emulator does not have.
            failure = FailureInfo(
                "usererror",
                "ResourceContainerNotFound",
                "One of the specified Azure Blob container(s) is not found",
                (
                    ("ContainerName", resource.auto_storage_container_name or ""),
                    ("Reason", "the emulator has no auto-storage account; use storageContainerUrl"),
                ),
            )
        if failure is not None:
            return failure
    return None


async def _download_http(resource: ResourceFile, wd: Path, http: aiohttp.ClientSession) -> FailureInfo | None:
    assert resource.http_url is not None
    file_path = resource.file_path or unquote(resource.http_url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])
    dest = _inside(wd, file_path)
    if dest is None or dest == wd:
        return _bad_path(file_path)
    return await _download_one(http, resource.http_url, wd, dest, file_path, _file_mode(resource))


def _way_to(wd: Path, dest: Path) -> str | None:
    """Create the directories on the way from *wd* to *dest*; say why not when that way leaves *wd*.

    A task's directory outlives an attempt, so a retry finds what the previous attempt left there, links
    included (``sub -> /elsewhere``): a resource file must land inside the working directory all the same.
    A link on the way is followed only when it leads to a directory inside *wd*; missing directories are made
    one by one, never through a link. The file's own name is not followed: the download renames the finished
    file over whatever is there, so a link in its place is replaced, not written through.
    """
    if os.path.islink(wd) or os.path.islink(wd.parent):
        return "the task's working directory (or the task directory) has been replaced by a link"
    real_wd = Path(os.path.realpath(wd))
    current = wd
    for part in dest.relative_to(wd).parts[:-1]:
        current = current / part
        try:
            found = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current)
            continue
        if stat.S_ISLNK(found.st_mode):
            target = Path(os.path.realpath(current))
            if not target.is_relative_to(real_wd) or not target.is_dir():
                return f"{current.relative_to(wd).as_posix()} is a link that leads out of the working directory"
        elif not stat.S_ISDIR(found.st_mode):
            return f"{current.relative_to(wd).as_posix()} is not a directory"
    return None


async def _download_one(
    http: aiohttp.ClientSession, url: str, wd: Path, dest: Path, file_path: str, mode: int
) -> FailureInfo | None:
    try:
        refused = await asyncio.to_thread(_way_to, wd, dest)
        if refused is not None:
            return _bad_path(file_path, refused)
        size = await _files.download(http, url, dest, file_mode=mode)
    except TransferError as exc:
        return _blob_failure(exc, file_path)
    except OSError as exc:
        return FailureInfo(
            "servererror",
            "ResourceFileWriteFailed",
            "Failure encountered writing resource file",
            (("FilePath", file_path), ("Reason", str(exc))),
        )
    log.debug("downloaded %s (%d bytes) to %s", mask_sas(url), size, dest)
    return None


async def _download_container(
    resource: ResourceFile, container_url: str, wd: Path, http: aiohttp.ClientSession
) -> FailureInfo | None:
    base = wd
    if resource.file_path:
        inside = _inside(wd, resource.file_path)
        if inside is None:
            return _bad_path(resource.file_path)
        base = inside
    try:
        names = [name async for name in _files.list_blobs(http, container_url, resource.blob_prefix)]
    except TransferError as exc:
        return _container_failure(exc)
    mode = _file_mode(resource)
    for name in names:
        if name.endswith("/"):  # a directory marker, not a file
            continue
        rel = f"{resource.file_path.rstrip('/')}/{name}" if resource.file_path else name
        dest = _inside(base, name)
        if dest is None or dest == base:
            return _bad_path(rel)
        failure = await _download_one(http, _files.blob_url(container_url, name), wd, dest, rel, mode)
        if failure is not None:
            return failure
    return None


def _blob_failure(exc: TransferError, file_path: str) -> FailureInfo:
    category, code, message = {
        "access_denied": (
            "usererror",
            "BlobAccessDenied",
            "Access for one of the specified Azure Blob(s) is denied",
        ),
        "not_found": ("usererror", "BlobNotFound", "One of the specified Azure Blob(s) is not found"),
        "timed_out": (
            "servererror",
            "BlobDownloadTimedOut",
            "Timeout encountered while downloading one of the specified Azure Blob(s)",
        ),
    }.get(
        exc.kind,
        (
            "servererror",
            "BlobDownloadMiscError",
            "Miscellaneous error encountered while downloading one of the specified Azure Blob(s)",
        ),
    )
    return FailureInfo(category, code, message, (("FilePath", file_path), *exc.details()))


def _container_failure(exc: TransferError) -> FailureInfo:
    category, code, message = {
        "access_denied": (
            "usererror",
            "ResourceContainerAccessDenied",
            "Access for one of the specified Azure Blob container(s) is denied",
        ),
        "not_found": (
            "usererror",
            "ResourceContainerNotFound",
            "One of the specified Azure Blob container(s) is not found",
        ),
        "timed_out": (
            "servererror",
            "ResourceContainerListTimedOut",
            "Timeout encountered while listing one of the specified Azure Blob container(s)",
        ),
    }.get(
        exc.kind,
        (
            "servererror",
            "ResourceContainerListMiscError",
            "Miscellaneous error encountered while listing one of the specified Azure Blob container(s)",
        ),
    )
    return FailureInfo(category, code, message, exc.details())


# --- the process --------------------------------------------------------------------------------------------


def _launch_failure(code: str, command_line: str, reason: str) -> FailureInfo:
    message = {
        "CommandProgramNotFound": "The specified command program is not found",
        "CommandLaunchFailed": "Failed to launch the specified command line",
    }[code]
    return FailureInfo("usererror", code, message, (("CommandLine", command_line), ("Reason", reason)))


async def _run_process(
    run: TaskRun, wd: Path, env: Mapping[str, str], time_left: float
) -> tuple[int | None, FailureInfo | None, bool]:
    """Run the command line; return (exit code or None if it never started, failure, whether it timed out)."""
    try:
        argv = shlex.split(run.command_line)
    except ValueError as exc:
        return None, _launch_failure("CommandLaunchFailed", run.command_line, str(exc)), False
    if not argv:
        return (
            None,
            _launch_failure("CommandLaunchFailed", run.command_line, "the command line is empty"),
            False,
        )

    # The process writes straight into the files (no pipes through this process), so output of any size
    # streams to disk and stays readable while the task runs.
    try:
        out, err = _open_std_files(run.task_dir)
    except OSError as exc:  # a directory left where a file must go
        return None, _launch_failure("CommandLaunchFailed", run.command_line, str(exc)), False
    with out, err:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=wd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                # Its own session and process group, so that everything it starts can be stopped together.
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            return None, _launch_failure("CommandProgramNotFound", run.command_line, str(exc)), False
        except OSError as exc:  # permission denied, not an executable, ...
            return None, _launch_failure("CommandLaunchFailed", run.command_line, str(exc)), False
    log.debug("task %s: started pid %d: %s", run.task_id, proc.pid, run.command_line)

    waiter = asyncio.ensure_future(proc.wait())
    timed_out = False
    try:
        done, _ = await asyncio.wait({waiter}, timeout=None if time_left == float("inf") else time_left)
        if not done:
            timed_out = True
            log.debug("task %s: exceeded its wall clock time; stopping pid %d", run.task_id, proc.pid)
            await _stop(proc.pid, waiter)
    except BaseException:
        # Cancelled (task terminated, job deleted, node removed): stop the processes, then re-raise.
        await _stop(proc.pid, waiter)
        raise
    finally:
        # Whatever the command left running in its group (background jobs) ends with it.
        await _kill_group(proc.pid)

    code = _exit_code(waiter.result())
    if code == 0 or timed_out:
        return code, None, timed_out
    failure = FailureInfo(
        "usererror",
        "FailureExitCode",
        "The task exited with an exit code representing a failure",
        (
            ("Message", "The task process exited with an unexpected exit code"),
            ("AdditionalErrorCode", "FailureExitCode"),
        ),
    )
    return code, failure, False


def _fresh_file(path: Path) -> int:
    """Create a new, empty file at *path* and return a descriptor open for writing to it.

    A task's directory outlives an attempt, and a retry finds whatever the last one left at the names the
    node agent writes: a FIFO there would make ``open()`` wait, on the event loop, for a reader that never
    comes; a link would send the truncation and the writes wherever it points. So what is at the name (unless
    a directory) is removed, and the new file is created exclusively, never through a link.
    """
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)


def _open_std_files(task_dir: Path) -> tuple[IO[bytes], IO[bytes]]:
    # New files, so that a retried task's stdout.txt starts afresh (see _fresh_file).
    out = os.fdopen(_fresh_file(task_dir / "stdout.txt"), "wb")
    try:
        return out, os.fdopen(_fresh_file(task_dir / "stderr.txt"), "wb")
    except BaseException:
        out.close()
        raise


def _exit_code(returncode: int) -> int:
    # A process killed by signal N is reported the way a POSIX shell reports it: 128 + N.
    return 128 - returncode if returncode < 0 else returncode


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group *pgid* is still running (zombies awaiting their reaper do not count)."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: fall back to asking the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


async def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of group *pgid* and wait (up to 2 s) until none of it runs any more.

    The processes are not our children once their leader is gone, so there is nothing to wait() for: this
    polls. Shielded, so that a task being cancelled still waits for its processes to be gone.
    """
    _signal_group(pgid, signal.SIGKILL)
    with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
        while _group_alive(pgid):  # noqa: ASYNC110 - other processes, no event to wait on
            await anyio.sleep(0.01)


async def _stop(pgid: int, waiter: asyncio.Future[int]) -> None:
    """SIGTERM the process group, SIGKILL it after :data:`KILL_GRACE` seconds; wait until its leader is gone.

    Survives further cancellation: an anyio cancel scope is held off by the shield, and a native
    ``Task.cancel()`` only skips the rest of the grace period.
    """
    _signal_group(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    kill_at = loop.time() + KILL_GRACE
    killed = False
    with anyio.CancelScope(shield=True):
        while not waiter.done():
            try:
                await asyncio.wait({waiter}, timeout=None if killed else max(0.0, kill_at - loop.time()))
            except asyncio.CancelledError:
                kill_at = 0.0  # asked again: no more grace
            if not waiter.done() and not killed and loop.time() >= kill_at:
                _signal_group(pgid, signal.SIGKILL)
                killed = True


# --- output files -------------------------------------------------------------------------------------------


def _condition_met(condition: str, succeeded: bool) -> bool:
    condition = condition.lower()
    if condition == "taskcompletion":
        return True
    return succeeded if condition == "tasksuccess" else (not succeeded if condition == "taskfailure" else False)


def _expand(pattern: str, env: Mapping[str, str]) -> str:
    """Expand ``$var`` and ``${var}`` from the task's environment, as the REST spec says Batch does."""
    return _ENV_REF.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), pattern)


def _matches(pattern: str, wd: Path, task_dir: Path) -> list[tuple[Path, str]]:
    """Return (file, name relative to the pattern's fixed leading directories) for each file *pattern* matches.

    Relative patterns are relative to *wd* (``../stdout.txt`` reaches the task directory); ``**`` matches any
    number of directories; ``*``, ``?`` and ``[...]`` do not match names starting with ``.`` unless the
    pattern spells the dot, as the REST spec describes. Only regular files are selected.

    Links are not followed out of the task directory: a file reached through a link counts only when it lies
    inside *task_dir* (else ``ln -s /etc/passwd x`` would upload that file), and links to directories are not
    descended into at all (a loop cannot make matching endless; what they point to inside the task directory is
    reachable by its own path). A path the pattern itself spells out (an absolute one, as the service allows) is
    honoured when no link on the way leads elsewhere. Blocking: run it in a worker thread.
    """
    real_task = Path(os.path.realpath(task_dir))
    # Paths as written (not resolved), so that `_selectable` can tell a link on the way from none.
    here = os.path.abspath(wd)
    segments = pattern.split("/")
    fixed: list[str] = []
    for part in segments[:-1]:
        if _WILDCARD.search(part):
            break
        fixed.append(part)
    rest = segments[len(fixed) :]
    base = os.path.normpath(os.path.join(here, "/".join(fixed) or "."))
    if not any(_WILDCARD.search(part) for part in rest):
        path = os.path.normpath(os.path.join(base, *rest))
        return [(Path(path), rest[-1])] if _selectable(path, real_task) else []
    found: list[tuple[Path, str]] = []
    depth = None if "**" in rest else len(rest)
    for path, parts in _walk(base, depth):
        if _match_parts(rest, parts) and _selectable(path, real_task):
            found.append((Path(path), "/".join(parts)))
    return sorted(found, key=lambda item: item[1])


def _walk(base: str, depth: int | None) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Yield every non-directory below *base* (at most *depth* names down) with its names; links not descended."""
    stack: list[tuple[str, tuple[str, ...]]] = [(base, ())]
    while stack:
        directory, parts = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            names = (*parts, entry.name)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_dir:
                yield entry.path, names
            elif depth is None or len(names) < depth:
                stack.append((entry.path, names))


def _match_parts(segments: list[str], names: tuple[str, ...]) -> bool:
    """Whether the path *names* matches the pattern *segments*, as glob's recursive matching would."""
    if not segments:
        return not names
    head, tail = segments[0], segments[1:]
    if head == "**":
        # Any number of directories (none included), but not through hidden ones; a trailing ** matches files.
        for taken in range(len(names) + 1):
            if taken and names[taken - 1].startswith("."):
                return False
            if _match_parts(tail, names[taken:]) if tail else taken == len(names) and taken > 0:
                return True
        return False
    return bool(names) and _match_name(head, names[0]) and _match_parts(tail, names[1:])


def _match_name(segment: str, name: str) -> bool:
    # Wildcards do not match a leading dot unless the pattern spells it, as glob has it.
    if name.startswith(".") and not segment.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, segment)


def _selectable(path: str, real_task: Path) -> bool:
    """Whether *path* is a regular file that an output pattern may upload (see `_matches` on links)."""
    real = os.path.realpath(path)
    if not Path(real).is_relative_to(real_task) and real != os.path.normpath(path):
        return False
    try:
        return stat.S_ISREG(os.stat(real).st_mode)
    except OSError:
        return False


def _blob_name(output: OutputFile, pattern: str, relative: str) -> str:
    if not _WILDCARD.search(pattern):
        return output.path or relative.rsplit("/", 1)[-1]
    if output.path:
        return f"{output.path.rstrip('/')}/{relative}"
    return relative


class _UploadLog:
    """The two files a node agent writes on every upload: progress (``fileuploadout.txt``) and errors."""

    def __init__(self, task_dir: Path) -> None:
        self._out = self._open(task_dir / "fileuploadout.txt")
        self._err = self._open(task_dir / "fileuploaderr.txt")

    @staticmethod
    def _open(path: Path) -> IO[str]:
        try:
            return os.fdopen(_fresh_file(path), "w", encoding="utf-8")
        except OSError as exc:  # a directory left in its place: the uploads go on, unlogged
            log.debug("cannot write %s: %s", path, exc)
            return open(os.devnull, "w", encoding="utf-8")

    def info(self, message: str) -> None:
        stamp = _now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        self._out.write(f"{stamp} {mask_sas(message)}\n")
        self._out.flush()

    def error(self, record: dict[str, object]) -> None:
        self._err.write(mask_sas(json.dumps(record, ensure_ascii=False)) + "\n")
        self._err.flush()

    def close(self) -> None:
        self._out.close()
        self._err.close()


def _upload_failure(exc: TransferError | OSError, pattern: str, path: Path) -> FailureInfo:
    where = (("FilePattern", pattern), ("FilePath", str(path)))
    if isinstance(exc, OSError):
        return FailureInfo(
            "servererror",
            "FileUploadMiscError",
            "Miscellaneous error encountered while attempting to upload an output file",
            (*where, ("Reason", str(exc))),
        )
    category, code, message = {
        "access_denied": (
            "usererror",
            "FileUploadAccessDenied",
            "Access to one of the specified Azure container(s) was denied while attempting to upload an output file",
        ),
        "not_found": (
            "usererror",
            "FileUploadContainerNotFound",
            "One of the specified Azure container(s) was not found while attempting to upload an output file",
        ),
        "conflict": (
            "usererror",
            "FileUploadConflict",
            "A conflict was encountered while attempting to upload an output file",
        ),
        "timed_out": (
            "servererror",
            "FileUploadTimedOut",
            "A timeout was encountered while attempting to upload an output file",
        ),
    }.get(
        exc.kind,
        (
            "servererror",
            "FileUploadMiscError",
            "Miscellaneous error encountered while attempting to upload an output file",
        ),
    )
    return FailureInfo(category, code, message, (*where, *exc.details()))


async def _upload_output_files(
    run: TaskRun, wd: Path, env: Mapping[str, str], http: aiohttp.ClientSession, *, succeeded: bool
) -> FailureInfo | None:
    """Upload the files each output file spec selects; return the first failure (all are attempted)."""
    first: FailureInfo | None = None
    upload_log = _UploadLog(run.task_dir)
    try:
        for output in run.output_files:
            pattern = _expand(output.file_pattern, env)
            if not _condition_met(output.upload_condition, succeeded):
                upload_log.info(f"Skipping pattern {pattern}: upload condition {output.upload_condition} not met")
                continue
            upload_log.info(
                f"Uploading all files matching pattern {pattern} (original pattern {output.file_pattern}) "
                f"to {output.container_url}"
            )
            matched = 0
            for path, relative in await asyncio.to_thread(_matches, pattern, wd, run.task_dir):
                matched += 1
                url = _files.blob_url(output.container_url, _blob_name(output, pattern, relative))
                try:
                    digest = await _files.upload_file(http, path, url, headers=output.upload_headers)
                except (TransferError, OSError) as exc:
                    failure = _upload_failure(exc, output.file_pattern, path)
                    upload_log.info(f"Failed to upload {path} to {url}: {exc}")
                    upload_log.error(
                        {
                            "code": failure.code,
                            "user_error": failure.category == "usererror",
                            "pattern": output.file_pattern,
                            "file": str(path),
                            "destination": url,
                            "message": str(exc),
                        }
                    )
                    first = first or failure
                    continue
                upload_log.info(f"Uploaded {path} to {url} (Content-MD5 {digest})")
            if not matched:
                upload_log.info(f"No files matched pattern {pattern}")
    finally:
        upload_log.close()
    return first
