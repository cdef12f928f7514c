"""Azurite, installed in its per-user folder and started by aiobatch, serves the real Blob SDK."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from aiobatch._azurite import (
    ACCOUNT_KEY,
    ACCOUNT_NAME,
    AZURITE_VERSION,
    AzuriteNotFoundError,
    AzuriteServer,
    AzuriteStartError,
    default_azurite_dir,
    find_azurite,
    install_azurite,
)
from aiobatch._errors import ConfigurationError
from aiobatch.local import find_azurite_dir
from aiobatch.testing import self_signed_certificate

pytestmark = pytest.mark.anyio


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _install_dir(azurite: AzuriteServer) -> Path:
    # The session fixture's installation: where default_azurite_dir says, as for every AzuriteServer not told.
    assert azurite._directory is None
    return default_azurite_dir()


def test_azurite_starts_on_loopback(azurite: AzuriteServer) -> None:
    assert azurite.running
    assert azurite.port > 0
    assert azurite.blob_endpoint == f"http://127.0.0.1:{azurite.port}/{ACCOUNT_NAME}"
    assert azurite.account_name == ACCOUNT_NAME
    assert azurite.account_key == ACCOUNT_KEY
    assert azurite.connection_string == (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={azurite.blob_endpoint};"
    )
    assert ACCOUNT_KEY not in repr(azurite)
    assert str(azurite.port) in repr(azurite)


def test_connection_string_fixture(azurite: AzuriteServer, azurite_connection_string: str) -> None:
    assert azurite_connection_string == azurite.connection_string


def test_installation_is_reused(azurite: AzuriteServer) -> None:
    directory = _install_dir(azurite)
    script = find_azurite(directory)
    assert script is not None
    assert script.is_relative_to(directory.resolve())
    assert install_azurite(directory) == script  # no second npm run
    assert find_azurite(directory, version="0.0.1") is None


@pytest.fixture
def session_azurite_dir() -> Path:
    """The folder of the test session's own Azurite copy, read before `no_home` changes the environment."""
    return default_azurite_dir()


@pytest.fixture
def no_home(session_azurite_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A process with a fresh, empty home folder and no Azurite setting: where a library user starts."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("AIOBATCH_AZURITE_DIR", "XDG_CACHE_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def test_the_folder_is_the_variable_else_the_per_user_cache(
    no_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / ".azurite").mkdir(parents=True)  # an old project-local copy plays no part
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "platform", "linux")
    assert default_azurite_dir() == no_home / ".cache" / "aiobatch" / "azurite"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_azurite_dir() == tmp_path / "xdg" / "aiobatch" / "azurite"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid by the XDG spec: ignored
    assert default_azurite_dir() == no_home / ".cache" / "aiobatch" / "azurite"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert default_azurite_dir() == no_home / "Library" / "Caches" / "aiobatch" / "azurite"
    monkeypatch.setattr(sys, "platform", "win32")
    assert default_azurite_dir() == no_home / "AppData" / "Local" / "aiobatch" / "azurite"
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert default_azurite_dir() == tmp_path / "local" / "aiobatch" / "azurite"
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("AIOBATCH_AZURITE_DIR", "  ")  # blank: not set
    assert default_azurite_dir() == no_home / ".cache" / "aiobatch" / "azurite"
    monkeypatch.setenv("AIOBATCH_AZURITE_DIR", "ci/azurite")  # relative to the folder it is read in
    assert default_azurite_dir() == project / "ci" / "azurite"
    monkeypatch.setenv("AIOBATCH_AZURITE_DIR", "~/tools/azurite")
    assert default_azurite_dir() == no_home / "tools" / "azurite"
    assert find_azurite_dir(tmp_path / "elsewhere") == default_azurite_dir()  # aiobatch.local asks the same
    assert [p.name for p in project.iterdir()] == [".azurite"]  # nothing created there


