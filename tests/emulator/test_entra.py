"""Entra ID for Batch: the emulator over HTTPS, accepting bearer tokens for Batch's audience, Shared Key off.

The real ``azure.batch.aio.BatchClient`` authenticates with a token credential (`UnsignedJwt`: unsigned JWTs with
the claims the emulator checks, minted here, no network) and trusts the emulator's self-signed certificate with
``connection_verify``. Refusals are sent by hand where the SDK would not send them (no token, a token for another
audience), and checked against the service's 401/403 bodies.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from azure.batch import models as m
from azure.batch.aio import BatchClient
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

from aiobatch.emulator import BATCH_AUDIENCE, Emulator, Quotas, Timings
from aiobatch.emulator.__main__ import main
from aiobatch.emulator._app import build_app
from aiobatch.emulator._faults import Faults
from aiobatch.emulator._model import Account
from aiobatch.emulator._scheduler import Scheduler
from aiobatch.testing import self_signed_certificate

from ._shared_key import send
from .test_contract_aio import code_of, details_of, download, finished, ready_pool, sh

pytestmark = pytest.mark.anyio

API = "api-version=2025-06-01"
BATCH_SCOPE = "https://batch.core.windows.net//.default"
JOB = m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p"))
POOL_BODY = {
    "id": "raw",
    "vmSize": "standard_d2s_v3",
    "virtualMachineConfiguration": {
        "imageReference": {"publisher": "canonical", "offer": "0001-com-ubuntu-server-jammy", "sku": "22_04-lts"},
        "nodeAgentSKUId": "batch.node.ubuntu 22.04",
    },
    "targetDedicatedNodes": 0,
}


def _b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def jwt(*, aud: object = BATCH_AUDIENCE, exp: float | None = 3600.0, nbf: float | None = -60.0) -> str:
    """An unsigned JWT (``alg: none``) from a made-up tenant; ``exp`` and ``nbf`` are seconds from now."""
    now = time.time()
    claims: dict[str, Any] = {"aud": aud, "iss": "https://sts.windows.net/00000000-0000-4000-8000-000000000001/"}
    claims["iat"] = int(now)
    if exp is not None:
        claims["exp"] = int(now + exp)
    if nbf is not None:
        claims["nbf"] = int(now + nbf)
    return f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(claims)}."


class UnsignedJwt:
    """An ``AsyncTokenCredential`` minting `jwt` tokens; records the scopes it was asked for and what it issued."""

    def __init__(self, **claims: Any) -> None:
        self.claims = claims
        self.scopes: list[tuple[str, ...]] = []
        self.issued: list[str] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        token = jwt(**self.claims)
        self.issued.append(token)
        return AccessToken(token, int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> UnsignedJwt:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


def batch_client(emu: Emulator, credential: Any) -> BatchClient:
    """The SDK's client for the emulator, trusting its certificate and nothing else new."""
    return BatchClient(emu.endpoint, credential, connection_verify=str(emu.ssl_cert))


