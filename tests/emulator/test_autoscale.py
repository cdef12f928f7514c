"""The autoscale formula language (`aiobatch.emulator._autoscale`), from Microsoft's documented examples.

The formulas quoted here are the examples of "Create a formula to automatically scale compute nodes in a Batch
pool"; the ``results`` strings and error shapes are the ones the service answers (the REST reference, the SDKs'
recorded tests, the pool-autoscale event's page).  Everything runs on an injected clock and a seeded rng.
"""

from __future__ import annotations

import datetime as dt
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiobatch.emulator._autoscale import (
    EVALUATION_ERROR_CODE,
    INSUFFICIENT_SAMPLES_CODE,
    AutoScaleRun,
    EvaluationContext,
    FormulaError,
    FormulaSyntaxError,
    FormulaTooLongError,
    evaluate,
    parse,
)

# A Monday, mid-morning, UTC.
MONDAY_10AM = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone.utc)
SAMPLE = dt.timedelta(seconds=30)


def history(*values: float, now: dt.datetime = MONDAY_10AM) -> list[tuple[dt.datetime, float]]:
    """Samples 30 s apart, the last one at ``now``: ``history(1, 2, 3)`` ends with 3 now."""
    return [(now - SAMPLE * (len(values) - 1 - i), float(v)) for i, v in enumerate(values)]


def run(formula: str, now: dt.datetime = MONDAY_10AM, **kwargs: object) -> AutoScaleRun:
    return evaluate(formula, EvaluationContext(now=now, **kwargs))  # type: ignore[arg-type]


def results(formula: str, **kwargs: object) -> dict[str, str]:
    """The ``results`` of a run that must succeed, as a dict."""
    outcome = run(formula, **kwargs)
    assert outcome.error is None, outcome.error
    return dict(pair.split("=", 1) for pair in outcome.results.split(";"))


def error_of(formula: str, **kwargs: object) -> tuple[str, str]:
    outcome = run(formula, **kwargs)
    assert outcome.error is not None, outcome.results
    assert [name for name, _ in outcome.error.values] == ["Message"]
    return outcome.error.code, outcome.error.values[0][1]


# --------------------------------------------------------------------------------------------------------------------
# The documented examples

TASK_BASED = """\
// Get pending tasks for the past 15 minutes.
$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 15);
// If we have fewer than 70 percent data points, we use the last sample point,
// otherwise we use the maximum of last sample point and the history average.
$tasks = $samples < 70 ? max(0,$PendingTasks.GetSample(1)) : max( $PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 15)));
// If number of pending tasks is not 0, set targetVM to pending tasks, otherwise
// half of current dedicated.
$targetVMs = $tasks > 0? $tasks:max(0, $TargetDedicatedNodes/2);
// The pool size is capped at 20, if target VM value is more than that, set it
// to 20. This value should be adjusted according to your use case.
$TargetDedicatedNodes = max(0, min($targetVMs, 20));
// Set node deallocation mode - let running tasks finish before removing a node
$NodeDeallocationOption = taskcompletion;
"""  # noqa: E501 -- the documented formula, verbatim


def test_pending_tasks_with_a_full_history_take_the_larger_of_last_and_average() -> None:
    # 30 samples in the last 15 minutes (100%): average 4.5, last 6 -> 6 nodes.
    pending = history(*([3.0] * 15 + [6.0] * 15))
    outcome = run(TASK_BASED, samples={"$PendingTasks": pending}, target_dedicated_nodes=1)
    assert outcome.error is None
    assert outcome.target_dedicated_nodes == 6
    assert outcome.node_deallocation_option == "taskcompletion"
    assert outcome.results == (
        "$TargetDedicatedNodes=6;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
        "$samples=100;$targetVMs=6;$tasks=6"
    )


def test_pending_tasks_with_a_thin_history_use_the_last_sample() -> None:
    # Only 5 samples of the 30 possible in 15 minutes (16%): the last sample decides, the average is never taken.
    outcome = run(TASK_BASED, samples={"$PendingTasks": history(40, 40, 40, 40, 9)}, target_dedicated_nodes=1)
    assert outcome.error is None
    assert outcome.target_dedicated_nodes == 9


