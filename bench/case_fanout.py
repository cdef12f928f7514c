"""The fan-out layer: `Client.map_files` against the same work composed by hand from the client's public coroutines.

Both variants count the words of *inputs* small text files, one task each (``wc -w``), on a fresh pool of
`NODES` nodes x `SLOTS` slots on the emulator, with Azurite for blobs, and end with every count on disk under its
own name. By hand means what a careful user writes with the public API: `upload_files`, `ensure_pool`,
`wait_for_pool_ready`, `create_job`, `output_container_sas_url` and `input_sas_url` for the task specs,
`submit_tasks`, `watch_tasks`, and `download_outputs` for each task's output as its event comes (at most 8 at once,
as `map_files` does by default), each output moved into place under its input's name.

Measured per variant and round, from the first call to the last output on disk (the client's opening and its
cleanup are outside): the wall time, and the HTTP requests the client sent to Batch and to Blob Storage. Requests
are counted in the client's process, at aiohttp's ``ClientSession._request`` (every SDK request, every retry,
passes there once), and told apart by the port they went to. The two variants run back to back in each round,
which one first alternating; each round uses its own pool, job and containers, so neither finds the other's
blobs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import anyio.to_thread

from aiobatch import (
    BatchSettings,
    Client,
    PoolSpec,
    StorageSettings,
    TaskEvent,
    TaskSpec,
    command_line,
    output_files_to,
    resource_file,
    task_ids_for,
)
from aiobatch._azurite import AzuriteServer

from ._harness import CaseResult, EmulatorProcess, Series, Target, fmt, log, median, paired_ratio

NODES, SLOTS = 4, 4
COMMAND = "wc -w < {input} > {output}"
VARIANTS = ("map_files", "by hand")


def make_texts(folder: Path, count: int) -> list[Path]:
    """*count* small text files (100-400 bytes), with spaces in their names; reused when already there."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"text {i:04d}.txt"
        if not path.is_file():
            path.write_text(" ".join(f"word{j}" for j in range(10 + i % 40)) + "\n")
        files.append(path)
    return files


class RequestCounter:
    """Counts the HTTP requests this process sends through aiohttp, by ``host:port``, while it is active."""

    def __init__(self) -> None:
        self.by_host: Counter[str] = Counter()
        #: (perf_counter, host, +1 or -1) as each request starts and ends: how many were in flight, when.
        self.changes: list[tuple[float, str, int]] = []

    @contextlib.contextmanager
    def active(self) -> Iterator[RequestCounter]:
        """Count inside the block (a patch of ``aiohttp.ClientSession._request``, undone on the way out)."""
        original = aiohttp.ClientSession._request
        counter = self

        async def counting(session: aiohttp.ClientSession, method: str, str_or_url: Any, **kwargs: Any) -> Any:
            parts = urlsplit(str(str_or_url))
            host = f"{parts.hostname}:{parts.port}"
            counter.by_host[host] += 1
            counter.changes.append((time.perf_counter(), host, 1))
            try:
                return await original(session, method, str_or_url, **kwargs)
            finally:
                counter.changes.append((time.perf_counter(), host, -1))

        aiohttp.ClientSession._request = counting  # type: ignore[method-assign]
        try:
            yield self
        finally:
            aiohttp.ClientSession._request = original  # type: ignore[method-assign]

    def mean_in_flight(self, url: str, start: float, end: float) -> float:
        """Requests to *url*'s host in flight on average (time-weighted) from *start* to *end* (perf_counter)."""
        parts = urlsplit(url)
        host = f"{parts.hostname}:{parts.port}"
        level, last, area = 0, start, 0.0
        for when, _host, step in sorted(c for c in self.changes if c[1] == host):
            if when > start:
                area += level * (min(when, end) - last)
                last = min(when, end)
            level += step
        area += level * max(0.0, end - last)
        return area / (end - start) if end > start else float("nan")

    def of(self, url: str) -> int:
        """Requests sent to the host and port of *url*."""
        parts = urlsplit(url)
        return self.by_host[f"{parts.hostname}:{parts.port}"]


async def with_map_files(client: Client, texts: Path, out: Path, pool: PoolSpec, tag: str) -> int:
    """The layer: one call. Returns how many inputs have their count."""
    report = await client.map_files(
        texts,
        COMMAND,
        "{stem}.count",
        pool=pool,
        output_dir=out,
        job_id=f"job-{tag}",
        input_container=f"in-{tag}",
        output_container=f"out-{tag}",
    )
    assert report.ok, [r.error for r in report.results if not r.ok][:3]
    return report.succeeded


