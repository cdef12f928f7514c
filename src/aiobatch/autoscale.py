"""Autoscale formulas for the common cases, written for you.

Azure Batch resizes an autoscale pool by evaluating a formula (a small language of its own) every
``autoScaleEvaluationInterval``.  These functions return such formulas as strings, built from the documented
patterns: follow the task queue, run a fixed size while there is work and none when idle, or follow office hours.
Pass the string as the pool's ``autoScaleFormula`` (with ``enableAutoScale``) or to ``enable_pool_auto_scale``;
check it first with ``evaluate_pool_auto_scale``, which answers with every variable's value.

Each formula ends by setting the target for one kind of node -- ``$TargetDedicatedNodes``, or
``$TargetLowPriorityNodes`` with ``spot=True`` -- and ``$NodeDeallocationOption`` (by default ``taskcompletion``:
a node leaving the pool finishes its running tasks first).  Times are seconds, counts are ints.

A formula reads its metrics from samples the service takes every 30 seconds and publishes about a minute late, so
each formula here first asks what share of the look-back window has samples (``GetSamplePercent``) and, below
``min_sample_percent``, falls back on the latest sample alone -- as Microsoft's own examples do -- instead of
failing the evaluation.
"""

from __future__ import annotations

import math

__all__ = ["scale_to_zero_when_idle", "scale_with_queue", "working_hours"]

_DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")


def scale_with_queue(
    *,
    max_nodes: int,
    min_nodes: int = 0,
    task_slots_per_node: int | None = None,
    window: float = 900.0,
    min_sample_percent: float = 70.0,
    spot: bool = False,
    node_deallocation_option: str = "taskcompletion",
) -> str:
    """A formula that sizes the pool to the queue of pending (active and running) tasks.

    The pool gets one node per ``task_slots_per_node`` pending tasks, rounded up, between ``min_nodes`` and
    ``max_nodes``.  The number of tasks is the larger of the latest sample and the average over the last
    ``window`` seconds, so the pool grows as soon as work arrives and shrinks only once the queue has stayed short;
    with ``min_nodes=0`` it goes to zero when nothing has been pending for the whole window.

    Args:
        max_nodes: The most nodes the formula asks for.
        min_nodes: The fewest (0: none when idle).
        task_slots_per_node: Tasks one node runs at once; None reads the pool's own ``taskSlotsPerNode``
            (``$TaskSlotsPerNode``).
        window: How far back the average looks, in seconds.
        min_sample_percent: Below this share of samples in the window, the latest sample alone decides.
        spot: Set the Spot (low-priority) target instead of the dedicated one.
        node_deallocation_option: How nodes leave when the pool shrinks: ``requeue``, ``terminate``,
            ``taskcompletion`` or ``retaineddata``.

    Returns:
        The formula.

    Raises:
        ValueError: A count is negative, ``min_nodes`` exceeds ``max_nodes``, ``task_slots_per_node`` or ``window``
            is not positive, ``min_sample_percent`` is outside 0-100, or the option is not one of the four.

    Example:
        >>> print(scale_with_queue(max_nodes=10, task_slots_per_node=4, window=600))
        $samples = $PendingTasks.GetSamplePercent(TimeInterval_Second * 600);
        $tasks = $samples < 70 ? max(0, $PendingTasks.GetSample(1)) : max($PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Second * 600)));
        $nodes = ceil($tasks / 4);
        $TargetDedicatedNodes = max(0, min(10, $nodes));
        $NodeDeallocationOption = taskcompletion;
    """  # noqa: E501 -- the example prints the formula as it is
    _check_count("max_nodes", max_nodes)
    _check_count("min_nodes", min_nodes)
    if min_nodes > max_nodes:
        raise ValueError(f"min_nodes ({min_nodes}) exceeds max_nodes ({max_nodes})")
    if task_slots_per_node is not None and task_slots_per_node < 1:
        raise ValueError(f"task_slots_per_node must be at least 1, not {task_slots_per_node}")
    slots = "$TaskSlotsPerNode" if task_slots_per_node is None else _number(task_slots_per_node)
    statements = [
        *_queue_depth("$tasks", "avg", window, min_sample_percent),
        f"$nodes = ceil($tasks / {slots})",
        f"{_target(spot)} = max({min_nodes}, min({max_nodes}, $nodes))",
        _deallocation(node_deallocation_option),
    ]
    return _formula(statements)


def scale_to_zero_when_idle(
    *,
    nodes: int,
    idle_for: float = 900.0,
    min_sample_percent: float = 70.0,
    spot: bool = False,
    node_deallocation_option: str = "taskcompletion",
) -> str:
    """A formula that keeps ``nodes`` nodes while there is work and none once the pool has been idle.

    The pool is idle when no task has been pending (active or running) at any sample of the last ``idle_for``
    seconds.

    Args:
        nodes: The pool's size while there is work.
        idle_for: How long the queue must stay empty before the pool goes to zero, in seconds.
        min_sample_percent: Below this share of samples in the window, the latest sample alone decides.
        spot: Set the Spot (low-priority) target instead of the dedicated one.
        node_deallocation_option: How nodes leave when the pool shrinks (see `scale_with_queue`).

    Returns:
        The formula.

    Raises:
        ValueError: ``nodes`` is negative, ``idle_for`` not positive, ``min_sample_percent`` outside 0-100, or the
            option is not one of the four.

    Example:
        >>> print(scale_to_zero_when_idle(nodes=3, idle_for=1800))
        $samples = $PendingTasks.GetSamplePercent(TimeInterval_Second * 1800);
        $tasks = $samples < 70 ? max(0, $PendingTasks.GetSample(1)) : max($PendingTasks.GetSample(1), max($PendingTasks.GetSample(TimeInterval_Second * 1800)));
        $TargetDedicatedNodes = $tasks > 0 ? 3 : 0;
        $NodeDeallocationOption = taskcompletion;
    """  # noqa: E501 -- the example prints the formula as it is
    _check_count("nodes", nodes)
    statements = [
        *_queue_depth("$tasks", "max", idle_for, min_sample_percent),
        f"{_target(spot)} = $tasks > 0 ? {nodes} : 0",
        _deallocation(node_deallocation_option),
    ]
    return _formula(statements)