def test_pending_tasks_never_above_the_cap_and_halving_when_the_queue_is_empty() -> None:
    assert run(TASK_BASED, samples={"$PendingTasks": history(*[500] * 30)}).target_dedicated_nodes == 20
    # No pending tasks: half the current target (7 / 2 = 3.5, truncated to 3).
    empty = run(TASK_BASED, samples={"$PendingTasks": history(*[0] * 30)}, target_dedicated_nodes=7)
    assert empty.target_dedicated_nodes == 3
    assert "$TargetDedicatedNodes=3.5;" in empty.results


def test_sample_formula_with_user_variables_without_dollar() -> None:
    formula = """startingNumberOfVMs = 1;
maxNumberofVMs = 25;
pendingTaskSamplePercent = $PendingTasks.GetSamplePercent(180 * TimeInterval_Second);
pendingTaskSamples = pendingTaskSamplePercent < 70 ? startingNumberOfVMs : avg($PendingTasks.GetSample(180 * TimeInterval_Second));
$TargetDedicatedNodes=min(maxNumberofVMs, pendingTaskSamples);
$NodeDeallocationOption = taskcompletion;"""  # noqa: E501
    # The service's own answer for this formula with nothing pending (a recorded pool's autoScaleRun.results).
    expected = (
        "$TargetDedicatedNodes=0;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
        "maxNumberofVMs=25;pendingTaskSamplePercent=100;pendingTaskSamples=0;startingNumberOfVMs=1"
    )
    assert run(formula, samples={"$PendingTasks": history(0, 0, 0, 0, 0, 0)}).results == expected
    # Right after the pool starts there are no samples yet: the formula falls back to its starting size.
    assert run(formula).target_dedicated_nodes == 1


WORKING_HOURS = """\
$curTime = time();
$workHours = $curTime.hour >= 8 && $curTime.hour < 18;
$isWeekday = $curTime.weekday >= 1 && $curTime.weekday <= 5;
$isWorkingWeekdayHour = $workHours && $isWeekday;
$TargetDedicatedNodes = $isWorkingWeekdayHour ? 20:10;
$NodeDeallocationOption = taskcompletion;
"""


@pytest.mark.parametrize(
    ("now", "nodes"),
    [
        (MONDAY_10AM, 20),
        (MONDAY_10AM.replace(hour=7, minute=59), 10),
        (MONDAY_10AM.replace(hour=18), 10),
        (MONDAY_10AM + dt.timedelta(days=4), 20),  # Friday
        (MONDAY_10AM - dt.timedelta(days=1), 10),  # Sunday
        (MONDAY_10AM + dt.timedelta(days=5), 10),  # Saturday
    ],
)
def test_time_of_day(now: dt.datetime, nodes: int) -> None:
    assert run(WORKING_HOURS, now=now).target_dedicated_nodes == nodes


def test_time_of_day_results_match_the_documented_shape() -> None:
    now = dt.datetime(2016, 10, 13, 19, 18, 47, 805000, tzinfo=dt.timezone.utc)
    assert run(WORKING_HOURS.replace("taskcompletion", "requeue"), now=now).results == (
        "$TargetDedicatedNodes=10;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue;"
        "$curTime=2016-10-13T19:18:47.805Z;$isWeekday=1;$isWorkingWeekdayHour=0;$workHours=0"
    )


def test_mondays_only_and_a_local_time_zone() -> None:
    assert run("$TargetDedicatedNodes = (time().weekday == 1 ? 5:1);").target_dedicated_nodes == 5
    assert (
        run(
            "$TargetDedicatedNodes = (time().weekday == 1 ? 5:1);", now=MONDAY_10AM - dt.timedelta(days=1)
        ).target_dedicated_nodes
        == 1
    )
    # Mountain time: 10:00 UTC is 04:00 there, before working hours.
    mountain = WORKING_HOURS.replace("time();", "time() + (-6 * TimeInterval_Hour);")
    assert run(mountain).target_dedicated_nodes == 10


