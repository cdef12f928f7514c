"""Pool autoscale through the unmodified ``azure.batch.aio.BatchClient``: create, enable, evaluate, disable, rerun.

The wire shapes are checked against the recorded ``scale_pools`` exchange with the real service (enable, evaluate,
the pool while autoscale is on, disable); the behaviour against the REST reference's rules.  Re-evaluation runs on
`Timings.autoscale_interval_scale`, so a 5-minute interval takes 3 seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError

from _support import poll_until
from aiobatch.autoscale import scale_with_queue
from aiobatch.emulator import Emulator, Timings

from .test_recordings import (
    UBUNTU,
    Captured,
    assert_same_headers,
    assert_same_keys,
    metadata_fragment,
    recorded,
)

pytestmark = pytest.mark.anyio

T = TypeVar("T")

#: Nodes and allocations quick enough for a test to watch a pool grow and shrink.
FAST = dict(allocation_delay=0.05, node_start_delay=0.05, deletion_delay=0.01)


@pytest.fixture
def captured() -> Captured:
    return Captured()


@pytest.fixture
async def batch(tmp_path: Path, captured: Captured) -> AsyncIterator[BatchClient]:
    """A client on an emulator that keeps the service's own autoscale pace."""
    async with (
        Emulator(workdir=tmp_path, timings=Timings(**FAST)) as emu,
        BatchClient(emu.endpoint, emu.credential, raw_response_hook=captured) as client,
    ):
        yield client


@pytest.fixture
async def fast_batch(tmp_path: Path) -> AsyncIterator[BatchClient]:
    """A client on an emulator whose autoscale runs 100 times faster (a 5-minute interval is 3 seconds)."""
    async with (
        Emulator(workdir=tmp_path, timings=Timings(**FAST, autoscale_interval_scale=0.01)) as emu,
        BatchClient(emu.endpoint, emu.credential) as client,
    ):
        yield client


async def until(probe: Callable[[], Awaitable[T]], within: float = 30.0) -> T:
    """Poll ``probe`` until it answers something true, for at most ``within`` seconds."""
    return await poll_until(probe, within, interval=0.05)


async def error_of(call: Awaitable[Any]) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as caught:
        await call
    return caught.value


def error_values(error: HttpResponseError) -> list[tuple[str | None, str | None]]:
    """The ``values`` of the service's error body, as the SDK read them (its ``BatchError`` model)."""
    model = error.model
    assert isinstance(model, m.BatchError), model
    return [(v.key, v.value) for v in model.error_values or []]


def pool_options(pool_id: str, **extra: Any) -> m.BatchPoolCreateOptions:
    return m.BatchPoolCreateOptions(id=pool_id, vm_size="standard_d2_v2", virtual_machine_configuration=UBUNTU, **extra)


async def steady(batch: BatchClient, pool_id: str) -> m.BatchPool:
    async def probe() -> m.BatchPool | None:
        pool = await batch.get_pool(pool_id)
        return pool if pool.allocation_state == m.AllocationState.STEADY else None

    return await until(probe)


def recorded_index(action: str) -> int:
    """Where the ``scale_pools`` recording holds its first request ending in ``action``."""
    from .test_recordings import _entries

    return next(
        i for i, e in enumerate(_entries("scale_pools_async_")) if e["RequestUri"].split("?")[0].endswith(action)
    )


# --- creating a pool with a formula ------------------------------------------------------------------------------


async def test_a_pool_created_with_a_formula_is_sized_by_it(batch: BatchClient) -> None:
    await batch.create_pool(
        pool_options(
            "sized",
            enable_auto_scale=True,
            auto_scale_formula="$TargetDedicatedNodes = 2;",
            auto_scale_evaluation_interval="PT05M00S",  # type: ignore[arg-type]
        )
    )
    pool = await batch.get_pool("sized")
    assert pool.enable_auto_scale is True
    assert pool.auto_scale_formula == "$TargetDedicatedNodes = 2;"
    assert pool.target_dedicated_nodes == 2  # the run at creation set it
    pool = await steady(batch, "sized")
    assert pool.current_dedicated_nodes == 2
    # As the service reports it: the run at enable is not the pool's autoScaleRun (see _autoscale_runs).
    assert pool.auto_scale_run is None


@pytest.mark.parametrize(
    ("extra", "code", "prop"),
    [
        ({"auto_scale_formula": "$TargetDedicatedNodes = 1;"}, "InvalidAutoScalingSettings", "autoScaleFormula"),
        (
            {
                "enable_auto_scale": True,
                "auto_scale_formula": "$TargetDedicatedNodes = 1;",
                "target_dedicated_nodes": 1,
            },
            "InvalidAutoScalingSettings",
            "targetDedicatedNodes",
        ),
        ({"enable_auto_scale": True}, "MissingRequiredProperty", "autoScaleFormula"),
        (
            {
                "enable_auto_scale": True,
                "auto_scale_formula": "$TargetDedicatedNodes = 1;",
                "auto_scale_evaluation_interval": "PT1M",
            },
            "InvalidPropertyValue",
            "autoScaleEvaluationInterval",
        ),
    ],
)
async def test_create_refuses_settings_the_service_refuses(
    batch: BatchClient, extra: dict[str, Any], code: str, prop: str
) -> None:
    error = await error_of(batch.create_pool(pool_options("refused", **extra)))
    assert error.status_code == 400 and error.error is not None and error.error.code == code
    assert ("PropertyName", prop) in error_values(error)
    assert [p.id async for p in batch.list_pools()] == []


