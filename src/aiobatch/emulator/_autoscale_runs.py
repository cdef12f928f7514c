"""Autoscale on a pool: the metric samples it records, when its formula runs, and what a run reads.

The glue between the pure formula language (`_autoscale`) and the pool routes, kept free of the model and of
asyncio so the routes need only a few lines: a handler or the scheduler's loop builds a `PoolCounts` from the model
and hands it to the pool's `PoolAutoScale`, which records samples on the service's 30-second grid, decides when an
evaluation is due, and evaluates.

What the service does and this copies:

* samples every 30 seconds, published about a minute after they are taken (so ``GetSample`` right after a pool
  is created finds nothing, as on Azure -- see the page's advice to look back further than a minute);
* ``autoScaleEvaluationInterval`` from 5 minutes to 168 hours, 15 minutes when not given; outside that range a 400
  ``InvalidPropertyValue`` (the REST reference: "rejects the request with an invalid property value error"; the
  .NET SDK's integration test expects that code for a 1-minute interval);
* the formula runs when autoscale is enabled, then once per interval; enabling again with a new interval restarts
  the schedule from that request, with only a new formula it keeps the schedule;
* the run at enable sets the targets at once but is not reported as the pool's ``autoScaleRun`` (the recorded
  ``scale_pools`` exchange: the pool's targets change with the enable request, and for the 40 seconds it was
  watched afterwards the pool showed no ``autoScaleRun``); scheduled runs are;
* ``evaluateautoscale`` runs a formula against the same samples without applying or storing anything.

Emulator's reading, where the documentation is silent: samples are kept for 24 hours; a sample the emulator's loop
did not get to take on time (a busy or fast clock) is filled from the next observation, since pool and task counts
only change when the emulator itself changes them; node metrics it does not measure (``$CPUPercent``, memory, disk,
network, ``$WallClockSeconds``) have no samples, so a formula that reads them fails with ``InsufficientSampleData``.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import deque
from dataclasses import dataclass

from ._autoscale import (
    SAMPLE_PERIOD,
    AutoScaleRun,
    EvaluationContext,
    Formula,
    FormulaError,
    evaluate,
    parse,
)

#: The shortest and longest ``autoScaleEvaluationInterval`` the service accepts, and the default.
MIN_INTERVAL = dt.timedelta(minutes=5)
MAX_INTERVAL = dt.timedelta(hours=168)
DEFAULT_INTERVAL = dt.timedelta(minutes=15)
#: How long after it is taken a sample becomes visible to formulas.
PUBLISH_DELAY = dt.timedelta(minutes=1)
#: How much sample history a pool keeps.
RETENTION = dt.timedelta(hours=24)


class IntervalOutOfRangeError(FormulaError):
    """An ``autoScaleEvaluationInterval`` outside 5 minutes to 168 hours: the service's 400 ``InvalidPropertyValue``."""

    def __init__(self, interval: dt.timedelta) -> None:
        super().__init__(
            "InvalidPropertyValue",
            "The value provided for one of the properties in the request body is invalid.",
            [
                ("PropertyName", "autoScaleEvaluationInterval"),
                ("PropertyValue", str(interval)),
                ("Reason", "The interval must be from 5 minutes to 168 hours."),
            ],
        )


def check_interval(interval: dt.timedelta | None) -> dt.timedelta:
    """The evaluation interval to use: ``interval`` if the service accepts it, 15 minutes if None.

    Raises:
        IntervalOutOfRangeError: The interval is shorter than 5 minutes or longer than 168 hours.
    """
    if interval is None:
        return DEFAULT_INTERVAL
    if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
        raise IntervalOutOfRangeError(interval)
    return interval


