"""Issue 8, clause 9: no secret reaches a log record, an exception, a traceback, a repr or a CLI line.

Canaries: a unique Batch account key (the emulator is started with it), Azurite's account key (fixed, so it is
treated as a secret here), every SAS signature minted during the run (recorded as aiobatch mints it), and every
Shared Key signature the SDKs put in an ``Authorization`` header (recorded as they sign). Each is searched for
raw and URL-encoded (once and twice), and generic patterns catch any unmasked ``sig=`` or ``SharedKey a:b``.

The full run -- upload, pool, job, tasks (one failing, one refused by storage), watch, stderr, download, cleanup,
and error paths (wrong keys, a malformed key, a failed task raised) -- runs with the root logger at DEBUG and
the SDKs' network trace on (``logging_enable=True``), which prints headers and bodies verbatim unless aiobatch
masks them. Every SAS aiobatch minted is then probed with what it must not allow (403 expected), and its
validity window checked against the policy.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from azure.batch import _patch as batch_patch
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

import aiobatch._client
import aiobatch._sas
import aiobatch._storage
from _support import minted_ago
from aiobatch import (
    AiobatchError,
    AuthenticationError,
    BatchSettings,
    Client,
    ConfigurationError,
    SasPolicy,
    StorageSettings,
    TaskSpec,
    command_line,
    output_files_to,
    resource_file,
)
from aiobatch._azurite import AzuriteServer
from aiobatch._retry import sdk_client_kwargs
from aiobatch.demo.ffmpeg import ffmpeg_version
from aiobatch.emulator import Emulator, Timings

from ._runs import pool_spec
from .conftest import LeftoverCheck

pytestmark = [pytest.mark.anyio, pytest.mark.clause(9)]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "convert_pets.py"
FAST_TIMINGS = Timings(allocation_delay=0.2, node_start_delay=0.1, deletion_delay=0.05)
POLICY = SasPolicy(duration=2 * 3600, margin=600, backdate=120)

# Masked forms the library and the emulator use; anything else after sig= is a leak.
_MASKS = ("***", "REDACTED", "*****")
_SIG = re.compile(r"(?i)sig(?:=|%3d|%253d)([^&\s'\"<>;,)\]}\\]+)")
_SHARED_KEY = re.compile(r"SharedKey\s+[^:\s'\"]+:([A-Za-z0-9+/=%]{16,})")


def canary_key() -> str:
    """A valid account key no other test uses: base64 of 64 bytes, with a recognisable prefix."""
    return base64.b64encode(b"CANARY" + uuid.uuid4().bytes + os.urandom(42)).decode()


# ----------------------------------------------------------------------------------------------------
# What counts as a secret, and finding one
# ----------------------------------------------------------------------------------------------------


@dataclass
class Canaries:
    """Secret values to look for, and where the texts to search came from."""

    secrets: set[str] = field(default_factory=set)
    minted: list[str] = field(default_factory=list)  # every SAS URL aiobatch minted

    def add(self, value: str) -> None:
        if value and len(value) >= 8:
            self.secrets.add(value)

    def forms(self) -> Iterator[str]:
        for secret in self.secrets:
            once = urllib.parse.quote(secret, safe="")
            yield from {secret, once, urllib.parse.quote_plus(secret), urllib.parse.quote(once, safe="")}

    def hits(self, text: str) -> list[str]:
        """Every leak in *text*: a canary in any encoding, or an unmasked signature of any kind."""
        found = [f"canary {form[:12]}..." for form in set(self.forms()) if form in text]
        found += [f"sig={m.group(1)[:12]}..." for m in _SIG.finditer(text) if not m.group(1).startswith(_MASKS)]
        found += [f"SharedKey ...:{m.group(1)[:12]}..." for m in _SHARED_KEY.finditer(text)]
        return found


class Recorder(logging.Handler):
    """Keeps every record as the user's handlers would see it: message and formatted traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[tuple[str, str]] = []
        self.formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append((record.name, self.format(record)))


