"""Entra ID for both services: `Client` with one token credential, the emulator and Azurite over HTTPS.

Batch has no account key (Shared Key is off in the emulator), storage has an account URL, and one
``AsyncTokenCredential`` (`ScopedJwt`) serves both, minting for each scope the audience Entra ID would put in
the token: ``https://batch.core.windows.net/`` for Batch, ``https://storage.azure.com`` for storage. Neither
service verifies signatures (the emulator and Azurite's ``--oauth basic`` check form, audience and lifetime), so
the tokens are unsigned; no network is involved. The client trusts both self-signed certificates through one CA
bundle given as ``connection_verify``; the emulator's nodes trust Azurite's through ``node_ca_file``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from aiobatch import (
    BatchSettings,
    Client,
    PoolSpec,
    RetryPolicy,
    StorageSettings,
    TaskSpec,
    command_line,
    output_files_to,
    resource_file,
)
from aiobatch._azurite import AzuriteServer
from aiobatch._errors import AuthenticationError
from aiobatch.emulator import Emulator
from aiobatch.local import TEST_TIMINGS
from aiobatch.testing import self_signed_certificate

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(attempts=3, deadline=10.0, initial=0.02, maximum=0.2, jitter=0.02)
TENANT = "3f6c1b52-9d0e-4a7b-8c21-5e4f0a9b7d13"
OBJECT_ID = "a1b2c3d4-e5f6-4a1b-9c8d-0e1f2a3b4c5d"


def _b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class ScopedJwt:
    """An ``AsyncTokenCredential`` whose unsigned tokens carry the audience of the scope asked for.

    ``https://batch.core.windows.net//.default`` gives audience ``https://batch.core.windows.net/``, as Entra ID
    does (the scope minus ``/.default``). ``lifetime`` may be negative, for expired tokens.
    """

    def __init__(self, *, lifetime: float = 3600.0) -> None:
        self.lifetime = lifetime
        self.scopes: list[str] = []
        self.issued: list[str] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        [scope] = scopes
        self.scopes.append(scope)
        now = int(time.time())
        claims = {
            "aud": scope.removesuffix("/.default"),
            "iss": f"https://sts.windows.net/{TENANT}/",
            "iat": now,
            "nbf": now - 60,
            "exp": now + int(self.lifetime),
            "oid": OBJECT_ID,
            "tid": TENANT,
        }
        token = f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(claims)}."
        self.issued.append(token)
        # The SDK refreshes a token it holds as expired; report a future expiry so that an expired one is sent.
        return AccessToken(token, now + 3600)

    async def close(self) -> None:
        pass


@pytest.fixture
async def entra_emulator(azurite_oauth: AzuriteServer, tmp_path: Path) -> AsyncIterator[Emulator]:
    """The Batch emulator over HTTPS, Entra ID only, whose nodes trust Azurite's certificate."""
    cert, key = self_signed_certificate(tmp_path / "emulator-tls")
    async with Emulator(
        workdir=tmp_path / "emulator",
        timings=TEST_TIMINGS,
        ssl_cert=cert,
        ssl_key=key,
        auth=("entra",),
        node_ca_file=azurite_oauth.cert_path,
    ) as emulator:
        yield emulator


@pytest.fixture
def ca_bundle(entra_emulator: Emulator, azurite_oauth: AzuriteServer, tmp_path: Path) -> Path:
    """One CA file trusting both services' self-signed certificates, for ``connection_verify``."""
    assert entra_emulator.ssl_cert is not None and azurite_oauth.cert_path is not None
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(entra_emulator.ssl_cert.read_bytes() + azurite_oauth.cert_path.read_bytes())
    return bundle


def entra_client(emulator: Emulator, azurite: AzuriteServer, credential: ScopedJwt, ca_bundle: Path) -> Client:
    """What a user writes for Entra ID everywhere: endpoints, no keys, one credential."""
    return Client(
        BatchSettings(endpoint=emulator.endpoint),
        StorageSettings(account_url=azurite.blob_endpoint),
        credential=credential,  # type: ignore[arg-type]
        connection_verify=str(ca_bundle),
        retry_policy=FAST,
        cleanup=True,
    )


POOL = PoolSpec(
    id="entra-pool",
    vm_size="standard_d2s_v3",
    image_publisher="canonical",
    image_offer="ubuntu-24_04-lts",
    image_sku="server",
    node_agent_sku_id="batch.node.ubuntu 24.04",
    dedicated_nodes=1,
)


async def test_one_token_credential_runs_files_through_batch_and_storage(
    entra_emulator: Emulator,
    azurite_oauth: AzuriteServer,
    ca_bundle: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tag = uuid.uuid4().hex[:10]
    inputs, outputs = f"in-{tag}", f"out-{tag}"
    (tmp_path / "cat.txt").write_text("meow\n")
    credential = ScopedJwt()
    async with entra_client(entra_emulator, azurite_oauth, credential, ca_bundle) as client:
        uploaded = await client.upload_files(inputs, [tmp_path / "cat.txt"])
        await client.ensure_pool(POOL)
        await client.wait_for_pool_ready(POOL.id, poll_interval=0.05, timeout=20)
        await client.create_job(f"job-{tag}", pool_id=POOL.id)
        out_url = await client.output_container_sas_url(outputs)
        spec = TaskSpec(
            id="copy",
            command_line=command_line(["sh", "-c", "tr a-z A-Z < cat.txt > loud.txt; env > env.txt"]),
            resource_files=[resource_file(await client.input_sas_url(inputs, uploaded.files[0].name))],
            output_files=[
                output_files_to(out_url, "loud.txt", path="loud.txt"),
                output_files_to(out_url, "env.txt", path="env.txt"),
            ],
        )
        assert (await client.submit_tasks(f"job-{tag}", [spec])).ok
        summary = await client.wait_for_tasks(f"job-{tag}", timeout=30, poll_interval=0.05, max_poll_interval=0.2)
        assert (summary.completed, summary.succeeded, summary.failed) == (1, 1, ())
        await client.download_outputs(outputs, tmp_path / "out")
    assert (tmp_path / "out" / "loud.txt").read_text() == "MEOW\n"
    # Each service got a token for its own audience from the one credential.
    assert {"https://batch.core.windows.net//.default", "https://storage.azure.com/.default"} <= set(credential.scopes)
    # The task saw a node's environment: not the client's tokens.
    environment = (tmp_path / "out" / "env.txt").read_text()
    assert f"AZ_BATCH_ACCOUNT_URL={entra_emulator.endpoint}" in environment
    assert not any(token in environment or token in caplog.text for token in credential.issued)


async def test_an_expired_token_for_batch_is_an_authentication_error(
    entra_emulator: Emulator, azurite_oauth: AzuriteServer, ca_bundle: Path
) -> None:
    credential = ScopedJwt(lifetime=-3600.0)
    async with entra_client(entra_emulator, azurite_oauth, credential, ca_bundle) as client:
        with pytest.raises(AuthenticationError) as refused:
            await client.ensure_pool(POOL)
    assert refused.value.status == 401 and refused.value.code == "AuthenticationFailed"
    assert not any(token in str(refused.value) for token in credential.issued)
    assert entra_emulator.account is not None and not entra_emulator.account.pools