def test_cpu_formula_with_current_nodes() -> None:
    formula = """$totalDedicatedNodes =
    (min($CPUPercent.GetSample(TimeInterval_Minute * 10)) > 0.7) ?
    ($CurrentDedicatedNodes * 1.1) : $CurrentDedicatedNodes;
$totalDedicatedNodes =
    (avg($CPUPercent.GetSample(TimeInterval_Minute * 60)) < 0.2) ?
    ($CurrentDedicatedNodes * 0.9) : $totalDedicatedNodes;
$TargetDedicatedNodes = min(400, $totalDedicatedNodes)"""
    busy = {"$CPUPercent": history(*[0.9] * 120)}
    assert run(formula, samples=busy, current_dedicated_nodes=10).target_dedicated_nodes == 11
    idle = {"$CPUPercent": history(*[0.1] * 120)}
    assert run(formula, samples=idle, current_dedicated_nodes=10).target_dedicated_nodes == 9


def test_parallel_tasks_example() -> None:
    formula = """$samples = $ActiveTasks.GetSamplePercent(TimeInterval_Minute * 15);
$tasks = $samples < 70 ? max(0,$ActiveTasks.GetSample(1)) : max( $ActiveTasks.GetSample(1),avg($ActiveTasks.GetSample(TimeInterval_Minute * 15)));
$cores = $TargetDedicatedNodes * 4;
$extraVMs = (($tasks - $cores) + 3) / 4;
$targetVMs = ($TargetDedicatedNodes + $extraVMs);
$TargetDedicatedNodes = max(0,min($targetVMs,3));
$NodeDeallocationOption = taskcompletion;"""  # noqa: E501
    # 1 node (4 slots) and 9 active tasks: (9 - 4 + 3) / 4 = 2 more nodes.
    assert run(formula, samples={"$ActiveTasks": history(9)}, target_dedicated_nodes=1).target_dedicated_nodes == 3
    # 5 active tasks on one node: (5 - 4 + 3) / 4 = 1 extra node.
    assert run(formula, samples={"$ActiveTasks": history(5)}, target_dedicated_nodes=1).target_dedicated_nodes == 2


def test_initial_size_then_zero_when_nothing_ran() -> None:
    created = "Mon, 07 Dec 2026 09:55:00 GMT"  # RFC 1123, as the page's C# builds it with ToString("r")
    formula = f"""
    $TargetDedicatedNodes = 4;
    lifespan         = time() - time("{created}");
    span             = TimeInterval_Minute * 60;
    startup          = TimeInterval_Minute * 10;
    ratio            = 50;
    $TargetDedicatedNodes = (lifespan > startup ? (max($RunningTasks.GetSample(span, ratio), $ActiveTasks.GetSample(span, ratio)) == 0 ? 0 : $TargetDedicatedNodes) : 4);
    """  # noqa: E501
    assert run(formula).target_dedicated_nodes == 4  # 5 minutes old
    later = MONDAY_10AM + dt.timedelta(hours=1)
    idle = {"$RunningTasks": history(*[0] * 120, now=later), "$ActiveTasks": history(*[0] * 120, now=later)}
    assert run(formula, now=later, samples=idle).target_dedicated_nodes == 0
    busy = {**idle, "$ActiveTasks": history(*[0] * 119 + [2], now=later)}
    assert run(formula, now=later, samples=busy).target_dedicated_nodes == 4


def test_preempted_nodes_example_sets_both_targets() -> None:
    formula = """maxNumberofVMs = 25;
$TargetDedicatedNodes = min(maxNumberofVMs, $PreemptedNodeCount.GetSample(180 * TimeInterval_Second));
$TargetLowPriorityNodes = min(maxNumberofVMs , maxNumberofVMs - $TargetDedicatedNodes);
$NodeDeallocationOption = taskcompletion;"""
    # min() takes the smallest of the whole list: the cap and every sample of the last 3 minutes.
    outcome = run(formula, samples={"$PreemptedNodeCount": history(4, 2, 3, 3, 3, 3)})
    assert (outcome.target_dedicated_nodes, outcome.target_low_priority_nodes) == (2, 23)


# --------------------------------------------------------------------------------------------------------------------
# Results


def test_evaluate_answers_as_the_service_recorded() -> None:
    # The SDKs' recorded tests: a pool at 2 dedicated nodes, evaluate "$TargetDedicatedNodes=3".
    assert run("$TargetDedicatedNodes=3", target_dedicated_nodes=2).results == (
        "$TargetDedicatedNodes=3;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"
    )


