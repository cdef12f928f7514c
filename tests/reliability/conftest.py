"""The reliability harness (issue 8): one seed, two scales, a record of injected faults, and a verdict per clause.

Fixtures:
    ``seed`` (int)
        The run's seed: ``$AIOBATCH_SEED`` if set, else random, chosen once per session. Every test that
        requests it prints it (pytest shows the line with a failure); the soak summary ends with it. Derive
        per-test randomness from it (``random.Random(f"{seed}:{name}")``) so one seed replays the whole run.
    ``scale`` (`Scale`)
        ``scale.soak`` is true when ``$AIOBATCH_SOAK=1`` (``nox -s soak``); ``scale.pick(ci, soak)`` returns
        the value for the current scale, e.g. ``scale.pick(500, 10_000)`` tasks.
    ``fault_record`` (callable)
        ``fault_record(counts, source="emulator")`` adds a ``Counter``/mapping of injected faults by kind to the
        session's record (pass the server's own ledger, e.g. ``emulator.ledger.injected`` or
        ``proxy.injected``). The soak summary prints the totals.
    ``fast_retry`` (`RetryPolicy`), ``client_for`` (factory), ``leftovers`` (async check)
        Retries that cost milliseconds (jitter seeded); ``client_for(emulator, azurite, **options)`` builds an
        unopened `Client` (``batch_key=``, ``batch_endpoint=``, ``connection_string=`` swap in wrong or
        unreachable ones); ``await leftovers(emulator, containers=[...])`` reports what the servers still hold
        (pools, jobs, running tasks, the named containers, stray processes) once deletions settle -- the
        server's view, not the client's.

Marker (registered in pyproject.toml, so ``--strict-markers`` accepts it anywhere):
    ``@pytest.mark.clause(N)`` says which clause a test proves: 1-10 are issue 8's, 11 is issue 11's (hostile
    input). A clause holds when it had tests and every one of them passed: a skip or an expected failure
    (xfail, a known gap) does not count.

In soak mode the terminal summary prints a table of injected faults (kind, count), a table of clauses 1-11
(held or not, with counts), and ends with ``soak: H/C clauses held (seed S)``. The session's exit status is
non-zero if any clause that ran did not hold, or, in a complete run of ``tests/reliability`` (no selection), if
any clause had no tests at all.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from azure.storage.blob.aio import BlobServiceClient

import _support
from aiobatch import BatchSettings, Client, RetryPolicy, StorageSettings
from aiobatch._azurite import AzuriteServer
from aiobatch._processes import child_processes
from aiobatch.emulator import Emulator

SEED_ENV = "AIOBATCH_SEED"
SOAK_ENV = "AIOBATCH_SOAK"
#: Clauses 1-10 are issue 8's; clause 11 is issue 11's (the emulator survives hostile input).
CLAUSES = range(1, 12)
#: What each clause asserts, as the soak table names it.
CLAUSE_TITLES = {
    1: "submission: N tasks under mixed faults exist once each; a foreign task is a conflict",
    2: "bounded: faults that never clear end typed, by the deadline, within the attempts",
    3: "pools: lost creates recognised; no silent adoption; allocation errors within one poll",
    4: "watching: one event per task through requeues, preemption, retries and faulty pages",
    5: "transfers: every hash matches under storage faults; corruption typed; no partial blobs",
    6: "cancellation: seeded points in every stage leave the accounts as they were, in bound",
    7: "crash: a SIGKILLed run's resources swept by run id; another run's survive",
    8: "bad input: each refused with the problem and the fix; nothing lost or left running",
    9: "secrets: no key, sig or Authorization in any log, error, repr or CLI line; SAS probed",
    10: "emulator: bad and stale signatures refused; case-insensitive ids; loopback by default",
    11: "hostile input: no 500, no stall, state unchanged",
}

T = TypeVar("T")


@dataclass(frozen=True)
class Scale:
    """How big the reliability tests run: CI-sized by default, soak-sized under ``AIOBATCH_SOAK=1``."""

    soak: bool

    def pick(self, ci_value: T, soak_value: T) -> T:
        """Return ``soak_value`` in soak mode, else ``ci_value``."""
        return soak_value if self.soak else ci_value


@dataclass
class ClauseTally:
    """Outcomes of one clause's tests."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    xfailed: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        """Whether any of the clause's tests reported an outcome."""
        return bool(self.passed or self.failed or self.skipped or self.xfailed)

    @property
    def held(self) -> bool:
        """Held: at least one test, and every test passed (no failure, skip or known gap)."""
        return self.passed > 0 and not (self.failed or self.skipped or self.xfailed)


@dataclass
class Harness:
    """Session state shared by the fixtures and hooks below."""

    seed: int
    scale: Scale
    faults: Counter[str] = field(default_factory=Counter)
    clauses_of: dict[str, tuple[int, ...]] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    deselected: int = 0

    def tally(self) -> dict[int, ClauseTally]:
        """Fold per-test outcomes into per-clause tallies."""
        tallies = {clause: ClauseTally() for clause in CLAUSES}
        for nodeid, clauses in self.clauses_of.items():
            outcome = self.outcomes.get(nodeid)
            for clause in clauses:
                tally = tallies.setdefault(clause, ClauseTally())
                if outcome == "passed":
                    tally.passed += 1
                elif outcome == "failed":
                    tally.failed += 1
                    tally.failures.append(nodeid)
                elif outcome == "skipped":
                    tally.skipped += 1
                elif outcome == "xfailed":
                    tally.xfailed += 1
        return tallies


HARNESS = pytest.StashKey[Harness]()
_HARNESS: list[Harness] = []


def _read_seed() -> int:
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return random.randrange(2**31)
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(f"${SEED_ENV}={raw!r}: the seed must be an integer, e.g. {SEED_ENV}=1234") from None


def pytest_configure(config: pytest.Config) -> None:
    """Choose the session's seed and scale once, before any test runs."""
    soak = os.environ.get(SOAK_ENV, "").strip() == "1"
    config.stash[HARNESS] = harness = Harness(seed=_read_seed(), scale=Scale(soak=soak))
    _HARNESS.append(harness)


