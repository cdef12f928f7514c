"""Client.map_files: one command over many files, one result per file, against the emulator and Azurite.

The commands are plain shell (``wc``, ``cat``, ``sh -c``): tasks get the node's minimal PATH, not this venv's.
"""

from __future__ import annotations

import itertools
import os
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiobatch import (
    AppPackageRef,
    Client,
    ConfigurationError,
    ConflictError,
    FileResult,
    MapObserver,
    MapReport,
    PoolSpec,
    TaskSpec,
)
from aiobatch._azurite import AzuriteServer
from aiobatch._mapplan import MapPlan, build_task_specs, plan_inputs
from aiobatch._template import render_command
from aiobatch.emulator import Emulator

from .test_client import make_client

pytestmark = pytest.mark.anyio

#: Names a shell or a glob would misread: spaces, quotes, substitutions, separators, comments, percent signs.
AWKWARD = [
    "plain.txt",
    "two words.txt",
    "it's.txt",
    'say "hi".txt',
    "$(touch pwned).txt",
    "`touch pwned2`.txt",
    "a;b.txt",
    "fish & chips.txt",
    "#hashtag.txt",
    "100% done.txt",
    "über café.txt",
    "日本語.txt",
    "[glob]*?.txt",
    "$HOME.txt",
    "no suffix",
    "dots.in.name.txt",
    "-dash-first.txt",
    "back`tick.txt",
    "dollar$sign.txt",
    "pipe|gt>lt<.txt",
    "emoji 🐱.txt",
    "paren (1).txt",
    "brace {stem}.txt",
    "caret^bang!.txt",
    "tilde~.txt",
    "equals=plus+.txt",
    "comma,semi;.txt",
    "at@sign.txt",
    "quote'n\"mix.txt",
    "star*.txt",
]
QUICK: dict[str, Any] = {"poll_interval": 0.05}


@pytest.fixture(scope="module")
def emulator_apps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emulator's packages: one tiny application, ``tool`` 1.0 (so a pool may reference it)."""
    apps = tmp_path_factory.mktemp("apps")
    (apps / "tool").mkdir()
    with zipfile.ZipFile(apps / "tool" / "1.0.zip", "w") as package:
        package.writestr("tool.sh", "echo tool\n")
    return apps


def pool(pool_id: str = "fan", **options: Any) -> PoolSpec:
    options.setdefault("task_slots_per_node", 8)
    return PoolSpec.ubuntu_24_04(pool_id, dedicated_nodes=options.pop("nodes", 2), **options)


def containers() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"input_container": f"in-{tag}", "output_container": f"out-{tag}"}