def test_an_undefined_variable_fails_the_run_and_keeps_the_pool_as_it_is() -> None:
    # Recorded: evaluating "$something_useless" answers 200 with AutoScalingFormulaEvaluationError and these results.
    outcome = run("$TargetDedicatedNodes = 9; $something_useless", target_dedicated_nodes=2)
    assert outcome.error is not None
    assert outcome.error.code == EVALUATION_ERROR_CODE
    assert outcome.results == "$TargetDedicatedNodes=2;$TargetLowPriorityNodes=0;$NodeDeallocationOption=requeue"
    assert outcome.target_dedicated_nodes == 2
    assert outcome.error.values == (("Message", "Line 1, Col 28: Undefined variable $something_useless"),)


def test_vectors_timestamps_and_intervals_in_results() -> None:
    got = results(
        '$v = $PendingTasks.GetSample(3); $w = $v * 2 + 1; $t = time("2016-10-14T18:36:43.282Z");'
        "$i = TimeInterval_Day + TimeInterval_Minute * 90; $j = TimeInterval_Millisecond * 1.5; $s = taskcompletion",
        samples={"$PendingTasks": history(1, 2, 3, 4)},
    )
    assert got["$v"] == "[2,3,4]"
    assert got["$w"] == "[5,7,9]"
    assert got["$t"] == "2016-10-14T18:36:43.282Z"
    assert got["$i"] == "1.01:30:00"
    assert got["$j"] == "00:00:00.0015000"
    assert got["$s"] == "taskcompletion"


def test_aliases_and_precedence_of_the_full_name() -> None:
    assert run("$TargetDedicated = 4").target_dedicated_nodes == 4
    assert run("$TargetLowPriority = 2").target_low_priority_nodes == 2
    assert run("$TargetDedicatedNodes = 5; $TargetDedicated = 4").target_dedicated_nodes == 5
    # Service variable names are matched without regard to case (the REST reference writes $targetDedicatedNodes).
    assert run("$targetDedicatedNodes = 6").results.startswith("$TargetDedicatedNodes=6;")


def test_stop_ends_the_formula_keeping_what_was_set() -> None:
    outcome = run("$TargetDedicatedNodes = 2; stop(); $TargetDedicatedNodes = 8")
    assert outcome.error is None
    assert outcome.target_dedicated_nodes == 2


def test_rand_is_seeded() -> None:
    first = run("$r = rand(); $TargetDedicatedNodes = $r * 10", rng=random.Random(7))
    second = run("$r = rand(); $TargetDedicatedNodes = $r * 10", rng=random.Random(7))
    assert first.results == second.results
    value = float(dict(p.split("=") for p in first.results.split(";"))["$r"])
    assert 0 <= value < 1


# --------------------------------------------------------------------------------------------------------------------
# Functions and operators


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("avg(1, 2, 3, 6)", "3"),
        ("avg($v, 7)", "4.25"),  # avg(1,2,3,...) with $v = [1,2,7]: (1+2+7+7)/4
        ("len($v, 1)", "4"),
        ("lg(8)", "3"),
        ("ln(1)", "0"),
        ("log(1000)", "3"),
        ("lg($v)", "[0,1,2.807354922057604]"),
        ("max(1, $v)", "7"),
        ("min($v, 0.5)", "0.5"),
        ("norm(3, 4)", "5"),
        ("percentile($v, 50)", "2"),
        ("percentile($v, 100)", "7"),
        ("range($v)", "6"),
        ("std(2, 4, 4, 4, 5, 5, 7, 9)", "2.138089935299395"),
        ("sum($v, $v)", "20"),
        ("val($v, 2)", "7"),
        ("ceil(2.1)", "3"),
        ("floor(-2.1)", "-3"),
        ("round(2.5)", "3"),
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("10 - 4 - 3", "3"),
        ("12 / 3 / 2", "2"),
        ("-3 + 1", "-2"),
        ("!0", "1"),
        ("!2", "0"),
        ("1 < 2 && 2 < 1", "0"),
        ("0 || 3", "1"),
        ("2 == 2", "1"),
        ("2 != 2", "0"),
        ('"abc" < "abd"', "1"),
        ("1 ? 2 : 3", "2"),
        ("0 ? 2 : 0 ? 3 : 4", "4"),
        ("$v - $v", "[0,0,0]"),
        ("$v / 2", "[0.5,1,3.5]"),
        ("TimeInterval_Hour > TimeInterval_Minute * 59", "1"),
        ("time() + TimeInterval_Day > time()", "1"),
        ('(time() - time("2026-12-07T09:00:00Z")) == TimeInterval_Hour', "1"),
        ('time("2026-12-07").day', "7"),
        ('time("2026-12-07T12:00:00+02:00").hour', "10"),
        ("1.5e2", "150"),
    ],
)
def test_expressions(expression: str, expected: str) -> None:
    assert (
        results(f"$v = $PendingTasks.GetSample(3); $x = {expression}", samples={"$PendingTasks": history(1, 2, 7)})[
            "$x"
        ]
        == expected
    )


