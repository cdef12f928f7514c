"""The emulator as a program: ``python -m aiobatch.emulator`` and the ``aiobatch emulator`` console script.

Each run starts the real process on a free port, reads its one "listening on" line, drives it with the real sync
SDK, then stops it with a signal and checks that it went cleanly: exit status 0, no traceback, its temporary
folder removed and the task process it was running killed.
"""

from __future__ import annotations

import base64
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.batch.aio import BatchClient as AioBatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError

from aiobatch.emulator import DEFAULT_ACCOUNT_KEY, DEFAULT_ACCOUNT_NAME, Timings
from aiobatch.emulator.__main__ import ACCOUNT_KEY_ENV, account_key, build_parser, main
from aiobatch.emulator._scheduler import MIN_ALLOCATION_DELAY

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))\b")
FAST = ["--port", "0", "--allocation-delay", "0.05", "--node-start-delay", "0.05"]


def _console_script() -> str:
    script = shutil.which("aiobatch", path=str(Path(sys.executable).parent)) or shutil.which("aiobatch")
    assert script, "the aiobatch console script is not installed next to this Python"
    return script


COMMANDS = {
    "module": [sys.executable, "-m", "aiobatch.emulator"],
    "script": [_console_script(), "emulator"],
}


class Running:
    """A started emulator process and what it printed."""

    def __init__(
        self, command: list[str], tmp: Path, extra: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> None:
        env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.tmp = tmp
        self.process = subprocess.Popen(
            [*command, *FAST, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.endpoint = self._wait_for_listening()

    def _wait_for_listening(self, limit: float = 20.0) -> str:
        # Raw reads, not readline(): a text wrapper would buffer lines printed after this one where
        # communicate() (reading the descriptor) never sees them; what is read past the line is kept in `_rest`.
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + limit
        self._rest = b""
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._rest += chunk
            while b"\n" in self._rest:
                raw, self._rest = self._rest.split(b"\n", 1)
                line = raw.decode()
                self.lines.append(line)
                if match := LISTENING.search(line):
                    return match.group(1)
        self.process.kill()
        raise AssertionError(f"no 'listening on' line; stdout {self.lines}, stderr {self.process.stderr.read()!r}")  # type: ignore[union-attr]

    def stop(self, signum: int, limit: float = 15.0) -> tuple[int, str, str]:
        self.process.send_signal(signum)
        try:
            out, err = self.process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError(f"the emulator did not stop within {limit} s of signal {signum}") from None
        return self.process.returncode, self._rest.decode() + out, err


@pytest.fixture
def started(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    running = Running(COMMANDS[request.param], tmp_path)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.communicate()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _start_a_long_task(endpoint: str, pid_file: Path) -> None:
    credential = AzureNamedKeyCredential(DEFAULT_ACCOUNT_NAME, DEFAULT_ACCOUNT_KEY)
    with BatchClient(endpoint, credential) as batch:
        batch.create_pool(
            m.BatchPoolCreateOptions(
                id="p",
                vm_size="standard_d2s_v3",
                virtual_machine_configuration=m.VirtualMachineConfiguration(
                    image_reference=m.BatchVmImageReference(
                        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
                    ),
                    node_agent_sku_id="batch.node.ubuntu 22.04",
                ),
                target_dedicated_nodes=1,
            )
        )
        batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
        batch.create_task(
            "j", m.BatchTaskCreateOptions(id="t", command_line=f"/bin/sh -c 'echo $$ > {pid_file}; exec sleep 60'")
        )
        deadline = time.monotonic() + 15
        while batch.get_task("j", "t").state != m.BatchTaskState.RUNNING or not pid_file.exists():
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        assert [p.id for p in batch.list_pools()] == ["p"]


def _check_clean_stop(running: Running, signum: int, pid_file: Path) -> None:
    task_pid = int(pid_file.read_text())
    assert _pid_alive(task_pid)
    try:
        code, _, err = running.stop(signum)
        assert code == 0, f"exit status {code} after signal {signum}; stderr: {err}"
        assert "Traceback" not in err, err
        assert not list(running.tmp.glob("aiobatch-emulator-*")), "the temporary work folder was left behind"
        deadline = time.monotonic() + 5
        while _pid_alive(task_pid):
            assert time.monotonic() < deadline, "the task's process outlived the emulator"
            time.sleep(0.05)
    finally:
        if _pid_alive(task_pid):  # never leave a stray sleep behind, even when the check fails
            os.kill(task_pid, signal.SIGKILL)


@pytest.mark.parametrize("started", ["module", "script"], indirect=True)
def test_prints_one_listening_line_serves_and_stops_on_sigint(started: Running, tmp_path: Path) -> None:
    assert sum(bool(LISTENING.search(line)) for line in started.lines) == 1
    pid_file = tmp_path / "task.pid"
    _start_a_long_task(started.endpoint, pid_file)
    _check_clean_stop(started, signal.SIGINT, pid_file)
    assert sum(bool(LISTENING.search(line)) for line in started.lines) == 1, "exactly one 'listening on' line"


@pytest.mark.parametrize("started", ["module"], indirect=True)
def test_stops_cleanly_on_sigterm(started: Running, tmp_path: Path) -> None:
    pid_file = tmp_path / "task.pid"
    _start_a_long_task(started.endpoint, pid_file)
    _check_clean_stop(started, signal.SIGTERM, pid_file)


def test_help_names_the_options() -> None:
    out = subprocess.run([*COMMANDS["script"], "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    for option in ("--host", "--port", "--account-name", "--account-key", "--apps", "--workdir"):
        assert option in out


@pytest.mark.parametrize("value", ["0", "0.001", "-1", "nan"])
def test_allocation_is_never_instant_on_the_command_line(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--allocation-delay", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--allocation-delay" in err and f"at least {MIN_ALLOCATION_DELAY} seconds" in err


def test_node_start_delay_may_be_zero_but_not_negative(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--node-start-delay", "0", "--allocation-delay", str(MIN_ALLOCATION_DELAY)])
    assert (args.node_start_delay, args.allocation_delay) == (0.0, MIN_ALLOCATION_DELAY)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--node-start-delay", "-0.5"])
    assert "--node-start-delay" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"allocation_delay": 0}, "allocation_delay"),
        ({"allocation_delay": 0.009}, "allocation_delay"),
        ({"node_start_delay": -0.1}, "node_start_delay"),
        ({"deletion_delay": float("nan")}, "deletion_delay"),
        ({"node_recovery_delay": -1}, "node_recovery_delay"),
    ],
)
def test_timings_refuse_an_instant_allocation_and_negative_delays(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=rf"Timings\.{named} must be at least"):
        Timings(**kwargs)
    assert Timings(allocation_delay=MIN_ALLOCATION_DELAY, node_start_delay=0, deletion_delay=0).allocation_delay > 0


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _apps_with_hello(root: Path) -> Path:
    apps = root / "apps"
    (apps / "hello").mkdir(parents=True)
    with zipfile.ZipFile(apps / "hello" / "1.0.zip", "w") as zf:
        zf.writestr("hello.sh", "#!/bin/sh\necho hello\n")
    return apps


def _image() -> m.VirtualMachineConfiguration:
    return m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(
            publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
        ),
        node_agent_sku_id="batch.node.ubuntu 22.04",
    )


@pytest.mark.anyio
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
async def test_custom_account_apps_and_workdir_through_the_aio_sdk(tmp_path: Path) -> None:
    name, key = "mybatch", base64.b64encode(os.urandom(32)).decode()
    apps, workdir, pid_file = _apps_with_hello(tmp_path), tmp_path / "work", tmp_path / "task.pid"
    running = Running(
        COMMANDS["module"],
        tmp_path,
        ["--account-name", name, "--account-key", key, "--apps", str(apps), "--workdir", str(workdir)],
    )
    try:
        listening = next(line for line in running.lines if LISTENING.search(line))
        assert f"account {name}" in listening and "the key you gave" in listening
        assert not any(key in line for line in running.lines), "a key the user gave is never printed"

        async with AioBatchClient(running.endpoint, AzureNamedKeyCredential(name, key)) as batch:
            listed = [a async for a in batch.list_applications()]
            assert [(a.id, list(a.versions)) for a in listed] == [("hello", ["1.0"])]
            await batch.create_pool(
                m.BatchPoolCreateOptions(
                    id="p", vm_size="standard_d2s_v3", virtual_machine_configuration=_image(), target_dedicated_nodes=1
                )
            )
            with anyio.fail_after(15):
                while not [n async for n in batch.list_nodes("p") if n.state == m.BatchNodeState.IDLE]:
                    await anyio.sleep(0.05)
            [node] = [n async for n in batch.list_nodes("p")]
            assert (workdir / "nodes" / "p" / str(node.id)).is_dir(), "node directories live under --workdir"
            await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
            command = f"/bin/sh -c 'echo $$ > {pid_file}; exec sleep 60'"
            await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=command))
            with anyio.fail_after(15):
                while (await batch.get_task("j", "t")).state != m.BatchTaskState.RUNNING or not pid_file.exists():
                    await anyio.sleep(0.05)

        for wrong in (
            AzureNamedKeyCredential(name, DEFAULT_ACCOUNT_KEY),
            AzureNamedKeyCredential(DEFAULT_ACCOUNT_NAME, key),
        ):
            async with AioBatchClient(running.endpoint, wrong) as batch:
                with pytest.raises(HttpResponseError) as refused:
                    await batch.create_job(m.BatchJobCreateOptions(id="other", pool_info=m.BatchPoolInfo(pool_id="p")))
                assert refused.value.status_code in (401, 403)
                assert refused.value.error is not None and refused.value.error.code == "AuthenticationFailed"

        _check_clean_stop(running, signal.SIGTERM, pid_file)
        assert workdir.is_dir(), "a --workdir the user gave is theirs: it stays"
        assert _group_members(running.process.pid) == [], "the emulator left processes behind"
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.communicate()


@pytest.mark.anyio
async def test_a_fault_flag_is_injected_and_summarised_on_exit(tmp_path: Path) -> None:
    flags = ["--fault", "503=1.0", "--fault-seed", "5", "--fault-retry-after", "7"]
    running = Running(COMMANDS["module"], tmp_path, flags)
    try:
        credential = AzureNamedKeyCredential(DEFAULT_ACCOUNT_NAME, DEFAULT_ACCOUNT_KEY)
        async with AioBatchClient(running.endpoint, credential, retry_total=0) as batch:
            for _ in range(2):
                with pytest.raises(HttpResponseError) as busy:
                    await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
                assert busy.value.status_code == 503
                assert busy.value.error is not None and busy.value.error.code == "ServerBusy"
                response: Any = busy.value.response
                assert response.headers["Retry-After"] == "7"
        code, out, err = running.stop(signal.SIGINT)
        assert code == 0 and "Traceback" not in err, err
        lines = out.splitlines()
        assert "injecting faults 503=1.0 (seed 5)" in lines
        assert lines[-1] == "aiobatch emulator stopped: injected 503=2 over 2 requests", lines
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.communicate()


@pytest.mark.anyio
async def test_fault_latency_task_error_rate_and_operation_flags(tmp_path: Path) -> None:
    flags = ["--fault", "latency=1.0", "--fault-latency", "0.5", "--fault-operation", "GET /jobs"]
    flags += ["--fault", "task-error=1.0", "--fault-task-error-rate", "1.0", "--fault-seed", "1"]
    running = Running(COMMANDS["module"], tmp_path, flags)
    try:
        credential = AzureNamedKeyCredential(DEFAULT_ACCOUNT_NAME, DEFAULT_ACCOUNT_KEY)
        async with AioBatchClient(running.endpoint, credential, retry_total=0) as batch:
            started = time.monotonic()
            await batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
            assert time.monotonic() - started < 0.5, "POST /jobs is not an eligible operation"
            group = m.BatchTaskGroup(
                task_values=[m.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true") for i in range(4)]
            )
            result = await batch.create_task_collection("j", group)
            assert [r.status for r in result.result_values or []] == [m.BatchTaskAddStatus.SERVER_ERROR] * 4
            started = time.monotonic()
            await batch.get_job("j")
            assert time.monotonic() - started >= 0.5, "GET /jobs/j waits --fault-latency seconds"
        code, out, _ = running.stop(signal.SIGTERM)
        assert code == 0
        assert out.splitlines()[-1] == "aiobatch emulator stopped: injected latency=1, task-error=4 over 3 requests"
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.communicate()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fault-latency", "1"], "--fault-latency tune(s) injected faults: give --fault KIND=RATE too"),
        (["--fault", "503=0.1", "--fault-task-error-rate", "1.5"], "--fault-task-error-rate: must be between 0 and 1"),
        (["--fault", "503=0.1", "--fault-retry-after", "-1"], "--fault-retry-after: must be at least 0.0 seconds"),
    ],
)
def test_fault_tuning_flags_are_checked(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exited:
        code = exited.code  # type: ignore[assignment]
    assert code == 2
    assert message in capsys.readouterr().err


def test_help_names_the_fault_tuning_flags() -> None:
    out = subprocess.run([*COMMANDS["module"], "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    for option in ("--fault-retry-after", "--fault-latency", "--fault-task-error-rate", "--fault-operation"):
        assert option in out


# --- the account key, kept off the command line ---------------------------------------------------------------


def _new_key() -> str:
    return base64.b64encode(os.urandom(64)).decode()


def _ready_pool(batch: BatchClient) -> None:
    batch.create_pool(
        m.BatchPoolCreateOptions(
            id="p", vm_size="standard_d2s_v3", virtual_machine_configuration=_image(), target_dedicated_nodes=1
        )
    )
    deadline = time.monotonic() + 15
    while not [n for n in batch.list_nodes("p") if n.state == m.BatchNodeState.IDLE]:
        assert time.monotonic() < deadline, "the pool's node never became idle"
        time.sleep(0.05)


@pytest.mark.parametrize("command", ["module", "script"])
@pytest.mark.parametrize("source", ["file", "environment"])
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the process's command line from /proc")
def test_a_key_from_a_file_or_the_environment_stays_out_of_ps(source: str, command: str, tmp_path: Path) -> None:
    key = _new_key()
    extra, env = ["--pass-env", "LICENSE_SERVER"], {"LICENSE_SERVER": "lic.example:27000"}
    if source == "file":
        key_file = tmp_path / "batch.key"
        key_file.write_text(f"  {key}  \nthe second line is ignored\n")
        key_file.chmod(0o600)
        extra += ["--account-key-file", str(key_file)]
    else:
        env[ACCOUNT_KEY_ENV] = key
    running = Running(COMMANDS[command], tmp_path, extra, env=env)
    try:
        cmdline = Path(f"/proc/{running.process.pid}/cmdline").read_bytes()
        assert key.encode() not in cmdline, "the key is visible in ps"
        listening = next(line for line in running.lines if LISTENING.search(line))
        assert "the key you gave" in listening
        assert not any(key in line for line in running.lines), "a key the user gave is never printed"

        with BatchClient(running.endpoint, AzureNamedKeyCredential(DEFAULT_ACCOUNT_NAME, key)) as batch:
            _ready_pool(batch)
            batch.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
            batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/usr/bin/env"))
            deadline = time.monotonic() + 15
            while batch.get_task("j", "t").state != m.BatchTaskState.COMPLETED:
                assert time.monotonic() < deadline, "the task never completed"
                time.sleep(0.05)
            printed = b"".join(batch.download_task_file("j", "t", "stdout.txt")).decode()
        # The task sees the variable named with --pass-env, and neither the key nor the variable it came from.
        assert "LICENSE_SERVER=lic.example:27000" in printed.splitlines()
        assert key not in printed and ACCOUNT_KEY_ENV not in printed

        with BatchClient(running.endpoint, AzureNamedKeyCredential(DEFAULT_ACCOUNT_NAME, DEFAULT_ACCOUNT_KEY)) as dev:
            with pytest.raises(HttpResponseError) as refused:
                dev.get_pool("p")
            assert refused.value.error is not None and refused.value.error.code == "AuthenticationFailed"

        code, out, err = running.stop(signal.SIGTERM)
        assert code == 0 and "Traceback" not in err, err
        assert key not in out and key not in err
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.communicate()


def _key_args(argv: list[str]) -> Any:
    return build_parser().parse_args(argv)


def test_the_key_comes_from_the_flag_then_the_file_then_the_environment(tmp_path: Path) -> None:
    flag, in_file, in_env = _new_key(), _new_key(), _new_key()
    (tmp_path / "k").write_text(in_file + "\n")
    environ = {ACCOUNT_KEY_ENV: in_env, "AZURE_BATCH_ACCOUNT_KEY": _new_key()}
    assert account_key(_key_args(["--account-key", flag]), environ) == (flag, "--account-key")
    assert account_key(_key_args(["--account-key-file", str(tmp_path / "k")]), environ) == (
        in_file,
        "--account-key-file",
    )
    assert account_key(_key_args([]), environ) == (in_env, ACCOUNT_KEY_ENV)
    # A real account's key exported for the client is not the emulator's: the development key it is.
    assert account_key(_key_args([]), {"AZURE_BATCH_ACCOUNT_KEY": _new_key()}) == (DEFAULT_ACCOUNT_KEY, "default")


SECRET_LOOKING = "not-base64-but-maybe-a-secret!"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        ("", "the first line is empty"),
        ("   \nYWJj\n", "the first line is empty"),
        (SECRET_LOOKING + "\n", "the key is not base64"),
        (b"\xff\xfe\x00key\n", "the first line is not base64 text"),
        ("folder", "is a folder, not a file"),
    ],
)
def test_a_bad_key_file_exits_2_naming_the_problem_and_the_fix(
    content: str | bytes | None, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "batch.key"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)

    assert main(["--account-key-file", str(path), *FAST]) == 2

    err = capsys.readouterr().err
    assert f"--account-key-file {path}: {problem}" in err
    assert "base64" in err and SECRET_LOOKING not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_key_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "batch.key"
    path.write_text(_new_key())
    path.chmod(0)
    assert main(["--account-key-file", str(path)]) == 2
    assert "cannot read it (Permission denied)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--account-key", "x", "--account-key-file", "k"], {}, "give --account-key or --account-key-file, not both"),
        ([], {ACCOUNT_KEY_ENV: SECRET_LOOKING}, f"{ACCOUNT_KEY_ENV}: the key is not base64"),
        ([], {ACCOUNT_KEY_ENV: "  "}, f"{ACCOUNT_KEY_ENV}: the key is empty"),
        (["--pass-env", "TOKEN=abc"], {}, "--pass-env 'TOKEN=abc' is not an environment variable name"),
        (["--pass-env", "AZ_BATCH_TASK_ID"], {}, "--pass-env AZ_BATCH_TASK_ID is a variable the node sets"),
    ],
)
def test_key_and_pass_env_mistakes_exit_2(
    argv: list[str],
    environ: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert SECRET_LOOKING not in err


def test_help_prefers_the_key_file_and_says_the_flag_shows_in_ps() -> None:
    out = subprocess.run([*COMMANDS["script"], "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    flat = " ".join(out.split())
    assert "--account-key-file PATH" in flat and ACCOUNT_KEY_ENV in flat and "--pass-env NAME" in flat
    assert "visible in ps" in flat