@dataclass(frozen=True)
class PoolCounts:
    """One look at a pool and the tasks bound for it: what the formula's variables are made of.

    Attributes:
        active_tasks: Tasks ready to run (dependencies met) in jobs on the pool.
        running_tasks: Tasks running on the pool's nodes.
        succeeded_tasks: Completed tasks of those jobs that succeeded.
        failed_tasks: Completed tasks of those jobs that failed.
        dedicated_nodes: The pool's dedicated nodes (``$CurrentDedicatedNodes``).
        low_priority_nodes: Its Spot/low-priority nodes, preempted ones included.
        preempted_nodes: Nodes in the preempted state.
        usable_nodes: Nodes that can take tasks (idle or running).
        target_dedicated_nodes: The pool's current dedicated target.
        target_low_priority_nodes: Its current Spot/low-priority target.
        task_slots_per_node: The pool's ``taskSlotsPerNode``.
    """

    active_tasks: int = 0
    running_tasks: int = 0
    succeeded_tasks: int = 0
    failed_tasks: int = 0
    dedicated_nodes: int = 0
    low_priority_nodes: int = 0
    preempted_nodes: int = 0
    usable_nodes: int = 0
    target_dedicated_nodes: int = 0
    target_low_priority_nodes: int = 0
    task_slots_per_node: int = 1

    def metrics(self) -> dict[str, float]:
        """The sampled metrics this look gives, by variable name."""
        return {
            "$ActiveTasks": float(self.active_tasks),
            "$RunningTasks": float(self.running_tasks),
            "$PendingTasks": float(self.active_tasks + self.running_tasks),
            "$SucceededTasks": float(self.succeeded_tasks),
            "$FailedTasks": float(self.failed_tasks),
            "$SampleNodeCount": float(self.dedicated_nodes + self.low_priority_nodes),
            "$PreemptedNodeCount": float(self.preempted_nodes),
        }


