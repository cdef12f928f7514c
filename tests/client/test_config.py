"""Settings from arguments and the environment: validation, messages that name the variable, masked reprs."""

from __future__ import annotations

import base64

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from aiobatch._config import BatchSettings, Settings, StorageSettings, default_credential
from aiobatch._errors import ConfigurationError
from aiobatch._redact import redact

KEY = base64.b64encode(b"batch-key-" * 6).decode()
STORAGE_KEY = base64.b64encode(b"storage-key-" * 6).decode()
CONN = f"DefaultEndpointsProtocol=https;AccountName=pets;AccountKey={STORAGE_KEY};EndpointSuffix=core.windows.net"

ENV = {
    "AZURE_BATCH_ENDPOINT": "https://pets.westeurope.batch.azure.com/",
    "AZURE_BATCH_ACCOUNT_NAME": "pets",
    "AZURE_BATCH_ACCOUNT_KEY": KEY,
    "AZURE_STORAGE_CONNECTION_STRING": CONN,
}


def test_from_env_with_keys() -> None:
    settings = Settings.from_env(ENV)
    assert settings.batch.endpoint == "https://pets.westeurope.batch.azure.com"
    cred = settings.batch.shared_key_credential()
    assert isinstance(cred, AzureNamedKeyCredential) and cred.named_key == ("pets", KEY)
    assert settings.storage.account_name == "pets" and settings.storage.account_key == STORAGE_KEY
    assert settings.storage.blob_endpoint == "https://pets.blob.core.windows.net"
    assert not settings.uses_entra_id


def test_reprs_and_messages_never_show_keys() -> None:
    settings = Settings.from_env(ENV)
    for text in (repr(settings), str(settings), repr(settings.batch), repr(settings.storage)):
        assert KEY not in text and STORAGE_KEY not in text
        assert "***" in text
    # Keys are registered secrets: redact() masks them wherever they appear.
    assert KEY not in redact(f"leaked {KEY}") and STORAGE_KEY not in redact(f"leaked {STORAGE_KEY}")


def test_without_keys_entra_id_is_used() -> None:
    settings = Settings.from_env(
        {
            "AZURE_BATCH_ENDPOINT": "https://pets.westeurope.batch.azure.com",
            "AZURE_STORAGE_ACCOUNT_URL": "https://pets.blob.core.windows.net/",
        }
    )
    assert settings.batch.uses_entra_id and settings.batch.shared_key_credential() is None
    assert settings.storage.uses_entra_id and settings.storage.blob_endpoint == "https://pets.blob.core.windows.net"
    assert settings.storage.account_name == "pets" and settings.uses_entra_id


@pytest.mark.anyio
async def test_default_credential_is_azure_identity_and_does_no_io_until_used() -> None:
    from azure.identity.aio import DefaultAzureCredential

    credential = default_credential()
    try:
        assert isinstance(credential, DefaultAzureCredential)
    finally:
        await credential.close()


def test_account_name_from_path_style_urls() -> None:
    assert StorageSettings(account_url="http://127.0.0.1:10000/devstoreaccount1").account_name == "devstoreaccount1"
    assert StorageSettings(account_url="http://localhost:10000/acct2/").account_name == "acct2"


def test_arguments_override_the_environment() -> None:
    settings = Settings.from_env(
        ENV,
        batch_endpoint="http://127.0.0.1:8080",
        storage_connection_string="UseDevelopmentStorage=true",
    )
    assert settings.batch.endpoint == "http://127.0.0.1:8080"
    assert settings.storage.account_name == "devstoreaccount1"
    assert settings.storage.blob_endpoint == "http://127.0.0.1:10000/devstoreaccount1"


def test_connection_string_wins_over_account_url_in_the_environment() -> None:
    settings = Settings.from_env({**ENV, "AZURE_STORAGE_ACCOUNT_URL": "https://other.blob.core.windows.net"})
    assert settings.storage.connection_string == CONN and not settings.storage.uses_entra_id


def test_sas_connection_string_is_accepted_and_masked() -> None:
    conn = "BlobEndpoint=https://pets.blob.core.windows.net/;SharedAccessSignature=sv=2024&sp=rl&sig=c2VjcmV0c2ln"
    storage = StorageSettings(connection_string=conn)
    assert storage.account_key is None and storage.blob_endpoint == "https://pets.blob.core.windows.net"
    assert "c2VjcmV0c2ln" not in repr(storage)


@pytest.mark.parametrize(
    ("env", "variable", "hint"),
    [
        ({}, "AZURE_BATCH_ENDPOINT", "is not set"),
        ({"AZURE_BATCH_ENDPOINT": "pets.westeurope.batch.azure.com"}, "AZURE_BATCH_ENDPOINT", "https://"),
        ({"AZURE_BATCH_ENDPOINT": "ftp://pets"}, "AZURE_BATCH_ENDPOINT", "http(s) URL"),
        ({"AZURE_BATCH_ACCOUNT_KEY": KEY[:-1]}, "AZURE_BATCH_ACCOUNT_KEY", "base64"),
        ({"AZURE_BATCH_ACCOUNT_KEY": "not base64 at all!"}, "AZURE_BATCH_ACCOUNT_KEY", "base64"),
        ({"AZURE_BATCH_ACCOUNT_NAME": ""}, "AZURE_BATCH_ACCOUNT_NAME", "is required"),
        ({"AZURE_BATCH_ACCOUNT_NAME": "pets/../x"}, "AZURE_BATCH_ACCOUNT_NAME", "letters and digits"),
        ({"AZURE_STORAGE_CONNECTION_STRING": ""}, "AZURE_STORAGE_CONNECTION_STRING", "exactly one"),
        ({"AZURE_STORAGE_CONNECTION_STRING": "garbage"}, "AZURE_STORAGE_CONNECTION_STRING", "Key=Value"),
        ({"AZURE_STORAGE_CONNECTION_STRING": "AccountName=pets"}, "AZURE_STORAGE_CONNECTION_STRING", "AccountKey"),
        (
            {"AZURE_STORAGE_CONNECTION_STRING": "AccountName=pets;AccountKey=abc"},
            "AccountKey in AZURE_STORAGE_CONNECTION_STRING",
            "base64",
        ),
    ],
)
def test_bad_settings_name_the_variable_and_the_fix(env: dict[str, str], variable: str, hint: str) -> None:
    merged = {**ENV, **env}
    if not env:
        merged.pop("AZURE_BATCH_ENDPOINT")
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(merged)
    assert info.value.setting == variable
    assert variable in str(info.value) and hint in str(info.value)
    assert KEY[:-1] not in str(info.value)  # a malformed key is described, never printed


def test_storage_needs_exactly_one_source() -> None:
    with pytest.raises(ConfigurationError):
        StorageSettings()
    with pytest.raises(ConfigurationError):
        StorageSettings(connection_string=CONN, account_url="https://pets.blob.core.windows.net")
    with pytest.raises(ConfigurationError, match="AZURE_STORAGE_ACCOUNT_URL"):
        StorageSettings(account_url="pets.blob.core.windows.net")


def test_settings_are_frozen_and_need_no_io() -> None:
    batch = BatchSettings(endpoint="http://127.0.0.1:1", account_name="a", account_key=KEY)
    with pytest.raises(AttributeError):
        batch.endpoint = "http://elsewhere"  # type: ignore[misc]