async def by_hand(client: Client, texts: Path, out: Path, pool: PoolSpec, tag: str) -> int:
    """The same work from the public coroutines, as a careful user composes it. Returns how many counts it wrote."""
    files = await anyio.to_thread.run_sync(lambda: sorted(p for p in texts.iterdir() if p.is_file()))
    names = [p.name for p in files]
    job_id, inputs, outputs = f"job-{tag}", f"in-{tag}", f"out-{tag}"
    await client.upload_files(inputs, files, blob_names=names)
    await client.ensure_pool(pool)
    await client.wait_for_pool_ready(pool.id, min_nodes=1)
    await client.create_job(job_id, pool_id=pool.id, on_all_tasks_complete="terminatejob")
    output_url = await client.output_container_sas_url(outputs)
    ids = task_ids_for(names)
    run = command_line(["/bin/bash", "-c", "wc -w < input.txt > output.txt"], os="linux", shell=False)
    specs = [
        TaskSpec(
            id=ids[name],
            command_line=run,
            resource_files=[resource_file(await client.input_sas_url(inputs, name), "input.txt")],
            output_files=[output_files_to(output_url, "output.txt", path=f"{job_id}/{ids[name]}/output.txt")],
        )
        for name in names
    ]
    (await client.submit_tasks(job_id, specs)).raise_for_failures()
    name_of = {task_id.lower(): name for name, task_id in ids.items()}
    staging = out / ".staging"
    limiter = anyio.CapacityLimiter(8)
    written = 0

    async def fetch(event: TaskEvent) -> None:
        nonlocal written
        assert event.succeeded, event.explanation
        blob = f"{job_id}/{event.task_id}/output.txt"
        async with limiter:
            await client.download_outputs(outputs, staging, names=[blob])
        name = name_of[event.task_id.lower()]
        final = out / (name.removesuffix(".txt") + ".count")
        await anyio.to_thread.run_sync(os.replace, staging.joinpath(*blob.split("/")), final)
        written += 1

    await anyio.to_thread.run_sync(lambda: out.mkdir(parents=True, exist_ok=True))
    async with anyio.create_task_group() as tg:
        async for event in client.watch_tasks(job_id):
            tg.start_soon(fetch, event)
    shutil.rmtree(staging, ignore_errors=True)
    return written


Variant = Callable[[Client, Path, Path, PoolSpec, str], Awaitable[int]]


def _time_submission(client: Client) -> list[float]:
    """Note when `submit_tasks` returns (the same wrapper for both variants; the list gets the time)."""
    when: list[float] = []
    submit = client.submit_tasks

    async def timed(*args: Any, **kwargs: Any) -> Any:
        result = await submit(*args, **kwargs)
        when.append(time.perf_counter())
        return result

    client.submit_tasks = timed  # type: ignore[method-assign]
    return when


async def _one(
    emu: EmulatorProcess, azurite: AzuriteServer, variant: Variant, texts: Path, out: Path, tag: str, count: int
) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    batch = BatchSettings(emu.endpoint, account_name=emu.account_name, account_key=emu.account_key)
    storage = StorageSettings(connection_string=azurite.connection_string)
    pool = PoolSpec.ubuntu_24_04(f"pool-{tag}", dedicated_nodes=NODES, task_slots_per_node=SLOTS)
    counter = RequestCounter()
    async with Client(batch, storage, cleanup=True) as client:
        submitted = _time_submission(client)
        cpu0 = time.process_time()
        with counter.active():
            started, started_wall = time.perf_counter(), time.time()
            done = await variant(client, texts, out, pool, tag)
            seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        # Where the time went: the tasks' own span, from the service, in wall-clock time as the emulator keeps it.
        spans = [
            (t.execution_info.start_time.timestamp(), t.execution_info.end_time.timestamp())
            async for t in client.batch.list_tasks(f"job-{tag}", select=["id", "executionInfo"])
            if t.execution_info is not None and t.execution_info.start_time and t.execution_info.end_time
        ]
    assert done == count, f"{tag}: {done} of {count} counts"
    assert await anyio.to_thread.run_sync(lambda: len(list(out.glob("*.count")))) == count
    first_start, last_end = min(a for a, _ in spans), max(b for _, b in spans)
    return {
        "seconds": seconds,
        "setup": submitted[0] - started if submitted else float("nan"),
        "to_first_task": first_start - started_wall,
        "service_span": last_end - first_start,
        "after_last_task": started_wall + seconds - last_end,
        # How many storage requests were in flight on average once the tasks were in the job: the downloads.
        "storage_in_flight": counter.mean_in_flight(azurite.blob_endpoint, submitted[0], started + seconds)
        if submitted
        else float("nan"),
        "client_cpu": cpu,
        "batch_requests": counter.of(emu.endpoint),
        "storage_requests": counter.of(azurite.blob_endpoint),
        "requests": sum(counter.by_host.values()),
    }


