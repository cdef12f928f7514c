"""The storage fault proxy itself: transparent when quiet, each kind as specified, counted, seeded, aimable, and silent
about secrets."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import logging
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobSasPermissions, ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobClient, BlobServiceClient

from aiobatch._azurite import AzuriteServer
from aiobatch._config import StorageSettings
from aiobatch._faultproxy import StorageFaultProxy
from aiobatch._retry import sdk_client_kwargs
from aiobatch._sas import input_sas_url, output_container_sas_url
from aiobatch._storage import blob_service_client

BODY = bytes(range(256)) * 300  # 76,800 bytes: several of the proxy's 64 KiB chunks


def new_container() -> str:
    return f"p-{uuid.uuid4().hex[:20]}"


@pytest.fixture
async def direct(azurite: AzuriteServer) -> AsyncIterator[BlobServiceClient]:
    """A client straight to Azurite, for setting up and for checking what really happened."""
    async with blob_service_client(StorageSettings(connection_string=azurite.connection_string)) as svc:
        yield svc


async def seeded_blobs(direct: BlobServiceClient, count: int, body: bytes = BODY) -> tuple[str, list[str]]:
    container = new_container()
    await direct.create_container(container)
    names = [f"dir/blob {i} ü.bin" for i in range(count)]
    for name in names:
        await direct.get_blob_client(container, name).upload_blob(body)
    return container, names


def read_sas(azurite: AzuriteServer, container: str) -> str:
    return generate_container_sas(
        azurite.account_name,
        container,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )


def blob_url(proxy: StorageFaultProxy, container: str, name: str, sas: str) -> str:
    return f"{proxy.blob_endpoint}/{container}/{urllib.parse.quote(name)}?{sas}"


def plain_session() -> aiohttp.ClientSession:
    """A session that sends each request exactly once.

    aiohttp silently re-sends an idempotent request (GET, HEAD, PUT, DELETE) once when the connection drops
    before an answer (ServerDisconnectedError, ClientOSError); here that would blur one request, and one fault,
    into two. Its own test utilities switch that off the same way.
    """
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    session._retry_connection = False
    return session


async def raw_get(session: aiohttp.ClientSession, url: str) -> tuple[str, int, bytes, dict[str, str]]:
    """GET with plain aiohttp, so nothing retries; returns (outcome, status, body, headers)."""
    try:
        async with session.get(url) as response:
            body = await response.read()
            return "answer", response.status, body, dict(response.headers)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return "dropped", 0, b"", {}


# ----------------------------------------------------------------------------------------------------
# Transparent when quiet
# ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_shared_key_and_sas_pass_through_unchanged(
    storage_faults: StorageFaultProxy, direct: BlobServiceClient, azurite: AzuriteServer
) -> None:
    container = new_container()
    assert storage_faults.blob_endpoint.endswith(f":{storage_faults.port}/{azurite.account_name}")
    assert storage_faults.port != azurite.port
    settings = StorageSettings(connection_string=storage_faults.connection_string)
    async with blob_service_client(settings) as via:
        # Shared Key signs account, path, query and x-ms-* headers, not Host: every call below is signed for
        # the proxy's host and port and still accepted by Azurite behind it.
        await via.create_container(container)
        blob = via.get_blob_client(container, "sub dir/ü 猫.bin")
        await blob.upload_blob(BODY, validate_content=True, metadata={"k": "v"})
        await blob.stage_block("YmxvY2stMA==", b"x" * 10, validate_content=True)
        through = await blob.get_blob_properties()
        straight = await direct.get_blob_client(container, "sub dir/ü 猫.bin").get_blob_properties()
        assert (through.etag, through.size, through.metadata) == (straight.etag, straight.size, {"k": "v"})
        assert through.content_settings.content_md5 == straight.content_settings.content_md5
        assert await (await blob.download_blob()).readall() == BODY
        assert await (await blob.download_blob(offset=1000, length=70_000)).readall() == BODY[1000:71_000]
        assert [b.name async for b in via.get_container_client(container).list_blobs()] == ["sub dir/ü 猫.bin"]

        # SAS minted for the proxy's URL: read works, write is still refused by Azurite (403, passed through).
        url = await input_sas_url(via, container, "sub dir/ü 猫.bin")
        assert url.startswith(storage_faults.blob_endpoint)
        async with BlobClient.from_blob_url(url, **sdk_client_kwargs()) as sas_blob:
            assert await (await sas_blob.download_blob()).readall() == BODY
            with pytest.raises(HttpResponseError) as info:
                await sas_blob.upload_blob(b"no", overwrite=True)
            assert info.value.status_code == 403
        out = await output_container_sas_url(via, container)
        async with BlobClient.from_blob_url(out.replace("?", "/task%201/o.gif?", 1), **sdk_client_kwargs()) as dest:
            await dest.upload_blob(b"GIF89a")
        assert await (await direct.get_blob_client(container, "task 1/o.gif").download_blob()).readall() == b"GIF89a"

    # A SAS minted against Azurite's own address works through the proxy too: nothing signs the host.
    token = generate_container_sas(
        azurite.account_name,
        container,
        account_key=azurite.account_key,
        permission=BlobSasPermissions(read=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )
    async with plain_session() as session:
        outcome, status, body, headers = await raw_get(
            session, blob_url(storage_faults, container, "sub dir/ü 猫.bin", token)
        )
    assert (outcome, status, body) == ("answer", 200, BODY)
    assert headers["Content-MD5"] == urllib.parse.unquote(headers["Content-MD5"])  # untouched header
    assert storage_faults.injected == {} and storage_faults.forwarded["PUT"] >= 4


# ----------------------------------------------------------------------------------------------------
# Each kind
# ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("storage_faults", [{"503": 1.0, "seed": 1}], indirect=True)
async def test_503_answers_server_busy_without_forwarding(
    storage_faults: StorageFaultProxy, direct: BlobServiceClient
) -> None:
    container, _ = await seeded_blobs(direct, 0)
    settings = StorageSettings(connection_string=storage_faults.connection_string)
    async with blob_service_client(settings) as via:
        with pytest.raises(HttpResponseError) as info:
            await via.get_blob_client(container, "new.bin").upload_blob(BODY)
        assert info.value.status_code == 503 and info.value.error_code == "ServerBusy"
        with pytest.raises(HttpResponseError) as head:
            await via.get_blob_client(container, "new.bin").get_blob_properties()  # HEAD: code from the header
        assert head.value.status_code == 503 and head.value.error_code == "ServerBusy"
    assert not await direct.get_blob_client(container, "new.bin").exists()  # never forwarded
    assert storage_faults.injected == {"503": 2} and sum(storage_faults.forwarded.values()) == 0
    assert [(i.kind, i.method, i.forwarded) for i in storage_faults.injections] == [
        ("503", "PUT", False),
        ("503", "HEAD", False),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("storage_faults", [{"flip": 1.0, "seed": 2}], indirect=True)
async def test_flip_changes_one_byte_and_keeps_the_headers(
    storage_faults: StorageFaultProxy, direct: BlobServiceClient, azurite: AzuriteServer
) -> None:
    container, names = await seeded_blobs(direct, 5)
    sas = read_sas(azurite, container)
    stored_md5 = hashlib.md5(BODY).digest()
    async with plain_session() as session:
        for name in names:
            outcome, status, body, headers = await raw_get(session, blob_url(storage_faults, container, name, sas))
            assert (outcome, status, len(body)) == ("answer", 200, len(BODY))
            diffs = [i for i in range(len(BODY)) if body[i] != BODY[i]]
            assert len(diffs) == 1, diffs
            assert base64.b64decode(headers["Content-MD5"]) == stored_md5 != hashlib.md5(body).digest()
        # Listing and properties are not blob data: never flipped.
        listing = f"{storage_faults.blob_endpoint}/{container}?restype=container&comp=list&{sas}"
        outcome, status, xml, _ = await raw_get(session, listing)
        assert (outcome, status) == ("answer", 200) and xml.decode().count("<Blob>") == len(names)
    assert storage_faults.injected == {"flip": 5}
    assert sorted(int(i.variant.split()[1]) for i in storage_faults.injections) != [0] * 5  # random offsets


@pytest.mark.anyio
@pytest.mark.parametrize("storage_faults", [{"reset": 1.0, "seed": 3}], indirect=True)
async def test_reset_cuts_an_answer_mid_body(
    storage_faults: StorageFaultProxy, direct: BlobServiceClient, azurite: AzuriteServer
) -> None:
    container, names = await seeded_blobs(direct, 10)
    sas = read_sas(azurite, container)
    async with plain_session() as session:
        outcomes = [(await raw_get(session, blob_url(storage_faults, container, n, sas)))[0] for n in names]
    assert outcomes == ["dropped"] * 10
    assert storage_faults.injected == {"reset": 10} and storage_faults.forwarded["GET"] == 10
    assert {i.variant for i in storage_faults.injections} == {"mid-body"}


@pytest.mark.anyio
@pytest.mark.parametrize("storage_faults", [{"reset": 1.0, "seed": 4, "methods": ["PUT"]}], indirect=True)
async def test_reset_of_an_upload_drops_it_before_or_after_it_takes_effect(
    storage_faults: StorageFaultProxy, direct: BlobServiceClient, azurite: AzuriteServer
) -> None:
    container, _ = await seeded_blobs(direct, 0)
    sas = generate_container_sas(
        azurite.account_name,
        container,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(create=True, write=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )
    names = [f"up {i}.bin" for i in range(24)]
    async with plain_session() as session:
        for name in names:
            url = blob_url(storage_faults, container, name, sas)
            with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
                async with session.put(url, data=BODY, headers={"x-ms-blob-type": "BlockBlob"}) as response:
                    await response.read()
    variants = {i.target.split("?")[0]: i.variant for i in storage_faults.injections}
    assert len(variants) == len(names) and set(variants.values()) == {"before-forward", "no-answer"}
    for name in names:
        exists = await direct.get_blob_client(container, name).exists()
        variant = variants[f"/{azurite.account_name}/{container}/{urllib.parse.quote(name)}"]
        # Before forwarding the upload never happened; with no answer it did.
        assert exists == (variant == "no-answer"), (name, variant)
    assert storage_faults.forwarded["PUT"] == sum(v == "no-answer" for v in variants.values())


# ----------------------------------------------------------------------------------------------------
# Seeds, counts, aiming
# ----------------------------------------------------------------------------------------------------


async def run_reads(proxy: StorageFaultProxy, container: str, names: list[str], sas: str) -> list[tuple[str, Any]]:
    """Read every blob twice, concurrently; return what the client saw per request (sorted)."""
    seen: list[tuple[str, Any]] = []
    async with plain_session() as session:

        async def read(name: str, round_: int) -> None:
            outcome, status, body, _ = await raw_get(session, blob_url(proxy, container, name, sas))
            digest = hashlib.md5(body).hexdigest() if status == 200 else ""  # a 503's body has a request id
            seen.append((f"{name}#{round_}", (outcome, status, digest)))

        for round_ in range(2):
            async with anyio.create_task_group() as tg:
                for name in names if round_ == 0 else reversed(names):
                    tg.start_soon(read, name, round_)
    return sorted(seen)


@pytest.mark.anyio
async def test_same_seed_same_faults_even_concurrently(direct: BlobServiceClient, azurite: AzuriteServer) -> None:
    container, names = await seeded_blobs(direct, 60)
    sas = read_sas(azurite, container)
    rates = {"503": 0.2, "reset": 0.2, "flip": 0.2}
    runs = []
    for seed in (11, 11, 12):
        async with StorageFaultProxy(azurite.blob_endpoint, seed=seed, rates=rates) as proxy:
            seen = await run_reads(proxy, container, names, sas)
            runs.append((seen, dict(proxy.injected), sorted(proxy.injections, key=lambda i: i.target)))
            # The proxy's counts are what the client observed.
            outcomes = [o for _, o in seen]
            assert proxy.injected["503"] == sum(o[1] == 503 for o in outcomes)
            assert proxy.injected["reset"] == sum(o[0] == "dropped" for o in outcomes)
            assert proxy.injected["flip"] == sum(
                o[1] == 200 and o[2] != hashlib.md5(BODY).hexdigest() for o in outcomes
            )
            assert proxy.forwarded["GET"] == len(outcomes) - proxy.injected["503"]
            assert all(proxy.injected[k] > 0 for k in ("503", "reset", "flip")), proxy.injected
    assert runs[0] == runs[1]  # same seed: same requests got the same faults, in whatever order they arrived
    assert runs[0][0] != runs[2][0]  # another seed: other faults


@pytest.mark.anyio
async def test_aim_pause_and_limit(
    storage_faults: StorageFaultProxy, direct: BlobServiceClient, azurite: AzuriteServer
) -> None:
    container, names = await seeded_blobs(direct, 6)
    sas = read_sas(azurite, container)
    storage_faults.rates = {"503": 1.0}
    storage_faults.aim(pattern=r"blob%201%20")
    async with plain_session() as session:
        statuses = [(await raw_get(session, blob_url(storage_faults, container, n, sas)))[1] for n in names]
        assert statuses == [200, 503, 200, 200, 200, 200]
        storage_faults.aim(methods=["HEAD"])
        assert (await raw_get(session, blob_url(storage_faults, container, names[1], sas)))[1] == 200
        storage_faults.aim()
        with storage_faults.paused():
            assert [(await raw_get(session, blob_url(storage_faults, container, n, sas)))[1] for n in names] == [
                200
            ] * 6
        assert storage_faults.enabled
        storage_faults.limit = 3
        statuses = [(await raw_get(session, blob_url(storage_faults, container, n, sas)))[1] for n in names]
        assert statuses == [503, 503, 200, 200, 200, 200]  # one already injected above, two more
    assert storage_faults.injected == {"503": 3}
    storage_faults.reset_counts()
    assert storage_faults.injected == {} and storage_faults.injections == [] and not storage_faults.forwarded


def test_rates_are_validated(azurite: AzuriteServer) -> None:
    with pytest.raises(ValueError, match="unknown storage fault kinds"):
        StorageFaultProxy(azurite.blob_endpoint, rates={"429": 0.1})
    with pytest.raises(ValueError, match="between 0 and 1"):
        StorageFaultProxy(azurite.blob_endpoint, rates={"503": 1.5})
    proxy = StorageFaultProxy(azurite.blob_endpoint, rates={"503": 0.6})
    with pytest.raises(ValueError, match="add up"):
        proxy.set_rate("reset", 0.5)
    proxy.set_rate("reset", 0.4)
    assert proxy.rates == {"503": 0.6, "reset": 0.4}
    with pytest.raises(ValueError, match="http"):
        StorageFaultProxy("127.0.0.1:10000/devstoreaccount1")
    with pytest.raises(RuntimeError, match="not running"):
        _ = proxy.blob_endpoint


# ----------------------------------------------------------------------------------------------------
# Secrets
# ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("storage_faults", [{"503": 0.3, "reset": 0.3, "flip": 0.3, "seed": 5}], indirect=True)
async def test_nothing_it_logs_or_shows_carries_a_key_or_signature(
    storage_faults: StorageFaultProxy,
    direct: BlobServiceClient,
    azurite: AzuriteServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    container, names = await seeded_blobs(direct, 20)
    sas = read_sas(azurite, container)
    signature = urllib.parse.parse_qs(sas)["sig"][0]
    async with plain_session() as session:
        for name in names:
            await raw_get(session, blob_url(storage_faults, container, name, sas))
    settings = StorageSettings(connection_string=storage_faults.connection_string)
    async with blob_service_client(settings) as via:
        for name in names[:5]:
            with contextlib.suppress(Exception):  # faults are expected; only the logs matter here
                await via.get_blob_client(container, name).get_blob_properties()
    await storage_faults.aclose()
    assert len(storage_faults.injections) > 10
    texts = [r.getMessage() for r in caplog.records] + [repr(storage_faults)]
    texts += [repr(i) for i in storage_faults.injections]
    assert any("injected" in t for t in texts)
    for secret in (
        azurite.account_key,
        signature,
        urllib.parse.quote(signature, safe=""),
        urllib.parse.quote(azurite.account_key, safe=""),
    ):
        assert not [t for t in texts if secret in t], secret
    assert all("sig=***" in i.target for i in storage_faults.injections if "sig=" in i.target)
