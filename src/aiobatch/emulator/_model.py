"""Account state: pools, nodes, jobs, tasks and applications, with the service's id and state rules.

No I/O happens here.  `_wire` turns request bodies into these objects and renders them back; `_scheduler` moves
them through their states.  Every entity keeps ``spec``, the JSON the client sent with the service's defaults
filled in, so that properties the emulator does not act on still round-trip as the real service returns them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import re
import secrets
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _clock
from ._autoscale_runs import PoolAutoScale, SampleHistory
from ._catalogue import cores_of
from ._types import FailureInfo, OutputFile, ResourceFile, TaskOutcome

if TYPE_CHECKING:
    from ._dependencies import Dependencies

#: Pool, job and task ids: 1-64 letters, digits, hyphens and underscores (the service's rule).
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: How many recently completed tasks a node reports in ``recentTasks``.
RECENT_TASKS = 10

#: How many lines of its service log (`Node.events`) a node keeps.
NODE_LOG_LINES = 2000

#: Node states in which a node can take tasks.
SCHEDULABLE_NODE_STATES = frozenset({"idle", "running"})

_etag_counter = itertools.count(0x5A09C0000000)


def utcnow() -> dt.datetime:
    """The emulated service's current time (its `_clock`), UTC, timezone-aware."""
    return _clock.now()


class TaskQueue(deque[str]):
    """A job's queue of active task keys, which tells its scheduler when a task is queued.

    Every path that queues a task (a task added, retried, requeued, reactivated) appends here, so the scheduler's
    index of jobs with queued tasks (`Scheduler.add_job` sets ``on_push``) never misses one.
    """

    __slots__ = ("on_push",)

    def __init__(self) -> None:
        super().__init__()
        self.on_push: Any = None

    def append(self, key: str) -> None:
        super().append(key)
        if self.on_push is not None:
            self.on_push()

    def appendleft(self, key: str) -> None:
        super().appendleft(key)
        if self.on_push is not None:
            self.on_push()


def new_etag() -> str:
    """An ETag in the service's shape: ``0x8DE`` followed by 12 hex digits, unique per change."""
    return f"0x8DE{next(_etag_counter):012X}"


class ServiceError(Exception):
    """A request the service refuses; `_wire` renders it as the OData error body.

    Args:
        status: The HTTP status.
        code: The service's error code, e.g. ``PoolNotFound``.
        message: The first line of ``message.value``.
        values: ``(key, value)`` details, rendered as ``values``.
        headers: Extra response headers (``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        values: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.values = values or []
        self.headers = headers or {}


def invalid_property(name: str, value: object, reason: str) -> ServiceError:
    """The service's 400 ``InvalidPropertyValue`` for one property."""
    return ServiceError(
        400,
        "InvalidPropertyValue",
        "The value provided for one of the properties in the request body is invalid.",
        [("PropertyName", name), ("PropertyValue", str(value)), ("Reason", reason)],
    )


def invalid_body(reason: str) -> ServiceError:
    """The service's 400 ``InvalidRequestBody``: not JSON, or not the JSON shape the operation takes."""
    return ServiceError(
        400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.", [("Reason", reason)]
    )


def missing_property(name: str) -> ServiceError:
    """The service's 400 ``MissingRequiredProperty``."""
    return ServiceError(
        400,
        "MissingRequiredProperty",
        "A required property was not specified in the request body.",
        [("PropertyName", name)],
    )


def check_id(kind: str, value: object) -> str:
    """Validate a pool, job or task id by the service's rule and return it."""
    if not isinstance(value, str) or not value:
        raise missing_property("id")
    if not ID_PATTERN.match(value):
        raise invalid_property(
            "id",
            value,
            f"The {kind} id can contain any combination of alphanumeric characters including hyphens and "
            "underscores, and cannot contain more than 64 characters.",
        )
    return value


@dataclass
class Entity:
    """What pools, jobs and tasks share: id, timestamps, ETag and a state with its history."""

    id: str
    state: str
    spec: dict[str, Any]
    creation_time: dt.datetime = field(default_factory=utcnow)
    etag: str = field(default_factory=new_etag)
    last_modified: dt.datetime = field(default_factory=utcnow)
    state_transition_time: dt.datetime = field(default_factory=utcnow)
    previous_state: str | None = None
    previous_state_transition_time: dt.datetime | None = None

    def __post_init__(self) -> None:
        self.last_modified = self.state_transition_time = self.creation_time

    def touch(self) -> None:
        """Record a change to the entity's properties (new ETag and Last-Modified)."""
        self.etag = new_etag()
        self.last_modified = utcnow()

    def set_state(self, state: str) -> None:
        """Move to ``state``, keeping the previous one as the service reports it."""
        if state == self.state:
            return
        self.previous_state, self.previous_state_transition_time = self.state, self.state_transition_time
        self.state = state
        self.state_transition_time = utcnow()


