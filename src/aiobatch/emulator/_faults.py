"""Seeded fault injection, off by default: the emulator misbehaves on purpose so clients can prove they hold.

Faults come from a `FaultPlan` (CLI flags or code; rates per kind, drawn from one seeded RNG) or are aimed at a
single request with the ``x-aiobatch-fault`` header, e.g. ``x-aiobatch-fault: 503`` or
``x-aiobatch-fault: 429; retry-after=2`` (parameters ``retry-after``, ``seconds`` for ``latency``, ``rate`` for
``task-error``).  The header takes the request-level kinds and ``task-error``; anything else (an unknown kind,
``preempt``/``unusable``, a collection-only kind on another request, a bad parameter) is a 400
``InvalidHeaderValue`` naming the valid kinds, and nothing is counted for it.

Every injection is counted in `FaultLedger`, and the account counts what it committed (creates per id, deletes),
so tests use the server's record as the oracle.

Kinds:
    ``429``            429 TooManyRequests with Retry-After.
    ``503``            503 ServerBusy with Retry-After.
    ``503-bare``       503 ServerBusy without Retry-After.
    ``partial-500``    addtaskcollection only: a random part of the chunk is committed, then 500 OperationTimedOut.
    ``latency``        the request, received whole, takes effect (and is answered) ``latency`` seconds late.
    ``reset-before``   the connection is dropped before the request takes effect.
    ``reset-after``    the request takes effect, then the connection is dropped instead of answering.
    ``truncate``       the request takes effect and the answer is cut off mid-body.
    ``task-error``     addtaskcollection only: each task in the chunk gets a ``servererror`` result (not added) with
                       probability ``task_error_rate``.
    ``preempt``        when a task starts on a spot node, the node is preempted mid-task (its tasks requeued).
    ``unusable``       when a task starts on a node, the node becomes unusable mid-task (its tasks requeued).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ._model import ServiceError

FAULT_HEADER = "x-aiobatch-fault"

#: Request-level kinds the middleware injects, in the order they are drawn.
REQUEST_KINDS = ("429", "503", "503-bare", "partial-500", "latency", "reset-before", "reset-after", "truncate")
#: Kinds acted on elsewhere (the addtaskcollection handler, the scheduler).
OTHER_KINDS = ("task-error", "preempt", "unusable")
ALL_KINDS = REQUEST_KINDS + OTHER_KINDS
#: Kinds a single request may ask for with the header; ``preempt``/``unusable`` happen to nodes, not requests.
HEADER_KINDS = (*REQUEST_KINDS, "task-error")
#: Kinds that only mean something for ``POST /jobs/{jobId}/addtaskcollection``.
COLLECTION_KINDS = ("partial-500", "task-error")
#: The header's parameters: ``retry-after`` (seconds), ``seconds`` (for ``latency``), ``rate`` (for ``task-error``).
HEADER_OPTIONS = ("retry-after", "seconds", "rate")


@dataclass(frozen=True)
class CollectionFaults:
    """What the middleware asks of the addtaskcollection handler for the request being handled.

    Attributes:
        commit_fraction: Commit only this fraction of the chunk, then answer 500 OperationTimedOut.
        task_error_rate: Give each task a ``servererror`` result (not added) with this probability.
    """

    commit_fraction: float | None = None
    task_error_rate: float = 0.0


#: Set by the middleware for the request it is handling (each request runs in its own asyncio task).
COLLECTION_FAULTS: ContextVar[CollectionFaults | None] = ContextVar("collection_faults", default=None)


@dataclass
class FaultPlan:
    """Which faults to inject and how often; everything is drawn from one RNG seeded with ``seed``.

    Attributes:
        seed: The RNG seed (print it: a failure can then be replayed).
        rates: Probability per request (per task start for ``preempt``/``unusable``) for each kind.
        task_error_rate: For ``task-error``: the probability of each task in a chosen chunk failing.
        retry_after: Seconds sent in Retry-After for ``429``/``503``.
        latency: Seconds added for ``latency``.
        operations: Which requests are eligible: substrings of ``"METHOD /path"`` (empty: all).
    """

    seed: int = 0
    rates: dict[str, float] = field(default_factory=dict)
    task_error_rate: float = 0.5
    retry_after: float = 1.0
    latency: float = 0.5
    operations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(ALL_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(ALL_KINDS)}")
        for kind, rate in self.rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate for {kind} must be between 0 and 1, not {rate}")
        if not 0.0 <= self.task_error_rate <= 1.0:
            raise ValueError(f"task_error_rate must be between 0 and 1, not {self.task_error_rate}")
        for name in ("retry_after", "latency"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be 0 seconds or more, not {getattr(self, name)}")

    @classmethod
    def parse(cls, specs: list[str], *, seed: int = 0, **tuning: Any) -> FaultPlan:
        """Build a plan from CLI strings like ``503=0.05`` or ``latency=0.1``.

        Args:
            specs: ``KIND=RATE`` strings.
            seed: The RNG seed.
            **tuning: Other `FaultPlan` fields (``retry_after``, ``latency``, ``task_error_rate``, ``operations``).

        Raises:
            ValueError: a malformed spec or an unknown kind, naming the known kinds; a tuning value out of range.
        """
        rates: dict[str, float] = {}
        for spec in specs:
            kind, sep, rate = spec.partition("=")
            if not sep:
                raise ValueError(f"--fault {spec!r}: write KIND=RATE, e.g. 503=0.05")
            try:
                rates[kind.strip()] = float(rate)
            except ValueError:
                raise ValueError(f"--fault {spec!r}: the rate must be a number between 0 and 1") from None
        return cls(seed=seed, rates=rates, **tuning)


@dataclass
class FaultLedger:
    """What the emulator injected, by kind, and which requests it saw: the record tests judge clients by.

    Attributes:
        injected: injections by kind.
        requests: authenticated requests by ``"METHOD /path"`` (the query left out), faulted or not: what a
            client's retry policy actually sent, counted by the server.
        arrivals: ``(monotonic time, "METHOD /path")`` of the latest requests (at most `ARRIVALS` of them),
            for tests that look at retry timings.
    """

    ARRIVALS: ClassVar[int] = 10_000

    injected: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    arrivals: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=FaultLedger.ARRIVALS))

    def record(self, kind: str, count: int = 1) -> None:
        """Count ``count`` injections of ``kind``."""
        self.injected[kind] += count

    def saw(self, line: str) -> None:
        """Count one request, ``"METHOD /path"``."""
        self.requests[line] += 1
        self.arrivals.append((time.monotonic(), line))

    def count(self, *parts: str) -> int:
        """How many requests were seen whose ``"METHOD /path"`` contains every one of *parts*."""
        return sum(n for line, n in self.requests.items() if all(p in line for p in parts))

    def summary(self) -> str:
        """One line of what was injected, e.g. ``injected 503=4, latency=1 over 57 requests``."""
        kinds = ", ".join(f"{kind}={n}" for kind, n in sorted(self.injected.items())) or "nothing"
        return f"injected {kinds} over {sum(self.requests.values())} requests"

    def times(self, *parts: str) -> list[float]:
        """Arrival times (monotonic) of the remembered requests whose line contains every one of *parts*."""
        return [t for t, line in self.arrivals if all(p in line for p in parts)]


class Faults:
    """The live fault state of one emulator: its plan, RNG and ledger."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.plan = plan or FaultPlan()
        self.rng = random.Random(self.plan.seed)
        self.ledger = FaultLedger()

    def draw(self, kind: str) -> bool:
        """Whether to inject ``kind`` now, by the plan's rate."""
        rate = self.plan.rates.get(kind, 0.0)
        return rate > 0 and self.rng.random() < rate

    def eligible(self, request: web.Request) -> bool:
        """Whether the plan's ``operations`` filter admits this request."""
        ops = self.plan.operations
        line = f"{request.method} {request.path}"
        return not ops or any(op in line for op in ops)

    def choose(self, request: web.Request) -> tuple[str | None, Mapping[str, str]]:
        """The fault to inject into this request, from its header or the plan, with its parameters."""
        header = request.headers.get(FAULT_HEADER)
        if header:
            return parse_header(header, request.path)
        if not self.plan.rates or not self.eligible(request):
            return None, {}
        for kind in REQUEST_KINDS:
            if kind == "partial-500" and not request.path.endswith("/addtaskcollection"):
                continue
            if self.draw(kind):
                return kind, {}
        return None, {}


