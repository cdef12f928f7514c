"""A pool's autoscale glue (`aiobatch.emulator._autoscale_runs`): samples over time, the schedule, the runs.

All on an injected clock: each test steps ``now`` itself.
"""

from __future__ import annotations

import datetime as dt

import pytest

from aiobatch.emulator._autoscale import FormulaSyntaxError
from aiobatch.emulator._autoscale_runs import (
    IntervalOutOfRangeError,
    PoolAutoScale,
    PoolCounts,
    SampleHistory,
    check_interval,
)

T0 = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone.utc)
S = dt.timedelta(seconds=1)
QUEUE = "$TargetDedicatedNodes = max(0, $PendingTasks.GetSample(1))"


def test_samples_follow_the_30_second_grid_and_publish_a_minute_late() -> None:
    history = SampleHistory(T0)
    history.observe(T0, PoolCounts(active_tasks=1))
    history.observe(T0 + 10 * S, PoolCounts(active_tasks=99))  # between grid points: no sample
    history.observe(T0 + 30 * S, PoolCounts(active_tasks=2, running_tasks=1))
    assert history.samples(T0 + 59 * S) == {}
    at_60 = history.samples(T0 + 60 * S)
    assert at_60["$PendingTasks"] == ((T0, 1.0),)
    at_90 = history.samples(T0 + 90 * S)
    assert at_90["$PendingTasks"] == ((T0, 1.0), (T0 + 30 * S, 3.0))
    assert at_90["$RunningTasks"] == ((T0, 0.0), (T0 + 30 * S, 1.0))
    assert "$CPUPercent" not in at_90  # not measured: a formula reading it fails with InsufficientSampleData


def test_a_late_observation_fills_the_samples_it_missed() -> None:
    history = SampleHistory(T0, publish_delay=dt.timedelta(0))
    history.observe(T0 + 95 * S, PoolCounts(active_tasks=4))
    assert [at for at, _ in history.samples(T0 + 95 * S)["$ActiveTasks"]] == [T0, T0 + 30 * S, T0 + 60 * S, T0 + 90 * S]


def test_retention_keeps_the_latest_samples_only() -> None:
    history = SampleHistory(T0, publish_delay=dt.timedelta(0), retention=dt.timedelta(minutes=2))
    history.observe(T0 + dt.timedelta(days=3), PoolCounts(running_tasks=1))
    stamps = [at for at, _ in history.samples(T0 + dt.timedelta(days=3))["$RunningTasks"]]
    assert len(stamps) == 4
    assert stamps[-1] == T0 + dt.timedelta(days=3)
    assert stamps[0] == T0 + dt.timedelta(days=3) - 90 * S


@pytest.mark.parametrize(
    ("interval", "ok"),
    [
        (None, True),
        (dt.timedelta(minutes=5), True),
        (dt.timedelta(hours=168), True),
        (dt.timedelta(minutes=4, seconds=59), False),
        (dt.timedelta(hours=168, seconds=1), False),
    ],
)
def test_evaluation_interval_range(interval: dt.timedelta | None, ok: bool) -> None:
    if ok:
        assert check_interval(interval) == (interval or dt.timedelta(minutes=15))
    else:
        with pytest.raises(IntervalOutOfRangeError) as caught:
            check_interval(interval)
        assert (caught.value.status, caught.value.code) == (400, "InvalidPropertyValue")


def test_runs_at_enable_then_every_interval() -> None:
    scale = PoolAutoScale(QUEUE, dt.timedelta(minutes=5), T0, SampleHistory(T0))
    counts = PoolCounts(active_tasks=3, target_dedicated_nodes=1)
    first = scale.tick(T0, counts)
    # Enabled just now: no sample is published yet, the run fails and keeps the pool's target.
    assert first is not None and first.error is not None and first.error.code == "InsufficientSampleData"
    assert first.target_dedicated_nodes == 1
    for second in range(30, 300, 30):
        assert scale.tick(T0 + second * S, counts) is None
    run = scale.tick(T0 + 300 * S, counts)
    assert run is not None and run.error is None and run.target_dedicated_nodes == 3
    assert scale.last_run is run
    assert scale.next_evaluation == T0 + 600 * S