@dataclass(frozen=True)
class AppPackageRef:
    """An ``applicationPackageReferences`` entry, with the version resolved against the account."""

    application_id: str
    version: str
    #: True when the reference named no version and the default version was used.
    default: bool = False


@dataclass
class StartTask:
    """A pool's start task, as far as the scheduler acts on it."""

    command_line: str
    resource_files: tuple[ResourceFile, ...]
    environment: dict[str, str]
    max_task_retry_count: int
    wait_for_success: bool


@dataclass(frozen=True)
class StartTaskAttempt:
    """The latest attempt of a node's start task (rendered as ``startTaskInfo``)."""

    start_time: dt.datetime
    retry_count: int
    #: How it ended; None while it runs.
    outcome: TaskOutcome | None = None


@dataclass
class Node:
    """One compute node of a pool: a real scheduling unit with its own directory tree."""

    id: str
    pool_id: str
    is_dedicated: bool
    root: Path
    vm_size: str
    state: str = "creating"
    scheduling_state: str = "enabled"
    state_transition_time: dt.datetime = field(default_factory=utcnow)
    allocation_time: dt.datetime = field(default_factory=utcnow)
    last_boot_time: dt.datetime | None = None
    ip_address: str = "10.0.0.4"
    #: Running tasks: (job key, task key) -> slots they hold.
    running: dict[tuple[str, str], int] = field(default_factory=dict)
    total_tasks_run: int = 0
    total_tasks_succeeded: int = 0
    start_task_info: StartTaskAttempt | None = None
    #: Start task failure, when ``state == "starttaskfailed"``.
    start_task_failure: FailureInfo | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: (job id, task id) of the tasks that last completed here, newest first (``recentTasks``).
    recent_tasks: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=RECENT_TASKS))
    #: The boot in progress (and its start task), stopped when the node is lost or leaves the pool.
    boot: Any = field(default=None, repr=False, compare=False)
    #: User accounts created on the node (``/users``), by name; never their password or SSH key.
    users: dict[str, NodeUser] = field(default_factory=dict)
    #: What the emulator did with the node, ``(time, line)``, oldest first: its "service logs" (see `_nodes`).
    events: deque[tuple[dt.datetime, str]] = field(default_factory=lambda: deque(maxlen=NODE_LOG_LINES))
    #: Called with the node after each state change (the scheduler's free-slot index listens here).
    listener: Any = field(default=None, repr=False, compare=False)

    @property
    def running_slots(self) -> int:
        """Task slots in use."""
        return sum(self.running.values())

    def set_state(self, state: str) -> None:
        """Move the node to ``state``."""
        if state != self.state:
            self.state = state
            self.state_transition_time = utcnow()
            self.log(f"node state: {state}")
            if self.listener is not None:
                self.listener(self)

    def log(self, line: str) -> None:
        """Record one line of the node's service log (never a secret: callers pass states and ids)."""
        self.events.append((utcnow(), line))


@dataclass
class NodeUser:
    """A user account on a node, as far as the emulator keeps it: never the password or SSH key themselves."""

    name: str
    is_admin: bool
    expiry_time: dt.datetime
    has_password: bool
    has_ssh_public_key: bool


@dataclass(frozen=True)
class ResizeError:
    """An entry of a pool's ``resizeErrors``."""

    code: str
    message: str
    values: tuple[tuple[str, str], ...] = ()


@dataclass(eq=False)
class Pool(Entity):
    """A pool: its spec, allocation state and nodes."""

    vm_size: str = ""
    task_slots_per_node: int = 1
    node_fill_type: str = "spread"
    start_task: StartTask | None = None
    app_packages: tuple[AppPackageRef, ...] = ()
    target_dedicated: int = 0
    target_low_priority: int = 0
    allocation_state: str = "resizing"
    allocation_state_transition_time: dt.datetime = field(default_factory=utcnow)
    resize_errors: list[ResizeError] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)
    #: The job whose auto-pool this is, if any.
    auto_pool_job: str | None = None
    #: The allocation under way (cancelled by a new resize or a delete).
    allocation: asyncio.Task[None] | None = None
    #: ``(autoScaleFormula, autoScaleEvaluationInterval)`` of a pool created with ``enableAutoScale``, checked;
    #: the scheduler starts `autoscale` from it when it adds the pool.
    autoscale_request: tuple[str, dt.timedelta | None] | None = None
    #: Autoscale, while it is enabled.
    autoscale: PoolAutoScale | None = None
    #: The pool's metric samples since it was created (taken while autoscale is enabled, filled in when enabled).
    samples: SampleHistory | None = None
    #: When ``enableautoscale`` last succeeded (the service refuses another within 30 seconds).
    autoscale_enabled_at: dt.datetime | None = None

    def set_allocation_state(self, state: str) -> None:
        """Move the pool's allocationState."""
        if state != self.allocation_state:
            self.allocation_state = state
            self.allocation_state_transition_time = utcnow()

    def current(self, dedicated: bool) -> int:
        """Nodes of one kind the pool currently holds (not leaving it)."""
        return sum(1 for n in self.nodes.values() if n.is_dedicated == dedicated and n.state != "leavingpool")