def exception_texts(exc: BaseException) -> list[str]:
    """``str``, ``repr`` and the whole chained traceback of an exception, and of each cause."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return texts


def assert_no_leaks(canaries: Canaries, texts: Iterable[tuple[str, str]]) -> int:
    """Search every (source, text); fail listing each leak's source. Returns how many texts were searched."""
    count = 0
    leaks: list[str] = []
    for source, text in texts:
        count += 1
        leaks += [f"{source}: {hit}" for hit in canaries.hits(text)]
    assert not leaks, "secrets leaked:\n" + "\n".join(sorted(set(leaks))[:40])
    return count


# ----------------------------------------------------------------------------------------------------
# Recording what the SDKs sign and what aiobatch mints
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def canaries(monkeypatch: pytest.MonkeyPatch, azurite: AzuriteServer) -> Canaries:
    """Canaries, with every SAS signature and Shared Key signature recorded as it is made."""
    found = Canaries()
    found.add(azurite.account_key)

    def record_sas(url: str) -> str:
        found.minted.append(url)
        for value in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("sig", []):
            found.add(value)
        return url

    for name in ("input_sas_url", "output_container_sas_url"):
        original = getattr(aiobatch._sas, name)

        async def minted(*args: Any, __original: Callable[..., Any] = original, **kwargs: Any) -> str:
            return record_sas(await __original(*args, **kwargs))

        monkeypatch.setattr(aiobatch._sas, name, minted)

    original_batch_sign = batch_patch.BatchSharedKeyAuthPolicy._sign_string

    def batch_sign(self: Any, string_to_sign: str) -> str:
        signature = str(original_batch_sign(self, string_to_sign))
        found.add(signature)
        return signature

    monkeypatch.setattr(batch_patch.BatchSharedKeyAuthPolicy, "_sign_string", batch_sign)
    for module in [m for n, m in sys.modules.items() if n.startswith("azure.storage.blob") and m is not None]:
        original_sign = getattr(module, "sign_string", None)
        if callable(original_sign):

            def storage_sign(key: Any, text: str, __original: Callable[..., Any] = original_sign, **kw: Any) -> str:
                signature = str(__original(key, text, **kw))
                found.add(signature)
                return signature

            monkeypatch.setattr(module, "sign_string", storage_sign)
    return found


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """The root logger at DEBUG with a recording handler, and the SDKs' network trace switched on."""

    def with_trace(**kwargs: Any) -> dict[str, Any]:
        return sdk_client_kwargs(**{**kwargs, "logging_enable": True})

    monkeypatch.setattr(aiobatch._client, "sdk_client_kwargs", with_trace)
    monkeypatch.setattr(aiobatch._storage, "sdk_client_kwargs", with_trace)
    recorder = Recorder()
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(recorder)
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)
        root.setLevel(previous)


@pytest.fixture
async def canary_emulator(tmp_path: Path, canaries: Canaries) -> Any:
    key = canary_key()
    canaries.add(key)
    async with Emulator(workdir=tmp_path / "emu", account_key=key, timings=FAST_TIMINGS) as emulator:
        yield emulator


def settings_for(emulator: Emulator, azurite: AzuriteServer, *, key: str | None = None) -> tuple[Any, Any]:
    batch = BatchSettings(
        endpoint=emulator.endpoint,
        account_name=emulator.account_name,
        account_key=key or emulator.credential.named_key.key,
    )
    return batch, StorageSettings(connection_string=azurite.connection_string)


# ----------------------------------------------------------------------------------------------------
# The full run
# ----------------------------------------------------------------------------------------------------