class SampleHistory:
    """A pool's metric samples on the service's 30-second grid, published after a delay, trimmed to retention.

    Args:
        start: When the pool came to be; the first sample is taken there.
        period: The time between samples.
        publish_delay: How long after it is taken a sample becomes visible.
        retention: How long a sample is kept.
    """

    def __init__(
        self,
        start: dt.datetime,
        *,
        period: dt.timedelta = SAMPLE_PERIOD,
        publish_delay: dt.timedelta = PUBLISH_DELAY,
        retention: dt.timedelta = RETENTION,
    ) -> None:
        self._period = period
        self._delay = publish_delay
        self._next = start
        self._keep = max(1, retention // period)
        self._taken: deque[tuple[dt.datetime, dict[str, float]]] = deque(maxlen=self._keep)

    @property
    def period(self) -> dt.timedelta:
        """The time between samples."""
        return self._period

    def due(self, now: dt.datetime) -> bool:
        """Whether a sample is due by ``now`` (so that a caller builds `PoolCounts` only when one is)."""
        return now >= self._next

    def observe(self, now: dt.datetime, counts: PoolCounts) -> None:
        """Take every sample due by ``now`` from ``counts`` (several when the loop fell behind); cheap otherwise."""
        if now < self._next:
            return
        metrics = counts.metrics()
        missed = (now - self._next) // self._period
        if missed + 1 > self._keep:
            # Older samples would fall out of retention at once: start where they still count.
            self._next += self._period * (missed + 1 - self._keep)
        while self._next <= now:
            self._taken.append((self._next, metrics))
            self._next += self._period

    def samples(self, now: dt.datetime) -> dict[str, tuple[tuple[dt.datetime, float], ...]]:
        """The samples a formula evaluated at ``now`` sees, by metric, oldest first."""
        visible = [(at, metrics) for at, metrics in self._taken if at + self._delay <= now]
        names = visible[0][1].keys() if visible else ()
        return {name: tuple((at, metrics[name]) for at, metrics in visible) for name in names}


class PoolAutoScale:
    """A pool's autoscale: its formula, evaluation schedule, last run and sample history.

    Create it when a pool gets ``enableAutoScale`` (at creation or by ``enableautoscale``); drop it on
    ``disableautoscale`` (keeping `history` if autoscale may come back).  `tick` from the scheduler's loop runs the
    formula when due; `evaluate` serves ``evaluateautoscale``.

    Args:
        formula: The ``autoScaleFormula``.
        interval: The ``autoScaleEvaluationInterval``, or None for 15 minutes.
        now: When autoscale was enabled: the first evaluation is due then.
        history: The pool's samples (kept across disable/enable).
        rng: The source of ``rand()``.
        scale: How much shorter than the interval the emulator waits between evaluations (1: as the service;
            0.01: a 5-minute interval runs every 3 seconds).  The interval itself, as the pool reports it, is
            unchanged.

    Raises:
        FormulaError: The formula is refused (syntax, length) or the interval is out of range: the request's 400.
    """

    def __init__(
        self,
        formula: str,
        interval: dt.timedelta | None,
        now: dt.datetime,
        history: SampleHistory,
        rng: random.Random | None = None,
        *,
        scale: float = 1.0,
    ) -> None:
        self.interval = check_interval(interval)
        self._scale = scale
        self.formula = formula
        self._parsed: Formula = parse(formula)
        self.history = history
        self.next_evaluation = now
        self.last_run: AutoScaleRun | None = None
        self._pending_now = False
        self._rng = rng or random.Random(0)

    def update(self, now: dt.datetime, formula: str | None = None, interval: dt.timedelta | None = None) -> None:
        """``enableautoscale`` on a pool that already autoscales: replace what is given, keep the rest.

        A new interval restarts the schedule from ``now``; a new formula alone keeps it but is due at once (the
        next `tick` runs it, as the service runs a formula when it is enabled).  Both are checked before either
        changes.

        Raises:
            FormulaError: The new formula or interval is refused; nothing changed.
        """
        parsed = parse(formula) if formula is not None else self._parsed
        checked = check_interval(interval) if interval is not None else self.interval
        self._parsed = parsed
        self.formula = formula if formula is not None else self.formula
        if interval is not None:
            self.interval = checked
            self.next_evaluation = now
        if formula is not None:
            # The new formula runs at once (the request's own run); the schedule stays as it was.
            self._pending_now = True

    def evaluate(self, now: dt.datetime, counts: PoolCounts, formula: str | None = None) -> AutoScaleRun:
        """Run a formula (the pool's own by default) against the pool as it is now; nothing is applied or stored.

        Raises:
            FormulaError: ``formula`` is given and refused.
        """
        parsed = self._parsed if formula is None else parse(formula)
        self.history.observe(now, counts)
        return evaluate(parsed, self.context(now, counts))

    @property
    def period(self) -> dt.timedelta:
        """The time between two scheduled evaluations: the interval, scaled."""
        return self.interval * self._scale

    def due(self, now: dt.datetime) -> bool:
        """Whether `tick` would sample or evaluate at ``now`` (so that a caller builds `PoolCounts` only then)."""
        return self._pending_now or now >= self.next_evaluation or self.history.due(now)

    def tick(self, now: dt.datetime, counts: PoolCounts, *, record: bool = True) -> AutoScaleRun | None:
        """Record samples; when an evaluation is due, run the pool's formula and return the run to apply.

        The run is kept as `last_run` (the pool's ``autoScaleRun``) unless ``record`` is false (the run at
        enable, which the service does not report); a run with an ``error`` carries the pool's current targets,
        so applying it changes nothing.
        """
        self.history.observe(now, counts)
        pending, self._pending_now = self._pending_now, False
        if now < self.next_evaluation and not pending:
            return None
        run = evaluate(self._parsed, self.context(now, counts))
        if record:
            self.last_run = run
        if now >= self.next_evaluation:
            # The next evaluation keeps to the interval's grid, skipping any missed while the loop lagged.
            period = self.period
            missed = (now - self.next_evaluation) // period
            self.next_evaluation += period * (missed + 1)
        return run

    def context(self, now: dt.datetime, counts: PoolCounts) -> EvaluationContext:
        """What a formula evaluated now reads."""
        return EvaluationContext(
            now=now,
            samples=self.history.samples(now),
            target_dedicated_nodes=counts.target_dedicated_nodes,
            target_low_priority_nodes=counts.target_low_priority_nodes,
            current_dedicated_nodes=counts.dedicated_nodes,
            current_low_priority_nodes=counts.low_priority_nodes,
            task_slots_per_node=counts.task_slots_per_node,
            usable_node_count=counts.usable_nodes,
            sample_period=self.history.period,
            rng=self._rng,
        )
