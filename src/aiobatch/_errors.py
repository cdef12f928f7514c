"""The error tree of aiobatch, and the one place that translates SDK exceptions.

Every error aiobatch raises on purpose derives from `AiobatchError`. Each class says in one line when it is
raised and carries the context a caller needs to act (ids, counts, codes); its message names the resource and
the fix.

    AiobatchError
    ├── ConfigurationError          a setting or argument is missing or malformed (also a ValueError)
    ├── ServiceError                Batch or Storage answered with an error
    │   ├── AuthenticationError     credentials refused (401/403) or none could be obtained
    │   ├── NotFoundError           the pool, job, task, container or blob does not exist
    │   ├── ConflictError           it exists already, or its state forbids the operation (409)
    │   └── ServiceUnavailableError transient failures outlasted the retry policy
    ├── StorageError                a transfer went wrong on our side of the wire
    │   ├── IntegrityError          downloaded bytes do not match the stored hash
    │   └── SasExpiredError         a SAS URL was used after its expiry
    ├── PoolError                   a pool cannot serve the run
    │   ├── PoolResizeError         the pool reported resize errors (quota, allocation)
    │   ├── PoolStartTaskError      every node's start task failed
    │   └── PoolTimeoutError        the pool was not ready in time
    ├── JobError                    a job cannot run as asked
    │   ├── SubmissionError         some tasks could not be added
    │   └── TaskFailedError         a task ended in failure
    └── DeadlineExceededError       an overall timeout passed

`translate` turns azure-core exceptions (and the transport and key-decoding errors beneath them) into this
tree; callers catch `TRANSLATABLE` and ``raise translate(exc, resource=..., resource_id=...) from exc``.

Messages never carry a secret: each goes through `aiobatch._redact.redact`.
"""

from __future__ import annotations

import asyncio
import binascii
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from ._redact import redact

__all__ = [
    "TRANSLATABLE",
    "AiobatchError",
    "AuthenticationError",
    "ConfigurationError",
    "ConflictError",
    "DeadlineExceededError",
    "IntegrityError",
    "JobError",
    "NotFoundError",
    "PoolError",
    "PoolResizeError",
    "PoolStartTaskError",
    "PoolTimeoutError",
    "SasExpiredError",
    "ServiceError",
    "ServiceUnavailableError",
    "StorageError",
    "SubmissionError",
    "TaskFailedError",
    "translate",
]

# ----------------------------------------------------------------------------------------------------
# The tree
# ----------------------------------------------------------------------------------------------------


