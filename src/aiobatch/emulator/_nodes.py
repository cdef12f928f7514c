"""Node operations: reboot, reimage, deallocate and start, scheduling, removal, users, service logs and usage.

A node leaves its work -- for a reboot, a reimage, a deallocation, a removal from the pool or a resize that
shrinks it -- by one of the four ways the API names (``nodeDeallocationOption`` and its relatives):

- ``requeue`` (the default): running tasks are stopped and go back to the job's queue (``requeueCount`` grows),
  to run again on another node;
- ``terminate``: running tasks are stopped and complete, failed, with ``TaskEnded``; they do not run again;
- ``taskcompletion``: running tasks finish; the node takes no new ones meanwhile;
- ``retaineddata``: as ``taskcompletion``, then the node waits until the retention time (the task's
  ``constraints.retentionTime``, 7 days unless set) of every task that ran on it has passed. The emulator keeps
  task directories until the task or its job is deleted, so this wait is the only thing the option changes: it
  lasts exactly as long as on Azure, on the scheduler's clock (`Scheduler.real_seconds`), and a deleted task
  no longer holds the node.

While a node waits for its tasks it shows the state of what it is about to do (``rebooting``, ``reimaging``,
``deallocating``, ``leavingpool``) and gets no new tasks: the dispatcher only uses idle and running nodes with
scheduling enabled.

A resize or removal is bounded by its ``resizeTimeout`` (15 minutes unless set, at least 5): a shrink still
waiting for tasks then stops, the waiting nodes stay in the pool as they were, and the pool settles ``steady``
with the resize error ``ResizeTimedOut``; an allocation that has not finished (only an allocation delay longer
than the timeout could make that happen here) ends with ``AllocationTimedOut``.

Node usage for ``/poolusagemetrics`` is kept here too: how long each node was in its pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import shutil
import tempfile
import uuid
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _files as transfer
from ._model import Node, Pool, ResizeError, ServiceError, requeue_task, vm_cores
from ._types import FailureInfo
from ._wire import parse_duration

if TYPE_CHECKING:
    from ._scheduler import Scheduler

log = logging.getLogger("aiobatch.emulator")

#: The four ways a node leaves its running tasks.
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")

#: A resize's or removal's ``resizeTimeout`` when none is given, and the least the service accepts.
DEFAULT_RESIZE_TIMEOUT = dt.timedelta(minutes=15)
MIN_RESIZE_TIMEOUT = dt.timedelta(minutes=5)

#: At most this many nodes per ``removenodes`` request (the API's documented limit).
MAX_REMOVE_NODES = 100

#: The one file a node's service-log upload writes: the emulator's own lines about the node.
SERVICE_LOG_NAME = "aiobatch-emulator-node.log"

#: How often a node waiting for its tasks to finish looks again (seconds).
_TASK_POLL = 0.05

#: A task stopped because its node was told to ``terminate`` it.
NODE_TASK_ENDED = FailureInfo("usererror", "TaskEnded", "Task Was Ended by User Request")

#: States in which a node can be rebooted or reimaged: idle and running as documented, and the two states a
#: reboot is the usual way out of (a failed start task, an unusable node) -- the service accepts those too.
_REBOOTABLE = frozenset({"idle", "running", "starttaskfailed", "unusable"})

#: The service's 409 code for a node in the middle of something (the .NET SDK's BatchErrorCodeStrings).
_BUSY_CODES = {
    "creating": ("NodeBeingCreated", "being created"),
    "starting": ("NodeBeingStarted", "being started"),
    "waitingforstarttask": ("NodeBeingStarted", "being started"),
    "rebooting": ("NodeBeingRebooted", "being rebooted"),
    "reimaging": ("NodeBeingReimaged", "being reimaged"),
    "unusable": ("NodeStateUnusable", "unusable"),
}


def node_state_error(node: Node, operation: str) -> ServiceError:
    """The 409 for an operation a node's state does not allow."""
    code, what = _BUSY_CODES.get(node.state, ("OperationInvalidForCurrentState", f"in the state {node.state}"))
    return ServiceError(
        409,
        code,
        f"The specified operation is not valid for the current state of the node: it is {what}.",
        [("Operation", operation), ("NodeState", node.state)],
    )


def deallocation_option(value: object, default: str = "requeue") -> str:
    """An option as the validation layer let it through (any case), lower-cased; ``default`` when absent."""
    return value.lower() if isinstance(value, str) else default


