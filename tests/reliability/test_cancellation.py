"""Issue 8, clause 6: a run cancelled at any point leaves nothing behind, and its cleanup ends within a bound.

A user's pipeline -- upload inputs, make a pool and wait for it, submit tasks, watch them, download outputs --
runs under a ``Client(cleanup=True)`` and is cancelled from outside at seeded points in each stage (the points
are drawn over the stage's duration, measured by one uncancelled run first; a point that lands in another
stage counts for that one). After each run an inventory of the Batch account (the emulator's model: pools,
jobs, tasks running on nodes) and of the storage account (Azurite's container listing) must equal the one taken
before it, and the time from the cancellation to the client being closed must stay within `CLEANUP_BOUND`.

The whole time, Batch answers 10% of requests with faults (and the first deletes with a reset after they took
effect, or a 503), and storage requests go through the fault proxy (503s and dropped answers): deletes must be
retried, and a delete whose retry finds the resource gone (404) or going must count as done -- the client logs
no cleanup error.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from _support import poll_until
from aiobatch import Client, TaskSpec, output_files_to, resource_file
from aiobatch._azurite import AzuriteServer
from aiobatch._faultproxy import StorageFaultProxy
from aiobatch.emulator import Emulator, FaultPlan

from ._runs import QUICK, Inventory, account_of, aim, arm, client, inventory, patient_policy, pool_spec
from .conftest import FaultRecorder, Scale

pytestmark = [pytest.mark.anyio, pytest.mark.clause(6)]

STAGES = ("upload", "pool wait", "submission", "watching", "download")
#: The bound on cleanup: from the cancellation to the client closed, everything deleted. (The client's own
#: cleanup_timeout is set to it; in these runs cleanup takes a fraction of a second.)
CLEANUP_BOUND = 10.0
FILES = 4


@dataclass
class Progress:
    """Which stage the pipeline is in, and when each began."""

    stage: str = "opening"
    entered: dict[str, anyio.Event] = field(default_factory=lambda: {s: anyio.Event() for s in (*STAGES, "done")})
    started: dict[str, float] = field(default_factory=dict)

    def enter(self, stage: str) -> None:
        self.stage = stage
        self.started[stage] = anyio.current_time()
        self.entered[stage].set()


async def pipeline(
    c: Client,
    progress: Progress,
    tag: str,
    inputs: list[Path],
    outdir: Path,
    node_url: Callable[[str], str] = str,
) -> None:
    """What a user's script does, stage by stage; *node_url* maps a SAS URL to what the nodes use."""
    progress.enter("upload")
    uploaded = await c.upload_files(f"in-{tag}", inputs)
    progress.enter("pool wait")
    await c.ensure_pool(pool_spec(f"pool-{tag}", dedicated=1, slots=4))
    await c.wait_for_pool_ready(f"pool-{tag}", poll_interval=0.02, max_poll_interval=0.1, timeout=30)
    progress.enter("submission")
    out_url = node_url(await c.output_container_sas_url(f"out-{tag}"))
    await c.create_job(f"job-{tag}", pool_id=f"pool-{tag}", on_all_tasks_complete="terminatejob")
    specs = []
    for i, f in enumerate(uploaded.files):
        url = node_url(await c.input_sas_url(f"in-{tag}", f.name))
        specs.append(
            TaskSpec(
                id=f"t{i}",
                command_line=f"/bin/sh -c 'sleep 0.1 && cp {f.name} out-{i}.bin'",
                resource_files=[resource_file(url)],
                output_files=[output_files_to(out_url, f"out-{i}.bin")],
            )
        )
    (await c.submit_tasks(f"job-{tag}", specs)).raise_for_failures()
    progress.enter("watching")
    (await c.wait_for_tasks(f"job-{tag}", poll_interval=0.05, max_poll_interval=0.1)).raise_for_failures()
    progress.enter("download")
    await c.download_outputs(f"out-{tag}", outdir)
    progress.enter("done")


@dataclass
class Outcome:
    landed: str  # the stage the cancellation landed in ("done": the run finished first)
    cleanup_seconds: float
    left: Inventory
    progress: Progress

    def duration(self, stage: str) -> float | None:
        """How long *stage* took in this run, if it ran to its end."""
        following = (*STAGES, "done")[(*STAGES, "done").index(stage) + 1]
        if following not in self.progress.started:
            return None
        return self.progress.started[following] - self.progress.started[stage]