@pytest.fixture
async def http(batch_emulator_entra: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cafile=str(batch_emulator_entra.ssl_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


async def raw(
    http: aiohttp.ClientSession, emu: Emulator, authorization: str | None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST a pool with this Authorization header (or none): the status, headers and body."""
    headers = {"Content-Type": "application/json; odata=minimalmetadata"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with http.post(f"{emu.endpoint}/pools?{API}", json=POOL_BODY, headers=headers) as response:
        data = await response.read()
        return response.status, dict(response.headers), json.loads(data) if data else {}


def assert_bearer_refused(status: int, headers: dict[str, str], body: dict[str, Any], emu: Emulator) -> str:
    """The service's 401 for a refused token, with the challenge; returns the detail."""
    assert status == 401
    assert body["code"] == "AuthenticationFailed"
    assert body["message"]["value"].startswith(
        "Server failed to authenticate the request. Make sure the value of Authorization header is formed "
        "correctly.\nRequestId:"
    )
    assert body["odata.metadata"].startswith(f"{emu.endpoint}/$metadata#")
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer authorization_uri="https://login.microsoftonline.com/')
    assert 'error="invalid_token"' in challenge
    assert emu.account is not None and not emu.account.pools, "a refused request changes nothing"
    [detail] = [v["value"] for v in body["values"] if v["key"] == "AuthenticationErrorDetail"]
    return str(detail)


# --- the SDK with a token credential, Shared Key off ---------------------------------------------------------


async def test_a_token_credential_runs_a_pool_job_and_task_over_https(batch_emulator_entra: Emulator) -> None:
    emu = batch_emulator_entra
    assert emu.endpoint.startswith("https://127.0.0.1:") and emu.auth == ("entra",)
    credential = UnsignedJwt()
    async with batch_client(emu, credential) as batch:
        await ready_pool(batch, "p")
        await batch.create_job(JOB)
        await batch.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=sh("echo hello; env")))
        task = await finished(batch, "j", "t")
        assert task.execution_info is not None and task.execution_info.exit_code == 0
        stdout = (await download(batch, "j", "t", "stdout.txt")).decode()
    assert stdout.startswith("hello\n")
    # The node says where its account is; the caller's token is nowhere in the task's environment.
    assert f"AZ_BATCH_ACCOUNT_URL={emu.endpoint}" in stdout
    assert credential.issued and not any(token in stdout for token in credential.issued)
    assert "Bearer" not in stdout
    # azure-batch asks for Batch's scope, whose token audience is the one the emulator accepts.
    assert set(credential.scopes) == {(BATCH_SCOPE,)}


async def test_shared_key_and_entra_together(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    emulator = Emulator(workdir=tmp_path / "w", ssl_cert=cert, ssl_key=key, auth=("sharedkey", "entra"))
    async with (
        emulator as emu,
        batch_client(emu, emu.credential) as by_key,
        batch_client(emu, UnsignedJwt()) as by_token,
    ):
        await by_key.create_job(JOB)
        assert [j.id async for j in by_token.list_jobs()] == ["j"]


async def test_an_expired_token_through_the_sdk_is_a_401(batch_emulator_entra: Emulator) -> None:
    async with batch_client(batch_emulator_entra, UnsignedJwt(exp=-3600.0)) as batch:
        with pytest.raises(ClientAuthenticationError) as caught:
            await batch.create_job(JOB)
    assert caught.value.status_code == 401 and code_of(caught.value) == "AuthenticationFailed"
    assert details_of(caught.value)["AuthenticationErrorDetail"] == "Lifetime validation failed. The token is expired."


async def test_shared_key_when_it_is_off_is_the_services_403(batch_emulator_entra: Emulator) -> None:
    # The account key is right: the refusal is of the kind of authentication, as for an account whose allowed
    # authentication modes leave Shared Key out.
    async with batch_client(batch_emulator_entra, batch_emulator_entra.credential) as batch:
        with pytest.raises(HttpResponseError) as caught:
            await batch.create_job(JOB)
    assert caught.value.status_code == 403 and code_of(caught.value) == "AuthenticationFailed"
    assert details_of(caught.value)["AuthenticationErrorDetail"] == (
        "The specified type of authentication SharedKey is not allowed for this account."
    )
    assert batch_emulator_entra.account is not None and not batch_emulator_entra.account.jobs


# --- refusals, by hand ---------------------------------------------------------------------------------------


async def test_no_token_is_401_with_a_bearer_challenge(
    http: aiohttp.ClientSession, batch_emulator_entra: Emulator
) -> None:
    status, headers, body = await raw(http, batch_emulator_entra, None)
    assert status == 401 and body["code"] == "MissingRequiredHeader"
    assert headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    status, headers, body = await raw(http, batch_emulator_entra, "Bearer ")
    assert "not a well-formed JWT" in assert_bearer_refused(status, headers, body, batch_emulator_entra)


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b.c",
        f"{_b64url({'alg': 'none'})}.W10.",  # claims that are a JSON array, not an object
        f"{_b64url({'alg': 'none'})}.{_b64url({'aud': BATCH_AUDIENCE, 'exp': int(time.time()) + 600})}",  # 2 parts
    ],
)
async def test_a_malformed_token_is_401(
    token: str, http: aiohttp.ClientSession, batch_emulator_entra: Emulator
) -> None:
    status, headers, body = await raw(http, batch_emulator_entra, f"Bearer {token}")
    assert "not a well-formed JWT" in assert_bearer_refused(status, headers, body, batch_emulator_entra)


@pytest.mark.parametrize(
    "aud",
    [
        "https://storage.azure.com",
        "https://management.azure.com/",
        "https://batch.core.windows.net",  # without the slash: the service refuses it too
        ["https://storage.azure.com"],
        None,
    ],
)
async def test_a_token_for_another_audience_is_401_naming_the_allowed_one(
    aud: object, http: aiohttp.ClientSession, batch_emulator_entra: Emulator
) -> None:
    status, headers, body = await raw(http, batch_emulator_entra, f"Bearer {jwt(aud=aud)}")
    detail = assert_bearer_refused(status, headers, body, batch_emulator_entra)
    assert detail.startswith("The access token has been obtained from wrong audience or resource '")
    assert detail.endswith(
        "It should exactly match (including forward slash) with one of the allowed audiences "
        "'https://batch.core.windows.net/'"
    )


@pytest.mark.parametrize(
    ("claims", "detail"),
    [
        ({"exp": -3600.0}, "Lifetime validation failed. The token is expired."),
        ({"exp": None}, "The access token has no 'exp' claim: a token without an expiry is not accepted."),
        ({"nbf": 3600.0}, "Lifetime validation failed. The token is not yet valid ('nbf' is in the future)."),
    ],
)
async def test_a_token_outside_its_lifetime_is_401(
    claims: dict[str, Any], detail: str, http: aiohttp.ClientSession, batch_emulator_entra: Emulator
) -> None:
    status, headers, body = await raw(http, batch_emulator_entra, f"Bearer {jwt(**claims)}")
    assert assert_bearer_refused(status, headers, body, batch_emulator_entra) == detail


