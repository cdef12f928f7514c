"""The emulator's clock (``clock_speed``, ``--clock-speed``), timing profiles and task ``retentionTime``."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError

from aiobatch.emulator import Clock, Emulator, Timings
from aiobatch.emulator.__main__ import _chosen_timings, build_parser

from .test_scheduler import pool, until, wait_completed

pytestmark = pytest.mark.anyio

#: Quick timings for a fast clock: the delays are service seconds, so at speed 60 they pass 60 times faster.
FAST_AT_60 = Timings(allocation_delay=6, node_start_delay=3, deletion_delay=1, node_recovery_delay=6)


# -- the clock itself ------------------------------------------------------------------------------------------------


def test_a_clock_runs_speed_times_faster_from_its_start() -> None:
    real = [100.0]
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    clock = Clock(60, start=start, monotonic=lambda: real[0])
    assert clock.now() == start
    real[0] += 2.5
    assert clock.now() == start + dt.timedelta(seconds=150)
    assert clock.real_seconds(3600) == 60.0
    assert clock.emulated_seconds(1) == 60.0


@pytest.mark.parametrize("speed", [0, -1, float("nan"), float("inf"), "60", True])
def test_a_clock_speed_must_be_a_number_above_zero(speed: object) -> None:
    with pytest.raises(ValueError, match="clock speed"):
        Clock(speed)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clock speed"):
        Emulator(clock_speed=speed)  # type: ignore[arg-type]


async def test_timestamps_advance_speed_times_faster() -> None:
    async with (
        Emulator(clock_speed=60, timings=FAST_AT_60) as emu,
        BatchClient(emu.endpoint, emu.credential) as batch,
    ):
        before = dt.datetime.now(dt.timezone.utc)
        await batch.create_job(m.BatchJobCreateOptions(id="a", pool_info=m.BatchPoolInfo(pool_id="p")))
        await anyio.sleep(0.5)
        await batch.create_job(m.BatchJobCreateOptions(id="b", pool_info=m.BatchPoolInfo(pool_id="p")))
        a, b = await batch.get_job("a"), await batch.get_job("b")
        assert a.creation_time is not None and b.creation_time is not None
        gap = (b.creation_time - a.creation_time).total_seconds()
        assert 25 <= gap <= 60, f"0.5 real seconds at speed 60 are about 30 emulated seconds, not {gap}"
        assert a.creation_time >= before - dt.timedelta(seconds=1), "the clock starts at the real now"
        # The caller's own context keeps real time: the emulator's clock is its own.
        assert emu.clock is not None and emu.clock.speed == 60


async def test_each_emulator_keeps_its_own_clock() -> None:
    async with (
        Emulator(clock_speed=1000, timings=FAST_AT_60) as fast,
        Emulator(timings=FAST_AT_60) as real,
        BatchClient(fast.endpoint, fast.credential) as fast_batch,
        BatchClient(real.endpoint, real.credential) as real_batch,
    ):
        await anyio.sleep(0.2)
        for batch in (fast_batch, real_batch):
            await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        now = dt.datetime.now(dt.timezone.utc)
        fast_job, real_job = await fast_batch.get_job("j"), await real_batch.get_job("j")
        assert fast_job.creation_time is not None and real_job.creation_time is not None
        assert fast_job.creation_time - now > dt.timedelta(seconds=100)
        assert abs((real_job.creation_time - now).total_seconds()) < 5


async def test_wall_clock_limit_and_allocation_pass_on_the_clock() -> None:
    """At speed 60 a 60-second maxWallClockTime ends a 30-second sleep after about one real second."""
    async with (
        Emulator(clock_speed=60, timings=FAST_AT_60) as emu,
        BatchClient(emu.endpoint, emu.credential) as batch,
    ):
        await batch.create_pool(pool("p"))
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        limit = m.BatchTaskConstraints(max_wall_clock_time=dt.timedelta(seconds=60))
        await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="sleep 30", constraints=limit))
        [task] = await wait_completed(batch, "j", 1)
        info = task.execution_info
        assert info is not None and info.failure_info is not None and info.failure_info.code == "TaskEnded"
        assert info.start_time is not None and info.end_time is not None
        ran = (info.end_time - info.start_time).total_seconds()
        assert 55 <= ran <= 240, f"the limit is 60 emulated seconds, the task ran {ran}"


# -- retentionTime ------------------------------------------------------------------------------------------------


async def test_retention_time_deletes_the_task_directory_on_the_clock() -> None:
    async with (
        Emulator(clock_speed=60, timings=FAST_AT_60) as emu,
        BatchClient(emu.endpoint, emu.credential) as batch,
    ):
        await batch.create_pool(pool("p"))
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        keep = m.BatchTaskConstraints(retention_time=dt.timedelta(minutes=2))
        await batch.create_task(
            "j", m.BatchTaskCreateOptions(id="t", command_line="/bin/sh -c 'echo hi'", constraints=keep)
        )
        await batch.create_task("j", m.BatchTaskCreateOptions(id="default", command_line="/bin/true"))
        await wait_completed(batch, "j", 2)
        # Within the retention the files are there (2 emulated minutes are 2 real seconds at speed 60).
        names = [f.name async for f in batch.list_task_files("j", "t")]
        assert "stdout.txt" in names
        assert emu.account is not None
        task_dir = emu.account.jobs["j"].tasks["t"].task_dir
        assert task_dir is not None and task_dir.is_dir()

        async def cleaned() -> bool:
            try:
                await batch.get_task_file_properties("j", "t", "stdout.txt")
            except HttpResponseError as exc:
                return exc.status_code == 404
            return False

        await until(cleaned, limit=15)
        with pytest.raises(HttpResponseError) as refused:
            _ = [f async for f in batch.list_task_files("j", "t")]
        assert refused.value.status_code == 404 and refused.value.error is not None
        assert refused.value.error.code == "TaskFilesCleanedup"
        assert not task_dir.exists()
        # The default retention (7 days, about 2.8 real hours at this speed) keeps the other task's files.
        assert [f.name async for f in batch.list_task_files("j", "default")]


async def test_an_invalid_retention_time_is_refused_naming_it() -> None:
    async with Emulator() as emu, BatchClient(emu.endpoint, emu.credential) as batch:
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        with pytest.raises(HttpResponseError) as refused:
            await batch.create_task(
                "j",
                m.BatchTaskCreateOptions(
                    id="t",
                    command_line="/bin/true",
                    constraints={"retentionTime": "soon"},  # type: ignore[arg-type]
                ),
            )
        assert refused.value.status_code == 400
        assert "constraints.retentionTime" in str(refused.value)


# -- timing profiles ------------------------------------------------------------------------------------------------


def test_the_realistic_profile_takes_about_as_long_as_azure() -> None:
    realistic = Timings.realistic()
    assert realistic.allocation_delay == 120  # pool allocation about 2 minutes
    assert realistic.node_start_delay == 60
    assert realistic.dispatch_delay == 2
    assert realistic.deletion_delay >= 30 and realistic.node_recovery_delay >= 120
    assert Timings.named("Realistic") == realistic
    assert Timings.named("fast") == Timings() and Timings().dispatch_delay == 0
    with pytest.raises(ValueError, match="fast, realistic"):
        Timings.named("slow")
    with pytest.raises(ValueError, match="dispatch_delay"):
        Timings(dispatch_delay=-1)


async def test_realistic_timings_scale_with_the_clock() -> None:
    """The realistic 3-minute pool start is 1.8 real seconds at speed 100; dispatch waits 2 emulated seconds."""
    async with (
        Emulator(clock_speed=100, timings=Timings.realistic()) as emu,
        BatchClient(emu.endpoint, emu.credential) as batch,
    ):
        started = anyio.current_time()
        await batch.create_pool(pool("p"))

        async def ready() -> bool:
            return any([n.state == "idle" async for n in batch.list_nodes("p")])

        await until(ready, limit=30)
        waited = anyio.current_time() - started
        assert 1.5 <= waited <= 20, waited
        await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
        [task] = await wait_completed(batch, "j", 1)
        assert task.execution_info is not None and task.execution_info.result == "success"


# -- the command line ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-2", "nan", "inf", "fast"])
def test_clock_speed_flag_is_validated(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--clock-speed", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--clock-speed" in err and "more than 0" in err


def test_clock_speed_and_timings_flags() -> None:
    args = build_parser().parse_args(["--clock-speed", "60", "--timings", "realistic", "--node-start-delay", "5"])
    assert args.clock_speed == 60.0
    chosen = _chosen_timings(args)
    assert chosen.allocation_delay == 120 and chosen.node_start_delay == 5 and chosen.dispatch_delay == 2
    default = build_parser().parse_args([])
    assert default.clock_speed == 1.0 and _chosen_timings(default) == Timings()


def test_timings_flag_refuses_an_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--timings", "slow"])
    err = capsys.readouterr().err
    assert "--timings" in err and "fast, realistic" in err