async def test_create_refuses_a_formula_that_does_not_parse(batch: BatchClient) -> None:
    error = await error_of(
        batch.create_pool(pool_options("bad", enable_auto_scale=True, auto_scale_formula="$TargetDedicatedNodes = ;"))
    )
    assert error.status_code == 400 and error.error is not None
    assert error.error.code == "AutoScalingFormulaSyntaxError"


# --- enable, evaluate, disable: the recorded exchange ------------------------------------------------------------


async def test_enable_evaluate_and_disable_match_the_recorded_service(batch: BatchClient, captured: Captured) -> None:
    await batch.create_pool(pool_options("scalepool", display_name="test_pool"))
    await steady(batch, "scalepool")

    await batch.enable_pool_auto_scale(
        "scalepool",
        m.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes=2",
            auto_scale_evaluation_interval="PT06M00S",  # type: ignore[arg-type]
        ),
    )
    real = recorded("scale_pools_async_", 0, "POST", "/pools/scalepool/enableautoscale")
    emulated = captured.last("POST", "/pools/scalepool/enableautoscale")
    assert emulated.status_code == real["StatusCode"] == 200
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "enableautoscale")
    assert emulated.headers["DataServiceId"].endswith("/pools/scalepool/enableautoscale")

    run = await batch.evaluate_pool_auto_scale(
        "scalepool", m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes=3")
    )
    real = recorded("scale_pools_async_", 1, "POST", "/pools/scalepool/evaluateautoscale")
    emulated = captured.last("POST", "/pools/scalepool/evaluateautoscale")
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "evaluateautoscale")
    body = emulated.json()
    assert_same_keys(real["ResponseBody"], body, "evaluateautoscale")
    assert metadata_fragment(body) == metadata_fragment(real["ResponseBody"])
    assert run.results == real["ResponseBody"]["results"] and run.error is None

    await batch.get_pool("scalepool")
    real = recorded("scale_pools_async_", 2, "GET", "/pools/scalepool")
    body = captured.body("GET", "/pools/scalepool")
    assert_same_keys(real["ResponseBody"], body, "autoscale pool GET")
    for key in ("enableAutoScale", "autoScaleFormula", "autoScaleEvaluationInterval", "targetDedicatedNodes"):
        assert body[key] == real["ResponseBody"][key], key

    await steady(batch, "scalepool")
    index = recorded_index("/disableautoscale")
    await batch.disable_pool_auto_scale("scalepool")
    real = recorded("scale_pools_async_", index, "POST", "/pools/scalepool/disableautoscale")
    emulated = captured.last("POST", "/pools/scalepool/disableautoscale")
    assert emulated.status_code == real["StatusCode"] == 200
    assert_same_headers(real["ResponseHeaders"], emulated.headers, "disableautoscale")

    pool = await batch.get_pool("scalepool")
    real = recorded("scale_pools_async_", index + 1, "GET", "/pools/scalepool")
    assert_same_keys(real["ResponseBody"], captured.body("GET", "/pools/scalepool"), "pool GET after disable")
    assert (pool.enable_auto_scale, pool.target_dedicated_nodes) == (False, 2), "disabling keeps the targets"