async def run(work: Path, *, inputs: int, rounds: int) -> CaseResult:
    """Count the words of *inputs* files with each variant, *rounds* times."""
    texts = work / "texts"
    make_texts(texts, inputs)
    series: dict[str, dict[str, Series]] = {
        v: {k: Series(u) for k, u in (("seconds", "s"), ("requests", ""), ("batch", ""), ("storage", ""), ("cpu", "s"))}
        for v in VARIANTS
    }
    raw: list[dict[str, Any]] = []
    functions: dict[str, Variant] = {"map_files": with_map_files, "by hand": by_hand}
    with EmulatorProcess(work / "emulator") as emu:
        async with AzuriteServer() as azurite:
            for r in range(rounds):
                order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    tag = f"{'map' if variant == 'map_files' else 'hand'}-{r}"
                    log(f"fanout round {r + 1}/{rounds}: {variant}, {inputs} inputs")
                    result = await _one(emu, azurite, functions[variant], texts, work / f"out-{tag}", tag, inputs)
                    result.update({"variant": variant, "round": r})
                    raw.append(result)
                    s = series[variant]
                    s["seconds"].values.append(result["seconds"])
                    s["requests"].values.append(result["requests"])
                    s["batch"].values.append(result["batch_requests"])
                    s["storage"].values.append(result["storage_requests"])
                    s["cpu"].values.append(result["client_cpu"])
                    log(
                        f"  fanout: {variant} {result['seconds']:.1f} s, {result['requests']} requests "
                        f"({result['batch_requests']} Batch, {result['storage_requests']} Storage), "
                        f"client CPU {result['client_cpu']:.1f} s; setup {result['setup']:.1f} s, tasks' span "
                        f"{result['service_span']:.1f} s, last task end -> last output "
                        f"{result['after_last_task']:.2f} s; storage requests in flight after submission "
                        f"{result['storage_in_flight']:.2f}"
                    )
    time_ratio = paired_ratio(series["map_files"]["seconds"].values, series["by hand"]["seconds"].values)
    request_ratio = paired_ratio(series["map_files"]["requests"].values, series["by hand"]["requests"].values)
    cpu_ratio = paired_ratio(series["map_files"]["cpu"].values, series["by hand"]["cpu"].values)

    def phase(variant: str, key: str) -> float:
        return median([x[key] for x in raw if x["variant"] == variant])

    phases = "; ".join(
        f"{v}: setup (files to tasks in the job) {phase(v, 'setup'):.1f} s, the tasks' span on the service "
        f"{phase(v, 'service_span'):.1f} s, last task's end to last output on disk "
        f"{phase(v, 'after_last_task'):.2f} s, "
        f"storage requests in flight on average after submission {phase(v, 'storage_in_flight'):.2f}"
        for v in VARIANTS
    )
    rows = []
    for variant in VARIANTS:
        s = series[variant]
        mine = variant == "map_files"
        rows.append(
            [
                variant,
                fmt(s["seconds"].median, 1),
                s["seconds"].spread(1),
                f"{time_ratio:.2f}x" if mine else "1.00x",
                fmt(s["requests"].median),
                f"{fmt(s['batch'].median)} / {fmt(s['storage'].median)}",
                f"{request_ratio:.3f}x" if mine else "1.000x",
                fmt(s["cpu"].median, 1),
            ]
        )
    targets = [
        Target(
            "Fan-out: map_files vs by hand, time",
            "≤ 1.05x",
            f"{time_ratio:.2f}x ({series['map_files']['seconds'].median:.1f} s vs "
            f"{series['by hand']['seconds'].median:.1f} s)",
            time_ratio <= 1.05,
        ),
        Target(
            "Fan-out: map_files vs by hand, requests",
            "≤ 1.05x",
            f"{request_ratio:.3f}x ({fmt(series['map_files']['requests'].median)} vs "
            f"{fmt(series['by hand']['requests'].median)})",
            request_ratio <= 1.05,
        ),
    ]
    notes = [
        f"{inputs} text files of 100-400 bytes, `{COMMAND}` on a pool of {NODES} nodes x {SLOTS} slots created by "
        f"each run; {rounds} round(s), the variants back to back in each (which goes first alternates); ratios are "
        "the medians of each round's ratio.",
        "By hand: upload_files, ensure_pool, wait_for_pool_ready, create_job, a SAS URL per input, submit_tasks, "
        "watch_tasks, and download_outputs per completed task (8 at once), each output renamed into place.",
        "Requests are every HTTP request the client process sent (retries included) from the first call to the last "
        f"output on disk, counted at aiohttp; client CPU over the same span: map_files {cpu_ratio:.2f}x by hand.",
        f"Where the time went (medians): {phases}. The tasks' span is the emulator's pace on this machine's cores, "
        "shared with everything else running; the layer's own cost shows in the setup and in the time after the "
        "last task.",
    ]
    return CaseResult(
        case="fanout",
        title=f"The fan-out layer: map_files vs by hand, {inputs:,} inputs",
        headers=[
            "Variant",
            "seconds (median)",
            "range",
            "vs by hand",
            "requests",
            "Batch / Storage",
            "vs by hand",
            "client CPU s",
        ],
        rows=rows,
        targets=targets,
        notes=notes,
        params={"inputs": inputs, "rounds": rounds, "nodes": NODES, "slots": SLOTS},
        raw={"runs": raw},
    )
