"""Where Batch and Blob Storage are, and how to sign in to them: from arguments or the environment.

Nothing here does I/O; everything is validated when the settings are built, so a bad setting fails before the
first request with a `ConfigurationError` naming the variable and the fix.

Environment variables:

    AZURE_BATCH_ENDPOINT               https://<account>.<region>.batch.azure.com (or the emulator's URL)
    AZURE_BATCH_ACCOUNT_NAME           the Batch account name (needed with a key)
    AZURE_BATCH_ACCOUNT_KEY            a Batch account key; absent -> Entra ID (DefaultAzureCredential)
    AZURE_STORAGE_CONNECTION_STRING    a storage connection string (with AccountKey or a SAS), or
    AZURE_STORAGE_ACCOUNT_URL          https://<account>.blob.core.windows.net -> Entra ID

Secrets never show: reprs mask keys and SAS signatures, and keys are registered with `register_secret` so
`redact` masks them anywhere else they might surface.
"""

from __future__ import annotations

import base64
import binascii
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from azure.core.credentials import AzureNamedKeyCredential

from ._errors import ConfigurationError
from ._redact import redact, register_secret

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = [
    "BatchSettings",
    "Settings",
    "StorageSettings",
    "default_credential",
]

ENV_BATCH_ENDPOINT = "AZURE_BATCH_ENDPOINT"
ENV_BATCH_ACCOUNT_NAME = "AZURE_BATCH_ACCOUNT_NAME"
ENV_BATCH_ACCOUNT_KEY = "AZURE_BATCH_ACCOUNT_KEY"
ENV_STORAGE_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_STORAGE_ACCOUNT_URL = "AZURE_STORAGE_ACCOUNT_URL"

# Azurite's (and the old storage emulator's) shorthand, expanded as the SDK does.
_DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


def _check_url(value: str, *, setting: str, example: str) -> str:
    value = value.strip()
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"{setting} must be an http(s) URL such as {example}, not {redact(value)!r}. "
            "Copy the URL (with its https:// prefix) from the Azure portal.",
            setting=setting,
        )
    return value.rstrip("/")


def _check_key(value: str, *, setting: str) -> str:
    value = value.strip()
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        # Never echo the key: say what is wrong with it, not what it is.
        raise ConfigurationError(
            f"{setting} is not a valid account key (it must be base64, {len(value)} characters given, "
            "usually 88 ending in '=='). Copy the key again, whole, from the account's Keys page.",
            setting=setting,
        )
    register_secret(value)
    return value


def _check_name(value: str, *, setting: str) -> str:
    value = value.strip()
    if not value or not all(c.isalnum() or c == "-" for c in value):
        raise ConfigurationError(
            f"{setting} must be an account name of letters and digits, not {value!r}.", setting=setting
        )
    return value


@dataclass(frozen=True, repr=False)
class BatchSettings:
    """Where the Batch account is and how to authenticate to it.

    With *account_key*, requests are signed with Shared Key (and *account_name* is required); without it, the
    client authenticates with an Entra ID token credential (`default_credential`).

    Args:
        endpoint: the account URL, ``https://<account>.<region>.batch.azure.com``.
        account_name: the account name; required with *account_key*.
        account_key: a base64 account key, or ``None`` for Entra ID.

    Raises:
        ConfigurationError: the endpoint is not a URL, the key is not base64, or the name is missing.

    Example:
        >>> s = BatchSettings(endpoint="https://acct.westeurope.batch.azure.com", account_name="acct",
        ...                   account_key="a2V5a2V5a2V5")
        >>> repr(s).endswith("account_key=***)")
        True
    """

    endpoint: str
    account_name: str | None = None
    account_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        endpoint = _check_url(
            self.endpoint or "",
            setting=ENV_BATCH_ENDPOINT,
            example="https://myaccount.westeurope.batch.azure.com",
        )
        object.__setattr__(self, "endpoint", endpoint)
        if self.account_key is not None:
            object.__setattr__(self, "account_key", _check_key(self.account_key, setting=ENV_BATCH_ACCOUNT_KEY))
            if not self.account_name:
                raise ConfigurationError(
                    f"{ENV_BATCH_ACCOUNT_NAME} is required with {ENV_BATCH_ACCOUNT_KEY}: set it to the Batch "
                    "account's name (the first label of its endpoint).",
                    setting=ENV_BATCH_ACCOUNT_NAME,
                )
        if self.account_name is not None:
            object.__setattr__(self, "account_name", _check_name(self.account_name, setting=ENV_BATCH_ACCOUNT_NAME))

    @property
    def uses_entra_id(self) -> bool:
        """Whether requests authenticate with an Entra ID token (no account key given)."""
        return self.account_key is None

    def shared_key_credential(self) -> AzureNamedKeyCredential | None:
        """Return the Shared Key credential, or ``None`` when Entra ID is to be used."""
        if self.account_key is None or self.account_name is None:
            return None
        return AzureNamedKeyCredential(self.account_name, self.account_key)

    def __repr__(self) -> str:
        key = "***" if self.account_key is not None else "None"
        return f"BatchSettings(endpoint={self.endpoint!r}, account_name={self.account_name!r}, account_key={key})"


