"""The one retry policy: what is transient, how long to wait, when to give up.

Transient means HTTP 408, 429 and 5xx (except 501 and 505), an answer cut short, a timeout, and a connection
that could not be made or was dropped (azure-core's `ServiceRequestError` / `ServiceResponseError`, aiohttp
client errors, `asyncio.TimeoutError`, `ConnectionError`). Every other 4xx is final: retrying it would only
repeat it.

Waits grow exponentially from `RetryPolicy.initial` to `RetryPolicy.maximum` with random jitter, and honour
the service's ``Retry-After`` (seconds or an HTTP date; ``retry-after-ms`` too). Retrying stops at whichever
comes first: `RetryPolicy.attempts` attempts, or `RetryPolicy.deadline` seconds since the first attempt. A
wait that would end past the deadline is not slept: the policy gives up at once with a
`ServiceUnavailableError` that carries the attempts, the time spent and the last cause (``__cause__``). So
``Retry-After: 3600`` under a 60 s deadline ends in a typed error well within the minute, not an hour later.
An attempt already in flight is bounded by the SDK's connection and read timeouts (see `sdk_client_kwargs`),
not cut off by the deadline.

Layering. The Azure SDKs bring retry layers of their own: azure-core's `RetryPolicy` (up to 10 tries, no
jitter, ``Retry-After`` uncapped) and azure-storage-blob's `ExponentialRetry` (3 retries, first backoff 15 s).
Stacked under ours, attempts multiply (5 x 10 requests per call) and the deadline stops meaning anything.
aiobatch therefore builds every SDK client with `sdk_client_kwargs`, which switches the SDK layer off
(``retry_total=0``), and retries at exactly one level: here, around each request it sends (one create, one
chunk of tasks, one block of a file). Whoever calls the SDK outside `call` must retry through `call` too, or
accept no retries.

Retries are only safe for idempotent requests; creates are made idempotent by deterministic ids (a ``*Exists``
answer to a retried create is judged by the caller, not here).

In tests, `instant_waits` makes every wait instant while keeping the arithmetic: a virtual clock advances by
the time that would have been slept, so deadlines still end retrying where they would have in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import anyio
import anyio.lowlevel
from azure.core.exceptions import (
    HttpResponseError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceResponseError,
)
from tenacity import AsyncRetrying, RetryCallState

from ._errors import TRANSLATABLE, AiobatchError, ConfigurationError, ServiceUnavailableError, translate

__all__ = [
    "RetryPolicy",
    "call",
    "instant_waits",
    "is_transient",
    "retry_after",
    "sdk_client_kwargs",
    "transient_status",
]

logger = logging.getLogger("aiobatch")

T = TypeVar("T")

_TRANSIENT_STATUS = frozenset({408, 429})
_FINAL_5XX = frozenset({501, 505})  # Not Implemented, HTTP Version Not Supported: retrying cannot help.


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long aiobatch retries a transient failure.

    The wait before retry *n* (1-based) is ``min(maximum, initial * 2 ** (n - 1)) + uniform(0, jitter)``, or
    the service's ``Retry-After`` plus jitter if that is longer. Retrying stops after `attempts` attempts or
    when the next wait would end past `deadline` seconds from the first attempt, whichever comes first.

    Args:
        attempts: most attempts in all (1 = no retry).
        deadline: seconds from the first attempt after which no attempt starts and no wait ends.
        initial: seconds of the first backoff.
        maximum: cap, in seconds, of the exponential part of a backoff (``Retry-After`` is capped only by
            the deadline).
        jitter: most seconds of uniform random jitter added to each wait.
        rng: the random source for jitter; pass ``random.Random(seed)`` for reproducible timings.

    Raises:
        ConfigurationError: for a negative or zero bound.

    Example:
        >>> policy = RetryPolicy(attempts=8, deadline=300.0, rng=random.Random(7))
        >>> round(policy.backoff(1), 3) >= policy.initial
        True
    """

    attempts: int = 6
    deadline: float = 120.0
    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 1.0
    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError(f"RetryPolicy.attempts must be at least 1, not {self.attempts}.")
        if self.deadline <= 0:
            raise ConfigurationError(f"RetryPolicy.deadline must be positive seconds, not {self.deadline}.")
        if self.initial < 0 or self.maximum < 0 or self.jitter < 0:
            raise ConfigurationError("RetryPolicy.initial, maximum and jitter must not be negative.")

    def backoff(self, retry: int, *, retry_after: float | None = None) -> float:
        """Return the seconds to wait before retry number *retry* (1 for the first retry).

        Args:
            retry: 1-based number of the retry about to happen.
            retry_after: the service's ``Retry-After``, in seconds, if it sent one.

        Returns:
            The wait in seconds, jitter included.
        """
        rng = self.rng if self.rng is not None else _default_rng
        exponential = min(self.maximum, self.initial * 2.0 ** max(0, retry - 1))
        wait = exponential + rng.uniform(0.0, self.jitter)
        if retry_after is not None:
            wait = max(wait, retry_after + rng.uniform(0.0, self.jitter))
        return wait