async def test_a_full_run_with_network_tracing_leaks_no_secret(
    canary_emulator: Emulator,
    azurite: AzuriteServer,
    canaries: Canaries,
    traced: Recorder,
    fast_retry: Any,
    tmp_path: Path,
    leftovers: LeftoverCheck,
) -> None:
    emulator = canary_emulator
    inputs, outputs = f"sec-in-{uuid.uuid4().hex[:8]}", f"sec-out-{uuid.uuid4().hex[:8]}"
    files = tmp_path / "files"
    files.mkdir()
    for name in ("a.txt", "my cat.txt", "ünïcode.txt"):
        (files / name).write_text(f"contents of {name}\n" * 50)
    exceptions: list[BaseException] = []
    reprs: list[tuple[str, str]] = []

    batch, storage = settings_for(emulator, azurite)
    reprs += [("BatchSettings", repr(batch)), ("StorageSettings", repr(storage))]
    async with Client(batch, storage, cleanup=True, retry_policy=fast_retry, sas_policy=POLICY) as client:
        reprs.append(("Client", repr(client)))
        uploaded = await client.upload_files(inputs, sorted(files.iterdir()))
        reprs.append(("UploadResult", repr(uploaded)))
        pool = await client.ensure_pool(pool_spec("secret-pool"))
        status = await client.wait_for_pool_ready("secret-pool", timeout=30)
        reprs += [("PoolRef", repr(pool)), ("PoolStatus", repr(status)), ("describe", status.describe())]
        job = await client.create_job("secret-job", pool_id="secret-pool", on_all_tasks_complete="terminatejob")
        reprs.append(("JobRef", repr(job)))
        out_url = await client.output_container_sas_url(outputs)
        # Minted 2.5 s ago, valid for 1 s: expired before its task runs, with no wait on the wall clock.
        stale = await client.input_sas_url(inputs, "a.txt", sas_policy=minted_ago(SasPolicy(duration=0, margin=1), 2.5))
        specs = [
            TaskSpec(
                id=f"copy-{i}",
                command_line=command_line(["cp", "--", f.name, "copy.txt"]),
                resource_files=[resource_file(await client.input_sas_url(inputs, f.name))],
                output_files=[output_files_to(out_url, "copy.txt", path=f"copies/{f.name}")],
            )
            for i, f in enumerate(uploaded.files)
        ]
        specs.append(TaskSpec(id="fails", command_line="/bin/sh -c 'echo boom with no secret >&2; exit 3'"))
        specs.append(TaskSpec(id="refused", command_line="/bin/true", resource_files=[resource_file(stale)]))
        reprs += [(f"TaskSpec {s.id}", repr(s)) for s in specs]
        submitted = await client.submit_tasks("secret-job", specs)
        reprs.append(("SubmitResult", repr(submitted)))
        events = [event async for event in client.watch_tasks("secret-job")]
        for event in events:
            reprs.append((f"TaskEvent {event.task_id}", repr(event)))
            if event.failed:
                reprs.append((f"stderr {event.task_id}", await event.stderr_tail()))
                exceptions.append(event.error())
        downloaded = await client.download_outputs(outputs, tmp_path / "out")
        reprs.append(("DownloadResult", repr(downloaded)))
        summary = await client.wait_for_tasks("secret-job", timeout=10)
        reprs.append(("TaskSummary", repr(summary)))
        try:
            summary.raise_for_failures()
        except AiobatchError as exc:
            exceptions.append(exc)
        # Every SAS minted grants only what it must, for as long as the policy says (probed while it exists).
        await probe_sas_urls(canaries.minted, azurite)
    assert len(downloaded.files) == 3 and sorted(e.task_id for e in events if e.failed) == ["fails", "refused"]

    # Error paths: a wrong Batch key, a wrong storage key, a malformed key.
    wrong = canary_key()
    canaries.add(wrong)
    batch_wrong, _ = settings_for(emulator, azurite, key=wrong)
    storage_wrong = StorageSettings(connection_string=azurite.connection_string.replace(azurite.account_key, wrong))
    async with Client(batch_wrong, storage_wrong, retry_policy=fast_retry) as client:
        for attempt in (client.ensure_pool(pool_spec("never")), client.upload_files("never", [files / "a.txt"])):
            with pytest.raises(AuthenticationError) as caught:
                await attempt
            exceptions.append(caught.value)
    malformed = wrong[:-5] + "!"
    canaries.add(malformed)
    with pytest.raises(ConfigurationError) as bad_key:
        BatchSettings(endpoint=emulator.endpoint, account_name="acct", account_key=malformed)
    exceptions.append(bad_key.value)

    # The trace really was on (else this test proves nothing), and nothing leaked.
    names = {name for name, _ in traced.texts}
    assert "azure.core.pipeline.policies.http_logging_policy" in names, sorted(names)
    assert any("Authorization" in text for _, text in traced.texts)  # the header was logged, masked
    assert canaries.minted and len(canaries.secrets) > 10
    searched = assert_no_leaks(
        canaries,
        [
            *((f"log {name}", text) for name, text in traced.texts),
            *((f"exception {type(e).__name__}", text) for e in exceptions for text in exception_texts(e)),
            *((f"repr {what}", text) for what, text in reprs),
        ],
    )
    assert searched > 100
    assert (await leftovers(emulator, containers=[inputs, outputs])).nothing