def parse_header(header: str, path: str) -> tuple[str, dict[str, str]]:
    """The kind and parameters an ``x-aiobatch-fault`` header asks for.

    Raises:
        ServiceError: 400 ``InvalidHeaderValue`` for a kind that is not request-level (naming those that are), a
            collection-only kind on another request, or an unknown or non-numeric parameter.
    """
    kind, *params = [p.strip() for p in header.split(";")]
    options = {name.strip().lower(): value.strip() for name, _, value in (p.partition("=") for p in params if p)}

    def refuse(reason: str) -> ServiceError:
        values = [("HeaderName", FAULT_HEADER), ("HeaderValue", header), ("Reason", reason)]
        return ServiceError(
            400,
            "InvalidHeaderValue",
            f"The value for one of the HTTP headers is not in the correct format. {reason}",
            values,
        )

    if kind not in HEADER_KINDS:
        valid = ", ".join(HEADER_KINDS)
        raise refuse(
            f"{FAULT_HEADER}: {kind!r} is not a request-level fault kind; valid kinds: {valid}"
            " (preempt and unusable happen to nodes: use a FaultPlan or Emulator.lose_node)."
        )
    if kind in COLLECTION_KINDS and not path.endswith("/addtaskcollection"):
        raise refuse(f"{FAULT_HEADER}: {kind!r} applies only to POST /jobs/{{jobId}}/addtaskcollection.")
    for name, value in options.items():
        if name not in HEADER_OPTIONS:
            raise refuse(f"{FAULT_HEADER}: unknown parameter {name!r}; known: {', '.join(HEADER_OPTIONS)}.")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        top = 1.0 if name == "rate" else float("inf")
        if not 0.0 <= number <= top:
            raise refuse(f"{FAULT_HEADER}: {name}={value!r} must be a number from 0 to {top:g}.")
    return kind, options


