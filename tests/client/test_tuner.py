"""The transfer concurrency tuner: grows while throughput grows, holds when it stops, halves on transient failures."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ServiceResponseError

from aiobatch._storage import _Flow
from aiobatch._tuner import AUTO_INITIAL, AUTO_MAXIMUM, ConcurrencyTuner


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def window(tuner: ConcurrencyTuner, clock: Clock, rate: float, size: int = 1000) -> None:
    """Complete one window of requests at *rate* bytes per second."""
    count = 2 * tuner.limit
    clock.now += count * size / rate
    for _ in range(count):
        tuner.done(size)


def test_the_limit_doubles_while_throughput_grows_and_holds_when_it_stops() -> None:
    clock = Clock()
    tuner = ConcurrencyTuner(initial=4, maximum=64, clock=clock)
    limits = [tuner.limit]
    # Throughput proportional to the requests in flight (round trips dominate) up to 16, then flat.
    for _ in range(6):
        window(tuner, clock, rate=1000.0 * min(tuner.limit, 16))
        limits.append(tuner.limit)
    assert limits[:4] == [4, 8, 16, 32]
    assert limits[4:] == [32, 32, 32], "no growth once the throughput stopped growing"


def test_the_limit_is_bounded() -> None:
    clock = Clock()
    tuner = ConcurrencyTuner(initial=4, maximum=20, clock=clock)
    for _ in range(8):
        window(tuner, clock, rate=1000.0 * tuner.limit)
    assert tuner.limit == 20


def test_a_transient_failure_halves_the_limit_and_growth_resumes_from_a_fresh_baseline() -> None:
    clock = Clock()
    tuner = ConcurrencyTuner(initial=16, maximum=64, clock=clock)
    tuner.congested()
    assert tuner.limit == 8 and tuner.backoffs == 1
    window(tuner, clock, rate=8000.0)  # the first window after a back-off only measures
    assert tuner.limit == 8
    window(tuner, clock, rate=16000.0)
    assert tuner.limit == 16
    for _ in range(10):
        tuner.congested()
    assert tuner.limit == 1, "never below one request"


@pytest.mark.anyio
async def test_watch_backs_off_on_transient_failures_only() -> None:
    tuner = ConcurrencyTuner(initial=8)

    async def fail(exc: BaseException) -> None:
        raise exc

    for transient in (ServiceResponseError("dropped"), _status_error(503), _status_error(429)):
        with pytest.raises(type(transient)):
            await tuner.watch(fail(transient))
    assert tuner.backoffs == 3 and tuner.limit == 1
    with pytest.raises(HttpResponseError):
        await tuner.watch(fail(_status_error(404)))  # final, not congestion
    assert tuner.backoffs == 3


def test_an_explicit_concurrency_wins() -> None:
    fixed = _Flow(5)
    assert fixed.tuner is None and fixed.limiter.total_tokens == 5 and fixed.workers == 5
    fixed.done(10**9)
    assert fixed.limiter.total_tokens == 5
    auto = _Flow(None)
    assert auto.tuner is not None and auto.limiter.total_tokens == AUTO_INITIAL and auto.workers == AUTO_MAXIMUM


def _status_error(status: int) -> HttpResponseError:
    error = HttpResponseError(message=f"status {status}")
    error.status_code = status
    return error