_default_rng = random.Random()


# ----------------------------------------------------------------------------------------------------
# What is transient
# ----------------------------------------------------------------------------------------------------


def transient_status(status: int) -> bool:
    """Tell whether an HTTP error status is worth retrying: 408, 429 and 5xx but 501 and 505.

    Example:
        >>> transient_status(503), transient_status(501), transient_status(404)
        (True, False, False)
    """
    return status in _TRANSIENT_STATUS or (status >= 500 and status not in _FINAL_5XX)


def is_transient(exc: BaseException) -> bool:
    """Tell whether *exc* is worth retrying: 408/429/5xx, a cut-short answer, a timeout or a lost connection.

    Args:
        exc: an exception raised by an SDK call (azure-core, azure-batch, azure-storage-blob, aiohttp).

    Returns:
        ``True`` for transient failures; ``False`` for every other 4xx, for aiobatch's own errors and for
        anything unrecognised (a bug should surface at once, not after the deadline).

    Example:
        >>> is_transient(asyncio.TimeoutError())
        True
    """
    if isinstance(exc, IncompleteReadError):
        return True
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        if status is None or status < 400:
            # An error without a status, or raised over a 2xx, means the answer itself was damaged (a
            # truncated or undecodable body): the request may or may not have taken effect, like a drop.
            return True
        return transient_status(status)
    if isinstance(exc, aiohttp.ClientResponseError):
        return transient_status(exc.status)
    return isinstance(
        exc,
        (
            ServiceRequestError,
            ServiceResponseError,
            aiohttp.ClientError,
            asyncio.TimeoutError,
            ConnectionError,
        ),
    )


def retry_after(exc: BaseException, *, now: dt.datetime | None = None) -> float | None:
    """Read the service's requested wait from an error's response headers, in seconds.

    Understands ``retry-after-ms`` / ``x-ms-retry-after-ms`` (milliseconds) and ``Retry-After`` as seconds or
    as an HTTP date. A date in the past gives 0.

    Args:
        exc: the exception; only azure-core `HttpResponseError` and aiohttp `ClientResponseError` carry
            headers.
        now: the current time, for HTTP dates (defaults to the wall clock; for tests).

    Returns:
        The wait in seconds, or ``None`` when the service did not ask for one.

    Example:
        >>> retry_after(ValueError()) is None
        True
    """
    headers: Any = None
    if isinstance(exc, HttpResponseError) and exc.response is not None:
        headers = getattr(exc.response, "headers", None)
    elif isinstance(exc, aiohttp.ClientResponseError):
        headers = exc.headers
    if not headers:
        return None
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / 1000.0)
            except ValueError:
                pass
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    current = now or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (when - current).total_seconds())


# ----------------------------------------------------------------------------------------------------
# Clock (real, or virtual for tests)
# ----------------------------------------------------------------------------------------------------