def write_inputs(folder: Path, names: list[str], text: Callable[[int, str], str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.write_text(text(i, name) if text else "word " * (i + 1), encoding="utf-8")
        paths.append(path)
    return paths


def running_tasks(emulator: Emulator) -> set[str]:
    assert emulator.account is not None
    return {
        f"{job}/{task}" for p in emulator.account.pools.values() for n in p.nodes.values() for job, task in n.running
    }


async def test_awkward_names_several_outputs_and_a_folder(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    inputs = write_inputs(tmp_path / "in", AWKWARD)
    out = tmp_path / "out"
    command = "wc -w < {input} > {output} && cat {input} > {outputs[1]} && printf %s {name} > {outputs[2]}"
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        run = client.map_files(
            inputs,
            command,
            ["{stem}.count", "copies/{name}", "logs/{stem}.name"],
            pool=pool(),
            output_dir=out,
            **containers(),
            **QUICK,
        )
        results = [r async for r in run]
        report = run.report
        # No substitution ran on a node (looked at before cleanup deletes the job's directories).
        planted = [f for _, _, files in os.walk(tmp_path / "emulator") for f in files if f.startswith("pwned")]
        assert not planted
    assert sorted(r.name for r in results) == sorted(AWKWARD)  # each result knows its input
    assert report.complete and report.ok and report.succeeded == len(AWKWARD)
    assert [r.name for r in report.results] == AWKWARD  # the report keeps the order given
    for i, result in enumerate(report.results):
        name = AWKWARD[i]
        stem = name.rsplit(".", 1)[0] if "." in name else name
        assert result.status == "succeeded" and result.exit_code == 0, result
        assert result.node_id and result.start_time and result.end_time and result.seconds is not None
        assert result.event is not None and result.event.task_id == result.task_id
        assert result.outputs == (out / f"{stem}.count", out / "copies" / name, out / "logs" / f"{stem}.name")
        assert (out / f"{stem}.count").read_text().strip() == str(i + 1)
        assert (out / "copies" / name).read_bytes() == inputs[i].read_bytes()
        assert (out / "logs" / f"{stem}.name").read_text(encoding="utf-8") == name  # {name} arrived intact
    assert not list(out.glob(".aiobatch-*"))  # the staging folder is gone


async def test_a_failing_input_and_a_missing_output_fail_alone(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    names = ["good 1.txt", "bad.txt", "silent.txt", "good 2.txt"]
    texts = {"bad.txt": "FAIL", "silent.txt": "QUIET"}
    inputs = write_inputs(tmp_path / "in", names, lambda i, n: texts.get(n, "a b c"))
    command = (
        "if grep -q FAIL {input}; then echo 'cannot count' {name} >&2; exit 3; fi; "
        "grep -q QUIET {input} && exit 0; wc -w < {input} > {output}"
    )
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        report = await client.map_files(
            inputs, command, "{stem}.count", pool=pool(), output_dir=tmp_path / "out", **containers(), **QUICK
        )
    by_name = {r.name: r for r in report.results}
    assert report.succeeded == 2 and report.failed == 2 and not report.ok
    bad = by_name["bad.txt"]
    assert bad.status == "failed" and bad.exit_code == 3
    assert bad.error is not None and "exit code 3" in bad.error
    # The advice points at what the result holds, not at the event's coroutine.
    assert "result.stderr_tail" in bad.error and "await event" not in bad.error
    assert "cannot count bad.txt" in bad.stderr_tail
    silent = by_name["silent.txt"]
    assert silent.status == "failed" and silent.exit_code == 0 and silent.missing == ("silent.count",)
    assert silent.error is not None and "did not write 'silent.count'" in silent.error
    assert not (tmp_path / "out" / "silent.count").exists()
    table = str(report)
    assert "cannot count bad.txt" in table and "did not write" in table and "2 succeeded, 2 failed" in table
    # Node ids (about 70 characters) are shortened in the table; the result keeps the full id.
    assert bad.node_id is not None and len(bad.node_id) > 24 and bad.node_id not in table
    assert f"{bad.node_id[:11]}…{bad.node_id[-11:]}" in table


async def test_a_rerun_does_only_what_is_missing(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    inputs = write_inputs(tmp_path / "in", [f"f{i}.txt" for i in range(4)])
    out = tmp_path / "out"
    where = containers()
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        first = await client.map_files(
            tmp_path / "in",
            "wc -w < {input} > {output}",
            "{stem}.n",
            pool=pool(),
            output_dir=out,
            glob="*.txt",
            **where,
            **QUICK,
        )
        assert first.succeeded == 4
        # Everything is there: nothing is uploaded, no job is created, every input is reported skipped.
        jobs_before = set(batch_emulator.account.jobs) if batch_emulator.account else set()
        again = await client.map_files(
            tmp_path / "in",
            "wc -w < {input} > {output}",
            "{stem}.n",
            pool=pool(),
            output_dir=out,
            glob="*.txt",
            **where,
            **QUICK,
        )
        assert again.skipped == 4 and again.job_id is None and again.ok
        assert batch_emulator.account is not None and set(batch_emulator.account.jobs) == jobs_before
        assert [r.outputs for r in again.results] == [(out / f"f{i}.n",) for i in range(4)]
        # One output lost: only its input runs again.
        (out / "f2.n").unlink()
        third = await client.map_files(
            tmp_path / "in",
            "wc -w < {input} > {output}",
            "{stem}.n",
            pool=pool(),
            output_dir=out,
            glob="*.txt",
            **where,
            **QUICK,
        )
    assert (third.skipped, third.succeeded) == (3, 1)
    assert [r.name for r in third.results if r.status == "succeeded"] == ["f2.txt"]
    assert (out / "f2.n").read_text().strip() == "3"
    assert inputs


def test_windows_specs_quote_every_name_for_cmd(tmp_path: Path) -> None:
    names = ["50% & more.txt", 'say "hi".txt', "a|b^c.txt", "plain.txt"]
    inputs = write_inputs(tmp_path / "in", names)
    plan = plan_inputs(inputs, ["{stem}.out", "logs/{name}.log"], tmp_path / "out")
    win = PoolSpec.windows_server_2022("win")
    specs = build_task_specs(
        plan,
        "type {input} > {output} & echo {name} > {outputs[1]}",
        os=win.os,
        job_id="job",
        input_urls={n: f"https://acct.blob.core.windows.net/in/{i}?sig=x" for i, n in enumerate(names)},
        output_url="https://acct.blob.core.windows.net/out?sig=x",
    )
    by_name = {s.display_name: s for s in specs}
    spec = by_name["50% & more.txt"]
    assert spec.command_line == 'cmd /c type input.txt > output.out & echo ^"50^% ^& more.txt^" > output1.log'
    assert by_name['say "hi".txt'].command_line.endswith('echo ^"say \\^"hi\\^".txt^" > output1.log')
    assert by_name["a|b^c.txt"].command_line.endswith("echo a^|b^^c.txt > output1.log")
    assert [r.file_path for r in spec.resource_files] == ["input.txt"]
    assert [(o.file_pattern, o.path) for o in spec.output_files] == [
        ("output.out", f"job/{spec.id}/output.out"),
        ("output1.log", f"job/{spec.id}/output1.log"),
    ]
    # The same plan for Linux: single quotes, inside bash -c.
    linux = build_task_specs(
        plan,
        "echo {name} > {output}",
        os="linux",
        job_id="job",
        input_urls=dict.fromkeys(names, "https://x/in/a?sig=x"),
        output_url="https://x/out?sig=x",
    )
    assert {s.display_name: s.command_line for s in linux}["50% & more.txt"] == (
        "/bin/bash -c 'echo '\"'\"'50% & more.txt'\"'\"' > output.out'"
    )
    # A name no cmd.exe command line can carry is refused before anything runs.
    bad = MapPlan({"a\nb": Path("x")}, {"a\nb": ("ab.out",)}, ("a\nb",), (), {})
    with pytest.raises(ConfigurationError, match="line break"):
        build_task_specs(bad, "echo {name}", os="windows", job_id="j", input_urls={"a\nb": "u"}, output_url="o")


def test_templates_and_plans_refuse_what_cannot_work(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path / "in", ["a.txt", "b.txt"])
    with pytest.raises(ConfigurationError, match="placeholder"):
        plan_inputs(inputs, ["{nope}.txt"], tmp_path / "out")
    with pytest.raises(ConfigurationError, match="both write"):
        plan_inputs(inputs, ["same.txt"], tmp_path / "out")
    with pytest.raises(ConfigurationError, match="same file"):
        plan_inputs(inputs, ["{stem}.txt", "{stem}.TXT"], tmp_path / "out")
    with pytest.raises(ConfigurationError, match="relative path"):
        plan_inputs(inputs, ["../{stem}.txt"], tmp_path / "out")
    with pytest.raises(ConfigurationError, match=r"called 'a\.txt'"):
        plan_inputs([*inputs, tmp_path / "a.txt"], ["{stem}.n"], tmp_path / "out")
    with pytest.raises(ConfigurationError, match="not a folder"):
        plan_inputs(tmp_path / "missing", ["{stem}.n"], tmp_path / "out")
    plan = plan_inputs(tmp_path / "in", [lambda name: name.upper()], tmp_path / "out")  # a function names it
    assert plan.outputs == {"a.txt": ("A.TXT",), "b.txt": ("B.TXT",)}
    with pytest.raises(ConfigurationError, match=r"outputs\[1\]"):
        render_command("cp {input} {outputs[1]}", os="linux", input_file="i", output_files=["o"], name="a")
    with pytest.raises(ConfigurationError, match="format specs"):
        render_command("echo {name!r}", os="linux", input_file="i", output_files=["o"], name="a")


async def test_a_bad_template_is_refused_at_the_call(batch_emulator: Emulator, azurite: AzuriteServer) -> None:
    async with make_client(batch_emulator, azurite) as client:
        with pytest.raises(ConfigurationError, match="placeholder"):
            client.map_files([], "cat {file}", "{stem}.n", pool=pool(), output_dir="out")
        # The options come as **MapOptions: a misspelt one is still refused, as a named keyword would be.
        misspelt: dict[str, Any] = {"poll_intervall": 0.1}
        with pytest.raises(TypeError, match=r"'poll_intervall'.*poll_interval"):
            client.map_files([], "cat {input}", "{stem}.n", pool=pool(), output_dir="out", **misspelt)
        assert client.created == {"jobs": (), "pools": (), "containers": ()}


def test_pool_presets() -> None:
    jammy = PoolSpec.ubuntu_22_04("p", "standard_d4s_v3", dedicated_nodes=2, spot_nodes=1)
    assert (jammy.image_publisher, jammy.image_offer, jammy.image_sku, jammy.node_agent_sku_id) == (
        "canonical",
        "0001-com-ubuntu-server-jammy",
        "22_04-lts",
        "batch.node.ubuntu 22.04",
    )
    assert (jammy.vm_size, jammy.dedicated_nodes, jammy.spot_nodes, jammy.os) == ("standard_d4s_v3", 2, 1, "linux")
    noble = PoolSpec.ubuntu_24_04("p")
    assert (noble.image_offer, noble.image_sku, noble.node_agent_sku_id) == (
        "ubuntu-24_04-lts",
        "server",
        "batch.node.ubuntu 24.04",
    )
    win = PoolSpec.windows_server_2022("p", task_slots_per_node=2)
    assert (win.image_publisher, win.image_offer, win.node_agent_sku_id, win.os, win.task_slots_per_node) == (
        "microsoftwindowsserver",
        "windowsserver",
        "batch.node.windows amd64",
        "windows",
        2,
    )
    with pytest.raises(ConfigurationError, match="unknown image"):
        PoolSpec.from_image("ubuntu-18.04", "p")


# ----------------------------------------------------------------------------------------------------
# Stopping: a cancellation in each stage, or a break, leaves nothing running and (with cleanup) nothing behind
# ----------------------------------------------------------------------------------------------------

STAGES = ("uploading", "waiting for the pool", "submitting", "watching", "downloading")


def hold(client: Client, stage: str, entered: anyio.Event) -> None:
    """Make *client* signal when the fan-out reaches *stage*, and stay there (so the cancellation lands in it).

    Only the timing is shaped: each stage's real work is done first (the blobs are up, the pool exists, the tasks
    are added) -- that is what a cancellation must then clean up.
    """
    method = {
        "uploading": "upload_files",
        "waiting for the pool": "wait_for_pool_ready",
        "submitting": "submit_tasks",
        "downloading": "download_outputs",
    }.get(stage)
    if stage == "watching":
        original_watch = client.watch_tasks

        def watch(*args: Any, **kwargs: Any) -> Any:
            entered.set()
            return original_watch(*args, **kwargs)

        client.watch_tasks = watch  # type: ignore[method-assign]
        return
    assert method is not None
    original: Callable[..., Awaitable[Any]] = getattr(client, method)

    async def held(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        entered.set()
        await anyio.sleep_forever()
        return result

    setattr(client, method, held)


async def stock(emulator: Emulator, azurite: AzuriteServer) -> tuple[set[str], set[str], set[str]]:
    """Pools, jobs and containers that exist now (the servers' own view)."""
    from azure.storage.blob.aio import BlobServiceClient

    assert emulator.account is not None
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        names = {c.name async for c in service.list_containers()}
    return set(emulator.account.pools), set(emulator.account.jobs), names


async def no_task_running(emulator: Emulator) -> bool:
    with anyio.move_on_after(5):
        while running_tasks(emulator):
            await anyio.sleep(0.02)
    return not running_tasks(emulator)


@pytest.mark.parametrize("stage", STAGES)
async def test_a_cancellation_in_any_stage_leaves_nothing(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path, stage: str
) -> None:
    inputs = write_inputs(tmp_path / "in", [f"clip {i}.txt" for i in range(6)])
    slow = stage in ("submitting", "watching")
    command = ("sleep 30; " if slow else "") + "wc -w < {input} > {output}"
    where = containers()
    before = await stock(batch_emulator, azurite)
    entered = anyio.Event()
    seen: dict[str, Any] = {}
    with anyio.fail_after(30), anyio.CancelScope() as outer:
        async with anyio.create_task_group() as tg:

            async def cancel_in_stage() -> None:
                await entered.wait()
                await anyio.sleep(0.3 if stage == "watching" else 0.05)
                outer.cancel()

            tg.start_soon(cancel_in_stage)
            async with make_client(batch_emulator, azurite, cleanup=True) as client:
                hold(client, stage, entered)
                run = client.map_files(
                    inputs, command, "{stem}.n", pool=pool(), output_dir=tmp_path / "out", **where, **QUICK
                )
                try:
                    await run
                finally:
                    # Before the client's cleanup: the fan-out itself has stopped its job.
                    with anyio.CancelScope(shield=True):
                        seen["idle"] = await no_task_running(batch_emulator)
                        seen["created"] = client.created
                        account = batch_emulator.account
                        assert account is not None
                        job = account.jobs.get(run.job_id.lower())
                        seen["job state"] = job.state if job is not None else None
    assert outer.cancelled_caught
    assert seen["idle"], f"tasks still running after a cancellation while {stage}"
    if stage in ("submitting", "watching", "downloading"):
        assert seen["job state"] in ("terminating", "completed"), seen
        assert run.job_id in seen["created"]["jobs"]
    assert not run.report.complete
    # The client's cleanup took the rest: nothing this run created is left.
    with anyio.fail_after(5):
        while (left := [a - b for a, b in zip(await stock(batch_emulator, azurite), before, strict=True)]) != [
            set(),
            set(),
            set(),
        ]:
            await anyio.sleep(0.02)
    assert left == [set(), set(), set()]


async def test_breaking_out_stops_the_job(batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path) -> None:
    names = ["quick.txt", *(f"slow {i}.txt" for i in range(5))]
    inputs = write_inputs(tmp_path / "in", names, lambda i, n: "a b" if n == "quick.txt" else "slow")
    command = "grep -q slow {input} && sleep 30; wc -w < {input} > {output}"
    where = containers()
    async with make_client(batch_emulator, azurite) as client:  # no cleanup: the fan-out stops its own job
        async with client.map_files(
            inputs, command, "{stem}.n", pool=pool(), output_dir=tmp_path / "out", **where, **QUICK
        ) as run:
            async for result in run:
                assert result.name == "quick.txt" and result.status == "succeeded"
                break
        assert await no_task_running(batch_emulator)
        assert batch_emulator.account is not None
        assert batch_emulator.account.jobs[run.job_id.lower()].state in ("terminating", "completed")
        assert [r.name for r in run.report.results] == ["quick.txt"] and not run.report.complete
        assert [r async for r in run] == []  # the iteration is over
        await client.delete_job(run.job_id)
        await client.delete_pool("fan")
        await client.delete_containers(list(where.values()))


async def test_downloads_stay_in_flight_not_in_waves(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    """A finished download makes room for the next at once, while the others are still in flight (no waves of 8)."""
    inputs = write_inputs(tmp_path / "in", [f"t {i:02d}.txt" for i in range(40)])
    flying: set[int] = set()
    left_at_last_end: set[int] = set()  # the downloads still in flight when the last one ended
    most = 0
    refills = 0  # downloads started while some of those were still in flight: the room was used at once
    numbers = itertools.count()
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        original = client.download_outputs

        async def slow_download(*args: Any, **kwargs: Any) -> Any:
            nonlocal most, refills, left_at_last_end
            me = next(numbers)
            if left_at_last_end & flying:
                refills += 1
            flying.add(me)
            most = max(most, len(flying))
            try:
                await anyio.sleep(0.1)  # every task completes long before its output is fetched
                return await original(*args, **kwargs)
            finally:
                flying.discard(me)
                left_at_last_end = set(flying)

        client.download_outputs = slow_download  # type: ignore[method-assign]
        report = await client.map_files(
            inputs,
            "wc -w < {input} > {output}",
            "{stem}.n",
            pool=pool(),
            output_dir=tmp_path / "out",
            **containers(),
            **QUICK,
        )
    assert report.ok and report.succeeded == 40
    assert most == 8  # download_concurrency
    assert refills >= 10, refills


def slow_but_one(folder: Path) -> tuple[list[Path], str]:
    """Six inputs and a command: ``quick.txt`` completes at once, the other five sleep 30 s."""
    names = ["quick.txt", *(f"slow {i}.txt" for i in range(5))]
    inputs = write_inputs(folder, names, lambda i, n: "a b" if n == "quick.txt" else "slow")
    return inputs, "grep -q slow {input} && sleep 30; wc -w < {input} > {output}"


def job_state(emulator: Emulator, job_id: str) -> str | None:
    assert emulator.account is not None
    job = emulator.account.jobs.get(job_id.lower())
    return job.state if job is not None else None


async def test_a_plain_break_stops_the_job_too(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    """Without ``async with``: the dropped fan-out still terminates its job, as a dropped async generator closes."""
    inputs, command = slow_but_one(tmp_path / "in")
    out = tmp_path / "out"
    before = await stock(batch_emulator, azurite)
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        async for result in client.map_files(
            inputs, command, "{stem}.n", pool=pool(), output_dir=out, job_id="dropped", **containers(), **QUICK
        ):
            assert result.name == "quick.txt" and result.status == "succeeded"
            break
        # The client's cleanup would delete the job anyway: the fan-out's own stop is judged before it runs.
        with anyio.fail_after(30):
            while job_state(batch_emulator, "dropped") not in ("terminating", "completed"):
                await anyio.sleep(0.02)
        assert await no_task_running(batch_emulator)
        with anyio.fail_after(5):
            while [p.name for p in out.iterdir() if p.name.startswith(".aiobatch-")]:  # its staging folder
                await anyio.sleep(0.02)
        assert sorted(p.name for p in out.iterdir()) == ["quick.n"]
    # The client's cleanup took the rest (deletions end a moment after they are accepted).
    with anyio.fail_after(5):
        while [a - b for a, b in zip(await stock(batch_emulator, azurite), before, strict=True)] != [set()] * 3:
            await anyio.sleep(0.02)


async def test_a_plain_break_then_closing_the_client_at_once_stops_the_job(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    """Closing the client right after a plain ``break`` (without cleanup) waits for the fan-out's stop first."""
    inputs, command = slow_but_one(tmp_path / "in")
    where = containers()
    async with make_client(batch_emulator, azurite) as client:  # no cleanup: only the fan-out can stop its job
        async for result in client.map_files(
            inputs, command, "{stem}.n", pool=pool(), output_dir=tmp_path / "out", job_id="closed", **where, **QUICK
        ):
            assert result.name == "quick.txt"
            break
    assert client.state == "closed"
    assert job_state(batch_emulator, "closed") in ("terminating", "completed")  # no wait: the close awaited it
    assert await no_task_running(batch_emulator)
    async with make_client(batch_emulator, azurite, run_id=client.run_id) as client:
        await client.delete_job("closed")
        await client.delete_pool("fan")
        await client.delete_containers(list(where.values()))


async def test_an_existing_pool_by_id_and_a_folder_with_a_glob(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    write_inputs(tmp_path / "in" / "a", ["one.txt", "two.txt"])
    write_inputs(tmp_path / "in" / "b", ["one.txt", "skip.md"])
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        await client.ensure_pool(pool("existing"))
        seen: list[FileResult] = []
        report = await client.map_files(
            tmp_path / "in",
            "wc -w < {input} > {output}",
            "{stem}.n",
            pool="existing",
            output_dir=tmp_path / "out",
            glob="**/*.txt",
            **containers(),
            **QUICK,
        ).run(on_result=seen.append)
    assert isinstance(report, MapReport) and report.ok
    assert [r.name for r in report.results] == ["a/one.txt", "a/two.txt", "b/one.txt"]
    assert sorted(r.name for r in seen) == ["a/one.txt", "a/two.txt", "b/one.txt"]
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.n")) == [
        "a/one.n",
        "a/two.n",
        "b/one.n",
    ]


@pytest.mark.slow
async def test_a_thousand_small_inputs_with_awkward_names(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    names = [f"{i:04d} {AWKWARD[i % len(AWKWARD)]}" for i in range(1000)]
    write_inputs(tmp_path / "in", names, lambda i, n: "w " * (i % 7 + 1))
    out = tmp_path / "out"
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        report = await client.map_files(
            tmp_path / "in",
            "wc -w < {input} > {output} && printf %s {name} > {outputs[1]}",
            ["{stem}.n", "names/{stem}.name"],
            pool=pool(nodes=4, task_slots_per_node=16),
            output_dir=out,
            download_concurrency=16,
            **containers(),
            **QUICK,
        )
    assert report.succeeded == 1000 and report.ok, report.format()
    for i, name in enumerate(sorted(names)):
        stem = name.rsplit(".", 1)[0] if "." in name else name
        assert (out / f"{stem}.n").read_text().strip() == str(int(name[:4]) % 7 + 1)
        assert (out / "names" / f"{stem}.name").read_text(encoding="utf-8") == name
        assert report.results[i].name == name


async def test_a_job_id_taken_by_another_run_is_refused_and_left_running(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    inputs = write_inputs(tmp_path / "in", ["a.txt"])
    async with make_client(batch_emulator, azurite, cleanup=True) as other:
        await other.ensure_pool(pool("theirs"))
        await other.wait_for_pool_ready("theirs", poll_interval=0.05, timeout=10)
        await other.create_job("shared", pool_id="theirs")
        await other.submit_tasks("shared", [TaskSpec(id="busy", command_line="/bin/sh -c 'sleep 30'")])
        async with make_client(batch_emulator, azurite, cleanup=True) as client:
            run = client.map_files(
                inputs,
                "wc -w < {input} > {output}",
                "{stem}.n",
                pool="theirs",
                job_id="shared",
                output_dir=tmp_path / "out",
                **containers(),
                **QUICK,
            )
            with pytest.raises(ConflictError):
                await run
        assert batch_emulator.account is not None
        assert batch_emulator.account.jobs["shared"].state == "active"  # not terminated by the refused run
        with anyio.fail_after(5):
            while "shared/busy" not in running_tasks(batch_emulator):
                await anyio.sleep(0.02)


class Recorder(MapObserver):
    """Everything an observer is told, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def stage(self, kind: str, text: str, count: int) -> None:  # type: ignore[override]
        self.calls.append(("stage", (kind, count)))

    def upload_started(self, files: int, total_bytes: int) -> None:
        self.calls.append(("upload_started", (files, total_bytes)))

    def tasks_submitted(self, names_by_task: dict[str, str]) -> None:
        self.calls.append(("tasks_submitted", sorted(names_by_task.values())))

    def task_event(self, event: Any, name: str) -> None:
        self.calls.append(("task_event", (event.kind, name)))

    def result(self, result: FileResult) -> None:
        self.calls.append(("result", (result.name, result.status)))

    def finished(self, report: MapReport) -> None:
        self.calls.append(("finished", report.succeeded))


async def test_an_observer_hears_every_stage_event_and_result(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    names = ["a b.txt", "c.txt"]
    inputs = write_inputs(tmp_path / "in", names)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "done.n").write_text("1")
    write_inputs(tmp_path / "in", ["done.txt"])
    seen = Recorder()
    async with make_client(batch_emulator, azurite, cleanup=True) as client:
        await client.map_files(
            [*inputs, tmp_path / "in" / "done.txt"],
            "sleep 0.2; wc -w < {input} > {output}",
            "{stem}.n",
            pool=pool(),
            output_dir=tmp_path / "out",
            observer=seen,
            **containers(),
            **QUICK,
        )
    kinds = [what for call, what in seen.calls if call == "stage"]
    assert kinds == [("upload", 2), ("pool", 0), ("submit", 2), ("run", 2)]
    assert ("upload_started", (2, sum(p.stat().st_size for p in inputs))) in seen.calls
    assert ("tasks_submitted", names) in seen.calls
    events = [what for call, what in seen.calls if call == "task_event"]
    assert sorted(events) == sorted([("running", n) for n in names] + [("completed", n) for n in names])
    results = [what for call, what in seen.calls if call == "result"]
    assert results[0] == ("done.txt", "skipped") and sorted(results[1:]) == [(n, "succeeded") for n in names]
    assert seen.calls[-1] == ("finished", 2)


async def test_a_pool_of_another_run_is_refused_unless_reused_and_then_needs_the_packages(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    inputs = write_inputs(tmp_path / "in", ["a.txt"])
    async with make_client(batch_emulator, azurite, cleanup=True) as other:
        await other.ensure_pool(pool("theirs"))
        async with make_client(batch_emulator, azurite, cleanup=True) as client:
            args: dict[str, Any] = {"output_dir": tmp_path / "out", **containers(), **QUICK}
            with pytest.raises(ConfigurationError, match="already exists") as refused:
                await client.map_files(inputs, "wc -w < {input} > {output}", "{stem}.n", pool=pool("theirs"), **args)
            assert refused.value.setting == "reuse_pool"
            needs_app = pool("theirs", application_packages=[AppPackageRef("tool", "1.0")])
            with pytest.raises(ConfigurationError, match=r"lacks the tool application package 1\.0") as lacking:
                await client.map_files(
                    inputs, "wc -w < {input} > {output}", "{stem}.n", pool=needs_app, reuse_pool=True, **args
                )
            assert "has no application package" in str(lacking.value)
            assert client.created["jobs"] == ()  # refused before any job
            report = await client.map_files(
                inputs, "wc -w < {input} > {output}", "{stem}.n", pool=pool("theirs"), reuse_pool=True, **args
            )
            assert report.ok and client.created["pools"] == ()  # used, not taken over
        assert batch_emulator.account is not None and "theirs" in batch_emulator.account.pools