@pytest.mark.parametrize(
    ("expression", "detail"),
    [
        ("1 / 0", "Division by zero"),
        ("$v + $w", "doubleVecs of different lengths"),
        ("2 - $v", "Operator '-' is not defined for double and doubleVec"),
        ('1 + "a"', "Operator '+' is not defined for double and string"),
        ("time() - TimeInterval_Hour", "Operator '-' is not defined for timestamp and timeinterval"),
        ("$v < 1", "Operator '<' is not defined for doubleVec and double"),
        ("$v && 1", "Operator '&&' is not defined for doubleVec"),
        ("!$v", "Operator '!' is not defined for doubleVec"),
        ("$v ? 1 : 2", "The condition of '?:' must be a double"),
        ("avg()", "avg() of an empty list"),
        ("avg(time())", "avg() takes doubles and doubleVecs, not timestamp"),
        ("val($v, 3)", "index 3 is outside a doubleVec of length 3"),
        ("percentile($v, 101)", "percentage from 0 to 100"),
        ("ln(0)", "ln() of 0 is undefined"),
        ('time("yesterday")', 'time() cannot read "yesterday"'),
        ("(1).hour", "'.hour' is a field of a timestamp, not of a double"),
        ("$PendingTasks + 1", "$PendingTasks is a sampled metric: read it with GetSample()"),
        ("undefinedThing", "Undefined variable undefinedThing"),
    ],
)
def test_evaluation_errors(expression: str, detail: str) -> None:
    code, message = error_of(
        f"$v = $PendingTasks.GetSample(3); $w = $PendingTasks.GetSample(2);\n$x = {expression}",
        samples={"$PendingTasks": history(1, 2, 7)},
    )
    assert code == EVALUATION_ERROR_CODE
    assert message.startswith("Line 2, Col ")
    assert detail in message


@pytest.mark.parametrize(
    "expression",
    [
        "TimeInterval_Year * 1e308",
        "val($v, 1e308 * 10 - 1e308 * 10)",
        'time("9999-12-31") + TimeInterval_Year',
        "$PendingTasks.GetSample(1e308 * 10)",
        "$PendingTasks.GetSample(TimeInterval_Year * 1e12)",
    ],
)
def test_values_out_of_range_fail_the_run(expression: str) -> None:
    code, message = error_of(
        f"$v = $PendingTasks.GetSample(3); $x = {expression}", samples={"$PendingTasks": history(1)}
    )
    assert (code, message.split(": ", 1)[1]) == (EVALUATION_ERROR_CODE, "A value is out of range")


def test_short_circuit_and_lazy_branches_skip_failing_parts() -> None:
    # Neither the division nor the empty history is ever evaluated.
    assert (
        results("$x = 0 && 1 / 0; $y = 1 || 1 / 0; $z = 1 ? 2 : avg($CPUPercent.GetSample(TimeInterval_Hour))")["$z"]
        == "2"
    )


def test_targets_must_be_non_negative_doubles_and_the_option_one_of_four() -> None:
    assert error_of("$TargetDedicatedNodes = -1") == (
        EVALUATION_ERROR_CODE,
        "Line 1, Col 25: $TargetDedicatedNodes must be a non-negative double, not double -1",
    )
    assert error_of("$TargetLowPriorityNodes = time()")[0] == EVALUATION_ERROR_CODE
    assert error_of('$NodeDeallocationOption = "later"')[0] == EVALUATION_ERROR_CODE
    assert run('$NodeDeallocationOption = "Terminate"').node_deallocation_option == "terminate"
    for option in ("requeue", "terminate", "taskcompletion", "retaineddata"):
        assert run(f"$NodeDeallocationOption = {option}").node_deallocation_option == option