@dataclass(eq=False)
class Task(Entity):
    """A task of a job: what to run, and how its attempts went."""

    job_key: str = ""
    command_line: str = ""
    resource_files: tuple[ResourceFile, ...] = ()
    output_files: tuple[OutputFile, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    app_packages: tuple[AppPackageRef, ...] = ()
    max_wall_clock_time: float | None = None
    max_task_retry_count: int = 0
    required_slots: int = 1
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    last_retry_time: dt.datetime | None = None
    last_requeue_time: dt.datetime | None = None
    exit_code: int | None = None
    result: str | None = None
    retry_count: int = 0
    requeue_count: int = 0
    failure_info: FailureInfo | None = None
    #: Where the last attempt ran: (pool id, node id, task root directory relative to the node root).
    node_info: tuple[str, str, str] | None = None
    #: Absolute task directory of the last attempt, for task file operations.
    task_dir: Path | None = None
    #: The attempt under way.
    runner: asyncio.Task[None] | None = None
    #: True once ``constraints.retentionTime`` elapsed after completion and the task directory was deleted.
    files_expired: bool = False


@dataclass(eq=False)
class Job(Entity):
    """A job: its pool, completion actions and tasks."""

    pool_id: str | None = None
    auto_pool: bool = False
    auto_pool_lifetime: str | None = None
    on_all_tasks_complete: str = "noaction"
    on_task_failure: str = "noaction"
    priority: int = 0
    max_task_retry_count: int = 0
    max_parallel_tasks: int = -1
    start_time: dt.datetime = field(default_factory=utcnow)
    end_time: dt.datetime | None = None
    terminate_reason: str | None = None
    #: ``commonEnvironmentSettings``: every task of the job gets them, under its own settings.
    environment: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    #: Active tasks waiting for a slot, in the order they will run.
    queue: TaskQueue = field(default_factory=TaskQueue)
    #: How many of ``tasks`` are completed (kept as tasks complete, so completion checks cost O(1)).
    completed_count: int = 0
    #: Who waits for whom, for a job created with ``usesTaskDependencies`` (`_dependencies`).
    dependencies: Dependencies | None = None
    #: The timer of ``constraints.maxWallClockTime`` (`_job_control.arm_wall_clock`), if limited.
    wall_clock: asyncio.Task[None] | None = None
    _sorted_keys: list[str] | None = None

    def sorted_task_keys(self) -> list[str]:
        """Task keys in list order (by id, case-insensitively), cached until the set of tasks changes."""
        if self._sorted_keys is None:
            self._sorted_keys = sorted(self.tasks)
        return self._sorted_keys

    def add_task(self, task: Task) -> None:
        """Add a task (its id checked unique by the caller) and queue it, unless it waits for dependencies."""
        key = task.id.lower()
        self.tasks[key] = task
        if self.dependencies is None or not self.dependencies.add(key, task.spec.get("dependsOn")):
            self.queue.append(key)
        self._sorted_keys = None

    def remove_task(self, key: str) -> None:
        """Forget a task."""
        task = self.tasks.pop(key, None)
        if task is not None and task.state == "completed":
            self.completed_count -= 1
        if self.dependencies is not None:
            self.dependencies.forget(key)
        self._sorted_keys = None

    def counts(self) -> dict[str, int]:
        """Task counts by state, and succeeded/failed among the completed."""
        counts = dict.fromkeys(("active", "running", "completed", "succeeded", "failed"), 0)
        for task in self.tasks.values():
            state = "active" if task.state in ("active", "preparing") else task.state
            counts[state] += 1
            if task.state == "completed":
                counts["failed" if task.result == "failure" else "succeeded"] += 1
        return counts

    def slot_counts(self) -> dict[str, int]:
        """Task slot counts, as ``taskSlotCounts``."""
        counts = dict.fromkeys(("active", "running", "completed", "succeeded", "failed"), 0)
        for task in self.tasks.values():
            state = "active" if task.state in ("active", "preparing") else task.state
            counts[state] += task.required_slots
            if task.state == "completed":
                counts["failed" if task.result == "failure" else "succeeded"] += task.required_slots
        return counts


@dataclass
class Application:
    """An application in the account, from ``--apps DIR/<id>/<version>.zip``."""

    id: str
    versions: dict[str, Path]
    default_version: str | None = None
    display_name: str | None = None


@dataclass
class Account:
    """Everything one emulated Batch account holds."""

    name: str
    url: str
    #: Whether a pool's VM size and image must be in the catalogue (``catalogue.json``); False accepts any.
    strict_catalogue: bool = True
    pools: dict[str, Pool] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    applications: dict[str, Application] = field(default_factory=dict)
    #: What the account committed, by (kind, lower-cased id): the oracle for "created exactly once".
    created: Counter[tuple[str, str]] = field(default_factory=Counter)
    deleted: Counter[tuple[str, str]] = field(default_factory=Counter)

    def record_create(self, kind: str, entity_id: str) -> None:
        """Count a committed create of a pool, job or task (tasks as ``job/task``)."""
        self.created[(kind, entity_id.lower())] += 1

    def record_delete(self, kind: str, entity_id: str) -> None:
        """Count an accepted delete."""
        self.deleted[(kind, entity_id.lower())] += 1

    def get_pool(self, pool_id: str) -> Pool:
        """The pool with this id (case-insensitive), or the service's PoolNotFound."""
        pool = self.pools.get(pool_id.lower())
        if pool is None:
            raise ServiceError(404, "PoolNotFound", "The specified pool does not exist.")
        return pool

    def get_job(self, job_id: str) -> Job:
        """The job with this id (case-insensitive), or the service's JobNotFound."""
        job = self.jobs.get(job_id.lower())
        if job is None:
            raise ServiceError(404, "JobNotFound", "The specified job does not exist.")
        return job

    def get_task(self, job_id: str, task_id: str) -> tuple[Job, Task]:
        """The job and its task, or JobNotFound / TaskNotFound."""
        job = self.get_job(job_id)
        task = job.tasks.get(task_id.lower())
        if task is None:
            raise ServiceError(404, "TaskNotFound", "The specified task does not exist.")
        return job, task

    def get_node(self, pool_id: str, node_id: str) -> tuple[Pool, Node]:
        """The pool and its node, or PoolNotFound / NodeNotFound."""
        pool = self.get_pool(pool_id)
        node = pool.nodes.get(node_id)
        if node is None:
            raise ServiceError(404, "NodeNotFound", "The specified node does not exist.")
        return pool, node

    def resolve_app_packages(self, refs: list[dict[str, Any]], prop: str) -> tuple[AppPackageRef, ...]:
        """Resolve ``applicationPackageReferences`` against the account's applications.

        Raises:
            ServiceError: 400 ``InvalidApplicationPackageReferences`` naming the missing package.
        """
        resolved = []
        for ref in refs:
            app_id = ref.get("applicationId")
            if not isinstance(app_id, str) or not app_id:
                raise missing_property(f"{prop}.applicationId")
            version = ref.get("version")
            app = self.applications.get(app_id.lower())
            chosen = version if version is not None else (app.default_version if app else None)
            if app is None or chosen is None or chosen not in app.versions:
                shown = f"{app_id}" + (f":{version}" if version else "")
                reason = (
                    f"The application package {shown} does not exist in the account"
                    if app is None or version is not None
                    else f"The application {app_id} has no default version; name a version"
                )
                raise ServiceError(
                    409 if prop == "task" else 400,
                    "InvalidApplicationPackageReferences",
                    "One or more of the specified application package references are invalid.",
                    [(shown, reason)],
                )
            resolved.append(AppPackageRef(app.id, chosen, default=version is None))
        return tuple(resolved)


def new_node_id(dedicated: bool) -> str:
    """A node id in the service's shape: ``tvmps_<64 hex digits>_d`` (``_p`` for spot)."""
    return f"tvmps_{secrets.token_hex(32)}_{'d' if dedicated else 'p'}"


def vm_cores(vm_size: str) -> int:
    """VCPUs of a VM size: the catalogue's (``catalogue.json``), else read from its name, else 1."""
    return cores_of(vm_size)


def requeue_task(job: Job, task: Task) -> None:
    """Put a running task back at the head of its job's queue, as a requeue (node lost, removed, job disabled)."""
    task.requeue_count += 1
    task.last_requeue_time = utcnow()
    task.set_state("active")
    job.queue.appendleft(task.id.lower())
