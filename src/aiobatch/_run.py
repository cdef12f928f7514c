"""The run: its id and tags, who owns a pool, job or container, what a client created, its cleanup and its sweep.

Tags. Every pool and job aiobatch creates carries the run id in its metadata (`RUN_ID_KEY`, ``aiobatch-run-id``);
every container in its metadata too (`RUN_ID_METADATA`, ``aiobatch_run_id``: blob metadata names are C#
identifiers, so no hyphen). That tag is how a run recognises its own entity when the answer to a create was lost
after the create took effect (the retry gets ``PoolExists``, the metadata says it is ours), how cleanup knows what
it may delete, and how a crash sweep finds what a dead run left behind. An entity with the same id that this run
did not create is someone else's: an error unless the caller asked, in so many words, to reuse it, and even then
it is never deleted by this run.

What a client created. `Run` records, in creation order, the pools, jobs and containers a `Client` created (or
recognised as its own by the tag), and the creates that ended without an answer -- cancelled mid-request, or
failed after an attempt that may have taken effect (see `Run.creating`). Cleanup reads those unsure ones' tags
and deletes the ones that are this run's.

Cleanup order. Jobs first (deleting a job stops its tasks and removes its auto-pool), then pools, then
containers; shielded from cancellation and bounded by the client's *cleanup_timeout*. A create cancelled while
its request was still on its way can take effect after cleanup looked: cleanup looks once more a moment later.

The sweep. A `Client` with ``cleanup=True`` deletes what it created when it closes -- unless its process dies
first (SIGKILL, an out-of-memory kill, a lost VM). What it created stays behind, still costing money, but
tagged. `sweep_run` finds it by the tag alone -- from any process, knowing nothing but the run id -- and deletes
it; ``aiobatch cleanup --run-id ID`` is its command line, ``--dry-run`` lists what it would delete. Only what
carries exactly this run id is touched. Every request is retried under the client's policy; a resource already
gone (404) or already being deleted (``*BeingDeleted``) counts as done, so a sweep can be run again, and two
sweeps at once do no harm.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal

import anyio
from azure.batch import models
from azure.batch.aio import BatchClient
from azure.storage.blob.aio import BlobServiceClient

from . import _entities, _storage
from ._errors import AiobatchError, ConfigurationError, ConflictError, NotFoundError, ServiceUnavailableError
from ._retry import RetryPolicy, call
from ._specs import ID_RE
from ._storage import RUN_ID_METADATA

__all__ = [
    "MISSING",
    "RUN_ID_KEY",
    "RUN_ID_METADATA",
    "Kind",
    "Run",
    "RunResources",
    "SweepReport",
    "check_ours",
    "check_run_id",
    "container_run_id",
    "find_run",
    "new_run_id",
    "not_ours",
    "owner",
    "run_id_of",
    "sweep_run",
    "tagged",
]

logger = logging.getLogger("aiobatch")

#: The metadata name under which aiobatch records the run id on the pools and jobs it creates.
RUN_ID_KEY = "aiobatch-run-id"

Kind = Literal["pool", "job", "container"]

#: What `owner` returns for a resource that does not exist.
MISSING: Final = object()

#: Seconds cleanup waits before looking once more for what an interrupted create may still make.
_UNSURE_GRACE = 1.0


# ----------------------------------------------------------------------------------------------------
# The run id and its tags
# ----------------------------------------------------------------------------------------------------


def new_run_id() -> str:
    """A fresh run id: UTC time to the second and 6 random hex digits, e.g. ``20261124T161837-3fa9c1``."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    """Return *run_id* if it is a valid aiobatch run id; raise `ConfigurationError` naming the rule if not."""
    if not isinstance(run_id, str) or not ID_RE.match(run_id):
        raise ConfigurationError(
            f"run id {run_id!r} is invalid: a run id is 1 to 64 letters, digits, hyphens and underscores "
            "(the client logs it when it opens: 'aiobatch client open (run ...)').",
            setting="run_id",
        )
    return run_id


def run_id_of(metadata: list[models.BatchMetadataItem] | None) -> str | None:
    """Return the aiobatch run id recorded in a pool's or job's metadata, if any.

    Args:
        metadata: the entity's ``metadata`` list as the SDK returns it.

    Returns:
        The run id, or ``None`` when the entity carries none (aiobatch did not create it).
    """
    for item in metadata or []:
        if item.name == RUN_ID_KEY:
            return item.value
    return None


def container_run_id(metadata: Mapping[str, str] | None) -> str | None:
    """Return the aiobatch run id recorded in a container's metadata (names compared case-insensitively)."""
    return {k.lower(): v for k, v in (metadata or {}).items()}.get(RUN_ID_METADATA)


