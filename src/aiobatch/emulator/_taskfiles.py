"""A task's directory as the task-file routes see it: what is listed, served and deleted, off the event loop.

A task is a local process that may leave anything in its directory, so the routes take nothing for granted:

- **Nothing blocks the event loop.** Every file-system call of the routes (stat, listing, open, read, delete)
  runs on :class:`FileWorkers`: a few threads of their own, each call with a time limit, so a slow or stuck
  file system answers ``OperationTimedOut`` instead of stalling every other request.
- **Only regular files and directories exist.** A FIFO, socket or device is the service's 404 ``FileNotFound``
  and is never listed. It is never opened either: opening a FIFO blocks until a writer comes, and a thread
  blocked in ``open()`` cannot be cancelled. A path is ``lstat``-ed first and a regular file opened with
  ``O_NONBLOCK | O_NOFOLLOW``, then its descriptor ``fstat``-ed, so that a file swapped in between is caught too.
- **Links stay inside.** The service's file list has no notion of a link (an entry is a file with properties or
  a directory), so a symbolic link is shown as what it stands for, and only when that lies inside the task
  directory: a link to a file there is listed and served as that file, a link to a directory there is listed
  as a directory but not descended into (its files are listed once, under their own path, and a link loop
  cannot make a listing endless). A link that leaves the task directory, dangles or loops is left out of
  listings and is not found, whatever path reaches it; nothing outside the task directory is ever read.
- **DELETE removes the entry the path names**: a link is unlinked, never its target; a directory is removed
  only with ``recursive`` (or when empty), and removing it never follows the links inside it. Entries the
  other routes do not show (a dangling link, a FIFO) can be deleted all the same, so a task's debris can be
  cleaned up.
- **A name that cannot be a file is not found**: a NUL byte, a name longer than the file system allows, or a
  path leading out of the task directory (``..``, absolute) is ``FileNotFound``, never a 500.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ._model import ServiceError

__all__ = [
    "FILE_THREADS",
    "FILE_TIMEOUT",
    "FileWorkers",
    "OpenedFile",
    "close",
    "delete",
    "is_task_dir",
    "list_files",
    "open_file",
    "read",
]

T = TypeVar("T")

#: Threads that run the task-file routes' file-system calls; more requests than this wait for a free one.
FILE_THREADS = 8
#: Seconds one file-system call (queueing included) may take before the request answers ``OperationTimedOut``.
FILE_TIMEOUT = 30.0


def not_found() -> ServiceError:
    """The service's answer for a task file that is not there."""
    return ServiceError(404, "FileNotFound", "The specified file does not exist.")


class FileWorkers:
    """Runs blocking file-system calls on a bounded pool of threads of their own, each call with a time limit.

    Threads of their own, not the event loop's default executor, so that a file system that hangs can hold
    up at most these threads, never the loop's other users (the scheduler's cleanup, DNS lookups).

    Args:
        threads: how many calls run at once; further calls queue.
        timeout: seconds a call may take, waiting for a thread included.
    """

    def __init__(self, *, threads: int = FILE_THREADS, timeout: float = FILE_TIMEOUT) -> None:
        self.timeout = timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="aiobatch-taskfiles")

    async def run(self, fn: Callable[..., T], *args: object, discard: Callable[[T], None] | None = None) -> T:
        """Return ``fn(*args)``, computed on a worker thread.

        Args:
            fn: the blocking call.
            args: its arguments.
            discard: releases a result nobody will receive (an open descriptor), should the caller give up
                (time limit, cancellation) while the call is still running.

        Raises:
            ServiceError: 500 ``OperationTimedOut`` when the call did not finish within the time limit.
        """
        future = self._executor.submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except BaseException as exc:
            future.cancel()  # still queued: it never runs
            if discard is not None:
                future.add_done_callback(lambda done: _discard(done, discard))
            if isinstance(exc, asyncio.TimeoutError):
                raise ServiceError(
                    500, "OperationTimedOut", "The operation could not be completed within the permitted time."
                ) from None
            raise

    def close(self) -> None:
        """Stop accepting calls; queued ones are dropped, running ones are not waited for."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _discard(done: concurrent.futures.Future[T], discard: Callable[[T], None]) -> None:
    if not done.cancelled() and done.exception() is None:
        discard(done.result())


# --- paths ----------------------------------------------------------------------------------------------------


def _within(path: str, root: str) -> bool:
    """Whether *path* is *root* or below it (both absolute and normalised)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def _named(root: Path, rel: str) -> str:
    """The path *rel* names below *root*, normalised as written (no link followed), or FileNotFound.

    ``..`` is taken as written, so ``wd/../x`` is ``x`` whatever ``wd`` is; a path that leaves *root* that
    way, names *root* itself, or holds a NUL byte is not a task file.
    """
    if not rel or "\x00" in rel:
        raise not_found()
    base = os.path.normpath(root)
    path = os.path.normpath(os.path.join(base, rel))
    if path == base or not _within(path, base):
        raise not_found()
    return path


def _os_error(exc: OSError) -> ServiceError:
    """A failed file-system call as the route's answer: permission problems say so, the rest is not found."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        # The service's node agent can read every file of a task; the emulator runs as its user and may not.
        # The code is the emulator's own: the service documents none for this.
        return ServiceError(403, "FileAccessDenied", "The emulator may not access the specified file.")
    # ENOENT, ENOTDIR, ENAMETOOLONG, ELOOP, ENXIO, EINVAL...: a name that is not (or cannot be) a file.
    return not_found()


def is_task_dir(path: Path) -> bool:
    """Whether *path* is a directory in its own right (a task that replaced it with a link gets no files)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