# --------------------------------------------------------------------------------------------------------------------
# Samples


def test_get_sample_percent_counts_samples_in_the_window() -> None:
    now = MONDAY_10AM
    # 10 minutes hold 20 samples; the last minute's 2 are missing: 90%.
    pending = history(*[1] * 18, now=now - dt.timedelta(minutes=1))
    got = results(
        "$p = $CPUPercent.GetSamplePercent(TimeInterval_Minute * 10);"
        "$n = len($CPUPercent.GetSample(TimeInterval_Minute * 10));"
        "$ok = avg($CPUPercent.GetSample(TimeInterval_Minute * 10, 80))",
        samples={"$CPUPercent": pending},
    )
    assert (got["$p"], got["$n"], got["$ok"]) == ("90", "18", "1")
    code, message = error_of(
        "$x = $CPUPercent.GetSample(TimeInterval_Minute * 10, 95)", samples={"$CPUPercent": pending}
    )
    assert code == INSUFFICIENT_SAMPLES_CODE
    assert message == "Line 1, Col 6: Insufficient data from data set: $CPUPercent wanted 95%, received 90%"


def test_insufficient_samples_error_has_the_documented_shape() -> None:
    outcome = run("$x = 1;\n$TargetDedicatedNodes = avg($RunningTasks.GetSample(TimeInterval_Minute * 5, 70))")
    assert outcome.error is not None
    assert outcome.error.code == "InsufficientSampleData"
    assert outcome.error.message == "Autoscale evaluation failed due to insufficient sample data"
    assert outcome.error.values == (
        ("Message", "Line 2, Col 29: Insufficient data from data set: $RunningTasks wanted 70%, received 0%"),
    )


def test_look_back_ranges_between_two_points() -> None:
    # Samples of i at i minutes ago (two per minute); the range from 6 to 1 minutes ago.
    samples = [(MONDAY_10AM - dt.timedelta(seconds=30 * k), k / 2) for k in range(40, -1, -1)]
    got = results(
        "$r = $RunningTasks.GetSample(1 * TimeInterval_Minute, 6 * TimeInterval_Minute);"
        "$same = sum($RunningTasks.GetSample(6 * TimeInterval_Minute, 1 * TimeInterval_Minute)) == sum($r);"
        '$abs = $RunningTasks.GetSample(time("2026-12-07T09:58:00Z"), time("2026-12-07T09:59:00Z"));'
        "$count = $RunningTasks.Count(); $begin = $RunningTasks.HistoryBeginTime();"
        "$period = $RunningTasks.GetSamplePeriod()",
        samples={"$RunningTasks": samples},
    )
    assert got["$r"] == "[5.5,5,4.5,4,3.5,3,2.5,2,1.5,1]"
    assert got["$same"] == "1"
    assert got["$abs"] == "[1.5,1]"
    assert got["$count"] == "41"
    assert got["$begin"] == "2026-12-07T09:40:00.000Z"
    assert got["$period"] == "00:00:30"


def test_get_sample_count_takes_the_latest_and_needs_one() -> None:
    assert results("$x = $PendingTasks.GetSample(2)", samples={"$PendingTasks": history(1, 2, 3)})["$x"] == "[2,3]"
    assert results("$x = $PendingTasks.GetSample(10)", samples={"$PendingTasks": history(1, 2)})["$x"] == "[1,2]"
    assert error_of("$x = $PendingTasks.GetSample(1)")[0] == INSUFFICIENT_SAMPLES_CODE


def test_samples_of_unknown_metrics_are_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="not sampled metrics"):
        run("$x = 1", samples={"$Bogus": []})


# --------------------------------------------------------------------------------------------------------------------
# Refused outright (400)


