"""Pools and jobs alike: create-or-read, delete, and wait until gone.

Batch treats pools and jobs the same way at their edges, and so does this module: one create that tolerates an
id already taken (`create_or_read`), one delete that tolerates an entity already gone or going (`delete`), and
one wait for an entity being deleted to disappear (`wait_until_gone`). `aiobatch._pools` and `aiobatch._jobs`
add what differs (the model they send, what they judge); `aiobatch._run` uses the delete for cleanup and sweeps.

Deletion takes time. A pool or job being deleted keeps its id until the service has finished (minutes for a
pool on Azure), and a create with that id meets ``409 PoolBeingDeleted`` / ``JobBeingDeleted``. `create_or_read`
then waits, bounded by *deletion_timeout*, for the old one to go, and creates the new one.

The SDK's delete poller is not used to wait: it polls every 5 s by default and ends silently, as if done, on the
first failed poll. `wait_until_gone` polls a GET itself (each poll retried under the policy) until it answers 404.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import anyio
from azure.batch import models
from azure.batch.aio import BatchClient

from ._errors import ConflictError, DeadlineExceededError, NotFoundError
from ._retry import RetryPolicy, call
from ._specs import wire_value

__all__ = ["EntityKind", "Found", "create_or_read", "delete", "reader", "wait_until_gone"]

logger = logging.getLogger("aiobatch")

#: The Batch entities this module handles.
EntityKind = Literal["pool", "job"]

_Entity = TypeVar("_Entity", models.BatchPool, models.BatchJob)


def reader(batch: BatchClient, kind: EntityKind, entity_id: str, select: Sequence[str]) -> Callable[[], Awaitable[Any]]:
    """A GET of one pool or job with only the *select*-ed properties, as a callable for `call` to retry."""
    fields = list(select)
    if kind == "pool":
        return lambda: batch.get_pool(entity_id, select=fields)
    return lambda: batch.get_job(entity_id, select=fields)


@dataclass(frozen=True)
class Found(Generic[_Entity]):
    """What `create_or_read` found: nothing (``existing is None``: the create took effect) or the entity there.

    Attributes:
        existing: the pool or job already holding the id (its id, state and metadata), or ``None``.
        attempts: how many times the create was sent in the last round (more than one: an earlier attempt,
            whose answer was lost, may have made *existing*).
    """

    existing: _Entity | None
    attempts: int


async def create_or_read(
    create: Callable[[], Awaitable[object]],
    read: Callable[[], Awaitable[_Entity]],
    kind: EntityKind,
    entity_id: str,
    *,
    policy: RetryPolicy | None,
    deletion_timeout: float,
) -> Found[_Entity]:
    """Create a pool or job; when the id is taken, read what holds it.

    A pool or job with the id that is being deleted (the create's ``*BeingDeleted``, or one read in the
    ``deleting`` state) is waited for, up to *deletion_timeout* in all, and the create is sent again; so is one
    deleted between the create and the read.

    Raises:
        ConflictError: a conflict other than the id being taken, or still being deleted after the timeout.
    """
    deadline = anyio.current_time() + deletion_timeout
    being_deleted, exists = f"{kind.capitalize()}BeingDeleted", f"{kind.capitalize()}Exists"
    while True:
        attempts = 0

        async def attempt() -> None:
            nonlocal attempts
            attempts += 1
            await create()

        try:
            await call(attempt, policy=policy, resource=kind, resource_id=entity_id, action="create")
            return Found(None, attempts)
        except ConflictError as exc:
            if exc.code not in (being_deleted, exists):
                raise
            if exc.code == exists:
                try:
                    entity = await call(read, policy=policy, resource=kind, resource_id=entity_id)
                except NotFoundError:
                    continue  # deleted between the create and the read: create it again
                if wire_value(entity.state) != "deleting":
                    return Found(entity, attempts)
        logger.info("%s %r is being deleted; waiting for it to go before creating it again", kind, entity_id)
        try:
            await wait_until_gone(
                read,
                kind=kind,
                resource_id=entity_id,
                poll_interval=0.2,
                max_poll_interval=10.0,
                timeout=max(0.0, deadline - anyio.current_time()),
                policy=policy,
            )
        except DeadlineExceededError as exc:
            raise ConflictError(
                f"{kind} {entity_id!r} was still being deleted after {deletion_timeout:g} s, so a new {kind} with "
                "this id cannot be created yet. Wait until the deletion finishes (pass a longer "
                f"deletion_timeout), or choose another {kind} id.",
                service="batch",
                status=409,
                code=being_deleted,
                resource_kind=kind,
                resource_id=entity_id,
            ) from exc


async def delete(
    batch: BatchClient,
    kind: EntityKind,
    entity_id: str,
    *,
    wait: bool = False,
    poll_interval: float = 1.0,
    timeout: float = 600.0,  # noqa: ASYNC109 (bounds the wait only, not the delete request)
    policy: RetryPolicy | None = None,
) -> bool:
    """Delete a pool or a job (its tasks, and an auto-pool with it); one gone or being deleted counts as done.

    Args:
        batch: the Batch client.
        kind: ``"pool"`` or ``"job"``.
        entity_id: its id.
        wait: also wait until the service has removed it (it is ``deleting`` meanwhile).
        poll_interval: seconds between polls while waiting.
        timeout: seconds to wait for the removal, with *wait*.
        policy: the retry policy for each request.

    Returns:
        ``True`` if this call asked for the deletion, ``False`` if it was already gone or going.

    Raises:
        DeadlineExceededError: with *wait*, still there after *timeout*.
        ServiceError: the service refused the deletion.
    """

    async def send() -> object:
        if kind == "pool":
            return await batch.begin_delete_pool(entity_id)
        return await batch.begin_delete_job(entity_id)

    try:
        await call(send, policy=policy, resource=kind, resource_id=entity_id, action="delete")
        requested = True
        logger.info("deleting %s %r", kind, entity_id)
    except NotFoundError:
        return False
    except ConflictError as exc:
        if (exc.code or "").lower() != f"{kind}beingdeleted":
            raise
        requested = False
    if wait:
        await wait_until_gone(
            reader(batch, kind, entity_id, ["id", "state"]),
            kind=kind,
            resource_id=entity_id,
            poll_interval=poll_interval,
            timeout=timeout,
            policy=policy,
        )
    return requested


async def wait_until_gone(
    get: Callable[[], Awaitable[object]],
    *,
    kind: str,
    resource_id: str,
    poll_interval: float,
    timeout: float,  # noqa: ASYNC109 (a typed DeadlineExceededError naming the resource)
    policy: RetryPolicy | None = None,
    max_poll_interval: float | None = None,
) -> None:
    """Poll ``get()`` until it raises `NotFoundError`.

    Polls come every *poll_interval* seconds, or, with *max_poll_interval*, back off from it (x1.5 a poll) to it.

    Raises:
        DeadlineExceededError: still there after *timeout* seconds.
    """
    interval = poll_interval
    with anyio.move_on_after(timeout):
        while True:
            try:
                await call(get, policy=policy, resource=kind, resource_id=resource_id)
            except NotFoundError:
                return
            await anyio.sleep(interval)
            if max_poll_interval is not None:
                interval = min(interval * 1.5, max_poll_interval)
    raise DeadlineExceededError(
        f"{kind} {resource_id!r} was still being deleted after {timeout:g} s. It will go on its own; check it "
        "later, or wait longer (timeout=).",
        operation=f"deleting {kind} {resource_id!r}",
        timeout=timeout,
    )
