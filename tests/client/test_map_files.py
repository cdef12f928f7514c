"""Client.map_files: one command over many files, one result per file, against the emulator and Azurite.

The commands are plain shell (``wc``, ``cat``, ``sh -c``): tasks get the node's minimal PATH, not this venv's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiobatch import ConfigurationError, PoolSpec
from aiobatch._azurite import AzuriteServer
from aiobatch._fanout import MapPlan, build_task_specs, plan_inputs
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
    assert not list((tmp_path / "emulator").rglob("pwned*"))  # no substitution ran on a node


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
    assert "cannot count bad.txt" in bad.stderr_tail
    silent = by_name["silent.txt"]
    assert silent.status == "failed" and silent.exit_code == 0 and silent.missing == ("silent.count",)
    assert silent.error is not None and "did not write 'silent.count'" in silent.error
    assert not (tmp_path / "out" / "silent.count").exists()
    table = str(report)
    assert "cannot count bad.txt" in table and "did not write" in table and "2 succeeded, 2 failed" in table


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
    client: Any = object()
    inputs = write_inputs(tmp_path / "in", ["a.txt", "b.txt"])
    with pytest.raises(ConfigurationError, match="placeholder"):
        plan_inputs(inputs, ["{nope}.txt"], tmp_path / "out")
    with pytest.raises(ConfigurationError, match="both write"):
        plan_inputs(inputs, ["same.txt"], tmp_path / "out")
    with pytest.raises(ConfigurationError, match="relative path"):
        plan_inputs(inputs, ["../{stem}.txt"], tmp_path / "out")
    with pytest.raises(ConfigurationError, match=r"called 'a\.txt'"):
        plan_inputs([*inputs, tmp_path / "a.txt"], ["{stem}.n"], tmp_path / "out")
    del client


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
