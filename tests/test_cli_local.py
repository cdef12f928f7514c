"""``aiobatch local``: the emulator and Azurite for a user's own code, as ``export`` lines or around a command.

Every run is the real console script in its own session (so a signal reaches it alone, as ``kill`` would), with a
real client using the variables it hands out; afterwards no process it started may be alive: not Azurite, not the
emulator's task processes, not the command.
"""

from __future__ import annotations

import os
import selectors
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from azure.storage.blob.aio import BlobServiceClient

import aiobatch.local
from aiobatch import Client, PoolSpec, TaskSpec
from aiobatch._processes import child_processes
from aiobatch.local import LocalBatch, LocalServices

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table (Linux)")

VARIABLES = [
    "AZURE_BATCH_ENDPOINT",
    "AZURE_BATCH_ACCOUNT_NAME",
    "AZURE_BATCH_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
]


def _aiobatch() -> str:
    script = shutil.which("aiobatch", path=str(Path(sys.executable).parent)) or shutil.which("aiobatch")
    assert script, "the aiobatch console script is not installed next to this Python"
    return script


def _start(args: list[str], tmp_path: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [_aiobatch(), "local", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1", **env},
        cwd=tmp_path,
        start_new_session=True,
    )


def _read_exports(process: subprocess.Popen[bytes], lines: list[str], limit: float = 60.0) -> dict[str, str]:
    """The ``export NAME=value`` lines, parsed as a shell would, once all four have been printed (all in *lines*)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + limit
    buffer, found = b"", {}
    while len(found) < len(VARIABLES) and time.monotonic() < deadline:
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            lines.append(line.decode())
            words = shlex.split(line.decode())
            if words[0] == "unset":
                continue
            assert words[0] == "export" and len(words) == 2, f"not an export line: {line!r}"
            name, _, value = words[1].partition("=")
            found[name] = value
    if len(found) < len(VARIABLES):
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"no export lines within {limit} s: got {sorted(found)}; stderr {err.decode()}")
    return found


def _alive(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line[stat_line.rindex(")") + 2] != "Z"


def _all_gone(pids: list[int], limit: float = 10.0) -> list[int]:
    """The pids still alive after waiting up to *limit* seconds for them to go."""
    deadline = time.monotonic() + limit
    while [p for p in pids if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Pids to kill after the test if they are still alive, so a failing check leaves nothing running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _pool(pool_id: str) -> PoolSpec:
    return PoolSpec(
        id=pool_id,
        vm_size="standard_d2s_v3",
        image_publisher="canonical",
        image_offer="ubuntu-24_04-lts",
        image_sku="server",
        node_agent_sku_id="batch.node.ubuntu 24.04",
        dedicated_nodes=1,
    )


async def _use_both_services(environ: dict[str, str], tmp_path: Path, pid_file: Path) -> None:
    """A blob up and a task running (it writes its pid, then sleeps): one real request to each service and more."""
    data = tmp_path / "hello.txt"
    data.write_text("hello")
    async with Client.from_env(environ) as client:
        uploaded = await client.upload_files("from-the-shell", [data])
        assert [f.name for f in uploaded.files] == ["hello.txt"]
        await client.ensure_pool(_pool("shell-pool"))
        await client.wait_for_pool_ready("shell-pool", poll_interval=0.1, timeout=30)
        await client.create_job("shell-job", pool_id="shell-pool")
        command = f"/bin/sh -c 'echo $$ > {pid_file}; exec sleep 100'"
        await client.submit_tasks("shell-job", [TaskSpec(id="sleeper", command_line=command)])
        written = anyio.Path(pid_file)
        with anyio.fail_after(30):
            while not await written.exists() or not (await written.read_text()).strip():
                await anyio.sleep(0.05)
        assert [p.id async for p in client.batch.list_pools()] == ["shell-pool"]
    async with BlobServiceClient.from_connection_string(environ["AZURE_STORAGE_CONNECTION_STRING"]) as blobs:
        assert [c.name async for c in blobs.list_containers()] == ["from-the-shell"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_export_lines_reach_both_services_and_a_signal_stops_everything(
    tmp_path: Path, signum: int, reaper: list[int]
) -> None:
    env_file = tmp_path / "local.env"
    env_file.write_text("stale\n")
    env_file.chmod(0o644)  # an existing file is narrowed to its owner too
    process = _start(["--env-file", str(env_file)], tmp_path, AZURE_STORAGE_ACCOUNT_URL="https://elsewhere")
    reaper.append(process.pid)
    try:
        printed: list[str] = []
        exports = _read_exports(process, printed)
        assert list(exports) == VARIABLES
        assert exports["AZURE_BATCH_ENDPOINT"].startswith("http://127.0.0.1:")
        # The dotenv file holds the same variables, readable by its owner only.
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        dotenv = dict(shlex.split(line)[0].split("=", 1) for line in env_file.read_text().splitlines())
        assert dotenv == exports
        sourced = subprocess.run(
            ["sh", "-c", f"set -a; . {shlex.quote(str(env_file))}; set +a; env"],
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": os.environ["PATH"]},
        ).stdout
        assert {k: v for k, v in (line.split("=", 1) for line in sourced.splitlines() if "=" in line)}.items() >= (
            exports.items()
        ), "a shell sourcing the file gets the same values"

        pid_file = tmp_path / "task.pid"
        anyio.run(_use_both_services, exports, tmp_path, pid_file)
        task_pid = int(pid_file.read_text())
        started = [pid for pid, _ in child_processes(process.pid)]
        reaper.extend(started)
        assert task_pid in started and any("azurite" in cmd for _, cmd in child_processes(process.pid))

        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()
    assert printed[0] == "unset AZURE_STORAGE_ACCOUNT_URL", "a variable that contradicts the exports is unset first"
    assert out == b"", "stdout holds only the variables: status lines go to stderr"
    assert _all_gone(started) == [], "Azurite or the emulator's task outlived aiobatch local"
    assert not list(tmp_path.glob("aiobatch-*")), "temporary folders were left behind"


CHILD = """
import asyncio, os, pathlib, sys
from aiobatch import Client

async def main():
    path = pathlib.Path("from child.txt")
    path.write_text("child")
    async with Client.from_env(cleanup=True) as client:
        uploaded = await client.upload_files("child-box", [path])
        pools = [p.id async for p in client.batch.list_pools()]
    print("uploaded", [f.name for f in uploaded.files], "pools", pools, "kept", os.environ["KEPT"], flush=True)

asyncio.run(main())
sys.exit(3)
"""


def test_a_command_runs_with_the_variables_and_its_exit_status_is_passed_on(tmp_path: Path, reaper: list[int]) -> None:
    process = _start(
        ["--", sys.executable, "-c", CHILD], tmp_path, KEPT="yes", AZURE_STORAGE_ACCOUNT_URL="https://elsewhere"
    )
    reaper.append(process.pid)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 3, err.decode()
    assert out.decode().splitlines() == ["uploaded ['from child.txt'] pools [] kept yes"], err.decode()
    assert b"Traceback" not in err, err.decode()


def test_sigterm_reaches_the_command_and_leaves_nothing_running(tmp_path: Path, reaper: list[int]) -> None:
    process = _start(["--", "sleep", "100"], tmp_path)
    reaper.append(process.pid)
    try:
        deadline = time.monotonic() + 60
        while not any(cmd == "sleep 100" for _, cmd in child_processes(process.pid)):
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        started = [pid for pid, _ in child_processes(process.pid)]
        reaper.extend(started)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signal.SIGTERM, err.decode()  # the command's status, as a shell reports it
    assert _all_gone(started) == [], "the command or a service outlived aiobatch local"


def test_what_the_command_leaves_running_in_the_background_is_ended(tmp_path: Path, reaper: list[int]) -> None:
    pid_file = tmp_path / "background.pid"
    script = f"sleep 100 & echo $! > {shlex.quote(str(pid_file))}"  # the shell exits, its sleep would live on
    process = _start(["--", "sh", "-c", script], tmp_path)
    reaper.append(process.pid)
    _, err = process.communicate(timeout=120)
    background = int(pid_file.read_text())
    reaper.append(background)
    assert process.returncode == 0, err.decode()
    assert _all_gone([background]) == [], "the command's background process outlived aiobatch local"
    assert b"left running" in err


def test_a_command_that_cannot_be_found_is_127_and_no_command_is_a_usage_error(tmp_path: Path) -> None:
    missing = subprocess.run(
        [_aiobatch(), "local", "--", str(tmp_path / "no-such-program")], capture_output=True, timeout=120, cwd=tmp_path
    )
    assert missing.returncode == 127 and b"no-such-program" in missing.stderr
    empty = subprocess.run([_aiobatch(), "local", "--"], capture_output=True, timeout=60)
    assert empty.returncode == 2 and b"no command after --" in empty.stderr


@pytest.mark.anyio
async def test_local_batch_builds_no_package_unless_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*args: object, **kwargs: object) -> Path:
        raise AssertionError("the ffmpeg package was built without being asked for")

    monkeypatch.setattr(aiobatch.local, "build_ffmpeg_package", refuse)
    async with LocalBatch(workdir=tmp_path / "work") as local:
        assert local.apps_dir is None
        with pytest.raises(RuntimeError, match="ffmpeg=True"):
            _ = local.ffmpeg_app
        async with Client.from_env(local.environ) as client:
            assert [p async for p in client.batch.list_applications()] == []


@pytest.mark.anyio
async def test_the_local_services_fixture_serves_from_env(local_services: LocalServices, tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    async with Client.from_env(local_services.environ, cleanup=True) as client:
        result = await client.upload_files("fixture-box", [tmp_path / "x.txt"])
        assert [f.name for f in result.uploaded] == ["x.txt"]
        assert [p async for p in client.batch.list_pools()] == []
