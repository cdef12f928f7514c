"""Slots on nodes, dispatch, retries, wall-clock limits, job completion actions and pool allocation.

One `Scheduler` drives an `Account`.  Handlers change the model and call it; it moves pools, nodes, jobs and
tasks through their states in background asyncio tasks and runs each task attempt through `_runner.run_task`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import random
import shutil
import stat
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import aiohttp

from . import _job_control
from ._autoscale import SAMPLE_PERIOD, AutoScaleRun
from ._autoscale_runs import PUBLISH_DELAY, RETENTION, PoolAutoScale, PoolCounts, SampleHistory
from ._clock import Clock
from ._containers import in_container, pull_images
from ._dispatch import FreeSlots, ReadyJobs
from ._faults import Faults
from ._jobprep import JobPrep
from ._model import (
    SCHEDULABLE_NODE_STATES,
    Account,
    AppPackageRef,
    Job,
    Node,
    Pool,
    ResizeError,
    ServiceError,
    StartTaskAttempt,
    Task,
    new_node_id,
    requeue_task,
    utcnow,
    vm_cores,
)
from ._nodes import DEFAULT_RESIZE_TIMEOUT, NodeOps
from ._retention import Retention
from ._runner import _wall_clock_failure, run_task
from ._simulate import Simulation
from ._support import unknown_user
from ._types import FailureInfo, TaskOutcome, TaskRun
from ._wire import app_package_env, parse_duration, task_user

log = logging.getLogger("aiobatch.emulator")

#: What a task terminated by the user (or with its job) reports.
TASK_ENDED = FailureInfo("usererror", "TaskEnded", "Task Was Ended by User Request")


#: The shortest allocation the emulator accepts: a pool's nodes never exist the moment it is created.
MIN_ALLOCATION_DELAY = 0.01

#: How long the service makes a pool wait between two ``enableautoscale`` requests (then 503
#: ``TooManyEnableAutoScaleRequests``, as its error-code table and the enable operation's documentation say).
ENABLE_AUTOSCALE_SPACING = dt.timedelta(seconds=30)


@dataclass
class Timings:
    """How long the emulated cloud takes for things a real one takes minutes for.

    Every delay is in seconds of the service's time: on an emulator whose clock runs N times faster
    (``clock_speed``), each becomes a real wait N times shorter.  `fast` (the default) keeps tests quick;
    `realistic` takes about as long as Azure does, for testing timeouts; `named` picks one by name.

    Attributes:
        allocation_delay: Seconds from a pool create or resize until its nodes exist; never instant, at least
            `MIN_ALLOCATION_DELAY`, so that code waiting for readiness really waits.
        node_start_delay: Seconds a node spends in ``creating`` and ``starting`` before it is usable (0 or more).
        deletion_delay: Seconds a pool or job stays in ``deleting`` (or a job in ``terminating``) (0 or more).
        node_recovery_delay: Seconds a preempted or unusable node takes to come back as a fresh node (0 or more).
        dispatch_delay: Seconds from a task being given a node's slot until its command starts (the service's
            scheduling and the node agent's launch; the task is ``running`` meanwhile) (0 or more).
        autoscale_interval_scale: What the service's autoscale timings are multiplied by (more than 0, at most 1):
            the wait between evaluations (``autoScaleEvaluationInterval``, at least 5 minutes), the 30-second
            sample period, the minute before a sample is published, the 24 hours of samples kept and the 30
            seconds between ``enableautoscale`` requests.  1 (the default) is the service's own pace; 0.01 runs a
            pool's 5-minute formula every 3 seconds on samples taken every 0.3 seconds.  The pool still reports
            the interval it was given, and the 5-minute minimum still applies to it.  Look-back windows written
            in a formula (``TimeInterval_Minute * 10``) are not scaled: they hold more samples than on Azure.

    Raises:
        ValueError: ``allocation_delay`` below `MIN_ALLOCATION_DELAY`, another delay negative (or not a number), or
            ``autoscale_interval_scale`` not in (0, 1].
    """

    allocation_delay: float = 0.5
    node_start_delay: float = 0.3
    deletion_delay: float = 0.1
    node_recovery_delay: float = 1.0
    autoscale_interval_scale: float = 1.0
    dispatch_delay: float = 0.0

    #: The profiles `named` knows.
    NAMES: ClassVar[tuple[str, ...]] = ("fast", "realistic")

    @classmethod
    def fast(cls) -> Timings:
        """The default profile: everything takes a fraction of a second, so that tests stay quick."""
        return cls()

    @classmethod
    def realistic(cls) -> Timings:
        """Delays about as long as Azure Batch's, for testing a client's timeouts and waits.

        Sources and assumptions (no recording times these, so they are typical values, not measurements):

        * allocation 120 s: the Batch documentation and the issue's target ("pool allocation about 2 minutes")
          put the allocation of a few VMs of a marketplace image at 2 minutes or more;
        * node start 60 s: after allocation a node spends about a minute in ``creating`` and ``starting``
          (VM boot and the node agent's start) before it is ``idle``;
        * dispatch 2 s: a task waits a second or a few between its slot being free and its process starting
          (the service's scheduling pass and the node agent's poll), more than the REST round trip;
        * deletion 60 s: pool and job deletes stay in ``deleting`` for a minute or more;
        * node recovery 300 s: a preempted Spot node is replaced by a freshly allocated and booted one.
        """
        return cls(
            allocation_delay=120.0,
            node_start_delay=60.0,
            deletion_delay=60.0,
            node_recovery_delay=300.0,
            dispatch_delay=2.0,
        )

    @classmethod
    def named(cls, name: str) -> Timings:
        """The profile called ``name`` (one of `NAMES`, case-insensitive).

        Raises:
            ValueError: an unknown name (the message lists the known ones).
        """
        key = name.strip().lower() if isinstance(name, str) else name
        if key == "fast":
            return cls.fast()
        if key == "realistic":
            return cls.realistic()
        raise ValueError(f"unknown timings profile {name!r}: use one of {', '.join(cls.NAMES)}")

    def __post_init__(self) -> None:
        scale = self.autoscale_interval_scale
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and 0 < scale <= 1):
            raise ValueError(f"Timings.autoscale_interval_scale must be more than 0 and at most 1, not {scale!r}")
        minimums = {
            "allocation_delay": MIN_ALLOCATION_DELAY,
            "node_start_delay": 0.0,
            "deletion_delay": 0.0,
            "node_recovery_delay": 0.0,
            "dispatch_delay": 0.0,
        }
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if not value >= minimum:  # written so that NaN is refused too
                why = " (allocation is never instant)" if name == "allocation_delay" else ""
                raise ValueError(f"Timings.{name} must be at least {minimum} seconds{why}, not {value}")


@dataclass
class Quotas:
    """Core quotas of the account; None means unlimited."""

    dedicated_cores: int | None = None
    low_priority_cores: int | None = None


class Scheduler:
    """Runs the account: allocation, dispatch of tasks to node slots, retries and completion actions."""

    def __init__(
        self,
        account: Account,
        *,
        workdir: Path,
        timings: Timings,
        quotas: Quotas,
        faults: Faults | None = None,
        passed_environment: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        simulation: Simulation | None = None,
        container_runtime: str | None = None,
    ) -> None:
        self.account = account
        #: The emulated service's clock (real time by default); `Emulator` makes it the current one.
        self.clock = clock if clock is not None else Clock()
        #: When set, tasks are simulated (`_simulate`): no processes, no task directories.
        self.simulation = simulation
        #: The container runtime container tasks run through (`_containers`); None refuses them (`_support`).
        self.container_runtime = container_runtime
        #: Variables of the emulator's environment its user asked tasks to see (`Emulator` ``pass_env``).
        self.passed_environment = dict(passed_environment or {})
        self.faults = faults or Faults()
        self.workdir = workdir
        self.timings = timings
        self.quotas = quotas
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._autoscaler: asyncio.Task[None] | None = None
        self._autoscale_failed: set[str] = set()
        self._http: aiohttp.ClientSession | None = None
        self._extracting: dict[tuple[str, str], asyncio.Task[Path]] = {}
        self._dispatch_failed: set[str] = set()
        #: Reboot, reimage, deallocation, removal and the other node operations (`_nodes`).
        self.nodes = NodeOps(self)
        #: Job preparation and release tasks (`_jobprep`).
        self.jobprep = JobPrep(self)
        #: Called with each job that has ended (completed, or deleted): job schedules learn of their jobs' end.
        self.job_end_listeners: list[Callable[[Job], None]] = []
        self._ready = ReadyJobs()
        self._free: dict[str, FreeSlots] = {}
        #: How many jobs dispatch polls looked at, in all (for benchmarks and tests: it must not grow with idle jobs).
        self.dispatch_touches = 0
        #: How many dispatch polls ran.
        self.dispatch_polls = 0
        self.retention = Retention(account, self.clock, self._remove_dirs)
        self._retainer: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self, *, connector: aiohttp.BaseConnector | None = None) -> None:
        """Start the dispatcher; nodes fetch and upload files through ``connector`` (aiohttp's default if None)."""
        self._http = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        )
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="emulator-dispatch")
        self._autoscaler = asyncio.create_task(self._autoscale_loop(), name="emulator-autoscale")
        self._retainer = asyncio.create_task(self.retention.run(), name="emulator-retention")

    async def stop(self) -> None:
        """Stop everything: running task processes are killed, background work cancelled."""
        tasks = [t for t in (self._dispatcher, self._autoscaler, self._retainer, *self._background) if t is not None]
        for job in self.account.jobs.values():
            tasks.extend(t.runner for t in job.tasks.values() if t.runner is not None)
        for pool in self.account.pools.values():
            if pool.allocation is not None:
                tasks.append(pool.allocation)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.jobprep.stop()
        if self._http is not None:
            await self._http.close()

    def kick(self) -> None:
        """Ask the dispatcher to look for work."""
        self._wake.set()

    def now(self) -> dt.datetime:
        """The emulated service's time (`clock`): every timestamp and every autoscale decision reads it."""
        return self.clock.now()

    def real_seconds(self, emulated: float) -> float:
        """How long to really wait for ``emulated`` seconds of the service's time.

        Every duration the API gives (a wall-clock limit, a schedule's recurrence, a retention time, an autoscale
        interval) and every `Timings` delay becomes a real wait through here: ``emulated / clock.speed``.
        """
        return self.clock.real_seconds(emulated)

    async def sleep(self, emulated: float) -> None:
        """Wait ``emulated`` seconds of the service's time."""
        await asyncio.sleep(self.real_seconds(emulated))

    async def _remove_dirs(self, paths: list[Path]) -> None:
        await asyncio.to_thread(_rmtree, paths)

    def spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        """Run ``coro`` in the background until it ends or the scheduler stops (a crash is logged)."""
        return self._spawn(coro, name)

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_crash)
        return task

    # -- pools ----------------------------------------------------------------------------------------------------

    def add_pool(self, pool: Pool) -> None:
        """Register a new pool and start allocating its nodes (sized by its formula first, if it autoscales)."""
        self.account.pools[pool.id.lower()] = pool
        self._free.pop(pool.id.lower(), None)
        pool.samples = self._sample_history(pool.creation_time)
        if pool.autoscale_request is not None:
            formula, interval = pool.autoscale_request
            now = self.now()
            pool.autoscale = self._pool_autoscale(pool, formula, interval, now)
            run = pool.autoscale.tick(now, self._counts(pool), record=False)
            if run is not None and run.error is None:
                pool.target_dedicated = run.target_dedicated_nodes
                pool.target_low_priority = run.target_low_priority_nodes
        self._start_allocation(pool)

    def _start_allocation(self, pool: Pool) -> None:
        if pool.allocation is not None:
            pool.allocation.cancel()
        pool.set_allocation_state("resizing")
        pool.resize_errors.clear()
        pool.allocation = asyncio.create_task(self._allocate(pool), name=f"allocate-{pool.id}")
        pool.allocation.add_done_callback(_log_crash)

    def resize_pool(
        self,
        pool: Pool,
        dedicated: int,
        low_priority: int,
        *,
        deallocation: str = "requeue",
        timeout: dt.timedelta = DEFAULT_RESIZE_TIMEOUT,
    ) -> None:
        """Change a pool's target node counts; nodes that go leave their tasks as ``deallocation`` says."""
        self.nodes.set_resize(pool, deallocation, timeout)
        pool.target_dedicated, pool.target_low_priority = dedicated, low_priority
        self._start_allocation(pool)

    # -- autoscale ------------------------------------------------------------------------------------------------

    def _sample_history(self, start: dt.datetime) -> SampleHistory:
        scale = self.timings.autoscale_interval_scale
        return SampleHistory(
            start, period=SAMPLE_PERIOD * scale, publish_delay=PUBLISH_DELAY * scale, retention=RETENTION * scale
        )

    def _pool_autoscale(
        self, pool: Pool, formula: str, interval: dt.timedelta | None, now: dt.datetime
    ) -> PoolAutoScale:
        assert pool.samples is not None, "the pool was added"
        return PoolAutoScale(
            formula,
            interval,
            now,
            pool.samples,
            random.Random(pool.id),  # repeatable rand() per pool
            scale=self.timings.autoscale_interval_scale,
        )

    def enable_autoscale(self, pool: Pool, formula: str | None, interval: dt.timedelta | None) -> None:
        """``enableautoscale``: start autoscale (``formula`` required) or change its formula and/or interval.

        The formula runs at once and its targets are applied; that run is not reported as the pool's
        ``autoScaleRun`` (see `_autoscale_runs`).

        Raises:
            ServiceError: 503 ``TooManyEnableAutoScaleRequests`` within 30 seconds (scaled) of the last enable.
            FormulaError: The formula or interval is refused (the caller checked both; nothing changed).
        """
        now = self.now()
        spacing = ENABLE_AUTOSCALE_SPACING * self.timings.autoscale_interval_scale
        if pool.autoscale_enabled_at is not None and now - pool.autoscale_enabled_at < spacing:
            raise ServiceError(
                503,
                "TooManyEnableAutoScaleRequests",
                "Too many Enable Pool AutoScale requests are issued on the pool.",
                [("Reason", f"Enable autoscale requests for a pool must be at least {spacing} apart.")],
            )
        if pool.autoscale is None:
            assert formula is not None, "enabling needs a formula (the handler checked)"
            pool.autoscale = self._pool_autoscale(pool, formula, interval, now)
        else:
            pool.autoscale.update(now, formula, interval)
        pool.autoscale_enabled_at = now
        self._apply_autoscale(pool, pool.autoscale.tick(now, self._counts(pool), record=False))

    def disable_autoscale(self, pool: Pool) -> None:
        """``disableautoscale``: the formula stops; the pool keeps its current targets."""
        pool.autoscale = None

    def evaluate_autoscale(self, pool: Pool, formula: str) -> AutoScaleRun:
        """``evaluateautoscale``: run ``formula`` against the pool now; nothing is applied or stored."""
        assert pool.autoscale is not None, "the handler checked"
        return pool.autoscale.evaluate(self.now(), self._counts(pool), formula)

    def autoscale_tick(self) -> None:
        """Sample and evaluate every autoscale pool that is due, applying each run's targets.

        Cheap when nothing is due: counts are built only for a pool with a sample or an evaluation due.
        """
        now = self.now()
        for pool in list(self.account.pools.values()):
            autoscale = pool.autoscale
            if autoscale is None or pool.state != "active" or not autoscale.due(now):
                continue
            # One pool's failure must not stop autoscale for the others: logged once per pool, the loop goes on.
            try:
                self._apply_autoscale(pool, autoscale.tick(now, self._counts(pool)))
            except Exception:
                if pool.id not in self._autoscale_failed:
                    self._autoscale_failed.add(pool.id)
                    log.exception("emulator: evaluating the autoscale formula of pool %r failed", pool.id)

    async def _autoscale_loop(self) -> None:
        # A few looks per sample period, at most one a second: a sample or an evaluation is never late by more.
        period = self.real_seconds(SAMPLE_PERIOD.total_seconds() * self.timings.autoscale_interval_scale)
        pause = min(1.0, max(0.02, period / 3))
        while True:
            await asyncio.sleep(pause)
            self.autoscale_tick()

    def _apply_autoscale(self, pool: Pool, run: AutoScaleRun | None) -> None:
        """Resize to a successful run's targets when they differ from the pool's."""
        if run is None or run.error is not None or pool.state != "active":
            return
        targets = (run.target_dedicated_nodes, run.target_low_priority_nodes)
        if targets != (pool.target_dedicated, pool.target_low_priority):
            log.info("pool %s autoscale: %d dedicated, %d spot", pool.id, *targets)
            self.resize_pool(pool, *targets, deallocation=run.node_deallocation_option.lower())

    def _counts(self, pool: Pool) -> PoolCounts:
        """What a formula reads about ``pool``: the tasks of its active jobs, its nodes and targets."""
        active = succeeded = failed = 0
        key = pool.id.lower()
        for job in self.account.jobs.values():
            if job.state == "active" and (job.pool_id or "").lower() == key:
                counts = job.counts()
                active += counts["active"]
                succeeded += counts["succeeded"]
                failed += counts["failed"]
        nodes = list(pool.nodes.values())
        return PoolCounts(
            active_tasks=active,
            running_tasks=sum(len(n.running) for n in nodes),
            succeeded_tasks=succeeded,
            failed_tasks=failed,
            dedicated_nodes=pool.current(True),
            low_priority_nodes=pool.current(False),
            preempted_nodes=sum(1 for n in nodes if n.state == "preempted"),
            usable_nodes=sum(
                1 for n in nodes if n.state in SCHEDULABLE_NODE_STATES and n.scheduling_state == "enabled"
            ),
            target_dedicated_nodes=pool.target_dedicated,
            target_low_priority_nodes=pool.target_low_priority,
            task_slots_per_node=pool.task_slots_per_node,
        )

    def stop_resize(self, pool: Pool) -> None:
        """Stop a resize: the pool goes ``stopping``, then ``steady`` with its nodes and a ResizeStopped error."""
        if pool.allocation is not None:
            pool.allocation.cancel()
            pool.allocation = None
        pool.set_allocation_state("stopping")
        short = [
            kind
            for kind, dedicated, target in (
                ("dedicated", True, pool.target_dedicated),
                ("low priority", False, pool.target_low_priority),
            )
            if pool.current(dedicated) < target
        ] or ["dedicated"]
        pool.resize_errors = [
            ResizeError(
                "ResizeStopped",
                f"Desired number of {kind} nodes could not be allocated due to a stop resize operation",
            )
            for kind in short
        ]
        self._spawn(self._settle(pool), f"stop-resize-{pool.id}")

    async def _settle(self, pool: Pool) -> None:
        await self.sleep(self.timings.allocation_delay / 2)
        if pool.allocation_state == "stopping":
            pool.set_allocation_state("steady")

    async def _allocate(self, pool: Pool) -> None:
        try:
            await self.nodes.within_timeout(pool, self._allocate_nodes(pool))
        except Exception:
            # A failure of the emulator's own must not leave the pool resizing forever: it settles with a resize
            # error, and the log names the pool.
            log.exception("emulator: allocating the nodes of pool %r failed", pool.id)
            pool.resize_errors = [
                ResizeError("AllocationFailed", "The aiobatch emulator failed to allocate nodes; see its log.")
            ]
            pool.set_allocation_state("steady")
            pool.allocation = None

    async def _allocate_nodes(self, pool: Pool) -> None:
        await self.sleep(self.timings.allocation_delay)
        errors: list[ResizeError] = []
        for dedicated in (True, False):
            target = pool.target_dedicated if dedicated else pool.target_low_priority
            current = [n for n in pool.nodes.values() if n.is_dedicated == dedicated and n.state != "leavingpool"]
            if len(current) > target:
                await self._shrink(pool, current, len(current) - target)
                continue
            allowed = self._nodes_within_quota(pool, dedicated, target - len(current))
            if allowed < target - len(current):
                errors.append(_quota_error(pool, dedicated, target, len(current) + allowed))
            for _ in range(allowed):
                self._add_node(pool, dedicated)
        pool.resize_errors = errors
        pool.set_allocation_state("steady")
        pool.allocation = None
        log.info("pool %s allocated: %d dedicated, %d spot", pool.id, pool.current(True), pool.current(False))

    def _nodes_within_quota(self, pool: Pool, dedicated: bool, wanted: int) -> int:
        quota = self.quotas.dedicated_cores if dedicated else self.quotas.low_priority_cores
        if quota is None:
            return wanted
        used = sum(
            vm_cores(p.vm_size)
            for p in self.account.pools.values()
            for n in p.nodes.values()
            if n.is_dedicated == dedicated and n.state != "leavingpool"
        )
        return max(0, min(wanted, (quota - used) // vm_cores(pool.vm_size)))

    def _add_node(self, pool: Pool, dedicated: bool) -> None:
        node_id = new_node_id(dedicated)
        root = self.workdir / "nodes" / pool.id / node_id
        node = Node(
            id=node_id,
            pool_id=pool.id,
            is_dedicated=dedicated,
            root=root,
            vm_size=pool.vm_size,
            ip_address=f"10.0.0.{4 + len(pool.nodes)}",
        )
        pool.nodes[node_id] = node
        node.listener = partial(self._node_changed, pool)
        node.boot = self._spawn(self._boot(pool, node), f"boot-{node_id[:12]}")

    async def _boot(self, pool: Pool, node: Node) -> None:
        try:
            await self._boot_node(pool, node)
        except Exception:
            # The node ends unusable (as a node whose boot fails does on Azure), never stuck starting; the other
            # nodes and the dispatcher go on.
            log.exception("emulator: booting node %s of pool %r failed", node.id, pool.id)
            node.set_state("unusable")
            self.kick()

    async def _boot_node(self, pool: Pool, node: Node) -> None:
        for sub in ("startup", "shared", "applications", "workitems"):
            (node.root / sub).mkdir(parents=True, exist_ok=True)
        await pull_images(self.container_runtime, pool.spec)
        await self.sleep(self.timings.node_start_delay / 2)
        node.set_state("starting")
        await self.sleep(self.timings.node_start_delay / 2)
        node.last_boot_time = utcnow()
        start = pool.start_task
        if start is None:
            node.set_state("idle")
            self.kick()
            return
        if start.wait_for_success:
            node.set_state("waitingforstarttask")
        else:
            node.set_state("idle")
            self.kick()
        # The pool's application packages are on the node before its start task runs (it may install them).
        apps = await self._app_package_environment(pool.app_packages)
        retry = 0
        while True:
            node.start_task_info = StartTaskAttempt(utcnow(), retry)
            start_spec = pool.spec.get("startTask") or {}
            if self.simulation is not None:
                outcome = await self._simulate(
                    self.simulation, "", f"starttask-{node.id}", retry, start.environment, None
                )
            else:
                outcome = unknown_user(start_spec.get("userIdentity"), pool.spec) or await run_task(
                    in_container(
                        self._start_task_run(pool, node, retry, apps),
                        start_spec.get("containerSettings"),
                        self.container_runtime,
                    ),
                    self._session(),
                )
            node.start_task_info = StartTaskAttempt(outcome.start_time, retry, outcome)
            node.start_task_failure = outcome.failure_info
            if outcome.failure_info is None or not _may_retry(retry, start.max_task_retry_count):
                break
            retry += 1
        if start.wait_for_success:
            node.set_state("idle" if outcome.failure_info is None else "starttaskfailed")
        log.info("node %s of pool %s is %s", node.id[:16], pool.id, node.state)
        self.kick()

    def _start_task_run(self, pool: Pool, node: Node, retry: int, apps: dict[str, str]) -> TaskRun:
        assert pool.start_task is not None
        user, identity = task_user((pool.spec.get("startTask") or {}).get("userIdentity"))
        return TaskRun(
            account_name=self.account.name,
            account_url=self.account.url,
            pool_id=pool.id,
            node_id=node.id,
            node_root=node.root,
            task_id="starttask",
            command_line=pool.start_task.command_line,
            task_dir=node.root / "startup",
            resource_files=pool.start_task.resource_files,
            environment=dict(pool.start_task.environment),
            app_package_environment=apps,
            passed_environment=self.passed_environment,
            task_user=user,
            task_user_identity=identity,
            node_is_dedicated=node.is_dedicated,
            retry_count=retry,
            is_start_task=True,
        )

    async def _shrink(self, pool: Pool, nodes: list[Node], count: int) -> None:
        # Idle nodes go first; running tasks as the resize's nodeDeallocationOption says (`_nodes`).
        await self.nodes.shrink(pool, nodes, count)

    async def stop_attempts(self, node: Node) -> list[tuple[Job, Task]]:
        """Cancel the attempts running on ``node`` and wait until they are gone; return their jobs and tasks."""
        stopped: list[tuple[Job, Task, asyncio.Task[None]]] = []
        for job_key, task_key in list(node.running):
            job = self.account.jobs.get(job_key)
            task = job.tasks.get(task_key) if job else None
            if job is not None and task is not None and task.runner is not None:
                stopped.append((job, task, task.runner))
                task.runner.cancel()
        await asyncio.gather(*(runner for _, _, runner in stopped), return_exceptions=True)
        return [(job, task) for job, task, _ in stopped]

    async def _evict(self, node: Node, *, requeue: bool) -> None:
        """Stop the node's boot and the tasks running on it; requeue them (as preemption and node loss do)."""
        boot, node.boot = node.boot, None
        if boot is not None and boot is not asyncio.current_task() and not boot.done():
            boot.cancel()  # a lost node's start task stops with it and never sets its state again
            await asyncio.gather(boot, return_exceptions=True)
        stopped = await self.stop_attempts(node)
        # Requeue only once the attempts are gone, so the dispatcher never sees a queued task still running.
        for job, task in stopped:
            if requeue and task.state == "running":
                requeue_task(job, task)
        self.kick()

    def delete_pool(self, pool: Pool) -> None:
        """Start deleting a pool: its tasks are requeued, its nodes and their directories removed."""
        pool.set_state("deleting")
        pool.set_allocation_state("resizing")  # the service shrinks a deleting pool to nothing
        if pool.allocation is not None:
            pool.allocation.cancel()
            pool.allocation = None
        self._spawn(self._delete_pool(pool), f"delete-pool-{pool.id}")

    async def _delete_pool(self, pool: Pool) -> None:
        self.nodes.pool_deleted(pool)
        for node in pool.nodes.values():
            node.set_state("leavingpool")
        for node in list(pool.nodes.values()):
            await self._evict(node, requeue=True)
        await asyncio.to_thread(_rmtree, [self.workdir / "nodes" / pool.id])
        await self.sleep(self.timings.deletion_delay)
        if self.account.pools.get(pool.id.lower()) is pool:
            del self.account.pools[pool.id.lower()]
            self._free.pop(pool.id.lower(), None)
        log.info("pool %s deleted", pool.id)

    # -- jobs -----------------------------------------------------------------------------------------------------

    def add_job(self, job: Job) -> None:
        """Register a new job: the one way a job enters the account (a job create, a job schedule's new job).

        It also connects the job's task queue to the dispatcher's index of jobs with queued tasks; a job put in
        ``account.jobs`` without this never has its tasks dispatched.
        """
        self.account.jobs[job.id.lower()] = job
        _job_control.arm_wall_clock(self, job)
        job.queue.on_push = partial(self._queued, job)
        if job.queue:
            self._queued(job)
        self.check_job_complete(job)
        self.kick()

    def _queued(self, job: Job) -> None:
        """A task of ``job`` was queued: index the job and wake the dispatcher."""
        try:
            self._ready.mark(job)
        except Exception:
            self._dispatch_failure(job)
        self._wake.set()

    def _dispatch_failure(self, job: Job) -> None:
        """Log (once per job, with its id) that its tasks cannot be dispatched; they stay queued."""
        if job.id not in self._dispatch_failed:
            self._dispatch_failed.add(job.id)
            log.exception("emulator: dispatching the tasks of job %r failed; its tasks stay queued", job.id)

    def check_job_complete(self, job: Job) -> None:
        """Apply ``onAllTasksComplete``: a job with no unfinished tasks is terminated.

        As the service does, this also holds for a job with no tasks at all: set ``terminatejob`` once the
        tasks are added.
        """
        if job.state != "active" or job.on_all_tasks_complete != "terminatejob":
            return
        if job.completed_count == len(job.tasks):
            self.terminate_job(job, "AllTasksComplete")

    def terminate_job(self, job: Job, reason: str) -> None:
        """Start terminating a job: its running tasks are killed."""
        if job.state not in ("active", "disabling", "disabled", "enabling"):
            return
        job.set_state("terminating")
        job.terminate_reason = reason
        self._spawn(self._finish_job(job, delete=False), f"terminate-{job.id}")

    def delete_job(self, job: Job) -> None:
        """Start deleting a job: running tasks are killed, then the job is forgotten."""
        job.set_state("deleting")
        self._spawn(self._finish_job(job, delete=True), f"delete-job-{job.id}")

    async def _finish_job(self, job: Job, *, delete: bool) -> None:
        job.queue.clear()
        _job_control.stop_wall_clock(job)
        await self._end_running(job, list(job.tasks.values()))
        await self.jobprep.release(job)  # the job stays terminating (or deleting) while release tasks run
        await self.sleep(self.timings.deletion_delay)
        if delete:
            if self.account.jobs.get(job.id.lower()) is job:
                del self.account.jobs[job.id.lower()]
            await asyncio.to_thread(_rmtree, self._job_dirs(job))
            log.info("job %s deleted", job.id)
        elif job.state == "terminating":
            # The service reports the state before termination (active), not terminating, as previousState.
            before, since = job.previous_state, job.previous_state_transition_time
            job.set_state("completed")
            job.previous_state, job.previous_state_transition_time = before, since
            job.end_time = utcnow()
            log.info("job %s completed (%s)", job.id, job.terminate_reason)
        auto = (job.spec.get("poolInfo") or {}).get("autoPoolSpecification") or {}
        if job.auto_pool and job.pool_id and not auto.get("keepAlive"):  # keepAlive: the pool outlives its job
            pool = self.account.pools.get(job.pool_id.lower())
            if pool is not None and pool.state == "active":
                self.delete_pool(pool)
        for listener in self.job_end_listeners:
            listener(job)

    def _job_dirs(self, job: Job) -> list[Path]:
        return [
            node.root / "workitems" / job.id for pool in self.account.pools.values() for node in pool.nodes.values()
        ]

    async def end_running(self, job: Job, tasks: list[Task]) -> None:
        """End ``tasks`` of ``job`` that are running, as a terminate does (failureInfo ``TaskEnded``)."""
        await self._end_running(job, tasks)

    async def _end_running(self, job: Job, tasks: list[Task]) -> None:
        runners = []
        for task in tasks:
            if task.runner is not None:
                runners.append(task.runner)
                task.runner.cancel()
                self._complete(job, task, None, TASK_ENDED)
        await asyncio.gather(*runners, return_exceptions=True)

    # -- tasks ----------------------------------------------------------------------------------------------------

    async def terminate_task(self, job: Job, task: Task) -> None:
        """Terminate a task: kill it if running; an active task completes without running."""
        if task.state == "completed":
            return
        if task.runner is not None:
            await self._end_running(job, [task])
        else:
            self._complete(job, task, None, TASK_ENDED)
        self.check_job_complete(job)

    async def delete_task(self, job: Job, task: Task) -> None:
        """Delete a task: kill it if running and forget it."""
        if task.runner is not None:
            runner = task.runner
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        job.remove_task(task.id.lower())
        if task.task_dir is not None:
            await asyncio.to_thread(_rmtree, [task.task_dir])
        self.check_job_complete(job)

    # -- dispatch -------------------------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._dispatch()

    def _dispatch(self) -> None:
        """One poll: give free slots to queued tasks, looking only at pools with queued work and free nodes."""
        self.dispatch_polls += 1
        for pool_key in self._ready.pools():
            pool = self.account.pools.get(pool_key)
            if pool is None or pool.state != "active":
                # Its jobs wait; one that has since moved to another pool (a job update) is re-indexed there.
                for job in self._ready.jobs(pool_key):
                    if (job.pool_id or "").lower() != pool_key or not job.queue:
                        self._ready.discard(pool_key, job)
                        if job.queue:
                            self._ready.mark(job)
                continue
            free = self._free_slots(pool)
            if free.empty() and free.resync_due():
                free.resync()  # a node changed without telling the index (see `_dispatch`)
            for job in self._ready.jobs(pool_key):
                if free.empty():
                    break
                self.dispatch_touches += 1
                if (job.pool_id or "").lower() != pool_key:  # the job moved to another pool
                    self._ready.discard(pool_key, job)
                    if job.queue:
                        self._ready.mark(job)
                    continue
                if job.state == "active" and job.queue:
                    # One job the dispatcher cannot handle must not stop scheduling for every other job: its
                    # failure is logged (once per job, not on every wake-up) with its id, and the loop goes on.
                    try:
                        self._dispatch_job(job, pool, free)
                    except Exception:
                        self._dispatch_failure(job)
                if not job.queue:
                    self._ready.discard(pool_key, job)

    def _free_slots(self, pool: Pool) -> FreeSlots:
        key = pool.id.lower()
        free = self._free.get(key)
        if free is None or free.pool is not pool or free.slots_per_node != pool.task_slots_per_node:
            free = self._free[key] = FreeSlots(pool)
        return free

    def _node_changed(self, pool: Pool, node: Node) -> None:
        """A node's state or running tasks changed: update the pool's free-slot index."""
        free = self._free.get(pool.id.lower())
        if free is not None and free.pool is pool:
            free.update(node)

    def _dispatch_job(self, job: Job, pool: Pool, free: FreeSlots) -> None:
        """Start as many of one job's queued tasks as its pool's free slots take."""
        # A job's waited-for preparation task that failed on a node keeps the job's tasks off it (`_jobprep`).
        accept = None if self.jobprep.eligible_everywhere(job) else partial(self.jobprep.eligible, job)
        # Counting running tasks is O(tasks): only pay for it when the job limits parallelism.
        limited = job.max_parallel_tasks >= 0
        running = sum(1 for t in job.tasks.values() if t.runner is not None) if limited else 0
        while job.queue and not free.empty():
            if limited and running >= job.max_parallel_tasks:
                break
            key = job.queue[0]
            task = job.tasks.get(key)
            if task is None or task.state != "active" or task.runner is not None:
                job.queue.popleft()
                continue
            node = free.pick(task.required_slots, accept)
            if node is None:
                break
            job.queue.popleft()
            self._start(job, pool, node, task)
            running += 1

    def _start(self, job: Job, pool: Pool, node: Node, task: Task) -> None:
        key = (job.id.lower(), task.id.lower())
        node.running[key] = task.required_slots
        node.set_state("running")
        self._node_changed(pool, node)
        node.total_tasks_run += 1
        root = f"workitems/{job.id}/job-1/{task.id}"
        task.node_info = (pool.id, node.id, root)
        # A simulated task has no directory: nothing is written for it.
        task.task_dir = node.root / root if self.simulation is None else None
        task.files_expired = False
        task.start_time, task.end_time = utcnow(), None
        task.exit_code, task.result, task.failure_info = None, None, None
        task.set_state("running")
        task.runner = asyncio.create_task(self._run(job, pool, node, task), name=f"task-{job.id}-{task.id}")
        task.runner.add_done_callback(_log_crash)
        # A runner cancelled before its first step (its node lost, its job ended, in the same loop turn) never
        # enters _run, so _run's finally cannot free the slot: without this the slot stays taken and the
        # requeued task, still holding a runner, is never dispatched again.
        task.runner.add_done_callback(lambda runner: self._release(pool, node, key, task, runner))
        # Injected node faults strike mid-task: the node is lost a moment after the task starts.
        for kind in ("preempt", "unusable"):
            if (kind == "unusable" or not node.is_dedicated) and self.faults.draw(kind):
                self.faults.ledger.record(kind)
                delay = self.faults.rng.uniform(0.01, 0.2)
                self._spawn(self._lose_node_later(pool, node, kind, delay), f"{kind}-{node.id[:12]}")
                break

    def _release(self, pool: Pool, node: Node, key: tuple[str, str], task: Task, runner: asyncio.Task[None]) -> None:
        """Free what `_start` took for an attempt that has ended, however it ended (idempotent with `_run`)."""
        if task.runner is not runner:
            return
        task.runner = None
        if node.running.pop(key, None) is not None and not node.running and node.state == "running":
            node.set_state("idle")
        self._node_changed(pool, node)
        self.kick()

    async def _lose_node_later(self, pool: Pool, node: Node, kind: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.lose_node(pool, node, "preempted" if kind == "preempt" else "unusable")

    async def lose_node(self, pool: Pool, node: Node, state: str) -> None:
        """Take a node away mid-work, as spot preemption (``preempted``) or a failure (``unusable``) does.

        Its running tasks are requeued (requeueCount grows) and run again elsewhere; after
        ``node_recovery_delay`` the node boots again and rejoins the pool.
        """
        if node.state in ("preempted", "unusable", "leavingpool") or pool.nodes.get(node.id) is not node:
            return
        node.set_state(state)
        await self._evict(node, requeue=True)
        log.info("node %s of pool %s is %s", node.id[:16], pool.id, state)
        self._spawn(self._recover(pool, node, state), f"recover-{node.id[:12]}")

    async def _recover(self, pool: Pool, node: Node, state: str) -> None:
        await self.sleep(self.timings.node_recovery_delay)
        if pool.nodes.get(node.id) is node and pool.state == "active" and node.state == state:
            node.set_state("creating")
            node.boot = self._spawn(self._boot(pool, node), f"reboot-{node.id[:12]}")

    async def _run(self, job: Job, pool: Pool, node: Node, task: Task) -> None:
        key = (job.id.lower(), task.id.lower())
        runner = asyncio.current_task()
        outcome: TaskOutcome | None = None
        try:
            if not await self.jobprep.ready(job, pool, node, task):
                raise _NotPrepared
            if self.timings.dispatch_delay:
                await self.sleep(self.timings.dispatch_delay)
            if self.simulation is not None:
                outcome = await self._simulate(
                    self.simulation,
                    job.id,
                    task.id,
                    task.retry_count + task.requeue_count,
                    {**job.environment, **task.environment},
                    task.max_wall_clock_time,
                )
            elif unknown := unknown_user(task.spec.get("userIdentity"), pool.spec):
                outcome = unknown
            else:
                outcome = await self._run_process(job, pool, node, task)
        except _NotPrepared:
            pass
        except OSError as exc:
            outcome = _node_error(task, f"The node could not run the task: {exc.strerror}")
        except Exception:
            # A failure of the emulator's own ends this task (logged with its ids), not the service: the task
            # completes with a server error instead of staying running forever.
            log.exception("emulator: running task %r of job %r failed", task.id, job.id)
            outcome = _node_error(task, "The node could not run the task: the aiobatch emulator failed; see its log.")
        finally:
            node.running.pop(key, None)
            if not node.running and node.state == "running":
                node.set_state("idle")
            if task.runner is runner:
                task.runner = None
            self._node_changed(pool, node)
            self.kick()
        if outcome is None:  # the job's preparation task failed on this node: the task waits for another node
            task.set_state("active")
            job.queue.appendleft(task.id.lower())
            return
        self._finish_attempt(job, node, task, outcome)

    async def _simulate(
        self,
        simulation: Simulation,
        job_id: str,
        task_id: str,
        attempt_number: int,
        environment: Mapping[str, str],
        limit: float | None,
    ) -> TaskOutcome:
        """One simulated attempt: its modelled duration on the clock, then its modelled exit code."""
        attempt = simulation.attempt(job_id, task_id, attempt_number, environment)
        start = self.now()
        if attempt.failure is not None:
            return TaskOutcome(start, start, None, attempt.failure)
        if limit is not None and attempt.duration > limit:
            await self.sleep(limit)
            return TaskOutcome(start, self.now(), None, _wall_clock_failure(limit))
        await self.sleep(attempt.duration)
        failure = None
        if attempt.exit_code != 0:
            failure = FailureInfo(
                "usererror",
                "FailureExitCode",
                "The task exited with an exit code representing a failure",
                (
                    ("Message", "The task process exited with an unexpected exit code"),
                    ("AdditionalErrorCode", "FailureExitCode"),
                ),
            )
        return TaskOutcome(start, self.now(), attempt.exit_code, failure)

    async def _run_process(self, job: Job, pool: Pool, node: Node, task: Task) -> TaskOutcome:
        apps = await self._app_package_environment(pool.app_packages + task.app_packages)
        user, identity = task_user(task.spec.get("userIdentity"))
        assert task.task_dir is not None
        run = TaskRun(
            account_name=self.account.name,
            account_url=self.account.url,
            pool_id=pool.id,
            node_id=node.id,
            node_root=node.root,
            task_id=task.id,
            job_id=job.id,
            command_line=task.command_line,
            task_dir=task.task_dir,
            resource_files=task.resource_files,
            output_files=task.output_files,
            environment=dict(task.environment),
            job_environment=dict(job.environment),
            app_package_environment={**apps, **self.jobprep.environment(job, node)},
            passed_environment=self.passed_environment,
            task_user=user,
            task_user_identity=identity,
            node_is_dedicated=node.is_dedicated,
            max_wall_clock_time=task.max_wall_clock_time,
            retry_count=task.retry_count,
        )
        return await run_task(
            in_container(run, task.spec.get("containerSettings"), self.container_runtime), self._session()
        )

    def _finish_attempt(self, job: Job, node: Node, task: Task, outcome: TaskOutcome) -> None:
        if outcome.failure_info is None:
            node.total_tasks_succeeded += 1
        # The service retries a task whose process exited non-zero; failures before or after the process
        # (resource files, launch, output upload, wall clock) end the task at once.
        retryable = outcome.failure_info is not None and outcome.failure_info.code == "FailureExitCode"
        if retryable and _may_retry(task.retry_count, task.max_task_retry_count):
            task.retry_count += 1
            task.last_retry_time = utcnow()
            task.exit_code, task.failure_info = outcome.exit_code, outcome.failure_info
            task.set_state("active")
            job.queue.appendleft(task.id.lower())
            log.debug("task %s/%s failed, retry %d", job.id, task.id, task.retry_count)
            return
        self._complete(job, task, outcome, outcome.failure_info)
        node.recent_tasks.appendleft((job.id, task.id))
        _job_control.task_completed(self, job, task, outcome)  # exit options: dependents, the job's action
        self.check_job_complete(job)

    def _complete(self, job: Job, task: Task, outcome: TaskOutcome | None, failure: FailureInfo | None) -> None:
        if task.state == "completed":
            return
        now = utcnow()
        task.end_time = outcome.end_time if outcome else now
        if outcome is not None:
            task.start_time, task.exit_code = outcome.start_time, outcome.exit_code
        elif task.state == "running":
            task.exit_code = -1
        task.failure_info = failure
        task.result = "failure" if failure is not None else "success"
        task.set_state("completed")
        job.completed_count += 1
        log.debug("task %s/%s completed: %s", job.id, task.id, task.result)
        if task.task_dir is not None and task.end_time is not None:
            retention = parse_duration(
                (task.spec.get("constraints") or {}).get("retentionTime"), "constraints.retentionTime"
            )
            if retention is not None:
                self.retention.add(job.id.lower(), task.id.lower(), task.end_time, retention)

    # -- application packages -------------------------------------------------------------------------------------

    async def _app_package_environment(self, refs: tuple[AppPackageRef, ...]) -> dict[str, str]:
        """The ``AZ_BATCH_APP_PACKAGE_*`` variables of *refs*, each package extracted (once) first."""
        env: dict[str, str] = {}
        for ref in _unique(refs):
            env.update(app_package_env(ref, str(await self._extract(ref))))
        return env

    async def _extract(self, ref: AppPackageRef) -> Path:
        """Extract a package once, shared by every node; concurrent callers wait for the same extraction."""
        key = (ref.application_id.lower(), ref.version)
        job = self._extracting.get(key)
        if job is None or (job.done() and (job.cancelled() or job.exception() is not None)):
            app = self.account.applications[ref.application_id.lower()]
            target = self.workdir / "applications" / f"{app.id}_{ref.version}"
            job = asyncio.create_task(asyncio.to_thread(_unzip, app.versions[ref.version], target))
            self._extracting[key] = job
        return await asyncio.shield(job)

    def _session(self) -> aiohttp.ClientSession:
        assert self._http is not None, "scheduler not started"
        return self._http


class _NotPrepared(Exception):
    """The job's preparation task failed on the node a task was sent to (`JobPrep.ready`)."""


def _node_error(task: Task, message: str) -> TaskOutcome:
    now = utcnow()
    return TaskOutcome(task.start_time or now, now, None, FailureInfo("servererror", "NodeError", message))


def _may_retry(retry_count: int, max_retries: int) -> bool:
    return max_retries == -1 or retry_count < max_retries


def _unique(refs: tuple[AppPackageRef, ...]) -> list[AppPackageRef]:
    seen: dict[tuple[str, str], AppPackageRef] = {}
    for ref in refs:
        seen.setdefault((ref.application_id.lower(), ref.version), ref)
    return list(seen.values())


def _quota_error(pool: Pool, dedicated: bool, target: int, reached: int) -> ResizeError:
    kind = "dedicated" if dedicated else "low-priority (spot)"
    return ResizeError(
        "AccountCoreQuotaReached" if dedicated else "AccountLowPriorityCoreQuotaReached",
        f"The specified account has reached VM {'' if dedicated else 'low priority '}core quota in the "
        "requested region for the specified VM size family. Please increase the core quota and try again.",
        (
            (
                "Reason",
                f"Only {reached} of {target} {kind} nodes of size {pool.vm_size} fit in the account's core quota.",
            ),
        ),
    )


def _unzip(archive: Path, target: Path) -> Path:
    if (target / ".extracted").exists():
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, tmp))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                path.chmod(mode | stat.S_IRUSR)
    (tmp / ".extracted").touch()
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(target)
    return target


def _rmtree(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _log_crash(task: asyncio.Task[object]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        exc = task.exception()
        if exc is not None:
            log.error("emulator background task %s failed", task.get_name(), exc_info=exc)