_instant = False
_virtual_offset = 0.0


def _now() -> float:
    return time.monotonic() + _virtual_offset


async def _sleep(seconds: float) -> None:
    global _virtual_offset
    if _instant:
        _virtual_offset += seconds
        await anyio.lowlevel.checkpoint()  # still a checkpoint: cancellation is honoured as in real time
    else:
        await anyio.sleep(seconds)


@contextlib.contextmanager
def instant_waits(enabled: bool = True) -> Iterator[None]:
    """Make every retry wait instant inside the block (for tests), keeping the deadline arithmetic.

    Waits advance a virtual clock instead of sleeping, so a policy still gives up at the attempt (and after
    the virtual time) it would have in real time. The switch is process-wide, like stamina's testing mode.

    Args:
        enabled: ``False`` restores real waits inside the block.

    Example:
        >>> with instant_waits():
        ...     pass
    """
    global _instant
    previous = _instant
    _instant = enabled
    try:
        yield
    finally:
        _instant = previous


# ----------------------------------------------------------------------------------------------------
# The retry loop
# ----------------------------------------------------------------------------------------------------


async def call(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy | None = None,
    resource: str | None = None,
    resource_id: str | None = None,
    action: str | None = None,
    retry_on: Callable[[BaseException], bool] | None = None,
) -> T:
    """Await ``fn()``, retrying transient failures under *policy*, and translate what finally escapes.

    *fn* is called afresh for every attempt, so it must be safe to repeat (see the module docstring).

    Args:
        fn: a zero-argument coroutine function doing one request.
        policy: the bounds; defaults to ``RetryPolicy()``.
        resource: the kind of resource, for messages (``"pool"``, ``"blob"``, ...; see `translate`).
        resource_id: which one.
        action: the verb, for messages and logs (``"create"``, ``"upload"``).
        retry_on: an extra predicate: exceptions it accepts are retried too (e.g. a caller's own "some results
            were server errors" exception). Raise an `AiobatchError` from *fn* to have it re-raised as is
            when the policy gives up.

    Returns:
        What ``fn()`` returned.

    Raises:
        ServiceUnavailableError: transient failures outlasted the attempts or the deadline.
        AiobatchError: a non-transient failure, translated (`NotFoundError`, `ConflictError`, ...).

    Example:
        >>> async def get_pool(client, pool_id):
        ...     return await call(lambda: client.get_pool(pool_id), resource="pool", resource_id=pool_id)
    """
    policy = policy or RetryPolicy()
    start = _now()
    what = f"{action or 'request'} {resource or ''} {resource_id or ''}".strip()
    requested: dict[int, float | None] = {}
    # Whether any attempt may have reached the service: azure-core's ServiceRequestError means none was sent.
    reached = False

    def transient(exc: BaseException) -> bool:
        return is_transient(exc) or (retry_on is not None and retry_on(exc))

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        ra = retry_after(exc) if exc is not None else None
        requested[state.attempt_number] = ra
        return policy.backoff(state.attempt_number, retry_after=ra)

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= policy.attempts:
            return True
        return _now() + state.upcoming_sleep - start >= policy.deadline

    def give_up(state: RetryCallState) -> Any:
        exc = state.outcome.exception() if state.outcome else None
        assert exc is not None  # give_up runs only after a failed attempt
        if isinstance(exc, AiobatchError):
            raise exc
        elapsed = _now() - start
        if state.attempt_number >= policy.attempts:
            note = f"Gave up after the policy's {policy.attempts} attempts."
        else:
            ra = requested.get(state.attempt_number)
            left = max(0.0, policy.deadline - elapsed)
            if ra is not None and ra >= left:
                note = (
                    f"The service asked to wait {ra:.0f} s (Retry-After), more than the {left:.1f} s left of "
                    f"the {policy.deadline:g} s deadline."
                )
            else:
                note = f"The next wait would pass the {policy.deadline:g} s deadline."
        if not reached:
            note += " No attempt reached the service: check the endpoint, the network and any proxy."
        error = translate(
            exc,
            resource=resource,
            resource_id=resource_id,
            action=action,
            attempts=state.attempt_number,
            elapsed=elapsed,
            note=note,
        )
        if isinstance(error, ServiceUnavailableError):
            error.reached_service = reached
        raise error from exc

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        sleep = state.next_action.sleep if state.next_action else 0.0
        logger.debug(
            "retrying %s after %s (attempt %d of %d, waiting %.2f s)",
            what,
            _describe_failure(exc),
            state.attempt_number,
            policy.attempts,
            sleep,
        )

    retrying = AsyncRetrying(
        sleep=_sleep,
        stop=stop,
        wait=wait,
        retry=_Predicate(transient),
        retry_error_callback=give_up,
        before_sleep=log_retry,
        reraise=True,
    )

    async def attempt() -> T:
        # A real coroutine function: tenacity only awaits what it recognises as one (not a lambda).
        nonlocal reached
        try:
            return await fn()
        except ServiceRequestError:
            raise  # not sent
        except BaseException:
            reached = True
            raise

    try:
        result: T = await retrying(attempt)
    except AiobatchError:
        raise
    except TRANSLATABLE as exc:
        raise translate(exc, resource=resource, resource_id=resource_id, action=action) from exc
    return result


