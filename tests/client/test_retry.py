"""The retry policy: what is transient, backoff and jitter, Retry-After, and the bounds, against real SDK clients."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import random
import re
import time
from collections.abc import Iterator

import aiohttp
import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    HttpResponseError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob.aio import BlobServiceClient

from aiobatch._errors import (
    AiobatchError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    ServiceError,
    ServiceUnavailableError,
)
from aiobatch._retry import RetryPolicy, call, instant_waits, is_transient, retry_after, sdk_client_kwargs

from ._stub import Behaviour, StubServer, batch_error, drop, pool_json, sequence, storage_error

KEY = base64.b64encode(b"k" * 64).decode()


@pytest.fixture(autouse=True)
def _instant() -> Iterator[None]:
    with instant_waits():
        yield


def client(url: str) -> BatchClient:
    return BatchClient(url, AzureNamedKeyCredential("acct", KEY), **sdk_client_kwargs())


async def get_pool(behaviour: Behaviour, policy: RetryPolicy) -> tuple[object, StubServer]:
    """Call get_pool('pets') through the retry policy against *behaviour*; return (result or error, server)."""
    async with StubServer(behaviour) as server, client(server.url) as batch:
        try:
            result: object = await call(
                lambda: batch.get_pool("pets"), policy=policy, resource="pool", resource_id="pets", action="get"
            )
        except AiobatchError as exc:
            result = exc
    return result, server


def fake_http_error(status: int, headers: dict[str, str] | None = None) -> HttpResponseError:
    class Response:
        reason = "x"
        status_code = status
        request = None

        def __init__(self) -> None:
            self.headers = headers or {}

        def text(self, encoding: str | None = None) -> str:
            return ""

        def body(self) -> bytes:
            return b""

    return HttpResponseError(response=Response())


# ----------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 507])
def test_transient_statuses(status: int) -> None:
    assert is_transient(fake_http_error(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 412, 413, 501, 505])
def test_final_statuses(status: int) -> None:
    assert not is_transient(fake_http_error(status))


@pytest.mark.parametrize(
    "exc",
    [
        ServiceRequestError("refused"),
        ServiceResponseError("reset"),
        IncompleteReadError("cut short"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError(),
        asyncio.TimeoutError(),
        ConnectionResetError(),
        fake_http_error(200),  # an error raised over a 2xx: the answer itself was damaged
    ],
)
def test_transient_exceptions(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc", [ValueError("bug"), KeyError("bug"), NotFoundError("x"), asyncio.CancelledError(), KeyboardInterrupt()]
)
def test_non_transient_exceptions(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_retry_after_forms() -> None:
    now = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    assert retry_after(fake_http_error(429, {"Retry-After": "7"})) == 7.0
    assert retry_after(fake_http_error(429, {"Retry-After": "1.5"})) == 1.5
    assert retry_after(fake_http_error(429, {"retry-after-ms": "250"})) == 0.25
    assert retry_after(fake_http_error(503, {"x-ms-retry-after-ms": "1000"})) == 1.0
    date = "Wed, 01 Jan 2025 12:00:30 GMT"
    assert retry_after(fake_http_error(503, {"Retry-After": date}), now=now) == 30.0
    assert retry_after(fake_http_error(503, {"Retry-After": "Wed, 01 Jan 2025 11:00:00 GMT"}), now=now) == 0.0
    assert retry_after(fake_http_error(503, {"Retry-After": "soon"})) is None
    assert retry_after(fake_http_error(503)) is None
    assert retry_after(ServiceRequestError("no response")) is None


# ----------------------------------------------------------------------------------------------------
# Policy arithmetic
# ----------------------------------------------------------------------------------------------------


def test_policy_validates_bounds() -> None:
    for bad in ({"attempts": 0}, {"deadline": 0.0}, {"initial": -1.0}, {"jitter": -0.1}):
        with pytest.raises(ConfigurationError):
            RetryPolicy(**bad)


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(initial=1.0, maximum=8.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert policy.backoff(1, retry_after=20.0) == 20.0  # the service's wait wins, beyond maximum
    assert policy.backoff(5, retry_after=0.5) == 8.0  # but never shortens ours


def test_jitter_two_seeds_differ_and_one_seed_repeats() -> None:
    def waits(seed: int) -> list[float]:
        policy = RetryPolicy(initial=1.0, maximum=30.0, jitter=1.0, rng=random.Random(seed))
        return [policy.backoff(n) for n in range(1, 6)]

    assert waits(1) != waits(2)
    assert waits(1) == waits(1)
    for n, wait in enumerate(waits(3), start=1):
        assert min(30.0, 2.0 ** (n - 1)) <= wait <= min(30.0, 2.0 ** (n - 1)) + 1.0


# ----------------------------------------------------------------------------------------------------
# The loop, against the real BatchClient on a stub server
# ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_transient_then_success() -> None:
    result, server = await get_pool(sequence(batch_error(503, "ServerBusy"), pool_json()), RetryPolicy())
    assert getattr(result, "id", None) == "pets" or getattr(result, "id", None) == "p1"
    assert len(server.seen) == 2


@pytest.mark.anyio
async def test_503_forever_stops_after_the_attempts_and_the_sdk_adds_none() -> None:
    result, server = await get_pool(batch_error(503, "ServerBusy"), RetryPolicy(attempts=4, deadline=600))
    assert isinstance(result, ServiceUnavailableError)
    assert result.attempts == 4 and result.code == "ServerBusy"
    assert len(server.seen) == 4  # exactly our attempts: azure-core's own retries are off
    assert isinstance(result.__cause__, HttpResponseError)
    assert "4 attempts" in str(result) and "'pets'" in str(result)


@pytest.mark.anyio
async def test_503_forever_stops_at_the_deadline() -> None:
    policy = RetryPolicy(attempts=1000, deadline=30.0, initial=1.0, maximum=8.0, jitter=0.5)
    result, server = await get_pool(batch_error(503, "ServerBusy"), policy)
    assert isinstance(result, ServiceUnavailableError)
    assert result.elapsed is not None and result.elapsed <= 30.0
    # 1 + 2 + 4 + 8 + 8 + ... (each plus up to 0.5 s) fits 5 to 7 attempts in 30 s, far below 1000.
    assert 4 <= len(server.seen) <= 8 and result.attempts == len(server.seen)
    assert "deadline" in str(result)


@pytest.mark.anyio
async def test_retry_after_beyond_the_deadline_gives_up_at_once_in_real_time() -> None:
    behaviour = batch_error(429, "TooManyRequests", headers={"Retry-After": "3600"})
    started = time.monotonic()
    with instant_waits(False):  # real time: it must not sleep an hour, nor a minute
        result, server = await get_pool(behaviour, RetryPolicy(attempts=10, deadline=60.0))
    assert time.monotonic() - started < 10.0
    assert isinstance(result, ServiceUnavailableError) and result.status == 429
    assert len(server.seen) == 1
    assert "Retry-After" in str(result) and "3600" in str(result)


@pytest.mark.anyio
async def test_retry_after_is_honoured(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiobatch")
    behaviour = sequence(batch_error(503, "ServerBusy", headers={"Retry-After": "12"}), pool_json())
    result, server = await get_pool(behaviour, RetryPolicy(initial=0.1, jitter=0.5, deadline=60.0))
    assert not isinstance(result, Exception) and len(server.seen) == 2
    waits = [float(w) for w in re.findall(r"waiting ([0-9.]+) s", caplog.text)]
    assert len(waits) == 1 and 12.0 <= waits[0] <= 12.5


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "InvalidPropertyValue", ServiceError),
        (404, "PoolNotFound", NotFoundError),
        (409, "PoolExists", ConflictError),
    ],
)
async def test_final_4xx_is_not_retried(status: int, code: str, kind: type[ServiceError]) -> None:
    result, server = await get_pool(batch_error(status, code), RetryPolicy(attempts=5))
    assert type(result) is kind and result.code == code
    assert len(server.seen) == 1


@pytest.mark.anyio
async def test_dropped_connections_are_retried() -> None:
    result, server = await get_pool(sequence(drop, drop, pool_json()), RetryPolicy(attempts=5))
    assert not isinstance(result, Exception) and len(server.seen) == 3


@pytest.mark.anyio
async def test_two_seeds_give_different_retry_timings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiobatch")

    async def timings(seed: int) -> list[float]:
        caplog.clear()
        policy = RetryPolicy(attempts=4, deadline=600, initial=0.5, jitter=1.0, rng=random.Random(seed))
        await get_pool(batch_error(503, "ServerBusy"), policy)
        return [float(w) for w in re.findall(r"waiting ([0-9.]+) s", caplog.text)]

    first, second, again = await timings(11), await timings(12), await timings(11)
    assert len(first) == len(second) == 3
    assert first != second and first == again


@pytest.mark.anyio
async def test_storage_client_retries_are_off_too() -> None:
    async with StubServer(storage_error(503, "ServerBusy")) as server:
        creds = {"account_name": "acct", "account_key": KEY}
        async with BlobServiceClient(f"{server.url}/acct", credential=creds, **sdk_client_kwargs()) as svc:
            container = svc.get_container_client("inputs")
            with pytest.raises(ServiceUnavailableError) as info:
                await call(
                    container.get_container_properties,
                    policy=RetryPolicy(attempts=3),
                    resource="container",
                    resource_id="inputs",
                )
    assert len(server.seen) == 3 and info.value.attempts == 3 and info.value.service == "storage"


# ----------------------------------------------------------------------------------------------------
# The loop's contract, with plain coroutines
# ----------------------------------------------------------------------------------------------------


class Partial(AiobatchError):
    """Raised when a test's fake request half-succeeded."""


