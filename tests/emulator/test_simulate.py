"""Simulated tasks (``simulate_tasks``, ``--simulate-tasks``) and the dispatcher's cost with many idle jobs."""

from __future__ import annotations

import datetime as dt

import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient

from aiobatch.emulator import Emulator, Simulation, Timings
from aiobatch.emulator.__main__ import build_parser
from aiobatch.emulator._model import Job

from .test_scheduler import pool, wait_completed

pytestmark = pytest.mark.anyio

QUICK = Timings(allocation_delay=0.05, node_start_delay=0.05, deletion_delay=0.01)


def _env(**values: str) -> list[m.EnvironmentSetting]:
    return [m.EnvironmentSetting(name=k, value=v) for k, v in values.items()]


# -- the model ------------------------------------------------------------------------------------------------------


def test_a_simulation_parses_and_refuses_bad_models() -> None:
    sim = Simulation.parse("duration=lognormal:1.5,0.25; fail=0.01; seed=7; exit=3")
    assert sim == Simulation(duration="lognormal:1.5,0.25", failure_rate=0.01, failure_exit_code=3, seed=7)
    assert Simulation.parse("") == Simulation()
    for bad in ("duration=gamma:1", "duration=uniform:3,1", "fail=2", "exit=0", "speed=3", "duration=fixed:-1"):
        with pytest.raises(ValueError, match="simulate-tasks"):
            Simulation.parse(bad)


def test_draws_are_seeded_and_independent_of_order() -> None:
    sim = Simulation(duration="lognormal:0,1", failure_rate=0.5, seed=7)
    first = [sim.attempt("j", f"t{i}", 0, {}) for i in range(50)]
    again = [sim.attempt("j", f"t{i}", 0, {}) for i in reversed(range(50))][::-1]
    assert first == again
    other = [
        Simulation(duration="lognormal:0,1", failure_rate=0.5, seed=8).attempt("j", f"t{i}", 0, {}) for i in range(50)
    ]
    assert first != other
    codes = {a.exit_code for a in first}
    assert codes == {0, 1}, "a 50% failure rate gives both outcomes in 50 draws"


def test_per_task_settings_win_and_bad_ones_fail_the_attempt() -> None:
    sim = Simulation(duration="fixed:5", failure_rate=1.0, seed=1)
    given = sim.attempt("j", "t", 0, {"AZ_SIM_DURATION": "42.5", "AZ_SIM_EXIT": "0"})
    assert (given.duration, given.exit_code, given.failure) == (42.5, 0, None)
    drawn = sim.attempt("j", "t", 0, {})
    assert (drawn.duration, drawn.exit_code) == (5.0, 1)
    bad = sim.attempt("j", "t", 0, {"AZ_SIM_DURATION": "soon"})
    assert bad.failure is not None and "AZ_SIM_DURATION" in bad.failure.message


