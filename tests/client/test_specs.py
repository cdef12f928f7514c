"""Specs: task ids from hostile names, command-line quoting per OS (run through a real bash), SDK models, reprs."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import shlex
import subprocess
import sys

import isodate
import pytest

from aiobatch._errors import ConfigurationError
from aiobatch._specs import (
    AppPackageRef,
    EnvRef,
    OutputFileSpec,
    PoolSpec,
    ResourceFileSpec,
    StartTaskSpec,
    TaskSpec,
    app_package_dir,
    check_id,
    command_line,
    output_files_to,
    quote_arg,
    resource_file,
    task_id_for,
    task_ids_for,
    to_pool_model,
    to_pool_specification,
    to_task_model,
)

SIG = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"

HOSTILE = [
    "cat.mp4",
    "Cat.mp4",
    "my cat.mp4",
    "my_cat.mp4",
    'it\'s "quoted".mp4',
    "$(rm -rf ~).mp4",
    "`whoami`;ls|cat&&echo>x<y.mp4",
    "100% off & more ^caret! (1).mp4",
    "%PATH%.mp4",
    "back\\slash\\.mp4",
    "trailing backslash\\",
    "tab\there.mp4",
    "new\nline.mp4",
    "Ünïcödé \u2013 猫の動画 🐈.mp4",
    "קטן.mp4",
    "-starts-with-dash.mp4",
    "*glob?[x].mp4",
    "~tilde.mp4",
    "a" * 300 + ".mp4",
    "   ",
    "é",  # NFC
    "e\u0301",  # NFD: a different file name on Linux
    "",
]


# ----------------------------------------------------------------------------------------------------
# Task ids
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in HOSTILE if n])
def test_task_id_is_valid_and_deterministic(name: str) -> None:
    task_id = task_id_for(name)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", task_id), task_id
    assert task_id == task_id_for(name)
    assert check_id("task", task_id) == task_id


def test_task_ids_are_distinct_case_insensitively() -> None:
    rng = random.Random(5)
    alphabet = "aAbB _-.'\"$%&éÉ猫"
    names = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(5000)}
    names |= {n for n in HOSTILE if n}
    ids = task_ids_for(sorted(names))
    assert len({i.lower() for i in ids.values()}) == len(names)
    assert task_id_for("A.mp4").lower() != task_id_for("a.mp4").lower()
    assert task_id_for("a b") != task_id_for("a_b")
    assert task_id_for("é") != task_id_for("e\u0301")


def test_task_id_prefix_and_length() -> None:
    long_id = task_id_for("x" * 500, prefix="run42-")
    assert long_id.startswith("run42-x") and len(long_id) == 64
    assert task_id_for("猫").startswith("task-")
    with pytest.raises(ConfigurationError):
        task_id_for("a", prefix="bad prefix")
    with pytest.raises(ConfigurationError):
        task_id_for("")


def test_task_ids_for_rejects_duplicates() -> None:
    with pytest.raises(ConfigurationError, match="twice"):
        task_ids_for(["a.mp4", "b.mp4", "a.mp4"])


@pytest.mark.parametrize("bad", ["", "x" * 65, "has space", "dot.ted", "ünï", "semi;colon"])
def test_check_id_rejects_invalid_ids_with_the_fix(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="1 to 64 characters"):
        check_id("pool", bad)


# ----------------------------------------------------------------------------------------------------
# Linux quoting, proven by bash
# ----------------------------------------------------------------------------------------------------

ARGV_DUMP = "import sys, json; print(json.dumps(sys.argv[1:]))"
LINUX_NAMES = [n for n in HOSTILE if "\x00" not in n]


def run_as_batch_would(line: str, env: dict[str, str] | None = None) -> list[str]:
    """Split the command line as Batch does on Linux (no shell: words, quotes honoured) and run it."""
    argv = shlex.split(line)
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
    return list(json.loads(out.stdout))


def test_linux_bash_c_round_trips_every_name() -> None:
    line = command_line([sys.executable, "-c", ARGV_DUMP, *LINUX_NAMES])
    assert line.startswith("/bin/bash -c '")
    assert run_as_batch_would(line) == LINUX_NAMES


def test_linux_bash_c_line_also_survives_a_shell_reading_it() -> None:
    # Whether the agent splits the line itself or hands it to sh -c, the program sees the same argv.
    line = command_line([sys.executable, "-c", ARGV_DUMP, *LINUX_NAMES])
    out = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == LINUX_NAMES


def test_linux_without_shell_round_trips() -> None:
    line = command_line([sys.executable, "-c", ARGV_DUMP, *LINUX_NAMES], shell=False)
    assert not line.startswith("/bin/bash")
    assert run_as_batch_would(line) == LINUX_NAMES


def test_linux_env_ref_expands_to_one_argument_and_nothing_else_expands() -> None:
    line = command_line([sys.executable, "-c", ARGV_DUMP, EnvRef("APP_DIR", "/bin/ff mpeg"), "$APP_DIR", "~"])
    argv = run_as_batch_would(line, env={"APP_DIR": "/opt/my apps"})
    assert argv == ["/opt/my apps/bin/ff mpeg", "$APP_DIR", "~"]


def test_quote_arg_splices_into_a_script_of_ones_own() -> None:
    name = "it's $HOME & `x`.mp4"
    script = f"{quote_arg(sys.executable)} -c {quote_arg(ARGV_DUMP)} {quote_arg(name)} && true"
    out = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [name]


def test_unrepresentable_arguments_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="NUL"):
        command_line(["echo", "a\x00b"])
    with pytest.raises(ConfigurationError, match="line break"):
        command_line(["echo", "a\nb"], os="windows")
    with pytest.raises(ConfigurationError, match="shell=True"):
        command_line([EnvRef("X"), "y"], shell=False)
    with pytest.raises(ConfigurationError):
        command_line([])


# ----------------------------------------------------------------------------------------------------
# Windows quoting, checked against reference parsers of cmd.exe's caret pass and the C runtime's argv rules
# ----------------------------------------------------------------------------------------------------


def cmd_unescape(line: str, env: dict[str, str]) -> str:
    """What cmd.exe hands to the program for 'cmd /c <line>' when every quote in <line> is caret-escaped.

    Phase 1 expands %NAME% where NAME is set (an unset or caret-broken name stays literal on the command line);
    phase 2 removes each escaping caret. With no unescaped quote, cmd never enters a quoted region.
    """
    assert line.startswith("cmd /c ")
    body = line[len("cmd /c ") :]
    body = re.sub(r"%([^%^]+)%", lambda m: env.get(m.group(1), m.group(0)), body)
    out, i = [], 0
    while i < len(body):
        if body[i] == "^":
            out.append(body[i + 1])
            i += 2
        else:
            assert body[i] not in '"&|<>()', f"unescaped metacharacter at {i} in {body!r}"
            out.append(body[i])
            i += 1
    return "".join(out)


def msvc_split(line: str) -> list[str]:
    """CommandLineToArgvW's rules (2008+ C runtime) for everything after the program name."""
    args: list[str] = []
    cur: list[str] = []
    in_quotes = False
    have = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            j = i
            while j < len(line) and line[j] == "\\":
                j += 1
            n = j - i
            if j < len(line) and line[j] == '"':
                cur.append("\\" * (n // 2))
                if n % 2:
                    cur.append('"')
                    i = j + 1
                else:
                    i = j
                have = True
                continue
            cur.append("\\" * n)
            i = j
            have = True
            continue
        if c == '"':
            if in_quotes and i + 1 < len(line) and line[i + 1] == '"':
                cur.append('"')
                i += 2
                continue
            in_quotes = not in_quotes
            have = True
            i += 1
            continue
        if c in " \t" and not in_quotes:
            if have:
                args.append("".join(cur))
                cur, have = [], False
            i += 1
            continue
        cur.append(c)
        have = True
        i += 1
    if have:
        args.append("".join(cur))
    return args


WINDOWS_NAMES = [n for n in HOSTILE if "\n" not in n]


def test_windows_cmd_round_trips_every_name() -> None:
    line = command_line(["ffmpeg.exe", *WINDOWS_NAMES], os="windows")
    assert line.startswith("cmd /c ffmpeg.exe ")
    # %PATH% in a file name must reach the program literally even though PATH is set.
    assert msvc_split(cmd_unescape(line, {"PATH": "C:\\Windows"})) == ["ffmpeg.exe", *WINDOWS_NAMES]


def test_windows_without_shell_round_trips() -> None:
    line = command_line(["ffmpeg.exe", *WINDOWS_NAMES], os="windows", shell=False)
    assert msvc_split(line) == ["ffmpeg.exe", *WINDOWS_NAMES]


def test_windows_env_ref_expands_inside_one_argument() -> None:
    var = app_package_dir("ffmpeg", "6.1", os="windows")
    line = command_line([EnvRef(var, "\\bin\\"), "a & b.mp4"], os="windows")
    expanded = cmd_unescape(line, {var: "C:\\apps\\ff mpeg"})
    assert msvc_split(expanded) == ["C:\\apps\\ff mpeg\\bin\\", "a & b.mp4"]


def test_app_package_variable_names() -> None:
    assert app_package_dir("ffmpeg", "6.1") == "AZ_BATCH_APP_PACKAGE_ffmpeg_6_1"
    assert app_package_dir("my-app") == "AZ_BATCH_APP_PACKAGE_my_app"
    assert app_package_dir("ffmpeg", "6.1", os="windows") == "AZ_BATCH_APP_PACKAGE_FFMPEG#6.1"


# ----------------------------------------------------------------------------------------------------
# Specs and conversion to azure-batch 15.x models
# ----------------------------------------------------------------------------------------------------


def sas(name: str) -> str:
    return f"https://pets.blob.core.windows.net/inputs/{name}?sv=2024-08-04&sp=r&sig={SIG}"


def test_task_spec_converts_to_the_wire_shape() -> None:
    spec = TaskSpec(
        id=task_id_for("my cat.mp4"),
        command_line=command_line(["ffmpeg", "-i", "my cat.mp4", "my cat.gif"]),
        resource_files=[resource_file(sas("my%20cat.mp4"))],
        output_files=[output_files_to(sas("").replace("/inputs/", "/outputs"), "*.gif", path="t1")],
        environment={"LANG": "C.UTF-8"},
        application_packages=[AppPackageRef("ffmpeg", "6.1")],
        max_wall_clock_time=900.0,
        max_task_retry_count=2,
        retention_time=3600.0,
        required_slots=1,
    )
    model = to_task_model(spec)
    assert model.constraints is not None
    assert model.constraints.max_wall_clock_time == dt.timedelta(minutes=15)
    wire = model.as_dict()
    assert wire["id"] == spec.id and wire["commandLine"] == spec.command_line
    assert wire["resourceFiles"] == [{"httpUrl": sas("my%20cat.mp4"), "filePath": "my cat.mp4"}]
    out = wire["outputFiles"][0]
    assert out["filePattern"] == "*.gif" and out["uploadOptions"] == {"uploadCondition": "tasksuccess"}
    assert out["destination"]["container"]["path"] == "t1"
    assert wire["environmentSettings"] == [{"name": "LANG", "value": "C.UTF-8"}]
    assert wire["applicationPackageReferences"] == [{"applicationId": "ffmpeg", "version": "6.1"}]
    constraints = wire["constraints"]
    assert isodate.parse_duration(constraints["maxWallClockTime"]) == dt.timedelta(minutes=15)
    assert isodate.parse_duration(constraints["retentionTime"]) == dt.timedelta(hours=1)
    assert constraints["maxTaskRetryCount"] == 2
    assert "userIdentity" not in wire
    assert to_task_model(TaskSpec(id="t", command_line="x", elevated=True)).as_dict()["userIdentity"] == {
        "autoUser": {"scope": "task", "elevationLevel": "admin"}
    }


def test_minimal_task_sends_no_empty_fields() -> None:
    wire = to_task_model(TaskSpec(id="t1", command_line="echo hi")).as_dict()
    assert wire == {"id": "t1", "commandLine": "echo hi"}


def pool(**overrides: object) -> PoolSpec:
    fields: dict[str, object] = {
        "id": "pets-pool",
        "vm_size": "standard_d2s_v3",
        "image_publisher": "canonical",
        "image_offer": "ubuntu-24_04-lts",
        "image_sku": "server",
        "node_agent_sku_id": "batch.node.ubuntu 24.04",
        "dedicated_nodes": 1,
        "spot_nodes": 3,
        "task_slots_per_node": 4,
        "application_packages": [AppPackageRef("ffmpeg")],
        "start_task": StartTaskSpec(
            command_line="/bin/bash -c 'echo ready'", resource_files=[resource_file(sas("s.sh"))]
        ),
        "metadata": {"aiobatch-run": "run-1"},
        "resize_timeout": 600.0,
    }
    fields.update(overrides)
    return PoolSpec(**fields)  # type: ignore[arg-type]


def test_pool_spec_converts_to_the_wire_shape() -> None:
    wire = to_pool_model(pool()).as_dict()
    assert wire["id"] == "pets-pool" and wire["vmSize"] == "standard_d2s_v3"
    vm = wire["virtualMachineConfiguration"]
    assert vm["imageReference"] == {
        "publisher": "canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    assert vm["nodeAgentSKUId"] == "batch.node.ubuntu 24.04"
    assert (wire["targetDedicatedNodes"], wire["targetLowPriorityNodes"], wire["taskSlotsPerNode"]) == (1, 3, 4)
    assert wire["applicationPackageReferences"] == [{"applicationId": "ffmpeg"}]
    assert wire["startTask"]["waitForSuccess"] is True
    assert wire["metadata"] == [{"name": "aiobatch-run", "value": "run-1"}]
    assert isodate.parse_duration(wire["resizeTimeout"]) == dt.timedelta(minutes=10)
    auto = to_pool_specification(pool()).as_dict()
    assert "id" not in auto and auto["vmSize"] == "standard_d2s_v3" and auto["targetLowPriorityNodes"] == 3


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"id": "bad id"}, "1 to 64"),
        ({"dedicated_nodes": 0, "spot_nodes": 0}, "no nodes"),
        ({"spot_nodes": -1}, "negative"),
        ({"task_slots_per_node": 0}, "1 to 256"),
        ({"os": "macos"}, "linux"),
        ({"resize_timeout": 0.0}, "resize_timeout"),
        ({"resize_timeout": 120.0}, "at least 300 seconds"),
    ],
)
def test_pool_spec_validation(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        pool(**overrides)


def test_task_and_file_spec_validation() -> None:
    with pytest.raises(ConfigurationError):
        TaskSpec(id="t", command_line="  ")
    with pytest.raises(ConfigurationError):
        TaskSpec(id="t", command_line="x", max_wall_clock_time=0)
    with pytest.raises(ConfigurationError):
        TaskSpec(id="t", command_line="x", max_task_retry_count=-2)
    with pytest.raises(ConfigurationError):
        ResourceFileSpec(file_path="a")  # no source
    for bad in ("../escape", "/abs", "C:\\abs", "a/../../b"):
        with pytest.raises(ConfigurationError):
            ResourceFileSpec(file_path=bad, http_url="https://x")
    with pytest.raises(ConfigurationError):
        OutputFileSpec(file_pattern="*.gif", container_url="https://x", upload_condition="always")  # type: ignore[arg-type]


def test_resource_file_path_defaults_to_the_decoded_blob_name() -> None:
    assert resource_file(sas("%E7%8C%AB%20%26%20dog.mp4")).file_path == "猫 & dog.mp4"
    assert resource_file(sas("x.mp4"), "inputs/y.mp4").file_path == "inputs/y.mp4"


def test_spec_reprs_hide_sas_signatures_while_sdk_models_do_not() -> None:
    spec = TaskSpec(
        id="t1",
        command_line="echo",
        resource_files=[resource_file(sas("a.mp4"))],
        output_files=[output_files_to(sas(""), "*.gif")],
    )
    for text in (repr(spec), str(spec), repr(spec.resource_files[0]), repr(pool())):
        assert SIG not in text and "sig=***" in text
    # The reason specs mask: the SDK's own model repr prints the signature.
    assert SIG in repr(to_task_model(spec))


def test_specs_are_frozen_with_tuples() -> None:
    spec = TaskSpec(id="t", command_line="x", resource_files=[resource_file(sas("a"))])
    assert isinstance(spec.resource_files, tuple)
    with pytest.raises(AttributeError):
        spec.id = "u"  # type: ignore[misc]