async def test_lifetimes_allow_five_minutes_of_clock_skew_and_any_issuer_or_signature(
    http: aiohttp.ClientSession, batch_emulator_entra: Emulator
) -> None:
    token = jwt(exp=-120.0, nbf=120.0)
    header, claims, _ = token.split(".")
    signed_by_anyone = f"{header}.{claims}.c2lnbmF0dXJlIG5vdCB2ZXJpZmllZA"
    status, _, body = await raw(http, batch_emulator_entra, f"Bearer {signed_by_anyone}")
    assert status == 201, body


async def test_a_correct_shared_key_signature_is_refused_when_shared_key_is_off(
    http: aiohttp.ClientSession, batch_emulator_entra: Emulator
) -> None:
    emu = batch_emulator_entra
    status, _, body = await send(
        http,
        "POST",
        f"{emu.endpoint}/pools?{API}",
        body=POOL_BODY,
        account=emu.account_name,
        key=emu.credential.named_key.key,
    )
    assert status == 403 and body["code"] == "AuthenticationFailed"
    assert body["values"] == [
        {
            "key": "AuthenticationErrorDetail",
            "value": "The specified type of authentication SharedKey is not allowed for this account.",
        }
    ]
    assert emu.account is not None and not emu.account.pools


async def test_the_default_emulator_refuses_a_valid_token_and_says_how_to_accept_one(tmp_path: Path) -> None:
    # Shared Key only, over HTTP, as before: a bearer token (which azure-core would not even send over HTTP) is
    # refused, and the refusal names the flags.
    async with Emulator(workdir=tmp_path) as emu, aiohttp.ClientSession() as http:
        assert emu.endpoint.startswith("http://") and emu.auth == ("sharedkey",)
        status, _, body = await raw(http, emu, f"Bearer {jwt()}")
    assert status == 401 and body["code"] == "InvalidAuthenticationInfo"
    assert "--auth entra" in body["values"][0]["value"] and "--cert" in body["values"][0]["value"]


# --- options ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"auth": ("entra",)}, "auth 'entra' needs HTTPS"),
        ({"auth": ("kerberos",)}, "give one or more of sharedkey, entra"),
        ({"auth": ()}, "nothing given"),
        ({"ssl_cert": "cert.pem"}, "ssl_cert and ssl_key go together"),
        ({"ssl_key": "key.pem"}, "ssl_cert and ssl_key go together"),
    ],
)
def test_options_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Emulator(**kwargs)


async def test_a_bad_certificate_is_refused_at_start_without_showing_the_key(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    secret = key.read_text()
    with pytest.raises(ValueError, match="no such file") as missing:
        await Emulator(workdir=tmp_path / "w", ssl_cert=tmp_path / "nope.pem", ssl_key=key).start()
    with pytest.raises(ValueError, match="not a PEM certificate and its unencrypted private key") as swapped:
        await Emulator(workdir=tmp_path / "w", ssl_cert=key, ssl_key=cert).start()
    for error in (missing.value, swapped.value):
        assert secret not in str(error) and "PRIVATE KEY" not in str(error)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--auth", "entra"], "--auth entra needs HTTPS: give --cert and --key"),
        (["--cert", "c.pem"], "--cert and --key go together"),
        (["--auth", "sharedkey,kerberos"], "'kerberos'"),
    ],
)
def test_cli_auth_and_tls_mistakes_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse's own refusals
        code = exited.code  # type: ignore[assignment]
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_serves_https_with_entra_and_prints_the_https_endpoint(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    command = [sys.executable, "-m", "aiobatch.emulator", "--port", "0", "--workdir", str(tmp_path / "w")]
    command += ["--cert", str(cert), "--key", str(key), "--auth", "entra"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
    finally:
        process.terminate()
        _, err = process.communicate(timeout=15)
    assert line.startswith("aiobatch emulator listening on https://127.0.0.1:"), (line, err)
    assert "Shared Key off" in line and BATCH_AUDIENCE in line
    assert "account key:" not in line


async def test_a_token_over_plain_http_is_refused_even_with_entra_on(tmp_path: Path) -> None:
    # `Emulator` refuses entra without a certificate; an application built by hand (or behind a plain proxy) is the
    # only way to get here, and it still never accepts a token that crossed a plain connection.
    faults = Faults(None)
    account = Account(name="plain", url="")
    scheduler = Scheduler(account, workdir=tmp_path, timings=Timings(), quotas=Quotas(), faults=faults)
    app = build_app(account, scheduler, base64.b64encode(b"k" * 32).decode(), faults, auth_modes=("entra",))
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {jwt()}"}
        async with http.get(server.make_url(f"/pools?{API}"), headers=headers) as response:
            status, body = response.status, await response.json()
    assert status == 401 and body["code"] == "AuthenticationFailed"
    assert body["values"][0]["value"] == (
        "Bearer tokens are accepted over HTTPS only: start the emulator with --cert and --key."
    )
