"""Shared Key verification: what the service refuses, the emulator refuses, with its error body, and changes nothing.

Refused requests are made by hand (``_shared_key.send``): the SDK cannot be made to sign badly on purpose, except
with a wrong key, which is tested through it as well.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from aiobatch.emulator import Emulator
from aiobatch.emulator.__main__ import build_parser

from ._shared_key import send

pytestmark = pytest.mark.anyio

API = "api-version=2025-06-01"
POOL = {
    "id": "p",
    "vmSize": "standard_d2s_v3",
    "virtualMachineConfiguration": {
        "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"},
        "nodeAgentSKUId": "batch.node.ubuntu 22.04",
    },
    "targetDedicatedNodes": 1,
}
WRONG_KEY = base64.b64encode(b"not the account key, but well formed").decode()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def nothing_created(emu: Emulator) -> None:
    assert emu.account is not None
    assert not emu.account.pools and not emu.account.jobs, "a refused request must change nothing"


def assert_refusal(
    status: int, headers: Mapping[str, str], body: Any, *, expected_status: int, code: str, endpoint: str
) -> None:
    assert status == expected_status
    assert body is not None, "refusals carry the OData error body"
    assert (
        body["odata.metadata"]
        == f"{endpoint}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
    )
    assert body["code"] == code
    assert body["message"]["lang"] == "en-US"
    assert f"RequestId:{headers['request-id']}" in body["message"]["value"]
    assert headers["DataServiceVersion"] == "3.0"
    assert headers["Content-Type"].startswith("application/json")


async def test_a_correctly_signed_request_is_accepted(http: aiohttp.ClientSession, batch_emulator: Emulator) -> None:
    # The control for every refusal below: the same hand-made signing, done right, works.
    kw = {"account": batch_emulator.account_name, "key": batch_emulator.credential.named_key.key}
    status, headers, _ = await send(http, "POST", f"{batch_emulator.endpoint}/pools?{API}", body=POOL, **kw)
    assert status == 201 and headers["ETag"]
    status, _, body = await send(http, "GET", f"{batch_emulator.endpoint}/pools?{API}&maxresults=1&$select=id", **kw)
    assert status == 200 and body["value"] == [{"id": "p"}]


async def test_missing_authorization_is_401_and_creates_nothing(
    http: aiohttp.ClientSession, batch_emulator: Emulator
) -> None:
    kw = {"account": batch_emulator.account_name, "key": batch_emulator.credential.named_key.key}
    status, headers, body = await send(
        http, "POST", f"{batch_emulator.endpoint}/pools?{API}", body=POOL, authorization=None, **kw
    )
    assert_refusal(
        status, headers, body, expected_status=401, code="MissingRequiredHeader", endpoint=batch_emulator.endpoint
    )
    assert {v["key"]: v["value"] for v in body["values"]} == {"HeaderName": "Authorization"}
    job = {"id": "j", "poolInfo": {"poolId": "p"}}
    status, _, _ = await send(http, "POST", f"{batch_emulator.endpoint}/jobs?{API}", body=job, authorization=None, **kw)
    assert status == 401
    nothing_created(batch_emulator)


async def test_a_wrong_key_is_403_authentication_failed(http: aiohttp.ClientSession, batch_emulator: Emulator) -> None:
    status, headers, body = await send(
        http,
        "POST",
        f"{batch_emulator.endpoint}/pools?{API}",
        body=POOL,
        account=batch_emulator.account_name,
        key=WRONG_KEY,
    )
    assert_refusal(
        status, headers, body, expected_status=403, code="AuthenticationFailed", endpoint=batch_emulator.endpoint
    )
    assert {v["key"] for v in body["values"]} == {"AuthenticationErrorDetail"}
    nothing_created(batch_emulator)


async def test_a_signature_for_another_account_is_refused(
    http: aiohttp.ClientSession, batch_emulator: Emulator
) -> None:
    # The right key, but signed (and presented) for another account name.
    status, headers, body = await send(
        http,
        "POST",
        f"{batch_emulator.endpoint}/pools?{API}",
        body=POOL,
        account="someotheraccount",
        key=batch_emulator.credential.named_key.key,
    )
    assert_refusal(
        status, headers, body, expected_status=403, code="AuthenticationFailed", endpoint=batch_emulator.endpoint
    )
    nothing_created(batch_emulator)


@pytest.mark.parametrize("skew_minutes", [-16, 16, -60 * 24])
async def test_a_stale_or_future_ocp_date_is_refused(
    http: aiohttp.ClientSession, batch_emulator: Emulator, skew_minutes: int
) -> None:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=skew_minutes)
    status, headers, body = await send(
        http,
        "POST",
        f"{batch_emulator.endpoint}/pools?{API}",
        body=POOL,
        date=when,
        account=batch_emulator.account_name,
        key=batch_emulator.credential.named_key.key,
    )
    assert_refusal(
        status, headers, body, expected_status=403, code="AuthenticationFailed", endpoint=batch_emulator.endpoint
    )
    nothing_created(batch_emulator)


async def test_a_date_within_the_allowed_skew_is_accepted(
    http: aiohttp.ClientSession, batch_emulator: Emulator
) -> None:
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=14)
    status, _, _ = await send(
        http,
        "GET",
        f"{batch_emulator.endpoint}/pools?{API}",
        date=when,
        account=batch_emulator.account_name,
        key=batch_emulator.credential.named_key.key,
    )
    assert status == 200


@pytest.mark.parametrize(
    ("method", "sent", "signed"),
    [
        ("GET", "/jobs?{api}", "/pools?{api}"),  # another path
        ("GET", "/pools?{api}&maxresults=2", "/pools?{api}&maxresults=1"),  # another query value
        ("GET", "/pools?{api}&$select=id", "/pools?{api}"),  # a query parameter added after signing
        ("DELETE", "/pools/p?{api}", "/pools/p?{api}"),  # another method (signed as GET)
    ],
)
async def test_a_signature_over_a_different_request_is_refused(
    http: aiohttp.ClientSession, batch_emulator: Emulator, method: str, sent: str, signed: str
) -> None:
    kw = {"account": batch_emulator.account_name, "key": batch_emulator.credential.named_key.key}
    assert (await send(http, "POST", f"{batch_emulator.endpoint}/pools?{API}", body=POOL, **kw))[0] == 201
    status, headers, body = await send(
        http,
        method,
        batch_emulator.endpoint + sent.format(api=API),
        sign_url=batch_emulator.endpoint + signed.format(api=API),
        sign_method="GET" if method == "DELETE" else None,
        **kw,
    )
    assert_refusal(
        status, headers, body, expected_status=403, code="AuthenticationFailed", endpoint=batch_emulator.endpoint
    )
    assert batch_emulator.account is not None and batch_emulator.account.pools["p"].state == "active"


async def test_a_body_other_than_the_signed_one_is_refused(
    http: aiohttp.ClientSession, batch_emulator: Emulator
) -> None:
    # Shared Key signs the body's length (not its bytes), so a body of another length breaks the signature.
    signed_body = b'{"id": "p"}'
    status, headers, body = await send(
        http,
        "POST",
        f"{batch_emulator.endpoint}/pools?{API}",
        body=POOL,
        sign_body=signed_body,
        account=batch_emulator.account_name,
        key=batch_emulator.credential.named_key.key,
    )
    assert_refusal(
        status, headers, body, expected_status=403, code="AuthenticationFailed", endpoint=batch_emulator.endpoint
    )
    nothing_created(batch_emulator)


async def test_a_bearer_token_is_refused(http: aiohttp.ClientSession, batch_emulator: Emulator) -> None:
    # Entra ID tokens cannot be validated on loopback: the emulator speaks Shared Key only, and says so.
    status, headers, body = await send(
        http,
        "POST",
        f"{batch_emulator.endpoint}/pools?{API}",
        body=POOL,
        authorization="Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.e30.c2ln",
        account=batch_emulator.account_name,
        key=batch_emulator.credential.named_key.key,
    )
    assert_refusal(
        status, headers, body, expected_status=401, code="InvalidAuthenticationInfo", endpoint=batch_emulator.endpoint
    )
    assert "Shared Key" in body["values"][0]["value"]
    nothing_created(batch_emulator)


async def test_the_sdk_with_a_wrong_key_is_refused(batch_emulator: Emulator) -> None:
    credential = AzureNamedKeyCredential(batch_emulator.account_name, WRONG_KEY)
    async with BatchClient(batch_emulator.endpoint, credential) as batch:
        with pytest.raises((ClientAuthenticationError, HttpResponseError)) as caught:
            await batch.create_pool(
                m.BatchPoolCreateOptions(
                    id="p",
                    vm_size="standard_d2s_v3",
                    virtual_machine_configuration=m.VirtualMachineConfiguration(
                        image_reference=m.BatchVmImageReference(
                            publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
                        ),
                        node_agent_sku_id="batch.node.ubuntu 22.04",
                    ),
                )
            )
        assert caught.value.status_code in (401, 403)
        assert caught.value.error is not None and caught.value.error.code == "AuthenticationFailed"
        with pytest.raises((ClientAuthenticationError, HttpResponseError)):
            [p async for p in batch.list_pools()]
    nothing_created(batch_emulator)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if int(port_hex, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, words))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the socket table from /proc (Linux)")
async def test_the_emulator_binds_to_loopback_by_default(tmp_path: Path) -> None:
    assert build_parser().parse_args([]).host == "127.0.0.1"
    async with Emulator(workdir=tmp_path) as emu:
        assert emu.endpoint.startswith("http://127.0.0.1:")
        port = int(emu.endpoint.rsplit(":", 1)[1])
        assert _listening_addresses(port) == {"127.0.0.1"}
