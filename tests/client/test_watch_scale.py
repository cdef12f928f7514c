"""A 10,000-task job watched to its end: one event per task, few requests, and the watcher's memory bounded.

The watch runs in a child process (this file, run as a script) so that its memory can be traced alone: the
emulator, and the client that completes the tasks, stay in the test's process, on the other core.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from aiobatch import TaskWatch
from aiobatch.emulator import Emulator

TOTAL = 10_000
JOB = "big"
WARM = "warm-up"
MiB = 1024 * 1024
#: What a finished watch may hold per task it reported: its lower-cased id in a set (~55 bytes a short str,
#: ~50 a set slot at this size). Measured: ~110 own, ~135 held in all. Keeping each event instead (with its
#: failure and explanation) measured ~670 own and ~950 held.
RETAINED_PER_TASK = 200
#: The watching process's heap above its start, at its highest: the ids, plus one page of 1,000 tasks as the
#: SDK parses it and the events made from it. Measured: ~5.6 MiB; ~13.3 MiB when every event is kept.
PEAK_LIMIT = 10 * MiB


def _task_id(i: int) -> str:
    return f"t{i:05d}"


async def _probe(endpoint: str, account: str, key: str) -> dict[str, int]:
    """Watch JOB to its end in this process; report events, requests and memory (the child's side)."""
    async with BatchClient(endpoint, AzureNamedKeyCredential(account, key)) as batch:
        # A first, small watch loads what watching loads once (the connection, SDK modules and deserialisers,
        # abc caches), so that what is traced below is what watching this job costs.
        async for _ in TaskWatch(batch, WARM, poll_interval=0.05, max_poll_interval=0.05):
            pass
        # One frame a block: deeper tracebacks make every allocation several times slower under tracemalloc,
        # and the figures below do not need them (see the test's docstring).
        tracemalloc.start(1)
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        print("ready", flush=True)  # the parent starts completing tasks now, so the watch sees them complete
        # Not a list of events or ids, which would measure the consumer: one byte per task says how often
        # each was reported.
        reported = bytearray(TOTAL)
        watch = TaskWatch(batch, JOB, poll_interval=0.2, max_poll_interval=1.0)  # no count: ends on the tasks
        async for event in watch:
            reported[int(event.task_id[1:])] += 1
        held, peak = tracemalloc.get_traced_memory()
        mine = tracemalloc.Filter(True, "*/aiobatch/_watch.py")
        own = sum(s.size for s in tracemalloc.take_snapshot().filter_traces([mine]).statistics("filename"))
        tracemalloc.stop()
        return {
            "events": watch.events,
            "completed": watch.completed,
            "once": reported.count(1),
            "requests": watch.requests,
            "own": own,
            "held": held - base,
            "peak": peak - base,
        }


async def _complete_all(batch: BatchClient, concurrency: int = 16) -> None:
    """Terminate every task of JOB: an active task completes at once, without running (~10,000 in 7 s)."""
    ids = iter(range(TOTAL))

    async def worker() -> None:
        for i in ids:
            await batch.terminate_task(JOB, _task_id(i))

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


@pytest.mark.anyio
async def test_ten_thousand_tasks_one_event_each_bounded_requests_and_memory(tmp_path: Path) -> None:
    """10,000 tasks complete over ~7 s while a watch that was given no count follows them to the end.

    Tasks complete by ``terminateTask`` (an active task completes at once, as ``TaskEnded``), not by running
    10,000 processes, which two cores cannot do in a test's time; the watcher sees the same wire either way.

    Memory is traced (tracemalloc) in the watching process only, after a first watch of a one-task job has
    loaded what is loaded once. With the watch ended but still referenced:

    * own: live blocks allocated on a line of ``_watch.py`` -- the ids it keeps to report each task once;
    * held: the whole process's traced heap above where it started -- whatever the watch keeps, wherever the
      allocation happened (the SDK's models, the dataclass ``__init__`` of an event);

    both must stay under `RETAINED_PER_TASK` bytes a task (2 MB at 10,000), a few times less than keeping the
    events would take. And *peak*, the process's heap at its highest above the start (a page in flight
    included), must stay under `PEAK_LIMIT`: the ids plus one page, not the job's tasks.
    """
    emulator = Emulator(workdir=tmp_path / "emulator")
    async with emulator, BatchClient(emulator.endpoint, emulator.credential) as batch:
        # No pool "later" exists: the tasks stay active until terminated, and no process runs.
        for job_id in (WARM, JOB):
            await batch.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id="later")))
        await batch.create_task(WARM, m.BatchTaskCreateOptions(id="t0", command_line="/bin/true"))
        await batch.terminate_task(WARM, "t0")
        for start in range(0, TOTAL, 100):
            chunk = [
                m.BatchTaskCreateOptions(id=_task_id(i), command_line="/bin/true") for i in range(start, start + 100)
            ]
            await batch.create_task_collection(JOB, m.BatchTaskGroup(task_values=chunk))

        key = emulator.credential.named_key
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            emulator.endpoint,
            key.name,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "AIOBATCH_PROBE_KEY": key.key},
        )
        try:
            assert child.stdout is not None
            with anyio.fail_after(30):
                assert await child.stdout.readline() == b"ready\n"
            started = time.monotonic()
            await _complete_all(batch)
            completing = time.monotonic() - started
            with anyio.fail_after(60):
                out, _ = await child.communicate()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        elapsed = time.monotonic() - started
    assert child.returncode == 0
    result = json.loads(out)
    print(f"completing {completing:.1f} s, watched in {elapsed:.1f} s: {result}")
    assert result["events"] == TOTAL == result["completed"] == result["once"]  # each task reported once
    assert result["requests"] < TOTAL / 50, result  # one counts request a poll, listings in pages of 1,000
    assert result["own"] < RETAINED_PER_TASK * TOTAL, result
    assert result["held"] < RETAINED_PER_TASK * TOTAL, result
    assert result["peak"] < PEAK_LIMIT, result


if __name__ == "__main__":
    report = asyncio.run(_probe(sys.argv[1], sys.argv[2], os.environ["AIOBATCH_PROBE_KEY"]))
    print(json.dumps(report))