def test_simulate_tasks_flag(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--simulate-tasks", "duration=fixed:3;seed=2"])
    assert args.simulate_tasks == Simulation(duration="fixed:3", seed=2)
    assert build_parser().parse_args([]).simulate_tasks is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--simulate-tasks", "duration=gamma:1"])
    assert "--simulate-tasks" in capsys.readouterr().err


# -- the emulator -----------------------------------------------------------------------------------------------------


async def test_simulated_tasks_take_their_duration_and_exit_code_without_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiobatch.emulator import _scheduler

    async def no_process(*args: object) -> object:
        raise AssertionError("a simulated task started a process")

    monkeypatch.setattr(_scheduler, "run_task", no_process)
    async with (
        Emulator(clock_speed=60, timings=QUICK, simulate_tasks="duration=fixed:0;seed=1") as emu,
        BatchClient(emu.endpoint, emu.credential) as batch,
    ):
        await batch.create_pool(
            pool("p", nodes=2, task_slots_per_node=2, start_task=m.BatchStartTask(command_line="x"))
        )
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        tasks = [
            m.BatchTaskCreateOptions(
                id="slow-fail", command_line="ignored", environment_settings=_env(AZ_SIM_DURATION="30", AZ_SIM_EXIT="3")
            ),
            m.BatchTaskCreateOptions(id="ok", command_line="ignored", environment_settings=_env(AZ_SIM_EXIT="0")),
            m.BatchTaskCreateOptions(
                id="limited",
                command_line="ignored",
                environment_settings=_env(AZ_SIM_DURATION="600"),
                constraints=m.BatchTaskConstraints(max_wall_clock_time=dt.timedelta(seconds=60)),
            ),
            m.BatchTaskCreateOptions(
                id="retried",
                command_line="ignored",
                environment_settings=_env(AZ_SIM_EXIT="2"),
                constraints=m.BatchTaskConstraints(max_task_retry_count=2),
            ),
        ]
        await batch.create_task_collection("j", m.BatchTaskGroup(task_values=tasks))
        done = {t.id: t for t in await wait_completed(batch, "j", len(tasks))}
        slow = done["slow-fail"].execution_info
        assert slow is not None and slow.exit_code == 3 and slow.result == "failure"
        assert slow.start_time is not None and slow.end_time is not None
        assert 29 <= (slow.end_time - slow.start_time).total_seconds() <= 90
        ok = done["ok"].execution_info
        assert ok is not None and ok.exit_code == 0 and ok.result == "success"
        limited = done["limited"].execution_info
        assert limited is not None and limited.failure_info is not None and limited.failure_info.code == "TaskEnded"
        retried = done["retried"].execution_info
        assert retried is not None and retried.retry_count == 2 and retried.exit_code == 2
        # No task directory was made for any of them, and their files say so.
        assert emu.account is not None
        assert all(t.task_dir is None for t in emu.account.jobs["j"].tasks.values())
        assert not list(emu.workdir.glob("nodes/*/*/workitems/*"))
        nodes = [n async for n in batch.list_nodes("p")]
        assert all(n.start_task_info and n.start_task_info.result == "success" for n in nodes)


async def test_drawn_exit_codes_repeat_with_the_seed() -> None:
    async def run(seed: int) -> dict[str, int | None]:
        sim = Simulation(failure_rate=0.5, failure_exit_code=9, seed=seed)
        async with (
            Emulator(timings=QUICK, simulate_tasks=sim) as emu,
            BatchClient(emu.endpoint, emu.credential) as batch,
        ):
            await batch.create_pool(pool("p", nodes=1, task_slots_per_node=4))
            await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
            tasks = [m.BatchTaskCreateOptions(id=f"t{i}", command_line="x") for i in range(20)]
            await batch.create_task_collection("j", m.BatchTaskGroup(task_values=tasks))
            done = await wait_completed(batch, "j", 20)
            return {t.id or "": t.execution_info.exit_code if t.execution_info else None for t in done}

    first, again, other = await run(7), await run(7), await run(8)
    assert first == again
    assert set(first.values()) == {0, 9}
    assert first != other


# -- dispatch cost ----------------------------------------------------------------------------------------------------


async def test_dispatch_touches_only_jobs_with_queued_tasks() -> None:
    """1,000 idle jobs on the pool cost a dispatch poll nothing: it looks only at the job with queued tasks."""
    async with (
        Emulator(timings=QUICK, simulate_tasks="") as emu,
        BatchClient(emu.endpoint, emu.credential) as batch,
    ):
        await batch.create_pool(pool("p", nodes=2))
        scheduler = emu._scheduler
        assert scheduler is not None
        for i in range(1000):
            scheduler.add_job(Job(id=f"idle{i}", state="active", spec={}, pool_id="p"))
        await batch.create_job(m.BatchJobCreateOptions(id="busy", pool_info=m.BatchPoolInfo(pool_id="p")))
        tasks = [m.BatchTaskCreateOptions(id=f"t{i}", command_line="x") for i in range(40)]
        await batch.create_task_collection("busy", m.BatchTaskGroup(task_values=tasks))
        await wait_completed(batch, "busy", 40)
        polls, touches = scheduler.dispatch_polls, scheduler.dispatch_touches
        assert polls > 0
        # Each touch is the busy job (40 tasks started over the polls); never one of the 1,000 idle ones.
        assert touches <= 2 * 40, (polls, touches)