def _restore(cls: type[AiobatchError], state: dict[str, Any]) -> AiobatchError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class AiobatchError(Exception):
    """Raised when aiobatch reports any failure on purpose; the root of the tree.

    The message is redacted when the error is built, so neither ``str()`` nor ``repr()`` can show a secret.

    Attributes:
        message: the redacted message, which names the resource and the fix.
    """

    def __init__(self, message: str) -> None:
        self.message = redact(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only context would be lost (or break) with Exception's default reduce of ``cls(*args)``.
        return (_restore, (type(self), dict(self.__dict__)))


class ConfigurationError(AiobatchError, ValueError):
    """Raised when a setting or argument is missing or malformed, before any request is sent.

    Attributes:
        setting: the environment variable or argument at fault (e.g. ``"AZURE_BATCH_ACCOUNT_KEY"``), if one.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class ServiceError(AiobatchError):
    """Raised when Batch or Blob Storage answered a request with an error no narrower class describes.

    Attributes:
        service: ``"batch"`` or ``"storage"`` (``None`` if unknown).
        status: the HTTP status, or ``None`` when no answer arrived.
        code: the service's error code (``"PoolExists"``, ``"BlobNotFound"``, ...), if it sent one.
        resource_kind: what the request was about: ``"pool"``, ``"job"``, ``"task"``, ``"container"``, ...
        resource_id: which one, if known.
        request_id: the service's request id, for a support ticket.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str | None = None,
        status: int | None = None,
        code: str | None = None,
        resource_kind: str | None = None,
        resource_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.status = status
        self.code = code
        self.resource_kind = resource_kind
        self.resource_id = resource_id
        self.request_id = request_id


class AuthenticationError(ServiceError):
    """Raised when the service refused the credentials (401/403), or no credential could be obtained."""


class NotFoundError(ServiceError):
    """Raised when the pool, job, task, node, application, container or blob named does not exist (404)."""


class ConflictError(ServiceError):
    """Raised when the resource exists already (and this run did not create it) or its state forbids the call.

    ``code`` tells which: ``PoolExists``/``JobExists``/``TaskExists``, ``PoolBeingDeleted``, ...
    """


class ServiceUnavailableError(ServiceError):
    """Raised when transient failures (429, 5xx, timeouts, dropped connections) outlasted the retry policy.

    Attributes:
        attempts: how many attempts were made (``None`` if the error was not retried).
        elapsed: seconds from the first attempt to giving up (``None`` if unknown).
        reached_service: ``False`` when no attempt was sent at all (every one failed to connect), so the request
            certainly took no effect; ``True`` when one may have reached the service.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: int | None = None,
        elapsed: float | None = None,
        reached_service: bool = True,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.attempts = attempts
        self.elapsed = elapsed
        self.reached_service = reached_service


class StorageError(AiobatchError):
    """Raised when a transfer to or from Blob Storage went wrong on the client's side of the wire.

    Attributes:
        container: the container involved, if one.
        blob: the blob involved, if one.
    """

    def __init__(self, message: str, *, container: str | None = None, blob: str | None = None) -> None:
        super().__init__(message)
        self.container = container
        self.blob = blob


class IntegrityError(StorageError):
    """Raised when downloaded bytes do not match the blob's stored MD5; no final file is left behind.

    Attributes:
        path: the local file that would have been written.
        expected_md5: the stored MD5 (hex).
        actual_md5: the MD5 of what arrived (hex).
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        container: str | None = None,
        blob: str | None = None,
        path: str | None = None,
        expected_md5: str | None = None,
        actual_md5: str | None = None,
    ) -> None:
        if message is None:
            message = (
                f"blob {blob!r} in container {container!r} failed its integrity check: stored MD5 "
                f"{expected_md5}, received {actual_md5}; no file was written to {path!r}. The blob was "
                "corrupted in storage or in transit: download it again, and if the mismatch persists "
                "re-upload it."
            )
        super().__init__(message, container=container, blob=blob)
        self.path = path
        self.expected_md5 = expected_md5
        self.actual_md5 = actual_md5


class SasExpiredError(StorageError):
    """Raised when a SAS URL was refused because its validity window has passed (or not yet begun).

    Attributes:
        expiry: the SAS's ``se`` expiry, if it could be read from the URL.
    """

    def __init__(
        self,
        message: str,
        *,
        container: str | None = None,
        blob: str | None = None,
        expiry: dt.datetime | None = None,
    ) -> None:
        super().__init__(message, container=container, blob=blob)
        self.expiry = expiry


class PoolError(AiobatchError):
    """Raised when a pool cannot serve the run.

    Attributes:
        pool_id: the pool.
    """

    def __init__(self, message: str, *, pool_id: str | None = None) -> None:
        super().__init__(message)
        self.pool_id = pool_id


class PoolResizeError(PoolError):
    """Raised when a pool reports resize errors (a core quota, no capacity) and has no usable node.

    Attributes:
        errors: the pool's resize errors as ``(code, message)`` pairs.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        pool_id: str | None = None,
        errors: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.errors = tuple(errors)
        if message is None:
            listed = "; ".join(f"{code}: {text}" for code, text in self.errors) or "no details"
            message = (
                f"pool {pool_id!r} could not allocate nodes ({listed}). Request a quota increase for the VM "
                "family, choose another vm_size or region, or lower dedicated_nodes/spot_nodes."
            )
        super().__init__(message, pool_id=pool_id)


class PoolStartTaskError(PoolError):
    """Raised when every node of a pool failed its start task, so no task can ever run there.

    Attributes:
        failed_nodes: ids of the nodes whose start task failed.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        pool_id: str | None = None,
        failed_nodes: Iterable[str] = (),
    ) -> None:
        self.failed_nodes = tuple(failed_nodes)
        if message is None:
            message = (
                f"the start task failed on every node of pool {pool_id!r} ({len(self.failed_nodes)} nodes). "
                "Read its stderr.txt on a node, fix the start task's command line or resource files, then "
                "delete and recreate the pool."
            )
        super().__init__(message, pool_id=pool_id)