async def test_evaluate_answers_errors_as_the_service_does(batch: BatchClient) -> None:
    await batch.create_pool(pool_options("plain"))
    error = await error_of(
        batch.evaluate_pool_auto_scale("plain", m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$x = 1;"))
    )
    assert error.status_code == 409 and error.error is not None and error.error.code == "OperationNotValidOnPool"

    await batch.create_pool(
        pool_options("auto", enable_auto_scale=True, auto_scale_formula="$TargetDedicatedNodes = 0;")
    )
    error = await error_of(
        batch.evaluate_pool_auto_scale(
            "auto", m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = max(1,;")
        )
    )
    assert error.status_code == 400 and error.error is not None
    assert error.error.code == "AutoScalingFormulaSyntaxError"
    assert [key for key, _ in error_values(error)] == ["Message"]

    # A fresh pool has no published samples yet: the run fails, and says why, without failing the request.
    run = await batch.evaluate_pool_auto_scale(
        "auto",
        m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = $PendingTasks.GetSample(1);"),
    )
    assert run.error is not None and run.error.code == "InsufficientSampleData"
    assert [v.name for v in run.error.error_values or []] == ["Message"]
    assert run.results == "$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"
    assert (await batch.get_pool("auto")).auto_scale_run is None, "evaluating stores nothing"


async def test_resize_is_refused_while_autoscale_is_on_and_enable_is_rate_limited(batch: BatchClient) -> None:
    await batch.create_pool(pool_options("p", target_dedicated_nodes=0))
    await steady(batch, "p")
    enable = m.BatchPoolEnableAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = 1;")
    error = await error_of(batch.enable_pool_auto_scale("p", m.BatchPoolEnableAutoScaleOptions()))
    assert error.status_code == 400 and error.error is not None and error.error.code == "MissingRequiredProperty"
    await batch.enable_pool_auto_scale("p", enable)

    error = await error_of(batch.begin_resize_pool("p", m.BatchPoolResizeOptions(target_dedicated_nodes=3)))
    assert error.status_code == 409 and error.error is not None and error.error.code == "OperationNotValidOnPool"
    assert (await batch.get_pool("p")).target_dedicated_nodes == 1

    # A bad interval is refused for what it is; a good request within 30 seconds is throttled (503).
    error = await error_of(
        batch.enable_pool_auto_scale(
            "p",
            m.BatchPoolEnableAutoScaleOptions(auto_scale_evaluation_interval="PT1M"),  # type: ignore[arg-type]
        )
    )
    assert error.status_code == 400 and error.error is not None and error.error.code == "InvalidPropertyValue"
    error = await error_of(batch.enable_pool_auto_scale("p", enable, retry_total=0))
    assert error.status_code == 503 and error.error is not None
    assert error.error.code == "TooManyEnableAutoScaleRequests"

    await batch.disable_pool_auto_scale("p")
    await steady(batch, "p")
    poller = await batch.begin_resize_pool("p", m.BatchPoolResizeOptions(target_dedicated_nodes=0))
    await poller.result()
    assert (await batch.get_pool("p")).target_dedicated_nodes == 0


# --- re-evaluation ----------------------------------------------------------------------------------------------


async def test_the_formula_grows_the_pool_with_the_queue_and_shrinks_it_when_idle(fast_batch: BatchClient) -> None:
    batch = fast_batch
    await batch.create_pool(
        pool_options(
            "queue",
            enable_auto_scale=True,
            auto_scale_formula=scale_with_queue(max_nodes=2, task_slots_per_node=1),
            auto_scale_evaluation_interval="PT5M",  # type: ignore[arg-type]
        )
    )
    await batch.create_job(m.BatchJobCreateOptions(id="work", pool_info=m.BatchPoolInfo(pool_id="queue")))
    await batch.create_task_collection(
        "work",
        m.BatchTaskGroup(task_values=[m.BatchTaskCreateOptions(id=f"t{i}", command_line="sleep 1") for i in range(3)]),
    )

    async def grown() -> m.BatchPool | None:
        pool = await batch.get_pool("queue")
        return pool if pool.current_dedicated_nodes == 2 else None

    pool = await until(grown)
    assert pool.auto_scale_run is not None and pool.auto_scale_run.error is None
    assert "$TargetDedicatedNodes=2" in (pool.auto_scale_run.results or "")

    async def done() -> bool:
        counts = await batch.get_job_task_counts("work")
        return counts.task_counts.completed == 3

    await until(done)

    async def shrunk() -> m.BatchPool | None:
        pool = await batch.get_pool("queue")
        return pool if pool.target_dedicated_nodes == 0 and pool.current_dedicated_nodes == 0 else None

    pool = await until(shrunk)
    assert pool.auto_scale_run is not None
    assert pool.auto_scale_run.results is not None and "$TargetDedicatedNodes=0" in pool.auto_scale_run.results


async def test_enable_on_an_existing_pool_re_evaluates_every_interval(fast_batch: BatchClient) -> None:
    batch = fast_batch
    await batch.create_pool(pool_options("grow"))
    await steady(batch, "grow")
    # Grows by one node per evaluation, up to 2: each step is a scheduled run.
    await batch.enable_pool_auto_scale(
        "grow",
        m.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = min(2, $CurrentDedicatedNodes + 1);",
            auto_scale_evaluation_interval="PT5M",  # type: ignore[arg-type]
        ),
    )
    assert (await batch.get_pool("grow")).target_dedicated_nodes == 1

    async def two() -> m.BatchPool | None:
        pool = await batch.get_pool("grow")
        return pool if pool.current_dedicated_nodes == 2 else None

    pool = await until(two)
    assert pool.auto_scale_run is not None and pool.auto_scale_run.timestamp is not None


async def test_an_auto_pool_with_a_formula_is_sized_by_it(batch: BatchClient) -> None:
    spec = m.BatchPoolSpecification(
        vm_size="standard_d2_v2",
        virtual_machine_configuration=UBUNTU,
        enable_auto_scale=True,
        auto_scale_formula="$TargetDedicatedNodes = 1;",
    )
    auto = m.BatchAutoPoolSpecification(pool_lifetime_option=m.BatchPoolLifetimeOption.JOB, pool=spec)
    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(auto_pool_specification=auto)))
    pool_id = (await batch.get_job("j")).execution_info
    pools = [p async for p in batch.list_pools()]
    assert len(pools) == 1 and pools[0].enable_auto_scale is True and pools[0].target_dedicated_nodes == 1
    assert pool_id is not None and pool_id.pool_id == pools[0].id
