"""`aiobatch.autoscale`: the formulas it writes parse, and evaluate to the intended targets for given histories.

The client never imports the emulator; the tests do, to run each formula through the emulator's evaluator of the
documented formula language with sample histories chosen for each case.
"""

from __future__ import annotations

import datetime as dt
import doctest
import pathlib
import re

import pytest

from aiobatch import autoscale
from aiobatch.autoscale import scale_to_zero_when_idle, scale_with_queue, working_hours
from aiobatch.emulator._autoscale import AutoScaleRun, EvaluationContext, evaluate, parse

MONDAY_10AM = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone.utc)


def pending(*values: float, now: dt.datetime = MONDAY_10AM) -> dict[str, list[tuple[dt.datetime, float]]]:
    """A ``$PendingTasks`` history: samples 30 s apart, the last one at ``now``."""
    step = dt.timedelta(seconds=30)
    return {"$PendingTasks": [(now - step * (len(values) - 1 - i), float(v)) for i, v in enumerate(values)]}


def run(formula: str, now: dt.datetime = MONDAY_10AM, **kwargs: object) -> AutoScaleRun:
    outcome = evaluate(formula, EvaluationContext(now=now, **kwargs))  # type: ignore[arg-type]
    assert outcome.error is None, (formula, outcome.error)
    return outcome


# --------------------------------------------------------------------------------------------------------------------
# Scale with the queue


def test_queue_one_node_per_slot_group_rounded_up() -> None:
    formula = scale_with_queue(max_nodes=10, task_slots_per_node=4)
    # 30 samples in 15 minutes (100%): the larger of last (9) and average (9) -> ceil(9 / 4) = 3 nodes.
    outcome = run(formula, samples=pending(*[9] * 30))
    assert outcome.target_dedicated_nodes == 3
    assert outcome.node_deallocation_option == "taskcompletion"


def test_queue_grows_at_once_and_shrinks_only_after_the_window() -> None:
    formula = scale_with_queue(max_nodes=50, window=600)
    burst = run(formula, samples=pending(*[0] * 39 + [12]))  # a burst just arrived: last sample wins
    assert burst.target_dedicated_nodes == 12
    # The queue just emptied after 20 minutes at 8: the 10-minute average still holds the pool.
    draining = run(formula, samples=pending(*[8] * 39 + [0]))
    assert draining.target_dedicated_nodes == 8  # avg(8 x 19, 0) = 7.6, rounded up
    # Empty for the whole window: zero nodes.
    assert run(formula, samples=pending(*[8] * 20 + [0] * 20)).target_dedicated_nodes == 0


def test_queue_never_above_max_nor_below_min() -> None:
    formula = scale_with_queue(max_nodes=5, min_nodes=1)
    assert run(formula, samples=pending(*[1000] * 30)).target_dedicated_nodes == 5
    assert run(formula, samples=pending(*[0] * 30)).target_dedicated_nodes == 1


def test_queue_reads_the_pools_task_slots_by_default() -> None:
    formula = scale_with_queue(max_nodes=10)
    assert "$TaskSlotsPerNode" in formula
    assert run(formula, samples=pending(*[16] * 30), task_slots_per_node=8).target_dedicated_nodes == 2
    assert run(formula, samples=pending(*[16] * 30), task_slots_per_node=1).target_dedicated_nodes == 10


def test_queue_with_a_thin_history_uses_the_last_sample_and_never_fails() -> None:
    formula = scale_with_queue(max_nodes=10)
    assert run(formula, samples=pending(0, 0, 3)).target_dedicated_nodes == 3
    # A pool with no sample at all yet: the evaluation fails and the pool keeps its size, as on Azure.
    first = evaluate(formula, EvaluationContext(now=MONDAY_10AM, target_dedicated_nodes=2))
    assert first.error is not None and first.error.code == "InsufficientSampleData"
    assert first.target_dedicated_nodes == 2


def test_queue_for_spot_nodes_sets_the_low_priority_target() -> None:
    formula = scale_with_queue(max_nodes=4, spot=True, node_deallocation_option="requeue")
    outcome = run(formula, samples=pending(*[3] * 30), target_dedicated_nodes=1)
    assert (outcome.target_dedicated_nodes, outcome.target_low_priority_nodes) == (1, 3)
    assert outcome.node_deallocation_option == "requeue"