# --- reading ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenedFile:
    """A task file found for GET or HEAD: its status, and for a regular file's body, an open descriptor.

    Attributes:
        stat: the file's status (of the link's target, for a link).
        fd: a descriptor open for reading (GET of a regular file), else None; :func:`close` it.
    """

    stat: os.stat_result
    fd: int | None = None

    @property
    def is_dir(self) -> bool:
        """Whether this is a directory."""
        return stat.S_ISDIR(self.stat.st_mode)


def open_file(root: Path, rel: str, *, for_body: bool) -> OpenedFile:
    """Find the regular file or directory *rel* names below *root*; open a regular file when *for_body*.

    Blocking: run it on :class:`FileWorkers`.

    Raises:
        ServiceError: 404 ``FileNotFound`` for anything but a regular file or directory inside *root*
            (see the module's rules), 403 when the emulator may not read it.
    """
    path = _named(root, rel)
    try:
        # Every link on the way resolved; what they lead to must still be inside the task directory.
        real = os.path.realpath(path)
        real_root = os.path.realpath(root)
        if real == real_root or not _within(real, real_root):
            raise not_found()
        found = os.lstat(real)
        if stat.S_ISDIR(found.st_mode):
            return OpenedFile(found)
        if not stat.S_ISREG(found.st_mode):
            raise not_found()
        if not for_body:
            return OpenedFile(found)
        # O_NONBLOCK: should a FIFO have been swapped in since the lstat, open() returns instead of waiting for
        # a writer; O_NOFOLLOW: nor is a link swapped in followed. The fstat then checks what was opened.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error(exc) from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise not_found()
    except BaseException:
        os.close(fd)
        raise
    return OpenedFile(opened, fd)


def read(fd: int, offset: int, size: int) -> bytes:
    """Up to *size* bytes of an opened file from *offset* (blocking: run it on :class:`FileWorkers`)."""
    return os.pread(fd, size, offset)


def close(opened: OpenedFile) -> None:
    """Close what :func:`open_file` opened, if anything."""
    if opened.fd is not None:
        with contextlib.suppress(OSError):
            os.close(opened.fd)


# --- listing ------------------------------------------------------------------------------------------------


def list_files(root: Path, *, recursive: bool) -> list[tuple[str, os.stat_result | None]]:
    """List the task directory: ``(name relative to root, status or None for a directory)``, sorted by path.

    Regular files and directories only; links stand for what they point to inside *root*, are left out
    otherwise, and are never descended into (see the module's rules). Entries that vanish while the listing
    runs are left out. Blocking: run it on :class:`FileWorkers`.
    """
    real_root = os.path.realpath(root)
    entries: list[tuple[str, os.stat_result | None]] = []
    # An explicit stack: a tree a task made deep must not exhaust the interpreter's recursion limit.
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                children = list(it)
        except OSError:
            continue
        for entry in children:
            found = _entry_status(entry, real_root)
            if found is None:
                continue
            status, descend = found
            name = prefix + entry.name
            if stat.S_ISDIR(status.st_mode):
                entries.append((name, None))
                if recursive and descend:
                    stack.append((entry.path, name + "/"))
            else:
                entries.append((name, status))
    entries.sort(key=lambda e: e[0].split("/"))  # path order, as the names' components compare
    return entries


def _entry_status(entry: os.DirEntry[str], real_root: str) -> tuple[os.stat_result, bool] | None:
    """What a directory entry is shown as, and whether to descend into it; None to leave it out."""
    try:
        status = entry.stat(follow_symlinks=False)
        descend = True
        if stat.S_ISLNK(status.st_mode):
            target = os.path.realpath(entry.path)
            if not _within(target, real_root):
                return None
            status = os.stat(target)
            descend = False
    except OSError:  # vanished, dangling, a loop
        return None
    if stat.S_ISDIR(status.st_mode) or stat.S_ISREG(status.st_mode):
        return status, descend
    return None


# --- deleting -----------------------------------------------------------------------------------------------


def delete(root: Path, rel: str, *, recursive: bool) -> None:
    """Delete the entry *rel* names below *root*: a file or link is unlinked, a directory removed.

    Links on the way to the entry must stay inside *root*; the entry itself is never followed, so deleting a
    link leaves its target alone, and a recursive delete removes links inside the tree, not what they point
    to. Blocking: run it on :class:`FileWorkers`.

    Raises:
        ServiceError: 404 ``FileNotFound``; 409 ``DirectoryNotEmpty`` for a directory with entries and no
            *recursive*; 403 when the emulator may not delete it.
    """
    path = _named(root, rel)
    try:
        real_root = os.path.realpath(root)
        parent = os.path.realpath(os.path.dirname(path))
        if not _within(parent, real_root):
            raise not_found()
        entry = os.path.join(parent, os.path.basename(path))
        if entry == real_root:
            raise not_found()
        found = os.lstat(entry)
        if not stat.S_ISDIR(found.st_mode):
            os.unlink(entry)
        elif recursive:
            # rmtree removes links it meets rather than following them (and refuses a link as its top).
            shutil.rmtree(entry)
        else:
            try:
                os.rmdir(entry)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # The service documents the refusal, not its code; this one is the emulator's.
                raise ServiceError(
                    409, "DirectoryNotEmpty", "The specified directory is not empty; delete it with recursive=true."
                ) from None
    except OSError as exc:
        raise _os_error(exc) from None
