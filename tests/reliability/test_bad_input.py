"""Issue 8, clause 8: bad input gives a clear error naming the problem and the fix, and loses or leaves nothing.

The oracle is the servers' state after each run: the emulator's account (pools, jobs, tasks still running, what
it ever committed) and Azurite's containers -- never the client's own account of what it did. Script-level cases
run ``examples/convert_pets.py`` as a user would; the rest drive the library.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from _support import minted_ago
from aiobatch import (
    AppPackageRef,
    AuthenticationError,
    BatchSettings,
    ConfigurationError,
    PoolResizeError,
    SasPolicy,
    ServiceError,
    ServiceUnavailableError,
    Settings,
    StorageSettings,
    TaskFailure,
    TaskSpec,
    command_line,
    output_files_to,
    resource_file,
    task_ids_for,
)
from aiobatch._azurite import AzuriteServer
from aiobatch.demo import gifs
from aiobatch.demo.ffmpeg import ffmpeg_executable, ffmpeg_version
from aiobatch.emulator import Emulator, Quotas, Timings

from ._runs import pool_spec
from .conftest import ClientFactory, LeftoverCheck, Scale

pytestmark = [pytest.mark.anyio, pytest.mark.clause(8)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "convert_pets.py"
TEST_SOURCE = "testsrc=duration=1:size=64x48:rate=10"
FAST_TIMINGS = Timings(allocation_delay=0.2, node_start_delay=0.1, deletion_delay=0.05)

# Names a user might give videos: spaces, both quotes, other scripts, and what a shell would act on.
ODD_NAMES = (
    "my cat on the sofa.mp4",
    """Rex's "best" day.mp4""",
    "Hämster Ünal 猫 🐹.mp4",
    "$(touch PWNED) `touch PWNED2`; rm -rf ~ & | > < * ? [x] ! # % ^ {a,b} ~user.mp4",
)


