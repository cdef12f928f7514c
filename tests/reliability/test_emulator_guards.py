"""Issue 8, clause 10: the emulator itself refuses what the service refuses, and stays on loopback unless told.

- Every state-changing operation (and a read) sent without a signature, with a wrong one, signed for another
  request, or dated more than 15 minutes off the emulator's clock is refused (401/403) and changes nothing:
  the account's whole state -- pools, jobs, tasks, their ETags, what was ever created or deleted -- compares
  equal before and after. A correctly signed request 14 minutes off is accepted (the rule is 15, not 0).
- Pool, job and task ids are unique case-insensitively, case kept, through the real SDK.
- ``aiobatch emulator`` and `Emulator` bind 127.0.0.1 unless ``--host``/``host=`` says otherwise; the socket
  table and a connection to a non-loopback address are the evidence.

The Shared Key signer here is written from the service's documentation, not imported from the emulator, so the
emulator is checked against the scheme rather than against itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.exceptions import HttpResponseError, ResourceExistsError

from aiobatch.emulator import Emulator, Timings
from emulator._shared_key import signature  # the tests' own signer, independent of the emulator's

pytestmark = [pytest.mark.anyio, pytest.mark.clause(10)]

API = "api-version=2025-06-01"
FAST_TIMINGS = Timings(allocation_delay=0.1, node_start_delay=0.05, deletion_delay=0.05)


async def send(
    http: aiohttp.ClientSession,
    emulator: Emulator,
    method: str,
    path: str,
    body: Any = None,
    *,
    auth: str = "valid",
    skew: float = 0.0,
) -> tuple[int, Any]:
    """Send one request; *auth* is ``valid``, ``missing``, ``wrong-key``, ``other-request`` or ``garbage``."""
    url = f"{emulator.endpoint}{path}{'&' if '?' in path else '?'}{API}"
    data = None if body is None else json.dumps(body).encode()
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=skew)
    headers = {"ocp-date": format_datetime(when, usegmt=True)}
    if data is not None:
        headers["Content-Type"] = "application/json; odata=minimalmetadata"
    to_sign = dict(headers)
    if method not in ("GET", "HEAD"):
        to_sign["Content-Length"] = str(len(data or b""))
    key = emulator.credential.named_key.key
    account = emulator.account_name
    if auth == "valid":
        headers["Authorization"] = signature(method, url, to_sign, account, key)
    elif auth == "wrong-key":
        headers["Authorization"] = signature(method, url, to_sign, account, base64.b64encode(os.urandom(64)).decode())
    elif auth == "other-request":  # a valid signature, but of a harmless read of something else
        other = f"{emulator.endpoint}/applications?{API}"
        headers["Authorization"] = signature("GET", other, {"ocp-date": headers["ocp-date"]}, account, key)
    elif auth == "garbage":
        headers["Authorization"] = f"SharedKey {account}:not-base64!!"
    elif auth != "missing":
        raise ValueError(auth)
    async with http.request(method, url, data=data, headers=headers) as response:
        raw = await response.read()
        return response.status, (json.loads(raw) if raw else None)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# ----------------------------------------------------------------------------------------------------
# Refused, and nothing changed
# ----------------------------------------------------------------------------------------------------


def pool_body(pool_id: str, nodes: int = 1) -> dict[str, Any]:
    return {
        "id": pool_id,
        "vmSize": "standard_d2s_v3",
        "virtualMachineConfiguration": {
            "imageReference": {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server"},
            "nodeAgentSKUId": "batch.node.ubuntu 24.04",
        },
        "targetDedicatedNodes": nodes,
    }


#: One of each kind of state-changing request (and a read), aimed at what the setup below creates.
OPERATIONS: list[tuple[str, str, Any]] = [
    ("POST", "/pools", pool_body("intruder-pool")),
    ("DELETE", "/pools/guarded-pool", None),
    ("POST", "/pools/guarded-pool/resize", {"targetDedicatedNodes": 3}),
    ("PATCH", "/pools/guarded-pool", {"metadata": [{"name": "owner", "value": "intruder"}]}),
    ("POST", "/jobs", {"id": "intruder-job", "poolInfo": {"poolId": "guarded-pool"}}),
    ("PATCH", "/jobs/guarded-job", {"priority": 999}),
    ("POST", "/jobs/guarded-job/terminate", None),
    ("DELETE", "/jobs/guarded-job", None),
    ("POST", "/jobs/guarded-job/tasks", {"id": "intruder-task", "commandLine": "/bin/sh -c 'touch /tmp/x'"}),
    ("POST", "/jobs/guarded-job/addtaskcollection", {"value": [{"id": "intruder-1", "commandLine": "/bin/true"}]}),
    ("DELETE", "/jobs/guarded-job/tasks/guarded-task", None),
    ("POST", "/jobs/guarded-job/tasks/guarded-task/terminate", None),
    ("GET", "/pools", None),
]

BAD_AUTH: list[tuple[str, float]] = [
    ("missing", 0.0),
    ("garbage", 0.0),
    ("wrong-key", 0.0),
    ("other-request", 0.0),
    ("valid", -16 * 60.0),  # stale: more than 15 minutes behind the emulator's clock
    ("valid", +16 * 60.0),  # and ahead of it
    ("valid", -24 * 3600.0),
]


def account_state(emulator: Emulator) -> Any:
    """Everything a refused request could have changed, in a comparable form."""
    account = emulator.account
    assert account is not None
    return {
        "pools": {
            key: (p.id, p.state, p.etag, p.target_dedicated, p.allocation_state, json.dumps(p.spec, sort_keys=True))
            for key, p in account.pools.items()
        },
        "jobs": {
            key: (
                j.id,
                j.state,
                j.etag,
                json.dumps(j.spec, sort_keys=True, default=str),
                {tk: (t.id, t.state, t.etag) for tk, t in j.tasks.items()},
            )
            for key, j in account.jobs.items()
        },
        "created": dict(account.created),
        "deleted": dict(account.deleted),
    }


@pytest.fixture
async def guarded(http: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[Emulator]:
    """An emulator holding a steady pool, an active job and a long-running task: something to protect."""
    async with Emulator(workdir=tmp_path / "emu", timings=FAST_TIMINGS) as emulator:
        assert (await send(http, emulator, "POST", "/pools", pool_body("guarded-pool")))[0] == 201
        job = {"id": "guarded-job", "poolInfo": {"poolId": "guarded-pool"}}
        assert (await send(http, emulator, "POST", "/jobs", job))[0] == 201
        task = {"id": "guarded-task", "commandLine": "/bin/sh -c 'sleep 60'"}
        assert (await send(http, emulator, "POST", "/jobs/guarded-job/tasks", task))[0] == 201
        assert emulator.account is not None
        with anyio.fail_after(10):
            while emulator.account.jobs["guarded-job"].tasks["guarded-task"].state != "running":
                await anyio.sleep(0.05)
        yield emulator


async def test_unsigned_wrongly_signed_and_stale_requests_are_refused_and_change_nothing(
    http: aiohttp.ClientSession, guarded: Emulator
) -> None:
    before = account_state(guarded)
    refused: list[str] = []
    for auth, skew in BAD_AUTH:
        for method, path, body in OPERATIONS:
            status, answer = await send(http, guarded, method, path, body, auth=auth, skew=skew)
            label = f"{method} {path} ({auth}, {skew:+.0f} s)"
            assert status in (401, 403), f"{label}: {status} {answer}"
            code = (answer or {}).get("code")
            assert code in ("MissingRequiredHeader", "AuthenticationFailed", "InvalidAuthenticationInfo"), label
            if method == "GET":
                assert "guarded-pool" not in json.dumps(answer), label  # nothing read either
            refused.append(label)
    assert len(refused) == len(BAD_AUTH) * len(OPERATIONS)
    assert account_state(guarded) == before
    assert guarded.account is not None
    assert guarded.account.jobs["guarded-job"].tasks["guarded-task"].state == "running"


async def test_the_stale_date_rule_is_fifteen_minutes_either_way(
    http: aiohttp.ClientSession, guarded: Emulator
) -> None:
    for skew, accepted in [(-14 * 60, True), (14 * 60, True), (-15 * 60 - 30, False), (15 * 60 + 30, False)]:
        status, answer = await send(http, guarded, "GET", "/pools", auth="valid", skew=skew)
        assert (status == 200) is accepted, (skew, status, answer)
        if not accepted:
            assert status == 403 and "15 minutes" in json.dumps(answer)


async def test_a_stale_signed_create_does_not_create_and_a_fresh_one_does(
    http: aiohttp.ClientSession, guarded: Emulator
) -> None:
    assert guarded.account is not None
    status, _ = await send(http, guarded, "POST", "/pools", pool_body("late-pool"), skew=-20 * 60)
    assert status == 403 and "late-pool" not in guarded.account.pools
    assert ("pool", "late-pool") not in guarded.account.created
    status, _ = await send(http, guarded, "POST", "/pools", pool_body("late-pool"))
    assert status == 201 and guarded.account.created[("pool", "late-pool")] == 1


async def test_the_sdk_with_a_wrong_key_is_refused_and_changes_nothing(guarded: Emulator) -> None:
    before = account_state(guarded)
    wrong = base64.b64encode(os.urandom(64)).decode()
    from azure.core.credentials import AzureNamedKeyCredential

    credential = AzureNamedKeyCredential(guarded.account_name, wrong)
    async with BatchClient(guarded.endpoint, credential, retry_total=0) as batch:  # type: ignore[arg-type]
        with pytest.raises(HttpResponseError) as caught:
            await batch.create_job(m.BatchJobCreateOptions(id="sdk-job", pool_info=m.BatchPoolInfo(pool_id="x")))
        assert caught.value.status_code == 403
        with pytest.raises(HttpResponseError):
            await batch.begin_delete_pool("guarded-pool")
    assert account_state(guarded) == before


# ----------------------------------------------------------------------------------------------------
# Case-insensitive ids, through the real SDK
# ----------------------------------------------------------------------------------------------------


def sdk_pool(pool_id: str) -> m.BatchPoolCreateOptions:
    return m.BatchPoolCreateOptions(
        id=pool_id,
        vm_size="standard_d2s_v3",
        virtual_machine_configuration=m.VirtualMachineConfiguration(
            image_reference=m.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts", sku="server"),
            node_agent_sku_id="batch.node.ubuntu 24.04",
        ),
        target_dedicated_nodes=0,
    )


async def test_ids_are_unique_case_insensitively_and_keep_their_case(batch_emulator: Emulator) -> None:
    account = batch_emulator.account
    assert account is not None
    async with BatchClient(batch_emulator.endpoint, batch_emulator.credential, retry_total=0) as batch:  # type: ignore[arg-type]
        await batch.create_pool(sdk_pool("Pets-Pool"))
        for other in ("pets-pool", "PETS-POOL", "pets-POOL"):
            with pytest.raises(ResourceExistsError) as pool_error:
                await batch.create_pool(sdk_pool(other))
            assert pool_error.value.error is not None and pool_error.value.error.code == "PoolExists"
        assert (await batch.get_pool("pets-pool")).id == "Pets-Pool"  # found either way, spelled as created

        await batch.create_job(m.BatchJobCreateOptions(id="Convert", pool_info=m.BatchPoolInfo(pool_id="PETS-pool")))
        with pytest.raises(ResourceExistsError) as job_error:
            await batch.create_job(m.BatchJobCreateOptions(id="CONVERT", pool_info=m.BatchPoolInfo(pool_id="x")))
        assert job_error.value.error is not None and job_error.value.error.code == "JobExists"
        assert (await batch.get_job("convert")).id == "Convert"

        await batch.create_task("convert", m.BatchTaskCreateOptions(id="Task-1", command_line="/bin/true"))
        with pytest.raises(ResourceExistsError) as task_error:
            await batch.create_task("Convert", m.BatchTaskCreateOptions(id="TASK-1", command_line="/bin/true"))
        assert task_error.value.error is not None and task_error.value.error.code == "TaskExists"

        # In a collection: an id taken in another case, and two ids in one request that differ only in case.
        collection = m.BatchTaskGroup(
            task_values=[
                m.BatchTaskCreateOptions(id="task-1", command_line="/bin/true"),
                m.BatchTaskCreateOptions(id="Twin", command_line="/bin/true"),
                m.BatchTaskCreateOptions(id="twin", command_line="/bin/true"),
                m.BatchTaskCreateOptions(id="Fresh", command_line="/bin/true"),
            ]
        )
        answer = await batch.create_task_collection("convert", collection)
        results = {r.task_id: r for r in answer.result_values or []}
        # The enum's value, compared without case: the spec spelled it clientError, then clienterror.
        status = {tid: str(getattr(r.status, "value", r.status)).lower() for tid, r in results.items()}
        assert status["task-1"] == "clienterror" and results["task-1"].error.code == "TaskExists"  # type: ignore[union-attr]
        assert status["Fresh"] == "success"
        assert sorted(s.endswith("success") for t, s in status.items() if t.lower() == "twin") == [False, True]
        tasks = sorted([t.id async for t in batch.list_tasks("CONVERT")])  # type: ignore[type-var]
        assert [t.lower() for t in tasks] == ["fresh", "task-1", "twin"]

    # The server's own count: each id (folded) committed exactly once.
    assert account.created[("pool", "pets-pool")] == 1
    assert account.created[("job", "convert")] == 1
    assert all(count == 1 for (kind, _), count in account.created.items() if kind == "task")
    assert len([k for k in account.created if k[0] == "task"]) == 3


async def test_an_id_frees_up_once_deleted_but_not_while_deleting(tmp_path: Path) -> None:
    timings = Timings(allocation_delay=0.1, node_start_delay=0.05, deletion_delay=1.0)
    async with (
        Emulator(workdir=tmp_path, timings=timings) as emulator,
        BatchClient(emulator.endpoint, emulator.credential, retry_total=0) as batch,  # type: ignore[arg-type]
    ):
        await batch.create_pool(sdk_pool("Reused"))
        await batch.begin_delete_pool("REUSED")  # the request only; the deletion takes a second
        with pytest.raises(HttpResponseError) as caught:
            await batch.create_pool(sdk_pool("reused"))
        assert caught.value.status_code == 409 and caught.value.error is not None
        assert caught.value.error.code == "PoolBeingDeleted"
        with anyio.fail_after(10):
            while emulator.account is not None and "reused" in emulator.account.pools:
                await anyio.sleep(0.05)
        await batch.create_pool(sdk_pool("reused"))
        assert (await batch.get_pool("REUSED")).id == "reused"


# ----------------------------------------------------------------------------------------------------
# Loopback unless told otherwise
# ----------------------------------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Addresses with a listening TCP socket on *port*, from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        table = Path("/proc/net") / name
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if int(port_hex, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # host-order 32-bit words
            found.add(socket.inet_ntop(family, words))
    return found


def outside_address() -> str | None:
    """This machine's address on its first non-loopback route, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.254", 9))  # no packet is sent: connect() on UDP only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