@pytest.mark.parametrize(
    ("formula", "detail"),
    [
        ("$TargetDedicatedNodes = foo(1)", "Line 1, Col 25: Unknown function 'foo'"),
        ("$a = (1", "Line 1, Col 8: Expected ')', found end of formula"),
        ("$a = 1 +", "Expected an expression, found end of formula"),
        ("$a = 1 $b = 2", "Expected ';', found '$b'"),
        ("$CPUPercent = 3", "$CPUPercent is read-only"),
        ("$PendingTasks = 3", "$PendingTasks is read-only"),
        ("TimeInterval_Hour = 3", "TimeInterval_Hour is a constant"),
        ("$a = $PendingTasks.GetSomething(1)", "Unknown method 'GetSomething'"),
        ("$a = $b.GetSample(1)", "'GetSample' is a method of a sampled service variable"),
        ("$a = time().hours", "Unknown timestamp field 'hours'"),
        ("$a = max(1) % 2", "Unexpected character '%'"),
        ('$a = time("2026', "Unterminated string"),
        ("$a = rand(1)", "Wrong number of arguments to 'rand'"),
        ("$a = $PendingTasks.GetSample()", "Wrong number of arguments to 'GetSample'"),
        ("// only a comment", "The formula has no statements"),
        ("$a = " + "(" * 60 + "1" + ")" * 60, "nested too deeply"),
        (";".join(["$a = 1"] * 101), "at most 100 statements"),
    ],
)
def test_syntax_errors(formula: str, detail: str) -> None:
    with pytest.raises(FormulaSyntaxError) as caught:
        parse(formula)
    assert caught.value.code == "AutoScalingFormulaSyntaxError"
    assert caught.value.status == 400
    assert caught.value.message == "The specified auto-scaling formula has a syntax error."
    ((name, value),) = caught.value.values
    assert name == "Message"
    assert detail in value


def test_evaluate_refuses_text_that_does_not_parse() -> None:
    with pytest.raises(FormulaSyntaxError):
        run("$TargetDedicatedNodes = ")


def test_too_long() -> None:
    ok = "$TargetDedicatedNodes = 1;" + " " * (8192 - 26)
    assert len(ok) == 8192
    parse(ok)
    with pytest.raises(FormulaTooLongError) as caught:
        parse(ok + " ")
    assert caught.value.code == "AutoScaleFormulaTooLong"


def test_lines_and_columns_count_from_one_across_comments() -> None:
    with pytest.raises(FormulaSyntaxError) as caught:
        parse("// a comment\n$a = 1;\n  $b = ) ")
    assert (caught.value.line, caught.value.col) == (3, 8)


def test_a_long_flat_sum_is_fine() -> None:
    # A left-nested chain that deep would exhaust Python's recursion limit if evaluated as a tree.
    formula = "$TargetDedicatedNodes = " + " + ".join(["0"] * 2000) + " + 1"
    assert len(formula) < 8192
    assert run(formula).target_dedicated_nodes == 1


# --------------------------------------------------------------------------------------------------------------------
# Property: arbitrary text never escapes as anything but the module's own errors

_ALPHABET = string.ascii_letters + string.digits + " \n\t$_.,;:?!<>=+-*/()\"&|%[]{}#'\\"
_WORDS = [
    "$TargetDedicatedNodes",
    "$PendingTasks",
    ".GetSample(",
    ".GetSamplePercent(",
    "TimeInterval_Minute",
    "avg(",
    "max(",
    "time()",
    ".hour",
    "stop()",
    "rand()",
    " ? ",
    " : ",
    " = ",
    " && ",
    ";",
    "1",
    "0",
    "//",
    '"2026-12-07"',
    "1e308",
    "TimeInterval_Year",
    'time("9999-12-31")',
    "val(",
    "percentile(",
    "lg(",
    " * ",
    " - ",
    "(",
    ")",
    ",",
]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(alphabet=_ALPHABET, max_size=120), st.lists(st.sampled_from(_WORDS), max_size=25).map("".join))
)
def test_random_text_raises_only_formula_errors(text: str) -> None:
    try:
        formula = parse(text)
    except FormulaError:
        return
    context = EvaluationContext(now=MONDAY_10AM, samples={"$PendingTasks": history(1, 2, 3)})
    outcome = evaluate(formula, context)
    assert outcome.target_dedicated_nodes >= 0
    assert outcome.results.startswith("$TargetDedicatedNodes=")
