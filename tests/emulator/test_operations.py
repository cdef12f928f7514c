"""Issue 16, item 1: every operation of the 2025-06-01 API answers; what the emulator does not perform says so.

The operations are read from the installed SDK's request builders (``build_batch_*_request`` in
``azure/batch/_operations/_operations.py``), so an operation a new SDK adds fails
`test_every_operation_of_the_sdk_is_routed` until the emulator serves it or lists it as not emulated. The contract
tests drive the unmodified ``azure.batch.aio.BatchClient``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import azure.batch._operations._operations as sdk_operations
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.batch.models._models import (  # not exported, but the SDK needs them (see below)
    BatchNodeDeallocateOptions,
    BatchNodeRebootOptions,
)
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import PipelineResponse

from aiobatch.emulator import Emulator
from aiobatch.emulator._app import NOT_EMULATED, NOT_EMULATED_CODE

from ._routes import app_routes

pytestmark = pytest.mark.anyio

#: Being wired in their own branch (pool autoscale); until it lands they are the only operations allowed to be
#: unrouted.
AUTOSCALE = {
    ("POST", "/pools/{}/enableautoscale"),
    ("POST", "/pools/{}/disableautoscale"),
    ("POST", "/pools/{}/evaluateautoscale"),
}


def _shape(path: str) -> str:
    """A path template with its placeholders blanked: ``/pools/{poolId}`` and ``/pools/{pool}`` are one route."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def sdk_operations_table() -> set[tuple[str, str]]:
    """(method, path shape) of every request builder of the installed SDK."""
    source = Path(sdk_operations.__file__).read_text(encoding="utf-8")
    found = set()
    for builder in re.split(r"^def ", source, flags=re.M)[1:]:
        if not builder.startswith("build_batch_"):
            continue
        url = re.search(r'_url = "([^"]+)"', builder)
        method = re.search(r'HttpRequest\(method="(\w+)"', builder)
        assert url and method, builder[:200]
        found.add((method.group(1), _shape(url.group(1))))
    return found


def test_every_operation_of_the_sdk_is_routed() -> None:
    """Each builder's (method, path) reaches a handler: a real one, or the not-emulated answer."""
    sdk = sdk_operations_table()
    assert len(sdk) >= 72, len(sdk)  # azure-batch 15.1 has 72 builders; fewer means the parse broke
    routed = {(method, _shape(path)) for method, path in app_routes()}
    assert sdk - routed <= AUTOSCALE, sorted(sdk - routed - AUTOSCALE)


def test_the_not_emulated_table_names_only_operations_of_the_sdk_and_serves_none_twice() -> None:
    """A stale row (an operation the SDK dropped, or one now also served for real) fails here."""
    sdk = sdk_operations_table()
    rows = [(method, _shape(path)) for method, path, _ in NOT_EMULATED]
    assert len(rows) == len(set(rows))
    assert set(rows) <= sdk, sorted(set(rows) - sdk)
    served = [(method, _shape(path)) for method, path in app_routes()]
    assert all(served.count(row) == 1 for row in rows)
    names = {name for _, _, name in NOT_EMULATED}
    assert all(hasattr(BatchClient, name) for name in names), sorted(n for n in names if not hasattr(BatchClient, n))


class Requests:
    """How many requests the client sent (a ``raw_response_hook``): a retried call sends more than one."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        self.sent += 1


@pytest.fixture
async def batch(batch_emulator: Emulator) -> AsyncIterator[BatchClient]:
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as client:
        yield client


def _not_emulated(error: HttpResponseError, operation: str) -> None:
    assert not isinstance(error, ResourceNotFoundError)
    assert error.status_code == 501
    assert error.error is not None and error.error.code == NOT_EMULATED_CODE
    assert f"does not emulate the operation {operation}" in str(error.error.message)


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("begin_enable_job", lambda b, hook: b.begin_enable_job("j", raw_response_hook=hook)),
        (
            "begin_disable_job",
            lambda b, hook: b.begin_disable_job(
                "j", m.BatchJobDisableOptions(disable_tasks="requeue"), raw_response_hook=hook
            ),
        ),
        # Without options (or empty ones) the SDK fails before sending: its content-type header is None.
        (
            "begin_reboot_node",
            lambda b, hook: b.begin_reboot_node(
                "p", "tvmps_x_d", BatchNodeRebootOptions(node_reboot_kind="requeue"), raw_response_hook=hook
            ),
        ),
        (
            "get_node_extension",
            lambda b, hook: b.get_node_extension("p", "tvmps_x_d", "ext", raw_response_hook=hook),
        ),
        ("reactivate_task", lambda b, hook: b.reactivate_task("j", "t", raw_response_hook=hook)),
    ],
)
async def test_an_operation_not_emulated_is_a_final_batch_error_naming_it(
    batch: BatchClient, operation: str, call: Any
) -> None:
    """It answered 404 ResourceNotFound: ``begin_enable_job`` said the job did not exist. Now: 501, once."""
    hook = Requests()
    with pytest.raises(HttpResponseError) as caught:
        await call(batch, hook)
    _not_emulated(caught.value, operation)
    assert hook.sent == 1  # not retried by azure-core's RetryPolicy


async def test_listing_an_operation_not_emulated_raises_on_the_first_page(batch: BatchClient) -> None:
    with pytest.raises(HttpResponseError) as caught:
        async for _ in batch.list_pool_usage_metrics():
            pass
    _not_emulated(caught.value, "list_pool_usage_metrics")


async def test_a_malformed_body_to_an_operation_not_emulated_is_still_the_services_400(batch: BatchClient) -> None:
    """The validation layer runs first: a body Azure would refuse is refused the same way here."""
    bad = BatchNodeDeallocateOptions(node_deallocate_option="sometime")
    with pytest.raises(HttpResponseError) as caught:
        await batch.begin_deallocate_node("p", "tvmps_x_d", bad)
    assert caught.value.status_code == 400
    assert caught.value.error is not None and caught.value.error.code == "InvalidPropertyValue"