LISTENING = re.compile(r"listening on http://([0-9.]+|\[[0-9a-f:]+\]):(\d+)\b")


class CliEmulator:
    """``aiobatch emulator`` as a process, started the way a user starts it."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aiobatch.cli", "emulator", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.host, self.port = self._listening()

    def _listening(self, limit: float = 30.0) -> tuple[str, int]:
        assert self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and selector.select(timeout=max(0.0, deadline - time.monotonic())):
            line = self.process.stdout.readline()
            match = LISTENING.search(line)
            if match:
                return match.group(1), int(match.group(2))
            if not line:
                break
        self.stop()
        raise AssertionError(
            f"no 'listening on' line; stderr: {self.process.stderr.read() if self.process.stderr else ''}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def cli() -> Iterator[list[CliEmulator]]:
    started: list[CliEmulator] = []
    yield started
    for emulator in started:
        emulator.stop()


needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the socket table from /proc (Linux)")


@needs_proc
def test_the_cli_binds_loopback_by_default(cli: list[CliEmulator]) -> None:
    cli.append(emulator := CliEmulator())
    assert emulator.host == "127.0.0.1"
    assert listening_addresses(emulator.port) == {"127.0.0.1"}
    assert reachable("127.0.0.1", emulator.port)
    outside = outside_address()
    if outside is not None:  # the proof a neighbour would see: refused from outside loopback
        assert not reachable(outside, emulator.port)


@needs_proc
def test_the_cli_binds_elsewhere_only_when_told(cli: list[CliEmulator]) -> None:
    cli.append(emulator := CliEmulator("--host", "0.0.0.0"))
    assert emulator.host == "0.0.0.0"
    assert listening_addresses(emulator.port) == {"0.0.0.0"}
    outside = outside_address()
    if outside is not None:
        assert reachable(outside, emulator.port)
        cli.append(pinned := CliEmulator("--host", outside))
        assert listening_addresses(pinned.port) == {outside}
        assert not reachable("127.0.0.1", pinned.port)


@needs_proc
async def test_the_library_and_the_test_fixture_bind_loopback(batch_emulator: Emulator, tmp_path: Path) -> None:
    async with Emulator(workdir=tmp_path / "own") as own:
        for emulator in (batch_emulator, own):
            assert emulator.host == "127.0.0.1" and emulator.endpoint.startswith("http://127.0.0.1:")
            assert listening_addresses(emulator.port) == {"127.0.0.1"}
