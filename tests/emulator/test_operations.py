"""Issue 16, item 1: every operation of the 2025-06-01 API answers; what the emulator does not perform says so.

The operations are read from the installed SDK's request builders (``build_batch_*_request`` in
``azure/batch/_operations/_operations.py``), so an operation a new SDK adds fails
`test_every_operation_of_the_sdk_is_routed` until the emulator serves it or lists it as not emulated. The contract
tests drive the unmodified ``azure.batch.aio.BatchClient``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import azure.batch._operations._operations as sdk_operations
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import PipelineResponse

from aiobatch.emulator import Emulator
from aiobatch.emulator import _app as app_module
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


#: Operations the examples below withdraw from the emulator they run against. Every operation of the SDK is
#: emulated today, so `NOT_EMULATED` is empty; it is still how a new SDK's operation answers until it is served,
#: and listing an operation there withdraws its handler (`_app._Routes`), which is what these tests do.
WITHDRAWN = (
    ("POST", "/jobs/{job}/enable", "begin_enable_job"),
    ("POST", "/jobs/{job}/disable", "begin_disable_job"),
    ("PUT", "/jobs/{job}/tasks/{task}", "replace_task"),
    ("POST", "/jobschedules", "create_job_schedule"),
    ("GET", "/jobschedules/{schedule}", "get_job_schedule"),
    ("POST", "/jobs/{job}/tasks/{task}/reactivate", "reactivate_task"),
    ("GET", "/jobs/{job}/tasks/{task}/subtasksinfo", "list_subtasks"),
    ("GET", "/jobs/{job}/jobpreparationandreleasetaskstatus", "list_job_preparation_and_release_task_status"),
    ("GET", "/jobschedules", "list_job_schedules"),
)


@pytest.fixture
async def withdrawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[BatchClient]:
    """A client of an emulator that does not perform the `WITHDRAWN` operations."""
    monkeypatch.setattr(app_module, "NOT_EMULATED", WITHDRAWN)
    async with (
        Emulator(workdir=tmp_path / "emulator") as emulator,
        BatchClient(emulator.endpoint, emulator.credential) as client,
    ):
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
        (
            "replace_task",
            lambda b, hook: b.replace_task(
                "j",
                "t",
                m.BatchTask(constraints=m.BatchTaskConstraints(max_task_retry_count=1)),
                raw_response_hook=hook,
            ),
        ),
        (
            "create_job_schedule",
            lambda b, hook: b.create_job_schedule(
                m.BatchJobScheduleCreateOptions(
                    id="s",
                    schedule=m.BatchJobScheduleConfiguration(recurrence_interval=dt.timedelta(hours=1)),
                    job_specification=m.BatchJobSpecification(pool_info=m.BatchPoolInfo(pool_id="p")),
                ),
                raw_response_hook=hook,
            ),
        ),
        ("get_job_schedule", lambda b, hook: b.get_job_schedule("s", raw_response_hook=hook)),
        ("reactivate_task", lambda b, hook: b.reactivate_task("j", "t", raw_response_hook=hook)),
    ],
)
async def test_an_operation_not_emulated_is_a_final_batch_error_naming_it(
    withdrawn: BatchClient, operation: str, call: Any
) -> None:
    """It answered 404 ResourceNotFound: ``begin_enable_job`` said the job did not exist. Now: 501, once."""
    hook = Requests()
    with pytest.raises(HttpResponseError) as caught:
        await call(withdrawn, hook)
    _not_emulated(caught.value, operation)
    assert hook.sent == 1  # not retried by azure-core's RetryPolicy


@pytest.mark.parametrize(
    ("operation", "listing"),
    [
        ("list_subtasks", lambda b: b.list_subtasks("j", "t")),
        (
            "list_job_preparation_and_release_task_status",
            lambda b: b.list_job_preparation_and_release_task_status("j"),
        ),
        ("list_job_schedules", lambda b: b.list_job_schedules()),
    ],
)
async def test_listing_an_operation_not_emulated_raises_on_the_first_page(
    withdrawn: BatchClient, operation: str, listing: Any
) -> None:
    with pytest.raises(HttpResponseError) as caught:
        async for _ in listing(withdrawn):
            pass
    _not_emulated(caught.value, operation)


async def test_a_malformed_body_to_an_operation_not_emulated_is_still_the_services_400(
    withdrawn: BatchClient,
) -> None:
    """The validation layer runs first: a body Azure would refuse is refused the same way here."""
    bad = m.BatchJobScheduleCreateOptions(
        id="s",
        schedule=m.BatchJobScheduleConfiguration(),
        job_specification=m.BatchJobSpecification(pool_info=m.BatchPoolInfo(pool_id=["p"])),  # type: ignore[arg-type]
    )
    with pytest.raises(HttpResponseError) as caught:
        await withdrawn.create_job_schedule(bad)
    assert caught.value.status_code == 400
    assert caught.value.error is not None and caught.value.error.code == "InvalidPropertyValue"
