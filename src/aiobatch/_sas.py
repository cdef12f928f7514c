"""SAS minting: read-only SAS for one blob, create/write-only SAS for a container, and their validity window.

`input_sas_url` grants read on one blob; `output_container_sas_url` grants create and write on one container
(no read, list or delete). Both start a few minutes in the past (clock skew) and expire after the job's expected
duration plus a margin, bounded by `SasPolicy.max_lifetime`. With an account key they are service SAS signed by
the key (which never appears in the URL); with Entra ID they are user delegation SAS, signed by a user
delegation key that is fetched once per `BlobServiceClient` and reused for every SAS whose window it covers (it
is fetched to last an hour past the SAS that needed it, at most 7 days from now); a SAS that would outlive it
gets a new one. `sas_expiry` reads a SAS URL's expiry back, for the errors and events that explain an expired
one.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import Any

import anyio
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)
from azure.storage.blob.aio import BlobServiceClient

from ._errors import AuthenticationError, ConfigurationError
from ._retry import call

__all__ = [
    "SasPolicy",
    "container_write_token",
    "input_sas_url",
    "output_container_sas_url",
    "sas_expiry",
    "user_delegation_key",
]

logger = logging.getLogger("aiobatch")


@dataclass(frozen=True)
class SasPolicy:
    """How long the SAS URLs aiobatch mints stay valid.

    A SAS baked into a task cannot be renewed once the task is submitted, so its expiry must cover the wait in
    the queue, the run and the output upload: *duration* (the job's expected length) plus *margin*. The start is
    backdated by *backdate* to tolerate clock skew between this machine, the nodes and the storage service.

    Args:
        duration: seconds the job is expected to take, from now.
        margin: seconds added after *duration*.
        backdate: seconds the validity starts before now.
        max_lifetime: the bound on *duration* + *margin* (7 days, the limit for user delegation keys).

    Raises:
        ConfigurationError: a negative value, or *duration* + *margin* beyond *max_lifetime*.

    Example:
        >>> SasPolicy(duration=2 * 3600).margin
        3600.0
    """

    duration: float = 24 * 3600.0
    margin: float = 3600.0
    backdate: float = 300.0
    max_lifetime: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if min(self.duration, self.margin, self.backdate) < 0 or self.duration + self.margin <= 0:
            raise ConfigurationError("SasPolicy durations must be non-negative, with duration + margin > 0.")
        if self.duration + self.margin > self.max_lifetime:
            raise ConfigurationError(
                f"a SAS valid for {self.duration + self.margin:g} s exceeds the {self.max_lifetime:g} s bound; "
                "split the run into shorter jobs or raise max_lifetime (at most 7 days with Entra ID).",
                setting="SasPolicy",
            )

    def window(self, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
        """Return ``(start, expiry)`` in UTC for a SAS minted at *now*."""
        now = now or dt.datetime.now(dt.timezone.utc)
        start = now - dt.timedelta(seconds=self.backdate)
        return start.replace(microsecond=0), (now + dt.timedelta(seconds=self.duration + self.margin)).replace(
            microsecond=0
        )


def _utc(value: str) -> dt.datetime:
    """A time as the service writes it (``2030-01-01T00:00:00Z``), as an aware datetime."""
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def sas_expiry(url: str | None) -> dt.datetime | None:
    """Read a SAS URL's expiry (its ``se`` parameter), e.g. to explain a task that failed on an expired SAS.

    Args:
        url: a URL with a SAS query (``None`` is accepted).

    Returns:
        The expiry in UTC, or ``None`` if the URL has none (or an unreadable one).

    Example:
        >>> sas_expiry("https://a.blob.core.windows.net/c/b?se=2030-01-01T00%3A00%3A00Z&sig=x").year
        2030
    """
    if not url:
        return None
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(str(url)).query)
    values = query.get("se")
    if not values:
        return None
    try:
        return _utc(values[0])
    except ValueError:
        return None


def _account_key(service: BlobServiceClient) -> str | None:
    key = getattr(service.credential, "account_key", None)
    return str(key) if key else None


async def user_delegation_key(service: BlobServiceClient, *, policy: SasPolicy | None = None) -> UserDelegationKey:
    """Fetch a user delegation key covering *policy*'s window (needs an Entra ID credential).

    `input_sas_url` and `output_container_sas_url` fetch one themselves when needed and keep it for the next
    SAS; call this to hold a key of your own and pass it as their *delegation_key*.

    Args:
        service: a blob service authenticated with Entra ID.
        policy: the validity window to cover.

    Returns:
        The key.

    Raises:
        AuthenticationError: the identity may not obtain delegation keys (it needs a Storage Blob Data role).
    """
    start, expiry = (policy or SasPolicy()).window()
    return await _fetch_delegation_key(service, start, expiry)


async def _fetch_delegation_key(
    service: BlobServiceClient, start: dt.datetime, expiry: dt.datetime
) -> UserDelegationKey:
    try:
        key: UserDelegationKey = await call(
            lambda: service.get_user_delegation_key(start, expiry),
            resource="storage account",
            action="get a user delegation key for",
        )
    except AuthenticationError as exc:
        if exc.status is None:
            raise  # no token at all: the message already says how to sign in
        raise AuthenticationError(
            f"{exc} Minting SAS URLs with Entra ID needs a user delegation key: give the identity a role that "
            "may get one on the storage account (Storage Blob Delegator, or Storage Blob Data Contributor), or "
            "sign SAS URLs with the account key instead (a connection string that carries it).",
            service=exc.service,
            status=exc.status,
            code=exc.code,
            resource_kind=exc.resource_kind,
            resource_id=exc.resource_id,
            request_id=exc.request_id,
        ) from exc
    logger.debug("fetched a user delegation key valid from %s to %s", key.signed_start, key.signed_expiry)
    return key


#: A user delegation key is fetched to outlast the SAS that needed it by this much, so that the SAS minted over
#: the next while (same policy, a little later) are signed by the same key.
_KEY_SLACK = dt.timedelta(hours=1)
#: The longest a user delegation key may be valid for, from now (the service's limit).
_KEY_MAX_LIFETIME = dt.timedelta(days=7)


@dataclass
class _KeyCache:
    """One service client's user delegation key, and the lock that makes concurrent SAS mints fetch it once."""

    lock: anyio.Lock
    key: UserDelegationKey | None = None

    def covers(self, start: dt.datetime, expiry: dt.datetime) -> bool:
        """Whether the cached key is valid over the whole SAS window (a SAS signed by it dies with it)."""
        if self.key is None or not self.key.signed_start or not self.key.signed_expiry:
            return False
        return _utc(self.key.signed_start) <= start and expiry <= _utc(self.key.signed_expiry)


#: Per service client: the key goes when the client does.
_delegation_keys: weakref.WeakKeyDictionary[BlobServiceClient, _KeyCache] = weakref.WeakKeyDictionary()


async def _cached_delegation_key(
    service: BlobServiceClient, start: dt.datetime, expiry: dt.datetime
) -> UserDelegationKey:
    """The service client's user delegation key if it covers ``start``..``expiry``, else a new one that does."""
    cache = _delegation_keys.get(service)
    if cache is None:
        cache = _delegation_keys.setdefault(service, _KeyCache(anyio.Lock()))
    async with cache.lock:
        if not cache.covers(start, expiry):
            now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
            # Never shorter than the SAS: one past the service's limit (a raised SasPolicy.max_lifetime) is then
            # refused when the key is asked for, not silently dead when the task uses it.
            until = max(expiry, min(expiry + _KEY_SLACK, now + _KEY_MAX_LIFETIME))
            cache.key = await _fetch_delegation_key(service, start, until)
        assert cache.key is not None
        return cache.key


async def _signing(
    service: BlobServiceClient, start: dt.datetime, expiry: dt.datetime, delegation_key: UserDelegationKey | None
) -> dict[str, Any]:
    if delegation_key is not None:
        return {"user_delegation_key": delegation_key}
    key = _account_key(service)
    if key is not None:
        return {"account_key": key}
    if hasattr(service.credential, "get_token"):
        return {"user_delegation_key": await _cached_delegation_key(service, start, expiry)}
    raise ConfigurationError(
        "cannot mint SAS URLs: the storage client has neither an account key nor an Entra ID credential. Use a "
        "connection string with AccountKey=, or AZURE_STORAGE_ACCOUNT_URL with Entra ID.",
        setting="AZURE_STORAGE_CONNECTION_STRING",
    )


async def input_sas_url(
    service: BlobServiceClient,
    container: str,
    blob: str,
    *,
    policy: SasPolicy | None = None,
    delegation_key: UserDelegationKey | None = None,
) -> str:
    """Return a read-only SAS URL for one blob, for a task's resource file.

    Args:
        service: the blob service (with an account key or an Entra ID credential).
        container: the container.
        blob: the blob name.
        policy: the validity window.
        delegation_key: a user delegation key to sign with (Entra ID); fetched if needed and not given.

    Returns:
        The blob URL with a SAS granting read only; the account key is not in it.

    Raises:
        ConfigurationError: the client cannot sign (no key, no Entra ID credential).

    Example:
        >>> async def resource_url(service):
        ...     return await input_sas_url(service, "inputs", "my cat.mp4", policy=SasPolicy(duration=7200))
    """
    policy = policy or SasPolicy()
    start, expiry = policy.window()
    token = generate_blob_sas(
        service.account_name or "",
        container,
        blob,
        permission=BlobSasPermissions(read=True),
        start=start,
        expiry=expiry,
        **await _signing(service, start, expiry, delegation_key),
    )
    url: str = service.get_blob_client(container, blob).url
    logger.debug("minted read SAS for blob %r until %s", blob, expiry.isoformat())
    return f"{url}?{token}"


async def output_container_sas_url(
    service: BlobServiceClient,
    container: str,
    *,
    policy: SasPolicy | None = None,
    delegation_key: UserDelegationKey | None = None,
) -> str:
    """Return a create/write-only SAS URL for a container, for tasks' output files.

    The SAS cannot read, list or delete, so a task can add its outputs but not see or change others'.

    Args:
        service: the blob service (with an account key or an Entra ID credential).
        container: the container.
        policy: the validity window.
        delegation_key: a user delegation key to sign with (Entra ID); fetched if needed and not given.

    Returns:
        The container URL with a SAS granting create and write only.

    Raises:
        ConfigurationError: the client cannot sign.

    Example:
        >>> async def outputs_url(service):
        ...     return await output_container_sas_url(service, "outputs", policy=SasPolicy(duration=7200))
    """
    policy = policy or SasPolicy()
    start, expiry = policy.window()
    token = generate_container_sas(
        service.account_name or "",
        container,
        permission=ContainerSasPermissions(write=True, create=True),
        start=start,
        expiry=expiry,
        **await _signing(service, start, expiry, delegation_key),
    )
    url: str = service.get_container_client(container).url
    logger.debug("minted create/write SAS for container %r until %s", container, expiry.isoformat())
    return f"{url}?{token}"


def container_write_token(
    service: BlobServiceClient, container: str, *, start: dt.datetime, expiry: dt.datetime
) -> str | None:
    """A create/write SAS token (the query, without ``?``) for *container*, signed by the account key.

    For a client's own uploads: made once per call and used for every small file's Put Blob, where signing each
    request with Shared Key would cost an HMAC apiece. Never handed to tasks.

    Returns:
        The token, or ``None`` when the client has no account key (a SAS or Entra ID client signs otherwise).
    """
    key = _account_key(service)
    if key is None:
        return None
    token: str = generate_container_sas(
        service.account_name or "",
        container,
        account_key=key,
        permission=ContainerSasPermissions(write=True, create=True),
        start=start,
        expiry=expiry,
    )
    return token
