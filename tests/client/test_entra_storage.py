"""Entra ID for Blob Storage, against a real Azurite over HTTPS that accepts bearer tokens.

A user signs in to storage with a token credential (``StorageSettings(account_url=...)`` and ``credential=``)
while Batch keeps its Shared Key (the emulator), uploads through `Client`, and mints the tasks' SAS URLs, which
are then user delegation SAS. Plain HTTP requests (aiohttp, trusting Azurite's self-signed certificate) judge
what each SAS grants: the service's answer, not the client's account of it.

Azurite (``--oauth basic``) checks a token's issuer, audience and lifetime, not its signature, so the identity
here is an unsigned JWT (`UnsignedToken`); the user delegation keys and SAS signatures it checks are real.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import ssl
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from azure.core.credentials import AccessToken
from azure.storage.blob import UserDelegationKey
from azure.storage.blob.aio import BlobServiceClient

from _support import minted_ago
from aiobatch import BatchSettings, Client, RetryPolicy, SasPolicy, StorageSettings
from aiobatch._azurite import ACCOUNT_KEY, AzuriteServer
from aiobatch._errors import AuthenticationError
from aiobatch._sas import sas_expiry
from aiobatch.emulator import Emulator

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=3, deadline=10.0, initial=0.02, maximum=0.2, jitter=0.02)
TENANT = "3f6c1b52-9d0e-4a7b-8c21-5e4f0a9b7d13"
OBJECT_ID = "a1b2c3d4-e5f6-4a1b-9c8d-0e1f2a3b4c5d"
STORAGE_AUDIENCE = "https://storage.azure.com"


def _b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class UnsignedToken:
    """An ``AsyncTokenCredential`` for Azurite's ``--oauth basic``: unsigned JWTs with the claims it checks.

    Issuer ``https://sts.windows.net/<tenant>/``, audience `STORAGE_AUDIENCE` by default, ``nbf``/``iat``/``exp``
    around now, and the ``oid``/``tid`` that a user delegation key (and so every SAS it signs) names.
    """

    def __init__(self, *, audience: str = STORAGE_AUDIENCE, lifetime: float = 3600.0) -> None:
        self.audience = audience
        self.lifetime = lifetime
        self.issued: list[str] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        now = int(time.time())
        expires = now + int(self.lifetime)
        claims = {
            "aud": self.audience,
            "iss": f"https://sts.windows.net/{TENANT}/",
            "iat": now,
            "nbf": now - 60,
            "exp": expires,
            "oid": OBJECT_ID,
            "tid": TENANT,
        }
        token = f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(claims)}."
        self.issued.append(token)
        return AccessToken(token, expires)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> UnsignedToken:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


def entra_client(emulator: Emulator, azurite: AzuriteServer, credential: UnsignedToken, **options: Any) -> Client:
    """Batch with its Shared Key, storage with Entra ID: the settings a user writes for that mix."""
    options.setdefault("retry_policy", FAST)
    return Client(
        BatchSettings(
            endpoint=emulator.endpoint,
            account_name=emulator.account_name,
            account_key=emulator.credential.named_key.key,
        ),
        StorageSettings(account_url=azurite.blob_endpoint),
        credential=credential,  # type: ignore[arg-type]
        connection_verify=str(azurite.cert_path),
        **options,
    )


@pytest.fixture
async def client(batch_emulator: Emulator, azurite_oauth: AzuriteServer) -> AsyncIterator[Client]:
    async with entra_client(batch_emulator, azurite_oauth, UnsignedToken(), cleanup=True) as c:
        yield c


@pytest.fixture
async def http(azurite_oauth: AzuriteServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client that trusts Azurite's certificate and nothing else: what a Batch node has."""
    assert azurite_oauth.cert_path is not None
    context = ssl.create_default_context(cafile=str(azurite_oauth.cert_path))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


@pytest.fixture
def key_fetches(monkeypatch: pytest.MonkeyPatch) -> list[UserDelegationKey]:
    """Every user delegation key fetched from the service (Get User Delegation Key requests that succeeded)."""
    fetched: list[UserDelegationKey] = []
    original = BlobServiceClient.get_user_delegation_key

    async def spy(self: BlobServiceClient, *args: Any, **kwargs: Any) -> UserDelegationKey:
        key = await original(self, *args, **kwargs)
        fetched.append(key)
        return key

    monkeypatch.setattr(BlobServiceClient, "get_user_delegation_key", spy)
    return fetched


def names() -> tuple[str, str]:
    """Fresh input and output container names (the session's Azurite is shared)."""
    tag = uuid.uuid4().hex[:12]
    return f"in-{tag}", f"out-{tag}"


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def blob_url(container_url: str, blob: str) -> str:
    """A blob's URL under a container SAS URL, carrying the same SAS."""
    base, _, sas = container_url.partition("?")
    return f"{base}/{urllib.parse.quote(blob)}?{sas}"


