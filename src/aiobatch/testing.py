"""Pytest fixtures for testing code that uses aiobatch, with no Azure account.

Installing aiobatch registers this module as a pytest plugin (the ``pytest11`` entry point), so the fixtures
below are available in any project's tests without an import.

Fixtures:
    ``azurite`` (session)
        A started `aiobatch._azurite.AzuriteServer`: Azurite's Blob service on 127.0.0.1, on a free
        port, with in-memory persistence. It is installed with npm on first use into ``$AIOBATCH_AZURITE_DIR``
        or the per-user cache folder (``~/.cache/aiobatch/azurite`` on Linux; see
        ``aiobatch._azurite.default_azurite_dir``). If Azurite cannot be installed or started,
        every test that uses it fails with the reason and the fix; it is never skipped.
    ``azurite_connection_string`` (session)
        The connection string of that Azurite account, for ``BlobServiceClient.from_connection_string``.
    ``azurite_oauth`` (session)
        A second Azurite, over HTTPS with a self-signed certificate for 127.0.0.1 (`self_signed_certificate`) and
        Entra ID bearer tokens accepted (``--oauth basic``), for code that signs in with a token credential and
        mints user delegation SAS. Trust it with ``connection_verify=str(azurite_oauth.cert_path)``. Azurite
        checks a token's issuer (``https://sts.windows.net/<tenant>/``), audience (``https://storage.azure.com``)
        and lifetime, not its signature, so an unsigned JWT with ``oid`` and ``tid`` claims serves as the
        identity. Shared Key (``azurite_oauth.connection_string``) works too.
    ``clean_azure_env`` (function)
        Removes real Azure credentials (``AZURE_*`` and managed-identity variables) from ``os.environ`` for
        the test, so no test can reach a real subscription by accident. Not autouse, because this plugin
        is loaded into every project that installs aiobatch; request it, or make it autouse in a
        ``conftest.py``::

            @pytest.fixture(autouse=True)
            def _no_azure_credentials(clean_azure_env: None) -> None:
                pass

    ``batch_emulator`` (function)
        A running `aiobatch.emulator.Emulator` (a Batch account on loopback) for one test, with the
        application packages found in the ``emulator_apps_dir`` fixture. Use ``batch_emulator.endpoint`` and
        ``batch_emulator.credential`` with ``azure.batch.aio.BatchClient``.
    ``batch_emulator_entra`` (function)
        The same over HTTPS (a `self_signed_certificate` for 127.0.0.1), accepting Entra ID bearer tokens only:
        Shared Key is off. Trust it with ``connection_verify=str(batch_emulator_entra.ssl_cert)``. Tokens are
        checked for form, audience (``https://batch.core.windows.net/``) and lifetime, not signature, so an
        unsigned JWT serves as the identity.
    ``local_services`` (function)
        A `aiobatch.local.LocalServices`: an emulator for the test and the session's ``azurite``,
        started the way ``aiobatch local`` starts them; ``local_services.environ`` holds the ``AZURE_*`` variables
        for ``Client.from_env``.
    ``emulator_apps_dir`` (function)
        The folder of application packages the emulator serves; None by default. Override it in your
        ``conftest.py`` to give your own.
    ``ffmpeg_apps_dir`` (session)
        A folder holding the ``ffmpeg`` application package built from the pip-installed binary.
    ``anyio_backend`` (session)
        ``"asyncio"``: async tests run under anyio's pytest plugin (``@pytest.mark.anyio``) on asyncio.
    ``storage_faults`` (function)
        A running `aiobatch._faultproxy.StorageFaultProxy` in front of the session's Azurite: seeded
        503s, connection resets and flipped bytes. Point clients at its ``connection_string``. Rates come from
        ``request.param`` (indirect parametrization) or are set on the proxy; the seed is printed, and
        ``$AIOBATCH_FAULT_SEED`` replays one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# This module is a pytest plugin loaded into every pytest run of every project that installs aiobatch: it only
# registers fixtures. What they run -- the emulator (and aiohttp's server), the fault proxy, the Azurite
# manager, the ffmpeg packager -- is imported inside the fixture that needs it, when a test asks for it.
if TYPE_CHECKING:
    from ._azurite import AzuriteServer
    from ._faultproxy import StorageFaultProxy
    from .emulator import Emulator
    from .local import LocalServices

__all__ = [
    "anyio_backend",
    "azurite",
    "azurite_connection_string",
    "azurite_oauth",
    "batch_emulator",
    "batch_emulator_entra",
    "clean_azure_env",
    "emulator_apps_dir",
    "ffmpeg_apps_dir",
    "local_services",
    "self_signed_certificate",
    "storage_faults",
]

# DefaultAzureCredential reads these managed-identity variables as well as the AZURE_* ones.
_CREDENTIAL_VARIABLES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests (and async fixtures) on asyncio.

    Session-scoped so that session-scoped async fixtures can use it.

    Returns:
        The backend name, ``"asyncio"``.
    """
    return "asyncio"


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteServer]:
    """Yield Azurite's Blob service, installed in its per-user folder and started once for the test session.

    The server listens on 127.0.0.1 on a free port and keeps data in memory only; tests share it, so each
    should use its own container names.

    Returns:
        An iterator yielding the running server; it is stopped when the session ends.

    Raises:
        pytest.fail.Exception: Azurite could not be installed or started; the message says why and what
            to do about it.

    Example:
        >>> async def test_upload(azurite: AzuriteServer) -> None:  # doctest: +SKIP
        ...     async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        ...         await service.create_container("inputs")
    """
    from ._azurite import AzuriteServer

    yield from _run_azurite(AzuriteServer())  # installed where default_azurite_dir says


