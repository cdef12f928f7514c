"""The fan-out: one command over many local files, one Batch task per file, one result per file as it completes.

`Client.map_files` returns a `FileMap`. It composes the client's public coroutines in the order the data flows --
files -> blobs (`upload_files`, identical blobs skipped) -> a usable pool (`ensure_pool`, `wait_for_pool_ready`) ->
a job (`create_job`) -> task specs (`input_sas_url`, `output_container_sas_url`, `submit_tasks`) -> completion
events (`watch_tasks`) -> outputs (`download_outputs`) -- and hands back a `FileResult` per input.

This module is the run. Around it: the options (`_mapoptions`), the command template and the names on the node
(`_template`), the plan and the task specs (`_mapplan`), the results and the report (`_mapresults`), and the
observer (`_observer`).

Iteration. `FileMap` is a plain async iterator, not a generator: every step runs inside ``__anext__``, and no
task group stays open between two results. While tasks run, one step watches for completions and downloads
the outputs of those that completed (several at once); it returns as soon as some results are ready, stopping
the watch between polls. Leaving ``async with`` (or `FileMap.aclose`) terminates the job, as does a cancellation
or an error inside an iteration. A plain ``break`` drops the `FileMap` handle; all the run's state lives in a
private `_MapRun` that never refers back to it, so the handle is freed at once and its finalizer schedules the
stop on the running loop (as asyncio does for a dropped async generator), which `Client.aclose` awaits. What the
run created -- containers, pool, job -- is the client's to delete (``Client(cleanup=True)``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._errors import AiobatchError, ConfigurationError, ConflictError, NotFoundError
from ._mapoptions import DEFAULT_INPUT_CONTAINER, DEFAULT_OUTPUT_CONTAINER, MapOptions
from ._mapplan import MapPlan, build_task_specs, largest_first, output_blob, plan_inputs
from ._mapresults import FileResult, MapReport, tail_lines
from ._observer import MapObserver
from ._pools import get_pool_status
from ._retry import call
from ._specs import AppPackageRef, OsFamily, PoolSpec, check_id
from ._storage import _unwrapped_task_group
from ._template import OUTPUT_PLACEHOLDERS, PLACEHOLDERS, OutputName, node_output_names, parse_template
from ._watch import TaskEvent, TaskWatch, _explain

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # a dependency below Python 3.11 (pyproject.toml)
    from typing_extensions import Unpack

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["FileMap", "wait_for_dropped"]

logger = logging.getLogger("aiobatch")

#: Seconds the job's termination may take when the iteration is abandoned (break + aclose, cancel, error).
_ABANDON_TIMEOUT = 30.0
#: A round of downloads ends once this many times ``download_concurrency`` results wait for the caller: the
#: downloads stay that many in flight meanwhile, and results still reach the caller in bounded batches.
_RESULTS_PER_ROUND = 4


#: How many fan-outs each client has started: the second one in a run gets job id ``map-<run id>-2``.
_STARTED: weakref.WeakKeyDictionary[Client, int] = weakref.WeakKeyDictionary()


def _default_job_id(client: Client) -> str:
    count = _STARTED.get(client, 0) + 1
    _STARTED[client] = count
    tail = "" if count == 1 else f"-{count}"
    return f"map-{client.run_id}"[: 64 - len(tail)] + tail


async def _pool_os(client: Client, pool_id: str) -> OsFamily:
    """The OS of an existing pool, from its node agent (``batch.node.windows ...`` is Windows)."""
    pool = await call(
        lambda: client.batch.get_pool(pool_id, select=["id", "virtualMachineConfiguration"]),
        policy=client.retry_policy,
        resource="pool",
        resource_id=pool_id,
    )
    config = pool.virtual_machine_configuration
    agent = (config.node_agent_sku_id or "") if config is not None else ""
    return "windows" if agent.lower().startswith("batch.node.windows") else "linux"


def _same_package(ref: AppPackageRef, application_id: str | None, version: str | None) -> bool:
    # Application ids are case-insensitive in Batch; the version decides the AZ_BATCH_APP_PACKAGE_* variable a
    # command line reads, so it must match exactly (None: the application's default version).
    return (application_id or "").lower() == ref.application_id.lower() and (version or None) == ref.version


async def _check_packages(client: Client, spec: PoolSpec) -> None:
    """Refuse a reused pool that lacks an application package *spec* references: every task needing it would fail."""
    if not spec.application_packages:
        return
    existing = await call(
        lambda: client.batch.get_pool(spec.id, select=["id", "applicationPackageReferences"]),
        policy=client.retry_policy,
        resource="pool",
        resource_id=spec.id,
    )
    refs = [(r.application_id, r.version) for r in existing.application_package_references or []]
    for app in spec.application_packages:
        if any(_same_package(app, app_id, version) for app_id, version in refs):
            continue
        has = ", ".join(f"{a}" + (f" {v}" if v else " (default version)") for a, v in refs)
        wanted = app.version or "(default version)"
        raise ConfigurationError(
            f"pool {spec.id!r} lacks the {app.application_id} application package {wanted} (it has "
            f"{has or 'no application package'}), so every task would fail to find its program. Run without "
            "reusing it (choose another pool id, and a new pool with the package is created), or add the package "
            "to the pool's applicationPackageReferences (the pool's nodes must then be rebooted or re-created to "
            "install it).",
            setting="reuse_pool",
        )


def _move_into_place(staged: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)


class FileMap:
    """A fan-out in progress: an async iterator of `FileResult`, one per input, as each input ends.

    Build it with `Client.map_files` (the same arguments; the options are those of `MapOptions`). Use it in any
    of three ways::

        async for result in client.map_files(...):      # results as they come
            ...
        async with client.map_files(...) as run:         # the same; leaving the block early stops the job
            async for result in run: ...
        report = await client.map_files(...)             # run to the end, get the report

    Inputs whose outputs are all there come first (as ``"skipped"``); then, on the next iteration, the inputs are
    uploaded, the pool made ready, the job created and the tasks added; then each task's result comes as it
    completes, its outputs downloaded. Nothing runs between two results.

    Stopping early. Leaving an ``async with`` block, `aclose`, a cancellation or an error inside an iteration
    terminate the job at once. A plain ``break`` out of ``async for`` (no ``async with``) drops the fan-out
    unfinished; as asyncio does for an async generator dropped that way, its stop is then scheduled on the running
    loop, and `Client.aclose` (or leaving the client's ``async with``) waits for it before closing.

    Attributes:
        job_id: the job the tasks run in.
        pool_id: the pool.
    """

    def __init__(
        self,
        client: Client,
        inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        command: str,
        outputs: OutputName | Sequence[OutputName],
        *,
        pool: PoolSpec | str,
        output_dir: str | os.PathLike[str],
        **options: Unpack[MapOptions],
    ) -> None:
        # The handle holds the run; nothing the run holds (observer, watch, closures, tracebacks) refers back to
        # the handle, so a caller that drops it -- a plain `break` -- frees it at once, and the finalizer below
        # runs then, not whenever a garbage collection happens to find a cycle.
        run = _MapRun(client, inputs, command, outputs, pool=pool, output_dir=output_dir, **options)
        self._run = run
        self.job_id = run.job_id
        self.pool_id = run.pool_id
        finalizer = weakref.finalize(self, _stop_dropped, run)
        finalizer.atexit = False  # at interpreter exit there is no loop to stop it on; the client warns instead

    def __repr__(self) -> str:
        run = self._run
        return (
            f"FileMap(job_id={self.job_id!r}, pool_id={self.pool_id!r}, done={len(run.results)}, "
            f"finished={run.finished})"
        )

    @property
    def report(self) -> MapReport:
        """The report so far: every input's result once the iteration is exhausted (``report.complete``)."""
        return self._run.report

    async def run(self, on_result: Callable[[FileResult], object] | None = None) -> MapReport:
        """Run to the end and return the report; *on_result* is called with each result as it comes.

        Example:
            >>> async def main(client, pool):  # doctest: +SKIP
            ...     report = await client.map_files("texts", "wc -w < {input} > {output}", "{stem}.count",
            ...                                     pool=pool, output_dir="counts").run(on_result=print)
            ...     print(report)
        """
        async with self:
            async for result in self:
                if on_result is not None:
                    on_result(result)
        return self.report

    def __await__(self) -> Generator[Any, None, MapReport]:
        return self.run().__await__()

    async def __aenter__(self) -> FileMap:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: terminate the job if its tasks may still run, and end the iteration. Safe to call twice."""
        await self._run.stop()

    def __aiter__(self) -> FileMap:
        return self

    def __anext__(self) -> Coroutine[Any, Any, FileResult]:
        # The run's own coroutine: no frame of the handle's is left holding it while a step runs.
        return self._run.next()


#: Stops scheduled for fan-outs dropped unfinished, by client: held (so the loop does not lose them) until done,
#: and awaited by `Client.aclose` before it closes.
_DROPPED: weakref.WeakKeyDictionary[Client, set[asyncio.Task[None]]] = weakref.WeakKeyDictionary()


def _stop_dropped(run: _MapRun) -> None:
    """Schedule *run*'s stop on the running loop: its `FileMap` was dropped unfinished (a plain ``break``)."""
    if not run.needs_stop:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop in this thread (interpreter exit, another thread, not asyncio): the client's cleanup is left
    task = loop.create_task(run.stop_dropped(), name=f"aiobatch-stop-{run.job_id}")
    pending = _DROPPED.setdefault(run.client, set())
    pending.add(task)
    task.add_done_callback(pending.discard)


async def wait_for_dropped(client: Client) -> None:
    """Wait (shielded, bounded) for the stops of *client*'s fan-outs that were dropped unfinished."""
    pending = _DROPPED.get(client)
    if not pending:
        return
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + _ABANDON_TIMEOUT
        await asyncio.wait(set(pending))


class _MapRun:
    """A fan-out's state and work, behind its `FileMap` (which refers to this, never the other way round)."""

    def __init__(
        self,
        client: Client,
        inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        command: str,
        outputs: OutputName | Sequence[OutputName],
        *,
        pool: PoolSpec | str,
        output_dir: str | os.PathLike[str],
        **options: Unpack[MapOptions],
    ) -> None:
        unknown = sorted(set(options) - set(MapOptions.__annotations__))
        if unknown:
            raise TypeError(
                f"map_files() got an unexpected keyword argument {unknown[0]!r}; its options are those of "
                f"aiobatch.MapOptions: {', '.join(MapOptions.__annotations__)}"
            )
        self.client = client
        observer = options.get("observer")
        self._observer = observer or MapObserver()
        self._watch_running = observer is not None
        self._inputs = inputs if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        self._command = command
        self._output_names: tuple[OutputName, ...] = (
            (outputs,) if isinstance(outputs, str) or callable(outputs) else tuple(outputs)
        )
        # Templates are checked now, before anything is read or created.
        parse_template(command, PLACEHOLDERS, "command")
        for template in self._output_names:
            if not callable(template):
                parse_template(template, OUTPUT_PLACEHOLDERS, "output")
        self._pool = pool
        self.pool_id = check_id("pool", pool.id if isinstance(pool, PoolSpec) else pool)
        job_id = options.get("job_id")
        self.job_id = check_id("job", job_id) if job_id is not None else _default_job_id(client)
        self._output_dir = Path(output_dir)
        self._glob = options.get("glob")
        self._input_container = options.get("input_container", DEFAULT_INPUT_CONTAINER)
        self._output_container = options.get("output_container", DEFAULT_OUTPUT_CONTAINER)
        self._reuse_pool = options.get("reuse_pool", False)
        self._min_nodes = options.get("min_nodes", 1)
        self._pool_timeout = options.get("pool_timeout", 1800.0)
        self._packages = tuple(options.get("application_packages", ()))
        self._environment = dict(options.get("environment") or {})
        retries = options.get("retries", 0)
        timeout = options.get("timeout")
        upload_concurrency = options.get("upload_concurrency", 8)
        download_concurrency = options.get("download_concurrency", 8)
        if retries < -1:
            raise ConfigurationError("retries must be -1 (unlimited) or more.", setting="retries")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError("timeout must be positive seconds.", setting="timeout")
        if upload_concurrency < 1 or download_concurrency < 1:
            raise ConfigurationError("upload_concurrency and download_concurrency must be at least 1.")
        self._retries = retries
        self._timeout = timeout
        self._upload_concurrency = upload_concurrency
        self._download_concurrency = download_concurrency
        self._poll_interval = options.get("poll_interval", 1.0)
        self._staging = self._output_dir / f".aiobatch-{self.job_id}"

        self._started: float | None = None
        self._ended: float | None = None
        self._plan: MapPlan | None = None
        self._results: dict[str, FileResult] = {}
        self._ready: deque[FileResult] = deque()
        self._input_of: dict[str, str] = {}  # task id (lower case) -> input name
        self._task_of: dict[str, str] = {}  # input name -> task id
        self._job_created = False
        self._set_up = False
        self._watch: TaskWatch | None = None
        self._watch_done = False
        self._pending: deque[TaskEvent] = deque()
        self._finished = False
        self._complete = False

    @property
    def results(self) -> dict[str, FileResult]:
        """The results so far, by input name."""
        return self._results

    @property
    def finished(self) -> bool:
        """Whether the iteration is over (exhausted or stopped)."""
        return self._finished

    @property
    def needs_stop(self) -> bool:
        """Whether it started and has not ended: dropped now, its job (or staging folder) would be left behind."""
        return self._started is not None and not self._finished

    @property
    def report(self) -> MapReport:
        """The report so far."""
        order = list(self._plan.inputs) if self._plan is not None else []
        end = self._ended if self._ended is not None else time.monotonic()
        return MapReport(
            results=tuple(self._results[n] for n in order if n in self._results),
            run_id=self.client.run_id,
            job_id=self.job_id if self._job_created else None,
            pool_id=self.pool_id,
            elapsed=0.0 if self._started is None else end - self._started,
            complete=self._complete,
        )

    async def stop(self) -> None:
        """Terminate the job if its tasks may still run, and end the iteration. Safe to call twice."""
        if not self._finished:
            await self._abandon()

    async def stop_dropped(self) -> None:
        """`stop`, for a fan-out its caller dropped unfinished: never raises (nobody is there to catch it)."""
        try:
            if self.client.state == "open":
                await self.stop()
            elif not self._finished:  # a closed client ran its own cleanup; only the local staging folder is left
                self._finished = True
                await self._remove_staging()
        except Exception:
            logger.warning("could not stop job %s after its fan-out was left early", self.job_id, exc_info=True)

    async def _abandon(self) -> None:
        """Stop the job (shielded, bounded) and remove the staging folder; the iteration ends."""
        self._finished = True
        self._ended = self._ended or time.monotonic()
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _ABANDON_TIMEOUT
            if self._watch is not None:
                await self._watch.aclose()
            if self._job_created and not self._complete:
                try:
                    if await self.client.terminate_job(self.job_id):
                        logger.info("job %s terminated: the fan-out was stopped", self.job_id)
                except AiobatchError as exc:
                    logger.warning("could not terminate job %s: %s", self.job_id, exc)
            await self._remove_staging()

    async def _remove_staging(self) -> None:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self._staging, ignore_errors=True))

    # -- iteration ---------------------------------------------------------------------------------------

    async def next(self) -> FileResult:
        """The next result, stepping the run until one is ready."""
        while not self._ready:
            if self._finished:
                raise StopAsyncIteration
            try:
                await self._step()
            except BaseException:
                # Cancelled, or failed for good: no task of this run may go on running.
                await self._abandon()
                raise
        return self._ready.popleft()

    def _done(self, result: FileResult) -> None:
        self._results[result.name] = result
        self._ready.append(result)
        self._observer.result(result)

    async def _step(self) -> None:
        if self._plan is None:
            await self._make_plan()
        elif not self._set_up:
            await self._set_up_run()
        elif self._pending or not self._watch_done:
            await self._round()
        else:
            await self._finish()

    async def _make_plan(self) -> None:
        self._started = time.monotonic()
        plan = await anyio.to_thread.run_sync(
            functools.partial(plan_inputs, self._inputs, self._output_names, self._output_dir, glob=self._glob)
        )
        self._plan = plan
        for name in plan.present:
            local = tuple(self._output_dir.joinpath(*rel.split("/")) for rel in plan.outputs[name])
            self._done(FileResult(name, plan.inputs[name], "skipped", outputs=local))
        if not plan.todo:
            logger.info(
                "all %d inputs already have their outputs in %s; nothing to run", len(plan.present), self._output_dir
            )
            self._set_up = self._watch_done = True

    async def _set_up_run(self) -> None:
        plan, client = self._plan, self.client
        assert plan is not None
        # Files -> blobs.
        todo = list(plan.todo)
        observer = self._observer
        files = f"{len(todo)} file{'' if len(todo) == 1 else 's'}"
        observer.stage("upload", f"uploading {files} to container {self._input_container!r}", len(todo))
        observer.upload_started(len(todo), sum(plan.sizes[n] for n in todo))
        await client.upload_files(
            self._input_container,
            [plan.inputs[n] for n in todo],
            blob_names=todo,
            concurrency=self._upload_concurrency,
            progress=observer.upload_progress,
        )
        # A usable pool, and a job on it.
        if isinstance(self._pool, PoolSpec):
            size = f" ({self._pool.vm_size})"
            observer.stage("pool", f"making sure pool {self.pool_id!r} has a usable node{size}", 0)
            await self._ensure_pool(self._pool)
            os_family: OsFamily = self._pool.os
        else:
            observer.stage("pool", f"making sure pool {self.pool_id!r} has a usable node", 0)
            os_family = await _pool_os(client, self.pool_id)
        await self._wait_for_pool()
        await client.create_job(
            self.job_id,
            pool_id=self.pool_id,
            on_all_tasks_complete="terminatejob",
            display_name="aiobatch: map_files",
        )
        # This run's job (create_job refuses another's): from here on, stopping early terminates it. A create
        # cancelled before its answer added no task, so nothing can run there; the client's cleanup checks it.
        self._job_created = True
        # Blobs -> task specs -> Batch.
        output_url = await client.output_container_sas_url(self._output_container)
        urls = {name: await client.input_sas_url(self._input_container, name) for name in todo}
        specs = build_task_specs(
            plan,
            self._command,
            os=os_family,
            job_id=self.job_id,
            input_urls=urls,
            output_url=output_url,
            environment=self._environment,
            application_packages=self._packages,
            retries=self._retries,
            timeout=self._timeout,
        )
        names = {s.id: n for s, n in zip(specs, largest_first(plan.todo, plan.sizes), strict=True)}
        self._input_of = {task_id.lower(): name for task_id, name in names.items()}
        self._task_of = {name: task_id for task_id, name in names.items()}
        tasks = f"{len(specs)} task{'' if len(specs) == 1 else 's'}"
        observer.stage("submit", f"adding {tasks} to job {self.job_id!r}", len(specs))
        submitted = await client.submit_tasks(self.job_id, specs)
        for task_id, why in submitted.failed.items():
            name = names[task_id]
            self._done(FileResult(name, plan.inputs[name], "failed", task_id=task_id, error=f"not submitted: {why}"))
        in_job = [*submitted.added, *submitted.existing]
        observer.tasks_submitted({t: names[t] for t in in_job})
        self._set_up = True
        if in_job:
            observer.stage("run", f"running {len(in_job)} tasks on pool {self.pool_id!r}", len(in_job))
            self._watch = client.watch_tasks(
                self.job_id,
                expected=len(in_job),
                include_running=self._watch_running,
                poll_interval=self._poll_interval,
                max_poll_interval=15.0,
            )
        else:
            self._watch_done = True

    async def _ensure_pool(self, spec: PoolSpec) -> None:
        """Create the pool, or -- only when asked -- run on an existing one that has the spec's packages."""
        try:
            ref = await self.client.ensure_pool(spec, reuse_existing=self._reuse_pool)
        except ConflictError as exc:
            if exc.code != "PoolExists":
                raise
            raise ConfigurationError(
                f"pool {spec.id!r} already exists and this run did not create it. Choose another pool id, or pass "
                "reuse_pool=True to run on it as it is (it must reference the application packages the tasks "
                "need; it is not deleted afterwards).",
                setting="reuse_pool",
            ) from exc
        if ref.owned:  # created now, or by an earlier attempt of this same run: built from *spec*
            return
        text = f"reusing existing pool {spec.id!r} (not created by this run; it will be left as it is)"
        self._observer.stage("pool-reused", text, 0)
        await _check_packages(self.client, spec)

    async def _wait_for_pool(self) -> None:
        """`Client.wait_for_pool_ready`, with the pool's node states shown to the observer while it waits."""
        client, observer = self.client, self._observer

        async def show() -> None:
            while True:
                try:
                    observer.pool_status(await get_pool_status(client.batch, self.pool_id, policy=client.retry_policy))
                except AiobatchError as exc:  # the display only; the wait below reports real trouble
                    logger.debug("pool status for the display failed: %s", exc)
                await anyio.sleep(1.0)

        async with _unwrapped_task_group() as tg:
            if self._watch_running:
                tg.start_soon(show)
            status = await client.wait_for_pool_ready(
                self.pool_id,
                min_nodes=self._min_nodes,
                timeout=self._pool_timeout,
                poll_interval=min(self._poll_interval, 2.0),
            )
            tg.cancel_scope.cancel()
        observer.pool_status(status)

    async def _round(self) -> None:
        """Watch and download until results are ready for the caller; then stop the watch (between polls), return.

        While completed tasks wait, `download_concurrency` downloads stay in flight (a finished one makes room for
        the next, as a capacity limiter would), until the caller has a window of results waiting, or results are
        ready and nothing is left to download. Downloads in flight then finish; events not yet collected wait in
        `_pending` for the next round.
        """
        assert self._watch is not None
        watch = self._watch
        watcher = anyio.CancelScope()
        in_flight = 0
        stopping = False
        window = _RESULTS_PER_ROUND * self._download_concurrency

        def stop() -> None:
            nonlocal stopping
            stopping = True
            watcher.cancel()

        async def collect(event: TaskEvent) -> None:
            nonlocal in_flight
            try:
                self._done(await self._collect(event))
            finally:
                in_flight -= 1
            if len(self._ready) >= window:
                stop()  # enough for the caller: hand these over, the rest comes in the next round
            start_more()
            if in_flight == 0:
                stop()  # results are ready and nothing is downloading: hand them over now

        def start_more() -> None:
            nonlocal in_flight
            while not stopping and self._pending and in_flight < self._download_concurrency:
                in_flight += 1
                tg.start_soon(collect, self._pending.popleft())

        async def watch_events() -> None:
            with watcher:
                async for event in watch:
                    name = self._input_of.get(event.task_id.lower())
                    if name is None:
                        continue
                    self._observer.task_event(event, name)
                    if event.kind == "completed":
                        self._pending.append(event)
                        start_more()
                self._watch_done = True

        async with _unwrapped_task_group() as tg:
            start_more()
            if not self._watch_done and not stopping:
                tg.start_soon(watch_events)

    async def _collect(self, event: TaskEvent) -> FileResult:
        """An event's result: its outputs downloaded and moved into place, or why it failed."""
        plan = self._plan
        assert plan is not None
        name = self._input_of[event.task_id.lower()]
        base = FileResult(
            name,
            plan.inputs[name],
            "succeeded",
            task_id=event.task_id,
            exit_code=event.exit_code,
            node_id=event.node_id,
            start_time=event.start_time,
            end_time=event.end_time,
            event=event,
        )
        if not event.succeeded:
            try:
                tail = tail_lines(await event.stderr_tail(4096))
            except AiobatchError as exc:
                tail = f"(stderr could not be read: {exc})"
            # The event's explanation advises reading the stderr from the event; this result holds it already.
            advice = (
                "Read its stderr (result.stderr_tail holds the last lines) and fix the command line or its inputs."
                if tail
                else "It wrote nothing to stderr; check the command line and its inputs."
            )
            error = _explain(event.exit_code, event.failure, event.retry_count, event.end_time, advice=advice)
            return replace(base, status="failed", error=error, stderr_tail=tail)
        placed: list[Path] = []
        missing: list[str] = []
        pairs = list(zip(plan.outputs[name], node_output_names(plan.outputs[name]), strict=True))
        blobs = [output_blob(self.job_id, event.task_id, node) for _, node in pairs]
        try:
            # All of an input's outputs at once; only when one is missing, one by one to say which.
            await self._download(blobs)
            missing_blobs: set[str] = set()
        except NotFoundError:
            missing_blobs = set()
            for blob in blobs:
                try:
                    await self._download([blob])
                except NotFoundError:
                    missing_blobs.add(blob)
                except AiobatchError as exc:
                    return replace(base, status="failed", error=f"an output could not be downloaded: {exc}")
        except AiobatchError as exc:
            return replace(base, status="failed", error=f"an output could not be downloaded: {exc}")
        for (rel, _), blob in zip(pairs, blobs, strict=True):
            final = self._output_dir.joinpath(*rel.split("/"))
            if blob in missing_blobs:
                missing.append(rel)
                continue
            try:
                await anyio.to_thread.run_sync(_move_into_place, self._staging.joinpath(*blob.split("/")), final)
            except OSError as exc:
                return replace(
                    base,
                    status="failed",
                    outputs=tuple(placed),
                    error=f"output {rel!r} could not be put in place: {exc}",
                )
            placed.append(final)
        if missing:
            nodes = dict(zip(plan.outputs[name], node_output_names(plan.outputs[name]), strict=True))
            wrote = ", ".join(f"{rel!r} (on the node: {nodes[rel]})" for rel in missing)
            return replace(
                base,
                status="failed",
                outputs=tuple(placed),
                missing=tuple(missing),
                error=(
                    f"the command exited with code {event.exit_code} but did not write {wrote}. Write each output "
                    "to the name its placeholder gives ({output}, {outputs[N]}), in the task's working directory."
                ),
            )
        return replace(base, outputs=tuple(placed))

    async def _download(self, blobs: list[str]) -> None:
        await self.client.download_outputs(
            self._output_container,
            self._staging,
            names=blobs,
            concurrency=len(blobs),
            progress=self._observer.download_progress,
        )

    async def _finish(self) -> None:
        plan = self._plan
        assert plan is not None
        for name in plan.todo:
            if name not in self._results:  # the job ended (terminated by someone?) before this task completed
                task_id = self._task_of.get(name)
                self._done(
                    FileResult(
                        name,
                        plan.inputs[name],
                        "failed",
                        task_id=task_id,
                        error=f"job {self.job_id!r} ended before this input's task completed (was it terminated?)",
                    )
                )
        self._finished = self._complete = True
        self._ended = time.monotonic()
        await self._remove_staging()
        report = self.report
        logger.info("map_files: %s", report.summary())
        self._observer.finished(report)
