"""Task files a task made hostile: FIFOs, symbolic links, impossible names -- through the real ``BatchClient``.

A task is a local process that can leave anything in its directory. Whatever it leaves, the task-file routes
answer promptly (nothing they do can block the event loop that serves every other request), serve only regular
files and directories, never reach outside the task directory through a link, and answer a name that cannot be
a file with the service's 404 ``FileNotFound`` -- never a 500. (What a retry finds left by an earlier attempt --
resource files, output patterns -- is tested beside the rest of the runner, in ``test_runner.py``.)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from aiobatch.emulator import Emulator
from aiobatch.emulator._model import ServiceError
from aiobatch.emulator._taskfiles import FileWorkers

from .test_contract_aio import download, finished, ready_pool, sh

pytestmark = pytest.mark.anyio


@pytest.fixture
async def batch(batch_emulator: Emulator) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as client:
        yield client


async def run_task(batch: BatchClient, script: str, task_id: str = "t") -> None:
    """Run *script* (``sh -c``) as task *task_id* of job ``j`` on pool ``p`` (both made on first use)."""
    if not [p async for p in batch.list_pools()]:
        await ready_pool(batch, "p")
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    await batch.create_task("j", m.BatchTaskCreateOptions(id=task_id, command_line=sh(script)))
    task = await finished(batch, "j", task_id)
    assert task.execution_info is not None and task.execution_info.exit_code == 0, task.execution_info


def gone(path: Path) -> bool:
    """Whether nothing, not even a link, is at *path*."""
    return not os.path.lexists(path)


def code_of(error: HttpResponseError) -> str | None:
    return error.error.code if error.error is not None else None


class FifoWatchdog:
    """Frees anyone blocked reading a FIFO after *patience* seconds, and remembers having had to.

    Opening a FIFO for reading blocks until a writer opens it. Were the emulator to open one on its event loop,
    the test (which shares that loop) would hang for good; once *patience* is up, this thread keeps opening the
    write end -- which succeeds only while a reader is waiting -- so that such a failure shows as a failed
    assertion instead.
    """

    def __init__(self, fifo: Path, patience: float) -> None:
        self.fifo = fifo
        self.patience = patience
        self.had_to_free_a_reader = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        if self._stop.wait(self.patience):
            return
        while not self._stop.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody is reading
                self._stop.wait(0.05)
                continue
            self.had_to_free_a_reader = True
            os.close(fd)  # that reader sees the end of the file; go on freeing any others

    def __enter__(self) -> FifoWatchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _task_dir(emulator: Emulator, task_id: str = "t") -> Path:
    [found] = list(emulator.workdir.glob(f"**/workitems/j/job-1/{task_id}"))
    return found


# --- FIFOs and other non-regular files ----------------------------------------------------------------------


async def test_a_fifo_left_as_stderr_is_not_found_and_blocks_nothing(
    batch: BatchClient, batch_emulator: Emulator
) -> None:
    await run_task(batch, 'rm -f "$AZ_BATCH_TASK_DIR/stderr.txt" && mkfifo "$AZ_BATCH_TASK_DIR/stderr.txt" pipe')
    fifo = _task_dir(batch_emulator) / "stderr.txt"

    refused: list[int | None] = []
    pools_took: list[float] = []

    async def get_fifo() -> None:
        with pytest.raises(HttpResponseError) as caught:
            await download(batch, "j", "t", "stderr.txt")
        # (A streamed download leaves the error body unread: the status is all the SDK shows.)
        refused.append(caught.value.status_code)

    async def list_pools() -> None:
        started = time.monotonic()
        assert [p.id async for p in batch.list_pools()] == ["p"]
        pools_took.append(time.monotonic() - started)

    # The FIFO asked for, and another request sent while that one is in flight.
    with FifoWatchdog(fifo, patience=5.0) as watchdog, anyio.fail_after(30):
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(get_fifo)
            tg.start_soon(list_pools)
        elapsed = time.monotonic() - started
    assert not watchdog.had_to_free_a_reader, "the emulator blocked opening the FIFO"
    assert elapsed < 4.0 and pools_took[0] < 4.0
    assert refused == [404]

    # HEAD (get_task_file_properties, what stderr_tail asks first) refuses it the same way, and so does a FIFO
    # anywhere else; listings leave them out.
    for name in ("stderr.txt", "wd/pipe"):
        with FifoWatchdog(_task_dir(batch_emulator) / name, patience=5.0) as watchdog:
            with pytest.raises(ResourceNotFoundError):
                await batch.get_task_file_properties("j", "t", name)
            with pytest.raises(ResourceNotFoundError):
                await download(batch, "j", "t", name)
        assert not watchdog.had_to_free_a_reader
    names = {f.name async for f in batch.list_task_files("j", "t", recursive=True)}
    assert "stderr.txt" not in names and "wd/pipe" not in names and "stdout.txt" in names
    # The server still answers at once.
    with anyio.fail_after(4):
        assert (await batch.get_task("j", "t")).id == "t"


async def test_many_fifo_requests_at_once_do_not_starve_the_service(
    batch: BatchClient, batch_emulator: Emulator
) -> None:
    await run_task(batch, "mkfifo pipe")
    with FifoWatchdog(_task_dir(batch_emulator) / "wd" / "pipe", patience=5.0) as watchdog, anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(40):  # more than the file workers' threads

                async def refused() -> None:
                    with pytest.raises(ResourceNotFoundError):
                        await download(batch, "j", "t", "wd/pipe")

                tg.start_soon(refused)
        started = time.monotonic()
        assert (await batch.get_task("j", "t")).id == "t"
        assert time.monotonic() - started < 4.0
    assert not watchdog.had_to_free_a_reader


# --- symbolic links -----------------------------------------------------------------------------------------


async def test_listing_leaves_out_links_that_leave_the_task_directory(batch: BatchClient) -> None:
    await run_task(batch, "ln -s /etc/passwd passwd && ln -s /etc etc && ln -s ../../.. up")
    files = {f.name: f async for f in batch.list_task_files("j", "t", recursive=True)}
    assert "wd" in files and "stdout.txt" in files
    assert not {"wd/passwd", "wd/etc", "wd/up"} & set(files), "a link out of the task directory was listed"
    assert not [name for name in files if str(name).startswith(("wd/etc/", "wd/up/"))]
    with pytest.raises(ResourceNotFoundError):
        await download(batch, "j", "t", "wd/passwd")
    with pytest.raises(ResourceNotFoundError):
        await download(batch, "j", "t", "wd/etc/passwd")


async def test_a_dangling_or_looping_link_does_not_break_the_listing(batch: BatchClient) -> None:
    await run_task(batch, "ln -s /nonexistent/x dangling && ln -s loop loop && echo kept > kept.txt")
    for recursive in (True, False):
        names = {f.name async for f in batch.list_task_files("j", "t", recursive=recursive)}
        assert "wd/dangling" not in names and "wd/loop" not in names
    assert "wd/kept.txt" in {f.name async for f in batch.list_task_files("j", "t", recursive=True)}
    for name in ("wd/dangling", "wd/loop", "wd/loop/x"):
        with pytest.raises(ResourceNotFoundError):
            await batch.get_task_file_properties("j", "t", name)


async def test_a_link_inside_the_task_directory_stands_for_its_target(batch: BatchClient) -> None:
    await run_task(batch, "echo hello; mkdir d && echo x > d/f.txt && ln -s ../stdout.txt out && ln -s d dlink")
    files = {f.name: f async for f in batch.list_task_files("j", "t", recursive=True)}
    assert files["wd/out"].is_directory is False and files["wd/out"].properties is not None
    assert files["wd/out"].properties.content_length == len(b"hello\n")
    assert files["wd/dlink"].is_directory is True
    # A linked directory is not descended into: its files are listed once, under their own path.
    assert "wd/d/f.txt" in files and not [name for name in files if str(name).startswith("wd/dlink/")]
    assert await download(batch, "j", "t", "wd/out") == b"hello\n"
    assert await download(batch, "j", "t", "wd/dlink/f.txt") == b"x\n"


async def test_deleting_a_link_removes_the_link_not_its_target(
    batch: BatchClient, batch_emulator: Emulator, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    await run_task(
        batch,
        "echo keep > ../keep.txt && mkdir ../keepdir && echo k > ../keepdir/k.txt"
        " && ln -s ../keep.txt link && ln -s ../keepdir dirlink"
        f" && ln -s {outside / 'precious.txt'} outlink && ln -s {outside} outdir",
    )
    root = _task_dir(batch_emulator)
    await batch.delete_task_file("j", "t", "wd/link")
    await batch.delete_task_file("j", "t", "wd/dirlink", recursive=True)
    await batch.delete_task_file("j", "t", "wd/outlink")
    await batch.delete_task_file("j", "t", "wd/outdir", recursive=True)
    for name in ("link", "dirlink", "outlink", "outdir"):
        assert gone(root / "wd" / name), name
    assert (root / "keep.txt").read_text() == "keep\n"
    assert (root / "keepdir" / "k.txt").read_text() == "k\n"
    assert (outside / "precious.txt").read_text() == "keep me"


async def test_recursive_delete_of_a_directory_does_not_follow_links_out(
    batch: BatchClient, batch_emulator: Emulator, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    await run_task(batch, f"mkdir d && ln -s {outside} d/out && ln -s {outside}/precious.txt d/p")
    await batch.delete_task_file("j", "t", "wd/d", recursive=True)
    assert gone(_task_dir(batch_emulator) / "wd" / "d")
    assert (outside / "precious.txt").read_text() == "keep me"


# --- names that cannot be files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a\x00b", "wd/\x00", "x" * 5000, "wd/" + ("x" * 200 + "/") * 21 + "f", "../../etc/passwd", "/etc/passwd", "wd/.."],
    # 5000 characters is more than a name may have (255), 4,400 more than a path may (4,096).
    ids=["nul", "nul-segment", "5000-chars", "4400-chars", "dot-dot", "absolute", "root-via-dot-dot"],
)
async def test_a_name_that_cannot_be_a_task_file_is_not_found(batch: BatchClient, name: str) -> None:
    await run_task(batch, "echo hi")
    with pytest.raises(ResourceNotFoundError):
        await download(batch, "j", "t", name)
    with pytest.raises(ResourceNotFoundError):
        await batch.get_task_file_properties("j", "t", name)
    with pytest.raises(ResourceNotFoundError) as deleted:
        await batch.delete_task_file("j", "t", name, recursive=True)
    assert code_of(deleted.value) == "FileNotFound"
    assert "stdout.txt" in {f.name async for f in batch.list_task_files("j", "t")}


@pytest.mark.parametrize("wanted", ["bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=-5", "lines=1-2"])
async def test_an_impossible_byte_range_is_a_400(batch: BatchClient, wanted: str) -> None:
    await run_task(batch, "echo hi")
    with pytest.raises(HttpResponseError) as bad:
        await batch.download_task_file("j", "t", "stdout.txt", ocp_range=wanted)
    assert bad.value.status_code == 400


# --- the workers' bounds ------------------------------------------------------------------------------------


async def test_a_stuck_file_call_answers_operation_timed_out_and_its_late_result_is_released() -> None:
    workers = FileWorkers(threads=1, timeout=0.2)
    release = threading.Event()
    released: list[int] = []
    try:
        with pytest.raises(ServiceError) as stuck:
            await workers.run(lambda: release.wait(10) and 7, discard=released.append)
        assert (stuck.value.status, stuck.value.code) == (500, "OperationTimedOut")
        # The only thread is still busy: a call queued behind it times out as well, and never runs.
        ran: list[bool] = []
        with pytest.raises(ServiceError):
            await workers.run(lambda: ran.append(True))
        release.set()
        with anyio.fail_after(5):
            while not released:  # the stuck call's result reaches `discard` once it finally comes
                await anyio.sleep(0.01)
        assert released == [7] and ran == []
        assert await workers.run(lambda: 42) == 42
    finally:
        workers.close()