def tagged(metadata: Mapping[str, str], run_id: str) -> dict[str, str]:
    """Return *metadata* with this run's id added under `RUN_ID_KEY`.

    Raises:
        ConfigurationError: *metadata* already holds `RUN_ID_KEY` with another value.
    """
    if RUN_ID_KEY in metadata and metadata[RUN_ID_KEY] != run_id:
        raise ConfigurationError(
            f"metadata {RUN_ID_KEY!r} is reserved for aiobatch's run id; remove it from the spec.",
            setting="metadata",
        )
    return {**metadata, RUN_ID_KEY: run_id}


def not_ours(
    kind: str, resource_id: str, owner: str | None, run_id: str, fix: str, *, code: str | None = None
) -> ConflictError:
    """The error for a pool or job that carries another run's id (or none): whose it is, and *fix*.

    *code* is the service's answer that revealed it (``PoolExists``, ``JobExists``), if one did.
    """
    whose = f"run {owner!r}" if owner else "something other than aiobatch"
    # Another aiobatch run's leftover (a client killed, or never closed) is what a user meets most: name the
    # command that deletes everything that run left.
    sweep = f" If run {owner!r} is over, delete what it left: aiobatch cleanup --run-id {owner}" if owner else ""
    return ConflictError(
        f"{kind} {resource_id!r} was created by {whose}, not by this run ({run_id!r}). {fix}{sweep}",
        service="batch",
        status=409 if code else None,
        code=code,
        resource_kind=kind,
        resource_id=resource_id,
    )


# ----------------------------------------------------------------------------------------------------
# Ownership
# ----------------------------------------------------------------------------------------------------


async def owner(
    batch: BatchClient, blobs: BlobServiceClient, kind: Kind, resource_id: str, *, policy: RetryPolicy | None
) -> str | object | None:
    """The run id a pool, job or container carries (``None``: none), or `MISSING` if it does not exist."""

    async def read() -> str | None:
        if kind == "container":
            props = await blobs.get_container_client(resource_id).get_container_properties()
            return container_run_id(props.metadata)
        entity = await _entities.reader(batch, kind, resource_id, ["id", "metadata"])()
        return run_id_of(entity.metadata)

    try:
        return await call(read, policy=policy, resource=kind, resource_id=resource_id)
    except NotFoundError:
        return MISSING


async def check_ours(
    batch: BatchClient,
    blobs: BlobServiceClient,
    kind: Literal["pool", "job"],
    resource_id: str,
    run_id: str,
    *,
    policy: RetryPolicy | None,
) -> None:
    """Raise `ConflictError` unless the pool or job carries *run_id* (or does not exist)."""
    found = await owner(batch, blobs, kind, resource_id, policy=policy)
    if found is MISSING or found == run_id:
        return
    assert found is None or isinstance(found, str)
    raise not_ours(kind, resource_id, found, run_id, "It was not deleted; pass force=True to delete it anyway.")


# ----------------------------------------------------------------------------------------------------
# What a client created, and its cleanup
# ----------------------------------------------------------------------------------------------------