@dataclass(frozen=True, repr=False)
class StorageSettings:
    """Where the Blob Storage account is and how to authenticate to it.

    Give a connection string (with ``AccountKey=`` or ``SharedAccessSignature=``;
    ``UseDevelopmentStorage=true`` means Azurite on its default port), or an account URL, which authenticates
    with Entra ID.

    Args:
        connection_string: a storage connection string.
        account_url: the blob endpoint, ``https://<account>.blob.core.windows.net``, used with Entra ID.

    Raises:
        ConfigurationError: neither or both given, or the string lacks an endpoint or has a malformed key.

    Example:
        >>> s = StorageSettings(account_url="https://acct.blob.core.windows.net")
        >>> s.account_url, s.uses_entra_id
        ('https://acct.blob.core.windows.net', True)
    """

    connection_string: str | None = field(default=None, repr=False)
    account_url: str | None = None
    account_name: str | None = field(default=None, init=False)
    account_key: str | None = field(default=None, init=False, repr=False)
    blob_endpoint: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if bool(self.connection_string) == bool(self.account_url):
            raise ConfigurationError(
                f"set exactly one of {ENV_STORAGE_CONNECTION_STRING} (the storage account's connection "
                f"string, from its Access keys page) or {ENV_STORAGE_ACCOUNT_URL} (its blob endpoint, to "
                f"sign in with Entra ID).",
                setting=ENV_STORAGE_CONNECTION_STRING,
            )
        if self.account_url:
            url = _check_url(
                self.account_url,
                setting=ENV_STORAGE_ACCOUNT_URL,
                example="https://myaccount.blob.core.windows.net",
            )
            object.__setattr__(self, "account_url", url)
            object.__setattr__(self, "blob_endpoint", url)
            object.__setattr__(self, "account_name", _account_from_url(url))
            return
        parts = _parse_connection_string(self.connection_string or "")
        name = parts.get("accountname")
        key = parts.get("accountkey")
        if key is not None:
            key = _check_key(key, setting=f"AccountKey in {ENV_STORAGE_CONNECTION_STRING}")
        if key is None and "sharedaccesssignature" not in parts:
            raise ConfigurationError(
                f"{ENV_STORAGE_CONNECTION_STRING} has neither AccountKey= nor SharedAccessSignature=. Copy "
                f"the whole connection string from the account's Access keys page, or use "
                f"{ENV_STORAGE_ACCOUNT_URL} to sign in with Entra ID.",
                setting=ENV_STORAGE_CONNECTION_STRING,
            )
        endpoint = parts.get("blobendpoint")
        if endpoint:
            endpoint = _check_url(
                endpoint,
                setting=f"BlobEndpoint in {ENV_STORAGE_CONNECTION_STRING}",
                example="http://127.0.0.1:10000/devstoreaccount1",
            )
        elif name:
            protocol = parts.get("defaultendpointsprotocol", "https")
            suffix = parts.get("endpointsuffix", "core.windows.net")
            endpoint = f"{protocol}://{name}.blob.{suffix}"
        else:
            raise ConfigurationError(
                f"{ENV_STORAGE_CONNECTION_STRING} names no account: it needs AccountName= (or BlobEndpoint=).",
                setting=ENV_STORAGE_CONNECTION_STRING,
            )
        object.__setattr__(self, "account_name", name)
        object.__setattr__(self, "account_key", key)
        object.__setattr__(self, "blob_endpoint", endpoint)

    @property
    def uses_entra_id(self) -> bool:
        """Whether requests authenticate with an Entra ID token (an account URL was given)."""
        return self.account_url is not None

    def __repr__(self) -> str:
        if self.connection_string is not None:
            return (
                f"StorageSettings(connection_string={redact(self.connection_string)!r}, "
                f"account_name={self.account_name!r})"
            )
        return f"StorageSettings(account_url={redact(self.account_url or '')!r})"