class PoolTimeoutError(PoolError):
    """Raised when a pool did not reach enough usable nodes within the timeout.

    Attributes:
        timeout: the timeout, in seconds.
    """

    def __init__(self, message: str | None = None, *, pool_id: str | None = None, timeout: float = 0.0) -> None:
        self.timeout = timeout
        if message is None:
            message = (
                f"pool {pool_id!r} had too few usable nodes after {timeout:g} s. Wait longer (timeout=), "
                "check the pool's allocation state in the portal, or lower the node count asked for."
            )
        super().__init__(message, pool_id=pool_id)


class JobError(AiobatchError):
    """Raised when a job cannot run as asked.

    Attributes:
        job_id: the job.
    """

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class SubmissionError(JobError):
    """Raised when some tasks could not be added to a job; says which were added, existed and failed.

    Attributes:
        added: ids of tasks this call added.
        existing: ids of tasks an earlier, ambiguous attempt of this call had already added.
        failed: task id -> the service's reason, for tasks that were not added.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        job_id: str | None = None,
        added: Iterable[str] = (),
        existing: Iterable[str] = (),
        failed: Mapping[str, str] | None = None,
    ) -> None:
        self.added = tuple(added)
        self.existing = tuple(existing)
        self.failed: dict[str, str] = dict(failed or {})
        if message is None:
            sample = "; ".join(f"{tid}: {why}" for tid, why in list(self.failed.items())[:3])
            more = f" (and {len(self.failed) - 3} more)" if len(self.failed) > 3 else ""
            total = len(self.added) + len(self.existing) + len(self.failed)
            message = (
                f"{len(self.failed)} of {total} tasks could not be added to job {job_id!r}: {sample}{more}. "
                "Fix those task specs and submit them again; tasks already added are kept."
            )
        super().__init__(message, job_id=job_id)


class TaskFailedError(JobError):
    """Raised when a task ended in failure (non-zero exit code or a failure the service reported).

    Attributes:
        task_id: the task.
        exit_code: its exit code, if it ran.
        failure_code: the service's failure code (e.g. ``"BlobAccessDenied"``), if any.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        job_id: str | None = None,
        task_id: str | None = None,
        exit_code: int | None = None,
        failure_code: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.exit_code = exit_code
        self.failure_code = failure_code
        if message is None:
            why = f"failure {failure_code}" if failure_code else f"exit code {exit_code}"
            message = (
                f"task {task_id!r} of job {job_id!r} failed ({why}). Read its stderr.txt "
                "(the failure event can fetch the tail) and fix the command line or its inputs."
            )
        super().__init__(message, job_id=job_id)


class DeadlineExceededError(AiobatchError):
    """Raised when an operation's overall timeout passed before it finished.

    Attributes:
        operation: what was being waited for.
        timeout: the timeout, in seconds.
    """

    def __init__(self, message: str | None = None, *, operation: str = "operation", timeout: float = 0.0) -> None:
        self.operation = operation
        self.timeout = timeout
        if message is None:
            message = f"{operation} did not finish within {timeout:g} s; pass a longer timeout= or check progress."
        super().__init__(message)


# ----------------------------------------------------------------------------------------------------
# Translation
# ----------------------------------------------------------------------------------------------------

#: The exception types `translate` understands; catch these at the SDK boundary.
TRANSLATABLE: tuple[type[BaseException], ...] = (
    AzureError,
    binascii.Error,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
)

_BATCH_KINDS = frozenset({"pool", "job", "task", "node", "application", "batch account", "job schedule"})
_STORAGE_KINDS = frozenset({"container", "blob", "storage account"})