# ----------------------------------------------------------------------------------------------------
# What each SAS allows
# ----------------------------------------------------------------------------------------------------


async def probe_sas_urls(urls: list[str], azurite: AzuriteServer) -> None:
    """Every minted SAS: least privilege (403 for everything else) and an expiry within the policy's bound."""
    now = dt.datetime.now(dt.timezone.utc)
    async with aiohttp.ClientSession() as http:
        for url in urls:
            parts = urllib.parse.urlsplit(url)
            query = urllib.parse.parse_qs(parts.query)
            start = dt.datetime.fromisoformat(query["st"][0].replace("Z", "+00:00"))
            expiry = dt.datetime.fromisoformat(query["se"][0].replace("Z", "+00:00"))
            assert start <= now, url  # backdated: usable at once despite clock skew
            if expiry > now:  # the deliberately short-lived one has expired; the rest follow POLICY
                bound = dt.timedelta(seconds=POLICY.duration + POLICY.margin + 5)
                assert expiry - now <= bound and expiry - now > bound - dt.timedelta(minutes=5), url
                assert now - start <= dt.timedelta(seconds=POLICY.backdate + 300)
            base = f"{parts.scheme}://{parts.netloc}{parts.path}"
            sas = parts.query
            if query["sr"] == ["b"]:  # a task's input: read this blob, nothing else
                assert query["sp"] == ["r"], url
                if expiry > now:
                    assert await status_of(http, "GET", f"{base}?{sas}") == 200
                container = base.rsplit("/", 1)[0]
                forbidden = [
                    ("PUT", f"{base}?{sas}", {"x-ms-blob-type": "BlockBlob"}),  # overwrite it
                    ("DELETE", f"{base}?{sas}", {}),
                    ("PUT", f"{container}/other.txt?{sas}", {"x-ms-blob-type": "BlockBlob"}),
                    ("GET", f"{container}/other.txt?{sas}", {}),  # another blob of the container
                    ("GET", f"{container}?restype=container&comp=list&{sas}", {}),
                    ("DELETE", f"{container}?restype=container&{sas}", {}),
                ]
            else:  # tasks' outputs: create and write blobs in this container, nothing else
                assert query["sr"] == ["c"] and query["sp"] == ["cw"], url
                forbidden = [
                    ("GET", f"{base}/copies/a.txt?{sas}", {}),  # read what a task wrote
                    ("GET", f"{base}?restype=container&comp=list&{sas}", {}),
                    ("DELETE", f"{base}/copies/a.txt?{sas}", {}),
                    ("DELETE", f"{base}?restype=container&{sas}", {}),
                    ("GET", f"{base}?restype=container&comp=acl&{sas}", {}),
                ]
            for method, target, headers in forbidden:
                got = await status_of(http, method, target, headers)
                assert got == 403, f"{method} {target.split('?')[0]} with a minted SAS: {got}, not 403"


async def status_of(http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str] | None = None) -> int:
    data = b"x" if method == "PUT" else None
    async with http.request(
        method, url, data=data, headers={"x-ms-version": "2021-12-02", **(headers or {})}
    ) as response:
        await response.read()
        return response.status


# ----------------------------------------------------------------------------------------------------
# Command lines: aiobatch emulator, and the example script
# ----------------------------------------------------------------------------------------------------