def unique(prefix: str) -> str:
    """A container name of this test's own: Azurite is shared by the session."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of one tiny MP4 (64x48, 1 s, 10 fps), made once with ffmpeg's test source."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    args = ["-v", "error", "-nostdin", "-f", "lavfi", "-i", TEST_SOURCE, "-pix_fmt", "yuv420p", "-y", str(path)]
    subprocess.run([str(ffmpeg_executable()), *args], check=True)
    return path.read_bytes()


@pytest.fixture
def emulator_apps_dir(ffmpeg_apps_dir: Path) -> Path:
    """Serve the ffmpeg application package, as the GIF pipeline needs."""
    return ffmpeg_apps_dir


def assert_nothing_committed(emulator: Emulator) -> None:
    """The emulator never committed a create: the error came before any request that changes something."""
    assert emulator.account is not None
    assert not emulator.account.created, dict(emulator.account.created)


def found_anywhere(pattern: str, *roots: Path) -> list[str]:
    """Files named *pattern* (a prefix) under *roots*, tolerating folders deleted while walking (node cleanup)."""
    return [
        os.path.join(folder, name)
        for root in roots
        for folder, dirs, files in os.walk(root)
        for name in dirs + files
        if name.startswith(pattern)
    ]


def assert_clear(message: str, *needles: str) -> None:
    """The message names each needle (the problem, the thing at fault, the fix)."""
    missing = [n for n in needles if n.lower() not in message.lower()]
    assert not missing, f"{missing} not in: {message}"


# ----------------------------------------------------------------------------------------------------
# The script: missing folder, empty folder, non-video files
# ----------------------------------------------------------------------------------------------------


def script_env(emulator: Emulator, azurite: AzuriteServer) -> dict[str, str]:
    return {
        **os.environ,
        "AZURE_BATCH_ENDPOINT": emulator.endpoint,
        "AZURE_BATCH_ACCOUNT_NAME": emulator.account_name,
        "AZURE_BATCH_ACCOUNT_KEY": emulator.credential.named_key.key,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "PYTHONUNBUFFERED": "1",
    }


async def run_script(emulator: Emulator, azurite: AzuriteServer, input_dir: Path, tmp_path: Path) -> tuple[int, str]:
    containers = ["--input-container", unique("in"), "--output-container", unique("out")]
    args = [sys.executable, str(SCRIPT), "--input", str(input_dir), "--output", str(tmp_path / "gifs"), *containers]
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [*args, "--app-version", ffmpeg_version()],
            env=script_env(emulator, azurite),
            check=False,
            stderr=subprocess.STDOUT,
        )
    return done.returncode, done.stdout.decode()


def contents(folder: Path) -> list[str] | None:
    """The names in *folder*, or None if it does not exist."""
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None


@pytest.fixture
def no_videos(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An input folder with no video in it: missing, empty, or holding only other files."""
    folder = tmp_path / "videos"
    if request.param == "missing":
        return folder
    folder.mkdir()
    if request.param == "non-video":
        (folder / "cat.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (folder / "notes.txt").write_text("feed the cat")
        (folder / "dog.mp4.part").write_bytes(b"half a download")
    return folder


@pytest.mark.parametrize("no_videos", ["missing", "empty", "non-video"], indirect=True)
async def test_script_without_videos_stops_before_creating_anything(
    no_videos: Path, batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path, leftovers: LeftoverCheck
) -> None:
    code, output = await run_script(batch_emulator, azurite, no_videos, tmp_path)

    assert code == 2, output  # a usage error, not a failed conversion
    assert str(no_videos) in output
    assert "Traceback" not in output
    if contents(no_videos) is not None:
        assert_clear(output, ".mp4")  # what it looked for
    else:
        assert_clear(output, "does not exist")
    assert_nothing_committed(batch_emulator)
    assert not (tmp_path / "gifs").exists()
    assert (await leftovers(batch_emulator)).nothing


async def test_script_missing_folder_names_the_fix(
    batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    code, output = await run_script(batch_emulator, azurite, tmp_path / "no-such-folder", tmp_path)
    assert code == 2
    assert_clear(output, "does not exist", "check the path")


@pytest.mark.parametrize("no_videos", ["empty", "non-video"], indirect=True)
async def test_script_without_videos_names_the_fix(
    no_videos: Path, batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    code, output = await run_script(batch_emulator, azurite, no_videos, tmp_path)
    assert code == 2
    assert_clear(output, "error:", "--input")  # an error, saying where to point --input
    if contents(no_videos):
        assert_clear(output, "cat.jpg")  # says what it found instead, and that only .mp4 is converted


# ----------------------------------------------------------------------------------------------------
# Videos that cannot be converted, and names that must not trip anything
# ----------------------------------------------------------------------------------------------------


async def convert(
    client_for: ClientFactory, emulator: Emulator, azurite: AzuriteServer, videos: Path, out: Path, pool_id: str
) -> tuple[gifs.ConversionReport, list[str]]:
    containers = [unique("in"), unique("out")]
    pool = gifs.gif_pool_spec(pool_id, app=AppPackageRef("ffmpeg", ffmpeg_version()), dedicated_nodes=1)
    async with client_for(emulator, azurite, cleanup=True) as client:
        report = await gifs.convert_videos(
            client,
            gifs.find_videos(videos),
            out,
            pool=pool,
            settings=gifs.GifSettings(fps=5, width=32),
            input_container=containers[0],
            output_container=containers[1],
            pool_timeout=30,
        )
    return report, containers


async def test_zero_byte_and_corrupt_videos_fail_alone_with_ffmpegs_reason(
    client_for: ClientFactory,
    batch_emulator: Emulator,
    azurite: AzuriteServer,
    clip: bytes,
    tmp_path: Path,
    leftovers: LeftoverCheck,
    seed: int,
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "good.mp4").write_bytes(clip)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "noise.mp4").write_bytes(os.urandom(3000))
    (videos / "truncated.mp4").write_bytes(clip[: len(clip) // 3])
    out = tmp_path / "gifs"

    report, containers = await convert(client_for, batch_emulator, azurite, videos, out, "bad-videos")

    by_name = {r.video: r for r in report.results}
    assert by_name["good.mp4"].outcome == "converted" and (out / "good.gif").stat().st_size > 0
    for name in ("empty.mp4", "noise.mp4", "truncated.mp4"):
        result = by_name[name]
        assert result.outcome == "failed", result
        assert result.exit_code not in (None, 0), result
        assert result.error and "exit code" in result.error
        # ffmpeg's own reason reaches the report: "Invalid data found when processing input", "moov atom not
        # found", ...
        assert result.stderr_tail.strip(), result
        assert "input.mp4" in result.stderr_tail, result.stderr_tail
        assert not (out / gifs.gif_name_for(name)).exists()
    assert sorted(p.name for p in out.iterdir()) == ["good.gif"]  # no partial GIF of a failure
    assert report.count("converted") + report.count("failed") == 4  # every input accounted for
    assert (await leftovers(batch_emulator, containers=containers)).nothing


async def test_odd_names_convert_and_reach_no_shell(
    client_for: ClientFactory,
    batch_emulator: Emulator,
    azurite: AzuriteServer,
    clip: bytes,
    tmp_path: Path,
    leftovers: LeftoverCheck,
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ODD_NAMES:
        (videos / name).write_bytes(clip)
    out = tmp_path / "gifs"

    report, containers = await convert(client_for, batch_emulator, azurite, videos, out, "odd-names")

    assert report.ok, "\n".join(map(repr, report.results))
    assert sorted(p.name for p in out.iterdir()) == sorted(gifs.gif_name_for(n) for n in ODD_NAMES)
    assert not found_anywhere("PWNED", batch_emulator.workdir, tmp_path, Path.cwd())
    assert (await leftovers(batch_emulator, containers=containers)).nothing


async def test_names_differing_only_in_case_are_refused_by_the_pipeline_before_anything_exists(
    client_for: ClientFactory, batch_emulator: Emulator, azurite: AzuriteServer, clip: bytes, tmp_path: Path
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "Cat.mp4").write_bytes(clip)
    (videos / "cat.mp4").write_bytes(clip)
    with pytest.raises(ConfigurationError) as caught:
        await convert(client_for, batch_emulator, azurite, videos, tmp_path / "gifs", "case-pool")
    # Cat.gif and cat.gif are one file on macOS and Windows: the pipeline says so, naming both and the fix.
    assert_clear(str(caught.value), "'Cat.mp4'", "'cat.mp4'", "rename")
    assert_nothing_committed(batch_emulator)


async def round_trip(
    names: list[str],
    client_for: ClientFactory,
    emulator: Emulator,
    azurite: AzuriteServer,
    tmp_path: Path,
    leftovers: LeftoverCheck,
) -> None:
    """Upload a file per name, copy each on a node by its real name, download the copies: all intact, once each."""
    files = tmp_path / "inputs"
    files.mkdir()
    bodies = {name: f"{i}: {name}\n".encode() * (i % 7 + 1) for i, name in enumerate(names)}
    blob_names = [f"file-{i}" for i in range(len(names))]  # local files need not be named alike on every FS
    for blob, name in zip(blob_names, names, strict=True):
        (files / blob).write_bytes(bodies[name])
    ids = task_ids_for(names)
    assert len({i.lower() for i in ids.values()}) == len(names)
    inputs, outputs = unique("in"), unique("out")

    async with client_for(emulator, azurite, cleanup=True) as client:
        await client.upload_files(inputs, [files / b for b in blob_names], blob_names=names)
        await client.ensure_pool(pool_spec("names-pool", slots=8))
        await client.wait_for_pool_ready("names-pool", timeout=30)
        await client.create_job("names-job", pool_id="names-pool", on_all_tasks_complete="terminatejob")
        out_url = await client.output_container_sas_url(outputs)
        specs = [
            TaskSpec(
                id=ids[name],
                # The real name is on the node and on the command line: quoting must carry it through bash.
                command_line=command_line(["cp", "--", name, "copy.bin"]),
                resource_files=[resource_file(await client.input_sas_url(inputs, name), name)],
                output_files=[output_files_to(out_url, "copy.bin", path=f"copies/{name}")],
            )
            for name in names
        ]
        result = await client.submit_tasks("names-job", specs)
        assert sorted(result.added) == sorted(ids.values()) and not result.failed
        summary = await client.wait_for_tasks("names-job", timeout=120)
        assert summary.completed == len(names) and not summary.failed, summary.failed[:3]
        downloaded = await client.download_outputs(outputs, tmp_path / "copies", prefix="copies/")
        got = {f.name.removeprefix("copies/"): f.path.read_bytes() for f in downloaded.files}
        assert {n: hashlib.sha256(b).hexdigest() for n, b in got.items()} == {
            n: hashlib.sha256(b).hexdigest() for n, b in bodies.items()
        }

    assert emulator.account is not None
    created_tasks = [key for key in emulator.account.created if key[0] == "task"]
    assert len(created_tasks) == len(names)  # exactly one task per input, by the server's count
    assert not found_anywhere("PWNED", emulator.workdir, tmp_path, Path.cwd())
    assert (await leftovers(emulator, containers=[inputs, outputs])).nothing


async def test_odd_and_case_only_names_are_distinct_tasks_with_intact_outputs(
    client_for: ClientFactory,
    batch_emulator: Emulator,
    azurite: AzuriteServer,
    tmp_path: Path,
    leftovers: LeftoverCheck,
) -> None:
    """The library itself: one task per input, ids distinct case-insensitively, names quoted onto the node."""
    names = [*ODD_NAMES, "Case.txt", "case.txt", "CASE.txt"]
    await round_trip(names, client_for, batch_emulator, azurite, tmp_path, leftovers)


# What a hostile name is made of: shell and glob syntax, quotes, escapes, percent signs, and other scripts.
HOSTILE = [*" '\"$`;&|<>*?[]{}()!#%^~=+,@", "$(touch PWNED)", "`touch PWNED`", "%PATH%", "${IFS}"]
LETTERS = [*"abcXYZ019_-.", *"éÅßøñ猫犬ΩЖ", "🐹", "\u202e", "\u00a0", "e\u0301"]


def hostile_names(rng: random.Random, count: int) -> list[str]:
    """*count* distinct names from *rng*: valid file and blob names, each with something a shell would act on."""
    names: dict[str, None] = {}
    while len(names) < count:
        parts = [rng.choice(LETTERS if rng.random() < 0.6 else HOSTILE) for _ in range(rng.randint(1, 12))]
        name = "".join(parts).strip().rstrip(".")
        if not name or name in (".", "..") or len(name.encode()) > 200:
            continue
        if rng.random() < 0.2 and names:  # a case twin of a name already taken
            name = rng.choice(list(names)).swapcase()
        names.setdefault(name, None)
    return list(names)


async def test_seeded_hostile_names_round_trip(
    client_for: ClientFactory,
    batch_emulator: Emulator,
    azurite: AzuriteServer,
    tmp_path: Path,
    leftovers: LeftoverCheck,
    seed: int,
    scale: Scale,
) -> None:
    """Names drawn from the seed (more under soak): each one a task, its file intact on the node and back."""
    names = hostile_names(random.Random(f"{seed}:hostile-names"), scale.pick(24, 400))
    await round_trip(names, client_for, batch_emulator, azurite, tmp_path, leftovers)


# ----------------------------------------------------------------------------------------------------
# Ids, keys, endpoints
# ----------------------------------------------------------------------------------------------------

BAD_IDS = ["has space", "", "x" * 65, "naïve", "a/b", "semi;colon", "dot.ted"]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_invalid_ids_are_refused_before_any_request(
    bad: str, client_for: ClientFactory, batch_emulator: Emulator, azurite: AzuriteServer
) -> None:
    with pytest.raises(ConfigurationError) as pool_error:
        pool_spec(bad)
    with pytest.raises(ConfigurationError) as task_error:
        TaskSpec(id=bad, command_line="/bin/true")
    async with client_for(batch_emulator, azurite, cleanup=True) as client:
        with pytest.raises(ConfigurationError) as job_error:
            await client.create_job(bad, pool_id="some-pool")
        with pytest.raises(ConfigurationError) as pool_wait_error:
            await client.wait_for_pool_ready(bad, timeout=1)
        with pytest.raises(ConfigurationError) as watch_error:
            client.watch_tasks(bad)
    for caught, kind in [
        (pool_error, "pool"),
        (task_error, "task"),
        (job_error, "job"),
        (pool_wait_error, "pool"),
        (watch_error, "job"),
    ]:
        assert_clear(str(caught.value), f"{kind} id {bad!r} is invalid", "letter, digit, hyphen or underscore")
        assert "task_id_for" in str(caught.value)  # the fix for ids made from names
    assert_nothing_committed(batch_emulator)


@pytest.fixture
def real_key() -> str:
    return base64.b64encode(os.urandom(64)).decode()


def malformed_keys(key: str) -> Iterator[tuple[str, str]]:
    yield "not base64", "this is not a key!"
    yield "cut short", key[:-3]
    yield "pasted with a line break", key[:40] + "\n" + key[40:]
    yield "quoted", f'"{key}"'


def test_a_malformed_account_key_names_the_setting_and_the_fix_and_never_the_key(real_key: str) -> None:
    for label, bad in malformed_keys(real_key):
        with pytest.raises(ConfigurationError) as batch:
            BatchSettings(endpoint="http://127.0.0.1:1", account_name="acct", account_key=bad)
        with pytest.raises(ConfigurationError) as storage:
            StorageSettings(connection_string=f"AccountName=acct;AccountKey={bad};BlobEndpoint=http://127.0.0.1:1/acct")
        env = {
            "AZURE_BATCH_ENDPOINT": "http://127.0.0.1:1",
            "AZURE_BATCH_ACCOUNT_NAME": "acct",
            "AZURE_BATCH_ACCOUNT_KEY": bad,
            "AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
        }
        with pytest.raises(ConfigurationError) as from_env:
            Settings.from_env(env)
        for caught, setting in [
            (batch, "AZURE_BATCH_ACCOUNT_KEY"),
            (storage, "AccountKey in AZURE_STORAGE_CONNECTION_STRING"),
            (from_env, "AZURE_BATCH_ACCOUNT_KEY"),
        ]:
            text = f"{caught.value}\n{caught.value!r}"
            assert caught.value.setting == setting, label
            assert_clear(text, setting, "not a valid account key", "copy the key again")
            assert bad.strip() not in text and real_key[:20] not in text, label


async def test_a_wrong_batch_key_is_refused_and_names_the_setting(
    client_for: ClientFactory, batch_emulator: Emulator, azurite: AzuriteServer, real_key: str
) -> None:
    async with client_for(batch_emulator, azurite, batch_key=real_key, cleanup=True) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.ensure_pool(pool_spec("wrong-key"))
    assert caught.value.status == 403
    assert_clear(str(caught.value), "credentials refused", "AZURE_BATCH_ACCOUNT_KEY")
    assert real_key not in f"{caught.value}{caught.value!r}"
    assert_nothing_committed(batch_emulator)


async def test_a_wrong_storage_key_is_refused_and_names_the_setting(
    client_for: ClientFactory,
    batch_emulator: Emulator,
    azurite: AzuriteServer,
    real_key: str,
    tmp_path: Path,
    leftovers: LeftoverCheck,
) -> None:
    wrong = azurite.connection_string.replace(azurite.account_key, real_key)
    assert wrong != azurite.connection_string
    (tmp_path / "a.txt").write_text("a")
    container = unique("wrongkey")
    async with client_for(batch_emulator, azurite, connection_string=wrong, cleanup=True) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.upload_files(container, [tmp_path / "a.txt"])
    assert_clear(str(caught.value), "credentials refused", "AZURE_STORAGE_CONNECTION_STRING")
    assert real_key not in f"{caught.value}{caught.value!r}"
    assert (await leftovers(batch_emulator, containers=[container])).nothing


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_batch_endpoint_fails_within_the_policy_and_names_the_setting(
    client_for: ClientFactory, batch_emulator: Emulator, azurite: AzuriteServer
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    async with client_for(batch_emulator, azurite, batch_endpoint=endpoint, cleanup=True) as client:
        with pytest.raises(ServiceUnavailableError) as caught:
            await client.ensure_pool(pool_spec("nowhere"))
        failed = time.monotonic() - started
    # No request was ever sent, so nothing can have been created: cleanup does not wait out the retries again.
    closed = time.monotonic() - started
    assert failed < client.retry_policy.deadline + 5 and closed - failed < 2.0, (failed, closed)
    assert caught.value.attempts == client.retry_policy.attempts and not caught.value.reached_service
    assert_clear(str(caught.value), "AZURE_BATCH_ENDPOINT", "127.0.0.1", "network", "No attempt reached the service")


async def test_an_unreachable_storage_endpoint_fails_within_the_policy_and_names_the_setting(
    client_for: ClientFactory, batch_emulator: Emulator, azurite: AzuriteServer, tmp_path: Path
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}/{azurite.account_name}"
    unreachable = (
        f"DefaultEndpointsProtocol=http;AccountName={azurite.account_name};"
        f"AccountKey={azurite.account_key};BlobEndpoint={endpoint};"
    )
    (tmp_path / "a.txt").write_text("a")
    started = time.monotonic()
    async with client_for(batch_emulator, azurite, connection_string=unreachable, cleanup=True) as client:
        with pytest.raises(ServiceUnavailableError) as caught:
            await client.upload_files("never-made", [tmp_path / "a.txt"])
        failed = time.monotonic() - started
    closed = time.monotonic() - started
    assert failed < client.retry_policy.deadline + 5 and closed - failed < 2.0, (failed, closed)
    assert not caught.value.reached_service
    assert_clear(str(caught.value), "AZURE_STORAGE_CONNECTION_STRING", "network")


# ----------------------------------------------------------------------------------------------------
# SAS expiry, quota, application packages
# ----------------------------------------------------------------------------------------------------


async def test_an_expired_sas_fails_the_task_and_says_the_sas_expired(
    client_for: ClientFactory,
    batch_emulator: Emulator,
    azurite: AzuriteServer,
    tmp_path: Path,
    leftovers: LeftoverCheck,
) -> None:
    (tmp_path / "in.txt").write_text("hello")
    inputs, outputs = unique("in"), unique("out")
    brief = minted_ago(SasPolicy(duration=0, margin=1, backdate=60), 3.2)  # expired 2.2 s ago
    async with client_for(batch_emulator, azurite, cleanup=True) as client:
        await client.upload_files(inputs, [tmp_path / "in.txt"])
        await client.ensure_pool(pool_spec("sas-pool"))
        await client.wait_for_pool_ready("sas-pool", timeout=30)
        await client.create_job("sas-job", pool_id="sas-pool", on_all_tasks_complete="terminatejob")
        stale_in = await client.input_sas_url(inputs, "in.txt", sas_policy=brief)
        stale_out = await client.output_container_sas_url(outputs, sas_policy=brief)
        fresh_in = await client.input_sas_url(inputs, "in.txt")
        specs = [
            TaskSpec(id="stale-input", command_line="/bin/true", resource_files=[resource_file(stale_in)]),
            TaskSpec(
                id="stale-output",
                command_line=command_line(["cp", "in.txt", "out.txt"]),
                resource_files=[resource_file(fresh_in)],
                output_files=[output_files_to(stale_out, "out.txt")],
            ),
        ]
        await client.submit_tasks("sas-job", specs)
        summary = await client.wait_for_tasks("sas-job", timeout=60)

    assert summary.completed == 2 and len(summary.failed) == 2
    for event in summary.failed:
        assert event.failure is not None, event
        error = str(event.error())
        assert_clear(error, event.task_id, "SAS URL expired at")
        assert_clear(error, "mint SAS URLs whose expiry covers", "resubmit")  # the fix
        assert "sig=" not in error or "sig=***" in error
    codes = {e.task_id: e.failure.code for e in summary.failed if e.failure}
    assert codes == {"stale-input": "BlobAccessDenied", "stale-output": "FileUploadAccessDenied"}, codes
    assert (await leftovers(batch_emulator, containers=[inputs, outputs])).nothing


async def test_a_quota_too_small_for_the_pool_fails_fast_and_names_the_fix(
    client_for: ClientFactory, azurite: AzuriteServer, tmp_path: Path, leftovers: LeftoverCheck
) -> None:
    # standard_d2s_v3 has 2 cores: a 4-core quota fits 2 of the 3 nodes asked for.
    emulator = Emulator(workdir=tmp_path / "emu", timings=FAST_TIMINGS, quotas=Quotas(dedicated_cores=4))
    async with emulator:
        async with client_for(emulator, azurite, cleanup=True) as client:
            await client.ensure_pool(pool_spec("quota-pool", dedicated=3))
            started = time.monotonic()
            with pytest.raises(PoolResizeError) as caught:
                await client.wait_for_pool_ready("quota-pool", timeout=60, poll_interval=0.2, max_poll_interval=0.5)
            assert time.monotonic() - started < 10  # within a poll or two of the error, not at the timeout
        assert caught.value.pool_id == "quota-pool"
        assert [code for code, _ in caught.value.errors] == ["AccountCoreQuotaReached"]
        assert_clear(str(caught.value), "quota", "fewer nodes")
        assert (await leftovers(emulator)).nothing  # cleanup deleted the pool and its two nodes


async def test_a_missing_application_package_names_the_package_and_the_fix(
    client_for: ClientFactory,
    batch_emulator: Emulator,
    azurite: AzuriteServer,
    tmp_path: Path,
    leftovers: LeftoverCheck,
) -> None:
    (tmp_path / "a.mp4").write_bytes(b"not looked at")
    container = unique("in")
    async with client_for(batch_emulator, azurite, cleanup=True) as client:
        await client.upload_files(container, [tmp_path / "a.mp4"])
        for app in (AppPackageRef("imagemagick", "7.1"), AppPackageRef("ffmpeg", "0.0.0-none")):
            with pytest.raises(ServiceError) as caught:
                await client.ensure_pool(pool_spec("app-pool", application_packages=(app,)))
            assert caught.value.code == "InvalidApplicationPackageReferences"
            assert_clear(str(caught.value), f"{app.application_id}:{app.version}", "upload the application package")
    assert batch_emulator.account is not None
    assert not [key for key in batch_emulator.account.created if key[0] == "pool"]
    assert (await leftovers(batch_emulator, containers=[container])).nothing  # the upload's container is gone


def test_only_a_past_expiry_is_called_an_expired_sas() -> None:
    """Access denied with a SAS still valid (wrong permission, wrong key) must not be blamed on expiry."""
    url = "https://acct.blob.core.windows.net/c/b?sp=r&se={}&sig=***"
    past, future = "2020-01-01T00%3A00%3A00Z", "2999-01-01T00%3A00%3A00Z"
    denied = TaskFailure("usererror", "BlobAccessDenied", "Access denied", (("Url", url.format(past)),))
    assert denied.sas_expired() is not None and denied.sas_expired().year == 2020  # type: ignore[union-attr]
    still_valid = TaskFailure("usererror", "BlobAccessDenied", "Access denied", (("Url", url.format(future)),))
    assert still_valid.sas_expired() is None
    not_storage = TaskFailure("usererror", "FailureExitCode", "exit 1", (("Url", url.format(past)),))
    assert not_storage.sas_expired() is None