def test_a_lagging_loop_skips_missed_evaluations_but_keeps_the_grid() -> None:
    scale = PoolAutoScale(QUEUE, dt.timedelta(minutes=5), T0, SampleHistory(T0))
    scale.tick(T0, PoolCounts())
    assert scale.tick(T0 + dt.timedelta(minutes=17), PoolCounts(running_tasks=2)) is not None
    assert scale.next_evaluation == T0 + dt.timedelta(minutes=20)


def test_enable_again_replaces_what_is_given() -> None:
    scale = PoolAutoScale(QUEUE, None, T0, SampleHistory(T0))
    scale.tick(T0, PoolCounts())
    later = T0 + dt.timedelta(minutes=7)
    scale.update(later, formula="$TargetDedicatedNodes = 4")
    assert scale.next_evaluation == T0 + dt.timedelta(minutes=15)  # a formula alone keeps the schedule
    scale.update(later, interval=dt.timedelta(minutes=10))
    assert (scale.interval, scale.next_evaluation) == (dt.timedelta(minutes=10), later)
    run = scale.tick(later, PoolCounts())
    assert run is not None and run.target_dedicated_nodes == 4
    # A refused change leaves everything as it was.
    with pytest.raises(FormulaSyntaxError):
        scale.update(later, formula="$TargetDedicatedNodes = (", interval=dt.timedelta(minutes=30))
    with pytest.raises(IntervalOutOfRangeError):
        scale.update(later, formula="$TargetDedicatedNodes = 9", interval=dt.timedelta(minutes=1))
    assert (scale.formula, scale.interval) == ("$TargetDedicatedNodes = 4", dt.timedelta(minutes=10))


def test_evaluate_reads_the_pool_and_stores_nothing() -> None:
    scale = PoolAutoScale("$TargetDedicatedNodes = 0", None, T0, SampleHistory(T0))
    now = T0 + dt.timedelta(minutes=3)
    counts = PoolCounts(
        active_tasks=6,
        dedicated_nodes=2,
        usable_nodes=2,
        target_dedicated_nodes=2,
        task_slots_per_node=4,
    )
    for second in range(0, 181, 30):
        scale.history.observe(T0 + second * S, counts)
    run = scale.evaluate(
        now,
        counts,
        "$n = ceil(avg($PendingTasks.GetSample(TimeInterval_Minute * 2)) / $TaskSlotsPerNode);"
        "$u = $UsableNodeCount; $TargetDedicatedNodes = $n + $CurrentDedicatedNodes",
    )
    assert run.error is None
    assert run.results == "$TargetDedicatedNodes=4;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;$n=2;$u=2"
    assert scale.last_run is None and scale.formula == "$TargetDedicatedNodes = 0"
    with pytest.raises(FormulaSyntaxError):
        scale.evaluate(now, counts, "$TargetDedicatedNodes = ")


def test_a_refused_formula_or_interval_refuses_the_pool() -> None:
    with pytest.raises(FormulaSyntaxError):
        PoolAutoScale("nonsense(", None, T0, SampleHistory(T0))
    with pytest.raises(IntervalOutOfRangeError):
        PoolAutoScale(QUEUE, dt.timedelta(minutes=1), T0, SampleHistory(T0))


def test_a_scaled_schedule_runs_sooner_and_the_run_at_enable_can_go_unreported() -> None:
    scale = PoolAutoScale(QUEUE, dt.timedelta(minutes=5), T0, SampleHistory(T0), scale=0.01)
    assert scale.interval == dt.timedelta(minutes=5)  # what the pool reports
    first = scale.tick(T0, PoolCounts(), record=False)
    assert first is not None and scale.last_run is None
    assert scale.next_evaluation == T0 + dt.timedelta(seconds=3)
    assert not scale.due(T0 + dt.timedelta(seconds=1))
    assert scale.tick(T0 + dt.timedelta(seconds=3), PoolCounts()) is not None
    assert scale.last_run is not None


def test_a_new_formula_alone_runs_at_once_and_keeps_the_schedule() -> None:
    scale = PoolAutoScale(QUEUE, dt.timedelta(minutes=5), T0, SampleHistory(T0))
    scale.tick(T0, PoolCounts())
    later = T0 + dt.timedelta(minutes=1)
    scale.update(later, "$TargetDedicatedNodes = 4;")
    assert scale.due(later)
    run = scale.tick(later, PoolCounts(), record=False)
    assert run is not None and run.target_dedicated_nodes == 4
    assert scale.next_evaluation == T0 + dt.timedelta(minutes=5)