@pytest.mark.parametrize("stage", STAGES)
async def test_cancelled_in_any_stage_nothing_is_left(
    azurite: AzuriteServer,
    tmp_path: Path,
    seed: int,
    scale: Scale,
    stage: str,
    fault_record: FaultRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    points = scale.pick(10, 50)
    rng = random.Random(f"{seed}:clause6:{stage}")
    inputs = []
    for i in range(FILES):
        path = tmp_path / f"clip-{i}.bin"
        path.write_bytes(rng.randbytes(48 * 1024 + i))
        inputs.append(path)
    caplog.set_level(logging.WARNING, logger="aiobatch")
    runs = 0

    async with (
        Emulator(timings=QUICK) as emu,
        StorageFaultProxy(
            azurite.blob_endpoint,
            account_name=azurite.account_name,
            account_key=azurite.account_key,
            seed=rng.randrange(2**31),
            rates={"503": 0.04, "reset": 0.04},
        ) as proxy,
    ):
        # The client goes through the fault proxy; the nodes reach storage directly (their transfers are the
        # service's business, and a task failing its download is not what this test is about).
        def direct(url: str) -> str:
            return url.replace(proxy.blob_endpoint, azurite.blob_endpoint)

        print(f"endpoints: emulator {emu.endpoint}, storage proxy {proxy.blob_endpoint}")
        kinds = ("503", "503-bare", "429", "reset-before", "reset-after", "truncate", "latency")
        arm(
            emu,
            FaultPlan(
                seed=rng.randrange(2**31),
                rates=dict.fromkeys(kinds, 0.1 / len(kinds)),
                retry_after=0,
                latency=0.05,
            ),
        )
        # Deletes whose answer is lost (the retry finds the job or pool gone or going) or refused at first.
        aim(emu, "DELETE", [rng.choice(["reset-after", "reset-after", "503"]) for _ in range(points)])

        async def run(cancel_after: float | None) -> Outcome:
            nonlocal runs
            runs += 1
            tag = f"r{runs}"
            progress = Progress()
            before = await inventory(emu, azurite.connection_string)
            cancelled_at: list[float] = []
            with anyio.CancelScope() as outer:
                async with anyio.create_task_group() as tg:

                    async def canceller() -> None:
                        if cancel_after is None:
                            return
                        await progress.entered[stage].wait()
                        await anyio.sleep(cancel_after)
                        cancelled_at.append(anyio.current_time())
                        outer.cancel()

                    tg.start_soon(canceller)
                    c = client(
                        emu,
                        proxy.connection_string,
                        retry_policy=patient_policy(f"{seed}:{stage}:{runs}", deadline=CLEANUP_BOUND / 2),
                        cleanup=True,
                        cleanup_timeout=CLEANUP_BOUND,
                    )
                    async with c:
                        await pipeline(c, progress, tag, inputs, tmp_path / tag, direct)
                    tg.cancel_scope.cancel()  # finished before the cancellation point
            closed = anyio.current_time()
            landed = progress.stage if cancelled_at else "done"
            seconds = closed - cancelled_at[0] if cancelled_at else 0.0
            # Deleted pools and jobs take the emulator a moment (like the service): let the inventory settle.
            with anyio.move_on_after(3):
                while not (left := (await inventory(emu, azurite.connection_string)).minus(before)).empty:
                    await anyio.sleep(0.02)
            return Outcome(landed, seconds, left, progress)

        # One run to the end: how long each stage takes, so the cancellation points spread over the stage.
        with anyio.fail_after(60):
            calibration = await run(None)
        assert calibration.left.empty, f"an uncancelled run left {calibration.left}"
        # The shortest the stage took so far: a calibration slowed by a retry must not push points past it.
        duration = max(0.02, calibration.duration(stage) or 0.0)

        landed: Counter[str] = Counter()
        worst = 0.0
        with anyio.fail_after(scale.pick(120, 1200)):
            while landed[stage] < points and runs < 4 * points + 2:
                outcome = await run(rng.uniform(0.0, duration))
                landed[outcome.landed] += 1
                duration = max(0.02, min(duration, outcome.duration(stage) or duration))
                worst = max(worst, outcome.cleanup_seconds)
                assert outcome.left.empty, f"cancelled in {outcome.landed}: left behind {outcome.left}"
                assert outcome.cleanup_seconds <= CLEANUP_BOUND, f"cleanup took {outcome.cleanup_seconds:.1f} s"
        print(f"clause 6, {stage}: {dict(landed)} cancellations landed; worst cleanup {worst:.2f} s ({runs} runs)")
        assert landed[stage] >= points, f"only {landed[stage]} of {points} cancellations landed in {stage}"
        problems = [r.getMessage() for r in caplog.records if "cleanup" in r.getMessage()]
        assert not problems, problems  # NotFound and BeingDeleted count as done; faults were retried
        assert emu.ledger.count("DELETE") > 0
        fault_record(emu.ledger.injected, source="emulator")
        fault_record(proxy.injected, source="storage")


@pytest.mark.parametrize("late", [False, True])
async def test_a_create_cancelled_in_flight_is_cleaned_up_even_if_it_lands_late(
    azurite: AzuriteServer, seed: int, late: bool
) -> None:
    """The pool create is cancelled while the server holds it; it takes effect before or after cleanup looks."""
    async with Emulator(timings=QUICK) as emu:
        # The server sits on the create before acting on it; the caller gives up after 0.1 s. The create takes
        # effect before cleanup looks (0.15 s), or after it (0.3 s): then only the second look finds it.
        aim(emu, "POST /pools", ["latency"])
        emu.faults.plan.latency = 0.3 if late else 0.15
        before = await inventory(emu, azurite.connection_string)
        async with client(emu, azurite.connection_string, retry_policy=patient_policy(seed), cleanup=True) as c:
            with anyio.move_on_after(0.1):
                await c.ensure_pool(pool_spec("pool"))
            if not late:
                await anyio.sleep(0.2)  # it has landed by the time cleanup looks

        async def settled() -> bool:
            return (await inventory(emu, azurite.connection_string)).minus(before).empty

        await poll_until(settled, within=5)
        account = account_of(emu)
        assert account.created[("pool", "pool")] == 1 and account.deleted[("pool", "pool")] == 1