def working_hours(
    *,
    nodes: int,
    off_hours_nodes: int = 0,
    start_hour: int = 8,
    end_hour: int = 18,
    weekdays_only: bool = True,
    utc_offset: float = 0.0,
    spot: bool = False,
    node_deallocation_option: str = "taskcompletion",
) -> str:
    """A formula that follows a fixed schedule: ``nodes`` during working hours, ``off_hours_nodes`` otherwise.

    Working hours run from ``start_hour`` up to (not including) ``end_hour``, Monday to Friday unless
    ``weekdays_only`` is false, in the time zone ``utc_offset`` hours from UTC (a fixed offset: adjust it yourself
    when daylight saving time starts or ends).

    Args:
        nodes: The pool's size during working hours.
        off_hours_nodes: Its size outside them.
        start_hour: The first working hour, 0-23.
        end_hour: The hour working time ends, 1-24, after ``start_hour``.
        weekdays_only: Count only Monday to Friday as working days.
        utc_offset: The local time zone, in hours from UTC (``-6`` for Mountain Daylight Time).
        spot: Set the Spot (low-priority) target instead of the dedicated one.
        node_deallocation_option: How nodes leave when the pool shrinks (see `scale_with_queue`).

    Returns:
        The formula.

    Raises:
        ValueError: A count is negative, the hours are out of range or out of order, ``utc_offset`` is beyond
            +/-14 hours, or the option is not one of the four.

    Example:
        >>> print(working_hours(nodes=20, off_hours_nodes=2, utc_offset=1))
        $curTime = time() + (1 * TimeInterval_Hour);
        $workHours = $curTime.hour >= 8 && $curTime.hour < 18;
        $isWeekday = $curTime.weekday >= 1 && $curTime.weekday <= 5;
        $TargetDedicatedNodes = $workHours && $isWeekday ? 20 : 2;
        $NodeDeallocationOption = taskcompletion;
    """
    _check_count("nodes", nodes)
    _check_count("off_hours_nodes", off_hours_nodes)
    if not (0 <= start_hour < end_hour <= 24):
        raise ValueError(f"need 0 <= start_hour < end_hour <= 24, not {start_hour} and {end_hour}")
    if not (math.isfinite(utc_offset) and -14 <= utc_offset <= 14):
        raise ValueError(f"utc_offset must be within 14 hours of UTC, not {utc_offset}")
    # As the page writes it for Mountain time: "time() + (-6 * TimeInterval_Hour)".
    now = "time()" if utc_offset == 0 else f"time() + ({_number(utc_offset)} * TimeInterval_Hour)"
    statements = [
        f"$curTime = {now}",
        f"$workHours = $curTime.hour >= {start_hour} && $curTime.hour < {end_hour}",
    ]
    condition = "$workHours"
    if weekdays_only:
        # The formula's weekday counts from Sunday = 0: Monday to Friday are 1 to 5.
        statements.append("$isWeekday = $curTime.weekday >= 1 && $curTime.weekday <= 5")
        condition = "$workHours && $isWeekday"
    statements += [
        f"{_target(spot)} = {condition} ? {nodes} : {off_hours_nodes}",
        _deallocation(node_deallocation_option),
    ]
    return _formula(statements)


def _queue_depth(name: str, summary: str, window: float, min_sample_percent: float) -> list[str]:
    """Statements setting ``name`` to the number of pending tasks.

    That is the latest sample, or with enough history the larger of it and the window's ``summary`` (``avg`` or
    ``max``).
    """
    if not (math.isfinite(window) and window > 0):
        raise ValueError(f"the window must be a positive number of seconds, not {window}")
    if not (math.isfinite(min_sample_percent) and 0 <= min_sample_percent <= 100):
        raise ValueError(f"min_sample_percent must be within 0-100, not {min_sample_percent}")
    span = f"TimeInterval_Second * {_number(window)}"
    return [
        f"$samples = $PendingTasks.GetSamplePercent({span})",
        f"{name} = $samples < {_number(min_sample_percent)} ? max(0, $PendingTasks.GetSample(1))"
        f" : max($PendingTasks.GetSample(1), {summary}($PendingTasks.GetSample({span})))",
    ]


def _target(spot: bool) -> str:
    return "$TargetLowPriorityNodes" if spot else "$TargetDedicatedNodes"


def _deallocation(option: str) -> str:
    if option not in _DEALLOCATION_OPTIONS:
        raise ValueError(f"node_deallocation_option must be one of {', '.join(_DEALLOCATION_OPTIONS)}, not {option!r}")
    return f"$NodeDeallocationOption = {option}"


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, not {value!r}")


def _number(value: float) -> str:
    """A number as a formula literal: ``600``, ``2.5``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _formula(statements: list[str]) -> str:
    return "\n".join(f"{statement};" for statement in statements)
