"""Simulated tasks: a task takes a modelled duration and exit code instead of starting a process.

With a `Simulation` (``Emulator(simulate_tasks=...)``, ``--simulate-tasks``), every task (and start task) of the
emulator is simulated: no process, no task directory, no resource file download or output upload.  The task goes
``running`` for its duration on the emulator's clock, then completes with its exit code through the same retry,
wall-clock and completion rules as a real one.  That is how a million tasks on thousands of nodes fit on one
machine: a task costs its model object and, while it runs, one sleeping coroutine.

Each task's duration and exit code are, in order of precedence:

* given by the task's environment settings (its own, then its job's ``commonEnvironmentSettings``):
  ``AZ_SIM_DURATION`` (seconds of the service's time, a number 0 or more) and ``AZ_SIM_EXIT`` (an integer);
* else drawn from the simulation's distribution and failure rate, seeded: the draw depends only on the seed, the
  job id, the task id and the attempt, so a run is reproducible whatever order the tasks are dispatched in.

A value of ``AZ_SIM_DURATION`` or ``AZ_SIM_EXIT`` that is not a number makes the attempt fail with the service's
``usererror`` (the message names the variable): a bad model never silently becomes a success.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

from ._types import FailureInfo

__all__ = ["DURATION_VARIABLE", "EXIT_VARIABLE", "SimulatedAttempt", "Simulation"]

#: The environment setting that gives a simulated task's duration, in seconds of the service's time.
DURATION_VARIABLE = "AZ_SIM_DURATION"
#: The environment setting that gives a simulated task's exit code.
EXIT_VARIABLE = "AZ_SIM_EXIT"

_KINDS = {"fixed": 1, "uniform": 2, "lognormal": 2, "exponential": 1}


@dataclass(frozen=True)
class SimulatedAttempt:
    """What one simulated attempt does: how long it runs (service seconds) and how it ends."""

    duration: float
    exit_code: int | None
    #: A failure before the "process" (a bad ``AZ_SIM_*`` value); the attempt then never runs.
    failure: FailureInfo | None = None


@dataclass(frozen=True)
class Simulation:
    """How simulated tasks behave.

    Attributes:
        duration: The distribution of task durations in seconds of the service's time: ``fixed:S``,
            ``uniform:LOW,HIGH``, ``lognormal:MU,SIGMA`` (of the natural log of the seconds) or
            ``exponential:MEAN``.
        failure_rate: The probability (0 to 1) that an attempt exits with ``failure_exit_code`` instead of 0.
        failure_exit_code: The exit code of a failed attempt (not 0).
        seed: Seeds every draw (with the job id, task id and attempt).

    Raises:
        ValueError: An unknown distribution, wrong parameters, a rate outside 0..1 or a failure exit code of 0.

    Example:
        >>> sim = Simulation.parse("duration=lognormal:1.0,0.5;fail=0.01;seed=7")
        >>> sim.failure_rate
        0.01
    """

    duration: str = "fixed:0"
    failure_rate: float = 0.0
    failure_exit_code: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _parse_distribution(self.duration)
        rate = self.failure_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"Simulation.failure_rate must be a number from 0 to 1, not {rate!r}")
        if not isinstance(self.failure_exit_code, int) or self.failure_exit_code == 0:
            raise ValueError(f"Simulation.failure_exit_code must be a non-zero integer, not {self.failure_exit_code!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"Simulation.seed must be an integer, not {self.seed!r}")

    @classmethod
    def parse(cls, text: str) -> Simulation:
        """A simulation from ``key=value`` pairs separated by ``;``: ``duration``, ``fail``, ``exit``, ``seed``.

        ``""`` (or ``"default"``) is every task taking no time and succeeding, unless its ``AZ_SIM_*`` settings
        say otherwise.

        Raises:
            ValueError: an unknown key or a bad value, named.
        """
        values: dict[str, str] = {}
        for part in text.split(";"):
            part = part.strip()
            if not part or part == "default":
                continue
            key, sep, value = part.partition("=")
            key = key.strip().lower()
            if not sep or key not in ("duration", "fail", "exit", "seed"):
                raise ValueError(
                    f"simulate-tasks: {part!r} is not one of duration=KIND:PARAMS, fail=RATE, exit=CODE, seed=N"
                )
            values[key] = value.strip()
        try:
            return cls(
                duration=values.get("duration", "fixed:0"),
                failure_rate=float(values.get("fail", "0")),
                failure_exit_code=int(values.get("exit", "1")),
                seed=int(values.get("seed", "0")),
            )
        except ValueError as exc:
            raise ValueError(f"simulate-tasks: {exc}") from None

    def attempt(self, job_id: str, task_id: str, attempt: int, environment: Mapping[str, str]) -> SimulatedAttempt:
        """The duration and exit code of one attempt of a task (see the module's rules)."""
        given_duration = environment.get(DURATION_VARIABLE)
        given_exit = environment.get(EXIT_VARIABLE)
        rng: random.Random | None = None
        if given_duration is None or given_exit is None:
            digest = hashlib.blake2b(f"{self.seed}\0{job_id}\0{task_id}\0{attempt}".encode(), digest_size=8).digest()
            rng = random.Random(int.from_bytes(digest, "big"))
        if given_duration is not None:
            try:
                duration = float(given_duration)
                if not (math.isfinite(duration) and duration >= 0):
                    raise ValueError
            except ValueError:
                return SimulatedAttempt(0.0, None, _bad_setting(DURATION_VARIABLE, given_duration))
        else:
            assert rng is not None
            duration = _draw(self.duration, rng)
        if given_exit is not None:
            try:
                exit_code = int(given_exit)
            except ValueError:
                return SimulatedAttempt(0.0, None, _bad_setting(EXIT_VARIABLE, given_exit))
        else:
            assert rng is not None
            exit_code = self.failure_exit_code if rng.random() < self.failure_rate else 0
        return SimulatedAttempt(duration, exit_code)


@functools.lru_cache(maxsize=64)
def _parse_distribution(text: object) -> tuple[str, tuple[float, ...]]:
    if not isinstance(text, str):
        raise ValueError(f"Simulation.duration must be text such as 'lognormal:1,0.5', not {text!r}")
    kind, _, params = text.partition(":")
    kind = kind.strip().lower()
    if kind not in _KINDS:
        raise ValueError(f"Simulation.duration {text!r}: the kind must be one of {', '.join(_KINDS)}")
    try:
        numbers = tuple(float(p) for p in params.split(",")) if params.strip() else ()
    except ValueError:
        raise ValueError(f"Simulation.duration {text!r}: parameters must be numbers") from None
    if len(numbers) != _KINDS[kind] or not all(math.isfinite(n) for n in numbers):
        raise ValueError(f"Simulation.duration {text!r}: {kind} takes {_KINDS[kind]} finite number(s)")
    if kind in ("fixed", "exponential") and numbers[0] < 0:
        raise ValueError(f"Simulation.duration {text!r}: the seconds must be 0 or more")
    if kind == "uniform" and not 0 <= numbers[0] <= numbers[1]:
        raise ValueError(f"Simulation.duration {text!r}: uniform needs 0 <= LOW <= HIGH")
    if kind == "lognormal" and numbers[1] < 0:
        raise ValueError(f"Simulation.duration {text!r}: SIGMA must be 0 or more")
    return kind, numbers


def _draw(distribution: str, rng: random.Random) -> float:
    kind, p = _parse_distribution(distribution)
    if kind == "fixed":
        return p[0]
    if kind == "uniform":
        return rng.uniform(p[0], p[1])
    if kind == "lognormal":
        return rng.lognormvariate(p[0], p[1])
    return rng.expovariate(1 / p[0]) if p[0] > 0 else 0.0


def _bad_setting(name: str, value: str) -> FailureInfo:
    return FailureInfo(
        "usererror",
        "SimulatedTaskSettingInvalid",
        f"The simulated task's {name} is not a valid value.",
        (("Reason", f"{name}={value!r}: give a number (seconds 0 or more for the duration, an integer exit code)."),),
    )