class Run:
    """What one client's run created (or recognised as its own), what is unsure, and how to delete it all.

    Attributes:
        run_id: the run.
        pools: the pools, in creation order (a dict used as an ordered set).
        jobs: the jobs, likewise.
        containers: the containers, likewise.
        unsure: creates that ended without an answer, ``(kind, id)``; cleanup reads their tags.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.pools: dict[str, None] = {}
        self.jobs: dict[str, None] = {}
        self.containers: dict[str, None] = {}
        self.unsure: dict[tuple[Kind, str], None] = {}

    @property
    def created(self) -> dict[str, tuple[str, ...]]:
        """``{"jobs": ..., "pools": ..., "containers": ...}``."""
        return {"jobs": tuple(self.jobs), "pools": tuple(self.pools), "containers": tuple(self.containers)}

    @property
    def anything(self) -> bool:
        """Whether there is anything to clean up (created, or maybe created)."""
        return bool(self.pools or self.jobs or self.containers or self.unsure)

    def forget(self) -> None:
        """Forget what was created (a sweep of this run deleted it)."""
        self.jobs.clear()
        self.pools.clear()
        self.containers.clear()

    def creating(self, kind: Kind, resource_id: str) -> _Creating:
        """A context for a create: one that ends without an answer is remembered as unsure, for cleanup."""
        return _Creating(self.unsure, (kind, resource_id))

    def left_behind(self) -> str:
        """What cleanup did not delete, e.g. ``jobs job-1; pools pool-1`` (or ``something`` when unknown)."""
        left = [f"{kind} {', '.join(ids)}" for kind, ids in self.created.items() if ids]
        unsure = [f"{resource_id} ({kind}, created or not)" for kind, resource_id in self.unsure]
        if unsure:
            left.append(f"maybe {', '.join(unsure)}")
        return "; ".join(left) or "something"

    async def cleanup(
        self,
        batch: BatchClient,
        blobs: BlobServiceClient,
        *,
        policy: RetryPolicy | None,
        timeout: float,  # noqa: ASYNC109 (the error says the cleanup did not finish)
    ) -> list[BaseException]:
        """Delete this run's jobs, pools and containers: shielded from cancellation, bounded by *timeout*.

        Returns:
            The errors met (cleanup goes on past each); empty when everything was deleted.
        """
        errors: list[BaseException] = []
        jobs, pools, containers = list(self.jobs), list(self.pools), list(self.containers)
        unsure = list(self.unsure)
        if not (jobs or pools or containers or unsure):
            return errors
        logger.info(
            "cleaning up run %s: %d jobs, %d pools, %d containers%s",
            self.run_id,
            len(jobs),
            len(pools),
            len(containers),
            f" (and {len(unsure)} creates that ended without an answer)" if unsure else "",
        )
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + timeout
            # A create interrupted after its request took effect left a resource this client never heard of:
            # it carries this run's tag, which is how it is told from one that another run made meanwhile.
            missing = await self._claim_unsure(batch, blobs, policy, unsure, jobs, pools, containers, errors)
            await self._delete(batch, blobs, policy, jobs, pools, containers, errors)
            if missing:
                # A create cancelled while its request was still on its way can take effect after the check
                # above: look once more, a moment later, and delete what has appeared since.
                await anyio.sleep(_UNSURE_GRACE)
                late: tuple[list[str], list[str], list[str]] = ([], [], [])
                await self._claim_unsure(batch, blobs, policy, missing, *late, errors)
                await self._delete(batch, blobs, policy, *late, errors)
        if scope.cancelled_caught:
            errors.append(AiobatchError(f"the cleanup did not finish within {timeout:g} s (cleanup_timeout)"))
        for error in errors:
            logger.warning("cleanup of run %s: %s", self.run_id, error)
        return errors

    async def _claim_unsure(
        self,
        batch: BatchClient,
        blobs: BlobServiceClient,
        policy: RetryPolicy | None,
        unsure: list[tuple[Kind, str]],
        jobs: list[str],
        pools: list[str],
        containers: list[str],
        errors: list[BaseException],
    ) -> list[tuple[Kind, str]]:
        """Add the unsure creates that turned out to be this run's to the lists; return those not found."""
        found: dict[Kind, list[str]] = {"job": jobs, "pool": pools, "container": containers}
        missing: list[tuple[Kind, str]] = []
        for kind, resource_id in unsure:
            try:
                tag = await owner(batch, blobs, kind, resource_id, policy=policy)
            except AiobatchError as exc:
                errors.append(exc)
                continue
            if tag is MISSING:
                missing.append((kind, resource_id))
            elif tag == self.run_id and resource_id not in found[kind]:
                found[kind].append(resource_id)
            self.unsure.pop((kind, resource_id), None)
        return missing

    async def _delete(
        self,
        batch: BatchClient,
        blobs: BlobServiceClient,
        policy: RetryPolicy | None,
        jobs: list[str],
        pools: list[str],
        containers: list[str],
        errors: list[BaseException],
    ) -> None:
        """Delete jobs (first: that stops their tasks and removes auto-pools), pools, then containers."""
        batches: tuple[tuple[_entities.EntityKind, list[str], dict[str, None]], ...] = (
            ("job", jobs, self.jobs),
            ("pool", pools, self.pools),
        )
        for kind, ids, record in batches:
            for entity_id in ids:
                try:
                    await _entities.delete(batch, kind, entity_id, policy=policy)
                    record.pop(entity_id, None)
                except AiobatchError as exc:
                    errors.append(exc)
        if containers:
            try:
                await _storage.delete_containers(blobs, containers, policy=policy)
                for name in containers:
                    self.containers.pop(name, None)
            except AiobatchError as exc:
                errors.append(exc)