_CREDENTIAL_VARS = {
    "batch": "AZURE_BATCH_ACCOUNT_NAME and AZURE_BATCH_ACCOUNT_KEY",
    "storage": "AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT_URL with an Entra ID role)",
}
_ENDPOINT_VARS = {"batch": "AZURE_BATCH_ENDPOINT", "storage": "AZURE_STORAGE_CONNECTION_STRING"}

_NOT_FOUND_FIX = {
    "pool": "check the pool id, or create the pool first (ensure_pool)",
    "job": "check the job id, or create the job first (create_job)",
    "task": "check the task and job ids",
    "node": "the node may have been removed by a resize; list the pool's nodes again",
    "application": ("upload the application package to the Batch account, or fix the application id and version"),
    "container": "check the container name, or create it first (ensure_container / upload_files)",
    "blob": "check the blob name, or upload it first (upload_files)",
}

_CODE_FIX = {
    "PoolBeingDeleted": "it is being deleted: wait until the deletion finishes, or choose another pool id",
    "JobBeingDeleted": "it is being deleted: wait until the deletion finishes, or choose another job id",
    "ContainerBeingDeleted": "it is being deleted: wait a minute, or choose another container name",
    "JobCompleted": "the job has completed and takes no more tasks: create a new job",
    "JobNotActive": "the job is not active: re-enable it or create a new job",
    "ActiveJobAndScheduleQuotaReached": "delete finished jobs, or ask for a higher job quota",
    "PoolQuotaReached": "delete unused pools, or ask for a higher pool quota",
    "InvalidApplicationPackageReferences": (
        "upload the application package (and set its default version) in the Batch account, "
        "or fix the application id and version in the spec"
    ),
    "RequestBodyTooLarge": "send fewer or smaller items per request",
    "AuthorizationPermissionMismatch": "the SAS or identity lacks this permission: mint one that grants it",
    "AuthorizationResourceTypeMismatch": "the SAS is for another kind of resource: mint one for it",
}


def _service_of(kind: str | None) -> str | None:
    if kind in _BATCH_KINDS:
        return "batch"
    if kind in _STORAGE_KINDS:
        return "storage"
    return None


def _describe(kind: str | None, rid: str | None) -> str:
    if kind and rid:
        return f"{kind} {rid!r}"
    return kind or "the resource"


def _header(exc: HttpResponseError, *names: str) -> str | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name in names:
        value = headers.get(name)
        if value:
            return str(value)
    return None


def _code_and_text(exc: HttpResponseError) -> tuple[str | None, str]:
    """Pull the service's error code and a one-line message out of a Batch or Storage error."""
    code: str | None = None
    text = ""
    error = getattr(exc, "error", None)  # ODataV4Format (Batch's BatchErrorFormat flattens message.value)
    if error is not None:
        code = getattr(error, "code", None) or None
        raw = getattr(error, "message", None)
        if isinstance(raw, Mapping):
            raw = raw.get("value")
        text = str(raw or "")
        details = [f"{d.code}: {d.message}" for d in getattr(error, "details", None) or [] if d.code or d.message]
        if details:
            text = f"{text} ({'; '.join(details)})" if text else "; ".join(details)
    storage_code = getattr(exc, "error_code", None)
    if not code and storage_code:
        code = str(getattr(storage_code, "value", storage_code))
    if not code:
        code = _header(exc, "x-ms-error-code")
    if not text:
        # azure-storage-blob puts "<message>\nRequestId:...\nTime:...\nErrorCode:..." in exc.message.
        lines = str(getattr(exc, "message", None) or exc.reason or "").strip().splitlines()
        text = lines[0] if lines else ""
    return code, " ".join(str(text).split())


def _is_malformed_key(exc: BaseException) -> bool:
    """Tell whether *exc* is an SDK's way of saying an account key is not base64.

    Never quote such an exception's text: the Batch SDK's ``"Invalid key value: <key>"`` contains the key.
    """
    if isinstance(exc, binascii.Error) or isinstance(exc.__cause__, binascii.Error):
        return True
    if type(exc).__name__ == "AzureSigningError":  # azure-storage-blob wraps the binascii.Error in this
        return True
    return isinstance(exc, ValueError) and str(exc).startswith("Invalid key value")