def _busy(status: int, code: str, message: str, retry_after: float | None) -> ServiceError:
    headers = {"Retry-After": str(max(0, round(retry_after)))} if retry_after is not None else {}
    return ServiceError(status, code, message, headers=headers)


def fault_middleware(faults: Faults) -> Middleware:
    """The aiohttp middleware that injects request-level faults."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A malformed fault header is the test's mistake, not client traffic: refused before anything is counted.
        header = request.headers.get(FAULT_HEADER)
        if header:
            parse_header(header, request.path)
        faults.ledger.saw(f"{request.method} {request.path}")
        kind, options = faults.choose(request)
        is_collection = request.path.endswith("/addtaskcollection")
        if kind is None:
            if is_collection and faults.plan.rates.get("task-error") and faults.draw("task-error"):
                COLLECTION_FAULTS.set(CollectionFaults(task_error_rate=faults.plan.task_error_rate))
            return await handler(request)
        retry_after = float(options.get("retry-after", faults.plan.retry_after))
        if kind == "task-error":
            COLLECTION_FAULTS.set(CollectionFaults(task_error_rate=float(options.get("rate", 1.0))))
            return await handler(request)
        faults.ledger.record(kind)
        if kind == "429":
            raise _busy(429, "TooManyRequests", "The server is receiving too many requests.", retry_after)
        if kind == "503":
            raise _busy(503, "ServerBusy", "The server is currently unable to handle the request.", retry_after)
        if kind == "503-bare":
            raise _busy(503, "ServerBusy", "The server is currently unable to handle the request.", None)
        if kind == "latency":
            # The request has arrived whole (the body is read, and kept for the handler) and the service is slow
            # to act on it: a client that gives up meanwhile does not stop it taking effect, as on the service.
            await request.read()
            await asyncio.sleep(float(options.get("seconds", faults.plan.latency)))
            return await handler(request)
        if kind == "reset-before":
            _drop(request)
            raise ConnectionResetError("fault injected: connection reset before the request took effect")
        if kind == "partial-500" and is_collection:
            COLLECTION_FAULTS.set(CollectionFaults(commit_fraction=faults.rng.random()))
            return await handler(request)
        response = await handler(request)
        if kind == "reset-after":
            _drop(request)
            raise ConnectionResetError("fault injected: connection reset after the request took effect")
        if kind == "truncate" and isinstance(response, web.Response) and response.body:
            body = bytes(response.body)  # type: ignore[arg-type]
            stream = web.StreamResponse(status=response.status, headers=response.headers)
            stream.content_length = len(body)
            await stream.prepare(request)
            await stream.write(body[: max(1, len(body) // 2)])
            _drop(request)
            return stream
        return response

    return middleware


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort() if hasattr(transport, "abort") else transport.close()