class _Creating:
    """Records ``(kind, id)`` in *unsure* when the create inside the block ends without an answer.

    That is: cancelled (the request may be in flight or done), transient failures that outlasted the retry
    policy (`ServiceUnavailableError`: an attempt whose answer was lost may have taken effect), or anything
    unexpected. Not for the service's definite answers (a refused key, someone else's id, a bad spec), nor for
    `ConfigurationError` or a `ServiceUnavailableError` whose attempts all failed to connect (no request was
    sent): nothing of this run's was made, and cleanup need not look (an unreachable service would only make
    it wait out its retries again).
    """

    def __init__(self, unsure: dict[tuple[Kind, str], None], key: tuple[Kind, str]) -> None:
        self._unsure = unsure
        self._key = key

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            return
        if isinstance(exc, ServiceUnavailableError) and not exc.reached_service:
            return
        if issubclass(exc_type, AiobatchError) and not issubclass(exc_type, ServiceUnavailableError):
            return
        self._unsure[self._key] = None


# ----------------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResources:
    """The pools, jobs and containers that carry one run's id, as the services listed them.

    Attributes:
        run_id: the run.
        jobs: job ids (sorted).
        pools: pool ids, auto-pools included (sorted).
        containers: container names (sorted).
    """

    run_id: str
    jobs: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Whether the run left nothing."""
        return not (self.jobs or self.pools or self.containers)

    @property
    def count(self) -> int:
        """How many resources in all."""
        return len(self.jobs) + len(self.pools) + len(self.containers)

    def lines(self) -> list[str]:
        """One line per resource, ``"job <id>"``, ``"pool <id>"``, ``"container <name>"``, in deletion order."""
        return (
            [f"job {j}" for j in self.jobs]
            + [f"pool {p}" for p in self.pools]
            + [f"container {c}" for c in self.containers]
        )

    def summary(self) -> str:
        """E.g. ``"2 jobs, 1 pool, 3 containers"``."""

        def n(count: int, what: str) -> str:
            return f"{count} {what}{'' if count == 1 else 's'}"

        return f"{n(len(self.jobs), 'job')}, {n(len(self.pools), 'pool')}, {n(len(self.containers), 'container')}"


@dataclass(frozen=True)
class SweepReport:
    """What `sweep_run` found and did.

    Attributes:
        found: what carried the run id when the sweep listed the services.
        dry_run: nothing was deleted (``found`` is what a sweep would delete).
        elapsed: seconds the sweep took.
    """

    found: RunResources
    dry_run: bool
    elapsed: float

    @property
    def run_id(self) -> str:
        """The run swept."""
        return self.found.run_id


async def find_run(
    batch: BatchClient, blobs: BlobServiceClient, run_id: str, *, policy: RetryPolicy | None = None
) -> RunResources:
    """List the jobs, pools and containers that carry *run_id* in their metadata.

    Three listings (each paged, each restarted whole under *policy* if a page fails): jobs and pools with
    their ids, states and metadata only; containers with their metadata.

    Args:
        batch: the Batch client.
        blobs: the Blob service client.
        run_id: the run.
        policy: the retry policy for each listing.

    Returns:
        What carries the run id.

    Raises:
        ConfigurationError: an invalid run id.
        AiobatchError: a listing failed for good (e.g. `AuthenticationError`).
    """
    check_run_id(run_id)
    select = ["id", "state", "metadata"]

    async def jobs() -> list[str]:
        return [j.id or "" async for j in batch.list_jobs(select=select) if run_id_of(j.metadata) == run_id]

    async def pools() -> list[str]:
        return [p.id or "" async for p in batch.list_pools(select=select) if run_id_of(p.metadata) == run_id]

    async def containers() -> list[str]:
        return [
            c.name async for c in blobs.list_containers(include_metadata=True) if container_run_id(c.metadata) == run_id
        ]

    found_jobs = await call(jobs, policy=policy, resource="job", action="list")
    found_pools = await call(pools, policy=policy, resource="pool", action="list")
    found_containers = await call(containers, policy=policy, resource="container", action="list")
    return RunResources(
        run_id=run_id,
        jobs=tuple(sorted(found_jobs)),
        pools=tuple(sorted(found_pools)),
        containers=tuple(sorted(found_containers)),
    )


async def sweep_run(
    batch: BatchClient,
    blobs: BlobServiceClient,
    run_id: str,
    *,
    dry_run: bool = False,
    wait: bool = True,
    timeout: float = 600.0,  # noqa: ASYNC109 (the error names what was still there)
    poll_interval: float = 1.0,
    policy: RetryPolicy | None = None,
) -> SweepReport:
    """Delete (or, with *dry_run*, only list) every job, pool and container tagged with *run_id*.

    See the module docstring for what is touched and in which order. Deleting continues past a failure, so
    one stubborn resource does not keep the others alive; the first failure is raised at the end.

    Args:
        batch: the Batch client.
        blobs: the Blob service client.
        run_id: the run to sweep.
        dry_run: list what would be deleted, delete nothing.
        wait: also wait until the service has removed the jobs and pools (they are ``deleting`` meanwhile).
        timeout: seconds to wait for the removals, with *wait*.
        poll_interval: seconds between polls while waiting.
        policy: the retry policy for each request.

    Returns:
        What was found (and deleted, unless *dry_run*).

    Raises:
        ConfigurationError: an invalid run id.
        AiobatchError: something could not be deleted (the message says what; running the sweep again
            retries it).
    """
    started = time.monotonic()
    found = await find_run(batch, blobs, run_id, policy=policy)
    if dry_run or found.empty:
        logger.info("run %s: %s%s", run_id, found.summary(), " (dry run: nothing deleted)" if dry_run else "")
        return SweepReport(found=found, dry_run=dry_run, elapsed=time.monotonic() - started)
    logger.info("sweeping run %s: %s", run_id, found.summary())
    errors: list[AiobatchError] = []

    async def attempt(what: str, action: Awaitable[object]) -> bool:
        """Await *action*; a failure is recorded (the sweep goes on), a resource already gone is done."""
        try:
            await action
        except NotFoundError:
            return True
        except AiobatchError as exc:
            logger.warning("sweeping run %s: could not delete %s: %s", run_id, what, exc)
            errors.append(exc)
            return False
        return True

    # Jobs first: deleting a job stops its tasks and takes its auto-pool with it.
    deleted: list[tuple[_entities.EntityKind, str]] = []
    listed: tuple[tuple[_entities.EntityKind, tuple[str, ...]], ...] = (("job", found.jobs), ("pool", found.pools))
    for kind, ids in listed:
        for entity_id in ids:
            if await attempt(f"{kind} {entity_id}", _entities.delete(batch, kind, entity_id, policy=policy)):
                deleted.append((kind, entity_id))
    if found.containers:
        containers = ", ".join(found.containers)
        await attempt(f"containers {containers}", _storage.delete_containers(blobs, found.containers, policy=policy))
    if wait:
        with anyio.move_on_after(timeout) as scope:
            for kind, entity_id in deleted:
                gone = _entities.wait_until_gone(
                    _entities.reader(batch, kind, entity_id, ["id", "state"]),
                    kind=kind,
                    resource_id=entity_id,
                    poll_interval=poll_interval,
                    timeout=timeout,
                    policy=policy,
                )
                await attempt(f"{kind} {entity_id}", gone)
        if scope.cancelled_caught:
            errors.append(
                AiobatchError(f"run {run_id}: the jobs and pools were still being deleted after {timeout:g} s.")
            )
    elapsed = time.monotonic() - started
    if errors:
        raise AiobatchError(
            f"sweeping run {run_id!r} left something behind ({len(errors)} error(s)); the first: {errors[0]} "
            "Run the sweep again (aiobatch cleanup --run-id ...) to retry."
        ) from errors[0]
    logger.info("swept run %s: %s in %.1f s", run_id, found.summary(), elapsed)
    return SweepReport(found=found, dry_run=False, elapsed=elapsed)