def _run_azurite(server: AzuriteServer) -> Iterator[AzuriteServer]:
    from ._azurite import AzuriteError

    try:
        server.start()
    except AzuriteError as exc:
        pytest.fail(f"Azurite is required by this test and could not start:\n{exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite_connection_string(azurite: AzuriteServer) -> str:
    """Return the connection string of the session's Azurite account.

    Args:
        azurite: The running Azurite server.

    Returns:
        ``DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=…;BlobEndpoint=…;``.
    """
    return azurite.connection_string


@pytest.fixture(scope="session")
def azurite_oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Yield an Azurite Blob service over HTTPS that accepts Entra ID bearer tokens, for the test session.

    Its certificate is self-signed for 127.0.0.1 (made by `self_signed_certificate`); clients trust it with
    ``connection_verify=str(azurite_oauth.cert_path)``. It is a separate server from ``azurite`` (which stays
    plain HTTP), installed in the same place.

    Args:
        tmp_path_factory: pytest's session temporary folders, where the certificate and key are written.

    Returns:
        An iterator yielding the running server; it is stopped when the session ends.

    Raises:
        pytest.fail.Exception: Azurite could not be installed or started.

    Example:
        >>> async def test_entra(azurite_oauth: AzuriteServer) -> None:  # doctest: +SKIP
        ...     service = BlobServiceClient(azurite_oauth.blob_endpoint, credential=my_token_credential,
        ...                                 connection_verify=str(azurite_oauth.cert_path))
        ...     key = await service.get_user_delegation_key(start, expiry)
    """
    from ._azurite import AzuriteServer

    cert, key = self_signed_certificate(tmp_path_factory.mktemp("azurite-tls"))
    yield from _run_azurite(AzuriteServer(cert=cert, key=key, oauth=True))


def self_signed_certificate(
    directory: str | os.PathLike[str],
    *,
    hosts: Iterable[str] = ("127.0.0.1", "localhost"),
    days: float = 30.0,
) -> tuple[Path, Path]:
    """Write a self-signed certificate and its private key (PEM) for local HTTPS servers such as Azurite.

    The certificate names *hosts* as subject alternative names (IP addresses as such) and is its own authority,
    so a client trusts it by using it as its CA file. The key file is readable by its owner only. Needs the
    ``cryptography`` package (installed with azure-identity, which aiobatch requires).

    Args:
        directory: where to write ``cert.pem`` and ``key.pem`` (created if missing).
        hosts: host names and IP addresses the certificate is valid for.
        days: how long it is valid, from a minute ago.

    Returns:
        ``(cert_path, key_path)``.

    Example:
        >>> cert, key = self_signed_certificate(tmp_path)  # doctest: +SKIP
        >>> AzuriteServer(cert=cert, key=key, oauth=True)  # doctest: +SKIP
    """
    # Imported here: this plugin loads into every pytest run of a project that installs aiobatch.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(hosts)
    private_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "aiobatch test server")])
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # Key identifiers let a verifier tell apart several of these certificates in one CA bundle (say the
        # emulator's and Azurite's): they share a subject name, and without them the first one found is tried.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(private_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(private_key.public_key()), critical=False)
        .sign(private_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def clean_azure_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove real Azure credentials from the environment for one test.

    Deletes every ``AZURE_*`` variable and the managed-identity variables that ``DefaultAzureCredential``
    reads; pytest restores them after the test.

    Args:
        monkeypatch: pytest's environment patcher.
    """
    for name in list(os.environ):
        if name.upper().startswith("AZURE_") or name.upper() in _CREDENTIAL_VARIABLES:
            monkeypatch.delenv(name)


@pytest.fixture
def emulator_apps_dir() -> Path | None:
    """Return the application packages folder for ``batch_emulator`` (None: no packages).

    Override this fixture to serve your own packages, e.g. ``return ffmpeg_apps_dir``.
    """
    return None


@pytest.fixture(scope="session")
def ffmpeg_apps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a folder holding ``ffmpeg/<version>.zip``, built from the ``imageio-ffmpeg`` binary.

    Args:
        tmp_path_factory: pytest's session temporary folders.
    """
    from .demo.ffmpeg import build_ffmpeg_package

    apps = tmp_path_factory.mktemp("apps")
    build_ffmpeg_package(apps)
    return apps


@pytest.fixture
async def batch_emulator(emulator_apps_dir: Path | None, tmp_path: Path) -> AsyncIterator[Emulator]:
    """Yield a running Batch emulator for one test; its task processes are killed when the test ends.

    Allocation is kept short (0.2 s, nodes boot in 0.1 s) so tests wait for readiness for real, but briefly.

    Args:
        emulator_apps_dir: Application packages to serve.
        tmp_path: The test's folder; node directories go under ``tmp_path / "emulator"``.

    Example:
        >>> @pytest.mark.anyio  # doctest: +SKIP
        ... async def test_pool(batch_emulator):
        ...     async with BatchClient(batch_emulator.endpoint, batch_emulator.credential) as batch:
        ...         ...
    """
    from .emulator import Emulator
    from .local import TEST_TIMINGS

    async with Emulator(apps_dir=emulator_apps_dir, workdir=tmp_path / "emulator", timings=TEST_TIMINGS) as emulator:
        yield emulator


@pytest.fixture
async def batch_emulator_entra(emulator_apps_dir: Path | None, tmp_path: Path) -> AsyncIterator[Emulator]:
    """Yield a running Batch emulator over HTTPS that accepts Entra ID bearer tokens and refuses Shared Key.

    Args:
        emulator_apps_dir: Application packages to serve.
        tmp_path: The test's folder; the certificate goes under ``tmp_path / "emulator-tls"``, node directories
            under ``tmp_path / "emulator"``.

    Example:
        >>> @pytest.mark.anyio  # doctest: +SKIP
        ... async def test_pool(batch_emulator_entra, my_token_credential):
        ...     emu = batch_emulator_entra
        ...     async with BatchClient(emu.endpoint, my_token_credential, connection_verify=str(emu.ssl_cert)) as b:
        ...         ...
    """
    from .emulator import Emulator
    from .local import TEST_TIMINGS

    cert, key = self_signed_certificate(tmp_path / "emulator-tls")
    async with Emulator(
        apps_dir=emulator_apps_dir,
        workdir=tmp_path / "emulator",
        timings=TEST_TIMINGS,
        ssl_cert=cert,
        ssl_key=key,
        auth=("entra",),
    ) as emulator:
        yield emulator


@pytest.fixture
async def local_services(
    azurite: AzuriteServer, emulator_apps_dir: Path | None, tmp_path: Path
) -> AsyncIterator[LocalServices]:
    """Yield a Batch emulator for one test and the session's Azurite, started as ``aiobatch local`` starts them.

    ``local_services.environ`` holds the ``AZURE_*`` variables `aiobatch.Client.from_env` reads, pointing at both;
    the emulator is stopped (its task processes killed) when the test ends, Azurite when the session does.

    Args:
        azurite: The session's Azurite.
        emulator_apps_dir: Application packages to serve.
        tmp_path: The test's folder; node directories go under ``tmp_path / "emulator"``.

    Example:
        >>> @pytest.mark.anyio  # doctest: +SKIP
        ... async def test_my_job(local_services):
        ...     async with Client.from_env(local_services.environ, cleanup=True) as client:
        ...         ...
    """
    from .local import TEST_TIMINGS, LocalServices

    services = LocalServices(
        azurite=azurite, apps_dir=emulator_apps_dir, workdir=tmp_path / "emulator", timings=TEST_TIMINGS
    )
    async with services:
        yield services


#: Set this environment variable to replay a ``storage_faults`` run with the seed it printed.
FAULT_SEED_ENV = "AIOBATCH_FAULT_SEED"


@pytest.fixture
async def storage_faults(azurite: AzuriteServer, request: pytest.FixtureRequest) -> AsyncIterator[StorageFaultProxy]:
    """Yield a seeded fault-injecting proxy in front of the session's Azurite, for one test.

    Clients built from ``storage_faults.connection_string`` (or ``.blob_endpoint``) reach the same account
    through the proxy. With no parameters nothing is injected until the test sets rates
    (``storage_faults.rates = {"503": 0.1}`` or ``storage_faults.set_rate("flip", 0.1)``). Parametrize it
    indirectly to start with rates and options: keys ``"503"``, ``"reset"``, ``"flip"`` are rates; ``seed``,
    ``methods``, ``pattern``, ``limit`` and ``enabled`` are passed to the proxy.

    The seed is ``seed`` if given, else ``$AIOBATCH_FAULT_SEED``, else random; it is printed (pytest shows it
    with a failure's output) and stored in the test's ``user_properties`` as ``storage_fault_seed``.

    Args:
        azurite: The running Azurite server.
        request: pytest's fixture request; ``request.param`` (a mapping) if parametrized indirectly.

    Example:
        >>> @pytest.mark.anyio  # doctest: +SKIP
        ... @pytest.mark.parametrize("storage_faults", [{"503": 0.1, "reset": 0.1}], indirect=True)
        ... async def test_upload_holds(storage_faults):
        ...     settings = StorageSettings(connection_string=storage_faults.connection_string)
        ...     ...
        ...     assert storage_faults.injected["503"] > 0
    """
    from ._faultproxy import KINDS, StorageFaultProxy

    options = dict(getattr(request, "param", None) or {})
    rates = {kind: float(options.pop(kind)) for kind in KINDS if kind in options}
    seed = options.pop("seed", None)
    if seed is None and os.environ.get(FAULT_SEED_ENV, "").strip():
        seed = int(os.environ[FAULT_SEED_ENV])
    proxy = StorageFaultProxy(
        azurite.blob_endpoint,
        account_name=azurite.account_name,
        account_key=azurite.account_key,
        seed=seed,
        rates=rates,
        **options,
    )
    print(f"storage_faults: seed {proxy.seed} (replay with {FAULT_SEED_ENV}={proxy.seed})")
    request.node.user_properties.append(("storage_fault_seed", proxy.seed))
    async with proxy:
        yield proxy
