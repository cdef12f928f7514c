"""The emulated service's clock: an emulated "now" that can pass faster than real time.

A `Clock` with speed N starts at the real instant it is made and then advances N seconds of emulated time per real
second.  Every timestamp the emulator answers (``creationTime``, ``stateTransitionTime``, ``startTime``,
``endTime``, ``lastModified``, ...) is read from it, and every duration the API gives (``retentionTime``,
``maxWallClockTime``, a schedule's recurrence, an autoscale evaluation interval, the `Timings` of allocation and
boot) becomes a real wait of ``duration / N`` through `Clock.real_seconds`, so that a user can test hour-long
behaviour in seconds.

The clock of the emulator that handles a request or runs a background step is found through a context variable
(`current`): an `Emulator` sets it while it starts its server and its scheduler, so every handler and every
background task of that emulator inherits it, and two emulators in one process keep their own clocks.  Outside
an emulator (a unit test building model objects) the real clock answers.

What is *not* on the emulated clock: the HTTP ``Date`` header and the Shared Key / token time checks (those are
about the client's real clock, as on Azure), and storage SAS expiry (storage runs on real time).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import math
import time
from collections.abc import Callable, Iterator

__all__ = ["REAL", "Clock", "check_speed", "current", "now", "using", "wait_event"]


def check_speed(value: object) -> float:
    """A clock speed, checked: a finite number more than 0.

    Raises:
        ValueError: not a number, not finite, or 0 or less.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"clock speed must be a number more than 0, not {value!r}")
    speed = float(value)
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"clock speed must be a finite number more than 0, not {value!r}")
    return speed


class Clock:
    """Emulated time: starts at the real "now" when made, then runs ``speed`` times faster than real time.

    Args:
        speed: Emulated seconds per real second (more than 0); 1 is real time, 60 turns an hour into a minute.
        start: The emulated instant the clock starts at (the real "now" by default), timezone-aware.
        monotonic: The real clock it measures elapsed time with (`time.monotonic`; replaceable in tests).

    Raises:
        ValueError: ``speed`` is not a finite number more than 0.

    Example:
        >>> clock = Clock(60)
        >>> clock.real_seconds(3600)  # an emulated hour is a real minute
        60.0
    """

    def __init__(
        self,
        speed: float = 1.0,
        *,
        start: dt.datetime | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.speed = check_speed(speed)
        self._monotonic = monotonic
        self._real_start = monotonic()
        self._start = start if start is not None else dt.datetime.now(dt.timezone.utc)
        # At real speed with no fixed start, "now" is the system's own (it follows NTP steps as Azure's does).
        self._real_time = self.speed == 1.0 and start is None

    def __repr__(self) -> str:
        return f"Clock(speed={self.speed:g})"

    def now(self) -> dt.datetime:
        """The emulated "now", UTC, timezone-aware."""
        if self._real_time:
            return dt.datetime.now(dt.timezone.utc)
        elapsed = (self._monotonic() - self._real_start) * self.speed
        return self._start + dt.timedelta(seconds=elapsed)

    def real_seconds(self, emulated: float) -> float:
        """How many real seconds ``emulated`` seconds of the service's time take on this clock."""
        return emulated / self.speed

    def emulated_seconds(self, real: float) -> float:
        """How many emulated seconds pass in ``real`` seconds."""
        return real * self.speed


#: The real clock: what answers outside any emulator.
REAL = Clock()

_CURRENT: contextvars.ContextVar[Clock] = contextvars.ContextVar("aiobatch_emulator_clock", default=REAL)


def current() -> Clock:
    """The clock of the emulator whose handler or background task is running (`REAL` outside any)."""
    return _CURRENT.get()


def now() -> dt.datetime:
    """The emulated "now" of the current emulator (the real time outside any)."""
    return _CURRENT.get().now()


@contextlib.contextmanager
def using(clock: Clock) -> Iterator[Clock]:
    """Make ``clock`` the current one for the block (and for every asyncio task and server started in it)."""
    token = _CURRENT.set(clock)
    try:
        yield clock
    finally:
        _CURRENT.reset(token)


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` (real) have passed, whichever comes first.

    Unlike ``asyncio.wait_for(event.wait(), seconds)`` it starts no task of its own for each wait (a background
    loop waking every second would otherwise leave a fresh task pending at any moment). A timeout sets the event:
    the loops that use this clear it before they wait.
    """
    timer = asyncio.get_running_loop().call_later(seconds, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()
