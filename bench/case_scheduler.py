"""The emulator's scheduler: the cost of one dispatch poll as the account grows (issue 14, issue 16).

A dispatch poll gives free node slots to queued tasks.  Its cost must follow the work it does (tasks started),
not the number of jobs in the account: this case measures one poll that starts exactly one task (a fresh idle
node joined the pool), and one poll with nothing to do (the pool full), with the same queued tasks spread over

- 10 jobs;
- 1,000 jobs;
- 10 busy jobs among 1,000 (990 jobs with no queued task, as completed or idle jobs are).

It drives the emulator's `Scheduler` in this process, with simulated tasks (no processes) and no HTTP, so the
numbers are the dispatcher's alone.  Besides time, each variant reports the jobs a poll looked at
(``dispatch_touches``): the measure that shows flatness without the noise of a loaded machine.

With task dependencies ("10,000 tasks with a dependency-chain fan-in"): one job of ``tasks`` tasks whose first
``polls`` are free to run and whose others wait, each on the one before it (a chain), the last on every other
task (a fan-in). A poll must not look at the waiting tasks, and a completion must release its dependents at a
cost that does not grow with how many wait: the case also times satisfying one chain link.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiobatch.emulator import Quotas, Simulation, Timings
from aiobatch.emulator._dependencies import Dependencies
from aiobatch.emulator._model import Account, Job, Node, Pool, Task, new_node_id
from aiobatch.emulator._scheduler import Scheduler

from ._harness import CaseResult, Target, fmt, log

#: The dependency sub-case's name in the table.
DEPENDENCIES = "1 job, 10,000 tasks, chain and fan-in waiting"
#: Seconds of the service's time every simulated task runs: longer than the case, so slots stay taken.
FOREVER = "fixed:1e9"


def _scheduler(work: Path) -> tuple[Scheduler, Pool]:
    account = Account(name="bench", url="http://bench")
    scheduler = Scheduler(
        account,
        workdir=work,
        timings=Timings(),
        quotas=Quotas(),
        simulation=Simulation(duration=FOREVER),
    )
    pool = Pool(id="p", state="active", spec={}, vm_size="standard_d2s_v3", task_slots_per_node=1)
    pool.allocation_state = "steady"
    account.pools["p"] = pool
    return scheduler, pool


def _add_node(scheduler: Scheduler, pool: Pool) -> None:
    node_id = new_node_id(True)
    node = Node(id=node_id, pool_id=pool.id, is_dedicated=True, root=Path("/nonexistent"), vm_size=pool.vm_size)
    node.state = "idle"
    pool.nodes[node_id] = node
    node.listener = lambda n: scheduler._node_changed(pool, n)
    scheduler._node_changed(pool, node)


def _start_polls(scheduler: Scheduler, pool: Pool, polls: int) -> tuple[list[float], list[int]]:
    """Time ``polls`` polls, each after a fresh idle node joins the pool; also count the jobs each looked at."""
    started, touched = [], []
    for _ in range(polls):
        _add_node(scheduler, pool)
        before = scheduler.dispatch_touches
        t0 = time.perf_counter()
        scheduler._dispatch()
        started.append(time.perf_counter() - t0)
        touched.append(scheduler.dispatch_touches - before)
    return started, touched


async def _variant(work: Path, *, jobs: int, busy: int, tasks: int, polls: int) -> dict[str, Any]:
    """``busy`` of ``jobs`` jobs share ``tasks`` queued tasks; time ``polls`` polls that each start one task."""
    scheduler, pool = _scheduler(work)
    try:
        for j in range(jobs):
            job = Job(id=f"job-{j:04d}", state="active", spec={}, pool_id="p")
            scheduler.add_job(job)
            if j < busy:
                for i in range(tasks // busy):
                    job.add_task(Task(id=f"t{i:06d}", state="active", spec={}, job_key=job.id.lower()))
        scheduler._dispatch()  # the pool has no node yet: nothing starts
        started, touched = _start_polls(scheduler, pool, polls)
        idle = []
        for _ in range(polls):  # the pool is full: a poll (a kick with nothing free) must cost next to nothing
            t0 = time.perf_counter()
            scheduler._dispatch()
            idle.append(time.perf_counter() - t0)
        running = sum(len(n.running) for n in pool.nodes.values())
        assert running == polls, f"each poll starts one task ({running} of {polls} started)"
        return {
            "jobs": jobs,
            "busy": busy,
            "tasks": tasks,
            "start_poll_us": statistics.median(started) * 1e6,
            "idle_poll_us": statistics.median(idle) * 1e6,
            "touches_per_start_poll": statistics.mean(touched),
        }
    finally:
        await scheduler.stop()


async def _dependency_variant(work: Path, *, tasks: int, polls: int) -> dict[str, Any]:
    """One job: ``polls`` free tasks, then a chain of waiting tasks ending in a fan-in on all the others."""
    scheduler, pool = _scheduler(work)
    try:
        job = Job(id="deps", state="active", spec={"usesTaskDependencies": True}, pool_id="p")
        job.dependencies = Dependencies()
        scheduler.add_job(job)
        last = tasks - 1
        for i in range(tasks):
            if i < polls:
                depends: dict[str, Any] | None = None
            elif i < last:
                depends = {"taskIds": [str(i - 1)]}
            else:
                depends = {"taskIdRanges": [{"start": 0, "end": last - 1}]}
            job.add_task(Task(id=str(i), state="active", spec={"dependsOn": depends}, job_key="deps"))
        waiting = sum(1 for i in range(tasks) if job.dependencies.is_waiting(str(i)))
        assert waiting == tasks - polls, f"{waiting} tasks wait, not {tasks - polls}"
        scheduler._dispatch()
        started, touched = _start_polls(scheduler, pool, polls)
        running = sum(len(n.running) for n in pool.nodes.values())
        assert running == polls, f"each poll starts one free task ({running} of {polls} started)"
        # Releasing the chain one link at a time: each satisfy frees exactly the next link.
        links = []
        for i in range(polls - 1, min(polls - 1 + polls, last - 1)):
            t0 = time.perf_counter()
            released = job.dependencies.satisfy(str(i))
            links.append(time.perf_counter() - t0)
            assert released == [str(i + 1)], f"satisfying {i} released {released}"
        return {
            "jobs": 1,
            "busy": 1,
            "tasks": tasks,
            "start_poll_us": statistics.median(started) * 1e6,
            "idle_poll_us": 0.0,
            "touches_per_start_poll": statistics.mean(touched),
            "satisfy_link_us": statistics.median(links) * 1e6,
        }
    finally:
        await scheduler.stop()


async def run(work: Path | None = None, *, tasks: int = 10_000, polls: int = 500, rounds: int = 3) -> CaseResult:
    """Run the three variants ``rounds`` times each (interleaved); the table shows the medians."""
    work = work or Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    variants = {"10 jobs": (10, 10), "1,000 jobs": (1000, 1000), "10 busy of 1,000 jobs": (1000, 10)}
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, (jobs, busy) in variants.items():
            result = await _variant(work, jobs=jobs, busy=busy, tasks=tasks, polls=polls)
            measured[name].append(result)
            log(
                f"  scheduler round {r + 1}: {name}: {result['start_poll_us']:.0f} us a poll starting a task, "
                f"{result['idle_poll_us']:.1f} us idle, {result['touches_per_start_poll']:.2f} jobs looked at"
            )
        result = await _dependency_variant(work, tasks=tasks, polls=polls)
        measured.setdefault(DEPENDENCIES, []).append(result)
        log(
            f"  scheduler round {r + 1}: {DEPENDENCIES}: {result['start_poll_us']:.0f} us a poll starting a task, "
            f"{result['satisfy_link_us']:.1f} us to release one chain link"
        )

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in measured[name])

    rows = [
        [
            name,
            f"{fmt(med(name, 'start_poll_us'), 1)} us",
            f"{fmt(med(name, 'idle_poll_us'), 2)} us",
            f"{med(name, 'touches_per_start_poll'):.2f}",
        ]
        for name in variants
    ]
    rows.append(
        [
            DEPENDENCIES,
            f"{fmt(med(DEPENDENCIES, 'start_poll_us'), 1)} us",
            f"release of a chain link: {fmt(med(DEPENDENCIES, 'satisfy_link_us'), 2)} us",
            f"{med(DEPENDENCIES, 'touches_per_start_poll'):.2f}",
        ]
    )
    deps_ratio = med(DEPENDENCIES, "start_poll_us") / med("10 jobs", "start_poll_us")
    ratio = med("1,000 jobs", "start_poll_us") / med("10 jobs", "start_poll_us")
    idle_ratio = med("10 busy of 1,000 jobs", "start_poll_us") / med("10 jobs", "start_poll_us")
    flat = ratio <= 1.5 and idle_ratio <= 1.5
    return CaseResult(
        case="scheduler",
        title=f"Emulator scheduler: dispatch cost per poll ({tasks:,} queued tasks)",
        headers=["Jobs", "poll starting one task (median)", "poll with nothing free", "jobs looked at per poll"],
        rows=rows,
        targets=[
            Target(
                "dispatch per poll flat in the number of jobs",
                "1,000 jobs at most 1.5x 10 jobs",
                f"{ratio:.2f}x (1,000 busy), {idle_ratio:.2f}x (10 busy of 1,000)",
                flat,
            ),
            Target(
                "dispatch per poll flat with waiting dependencies",
                "a job with 10,000 tasks, most waiting on a chain and a fan-in, at most 1.5x 10 jobs",
                f"{deps_ratio:.2f}x",
                deps_ratio <= 1.5,
            ),
        ],
        notes=[
            "In-process: the scheduler with simulated tasks, no HTTP. A poll starting one task follows a fresh "
            "idle node joining the full pool; a poll with nothing free follows a kick on the full pool. "
            f"{rounds} rounds of {polls} polls, medians. The dependency job's poll follows an idle node joining; "
            "its chain links are released one by one (each satisfy frees exactly the next task)."
        ],
        params={"tasks": tasks, "polls": polls, "rounds": rounds},
        raw=measured,
    )


if __name__ == "__main__":
    outcome = asyncio.run(run())
    for row in outcome.rows:
        print(" | ".join(row))
    for target in outcome.targets:
        print(target)
