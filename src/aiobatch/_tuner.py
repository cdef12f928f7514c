"""How many transfer requests to keep in flight: tuned to the round trip, as AzCopy's automatic concurrency is.

A transfer's throughput grows with the requests in flight while the round trip, not the service or the client,
is the limit: 8 requests over a 20 ms round trip cannot move more than 8 files per 20 ms, however fast both
ends are. `ConcurrencyTuner` starts small, and after each window of completed requests compares the window's
throughput with the best so far: while it grows (by a tenth or more), the limit doubles, up to a bound; when
it stops growing, the limit stays. A transient refusal (503, 429, a timeout, a dropped connection) halves the
limit at once, and growth starts again from the throughput measured after it. An explicit ``concurrency``
bypasses all of this (a fixed `anyio.CapacityLimiter`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

import anyio

from ._retry import is_transient

__all__ = ["AUTO_INITIAL", "AUTO_MAXIMUM", "ConcurrencyTuner"]

T = TypeVar("T")

#: Requests in flight when a transfer starts.
AUTO_INITIAL = 4
#: The most requests in flight the tuner allows (memory: at most this many blocks or small files held at once).
AUTO_MAXIMUM = 64
_GROWTH = 1.1  # a window must beat the best throughput by this factor for the limit to grow


class ConcurrencyTuner:
    """A capacity limiter whose size follows the measured throughput.

    Use `limiter` as any `anyio.CapacityLimiter`; report each completed request's bytes with `done`, and wrap
    each attempt with `watch` so that transient failures back off.

    Args:
        initial: requests in flight at first.
        maximum: the most ever allowed.
        clock: seconds, monotonic (for tests).

    Example:
        >>> tuner = ConcurrencyTuner(initial=4, maximum=64)
        >>> tuner.limit
        4
    """

    def __init__(self, *, initial: int = AUTO_INITIAL, maximum: int = AUTO_MAXIMUM, clock: object = None) -> None:
        self.maximum = max(1, maximum)
        self.limiter = anyio.CapacityLimiter(max(1, min(initial, self.maximum)))
        self._clock = clock if callable(clock) else time.monotonic
        self._best = 0.0
        self._started = self._clock()
        self._bytes = 0
        self._count = 0
        self._hold = False  # after a back-off, the next window only sets the baseline
        self.backoffs = 0  # how many times a transient failure halved the limit

    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        return int(self.limiter.total_tokens)

    def done(self, nbytes: int) -> None:
        """Record a completed request of *nbytes*; at the end of a window, grow the limit if throughput grew."""
        self._bytes += nbytes
        self._count += 1
        if self._count < 2 * self.limit:  # a window: about two round trips' worth at the current limit
            return
        now = self._clock()
        elapsed = max(now - self._started, 1e-6)
        rate = self._bytes / elapsed if self._bytes else self._count / elapsed
        if not self._hold and rate >= self._best * _GROWTH and self.limit < self.maximum:
            self.limiter.total_tokens = min(self.maximum, self.limit * 2)
        self._best = rate if self._hold else max(self._best, rate)
        self._hold = False
        self._started, self._bytes, self._count = now, 0, 0

    def congested(self) -> None:
        """A transient failure: halve the limit (at least 1) and measure afresh."""
        self.backoffs += 1
        self.limiter.total_tokens = max(1, self.limit // 2)
        self._hold = True
        self._started, self._bytes, self._count = self._clock(), 0, 0

    async def watch(self, attempt: Awaitable[T]) -> T:
        """Await one attempt of a request; a transient failure backs off before it propagates (to be retried)."""
        try:
            return await attempt
        except Exception as exc:
            if is_transient(exc):
                self.congested()
            raise
