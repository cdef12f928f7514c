"""Helpers every part of the test suite shares: one fast retry policy, one poll loop, one SAS clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from aiobatch import RetryPolicy, SasPolicy

T = TypeVar("T")

#: Retries that cost milliseconds: a transient fault in a test must not cost azure-core's 15 s backoffs.
FAST_RETRY = RetryPolicy(attempts=4, deadline=10.0, initial=0.02, maximum=0.2, jitter=0.02)


def fast_retry(seed: int | str | None = None) -> RetryPolicy:
    """`FAST_RETRY`, with its jitter drawn from *seed* (a session's seed replays a run's waits)."""
    if seed is None:
        return FAST_RETRY
    return dataclasses.replace(FAST_RETRY, rng=random.Random(seed))


async def poll_until(
    probe: Callable[[], Awaitable[T]], within: float = 10.0, interval: float = 0.02, *, what: str = "a condition"
) -> T:
    """Await ``probe()`` every *interval* seconds until it answers something true; fail after *within* seconds.

    The failure is a ``TimeoutError`` saying it timed out waiting for *what*.
    """
    with anyio.fail_after(within, reason=f"timed out waiting for {what}"):
        while not (value := await probe()):
            await anyio.sleep(interval)
        return value


def minted_ago(policy: SasPolicy, seconds: float) -> SasPolicy:
    """*policy*, minting SAS as if the clock read *seconds* earlier (`SasPolicy.window`'s ``now=``).

    A SAS minted with ``minted_ago(SasPolicy(duration=0, margin=1), 3)`` expired two seconds ago: a test of
    an expired SAS needs no wait on the wall clock.
    """

    class Earlier(SasPolicy):
        def window(self, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
            now = (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(seconds=seconds)
            return super().window(now)

    return Earlier(**dataclasses.asdict(policy))