async def status(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, str, bytes]:
    """One request: the status, the service's error code, the body."""
    async with http.request(method, url, **kwargs) as response:
        return response.status, response.headers.get("x-ms-error-code", ""), await response.read()


PUT_BLOB = {"x-ms-blob-type": "BlockBlob"}


# ----------------------------------------------------------------------------------------------------
# User delegation SAS through the Client
# ----------------------------------------------------------------------------------------------------


async def test_batch_with_its_key_and_storage_with_entra_id_mint_user_delegation_sas(
    client: Client, tmp_path: Path, key_fetches: list[UserDelegationKey]
) -> None:
    inputs, outputs = names()
    source = tmp_path / "clip ü.mp4"
    source.write_bytes(b"frames" * 1000)

    uploaded = await client.upload_files(inputs, [source])
    assert [f.name for f in uploaded.uploaded] == ["clip ü.mp4"]
    read_url = await client.input_sas_url(inputs, "clip ü.mp4")
    write_url = await client.output_container_sas_url(outputs)

    for url, permissions, resource in ((read_url, "r", "b"), (write_url, "cw", "c")):
        sas = query(url)
        assert url.startswith(f"{client.blob_service.url.rstrip('/')}/")
        # A user delegation SAS: signed by a key the identity obtained, and naming that identity.
        assert sas["skoid"] == OBJECT_ID and sas["sktid"] == TENANT
        assert sas["sks"] == "b" and sas["skv"] and sas["skt"] and sas["ske"]
        assert sas["sp"] == permissions and sas["sr"] == resource and sas["sig"]
        assert ACCOUNT_KEY not in url
    # One key signed both, fetched once.
    assert len(key_fetches) == 1
    assert query(read_url)["ske"] == query(write_url)["ske"] == key_fetches[0].signed_expiry
    # Batch still signs with its Shared Key in the same client.
    assert [pool async for pool in client.batch.list_pools()] == []


