"""Sweeping a run: find the pools, jobs and containers tagged with a run id, and list or delete them.

A `Client` with ``cleanup=True`` deletes what it created when it closes -- unless its process dies first
(SIGKILL, an out-of-memory kill, a lost VM). What it created stays behind, still costing money, but tagged:
pools and jobs carry the run id in their metadata (``aiobatch-run-id``, `aiobatch._pools.RUN_ID_KEY`),
containers in theirs (``aiobatch_run_id``, `aiobatch._storage.RUN_ID_METADATA`). `sweep_run` finds them by that
tag alone -- from any process, knowing nothing but the run id -- and deletes them; ``aiobatch cleanup --run-id ID``
is its command line, ``--dry-run`` lists what it would delete.

What it touches: only what carries exactly this run id. An untagged pool, another run's job, a container
someone else made: never listed, never deleted. Jobs go first (deleting a job stops its tasks, and removes its
auto-pool), then pools, then containers. Every request is retried under the client's policy; a resource that
is already gone (404) or already being deleted (``*BeingDeleted``) counts as done, so a sweep can be run again,
and two sweeps at once do no harm.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from azure.batch.aio import BatchClient
from azure.storage.blob.aio import BlobServiceClient

from . import _jobs, _pools, _storage
from ._errors import AiobatchError, ConfigurationError, NotFoundError
from ._pools import run_id_of
from ._retry import RetryPolicy, call

__all__ = ["RunResources", "SweepReport", "find_run", "sweep_run"]

logger = logging.getLogger("aiobatch")

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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


def check_run_id(run_id: str) -> str:
    """Return *run_id* if it is a valid aiobatch run id; raise `ConfigurationError` naming the rule if not."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise ConfigurationError(
            f"run id {run_id!r} is invalid: a run id is 1 to 64 letters, digits, hyphens and underscores "
            "(the client logs it when it opens: 'aiobatch client open (run ...)').",
            setting="run_id",
        )
    return run_id


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

    async def jobs() -> list[str]:
        return [j.id or "" async for j in batch.list_jobs(select=["id", "state", "metadata"]) if _ours(j, run_id)]

    async def pools() -> list[str]:
        return [p.id or "" async for p in batch.list_pools(select=["id", "state", "metadata"]) if _ours(p, run_id)]

    async def containers() -> list[str]:
        return [
            c.name
            async for c in blobs.list_containers(include_metadata=True)
            if {k.lower(): v for k, v in (c.metadata or {}).items()}.get(_storage.RUN_ID_METADATA) == run_id
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


def _ours(entity: object, run_id: str) -> bool:
    return run_id_of(getattr(entity, "metadata", None)) == run_id


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

    Example:
        >>> async def sweep(client, run_id):  # doctest: +SKIP
        ...     report = await sweep_run(client.batch, client.blob_service, run_id)
        ...     print("deleted", report.found.summary())
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
    jobs = [j for j in found.jobs if await attempt(f"job {j}", _jobs.delete_job(batch, j, policy=policy))]
    pools = [p for p in found.pools if await attempt(f"pool {p}", _pools.delete_pool(batch, p, policy=policy))]
    if found.containers:
        containers = ", ".join(found.containers)
        await attempt(f"containers {containers}", _storage.delete_containers(blobs, found.containers, policy=policy))
    if wait:
        with anyio.move_on_after(timeout) as scope:
            for job_id in jobs:
                await attempt(f"job {job_id}", _gone(batch.get_job, "job", job_id, poll_interval, timeout, policy))
            for pool_id in pools:
                await attempt(f"pool {pool_id}", _gone(batch.get_pool, "pool", pool_id, poll_interval, timeout, policy))
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


async def _gone(
    get: Callable[..., Awaitable[object]],
    kind: str,
    resource_id: str,
    poll_interval: float,
    timeout: float,  # noqa: ASYNC109 (a typed DeadlineExceededError naming the resource)
    policy: RetryPolicy | None,
) -> None:
    """Wait until a job or pool being deleted answers 404."""
    await _pools.wait_until_gone(
        lambda: get(resource_id, select=["id", "state"]),
        kind=kind,
        resource_id=resource_id,
        poll_interval=poll_interval,
        timeout=timeout,
        policy=policy,
    )
