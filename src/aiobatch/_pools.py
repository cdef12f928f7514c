"""Pools: create one from a spec unless it exists, recognise this run's own, and judge when it is ready.

Ownership. Every pool aiobatch creates carries the run id in its metadata (see `aiobatch._run`). A pool with the
same id that this run did not create is someone else's: it is an error unless the caller asked, in so many words,
to reuse an existing pool (``reuse_existing=True``), and even then it is never deleted by this run.

Readiness. `wait_for_pool_ready` polls with tenacity (exponential backoff from *poll_interval* up to
*max_poll_interval*) until the allocation is steady and enough nodes are usable (idle or running). It does not
wait for what cannot come: once the allocation is steady and no node is on its way (creating, starting,
waiting for its start task, rebooting, ...), too few usable nodes is final, and the error says why:
`PoolStartTaskError` when start tasks failed, `PoolResizeError` when the pool reports resize errors (a core
quota, no capacity), `PoolError` when nodes are unusable. A resize error on a pool that has enough usable nodes
is stale (resize errors stay until the next resize) and is not fatal.

Deletion takes time: a pool with the id that is being deleted is waited for, and the new one created then (see
`aiobatch._entities`), so running the same script twice in a row just works.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
from azure.batch.aio import BatchClient
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from ._entities import create_or_read, reader
from ._errors import (
    ConfigurationError,
    PoolError,
    PoolResizeError,
    PoolStartTaskError,
    PoolTimeoutError,
)
from ._retry import RetryPolicy, call
from ._run import not_ours, run_id_of, tagged
from ._specs import PoolSpec, check_id, to_pool_model, wire_value

__all__ = [
    "PoolRef",
    "PoolStatus",
    "ensure_pool",
    "get_pool_status",
    "judge_readiness",
    "wait_for_pool_ready",
]

logger = logging.getLogger("aiobatch")


# Node states, as the service spells them (lower-case), sorted by what they mean for readiness.
_USABLE = frozenset({"idle", "running"})
_COMING = frozenset(
    {
        "creating",
        "starting",
        "waitingforstarttask",
        "rebooting",
        "reimaging",
        "unknown",
        "upgradingos",
        "preempted",  # a spot node comes back when capacity does
        "deallocating",
        "deallocated",
    }
)
_START_FAILED = "starttaskfailed"
_UNUSABLE = "unusable"

_POOL_SELECT = [
    "id",
    "state",
    "allocationState",
    "resizeErrors",
    "currentDedicatedNodes",
    "currentLowPriorityNodes",
    "targetDedicatedNodes",
    "targetLowPriorityNodes",
    "metadata",
]


@dataclass(frozen=True)
class PoolRef:
    """A pool `ensure_pool` made sure of, and whose it is.

    Attributes:
        id: the pool id.
        created: this call's create took effect (also when its answer was lost and the retry saw ``PoolExists``).
        owned: the pool carries this run's id, so this run may delete it; ``False`` for an adopted pool.
    """

    id: str
    created: bool
    owned: bool


@dataclass(frozen=True)
class PoolStatus:
    """A pool's allocation as `wait_for_pool_ready` last saw it.

    Attributes:
        id: the pool id.
        state: ``active`` or ``deleting``.
        allocation_state: ``steady``, ``resizing`` or ``stopping``.
        target_nodes: dedicated plus spot nodes asked for.
        usable_nodes: nodes that can run tasks now (idle or running).
        coming_nodes: nodes on their way to usable (creating, starting, waiting for the start task, ...).
        node_states: node count per state.
        resize_errors: the pool's resize errors as ``(code, message)`` pairs (possibly stale).
        failed_start_nodes: ids of nodes whose start task failed.
    """

    id: str
    state: str
    allocation_state: str
    target_nodes: int
    usable_nodes: int
    coming_nodes: int
    node_states: Mapping[str, int]
    resize_errors: tuple[tuple[str, str], ...]
    failed_start_nodes: tuple[str, ...]

    def describe(self) -> str:
        """One line for messages and logs: allocation, usable/target, nodes per state, resize errors."""
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.node_states.items())) or "no nodes"
        text = f"allocation {self.allocation_state}, {self.usable_nodes} of {self.target_nodes} nodes usable ({states})"
        if self.resize_errors:
            text += "; resize errors: " + "; ".join(f"{c}: {m}" for c, m in self.resize_errors)
        return text


# ----------------------------------------------------------------------------------------------------
# ensure_pool
# ----------------------------------------------------------------------------------------------------


async def ensure_pool(
    batch: BatchClient,
    spec: PoolSpec,
    *,
    run_id: str,
    reuse_existing: bool = False,
    policy: RetryPolicy | None = None,
    deletion_timeout: float = 900.0,
) -> PoolRef:
    """Create the pool described by *spec* unless it exists; tell whose it is.

    The pool is created tagged with *run_id*. When the id is taken (``PoolExists``), the existing pool is read:
    if it carries *run_id* it is this run's (created by an earlier attempt whose answer was lost, or by an
    earlier call of the same run) and is left alone; otherwise it is someone else's, adopted only with
    *reuse_existing*. When a pool with the id is being deleted (anyone's: it is going away), the call waits
    until it is gone, then creates the new pool.

    Args:
        batch: the Batch client.
        spec: the pool.
        run_id: this run's id, recorded in the pool's metadata.
        reuse_existing: adopt a pool with this id that this run did not create (it is never deleted by it).
        policy: the retry policy for each request.
        deletion_timeout: seconds to wait for a pool with this id that is being deleted to go.

    Returns:
        The pool's id, whether this call created it and whether it is this run's.

    Raises:
        ConflictError: the id belongs to a pool this run did not create (and *reuse_existing* is false), or a
            pool with the id was still being deleted after *deletion_timeout*.
        ServiceError: the service refused the spec (the message has its reason).
    """
    model = to_pool_model(dataclasses.replace(spec, metadata=tagged(spec.metadata, run_id)))
    found = await create_or_read(
        lambda: batch.create_pool(model),
        reader(batch, "pool", spec.id, ["id", "state", "metadata"]),
        "pool",
        spec.id,
        policy=policy,
        deletion_timeout=deletion_timeout,
    )
    if found.existing is None:
        logger.info("created pool %r (%d dedicated, %d spot nodes)", spec.id, spec.dedicated_nodes, spec.spot_nodes)
        return PoolRef(id=spec.id, created=True, owned=True)
    owner = run_id_of(found.existing.metadata)
    if owner == run_id:
        # A retried create that finds our own tag: the first attempt took effect and its answer was lost.
        created = found.attempts > 1
        logger.info("pool %r is this run's (%s); leaving it as it is", spec.id, "created" if created else "exists")
        return PoolRef(id=spec.id, created=created, owned=True)
    if reuse_existing:
        logger.info("reusing existing pool %r (not created by this run; it will not be deleted by it)", spec.id)
        return PoolRef(id=spec.id, created=False, owned=False)
    raise not_ours(
        "pool",
        spec.id,
        owner,
        run_id,
        "Choose another pool id, or pass reuse_existing=True to run on it as it is (it will not be deleted).",
        code="PoolExists",
    )


# ----------------------------------------------------------------------------------------------------
# Readiness
# ----------------------------------------------------------------------------------------------------


async def get_pool_status(batch: BatchClient, pool_id: str, *, policy: RetryPolicy | None = None) -> PoolStatus:
    """Read a pool's allocation and its nodes' states (two requests).

    Args:
        batch: the Batch client.
        pool_id: the pool.
        policy: the retry policy for each request.

    Returns:
        The status.

    Raises:
        NotFoundError: the pool does not exist.
    """
    pool = await call(
        lambda: batch.get_pool(pool_id, select=_POOL_SELECT),
        policy=policy,
        resource="pool",
        resource_id=pool_id,
    )
    states: Counter[str] = Counter()
    failed: list[str] = []
    if (pool.current_dedicated_nodes or 0) + (pool.current_low_priority_nodes or 0) > 0:

        async def list_nodes() -> list[tuple[str, str]]:
            return [
                (node.id or "", wire_value(node.state))
                async for node in batch.list_nodes(pool_id, select=["id", "state"])
            ]

        nodes = await call(list_nodes, policy=policy, resource="pool", resource_id=pool_id, action="list nodes of")
        for node_id, state in nodes:
            states[state] += 1
            if state == _START_FAILED:
                failed.append(node_id)
    errors = tuple((e.code or "", e.message or "") for e in pool.resize_errors or [])
    return PoolStatus(
        id=pool_id,
        state=wire_value(pool.state),
        allocation_state=wire_value(pool.allocation_state),
        target_nodes=(pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0),
        usable_nodes=sum(n for s, n in states.items() if s in _USABLE),
        coming_nodes=sum(n for s, n in states.items() if s in _COMING),
        node_states=dict(states),
        resize_errors=errors,
        failed_start_nodes=tuple(failed),
    )


class _NotReady(Exception):
    """The pool may still become ready: poll again."""

    def __init__(self, status: PoolStatus) -> None:
        super().__init__(status.describe())
        self.status = status


def judge_readiness(status: PoolStatus, min_nodes: int | None = None) -> bool:
    """Decide from one status whether the pool is ready, may still become ready, or never will.

    Args:
        status: what the pool looks like now.
        min_nodes: usable nodes needed; by default every node asked for (``target_nodes``).

    Returns:
        ``True`` when the allocation is steady and enough nodes are usable; ``False`` to keep waiting.

    Raises:
        PoolStartTaskError: start tasks failed, and no other node can make up the number.
        PoolResizeError: the pool reports resize errors and too few nodes are usable or on their way.
        PoolError: the pool is being deleted, asks for too few nodes, or its nodes are unusable.
    """
    pid = status.id
    need = max(1, min_nodes if min_nodes is not None else status.target_nodes)
    if status.state == "deleting":
        raise PoolError(
            f"pool {pid!r} is being deleted, so no task will run on it. Create a new pool (another id, or the "
            "same once the deletion has finished).",
            pool_id=pid,
        )
    steady = status.allocation_state == "steady"
    if steady and status.usable_nodes >= need:
        return True
    if not steady or status.coming_nodes > 0:
        return False
    # Steady, nothing on its way, too few usable nodes: nothing will change unless someone acts.
    if status.failed_start_nodes:
        raise PoolStartTaskError(
            f"the start task failed on {len(status.failed_start_nodes)} of the nodes of pool {pid!r} "
            f"({status.describe()}), leaving {status.usable_nodes} usable where {need} are needed. Read the "
            "start task's stderr.txt on a node, fix its command line or resource files, then delete and "
            "recreate the pool.",
            pool_id=pid,
            failed_nodes=status.failed_start_nodes,
        )
    if status.resize_errors:
        listed = "; ".join(f"{c}: {m}" for c, m in status.resize_errors)
        raise PoolResizeError(
            f"pool {pid!r} could not allocate its nodes ({listed}); {status.usable_nodes} usable where {need} "
            "are needed. Request a quota increase for the VM family, choose another vm_size or region, or ask "
            "for fewer nodes (dedicated_nodes/spot_nodes, or min_nodes= to start with fewer).",
            pool_id=pid,
            errors=status.resize_errors,
        )
    if status.node_states.get(_UNUSABLE):
        raise PoolError(
            f"pool {pid!r} has {status.node_states[_UNUSABLE]} unusable nodes ({status.describe()}) and "
            f"{status.usable_nodes} usable where {need} are needed. Resize the pool (or delete and recreate "
            "it) to replace the broken nodes.",
            pool_id=pid,
        )
    if status.target_nodes < need:
        raise PoolError(
            f"pool {pid!r} asks for {status.target_nodes} nodes, fewer than the {need} needed. Resize it, or pass "
            "a smaller min_nodes.",
            pool_id=pid,
        )
    # Nodes counted by the pool but not yet listed: a moment of lag, not a verdict.
    return False


async def wait_for_pool_ready(
    batch: BatchClient,
    pool_id: str,
    *,
    min_nodes: int | None = None,
    timeout: float = 1800.0,  # noqa: ASYNC109 (the error says what the pool looked like when time ran out)
    poll_interval: float = 2.0,
    max_poll_interval: float = 30.0,
    policy: RetryPolicy | None = None,
) -> PoolStatus:
    """Wait until the pool's allocation is steady and enough nodes are usable; fail fast when they cannot be.

    A tenacity loop polls the pool (and its nodes) with exponential backoff, from *poll_interval* to
    *max_poll_interval* seconds; each request is retried under *policy*. The whole wait, requests included,
    ends at *timeout*. See `judge_readiness` for the verdicts.

    Args:
        batch: the Batch client.
        pool_id: the pool.
        min_nodes: usable nodes needed; by default every node the pool asks for.
        timeout: seconds to wait in all.
        poll_interval: seconds before the second poll; waits double from there.
        max_poll_interval: the longest wait between polls.
        policy: the retry policy for each request.

    Returns:
        The pool's status once ready.

    Raises:
        PoolResizeError: the pool reports resize errors (e.g. a core quota) and too few nodes can be usable.
        PoolStartTaskError: start tasks failed on the nodes needed.
        PoolTimeoutError: not ready within *timeout*.
        PoolError: the pool is being deleted or its nodes are unusable.
        NotFoundError: the pool does not exist.
    """
    check_id("pool", pool_id)
    if min_nodes is not None and min_nodes < 1:
        raise ConfigurationError(f"min_nodes must be at least 1, not {min_nodes}.", setting="min_nodes")
    if timeout <= 0 or poll_interval <= 0 or max_poll_interval < poll_interval:
        raise ConfigurationError("timeout and poll_interval must be positive, and max_poll_interval >= poll_interval.")
    last: PoolStatus | None = None
    retrying = AsyncRetrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=poll_interval, min=poll_interval, max=max_poll_interval),
        retry=retry_if_exception_type(_NotReady),
        sleep=anyio.sleep,
        reraise=True,
    )
    try:
        with anyio.fail_after(timeout):
            async for attempt in retrying:
                with attempt:
                    last = await get_pool_status(batch, pool_id, policy=policy)
                    if not judge_readiness(last, min_nodes):
                        logger.debug("pool %r not ready: %s", pool_id, last.describe())
                        raise _NotReady(last)
    except (_NotReady, TimeoutError):
        seen = last.describe() if last is not None else "no answer yet"
        raise PoolTimeoutError(
            f"pool {pool_id!r} was not ready after {timeout:g} s ({seen}). Wait longer (timeout=), check the "
            "pool's allocation in the portal, or ask for fewer nodes (min_nodes=).",
            pool_id=pool_id,
            timeout=timeout,
        ) from None
    assert last is not None
    logger.info("pool %r ready: %s", pool_id, last.describe())
    return last