def test_starting_azurite_in_a_folder_that_is_not_a_project_puts_nothing_there(
    azurite: AzuriteServer, session_azurite_dir: Path, no_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Installed" by pointing the empty home's cache at the session's copy (no second npm run).
    session_copy = session_azurite_dir
    assert find_azurite(session_copy) is not None
    cache = no_home / ".cache" / "aiobatch" / "azurite"
    cache.parent.mkdir(parents=True)
    cache.symlink_to(session_copy, target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with AzuriteServer() as server:
        assert server.running
    assert list(work.iterdir()) == []
    # The console script too, as a user runs it, with a command that uses the services.
    probe = "import os; assert os.environ['AZURE_STORAGE_CONNECTION_STRING']"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    aiobatch = Path(sys.executable).with_name("aiobatch")
    assert aiobatch.exists(), "the aiobatch console script is not installed next to this Python"
    done = subprocess.run(
        [str(aiobatch), "local", "--", sys.executable, "-c", probe],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in no_home.iterdir()) == [".cache"]


def test_a_plain_npm_prefix_install_is_recognised(tmp_path: Path) -> None:
    package = tmp_path / "node_modules" / "azurite"
    (package / "dist" / "src" / "blob").mkdir(parents=True)
    (package / "dist" / "src" / "blob" / "main.js").write_text("")
    (package / "package.json").write_text(
        f'{{"version": "{AZURITE_VERSION}", "bin": {{"azurite-blob": "./dist/src/blob/main.js"}}}}'
    )
    assert find_azurite(tmp_path) == (package / "dist" / "src" / "blob" / "main.js").resolve()
    assert find_azurite(tmp_path, version="3.0.0") is None


async def test_blob_round_trip(azurite_connection_string: str) -> None:
    async with BlobServiceClient.from_connection_string(azurite_connection_string) as service:
        container = await service.create_container("roundtrip")
        await container.upload_blob("greeting.txt", b"hello, azurite")
        downloader = await container.download_blob("greeting.txt")
        assert await downloader.readall() == b"hello, azurite"
        names = [blob.name async for blob in container.list_blobs()]
        assert names == ["greeting.txt"]


async def test_read_only_sas_reads_and_is_refused_writes(azurite: AzuriteServer) -> None:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = await service.create_container("sas")
        await container.upload_blob("in.txt", b"input bytes")

    sas = generate_container_sas(
        account_name=azurite.account_name,
        container_name="sas",
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )
    url = f"{azurite.blob_endpoint}/sas?{sas}"
    async with ContainerClient.from_container_url(url) as read_only:
        downloader = await read_only.download_blob("in.txt")
        assert await downloader.readall() == b"input bytes"
        assert [blob.name async for blob in read_only.list_blobs()] == ["in.txt"]

        with pytest.raises(HttpResponseError) as refused:
            await read_only.upload_blob("out.txt", b"not allowed")
        assert refused.value.status_code == 403


def test_stop_leaves_no_process(azurite: AzuriteServer) -> None:
    server = AzuriteServer(directory=_install_dir(azurite))
    assert repr(server).startswith("<AzuriteServer unstarted")
    server.stop()  # before start: nothing to do
    server.start()
    pid = server.pid
    assert pid is not None and _alive(pid)
    server.stop()
    assert not server.running
    assert _wait_gone(pid, timeout=1.0)
    server.stop()  # twice: still fine
    with pytest.raises(RuntimeError, match="already started"):
        server.start()


async def test_async_context_manager(azurite: AzuriteServer) -> None:
    async with AzuriteServer(directory=_install_dir(azurite)) as server:
        pid = server.pid
        assert pid is not None
        async with BlobServiceClient.from_connection_string(server.connection_string) as service:
            await service.create_container("own-server")
    assert _wait_gone(pid, timeout=1.0)


def test_unstarted_server_has_no_endpoint() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = AzuriteServer().blob_endpoint


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL of the parent is a POSIX test")
def test_azurite_exits_when_its_python_process_is_killed(azurite: AzuriteServer) -> None:
    script = (
        "import sys, time\n"
        "from aiobatch._azurite import AzuriteServer\n"
        f"server = AzuriteServer(directory={str(_install_dir(azurite))!r}).start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert _alive(pid)
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    assert _wait_gone(pid), "node outlived the Python process that started it"


def test_port_in_use_fails_with_azurite_output(azurite: AzuriteServer) -> None:
    server = AzuriteServer(directory=_install_dir(azurite), port=azurite.port)
    with pytest.raises(AzuriteStartError) as failed:
        server.start()
    message = str(failed.value)
    assert "EADDRINUSE" in message
    assert "last output" in message
    assert not server.running


def test_missing_npm_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AzuriteNotFoundError, match=r"npm not found on PATH.*Node\.js 20\+"):
        install_azurite(tmp_path / "azurite")


def test_missing_node_is_a_clear_error(azurite: AzuriteServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    server = AzuriteServer(directory=_install_dir(azurite))
    with pytest.raises(AzuriteNotFoundError, match="node not found on PATH"):
        server.start()
    assert server.pid is None


# ----------------------------------------------------------------------------------------------------
# HTTPS and Entra ID bearer tokens
# ----------------------------------------------------------------------------------------------------


class _Token:
    """An unsigned JWT with the claims Azurite's ``--oauth basic`` checks (issuer, audience, lifetime)."""

    def __init__(self, audience: str = "https://storage.azure.com") -> None:
        self.audience = audience

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        now = int(time.time())
        tenant = "00000000-0000-4000-8000-000000000001"
        claims = {"aud": self.audience, "iss": f"https://sts.windows.net/{tenant}/", "iat": now, "nbf": now - 60}
        claims.update(exp=now + 3600, oid="00000000-0000-4000-8000-000000000002", tid=tenant)
        encode = [base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode() for part in ({}, claims)]
        return AccessToken(".".join(encode) + ".", now + 3600)

    async def close(self) -> None:
        pass


def test_a_self_signed_certificate_names_loopback_and_keeps_its_key_private(tmp_path: Path) -> None:
    from cryptography import x509

    cert, key = self_signed_certificate(tmp_path / "tls")
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert certificate.issuer == certificate.subject  # its own authority: trusted by using it as the CA file
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and b"PRIVATE KEY" in key.read_bytes()


def test_oauth_needs_https_and_a_certificate_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs HTTPS"):
        AzuriteServer(oauth=True)
    with pytest.raises(ConfigurationError, match="both cert= and key="):
        AzuriteServer(cert=tmp_path / "cert.pem")


async def test_azurite_oauth_serves_https_and_accepts_bearer_tokens(azurite_oauth: AzuriteServer) -> None:
    assert azurite_oauth.running and azurite_oauth.oauth
    assert azurite_oauth.cert_path is not None and azurite_oauth.cert_path.is_file()
    assert azurite_oauth.blob_endpoint == f"https://127.0.0.1:{azurite_oauth.port}/{ACCOUNT_NAME}"
    assert azurite_oauth.connection_string.startswith("DefaultEndpointsProtocol=https;")
    assert f"BlobEndpoint={azurite_oauth.blob_endpoint};" in azurite_oauth.connection_string
    verify = str(azurite_oauth.cert_path)

    # Shared Key still works, over HTTPS, for a client that trusts the certificate.
    async with BlobServiceClient.from_connection_string(
        azurite_oauth.connection_string, connection_verify=verify, retry_total=0
    ) as service:
        await service.create_container("https-shared-key")
    # A bearer token: the service answers, and hands out user delegation keys (only with a token).
    async with BlobServiceClient(
        azurite_oauth.blob_endpoint, credential=_Token(), connection_verify=verify, retry_total=0
    ) as service:
        assert [c.name async for c in service.list_containers(name_starts_with="https-")] == ["https-shared-key"]
        now = dt.datetime.now(dt.timezone.utc)
        key = await service.get_user_delegation_key(now, now + dt.timedelta(hours=1))
        assert key.signed_oid == "00000000-0000-4000-8000-000000000002" and key.value
    # A token for another audience is refused.
    async with BlobServiceClient(
        azurite_oauth.blob_endpoint,
        credential=_Token("https://vault.azure.net"),
        connection_verify=verify,
        retry_total=0,
    ) as service:
        with pytest.raises(ClientAuthenticationError):
            await service.get_container_client("https-shared-key").get_container_properties()
    # A client that does not trust the self-signed certificate cannot connect at all.
    async with BlobServiceClient.from_connection_string(azurite_oauth.connection_string, retry_total=0) as service:
        with pytest.raises(ServiceRequestError, match=r"(?i)certificate"):
            await service.get_container_client("https-shared-key").get_container_properties()