# --------------------------------------------------------------------------------------------------------------------
# To zero when idle


def test_idle_pool_goes_to_zero_and_any_work_brings_it_back() -> None:
    formula = scale_to_zero_when_idle(nodes=3, idle_for=600)
    assert run(formula, samples=pending(*[0] * 40), target_dedicated_nodes=3).target_dedicated_nodes == 0
    # One task pending 8 minutes ago keeps the pool at full size.
    assert run(formula, samples=pending(*[0] * 24 + [1] + [0] * 15)).target_dedicated_nodes == 3
    assert run(formula, samples=pending(*[0] * 39 + [2])).target_dedicated_nodes == 3


# --------------------------------------------------------------------------------------------------------------------
# Working hours


@pytest.mark.parametrize(
    ("now", "nodes"),
    [
        (MONDAY_10AM, 20),
        (MONDAY_10AM.replace(hour=8), 20),
        (MONDAY_10AM.replace(hour=7, minute=59), 2),
        (MONDAY_10AM.replace(hour=18), 2),
        (MONDAY_10AM + dt.timedelta(days=5), 2),  # Saturday
        (MONDAY_10AM - dt.timedelta(days=1), 2),  # Sunday
    ],
)
def test_working_hours(now: dt.datetime, nodes: int) -> None:
    assert run(working_hours(nodes=20, off_hours_nodes=2), now=now).target_dedicated_nodes == nodes


def test_working_hours_in_a_local_time_zone_and_every_day() -> None:
    # 10:00 UTC is 04:00 in UTC-6: before work.
    assert run(working_hours(nodes=5, utc_offset=-6)).target_dedicated_nodes == 0
    assert run(working_hours(nodes=5, utc_offset=-6), now=MONDAY_10AM.replace(hour=15)).target_dedicated_nodes == 5
    # 23:30 UTC on Friday is 09:00 on Saturday in UTC+9:30.
    friday_night = MONDAY_10AM.replace(hour=23, minute=30) + dt.timedelta(days=4)
    assert run(working_hours(nodes=5, utc_offset=9.5), now=friday_night).target_dedicated_nodes == 0
    assert (
        run(working_hours(nodes=5, utc_offset=9.5, weekdays_only=False), now=friday_night).target_dedicated_nodes == 5
    )


# --------------------------------------------------------------------------------------------------------------------
# Arguments and the module itself


@pytest.mark.parametrize(
    "build",
    [
        lambda: scale_with_queue(max_nodes=-1),
        lambda: scale_with_queue(max_nodes=2, min_nodes=3),
        lambda: scale_with_queue(max_nodes=2, task_slots_per_node=0),
        lambda: scale_with_queue(max_nodes=2, window=0),
        lambda: scale_with_queue(max_nodes=2, min_sample_percent=120),
        lambda: scale_with_queue(max_nodes=2, node_deallocation_option="later"),
        lambda: scale_with_queue(max_nodes=True),
        lambda: scale_to_zero_when_idle(nodes=2, idle_for=float("nan")),
        lambda: working_hours(nodes=2, start_hour=18, end_hour=8),
        lambda: working_hours(nodes=2, end_hour=25),
        lambda: working_hours(nodes=2, utc_offset=15),
    ],
)
def test_bad_arguments_are_refused(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_every_formula_parses_and_fits() -> None:
    formulas = [
        scale_with_queue(max_nodes=1000, min_nodes=1, task_slots_per_node=256, window=7 * 86_400),
        scale_with_queue(max_nodes=3, window=90.5, min_sample_percent=0, spot=True),
        scale_to_zero_when_idle(nodes=0),
        working_hours(nodes=1, start_hour=0, end_hour=24, weekdays_only=False, utc_offset=-3.5),
    ]
    for formula in formulas:
        parse(formula)
        assert len(formula) < 8192


def test_the_examples_in_the_docstrings_hold() -> None:
    failures, tried = doctest.testmod(autoscale)
    assert (failures, tried) == (0, 3)


def test_the_helper_never_imports_the_emulator() -> None:
    text = pathlib.Path(autoscale.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(from|import)\s+(aiobatch\.emulator|\.emulator)", text, re.M)
