"""One task's life on a node (``aiobatch.emulator._runner``), against a real Azurite and real processes.

Every test runs :func:`run_task` the way the scheduler does: a :class:`TaskRun` in, a :class:`TaskOutcome`
out, with resource and output files moving over HTTP with SAS URLs minted by azure-storage-blob.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shlex
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import imageio_ffmpeg
import pytest
from aiohttp import web
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

from aiobatch.emulator import _files, _runner
from aiobatch.emulator._types import OutputFile, ResourceFile, TaskOutcome, TaskRun

pytestmark = pytest.mark.anyio


# --- fixtures and helpers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_files, "BACKOFF", 0.0)
    monkeypatch.setattr(_runner, "KILL_GRACE", 0.5)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Store:
    """A fresh container in Azurite plus helpers to mint SAS URLs for it."""

    def __init__(self, azurite: Any) -> None:
        self.azurite = azurite
        self.service = BlobServiceClient.from_connection_string(azurite.connection_string)
        self.name = f"t{uuid.uuid4().hex[:12]}"
        self.container: ContainerClient = self.service.create_container(self.name)

    def put(self, name: str, data: bytes) -> None:
        self.container.upload_blob(name, data, overwrite=True)

    def get(self, name: str) -> bytes:
        return self.container.download_blob(name).readall()

    def names(self) -> list[str]:
        return sorted(b.name for b in self.container.list_blobs())

    def container_url(self, *, expiry: dt.timedelta = dt.timedelta(hours=1), **permissions: bool) -> str:
        sas = generate_container_sas(
            self.azurite.account_name,
            self.name,
            account_key=self.azurite.account_key,
            permission=ContainerSasPermissions(**permissions),
            expiry=dt.datetime.now(dt.timezone.utc) + expiry,
            start=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2),
        )
        return f"{self.container.url}?{sas}"

    def blob_url(self, name: str, *, expiry: dt.timedelta = dt.timedelta(hours=1)) -> str:
        sas = generate_blob_sas(
            self.azurite.account_name,
            self.name,
            name,
            account_key=self.azurite.account_key,
            permission=BlobSasPermissions(read=True),
            expiry=dt.datetime.now(dt.timezone.utc) + expiry,
            start=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2),
        )
        return f"{self.container.get_blob_client(name).url}?{sas}"


@pytest.fixture
def store(azurite: Any) -> Iterator[Store]:
    s = Store(azurite)
    yield s
    s.container.delete_container()


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., TaskRun]:
    def make(command_line: str, task_id: str = "task-1", **kwargs: Any) -> TaskRun:
        root = tmp_path / "node"
        return TaskRun(
            account_name="acct",
            account_url="http://127.0.0.1:1/",
            pool_id="pool-1",
            node_id="tvmps_node_0",
            node_root=root,
            task_id=task_id,
            job_id="job-1",
            command_line=command_line,
            task_dir=root / "workitems" / "job-1" / "job-1" / task_id,
            **kwargs,
        )

    return make


def bash(script: str) -> str:
    return f"/bin/bash -c {shlex.quote(script)}"


def alive(pid: int) -> bool:
    """True while *pid* is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def details(outcome: TaskOutcome) -> dict[str, str]:
    assert outcome.failure_info is not None
    return dict(outcome.failure_info.details)


def no_signature_in(text: str, url: str) -> None:
    sig = url.split("sig=", 1)[1].split("&", 1)[0]
    assert sig not in text
    assert "sig=REDACTED" in text


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --- pure helpers -------------------------------------------------------------------------------------------


def test_blob_url_encodes_names_and_keeps_the_sas() -> None:
    url = _files.blob_url("http://h:1/acct/c?sv=2021&sig=a%2Bb", "dir/a b/é #1.gif")
    assert url == "http://h:1/acct/c/dir/a%20b/%C3%A9%20%231.gif?sv=2021&sig=a%2Bb"


def test_mask_sas_hides_every_signature() -> None:
    text = "GET http://h/c?sv=1&sig=abc%2B%3D&se=x and https://h/d?SIG=zzz"
    assert _files.mask_sas(text) == "GET http://h/c?sv=1&sig=REDACTED&se=x and https://h/d?SIG=REDACTED"


# --- resource files -----------------------------------------------------------------------------------------