def _clauses(item: pytest.Item) -> tuple[int, ...]:
    found: list[int] = []
    for marker in item.iter_markers("clause"):
        for arg in marker.args:
            if not isinstance(arg, int) or arg not in CLAUSES:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.clause({arg!r}) must name a clause {CLAUSES[0]}-{CLAUSES[-1]}"
                )
            found.append(arg)
    return tuple(sorted(set(found)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Remember which clauses each reliability test proves."""
    harness = config.stash[HARNESS]
    for item in items:
        clauses = _clauses(item)
        if clauses:
            harness.clauses_of[item.nodeid] = clauses


def pytest_deselected(items: list[pytest.Item]) -> None:
    """Count deselected tests: a run with a selection cannot claim a clause has no tests."""
    if items:
        items[0].config.stash[HARNESS].deselected += len(items)


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Fold each phase's report into the test's outcome: any failure wins, then skip or xfail, then pass."""
    harness = _harness_of(report)
    if harness is None or report.nodeid not in harness.clauses_of:
        return
    previous = harness.outcomes.get(report.nodeid)
    if report.failed:
        harness.outcomes[report.nodeid] = "failed"
    elif report.skipped and previous != "failed":
        # An expected failure is reported as skipped with `wasxfail`: a known gap, so the clause does not hold.
        harness.outcomes[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    elif report.passed and report.when == "call" and previous is None:
        harness.outcomes[report.nodeid] = "passed"


def _harness_of(report: pytest.TestReport) -> Harness | None:
    # Test reports do not carry the config; pytest_configure keeps the session's harness here.
    return _HARNESS[-1] if _HARNESS else None


def _complete_run(config: pytest.Config, harness: Harness) -> bool:
    """True when the run was all of the reliability tests, not a selection of them."""
    if harness.deselected or config.getoption("keyword", "") or config.getoption("markexpr", ""):
        return False
    return all("::" not in arg and Path(arg).is_dir() for arg in config.args)


def _clause_failed(config: pytest.Config, harness: Harness) -> bool:
    tallies = harness.tally()
    if any(t.ran and not t.held for t in tallies.values()):
        return True
    return _complete_run(config, harness) and any(not t.ran for c, t in tallies.items() if c in CLAUSES)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In soak mode, fail the session when a clause did not hold, even if pytest alone would not."""
    harness = session.config.stash.get(HARNESS, None)
    if harness is None or not harness.scale.soak:
        return
    if exitstatus == pytest.ExitCode.OK and _clause_failed(session.config, harness):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """Print the seed; in soak mode, the injected faults, each clause's verdict and the one-line result."""
    harness = config.stash.get(HARNESS, None)
    if harness is None:
        return
    tr = terminalreporter
    if not harness.scale.soak:
        tr.write_line(f"reliability: seed {harness.seed} (replay with {SEED_ENV}={harness.seed})")
        return
    tr.section("soak: injected faults")
    if harness.faults:
        width = max(len(kind) for kind in harness.faults)
        tr.write_line(f"{'kind':<{width}}  {'count':>8}")
        for kind, count in sorted(harness.faults.items()):
            tr.write_line(f"{kind:<{width}}  {count:>8}")
        tr.write_line(f"{'total':<{width}}  {sum(harness.faults.values()):>8}")
    else:
        tr.write_line("(no faults recorded)")
    tr.section("soak: clauses of issues 8 (1-10) and 11 (11)")
    tallies = harness.tally()
    header = f"{'clause':>6}  {'verdict':<8}  {'passed':>6}  {'failed':>6}  {'skipped':>7}  {'xfailed':>7}  what"
    tr.write_line(header)
    for clause in CLAUSES:
        tally = tallies[clause]
        verdict = "held" if tally.held else "FAILED" if tally.failed else "gaps" if tally.ran else "no tests"
        counts = f"{tally.passed:>6}  {tally.failed:>6}  {tally.skipped:>7}  {tally.xfailed:>7}"
        tr.write_line(f"{clause:>6}  {verdict:<8}  {counts}  {CLAUSE_TITLES[clause]}")
        for nodeid in tally.failures:
            tr.write_line(f"{'':>8}failed: {nodeid}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """In soak mode, end the output with ``soak: H/C clauses held (seed S)``, after pytest's own summary."""
    harness = config.stash.get(HARNESS, None)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if harness is None or not harness.scale.soak or reporter is None:
        return
    tallies = harness.tally()
    held = sum(1 for clause in CLAUSES if tallies[clause].held)
    reporter.write_line(f"soak: {held}/{len(CLAUSES)} clauses held (seed {harness.seed})")


@pytest.fixture(scope="session")
def _harness(pytestconfig: pytest.Config) -> Harness:
    return pytestconfig.stash[HARNESS]


@pytest.fixture
def seed(_harness: Harness, request: pytest.FixtureRequest) -> int:
    """Return the session's seed, printing it so a failing test's output says how to replay it."""
    print(f"seed {_harness.seed} (replay with {SEED_ENV}={_harness.seed})")
    request.node.user_properties.append(("seed", _harness.seed))
    return _harness.seed


@pytest.fixture(scope="session")
def scale(_harness: Harness) -> Scale:
    """Return the run's scale: ``scale.pick(ci_value, soak_value)``."""
    return _harness.scale


FaultRecorder = Callable[..., None]


@pytest.fixture(scope="session")
def fault_record(_harness: Harness) -> Iterator[FaultRecorder]:
    """Return a callable that adds injected-fault counts, by kind, to the session's record.

    ``fault_record(emulator.ledger.injected, source="emulator")`` records ``emulator:503`` and so on; without
    ``source`` the kinds are recorded as given.
    """

    def record(counts: Mapping[str, int], source: str = "") -> None:
        for kind, count in counts.items():
            if count:
                harness_key = f"{source}:{kind}" if source else str(kind)
                _harness.faults[harness_key] += int(count)

    yield record


# ----------------------------------------------------------------------------------------------------
# Shared helpers: a client for the test's emulator and the session's Azurite, and what a run left behind
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def fast_retry(seed: int) -> RetryPolicy:
    """`_support.FAST_RETRY` with its jitter drawn from the session's seed."""
    return _support.fast_retry(seed)


ClientFactory = Callable[..., Client]


@pytest.fixture
def client_for(fast_retry: RetryPolicy) -> ClientFactory:
    """Return ``make(emulator, azurite, **options)``: an unopened `Client` for that emulator and Azurite.

    ``batch_key=`` / ``batch_endpoint=`` / ``connection_string=`` replace the emulator's key, its endpoint or
    Azurite's connection string (for wrong keys and unreachable endpoints); other options go to `Client`.
    """

    def make(
        emulator: Emulator,
        azurite: AzuriteServer,
        *,
        batch_key: str | None = None,
        batch_endpoint: str | None = None,
        connection_string: str | None = None,
        **options: Any,
    ) -> Client:
        options.setdefault("retry_policy", fast_retry)
        batch = BatchSettings(
            endpoint=batch_endpoint or emulator.endpoint,
            account_name=emulator.account_name,
            account_key=batch_key or emulator.credential.named_key.key,
        )
        storage = StorageSettings(connection_string=connection_string or azurite.connection_string)
        return Client(batch, storage, **options)

    return make


@dataclass(frozen=True)
class Leftovers:
    """What the emulator and Azurite still hold after a run: the server's view, not the client's."""

    pools: tuple[str, ...]
    jobs: tuple[str, ...]
    running_tasks: tuple[str, ...]
    containers: tuple[str, ...]
    processes: tuple[str, ...]

    @property
    def nothing(self) -> bool:
        """Whether nothing at all is left."""
        return not (self.pools or self.jobs or self.running_tasks or self.containers or self.processes)


def _snapshot(emulator: Emulator, containers: set[str], existing: set[str]) -> Leftovers:
    account = emulator.account
    assert account is not None, "the emulator is not running"
    running = tuple(
        f"{pool.id}/{node.id}: {job}/{task}"
        for pool in account.pools.values()
        for node in pool.nodes.values()
        for (job, task) in node.running
    )
    return Leftovers(
        pools=tuple(sorted(p.id for p in account.pools.values())),
        jobs=tuple(sorted(j.id for j in account.jobs.values())),
        running_tasks=running,
        containers=tuple(sorted(containers & existing)),
        processes=tuple(cmd for _, cmd in child_processes() if "azurite" not in cmd.lower()),
    )


LeftoverCheck = Callable[..., Awaitable[Leftovers]]


@pytest.fixture
def leftovers(azurite: AzuriteServer) -> LeftoverCheck:
    """Return ``await leftovers(emulator, containers=(...))``: what is still there, once deletions settle.

    Pools and jobs being deleted are given a few seconds to go (the emulator's deletions take a moment, like
    the service's); containers are looked up in Azurite by name (the session shares one Azurite, so only the
    names given are considered); processes are this test process's live descendants other than Azurite.
    """

    async def check(emulator: Emulator, *, containers: Iterable[str] = (), settle: float = 5.0) -> Leftovers:
        names = set(containers)
        deadline = anyio.current_time() + settle
        while True:
            async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
                existing = {c.name async for c in service.list_containers()}
            found = _snapshot(emulator, names, existing)
            if found.nothing or anyio.current_time() > deadline:
                return found
            await anyio.sleep(0.1)

    return check