@pytest.mark.anyio
async def test_retry_on_extends_what_is_transient_and_reraises_aiobatch_errors() -> None:
    calls = 0

    async def half() -> str:
        nonlocal calls
        calls += 1
        raise Partial(f"attempt {calls}")

    with pytest.raises(Partial, match="attempt 3"):
        await call(half, policy=RetryPolicy(attempts=3), retry_on=lambda e: isinstance(e, Partial))
    assert calls == 3


@pytest.mark.anyio
async def test_bugs_are_neither_retried_nor_wrapped() -> None:
    calls = 0

    async def buggy() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await call(buggy, policy=RetryPolicy(attempts=5))
    assert calls == 1


@pytest.mark.anyio
async def test_cancellation_is_not_retried() -> None:
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await call(cancelled, policy=RetryPolicy(attempts=5))
    assert calls == 1


@pytest.mark.anyio
async def test_cancel_during_a_real_wait_interrupts_it() -> None:
    async def busy() -> None:
        raise ServiceResponseError("reset")

    started = time.monotonic()
    with instant_waits(False):
        task = asyncio.ensure_future(call(busy, policy=RetryPolicy(initial=30.0, jitter=0.0)))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert time.monotonic() - started < 5.0


@pytest.mark.anyio
async def test_timeouts_are_transient_and_typed_at_the_end() -> None:
    async def slow() -> None:
        raise asyncio.TimeoutError

    with pytest.raises(ServiceUnavailableError) as info:
        await call(slow, policy=RetryPolicy(attempts=2), resource="job", resource_id="j", action="create")
    assert info.value.attempts == 2 and "create job 'j' failed after 2 attempts" in str(info.value)


def test_sdk_kwargs_switch_the_sdk_retries_off() -> None:
    kwargs = sdk_client_kwargs(connection_timeout=5.0, read_timeout=7.0)
    assert kwargs["retry_total"] == 0 and kwargs["logging_enable"] is False
    assert (kwargs["connection_timeout"], kwargs["read_timeout"]) == (5.0, 7.0)