async def test_http_url_download_runs_command_with_batch_environment(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    store.put("in/data.txt", b"hello from blob\n")
    run = make_run(
        bash("cat input/data.txt; env | grep -E '^(AZ_BATCH_|MY_)' | sort > env.txt; stat -c %a input/data.txt"),
        resource_files=(
            ResourceFile(http_url=store.blob_url("in/data.txt"), file_path="input/data.txt", file_mode="0640"),
        ),
        environment={"MY_SETTING": "42", "AZ_BATCH_APP_PACKAGE_FFMPEG_7_0": "/apps/ffmpeg"},
    )

    outcome = await _runner.run_task(run, http)

    assert outcome.result == "success", outcome.failure_info
    assert outcome.exit_code == 0
    assert outcome.start_time.tzinfo is not None and outcome.start_time <= outcome.end_time
    assert (run.task_dir / "stdout.txt").read_text() == "hello from blob\n640\n"
    env = dict(line.split("=", 1) for line in (run.task_dir / "wd" / "env.txt").read_text().splitlines())
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == str(run.task_dir / "wd")
    assert env["AZ_BATCH_TASK_DIR"] == str(run.task_dir)
    assert env["AZ_BATCH_NODE_ROOT_DIR"] == str(run.node_root)
    assert env["AZ_BATCH_NODE_SHARED_DIR"] == str(run.node_root / "shared")
    assert env["AZ_BATCH_NODE_STARTUP_DIR"] == str(run.node_root / "startup")
    assert (env["AZ_BATCH_JOB_ID"], env["AZ_BATCH_TASK_ID"]) == ("job-1", "task-1")
    assert (env["AZ_BATCH_POOL_ID"], env["AZ_BATCH_NODE_ID"]) == ("pool-1", "tvmps_node_0")
    assert (env["AZ_BATCH_ACCOUNT_NAME"], env["AZ_BATCH_ACCOUNT_URL"]) == ("acct", "http://127.0.0.1:1/")
    assert env["AZ_BATCH_APP_PACKAGE_FFMPEG_7_0"] == "/apps/ffmpeg"
    assert env["MY_SETTING"] == "42"
    # No partial-download leftovers beside the file.
    assert sorted(p.name for p in (run.task_dir / "wd" / "input").iterdir()) == ["data.txt"]


async def test_start_task_has_no_job_or_task_id(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    run = make_run(bash("echo job=${AZ_BATCH_JOB_ID-unset} task=${AZ_BATCH_TASK_ID-unset} $PWD"), is_start_task=True)
    run.task_dir = run.node_root / "startup"

    outcome = await _runner.run_task(run, http)

    assert outcome.exit_code == 0
    out = (run.node_root / "startup" / "stdout.txt").read_text()
    assert out == f"job=unset task=unset {run.node_root / 'startup' / 'wd'}\n"


# --- the environment ----------------------------------------------------------------------------------------


@pytest.fixture
def developer_shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The emulator's environment as a developer's shell has it: credentials, a token and a virtualenv on PATH.

    Returns the virtualenv's bin folder, which holds an executable ``mytool``.
    """
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "mytool").write_text("#!/bin/sh\necho found\n")
    (venv_bin / "mytool").chmod(0o755)
    monkeypatch.setenv("AZURE_BATCH_ACCOUNT_KEY", "Y2FuYXJ5LWJhdGNoLWtleQ==")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=a;AccountKey=Y2FuYXJ5LXN0b3JhZ2Uta2V5")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_canarytoken")
    monkeypatch.setenv("AZ_BATCH_TASK_ID", "from-the-caller")
    monkeypatch.setenv("PATH", f"{venv_bin}:{os.environ.get('PATH', '')}")
    return venv_bin


def _printed_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


async def test_a_task_gets_a_node_environment_never_the_emulators(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, developer_shell: Path
) -> None:
    # /usr/bin/env run directly (no shell adding PWD or SHLVL) prints exactly what the process was given.
    run = make_run(
        "/usr/bin/env",
        job_environment={"SHARED": "from the job", "OVERRIDDEN": "from the job"},
        environment={"OVERRIDDEN": "from the task", "MINE": "1"},
        app_package_environment={"AZ_BATCH_APP_PACKAGE_tool_1_0": "/apps/tool_1.0"},
        node_is_dedicated=False,
    )

    outcome = await _runner.run_task(run, http)

    assert outcome.result == "success", outcome.failure_info
    root, wd = run.node_root, run.task_dir / "wd"
    assert _printed_env(run.task_dir / "stdout.txt") == {
        "PATH": f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{root / 'shared'}:{wd}",
        "HOME": str(wd),
        "AZ_BATCH_ACCOUNT_NAME": "acct",
        "AZ_BATCH_ACCOUNT_URL": "http://127.0.0.1:1/",
        "AZ_BATCH_POOL_ID": "pool-1",
        "AZ_BATCH_NODE_ID": "tvmps_node_0",
        "AZ_BATCH_NODE_IS_DEDICATED": "false",
        "AZ_BATCH_NODE_ROOT_DIR": str(root),
        "AZ_BATCH_NODE_SHARED_DIR": str(root / "shared"),
        "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
        "AZ_BATCH_NODE_STARTUP_WORKING_DIR": str(root / "startup" / "wd"),
        "AZ_BATCH_NODE_MOUNTS_DIR": str(root / "fsmounts"),
        "AZ_BATCH_TASK_DIR": str(run.task_dir),
        "AZ_BATCH_TASK_WORKING_DIR": str(wd),
        "AZ_BATCH_TASK_USER": "_azbatch",
        "AZ_BATCH_TASK_USER_IDENTITY": "PoolNonAdmin",
        "AZ_BATCH_JOB_ID": "job-1",
        "AZ_BATCH_TASK_ID": "task-1",
        "AZ_BATCH_APP_PACKAGE_tool_1_0": "/apps/tool_1.0",
        "SHARED": "from the job",
        "OVERRIDDEN": "from the task",
        "MINE": "1",
    }


async def test_programs_are_found_on_the_nodes_path_not_the_callers(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, developer_shell: Path
) -> None:
    # On the caller's PATH only: a node would not find it.
    missing = await _runner.run_task(make_run("mytool", task_id="venv-tool"), http)
    assert missing.exit_code is None
    assert missing.failure_info is not None and missing.failure_info.code == "CommandProgramNotFound"

    # A system program by its bare name, and one the task brought into its working directory (on a node's PATH).
    run = make_run("env", task_id="own-tool")
    (run.task_dir / "wd").mkdir(parents=True)
    found = await _runner.run_task(run, http)
    assert found.result == "success", found.failure_info
    assert "GITHUB_TOKEN" not in (run.task_dir / "stdout.txt").read_text()
    (run.task_dir / "wd" / "mine").write_text("#!/bin/sh\necho mine\n")
    (run.task_dir / "wd" / "mine").chmod(0o755)
    run.command_line = "mine"
    assert (await _runner.run_task(run, http)).result == "success"
    assert (run.task_dir / "stdout.txt").read_text() == "mine\n"


async def test_only_the_variables_named_to_pass_through_reach_the_task(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, developer_shell: Path
) -> None:
    run = make_run(
        "/usr/bin/env",
        passed_environment={"PATH": f"{developer_shell}:/usr/bin:/bin", "LICENSE_SERVER": "lic.example:27000"},
        environment={"LICENSE_SERVER": "task wins"},
        is_start_task=True,
    )
    run.task_dir = run.node_root / "startup"

    assert (await _runner.run_task(run, http)).result == "success"

    env = _printed_env(run.task_dir / "stdout.txt")
    assert env["PATH"] == f"{developer_shell}:/usr/bin:/bin"  # asked for, so it replaces the node's
    assert env["LICENSE_SERVER"] == "task wins"
    assert env["HOME"] == str(run.node_root / "startup" / "wd")
    assert "AZ_BATCH_TASK_ID" not in env and "AZ_BATCH_JOB_ID" not in env
    assert not {"AZURE_BATCH_ACCOUNT_KEY", "AZURE_STORAGE_CONNECTION_STRING", "GITHUB_TOKEN"} & set(env)


async def test_container_download_with_prefix_paging_and_odd_names(
    store: Store,
    make_run: Callable[..., TaskRun],
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_files, "LIST_PAGE_SIZE", 2)  # three pages for five blobs: NextMarker is followed
    blobs = {
        "clips/a b.txt": b"spaces",
        "clips/é ü/ñ.txt": "non-ascii ✓".encode(),
        "clips/sub/x#1.txt": b"hash",
        "clips/plus+percent%.txt": b"plus",
        "clips/z.txt": b"z",
        "other/y.txt": b"not under the prefix",
    }
    for name, data in blobs.items():
        store.put(name, data)
    run = make_run(
        "/bin/true",
        resource_files=(
            ResourceFile(
                storage_container_url=store.container_url(read=True, list=True),
                blob_prefix="clips/",
                file_path="data",
            ),
            ResourceFile(storage_container_url=store.container_url(read=True, list=True), blob_prefix="other/"),
        ),
    )

    outcome = await _runner.run_task(run, http)

    assert outcome.result == "success", outcome.failure_info
    wd = run.task_dir / "wd"
    for name, data in blobs.items():
        local = wd / ("data/" + name if name.startswith("clips/") else name)
        assert local.read_bytes() == data
        assert local.stat().st_mode & 0o777 == 0o770  # the default fileMode on Linux
    assert not (wd / "data" / "other").exists()


async def test_expired_sas_fails_before_running_and_says_why(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    store.put("in.txt", b"x")
    url = store.blob_url("in.txt", expiry=-dt.timedelta(minutes=5))
    run = make_run(bash("touch ran"), resource_files=(ResourceFile(http_url=url, file_path="in.txt"),))

    outcome = await _runner.run_task(run, http)

    assert outcome.exit_code is None
    assert outcome.failure_info is not None
    assert (outcome.failure_info.category, outcome.failure_info.code) == ("usererror", "BlobAccessDenied")
    info = details(outcome)
    assert info["HttpStatusCode"] == "403"
    assert "expired" in info["Reason"]
    assert info["FilePath"] == "in.txt"
    no_signature_in(json.dumps(info), url)
    assert not (run.task_dir / "wd" / "ran").exists()
    assert not (run.task_dir / "stdout.txt").exists()


async def test_expired_container_sas_fails_listing(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    url = store.container_url(read=True, list=True, expiry=-dt.timedelta(minutes=1))
    run = make_run(bash("touch ran"), resource_files=(ResourceFile(storage_container_url=url),))

    outcome = await _runner.run_task(run, http)

    assert outcome.failure_info is not None
    assert outcome.failure_info.code == "ResourceContainerAccessDenied"
    assert "expired" in details(outcome)["Reason"]
    no_signature_in(json.dumps(details(outcome)), url)
    assert not (run.task_dir / "wd" / "ran").exists()


async def test_missing_blob_is_blob_not_found(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    run = make_run("/bin/true", resource_files=(ResourceFile(http_url=store.blob_url("nope.txt"), file_path="n.txt"),))

    outcome = await _runner.run_task(run, http)

    assert outcome.failure_info is not None
    assert (outcome.failure_info.code, details(outcome)["HttpStatusCode"]) == ("BlobNotFound", "404")


@pytest.mark.parametrize("file_path", ["../escape.txt", "/etc/evil", "a/../../b"])
async def test_file_path_escaping_the_working_directory_is_refused(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, file_path: str
) -> None:
    store.put("in.txt", b"x")
    run = make_run(
        bash("touch ran"),
        resource_files=(ResourceFile(http_url=store.blob_url("in.txt"), file_path=file_path),),
    )

    outcome = await _runner.run_task(run, http)

    assert outcome.failure_info is not None
    assert (outcome.failure_info.category, outcome.failure_info.code) == (
        "usererror",
        "ResourceFileCreateFailed",
    )
    assert not (run.task_dir / "escape.txt").exists()
    assert not (run.task_dir / "wd" / "ran").exists()


# --- transfers: retries and partial bodies ------------------------------------------------------------------


@pytest.fixture
async def flaky_server() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A loopback HTTP server: /flaky answers 503 twice, then the body; /short always drops its body."""
    hits = {"flaky": 0, "short": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        hits["flaky"] += 1
        if hits["flaky"] <= 2:
            return web.Response(status=503, text="busy")
        return web.Response(body=b"finally")

    async def short(request: web.Request) -> web.StreamResponse:
        hits["short"] += 1
        resp = web.StreamResponse(headers={"Content-Length": "100"})
        await resp.prepare(request)
        await resp.write(b"x" * 50)
        assert request.transport is not None
        request.transport.close()
        return resp

    app = web.Application()
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/short", short)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


async def test_transient_errors_are_retried_and_partial_bodies_never_land(
    flaky_server: tuple[str, dict[str, int]], make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    base, hits = flaky_server
    ok = make_run("/bin/true", resource_files=(ResourceFile(http_url=f"{base}/flaky?sig=s3cret", file_path="f.txt"),))
    outcome = await _runner.run_task(ok, http)
    assert outcome.result == "success", outcome.failure_info
    assert (ok.task_dir / "wd" / "f.txt").read_bytes() == b"finally"
    assert hits["flaky"] == 3

    bad = make_run(
        "/bin/true",
        task_id="t2",
        resource_files=(ResourceFile(http_url=f"{base}/short?sig=s3cret", file_path="s.txt"),),
    )
    outcome = await _runner.run_task(bad, http)
    assert outcome.failure_info is not None
    assert (outcome.failure_info.category, outcome.failure_info.code) == (
        "servererror",
        "BlobDownloadMiscError",
    )
    assert hits["short"] == _files.ATTEMPTS
    assert list((bad.task_dir / "wd").iterdir()) == []  # neither s.txt nor a temporary file
    assert "s3cret" not in json.dumps(details(outcome))


# --- the process --------------------------------------------------------------------------------------------


async def test_nonzero_exit_is_failure_exit_code_with_output_files(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    run = make_run(bash("echo to-stdout; echo to-stderr >&2; exit 3"))

    outcome = await _runner.run_task(run, http)

    assert outcome.exit_code == 3
    assert outcome.failure_info is not None
    assert (outcome.failure_info.category, outcome.failure_info.code) == ("usererror", "FailureExitCode")
    assert outcome.failure_info.message == "The task exited with an exit code representing a failure"
    assert (run.task_dir / "stdout.txt").read_text() == "to-stdout\n"
    assert (run.task_dir / "stderr.txt").read_text() == "to-stderr\n"


async def test_command_line_is_not_run_through_a_shell(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    run = make_run("/bin/echo $HOME 'two words' | wc")

    outcome = await _runner.run_task(run, http)

    assert outcome.exit_code == 0
    assert (run.task_dir / "stdout.txt").read_text() == "$HOME two words | wc\n"


async def test_missing_program_is_command_program_not_found(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    outcome = await _runner.run_task(make_run("no-such-program-xyz --flag"), http)

    assert outcome.exit_code is None
    assert outcome.failure_info is not None
    assert (outcome.failure_info.category, outcome.failure_info.code) == (
        "usererror",
        "CommandProgramNotFound",
    )


async def test_wall_clock_limit_kills_the_whole_process_tree(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    run = make_run(bash("sleep 60 & echo $! > child.pid; wait"), max_wall_clock_time=1.0)

    with anyio.fail_after(10):
        outcome = await _runner.run_task(run, http)

    assert outcome.failure_info is not None
    assert (outcome.failure_info.category, outcome.failure_info.code) == ("servererror", "TaskEnded")
    assert outcome.exit_code == 128 + signal.SIGTERM
    assert 0.9 <= (outcome.end_time - outcome.start_time).total_seconds() < 8
    assert not alive(int((run.task_dir / "wd" / "child.pid").read_text()))


async def test_background_processes_end_with_the_task(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    run = make_run(bash("sleep 300 & echo $! > bg.pid; exit 0"))

    outcome = await _runner.run_task(run, http)

    assert outcome.result == "success"
    assert not alive(int((run.task_dir / "wd" / "bg.pid").read_text()))


async def _wait_for_file(path: Path) -> None:
    # Polling is the only way to see a file that another process writes.
    apath = anyio.Path(path)
    with anyio.fail_after(10):
        while not await apath.exists() or not (await apath.read_text()).strip():
            await anyio.sleep(0.02)


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["sigterm", "needs-sigkill"])
async def test_cancellation_kills_the_process_group_and_reraises(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, ignore_sigterm: bool
) -> None:
    trap = "trap '' TERM; " if ignore_sigterm else ""
    run = make_run(bash(f"{trap}sleep 300 & echo $! > child.pid; echo $$ > parent.pid; wait"))
    wd = run.task_dir / "wd"
    cancelled = False

    async with anyio.create_task_group() as tg:

        async def _run() -> None:
            nonlocal cancelled
            try:
                await _runner.run_task(run, http)
            except anyio.get_cancelled_exc_class():
                cancelled = True
                raise

        tg.start_soon(_run)
        await _wait_for_file(wd / "child.pid")
        await _wait_for_file(wd / "parent.pid")
        pids = [int((wd / name).read_text()) for name in ("parent.pid", "child.pid")]
        assert all(alive(pid) for pid in pids)
        tg.cancel_scope.cancel()

    assert cancelled
    assert not any(alive(pid) for pid in pids)


async def test_native_asyncio_cancellation_also_stops_the_processes(
    make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    import asyncio

    run = make_run(bash("trap '' TERM; sleep 300 & echo $! > child.pid; wait"))
    task = asyncio.ensure_future(_runner.run_task(run, http))
    await _wait_for_file(run.task_dir / "wd" / "child.pid")
    child = int((run.task_dir / "wd" / "child.pid").read_text())

    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()  # a second request only cuts the grace period short
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(child)


# --- output files -------------------------------------------------------------------------------------------


async def test_output_files_by_pattern(
    store: Store,
    make_run: Callable[..., TaskRun],
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_files, "BLOCK_SIZE", 64 * 1024)  # big.bin goes up as Put Block + Put Block List
    script = (
        "mkdir -p out/sub && echo a > out/a.gif && echo b > out/sub/b.gif && echo h > out/.hidden.gif"
        " && echo r > report.txt && echo n > 'out/sub/name with space é.gif'"
        " && head -c 300000 /dev/urandom > big.bin && echo done"
    )
    write = store.container_url(write=True, create=True)
    outputs = (
        OutputFile("**/*.gif", write, path="all"),
        OutputFile("out/*.gif", write),
        OutputFile("$MY_OUT/sub/*.gif", write, path="env/"),
        OutputFile("report.txt", write, path="reports/task-1.txt"),
        OutputFile("../std*.txt", write, path="logs"),
        OutputFile("big.bin", write),
        OutputFile("nothing/*.zip", write),
    )
    run = make_run(bash(script), output_files=outputs, environment={"MY_OUT": "out"})

    outcome = await _runner.run_task(run, http)

    assert outcome.result == "success", outcome.failure_info
    assert store.names() == [
        "a.gif",
        "all/out/a.gif",
        "all/out/sub/b.gif",
        "all/out/sub/name with space é.gif",
        "big.bin",
        "env/b.gif",
        "env/name with space é.gif",
        "logs/stderr.txt",
        "logs/stdout.txt",
        "reports/task-1.txt",
    ]
    assert store.get("logs/stdout.txt") == b"done\n"
    big = (run.task_dir / "wd" / "big.bin").read_bytes()
    assert store.get("big.bin") == big
    for name, local in [("big.bin", big), ("a.gif", b"a\n")]:
        props = store.container.get_blob_client(name).get_blob_properties()
        assert base64.b64encode(bytes(props.content_settings.content_md5)).decode() == md5_b64(local)
    log = (run.task_dir / "fileuploadout.txt").read_text()
    assert "No files matched pattern nothing/*.zip" in log
    no_signature_in(log, write)
    assert (run.task_dir / "fileuploaderr.txt").read_text() == ""


@pytest.mark.parametrize("exit_code", [0, 1])
async def test_upload_conditions(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, exit_code: int
) -> None:
    write = store.container_url(write=True, create=True)
    outputs = tuple(
        OutputFile("result.txt", write, path=f"{condition}.txt", upload_condition=condition)
        for condition in ("tasksuccess", "taskfailure", "taskcompletion")
    )
    run = make_run(bash(f"echo r > result.txt; exit {exit_code}"), output_files=outputs)

    outcome = await _runner.run_task(run, http)

    assert outcome.exit_code == exit_code
    expected = (
        ["taskcompletion.txt", "tasksuccess.txt"] if exit_code == 0 else ["taskcompletion.txt", "taskfailure.txt"]
    )
    assert store.names() == expected


async def test_upload_with_read_only_sas_fails_the_task(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession
) -> None:
    read_only = store.container_url(read=True, list=True)
    run = make_run(bash("echo r > result.txt"), output_files=(OutputFile("result.txt", read_only),))

    outcome = await _runner.run_task(run, http)

    assert outcome.exit_code == 0
    assert outcome.result == "failure"
    assert outcome.failure_info is not None
    assert (outcome.failure_info.category, outcome.failure_info.code) == (
        "usererror",
        "FileUploadAccessDenied",
    )
    assert details(outcome)["HttpStatusCode"] == "403"
    assert store.names() == []
    errors = [json.loads(line) for line in (run.task_dir / "fileuploaderr.txt").read_text().splitlines()]
    assert [(e["code"], e["user_error"], e["pattern"]) for e in errors] == [
        ("FileUploadAccessDenied", True, "result.txt")
    ]
    no_signature_in(errors[0]["destination"], read_only)
    no_signature_in(json.dumps(details(outcome)), read_only)


# --- links an earlier attempt left: files stay inside the task directory ------------------------------------


def _leftovers(run: TaskRun, outside: Path) -> None:
    """What a first attempt might leave in the working directory: links out of it, and one within."""
    wd = run.task_dir / "wd"
    (wd / "real").mkdir(parents=True)
    (outside / "x").write_text("original")
    (wd / "in.txt").symlink_to(outside / "x")
    (wd / "sub").symlink_to(outside)
    (wd / "inner").symlink_to("real")


@pytest.mark.parametrize(
    ("file_path", "reason"),
    [("sub/y.txt", "sub is a link that leads out"), ("sub/deeper/y.txt", "sub is a link that leads out")],
)
async def test_a_resource_file_is_not_written_through_a_link_out_of_the_working_directory(
    store: Store,
    make_run: Callable[..., TaskRun],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    file_path: str,
    reason: str,
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    store.put("in.txt", b"from blob")
    run = make_run(
        bash("touch ran"), resource_files=(ResourceFile(http_url=store.blob_url("in.txt"), file_path=file_path),)
    )
    _leftovers(run, outside)

    outcome = await _runner.run_task(run, http)

    assert outcome.failure_info is not None
    assert (outcome.failure_info.category, outcome.failure_info.code) == ("usererror", "ResourceFileCreateFailed")
    assert reason in details(outcome)["Reason"]
    assert sorted(p.name for p in outside.iterdir()) == ["x"], "a file was written outside the working directory"
    assert not (run.task_dir / "wd" / "ran").exists()


async def test_container_resource_files_do_not_go_through_a_link_out_either(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    store.put("clips/a.txt", b"a")
    container = store.container_url(read=True, list=True)
    run = make_run("/bin/true", resource_files=(ResourceFile(storage_container_url=container, file_path="sub"),))
    _leftovers(run, outside)

    outcome = await _runner.run_task(run, http)

    assert outcome.failure_info is not None and outcome.failure_info.code == "ResourceFileCreateFailed"
    assert sorted(p.name for p in outside.iterdir()) == ["x"]


async def test_resource_files_replace_a_link_in_their_place_and_follow_links_within(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    store.put("in.txt", b"from blob")
    url = store.blob_url("in.txt")
    run = make_run(
        "/bin/true",
        resource_files=(
            ResourceFile(http_url=url, file_path="in.txt"),
            ResourceFile(http_url=url, file_path="inner/y.txt"),
        ),
    )
    _leftovers(run, outside)

    outcome = await _runner.run_task(run, http)

    assert outcome.result == "success", outcome.failure_info
    wd = run.task_dir / "wd"
    assert not (wd / "in.txt").is_symlink() and (wd / "in.txt").read_bytes() == b"from blob"
    assert (outside / "x").read_text() == "original"
    assert (wd / "real" / "y.txt").read_bytes() == b"from blob"


async def test_output_patterns_do_not_upload_files_through_links_out_of_the_task_directory(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.txt").write_text("secret")
    (outside / "deep" / "secret.txt").write_text("secret")
    (outside / "plain.txt").write_text("named outright")
    script = (
        f"ln -s {outside}/secret.txt passwd.txt && ln -s {outside} out && ln -s . loop && ln -s loop loop2"
        " && echo mine > mine.txt && ln -s mine.txt alias.txt && mkfifo pipe.txt"
        f" && mkdir d && ln -s {outside} d/o"
    )
    write = store.container_url(write=True, create=True)
    outputs = (
        OutputFile("**/*.txt", write, path="all"),
        OutputFile("*.txt", write, path="top"),
        OutputFile("passwd.txt", write, path="named/passwd.txt"),
        OutputFile("out/*.txt", write, path="out"),
        OutputFile("out/secret.txt", write, path="named/out-secret.txt"),
        OutputFile("d/*/*.txt", write, path="d"),
        OutputFile(str(outside / "plain.txt"), write, path="named/absolute.txt"),
    )
    run = make_run(bash(script), output_files=outputs)

    with anyio.fail_after(30):  # two link loops must not make matching endless (glob did, on the event loop)
        outcome = await _runner.run_task(run, http)

    assert outcome.result == "success", outcome.failure_info
    assert store.names() == [
        "all/alias.txt",
        "all/mine.txt",
        "named/absolute.txt",  # spelled out by the pattern, reached through no link: as the service does
        "top/alias.txt",
        "top/mine.txt",
    ]
    assert store.get("all/alias.txt") == b"mine\n"


@pytest.mark.timeout(60)  # before the fix, opening the FIFOs blocked the event loop for good
async def test_a_retry_writes_its_logs_afresh_not_through_fifos_or_links_left_in_their_place(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for name in ("err", "uploaderr"):
        (outside / name).write_text("precious")
    run = make_run(
        bash("echo out; echo err >&2; echo r > r.txt"),
        output_files=(OutputFile("r.txt", store.container_url(write=True, create=True)),),
    )
    run.task_dir.mkdir(parents=True)
    os.mkfifo(run.task_dir / "stdout.txt")
    os.mkfifo(run.task_dir / "fileuploadout.txt")
    (run.task_dir / "stderr.txt").symlink_to(outside / "err")
    (run.task_dir / "fileuploaderr.txt").symlink_to(outside / "uploaderr")

    outcome = await _runner.run_task(run, http)

    assert outcome.result == "success", outcome.failure_info
    assert (outside / "err").read_text() == (outside / "uploaderr").read_text() == "precious"
    assert (run.task_dir / "stdout.txt").read_text() == "out\n"
    assert (run.task_dir / "stderr.txt").read_text() == "err\n"
    assert "Uploaded" in (run.task_dir / "fileuploadout.txt").read_text()
    assert (run.task_dir / "fileuploaderr.txt").read_text() == ""
    assert store.names() == ["r.txt"]


async def test_a_working_directory_replaced_by_a_link_takes_no_resource_files_out(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    store.put("in.txt", b"from blob")
    run = make_run(
        bash("echo r > r.txt"),
        resource_files=(ResourceFile(http_url=store.blob_url("in.txt"), file_path="in.txt"),),
    )
    run.task_dir.mkdir(parents=True)
    (run.task_dir / "wd").symlink_to(outside)

    outcome = await _runner.run_task(run, http)

    assert outcome.failure_info is not None and outcome.failure_info.code == "ResourceFileCreateFailed"
    assert list(outside.iterdir()) == []


# --- a real conversion --------------------------------------------------------------------------------------


def _gif_size(data: bytes) -> tuple[int, int]:
    assert data[:6] in (b"GIF87a", b"GIF89a")
    return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")


@pytest.mark.slow
async def test_ffmpeg_turns_an_mp4_resource_into_a_gif_output(
    store: Store, make_run: Callable[..., TaskRun], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    clip = tmp_path / "clip.mp4"
    await anyio.run_process(
        [
            ffmpeg,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=10",
            "-t",
            "1",
            "-pix_fmt",
            "yuv420p",
            str(clip),
        ],
        check=True,
    )
    store.put("in/my clip.mp4", clip.read_bytes())
    command = (
        f"{ffmpeg} -v error -i 'my clip.mp4'"
        " -vf 'fps=5,scale=160:-1:flags=lanczos,split[a][b];[a]palettegen[p];[b][p]paletteuse' 'my clip.gif'"
    )
    run = make_run(
        command,
        resource_files=(ResourceFile(http_url=store.blob_url("in/my clip.mp4"), file_path="my clip.mp4"),),
        output_files=(OutputFile("*.gif", store.container_url(write=True, create=True), path="gifs"),),
    )

    outcome = await _runner.run_task(run, http)

    assert outcome.result == "success", (outcome.failure_info, (run.task_dir / "stderr.txt").read_text())
    assert _gif_size(store.get("gifs/my clip.gif")) == (160, 120)