def _request_url(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    request = getattr(response, "request", None)
    url = getattr(request, "url", None)
    return str(url) if url else None


def translate(
    exc: BaseException,
    *,
    resource: str | None = None,
    resource_id: str | None = None,
    action: str | None = None,
    attempts: int | None = None,
    elapsed: float | None = None,
    note: str | None = None,
) -> AiobatchError:
    """Turn an exception from azure-core, the transport or the SDK's key handling into an aiobatch error.

    The one place where SDK exceptions meet the error tree; use it as
    ``raise translate(exc, resource="pool", resource_id=pool_id, action="create") from exc``.
    An `AiobatchError` is returned unchanged; an exception outside `TRANSLATABLE` becomes a plain
    `AiobatchError` naming its type (catch only `TRANSLATABLE` to let bugs surface as themselves).

    Mapping: a malformed key (``binascii.Error``) -> `ConfigurationError`; 401/403 and credential failures ->
    `AuthenticationError` (a refused SAS past its expiry -> `SasExpiredError`); 404 -> `NotFoundError`; 409 ->
    `ConflictError`; 408/429/5xx, connection failures and timeouts -> `ServiceUnavailableError`; any other
    status -> `ServiceError`.

    Args:
        exc: the exception caught.
        resource: the kind of resource the call was about: ``"pool"``, ``"job"``, ``"task"``, ``"node"``,
            ``"application"``, ``"container"``, ``"blob"``, ``"batch account"``, ``"storage account"``.
        resource_id: which one (a pool id, a container name, a blob name).
        action: the verb, for the message (``"create"``, ``"upload"``, ``"delete"``).
        attempts: attempts made, when the retry policy gave up.
        elapsed: seconds spent, when the retry policy gave up.
        note: one more sentence for the message (e.g. why the retry policy stopped).

    Returns:
        The typed error; its message names the resource and what to do.

    Example:
        >>> from azure.core.exceptions import ResourceNotFoundError
        >>> err = translate(ResourceNotFoundError("gone"), resource="pool", resource_id="p1", action="resize")
        >>> type(err).__name__, err.resource_id
        ('NotFoundError', 'p1')
    """
    # The retry policy decides what is transient; imported here because `_retry` builds on this module.
    from ._retry import transient_status
    from ._sas import sas_expiry

    if isinstance(exc, AiobatchError):
        return exc
    kind = resource
    service = _service_of(kind)
    what = _describe(kind, resource_id)
    verb = action or "get"
    head = f"{verb} {what} failed"
    tail = f" {note}" if note else ""
    tried = ""
    if attempts is not None:
        tried = f" after {attempts} attempt{'s' if attempts != 1 else ''}"
        if elapsed is not None:
            tried += f" over {elapsed:.1f} s"
    ctx: dict[str, Any] = {"service": service, "resource_kind": kind, "resource_id": resource_id}

    if _is_malformed_key(exc):
        var = "AZURE_BATCH_ACCOUNT_KEY" if service == "batch" else "the storage account key"
        if service == "storage":
            var = "AccountKey in AZURE_STORAGE_CONNECTION_STRING"
        return ConfigurationError(
            f"{head}: the account key is malformed (not valid base64). Copy the key again, "
            f"whole, into {var} (it ends with '=' or '==').",
            setting=var,
        )

    if isinstance(exc, HttpResponseError) and exc.status_code is not None and exc.status_code >= 400:
        status = exc.status_code
        code, text = _code_and_text(exc)
        request_id = _header(exc, "x-ms-request-id", "request-id")
        ctx.update(status=status, code=code, request_id=request_id)
        said = f"{status} {code or exc.reason or ''}".strip()
        detail = f": {text}" if text else ""
        rid = f" (request id {request_id})" if request_id else ""
        fix = _CODE_FIX.get(code or "")

        if status in (401, 403) or isinstance(exc, ClientAuthenticationError):
            url = _request_url(exc)
            expiry = sas_expiry(url)
            now = dt.datetime.now(dt.timezone.utc)
            if expiry is not None and status == 403 and (expiry <= now or "time frame" in text.lower()):
                return SasExpiredError(
                    f"{head}: the SAS URL expired at {expiry.isoformat()} ({said}){rid}. Mint a new SAS "
                    "whose expiry covers the whole job (queue wait, run and output upload) plus a margin, "
                    "and resubmit the affected tasks.",
                    container=resource_id if kind == "container" else None,
                    blob=resource_id if kind == "blob" else None,
                    expiry=expiry,
                )
            fix = fix or (
                f"check {_CREDENTIAL_VARS.get(service or '', 'the account name and key')}, or the Entra ID "
                "identity's role on the account"
            )
            return AuthenticationError(f"{head}: credentials refused ({said}){detail}{rid}. Fix: {fix}.", **ctx)
        if status == 404:
            fix = fix or _NOT_FOUND_FIX.get(kind or "", "check the name")
            return NotFoundError(f"{head}: not found ({said}){detail}{rid}. Fix: {fix}.", **ctx)
        if status == 409:
            fix = fix or (
                f"{what} already exists or is in a state that forbids this. If it is not this run's, choose "
                "another id; if an earlier run left it behind, delete it and try again"
            )
            return ConflictError(f"{head}: conflict ({said}){detail}{rid}. Fix: {fix}.", **ctx)
        if transient_status(status):
            fix = "the service is busy or failing; try later, or raise the retry policy's attempts/deadline"
            return ServiceUnavailableError(
                f"{head}{tried}: the service did not succeed ({said}){detail}{rid}.{tail} Fix: {fix}.",
                attempts=attempts,
                elapsed=elapsed,
                **ctx,
            )
        fix = fix or f"correct the {kind or 'request'} spec and try again"
        return ServiceError(f"{head}: rejected ({said}){detail}{rid}. Fix: {fix}.", **ctx)

    if isinstance(exc, ResourceNotFoundError):
        fix = _NOT_FOUND_FIX.get(kind or "", "check the name")
        return NotFoundError(f"{head}: not found. Fix: {fix}.", status=404, **ctx)
    if isinstance(exc, ResourceExistsError):
        return ConflictError(
            f"{head}: {what} already exists. Fix: choose another id, or delete the old one.",
            status=409,
            **ctx,
        )
    if isinstance(exc, ClientAuthenticationError):
        # No HTTP answer: azure-identity could not produce a token at all.
        return AuthenticationError(
            f"{head}: no credential is available ({type(exc).__name__}: {exc.message}). Fix: set "
            f"{_CREDENTIAL_VARS.get(service or '', 'an account key')}, or sign in (az login, managed "
            "identity).",
            **ctx,
        )
    if isinstance(
        exc,
        (
            ServiceRequestError,
            ServiceResponseError,
            IncompleteReadError,
            aiohttp.ClientError,
            asyncio.TimeoutError,
            ConnectionError,
        ),
    ) or (isinstance(exc, HttpResponseError) and (exc.status_code is None or exc.status_code < 400)):
        var = _ENDPOINT_VARS.get(service or "", "the endpoint setting")
        reason = str(exc) or type(exc).__name__
        return ServiceUnavailableError(
            f"{head}{tried}: no usable answer ({type(exc).__name__}: {reason}).{tail} Fix: check {var} "
            "and the network; if the service is merely slow, raise the retry policy's attempts/deadline.",
            attempts=attempts,
            elapsed=elapsed,
            **ctx,
        )
    if isinstance(exc, AzureError):
        text = getattr(exc, "message", None) or str(exc)
        if "md5 mismatch" in text.lower():
            return IntegrityError(
                f"{head}: a transfer failed its MD5 check ({text}). Fix: try again; if it persists, re-upload.",
                container=resource_id if kind == "container" else None,
                blob=resource_id if kind == "blob" else None,
            )
        return ServiceError(f"{head}: {type(exc).__name__}: {text}. Fix: try again.", **ctx)
    return AiobatchError(f"{head}: unexpected {type(exc).__name__}: {exc}.")