class _Predicate:
    """Adapts a plain exception predicate to tenacity's ``retry=`` protocol."""

    def __init__(self, predicate: Callable[[BaseException], bool]) -> None:
        self._predicate = predicate

    def __call__(self, state: RetryCallState) -> bool:
        if state.outcome is None or not state.outcome.failed:
            return False
        exc = state.outcome.exception()
        return exc is not None and not isinstance(exc, asyncio.CancelledError) and self._predicate(exc)


def _describe_failure(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    if isinstance(exc, HttpResponseError):
        return f"HTTP {exc.status_code} {exc.reason or ''}".strip()
    return type(exc).__name__


# ----------------------------------------------------------------------------------------------------
# SDK client construction
# ----------------------------------------------------------------------------------------------------


def sdk_client_kwargs(
    *,
    connection_timeout: float = 20.0,
    read_timeout: float = 60.0,
    logging_enable: bool = False,
) -> dict[str, Any]:
    """Return the keyword arguments every aiobatch SDK client is built with, so SDK retries stay off.

    ``retry_total=0`` (and its connect/read/status siblings) turns off azure-core's `RetryPolicy` for
    ``azure.batch.aio.BatchClient`` and azure-storage-blob's `ExponentialRetry` (whose first backoff is 15 s)
    for ``BlobServiceClient`` alike; `call` is then the only layer that retries. The timeouts bound one
    attempt: a connection that cannot be made, or an answer that stops arriving, fails the attempt
    (transiently) instead of hanging until the deadline.

    Args:
        connection_timeout: seconds to establish a connection.
        read_timeout: seconds to wait for the next bytes of an answer.
        logging_enable: the SDK's network trace; it prints headers and bodies unredacted (Shared Key
            signatures, SAS URLs). `Client` masks them on the SDK loggers (``guard_loggers``); a client built
            by hand needs ``aiobatch._errors.guard_loggers()`` (or a `RedactingFilter` on every handler).

    Returns:
        A new dict to pass as ``**kwargs`` to the SDK client's constructor.

    Example:
        >>> from azure.core.credentials import AzureNamedKeyCredential
        >>> from azure.batch.aio import BatchClient
        >>> cred = AzureNamedKeyCredential("acct", "a2V5")
        >>> client = BatchClient("https://acct.batch.azure.com", cred, **sdk_client_kwargs())
    """
    return {
        "retry_total": 0,
        "retry_connect": 0,
        "retry_read": 0,
        "retry_status": 0,
        "connection_timeout": connection_timeout,
        "read_timeout": read_timeout,
        "logging_enable": logging_enable,
    }