def _account_from_url(url: str) -> str | None:
    """Find the account name in a blob endpoint.

    It is the first host label, or the first path segment on an IP address or localhost (Azurite's
    path-style URLs, ``http://127.0.0.1:10000/devstoreaccount1``).
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if host == "localhost" or host.replace(".", "").isdigit() or ":" in host:
        segment = parts.path.strip("/").split("/")[0]
        return segment or None
    return host.split(".")[0] or None


def _parse_connection_string(value: str) -> dict[str, str]:
    """Split ``Key=Value;`` pairs, keys lower-cased; a SAS value keeps its own ``=`` signs."""
    value = value.strip()
    if value.lower().replace(" ", "") in ("usedevelopmentstorage=true", "usedevelopmentstorage=true;"):
        value = _DEVELOPMENT_STORAGE
    parts: dict[str, str] = {}
    for item in value.split(";"):
        if not item.strip():
            continue
        key, sep, rest = item.partition("=")
        if not sep:
            raise ConfigurationError(
                f"{ENV_STORAGE_CONNECTION_STRING} is malformed near {redact(item)[:40]!r}: expected "
                f"Key=Value pairs separated by ';'. Copy the whole connection string again.",
                setting=ENV_STORAGE_CONNECTION_STRING,
            )
        parts[key.strip().lower()] = rest.strip()
    return parts


@dataclass(frozen=True)
class Settings:
    """Batch and Blob Storage settings together, as the client needs them.

    Args:
        batch: where Batch is and how to sign in.
        storage: where Blob Storage is and how to sign in.

    Example:
        >>> env = {"AZURE_BATCH_ENDPOINT": "http://127.0.0.1:8080", "AZURE_BATCH_ACCOUNT_NAME": "acct",
        ...        "AZURE_BATCH_ACCOUNT_KEY": "a2V5a2V5a2V5",
        ...        "AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
        >>> Settings.from_env(env).batch.account_name
        'acct'
    """

    batch: BatchSettings
    storage: StorageSettings

    @property
    def uses_entra_id(self) -> bool:
        """Whether either service needs an Entra ID token credential."""
        return self.batch.uses_entra_id or self.storage.uses_entra_id

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        batch_endpoint: str | None = None,
        batch_account_name: str | None = None,
        batch_account_key: str | None = None,
        storage_connection_string: str | None = None,
        storage_account_url: str | None = None,
    ) -> Settings:
        """Build settings from the environment; arguments given override their variable.

        Args:
            environ: where to read variables (defaults to ``os.environ``).
            batch_endpoint: overrides ``AZURE_BATCH_ENDPOINT``.
            batch_account_name: overrides ``AZURE_BATCH_ACCOUNT_NAME``.
            batch_account_key: overrides ``AZURE_BATCH_ACCOUNT_KEY``.
            storage_connection_string: overrides ``AZURE_STORAGE_CONNECTION_STRING``.
            storage_account_url: overrides ``AZURE_STORAGE_ACCOUNT_URL``.

        Returns:
            Validated settings.

        Raises:
            ConfigurationError: a variable is missing or malformed; the message names it and the fix.
        """
        env = os.environ if environ is None else environ

        def pick(given: str | None, name: str) -> str | None:
            value = given if given is not None else env.get(name)
            return value if value and value.strip() else None

        endpoint = pick(batch_endpoint, ENV_BATCH_ENDPOINT)
        if endpoint is None:
            raise ConfigurationError(
                f"{ENV_BATCH_ENDPOINT} is not set: set it to the Batch account's URL "
                "(https://<account>.<region>.batch.azure.com), or to the emulator's URL for local runs.",
                setting=ENV_BATCH_ENDPOINT,
            )
        if storage_connection_string or storage_account_url:
            connection_string, account_url = storage_connection_string, storage_account_url
        else:
            connection_string = pick(None, ENV_STORAGE_CONNECTION_STRING)
            # With both variables set, the connection string wins: it says exactly how to sign in.
            account_url = None if connection_string else pick(None, ENV_STORAGE_ACCOUNT_URL)
        return cls(
            batch=BatchSettings(
                endpoint=endpoint,
                account_name=pick(batch_account_name, ENV_BATCH_ACCOUNT_NAME),
                account_key=pick(batch_account_key, ENV_BATCH_ACCOUNT_KEY),
            ),
            storage=StorageSettings(connection_string=connection_string, account_url=account_url),
        )


def default_credential() -> AsyncTokenCredential:
    """Return a new ``azure.identity.aio.DefaultAzureCredential`` (no I/O until a token is requested).

    The caller owns it and must ``await credential.close()``; one credential can serve both services.

    Returns:
        The credential.
    """
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()