async def test_the_read_sas_reads_its_blob_and_nothing_else(
    client: Client, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    inputs, _ = names()
    source = tmp_path / "a.mp4"
    source.write_bytes(b"input bytes")
    await client.upload_files(inputs, [source])
    url = await client.input_sas_url(inputs, "a.mp4")

    assert await status(http, "GET", url) == (200, "", b"input bytes")
    code, error, _ = await status(http, "PUT", url, data=b"overwritten", headers=PUT_BLOB)
    assert (code, error) == (403, "AuthorizationPermissionMismatch")
    code, error, _ = await status(http, "DELETE", url)
    assert (code, error) == (403, "AuthorizationPermissionMismatch")
    # The signature covers this blob only: another name under the same SAS is refused.
    other = url.replace("/a.mp4?", "/b.mp4?")
    assert (await status(http, "PUT", other, data=b"new", headers=PUT_BLOB))[0] == 403
    # And nothing was changed.
    result = await client.download_outputs(inputs, tmp_path / "check")
    assert [f.name for f in result.files] == ["a.mp4"] and (tmp_path / "check" / "a.mp4").read_bytes() == b"input bytes"


async def test_the_output_sas_creates_and_writes_but_cannot_read_list_or_delete(
    client: Client, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    _, outputs = names()
    url = await client.output_container_sas_url(outputs)
    gif = blob_url(url, "cat 1.gif")

    assert (await status(http, "PUT", gif, data=b"GIF89a first", headers=PUT_BLOB))[0] == 201
    assert (await status(http, "PUT", gif, data=b"GIF89a retry", headers=PUT_BLOB))[0] == 201  # a retried upload
    for method, target in (("GET", gif), ("HEAD", gif), ("DELETE", gif)):
        code, _, _ = await status(http, method, target)
        assert code == 403, (method, code)
    base, _, sas = url.partition("?")
    code, error, _ = await status(http, "GET", f"{base}?restype=container&comp=list&{sas}")
    assert (code, error) == (403, "AuthorizationPermissionMismatch")
    # What the task wrote is there, read back with the client's own identity.
    await client.download_outputs(outputs, tmp_path / "gifs")
    assert (tmp_path / "gifs" / "cat 1.gif").read_bytes() == b"GIF89a retry"


async def test_an_expired_user_delegation_sas_is_refused(
    client: Client, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    inputs, outputs = names()
    source = tmp_path / "a.mp4"
    source.write_bytes(b"input bytes")
    await client.upload_files(inputs, [source])
    brief = minted_ago(SasPolicy(duration=0.0, margin=1.0, backdate=0.0), 2.5)  # expired 1.5 s ago
    read_url = await client.input_sas_url(inputs, "a.mp4", sas_policy=brief)
    write_url = await client.output_container_sas_url(outputs, sas_policy=brief)
    expiry = sas_expiry(read_url)
    assert expiry is not None

    assert expiry < dt.datetime.now(dt.timezone.utc)  # already past: no wait on the wall clock
    assert (await status(http, "GET", read_url))[0] == 403
    assert (await status(http, "PUT", blob_url(write_url, "late.gif"), data=b"x", headers=PUT_BLOB))[0] == 403
    # A SAS minted now, by the same client and key, works: it was the SAS that expired.
    assert (await status(http, "GET", await client.input_sas_url(inputs, "a.mp4")))[0] == 200


# ----------------------------------------------------------------------------------------------------
# The user delegation key: fetched once, renewed when a SAS would outlive it
# ----------------------------------------------------------------------------------------------------


async def test_the_delegation_key_is_fetched_once_for_many_sas_and_again_only_when_it_does_not_cover_one(
    client: Client, http: aiohttp.ClientSession, tmp_path: Path, key_fetches: list[UserDelegationKey]
) -> None:
    inputs, outputs = names()
    contents = {f"clip-{i:02d}.mp4": f"clip {i}".encode() for i in range(20)}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    await client.upload_files(inputs, [tmp_path / name for name in contents])

    urls: dict[str, str] = {}

    async def mint(name: str) -> None:
        urls[name] = await client.input_sas_url(inputs, name)

    async def mint_output() -> None:
        urls["output"] = await client.output_container_sas_url(outputs)

    async with anyio.create_task_group() as tg:  # all at once: still one fetch
        for name in contents:
            tg.start_soon(mint, name)
        tg.start_soon(mint_output)
    assert len(key_fetches) == 1
    first = key_fetches[0]
    assert len(urls) == 21 and {query(u)["ske"] for u in urls.values()} == {first.signed_expiry}
    for name in ("clip-00.mp4", "clip-19.mp4"):
        assert await status(http, "GET", urls[name]) == (200, "", contents[name])

    # A SAS that must outlive the key it would be signed by gets a new key, valid long enough.
    long = SasPolicy(duration=3 * 24 * 3600.0)
    long_url = await client.input_sas_url(inputs, "clip-05.mp4", sas_policy=long)
    assert len(key_fetches) == 2
    long_expiry = sas_expiry(long_url)
    assert long_expiry is not None
    assert dt.datetime.fromisoformat(key_fetches[1].signed_expiry.replace("Z", "+00:00")) >= long_expiry
    assert key_fetches[1].signed_expiry != first.signed_expiry
    assert (await status(http, "GET", long_url))[2] == b"clip 5"
    # That longer key covers the default window too: reused, not fetched again.
    await client.output_container_sas_url(outputs)
    await client.input_sas_url(inputs, "clip-01.mp4")
    assert len(key_fetches) == 2


async def test_each_client_fetches_its_own_key(
    batch_emulator: Emulator, azurite_oauth: AzuriteServer, key_fetches: list[UserDelegationKey]
) -> None:
    _, outputs = names()
    for _ in range(2):
        async with entra_client(batch_emulator, azurite_oauth, UnsignedToken()) as c:
            await c.output_container_sas_url(outputs)
            await c.output_container_sas_url(outputs)
    assert len(key_fetches) == 2


# ----------------------------------------------------------------------------------------------------
# A refused identity, and secrets
# ----------------------------------------------------------------------------------------------------


async def test_an_identity_the_service_refuses_gets_an_authentication_error_naming_the_fix(
    batch_emulator: Emulator, azurite_oauth: AzuriteServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A token for another resource (Azure Resource Manager): the storage service refuses it.
    wrong = UnsignedToken(audience="https://management.azure.com/")
    caplog.set_level(logging.DEBUG)
    inputs, _ = names()
    async with entra_client(batch_emulator, azurite_oauth, wrong) as c:
        with pytest.raises(AuthenticationError) as refused:
            await c.input_sas_url(inputs, "a.mp4")
    error = refused.value
    assert error.status == 403 and error.code == "AuthenticationFailed"
    message = str(error)
    assert "user delegation key" in message and "Storage Blob Delegator" in message
    assert "***" not in message  # nothing in the fix looks like a secret to the redactor
    assert wrong.issued and not any(token in message for token in wrong.issued)
    assert not any(token in caplog.text for token in wrong.issued)


async def test_no_key_token_or_signature_shows_in_reprs_or_logs(
    batch_emulator: Emulator,
    azurite_oauth: AzuriteServer,
    tmp_path: Path,
    key_fetches: list[UserDelegationKey],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    credential = UnsignedToken()
    inputs, outputs = names()
    source = tmp_path / "a.mp4"
    source.write_bytes(b"input bytes")
    async with entra_client(batch_emulator, azurite_oauth, credential) as c:
        await c.upload_files(inputs, [source])
        urls = [await c.input_sas_url(inputs, "a.mp4"), await c.output_container_sas_url(outputs)]
        shown = [repr(c), caplog.text]
    secrets = [query(u)["sig"] for u in urls] + [k.value for k in key_fetches] + credential.issued
    assert len(secrets) == 4 and all(secrets)
    for text in shown:
        for secret in secrets:
            assert secret not in text
            assert urllib.parse.quote(secret, safe="") not in text
    assert "user delegation key" in caplog.text  # the key's fetch is logged, its value is not