class CliEmulator:
    """``aiobatch emulator`` with a canary key, verbose, as a process; its output is kept."""

    def __init__(self, key: str, apps: Path, tmp: Path) -> None:
        options = ["-v", "--account-key", key, "--apps", str(apps), "--workdir", str(tmp)]
        options += ["--allocation-delay", "0.2", "--node-start-delay", "0.1"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiobatch.cli", "emulator", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            self.first = self._listening()
        except BaseException:
            # A start that failed (or timed out) must not leave the emulator running after the test.
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.communicate(timeout=20)
            raise
        self.endpoint = re.search(r"http://127\.0\.0\.1:\d+", self.first).group(0)  # type: ignore[union-attr]

    def _listening(self) -> str:
        assert self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline and selector.select(timeout=max(0.0, deadline - time.monotonic())):
            line = self.process.stdout.readline()
            lines.append(line)
            if "listening on" in line:
                return "".join(lines)
            if not line:
                break
        raise AssertionError(f"the emulator did not start: {lines}")

    def stop(self) -> tuple[str, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=20)
        return self.first + out, err


@pytest.fixture
def emulator_apps_dir(ffmpeg_apps_dir: Path) -> Path:
    return ffmpeg_apps_dir


async def run_script(env: dict[str, str], *args: str) -> str:
    with anyio.fail_after(90):
        done = await anyio.run_process(
            [sys.executable, str(SCRIPT), *args], env=env, check=False, stderr=subprocess.STDOUT
        )
    return f"exit {done.returncode}\n{done.stdout.decode(errors='replace')}"


async def test_cli_output_and_the_example_script_leak_no_secret(
    azurite: AzuriteServer,
    canaries: Canaries,
    ffmpeg_apps_dir: Path,
    tmp_path: Path,
    fast_retry: Any,
) -> None:
    key = canary_key()
    canaries.add(key)
    cli = CliEmulator(key, ffmpeg_apps_dir, tmp_path / "cli-emu")
    outputs: list[tuple[str, str]] = []
    try:
        # The SDK against the CLI emulator: a good request and a refused one (the emulator logs both).
        credential = AzureNamedKeyCredential("devbatchaccount1", key)
        async with BatchClient(cli.endpoint, credential, retry_total=0) as batch:  # type: ignore[arg-type]
            assert [p.id async for p in batch.list_pools()] == []
        wrong = canary_key()
        canaries.add(wrong)
        async with BatchClient(cli.endpoint, AzureNamedKeyCredential("devbatchaccount1", wrong)) as batch:  # type: ignore[arg-type]
            with pytest.raises(Exception):  # noqa: B017 (any refusal; what matters is what was printed)
                await batch.get_pool("nope", retry_total=0)

        videos = tmp_path / "videos"
        videos.mkdir()
        (videos / "corrupt cat.mp4").write_bytes(os.urandom(2000))
        env = {
            **os.environ,
            "AZURE_BATCH_ENDPOINT": cli.endpoint,
            "AZURE_BATCH_ACCOUNT_NAME": "devbatchaccount1",
            "AZURE_BATCH_ACCOUNT_KEY": key,
            "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
            "PYTHONUNBUFFERED": "1",
        }
        common = ["--input", str(videos), "--output", str(tmp_path / "gifs"), "--app-version", ffmpeg_version()]
        common += [
            "--input-container",
            f"sec-{uuid.uuid4().hex[:8]}",
            "--output-container",
            f"sec-{uuid.uuid4().hex[:8]}",
        ]
        common += ["--nodes", "1", "--pool-id", f"sec-{uuid.uuid4().hex[:8]}", "--plain"]
        run = await run_script(env, *common, "-v")
        assert run.startswith("exit 1") and "corrupt cat.mp4" in run, run  # ran, and the video failed
        outputs.append(("convert_pets.py -v", run))
        for label, bad in [("wrong key", wrong), ("malformed key", key[:-6] + "!!")]:
            canaries.add(bad)
            outputs.append(
                (f"convert_pets.py, {label}", await run_script({**env, "AZURE_BATCH_ACCOUNT_KEY": bad}, *common))
            )
        bad_storage = azurite.connection_string.replace(azurite.account_key, wrong)
        outputs.append(
            (
                "convert_pets.py, wrong storage key",
                await run_script({**env, "AZURE_STORAGE_CONNECTION_STRING": bad_storage}, *common),
            )
        )
    finally:
        out, err = cli.stop()
    outputs += [("aiobatch emulator stdout", out), ("aiobatch emulator stderr", err)]
    assert "the key you gave" in out
    assert_no_leaks(canaries, outputs)
    assert any("AZURE_BATCH_ACCOUNT_KEY" in text for _, text in outputs)  # the errors named the setting
