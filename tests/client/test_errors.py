"""The error tree, redaction, and translation of what the real SDK clients raise."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import pickle
import socket
from collections.abc import Awaitable, Callable

import pytest
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ClientAuthenticationError, ResourceExistsError, ServiceRequestError
from azure.storage.blob.aio import BlobClient, BlobServiceClient

from aiobatch import _errors as errors
from aiobatch._errors import (
    AiobatchError,
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    DeadlineExceededError,
    IntegrityError,
    JobError,
    NotFoundError,
    PoolError,
    PoolResizeError,
    PoolStartTaskError,
    PoolTimeoutError,
    SasExpiredError,
    ServiceError,
    ServiceUnavailableError,
    StorageError,
    SubmissionError,
    TaskFailedError,
    translate,
)
from aiobatch._redact import RedactingFilter, redact, register_secret
from aiobatch._retry import sdk_client_kwargs

from ._stub import Behaviour, StubServer, batch_error, storage_error

KEY = base64.b64encode(b"0123456789abcdef" * 4).decode()
SIG = "Zm9vYmFyc2VjcmV0c2lnbmF0dXJl%2Bx%3D"


def batch_client(url: str, key: str = KEY) -> BatchClient:
    return BatchClient(url, AzureNamedKeyCredential("acct", key), **sdk_client_kwargs())


async def batch_failure(behaviour: Behaviour, key: str = KEY) -> tuple[BaseException, StubServer]:
    """Let the real BatchClient meet *behaviour* on get_pool('pets'); return what it raised."""
    async with StubServer(behaviour) as server, batch_client(server.url, key) as client:
        with pytest.raises(Exception) as info:
            await client.get_pool("pets")
    return info.value, server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------------
# The tree
# ----------------------------------------------------------------------------------------------------


def test_tree_shape() -> None:
    for cls in (ConfigurationError, ServiceError, StorageError, PoolError, JobError, DeadlineExceededError):
        assert cls.__bases__[0] is AiobatchError
    for cls in (AuthenticationError, NotFoundError, ConflictError, ServiceUnavailableError):
        assert issubclass(cls, ServiceError)
    assert issubclass(IntegrityError, StorageError) and issubclass(SasExpiredError, StorageError)
    for cls in (PoolResizeError, PoolStartTaskError, PoolTimeoutError):
        assert issubclass(cls, PoolError)
    assert issubclass(SubmissionError, JobError) and issubclass(TaskFailedError, JobError)
    assert issubclass(ConfigurationError, ValueError)


def test_every_public_class_has_a_raised_when_docstring() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        assert obj.__doc__, name
        if isinstance(obj, type) and issubclass(obj, AiobatchError):
            assert obj.__doc__.startswith("Raised when"), name


def test_the_module_docstring_draws_every_class() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, AiobatchError):
            assert name in doc, name


def test_default_messages_name_resource_and_fix() -> None:
    err = PoolResizeError(pool_id="pets", errors=[("AccountCoreQuotaReached", "quota of 10 cores reached")])
    assert "'pets'" in str(err) and "quota" in str(err).lower() and err.errors[0][0] == "AccountCoreQuotaReached"
    sub = SubmissionError(job_id="j", added=["a"], existing=["b"], failed={"c": "InvalidPropertyValue"})
    assert "1 of 3" in str(sub) and "'j'" in str(sub) and sub.failed == {"c": "InvalidPropertyValue"}
    assert "'p'" in str(PoolTimeoutError(pool_id="p", timeout=60)) and "60" in str(PoolTimeoutError(timeout=60))
    assert "'t'" in str(TaskFailedError(job_id="j", task_id="t", exit_code=2))
    assert "stderr" in str(PoolStartTaskError(pool_id="p", failed_nodes=["n1"]))
    assert "timeout" in str(DeadlineExceededError(operation="waiting for tasks", timeout=5))


def test_messages_and_reprs_are_redacted_and_pickle_keeps_context() -> None:
    err = NotFoundError(
        f"blob at https://a.blob.core.windows.net/c/b?sv=1&sig={SIG} is gone",
        status=404,
        code="BlobNotFound",
        resource_kind="blob",
        resource_id="b",
    )
    for text in (str(err), repr(err), err.message):
        assert SIG not in text and "sig=***" in text
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is NotFoundError and clone.code == "BlobNotFound" and str(clone) == str(err)
    sub = pickle.loads(pickle.dumps(SubmissionError(job_id="j", failed={"t": "x"})))
    assert sub.failed == {"t": "x"} and sub.job_id == "j"


# ----------------------------------------------------------------------------------------------------
# Redaction
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"https://a.blob.core.windows.net/c/b?sv=2024-08-04&sr=b&sig={SIG}&sp=r",
        f"https://a.blob.core.windows.net/c/b?SIG={SIG}",
        f"url=https%3A%2F%2Fa%2Fc%3Fsv%3D1%26sig%3D{SIG}%26sp%3Dr",
        f"twice%3Fsig%253D{SIG}",
        f"{{'http_url': 'https://x/c/b?se=1&sig={SIG}'}}",
    ],
)
def test_redact_masks_sas_signatures(text: str) -> None:
    out = redact(text)
    assert SIG not in out
    assert "Zm9v" not in out
    assert "***" in out


def test_redact_masks_keys_and_authorization() -> None:
    conn = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
    assert KEY not in redact(conn) and "AccountKey=***;EndpointSuffix" in redact(conn)
    assert KEY not in redact(f"account_key='{KEY}'") and KEY not in redact(f'{{"accountKey": "{KEY}"}}')
    for line in (
        "Authorization: SharedKey acct:c2lnbmF0dXJlc2lnbmF0dXJl=",
        "{'Authorization': 'SharedKey acct:c2lnbmF0dXJlc2lnbmF0dXJl='}",
        "'authorization': 'Bearer eyJhbGciOiJI.c2lnbmF0dXJlc2lnbmF0dXJl'",
        "string to sign used SharedKey acct:c2lnbmF0dXJlc2lnbmF0dXJl=",
        "<UserDelegationKey><Value>c2lnbmF0dXJlc2lnbmF0dXJl=</Value></UserDelegationKey>",
    ):
        assert "c2lnbmF0dXJlc2lnbmF0dXJl" not in redact(line), line


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "signature design=2 assign=x; pool 'p1' failed: AccountKeyIsMissing? no; sigma=3"
    assert redact(text) == text


def test_registered_secrets_are_masked_anywhere() -> None:
    secret = "canary-" + base64.b64encode(b"registered secret").decode()
    assert redact(f"oops {secret}") == f"oops {secret}"
    register_secret(secret)
    assert secret not in redact(f"oops {secret} and quoted {secret.replace('=', '%3D')}")
    register_secret("short")  # too short to mask safely: ignored
    assert redact("short") == "short"


def test_redacting_filter_masks_messages_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("aiobatch.test-redact")
    caplog.handler.addFilter(RedactingFilter())
    try:
        try:
            raise RuntimeError(f"https://x/c?sig={SIG}")
        except RuntimeError:
            log.error("calling %s", f"https://x/c?sig={SIG}", exc_info=True)
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    assert SIG not in caplog.text and "sig=***" in caplog.text


# ----------------------------------------------------------------------------------------------------
# Translation of what the SDKs really raise
# ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_batch_404_is_not_found_naming_the_pool_and_the_fix() -> None:
    exc, _ = await batch_failure(batch_error(404, "PoolNotFound", "The specified pool does not exist."))
    err = translate(exc, resource="pool", resource_id="pets", action="get")
    assert isinstance(err, NotFoundError)
    assert (err.status, err.code, err.resource_kind, err.resource_id, err.service) == (
        404,
        "PoolNotFound",
        "pool",
        "pets",
        "batch",
    )
    assert "'pets'" in str(err) and "does not exist" in str(err) and "ensure_pool" in str(err)


@pytest.mark.anyio
async def test_batch_409_pool_exists_is_a_conflict() -> None:
    exc, _ = await batch_failure(batch_error(409, "PoolExists"))
    assert isinstance(exc, ResourceExistsError)
    err = translate(exc, resource="pool", resource_id="pets", action="create")
    assert isinstance(err, ConflictError) and err.code == "PoolExists"
    assert str(err).startswith("create pool 'pets' failed") and "choose another id" in str(err)


@pytest.mark.anyio
async def test_batch_403_is_authentication_naming_the_variables() -> None:
    exc, server = await batch_failure(batch_error(403, "AuthenticationFailed", "Server failed to authenticate."))
    # The request was signed: the stub saw the Shared Key header, and the message must not repeat it.
    signature = server.seen[0].headers["Authorization"].split(":")[-1]
    err = translate(exc, resource="pool", resource_id="pets")
    assert isinstance(err, AuthenticationError) and err.status == 403
    assert "AZURE_BATCH_ACCOUNT_KEY" in str(err)
    assert signature not in str(err) + repr(err)


@pytest.mark.anyio
async def test_batch_400_is_a_service_error_with_the_reason() -> None:
    exc, _ = await batch_failure(batch_error(400, "InvalidPropertyValue", "The value of vmSize is invalid."))
    err = translate(exc, resource="pool", resource_id="pets", action="create")
    assert type(err) is ServiceError and err.code == "InvalidPropertyValue"
    assert "vmSize" in str(err) and "Fix:" in str(err)


@pytest.mark.anyio
async def test_batch_503_is_service_unavailable() -> None:
    exc, _ = await batch_failure(batch_error(503, "ServerBusy"))
    err = translate(exc, resource="pool", resource_id="pets", attempts=3, elapsed=1.5)
    assert isinstance(err, ServiceUnavailableError) and err.attempts == 3 and err.code == "ServerBusy"
    assert "after 3 attempts over 1.5 s" in str(err)


@pytest.mark.anyio
async def test_malformed_batch_key_is_a_configuration_error_without_the_key() -> None:
    bad_key = "bm90LWEtdmFsaWQta2V5"[:-1]  # base64 with its padding cut: "Incorrect padding"
    exc, server = await batch_failure(batch_error(500, "Unreachable"), key=bad_key)
    assert isinstance(exc, binascii.Error)
    assert server.seen == []  # it failed while signing, before sending
    err = translate(exc, resource="pool", resource_id="pets")
    assert isinstance(err, ConfigurationError) and err.setting == "AZURE_BATCH_ACCOUNT_KEY"
    assert bad_key not in str(err) + repr(err) and "malformed" in str(err)
    leaky = ValueError(f"Invalid key value: {bad_key}")  # what the Batch SDK raises on a TypeError
    assert bad_key not in str(translate(leaky, resource="pool"))


async def storage_failure(
    behaviour: Behaviour, call: Callable[[BlobServiceClient], Awaitable[object]], key: str = KEY
) -> BaseException:
    """Let a real BlobServiceClient meet *behaviour*; return what *call* raised."""
    async with StubServer(behaviour) as server:
        creds = {"account_name": "acct", "account_key": key}
        async with BlobServiceClient(f"{server.url}/acct", credential=creds, **sdk_client_kwargs()) as svc:
            with pytest.raises(Exception) as info:
                await call(svc)
    return info.value


def container_properties(svc: BlobServiceClient) -> Awaitable[object]:
    return svc.get_container_client("inputs").get_container_properties()


@pytest.mark.anyio
async def test_malformed_storage_key_is_a_configuration_error() -> None:
    exc = await storage_failure(storage_error(500, "InternalError"), container_properties, key="bm90LWE")
    assert isinstance(exc, ClientAuthenticationError)
    err = translate(exc, resource="container", resource_id="inputs")
    assert isinstance(err, ConfigurationError) and "AZURE_STORAGE_CONNECTION_STRING" in str(err)


@pytest.mark.anyio
async def test_storage_404_names_the_container() -> None:
    exc = await storage_failure(storage_error(404, "ContainerNotFound"), container_properties)
    err = translate(exc, resource="container", resource_id="inputs")
    assert isinstance(err, NotFoundError) and err.code == "ContainerNotFound" and err.service == "storage"
    assert "'inputs'" in str(err) and "ensure_container" in str(err)


async def sas_failure(behaviour: Behaviour, expiry: str, upload: bool = False) -> BaseException:
    async with StubServer(behaviour) as server:
        url = f"{server.url}/acct/c/b.txt?sv=2024-08-04&se={expiry}&sr=b&sp=r&sig={SIG}"
        async with BlobClient.from_blob_url(url, **sdk_client_kwargs()) as blob:
            with pytest.raises(Exception) as info:
                if upload:
                    await blob.upload_blob(b"x", overwrite=True)
                else:
                    await blob.download_blob()
    return info.value


@pytest.mark.anyio
async def test_expired_sas_is_sas_expired_and_hides_the_signature() -> None:
    behaviour = storage_error(403, "AuthenticationFailed", "Signed expiry time has passed")
    exc = await sas_failure(behaviour, "2020-01-01T00%3A00%3A00Z")
    err = translate(exc, resource="blob", resource_id="b.txt", action="download")
    assert isinstance(err, SasExpiredError) and err.expiry is not None and err.expiry.year == 2020
    assert SIG not in str(err) + repr(err) and "Mint a new SAS" in str(err)


@pytest.mark.anyio
async def test_sas_lacking_permission_is_authentication_not_expiry() -> None:
    exc = await sas_failure(storage_error(403, "AuthorizationPermissionMismatch"), "2999-01-01", upload=True)
    err = translate(exc, resource="blob", resource_id="b.txt", action="upload")
    assert type(err) is AuthenticationError and "lacks this permission" in str(err)


@pytest.mark.anyio
async def test_unreachable_endpoint_is_service_unavailable_naming_the_variable() -> None:
    async with batch_client(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(ServiceRequestError) as info:
            await client.get_pool("pets")
    err = translate(info.value, resource="pool", resource_id="pets")
    assert isinstance(err, ServiceUnavailableError) and err.status is None
    assert "AZURE_BATCH_ENDPOINT" in str(err)


def test_transport_errors_and_odd_inputs() -> None:
    assert isinstance(translate(asyncio.TimeoutError(), resource="job", resource_id="j"), ServiceUnavailableError)
    assert isinstance(translate(ConnectionResetError(), resource="blob"), ServiceUnavailableError)
    no_token = translate(ClientAuthenticationError("DefaultAzureCredential failed"), resource="job")
    assert isinstance(no_token, AuthenticationError) and "az login" in str(no_token)
    mine = NotFoundError("x")
    assert translate(mine) is mine
    other = translate(KeyError("k"), resource="task", resource_id="t")
    assert type(other) is AiobatchError and "KeyError" in str(other) and "'t'" in str(other)