def resize_timeout(value: object, prop: str = "resizeTimeout") -> dt.timedelta:
    """A ``resizeTimeout`` as given (the service's 15 minutes when absent).

    Raises:
        ServiceError: 400 ``InvalidPropertyValue`` below 5 minutes, as the service refuses it.
    """
    if value is None:
        return DEFAULT_RESIZE_TIMEOUT
    seconds = parse_duration(value, prop)
    if seconds is None:
        return dt.timedelta.max
    timeout = dt.timedelta(seconds=seconds)
    if timeout < MIN_RESIZE_TIMEOUT:
        raise ServiceError(
            400,
            "InvalidPropertyValue",
            "The value provided for one of the properties in the request body is invalid.",
            [("PropertyName", prop), ("PropertyValue", str(value)), ("Reason", "The minimum value is 5 minutes.")],
        )
    return timeout


@dataclasses.dataclass(frozen=True)
class NodeSpan:
    """How long one node was in a pool (``end`` None while it still is)."""

    pool_id: str
    vm_size: str
    start: dt.datetime
    end: dt.datetime | None


@dataclasses.dataclass
class _Resize:
    option: str = "requeue"
    timeout: dt.timedelta = DEFAULT_RESIZE_TIMEOUT


class NodeOps:
    """What happens to nodes beyond allocation and dispatch: one per `Scheduler`, as ``scheduler.nodes``."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        #: Nodes that have left their pool, for usage metrics (nodes still in a pool are read from the pool).
        self.departed: list[NodeSpan] = []
        self._resizes: dict[str, _Resize] = {}

    # -- leaving work ---------------------------------------------------------------------------------------------

    async def vacate(self, node: Node, option: str) -> None:
        """Leave the node's running tasks as ``option`` says; afterwards nothing runs on it and its boot is over."""
        node.log(f"leaving running tasks: {option}")
        if option in ("taskcompletion", "retaineddata"):
            # A short poll: the running set changes in several places of the scheduler, none of which need a hook.
            while node.running:  # noqa: ASYNC110
                await asyncio.sleep(_TASK_POLL)
            if option == "retaineddata":
                await self._retention_over(node)
            await self._stop_tasks(node, requeue=True)  # none should be left; a task sneaking in is requeued
        else:
            await self._stop_tasks(node, requeue=option == "requeue")
        await self._stop_boot(node)

    async def _stop_boot(self, node: Node) -> None:
        boot, node.boot = node.boot, None
        if boot is not None and boot is not asyncio.current_task() and not boot.done():
            boot.cancel()
            await asyncio.gather(boot, return_exceptions=True)

    async def _stop_tasks(self, node: Node, *, requeue: bool) -> None:
        """Stop what runs on the node: requeued, or completed as ended (``terminate``)."""
        scheduler = self.scheduler
        for job, task in await scheduler.stop_attempts(node):
            if task.state != "running":
                continue
            if requeue:
                requeue_task(job, task)
            else:
                scheduler._complete(job, task, None, NODE_TASK_ENDED)
                scheduler.check_job_complete(job)
        scheduler.kick()

    async def _retention_over(self, node: Node) -> None:
        """Wait until every task that ran on the node is past its retention time (deleted tasks hold nothing)."""
        scheduler = self.scheduler
        while True:
            latest: dt.datetime | None = None
            for job in scheduler.account.jobs.values():
                for task in job.tasks.values():
                    if task.node_info is None or task.node_info[1] != node.id or task.end_time is None:
                        continue
                    retention = parse_duration(task.spec.get("constraints", {}).get("retentionTime"), "retentionTime")
                    if retention is None:
                        return  # unlimited: the service would wait forever; nothing to wait for that ends
                    until = task.end_time + dt.timedelta(seconds=retention)
                    latest = until if latest is None else max(latest, until)
            now = scheduler.now()
            if latest is None or latest <= now:
                return
            await asyncio.sleep(max(0.01, scheduler.real_seconds((latest - now).total_seconds())))

    # -- reboot, reimage, deallocate, start -----------------------------------------------------------------------

    def reboot(self, pool: Pool, node: Node, option: str, *, reimage: bool) -> None:
        """Start a reboot (or reimage): the node leaves its tasks as ``option`` says, then boots again.

        A reboot keeps the node's disk; a reimage wipes it (task directories, shared and startup directories,
        node users), as a fresh operating system would. Either way the start task runs again.

        Raises:
            ServiceError: 409 when the node's state does not allow it.
        """
        operation = "reimage" if reimage else "reboot"
        if node.state not in _REBOOTABLE:
            raise node_state_error(node, operation)
        node.set_state("reimaging" if reimage else "rebooting")
        self.scheduler._spawn(self._reboot(pool, node, option, reimage), f"{operation}-{node.id[:12]}")

    async def _reboot(self, pool: Pool, node: Node, option: str, reimage: bool) -> None:
        await self.vacate(node, option)
        if pool.nodes.get(node.id) is not node:
            return
        if reimage:
            node.users.clear()
            node.start_task_info, node.start_task_failure = None, None
            await asyncio.to_thread(_empty_dir, node.root)
        log.info("node %s of pool %s %s", node.id[:16], pool.id, "reimaged" if reimage else "rebooted")
        # Job preparation tasks run again after a reimage, and after a reboot when asked to (`_jobprep`).
        self.scheduler.jobprep.node_rebooted(node, reimaged=reimage)
        node.boot = self.scheduler._spawn(self.scheduler._boot(pool, node), f"boot-{node.id[:12]}")

    def deallocate(self, pool: Pool, node: Node, option: str) -> None:
        """Start deallocating an idle or running node: ``deallocating``, then ``deallocated`` (disk kept).

        Raises:
            ServiceError: 409 when the node is not idle or running.
        """
        if node.state not in ("idle", "running"):
            raise node_state_error(node, "deallocate")
        node.set_state("deallocating")
        self.scheduler._spawn(self._deallocate(pool, node, option), f"deallocate-{node.id[:12]}")

    async def _deallocate(self, pool: Pool, node: Node, option: str) -> None:
        await self.vacate(node, option)
        if pool.nodes.get(node.id) is node and node.state == "deallocating":
            node.set_state("deallocated")
            log.info("node %s of pool %s deallocated", node.id[:16], pool.id)

    def start(self, pool: Pool, node: Node) -> None:
        """Start a deallocated node: ``starting``, its start task again, then idle.

        Raises:
            ServiceError: 409 when the node is not deallocated.
        """
        if node.state != "deallocated":
            raise node_state_error(node, "start")
        node.set_state("starting")
        node.boot = self.scheduler._spawn(self.scheduler._boot(pool, node), f"start-{node.id[:12]}")

    # -- scheduling -----------------------------------------------------------------------------------------------

    async def disable_scheduling(self, node: Node, option: str) -> None:
        """No new tasks for the node; its running ones requeued, terminated or left to finish (``option``)."""
        node.scheduling_state = "disabled"
        node.log(f"scheduling disabled ({option})")
        self._changed(node)
        if option != "taskcompletion":
            await self._stop_tasks(node, requeue=option == "requeue")

    def enable_scheduling(self, node: Node) -> None:
        """The node takes tasks again."""
        node.scheduling_state = "enabled"
        node.log("scheduling enabled")
        self._changed(node)
        self.scheduler.kick()

    def _changed(self, node: Node) -> None:
        """Tell the dispatcher's free-slot index that ``node`` can (or cannot) take tasks now."""
        pool = self.scheduler.account.pools.get(node.pool_id.lower())
        if pool is not None and pool.nodes.get(node.id) is node:
            self.scheduler._node_changed(pool, node)

    # -- leaving the pool -----------------------------------------------------------------------------------------

    def set_resize(self, pool: Pool, option: str, timeout: dt.timedelta) -> None:
        """How the pool's next shrink lets nodes go, and how long its resize may take."""
        self._resizes[pool.id.lower()] = _Resize(option, timeout)

    def _resize_of(self, pool: Pool) -> _Resize:
        resize = self._resizes.get(pool.id.lower())
        if resize is None:  # the pool's first allocation: its create's resizeTimeout
            seconds = parse_duration(pool.spec.get("resizeTimeout"), "resizeTimeout")
            resize = _Resize(timeout=dt.timedelta.max if seconds is None else dt.timedelta(seconds=seconds))
        return resize

    async def within_timeout(self, pool: Pool, allocation: Coroutine[Any, Any, None]) -> None:
        """Run a pool's allocation (grow or shrink) within its ``resizeTimeout``; past it, stop as Azure does."""
        timeout = self._resize_of(pool).timeout
        seconds = self.scheduler.real_seconds(timeout.total_seconds()) if timeout != dt.timedelta.max else None
        try:
            await asyncio.wait_for(allocation, seconds)
        except TimeoutError:
            self._stay(pool)
            shrinking = pool.current(True) > pool.target_dedicated or pool.current(False) > pool.target_low_priority
            pool.resize_errors = [_timed_out(pool, shrinking)]
            pool.set_allocation_state("steady")
            pool.allocation = None
            log.info("pool %s: resize timed out after %s", pool.id, timeout)

    def _stay(self, pool: Pool) -> None:
        """Nodes that were leaving when a shrink stopped stay in the pool, as they are."""
        if pool.state == "deleting":
            return  # they are leaving for good
        for node in pool.nodes.values():
            if node.state == "leavingpool":
                node.set_state("running" if node.running else "idle")
        self.scheduler.kick()

    async def shrink(self, pool: Pool, nodes: list[Node], count: int) -> None:
        """Let ``count`` of ``nodes`` go (idle ones first), as the pool's resize says."""
        victims = sorted(nodes, key=lambda n: (n.state == "running", n.running_slots))[:count]
        await self.leave(pool, victims, self._resize_of(pool).option)

    async def leave(self, pool: Pool, victims: Iterable[Node], option: str) -> None:
        """Take nodes out of the pool: ``leavingpool``, their tasks as ``option`` says, then gone."""
        victims = list(victims)
        try:
            for node in victims:
                node.set_state("leavingpool")
            await asyncio.gather(*(self.vacate(node, option) for node in victims))
        except asyncio.CancelledError:
            self._stay(pool)
            raise
        now = self.scheduler.now()
        for node in victims:
            if pool.nodes.pop(node.id, None) is not None:
                self.departed.append(NodeSpan(pool.id, node.vm_size, node.allocation_time, now))
        await asyncio.to_thread(_rmtree, [n.root for n in victims])

    def remove_nodes(self, pool: Pool, node_ids: list[str], option: str, timeout: dt.timedelta) -> None:
        """``removenodes``: the named nodes leave; the pool's targets shrink by as many; ``resizing`` until done.

        Raises:
            ServiceError: 409 ``PoolNotSteady`` while the pool resizes, 400 for more than 100 nodes, 404
                ``NodeNotFound`` for a node not in the pool (nothing changed).
        """
        if pool.allocation_state != "steady":
            raise ServiceError(409, "PoolNotSteady", "The specified pool is not in a steady state.")
        if len(node_ids) > MAX_REMOVE_NODES:
            raise ServiceError(
                400,
                "InvalidPropertyValue",
                "The value provided for one of the properties in the request body is invalid.",
                [
                    ("PropertyName", "nodeList"),
                    ("PropertyValue", f"({len(node_ids)} nodes)"),
                    ("Reason", f"At most {MAX_REMOVE_NODES} nodes can be removed by one request."),
                ],
            )
        victims: dict[str, Node] = {}
        for node_id in node_ids:
            node = pool.nodes.get(node_id)
            if node is None or node.state == "leavingpool":
                raise ServiceError(
                    404, "NodeNotFound", "The specified node does not exist.", [("NodeId", node_id)]
                )  # guessed: the code for a listed node that is not in the pool
            victims[node.id] = node
        dedicated = sum(1 for n in victims.values() if n.is_dedicated)
        pool.target_dedicated = max(0, pool.target_dedicated - dedicated)
        pool.target_low_priority = max(0, pool.target_low_priority - (len(victims) - dedicated))
        self.set_resize(pool, option, timeout)
        pool.set_allocation_state("resizing")
        pool.resize_errors.clear()
        pool.allocation = asyncio.create_task(self._remove(pool, list(victims.values())), name=f"remove-{pool.id}")

    async def _remove(self, pool: Pool, victims: list[Node]) -> None:
        async def remove() -> None:
            await self.leave(pool, victims, self._resize_of(pool).option)
            pool.set_allocation_state("steady")
            pool.allocation = None
            log.info("pool %s: %d node(s) removed", pool.id, len(victims))

        try:
            await self.within_timeout(pool, remove())
        except Exception:
            log.exception("emulator: removing nodes of pool %r failed", pool.id)
            pool.resize_errors = [
                ResizeError("RemoveNodesFailed", "The aiobatch emulator failed to remove nodes; see its log.")
            ]
            pool.set_allocation_state("steady")
            pool.allocation = None

    def pool_deleted(self, pool: Pool) -> None:
        """Record that every node of a deleted pool has left it."""
        now = self.scheduler.now()
        self.departed.extend(NodeSpan(pool.id, n.vm_size, n.allocation_time, now) for n in pool.nodes.values())

    # -- usage metrics --------------------------------------------------------------------------------------------

    def spans(self) -> list[NodeSpan]:
        """Every node's time in its pool: those that left, and those still there (open-ended)."""
        live = [
            NodeSpan(pool.id, node.vm_size, node.allocation_time, None)
            for pool in self.scheduler.account.pools.values()
            if pool.state != "deleting"
            for node in pool.nodes.values()
        ]
        return self.departed + live

    def usage_metrics(
        self, start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime | None = None
    ) -> list[dict[str, Any]]:
        """Core hours by pool and hour, as ``/poolusagemetrics`` lists them (not rendered: datetimes).

        Only whole hours that are over are reported (the service aggregates by hour and publishes an hour once
        it has ended). Without ``start`` and ``end``, only the last hour that is over.
        """
        now = now or self.scheduler.now()
        last_done = now.replace(minute=0, second=0, microsecond=0)
        if start is None and end is None:
            first, stop = last_done - dt.timedelta(hours=1), last_done
        else:
            first = (start or last_done - dt.timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
            stop = min(end or last_done, last_done)
        out: dict[tuple[dt.datetime, str, str], float] = {}
        spans = self.spans()
        hour = first
        while hour < stop:
            following = hour + dt.timedelta(hours=1)
            for span in spans:
                begin = max(span.start, hour)
                finish = min(span.end or now, following)
                if finish > begin:
                    key = (hour, span.pool_id, span.vm_size.lower())
                    out[key] = out.get(key, 0.0) + (finish - begin).total_seconds() / 3600 * vm_cores(span.vm_size)
            hour = following
        return [
            {
                "poolId": pool_id,
                "startTime": hour,
                "endTime": hour + dt.timedelta(hours=1),
                "vmSize": vm_size,
                "totalCoreHours": round(core_hours, 6),
            }
            for (hour, pool_id, vm_size), core_hours in sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1]))
        ]

    # -- service logs ---------------------------------------------------------------------------------------------

    async def upload_service_logs(
        self, pool: Pool, node: Node, container_url: str, start: dt.datetime, end: dt.datetime | None
    ) -> tuple[str, int]:
        """Write the node's service log (`service_log`) as one blob into a container; its directory and count.

        Raises:
            TransferError: storage refused the blob (the URL's SAS is masked in it).
        """
        directory = self.log_directory(pool, node)
        with tempfile.TemporaryDirectory(prefix="aiobatch-logs-") as tmp:
            path = Path(tmp) / SERVICE_LOG_NAME
            await asyncio.to_thread(path.write_bytes, self.service_log(node, start, end))
            await transfer.upload_file(
                self.scheduler._session(),
                path,
                transfer.blob_url(container_url, f"{directory}/{SERVICE_LOG_NAME}"),
                headers=[("Content-Type", "text/plain")],
            )
        node.log(f"service logs uploaded to {directory}")
        return directory, 1

    def service_log(self, node: Node, start: dt.datetime, end: dt.datetime | None) -> bytes:
        """The node's service log lines from ``start`` to ``end`` (now if None), as a UTF-8 text file."""
        lines = [
            f"{when.isoformat()} {line}\n"
            for when, line in node.events
            if when >= start and (end is None or when <= end)
        ]
        return "".join(lines).encode()

    def log_directory(self, pool: Pool, node: Node) -> str:
        """A fresh ``virtualDirectoryName`` in the service's shape: ``batch-<16 hex>/<pool>/<node>/<uuid>``."""
        account = hashlib.sha256(self.scheduler.account.name.encode()).hexdigest()[:16].upper()
        return f"batch-{account}/{pool.id}/{node.id}/{uuid.uuid4()}"


def _timed_out(pool: Pool, shrinking: bool) -> ResizeError:
    if shrinking:
        # guessed: the code and message for a shrink that could not finish in time
        return ResizeError(
            "ResizeTimedOut",
            "The resize operation could not be completed within the specified resize timeout: nodes waiting for"
            " their tasks to complete were not removed.",
        )
    kind = "dedicated" if pool.current(True) < pool.target_dedicated else "low priority"
    return ResizeError(
        "AllocationTimedOut",
        f"Desired number of {kind} nodes could not be allocated as the resize timeout was reached",
    )


def _empty_dir(root: Path) -> None:
    """Remove everything under ``root`` (a reimage), keeping ``root``."""
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()


def _rmtree(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
