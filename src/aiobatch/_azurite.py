r"""Find, install and run Azurite, Microsoft's local Blob Storage emulator.

Azurite is a Node.js program. aiobatch never installs it globally: `install_azurite` runs
``npm install azurite@<pinned version>`` into one folder per user and reuses that copy afterwards. The folder is
decided in one place, `default_azurite_dir`: the one named by ``AIOBATCH_AZURITE_DIR`` if set, else
``azurite`` in the platform's per-user cache folder (``$XDG_CACHE_HOME/aiobatch/azurite`` or
``~/.cache/aiobatch/azurite`` on Linux, ``~/Library/Caches/aiobatch/azurite`` on macOS,
``%LOCALAPPDATA%\aiobatch\azurite`` on Windows). Never the current folder: a process started anywhere
leaves nothing there. `AzuriteServer` starts only Azurite's Blob service on loopback, on a port the OS
picks, with in-memory persistence, and stops it again.

Pre-install it (an offline machine, a CI image) with ``python -m aiobatch._azurite install``; ``python -m
aiobatch._azurite where`` prints the folder.

Over plain HTTP by default. Given a PEM certificate and key it serves HTTPS, and with ``oauth=True`` it also
accepts Entra ID bearer tokens (``--oauth basic``) and serves Get User Delegation Key, so user delegation SAS can
be minted and checked locally. In that mode Azurite checks a token's issuer (``https://sts.windows.net/...``),
audience (``https://storage.azure.com`` or the account's blob endpoint) and lifetime, but not its signature.
``aiobatch.testing.self_signed_certificate`` makes a certificate for 127.0.0.1, and the ``azurite_oauth``
fixture runs such a server.

Installing is safe when several processes try at once: npm installs into a private staging folder under an
advisory file lock (where the platform has one), and the finished tree is moved into place with one atomic
rename, so a reader sees either no installation or a complete one.

A running Azurite cannot outlive the Python process that started it: ``stop()`` ends it, an ``atexit`` hook
stops whatever is still running at interpreter exit, and a tiny script preloaded into Node exits as soon as
its stdin pipe (held by Python) closes, which covers a Python process killed outright.

Errors (under `aiobatch._errors.AiobatchError`, so their messages are redacted)::

    AzuriteError                  Azurite could not be found, installed or started
    ├── AzuriteNotFoundError      Node.js or npm is missing or too old
    ├── AzuriteInstallError       ``npm install azurite`` failed or produced no Blob service
    └── AzuriteStartError         the Blob service did not start or did not answer in time
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Final

import anyio

from ._errors import AiobatchError, ConfigurationError

__all__ = [
    "ACCOUNT_KEY",
    "ACCOUNT_NAME",
    "AZURITE_DIR_ENV",
    "AZURITE_VERSION",
    "AzuriteError",
    "AzuriteInstallError",
    "AzuriteNotFoundError",
    "AzuriteServer",
    "AzuriteStartError",
    "default_azurite_dir",
    "find_azurite",
    "install_azurite",
]

logger = logging.getLogger("aiobatch")

AZURITE_VERSION: Final = "3.37.0"
"""The Azurite version aiobatch installs and tests against."""

AZURITE_DIR_ENV: Final = "AIOBATCH_AZURITE_DIR"
"""Environment variable naming the folder Azurite is installed into (default: the per-user cache folder)."""

ACCOUNT_NAME: Final = "devstoreaccount1"
"""Azurite's built-in storage account."""

ACCOUNT_KEY: Final = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's well-known, publicly documented development key for `ACCOUNT_NAME`."""

# Azurite 3.37 declares Node >= 22 in its package.json, but it runs (and is tested here) on Node 20; npm only
# warns about the engine range. Older Nodes are refused up front with a clear message.
_MIN_NODE: Final = (20, 0)
_TAIL_LINES: Final = 20
_STOP_TIMEOUT: Final = 5.0
_READY_LINE: Final = re.compile(r"successfully listens on (https?://\S+)")

# Preloaded into Node with --require: exit when Python closes our stdin pipe, which also happens when the
# Python process dies without running any cleanup (SIGKILL, a crash), so no orphaned node is left behind.
_WATCHDOG_JS: Final = """\
// Written by aiobatch: exit when the Python process that started Azurite closes this process's stdin.
"use strict";
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();
"""


class AzuriteError(AiobatchError):
    """Raised when Azurite could not be found, installed or started; the message names the fix."""


class AzuriteNotFoundError(AzuriteError):
    """Raised when Node.js or npm is missing from ``PATH`` or too old to run Azurite."""


class AzuriteInstallError(AzuriteError):
    """Raised when ``npm install azurite`` fails or leaves no usable ``azurite-blob`` behind."""


class AzuriteStartError(AzuriteError):
    """Raised when the Azurite Blob service exits early or does not answer requests in time."""


def default_azurite_dir() -> Path:
    r"""Return the folder Azurite is installed into and run from when none is given.

    This is the one place that decides it (``AzuriteServer``, ``aiobatch local``, `aiobatch.local.LocalBatch`
    and the pytest fixtures all ask here): the value of the ``AIOBATCH_AZURITE_DIR`` environment variable if it
    is set and not empty (a project or CI image that keeps its own copy), otherwise ``azurite`` in the per-user
    cache folder:

    - Linux and other POSIX systems: ``$XDG_CACHE_HOME/aiobatch/azurite`` (when that is an absolute path), else
      ``~/.cache/aiobatch/azurite``;
    - macOS: ``~/Library/Caches/aiobatch/azurite``;
    - Windows: ``%LOCALAPPDATA%\aiobatch\azurite``.

    The current folder plays no part, so starting Azurite from any folder puts nothing in it.

    Returns:
        An absolute path; it may not exist yet.

    Raises:
        AzuriteError: No variable is set and there is no home folder to put the cache in.

    Example:
        >>> default_azurite_dir()  # doctest: +SKIP
        PosixPath('/home/me/.cache/aiobatch/azurite')
    """
    configured = os.environ.get(AZURITE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().absolute()
    return _user_cache_dir() / "azurite"


def _user_cache_dir() -> Path:
    # The folder aiobatch.demo.run.default_cache_dir also uses (platformdirs-like, without the dependency).
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA", "").strip()
        base = Path(local) if local and Path(local).is_absolute() else _home() / "AppData" / "Local"
        return base / "aiobatch"
    if sys.platform == "darwin":
        return _home() / "Library" / "Caches" / "aiobatch"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    # The XDG spec says a relative value is invalid and is to be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else _home() / ".cache"
    return base / "aiobatch"


def _home() -> Path:
    try:
        home = Path.home()
    except (KeyError, RuntimeError):  # no HOME and no password entry
        home = Path()
    if not home.is_absolute():
        raise AzuriteError(
            f"there is no home folder for Azurite's per-user cache; set {AZURITE_DIR_ENV} to the folder "
            f"Azurite should be installed into."
        )
    return home


def find_azurite(directory: str | os.PathLike[str] | None = None, *, version: str = AZURITE_VERSION) -> Path | None:
    """Return the ``azurite-blob`` script of an existing installation of ``version``, if there is one.

    Two layouts are recognised under ``directory``: the one `install_azurite` creates
    (``azurite-<version>/node_modules/azurite``) and a plain ``npm install --prefix <directory> azurite``
    (``node_modules/azurite``). An installation of any other version is ignored.

    Args:
        directory: where to look; defaults to `default_azurite_dir`.
        version: the exact Azurite version wanted.

    Returns:
        The path of Azurite's Blob service entry point (a JavaScript file run with ``node``), or ``None``.
    """
    root = Path(directory) if directory is not None else default_azurite_dir()
    for package in (
        root / f"azurite-{version}" / "node_modules" / "azurite",
        root / "node_modules" / "azurite",
    ):
        script = _blob_script(package, version)
        if script is not None:
            return script
    return None


def install_azurite(
    directory: str | os.PathLike[str] | None = None,
    *,
    version: str = AZURITE_VERSION,
    timeout: float = 600.0,
) -> Path:
    """Install Azurite with npm into its folder, or reuse an installation already there.

    npm installs into a private staging folder inside ``directory``; the finished tree is renamed to
    ``directory/azurite-<version>`` in one step. Concurrent callers serialise on a lock file where the
    platform supports it, and the atomic rename keeps a half-finished installation from ever being used.

    Args:
        directory: the installation folder; defaults to `default_azurite_dir`.
        version: the exact Azurite version to install.
        timeout: seconds ``npm install`` may take before it is abandoned.

    Returns:
        The path of Azurite's Blob service entry point, as `find_azurite` returns it.

    Raises:
        AzuriteNotFoundError: Node.js or npm is missing or too old.
        AzuriteInstallError: npm failed or did not produce the Blob service.

    Example:
        >>> script = install_azurite()  # doctest: +SKIP
    """
    root = (Path(directory) if directory is not None else default_azurite_dir()).absolute()
    found = find_azurite(root, version=version)
    if found is not None:
        return found
    npm = _require_program("npm")
    _check_node_version(_require_program("node"))
    root.mkdir(parents=True, exist_ok=True)
    with _install_lock(root):
        found = find_azurite(root, version=version)
        if found is not None:
            return found
        target = root / f"azurite-{version}"
        started = time.monotonic()
        logger.info("installing azurite %s into %s", version, root)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=root))
        try:
            _npm_install(npm, staging, version, timeout)
            if _blob_script(staging / "node_modules" / "azurite", version) is None:
                raise AzuriteInstallError(
                    f"npm installed azurite {version} into {staging} but azurite-blob is missing; "
                    f"remove {root} and try again."
                )
            staging.chmod(0o755)  # mkdtemp made it private; the installation is not
            if target.exists():
                # Not a valid installation of this version (find_azurite said so): an interrupted manual
                # copy or similar. Holding the lock, it is ours to replace.
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.rename(staging, target)
            except OSError:
                # Another process (on a platform without the lock) finished first; its tree is as good.
                if find_azurite(root, version=version) is None:
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("installed azurite %s in %.1f s", version, time.monotonic() - started)
    found = find_azurite(root, version=version)
    if found is None:
        raise AzuriteInstallError(f"azurite {version} is not usable in {target} after installing; remove it and retry.")
    return found


class AzuriteServer:
    """Azurite's Blob service, started on loopback with in-memory persistence, as a managed process.

    ``start()`` installs Azurite if needed (see `install_azurite`), launches ``azurite-blob`` on
    ``host`` (port 0 by default, so the OS picks a free port and Azurite reports it), and returns once the
    service answers HTTP requests. ``stop()`` ends the process and is safe to call twice or before
    ``start()``. The server is a context manager, sync and async; it cannot be started a second time.

    Only the Blob service runs; queues and tables are not started. ``--skipApiVersionCheck`` is passed
    because the Python SDK may send API versions newer than Azurite knows, and telemetry is disabled.

    With *cert* and *key* it serves HTTPS (``blob_endpoint`` and ``connection_string`` say ``https``); clients
    trust it with ``connection_verify=str(server.cert_path)``. With *oauth* as well, it accepts Entra ID bearer
    tokens and mints user delegation keys (``--oauth basic``: issuer, audience and lifetime are checked, the
    signature is not). Shared Key keeps working either way.

    Args:
        host: the address to listen on.
        port: the port to listen on; 0 lets the OS pick a free one.
        directory: the Azurite installation folder; defaults to `default_azurite_dir`.
        version: the exact Azurite version to run.
        startup_timeout: seconds to wait for the service to answer after launching it.
        install_timeout: seconds ``npm install`` may take if Azurite must be installed first.
        cert: a PEM certificate to serve HTTPS with (its subject alternative names must include *host*).
        key: the PEM private key of *cert*.
        oauth: accept Entra ID bearer tokens; needs *cert* and *key* (Azurite refuses tokens over HTTP).

    Raises:
        ConfigurationError: *cert* without *key* (or the reverse), or *oauth* without them.

    Example:
        >>> with AzuriteServer() as azurite:  # doctest: +SKIP
        ...     service = BlobServiceClient.from_connection_string(azurite.connection_string)
        >>> cert, key = self_signed_certificate(tmp)  # doctest: +SKIP
        >>> with AzuriteServer(cert=cert, key=key, oauth=True) as azurite:  # doctest: +SKIP
        ...     service = BlobServiceClient(azurite.blob_endpoint, credential=token_credential,
        ...                                 connection_verify=str(azurite.cert_path))
    """

    account_name: Final = ACCOUNT_NAME
    """The storage account Azurite serves."""

    account_key: Final = ACCOUNT_KEY
    """Azurite's well-known development key for `account_name`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        directory: str | os.PathLike[str] | None = None,
        version: str = AZURITE_VERSION,
        startup_timeout: float = 60.0,
        install_timeout: float = 600.0,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        oauth: bool = False,
    ) -> None:
        if (cert is None) != (key is None):
            raise ConfigurationError("AzuriteServer needs both cert= and key= (PEM files) to serve HTTPS, or neither.")
        if oauth and cert is None:
            raise ConfigurationError(
                "AzuriteServer(oauth=True) needs HTTPS: Azurite refuses bearer tokens over HTTP. Pass cert= and key= "
                "(aiobatch.testing.self_signed_certificate makes a pair for 127.0.0.1).",
                setting="cert",
            )
        self.host = host
        self.oauth = oauth
        self._cert = Path(cert).absolute() if cert is not None else None
        self._key = Path(key).absolute() if key is not None else None
        self._requested_port = port
        self._directory = Path(directory).absolute() if directory is not None else None
        self.version = version
        self.startup_timeout = startup_timeout
        self.install_timeout = install_timeout
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._output: deque[str] = deque(maxlen=_TAIL_LINES)
        self._url: str | None = None
        self._ready = threading.Event()
        self._started = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._started else "unstarted")
        where = f" {self._url}" if self._url and self.running else ""
        return f"<AzuriteServer {state}{where} account={self.account_name!r}>"

    @property
    def running(self) -> bool:
        """Whether the Azurite process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id of the Azurite ``node`` process, or ``None`` before ``start()``."""
        return self._process.pid if self._process is not None else None

    @property
    def port(self) -> int:
        """The port Azurite's Blob service listens on.

        Raises:
            RuntimeError: the server has not been started.
        """
        return int(self._bound_url().rsplit(":", 1)[1])

    @property
    def cert_path(self) -> Path | None:
        """The certificate the server presents over HTTPS, or ``None`` over HTTP.

        A self-signed certificate is its own authority: trust it with ``connection_verify=str(cert_path)``
        (azure-core) or ``ssl.create_default_context(cafile=cert_path)``.
        """
        return self._cert

    @property
    def blob_endpoint(self) -> str:
        """The account's Blob endpoint, for example ``http://127.0.0.1:PORT/devstoreaccount1``.

        Raises:
            RuntimeError: the server has not been started.
        """
        return f"{self._bound_url()}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        """A connection string for the account, as ``BlobServiceClient.from_connection_string`` takes it.

        It contains the (public, well-known) development key; do not log it all the same.

        Raises:
            RuntimeError: the server has not been started.
        """
        scheme = "https" if self._cert is not None else "http"
        return (
            f"DefaultEndpointsProtocol={scheme};AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.blob_endpoint};"
        )

    def start(self) -> AzuriteServer:
        """Install Azurite if needed, launch its Blob service and wait until it answers requests.

        Returns:
            This server, so that ``server = AzuriteServer().start()`` reads naturally.

        Raises:
            RuntimeError: the server was started before.
            AzuriteNotFoundError: Node.js or npm is missing or too old.
            AzuriteInstallError: Azurite could not be installed.
            AzuriteStartError: the service exited early or did not answer within ``startup_timeout``.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("this AzuriteServer was already started; create a new one")
            self._started = True
        root = self._directory if self._directory is not None else default_azurite_dir()
        script = install_azurite(root, version=self.version, timeout=self.install_timeout)
        node = _require_program("node")
        _check_node_version(node)
        try:
            self._launch(node, script, root)
            self._wait_until_ready(root)
        except BaseException:
            self.stop()
            raise
        logger.info("azurite %s blob service listening on %s (pid %s)", self.version, self._url, self.pid)
        return self

    def stop(self) -> None:
        """Stop the Azurite process and its children, and reap them; safe to call more than once.

        The process gets SIGTERM (and its stdin closes, which ends it too); if it is still running after a
        few seconds, its whole process group gets SIGKILL.
        """
        process = self._process
        if process is None:
            return
        _live_servers.discard(self)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        if process.poll() is None:
            _signal_group(process, force=False)
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal_group(process, force=True)
                process.wait()
            logger.info("azurite blob service stopped (pid %s)", process.pid)
        if self._reader is not None:
            self._reader.join(timeout=_STOP_TIMEOUT)
        if process.stdout is not None:
            with contextlib.suppress(OSError):
                process.stdout.close()

    def __enter__(self) -> AzuriteServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> AzuriteServer:
        try:
            # npm and the readiness wait block; keep them off the event loop.
            await anyio.to_thread.run_sync(self.start)
        except BaseException:
            # A cancellation lands after the thread finished starting the process: stop it again.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.stop)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)

    def _bound_url(self) -> str:
        if self._url is None:
            raise RuntimeError("AzuriteServer is not started; call start() or use it as a context manager")
        return self._url

    def _launch(self, node: str, script: Path, root: Path) -> None:
        watchdog = _ensure_watchdog(root)
        args = [
            node,
            "--require",
            str(watchdog),
            str(script),
            "--blobHost",
            self.host,
            "--blobPort",
            str(self._requested_port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]
        if self._cert is not None and self._key is not None:
            args += ["--cert", str(self._cert), "--key", str(self._key)]
        if self.oauth:
            args += ["--oauth", "basic"]
        env = dict(os.environ)
        # A user's AZURITE_ACCOUNTS would replace devstoreaccount1 and its key behind our back.
        env.pop("AZURITE_ACCOUNTS", None)
        env["NO_UPDATE_NOTIFIER"] = "1"
        logger.debug("launching %s", " ".join(args))
        try:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=root,  # Azurite's default workspace; in-memory mode should write nothing there
                env=env,
                text=True,
                encoding="utf-8",
                errors="replace",
                # Its own process group: a terminal's Ctrl-C reaches Python, which stops Azurite in order.
                start_new_session=os.name == "posix",
                creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
            )
        except OSError as exc:
            raise AzuriteStartError(f"could not run {node} {script}: {exc}") from exc
        _live_servers.add(self)
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=self._read_output, args=(self._process.stdout,), name="azurite-output", daemon=True
        )
        self._reader.start()

    def _read_output(self, stream: IO[str]) -> None:
        # Drains Azurite's output for its whole life (a full pipe would block it); keeps the tail for errors.
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                line = line.rstrip()
                self._output.append(line)
                logger.debug("azurite: %s", line)
                if not self._ready.is_set():
                    match = _READY_LINE.search(line)
                    if match:
                        self._url = match.group(1).rstrip("/")
                        self._ready.set()
        self._ready.set()  # end of output: wake the waiter, which sees the process gone

    def _wait_until_ready(self, root: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout
        process = self._process
        assert process is not None
        if not self._ready.wait(timeout=self.startup_timeout) or self._url is None:
            if process.poll() is not None:
                raise self._start_error(root, f"azurite-blob exited with status {process.returncode} before listening")
            raise self._start_error(
                root, f"azurite-blob did not report a listening port within {self.startup_timeout} s"
            )
        # The "listens on" line comes once the socket is bound; prove that requests are served, too.
        scheme, address = self._url.split("://", 1)
        host, port = address.rsplit(":", 1)
        while True:
            if process.poll() is not None:
                raise self._start_error(root, f"azurite-blob exited with status {process.returncode} while starting")
            try:
                connection = (
                    http.client.HTTPSConnection(host, int(port), timeout=2.0, context=_probe_context())
                    if scheme == "https"
                    else http.client.HTTPConnection(host, int(port), timeout=2.0)
                )
                try:
                    connection.request("GET", f"/{self.account_name}?comp=list")
                    connection.getresponse().read()
                finally:
                    connection.close()
                return  # any HTTP answer, even 403 for the unsigned request, means it is serving
            except (OSError, http.client.HTTPException) as exc:
                if time.monotonic() > deadline:
                    raise self._start_error(
                        root,
                        f"azurite-blob listens on {self._url} but did not answer within "
                        f"{self.startup_timeout} s ({exc})",
                    ) from exc
                time.sleep(0.1)

    def _start_error(self, root: Path, problem: str) -> AzuriteStartError:
        tail = "\n".join(f"    {line}" for line in self._output) or "    (no output)"
        if any("EADDRINUSE" in line for line in self._output):
            fix = f"port {self._requested_port} is taken: pass port=0 to let the OS pick a free one."
        else:
            fix = (
                f"check that Node.js {_MIN_NODE[0]}+ works and that {self.host} accepts listeners; "
                f"delete {root} to force a reinstall."
            )
            if self._cert is not None:
                fix += f" Check that {self._cert} and {self._key} are a readable PEM certificate and its key."
        return AzuriteStartError(f"{problem}. Azurite's last output:\n{tail}\nTo fix it, {fix}")


_live_servers: set[AzuriteServer] = set()


def _probe_context() -> ssl.SSLContext:
    # The readiness probe only asks whether our own child process on loopback answers; whether clients trust its
    # certificate is theirs to check (with cert_path).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.stop()


def _blob_script(package: Path, version: str) -> Path | None:
    try:
        manifest = json.loads((package / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != version:
        return None
    bins = manifest.get("bin")
    entry = bins.get("azurite-blob") if isinstance(bins, dict) else None
    if not isinstance(entry, str):
        return None
    script = (package / entry).resolve()
    return script if script.is_file() else None


def _require_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AzuriteNotFoundError(
            f"{name} not found on PATH: Azurite needs Node.js {_MIN_NODE[0]}+ with npm. Install it from "
            f"https://nodejs.org/ or a package manager (e.g. `apt-get install nodejs npm`), then retry."
        )
    return path


def _check_node_version(node: str) -> None:
    try:
        reported = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise AzuriteNotFoundError(
            f"{node} --version failed ({exc}); install a working Node.js {_MIN_NODE[0]}+."
        ) from exc
    match = re.match(r"v?(\d+)\.(\d+)", reported)
    if match is None or (int(match.group(1)), int(match.group(2))) < _MIN_NODE:
        raise AzuriteNotFoundError(
            f"Node.js {reported or '(unknown version)'} at {node} is too old: Azurite {AZURITE_VERSION} "
            f"needs Node.js {_MIN_NODE[0]}+. Install a newer Node.js from https://nodejs.org/, then retry."
        )


def _npm_install(npm: str, prefix: Path, version: str, timeout: float) -> None:
    args = [
        npm,
        "install",
        "--prefix",
        str(prefix),
        "--no-audit",
        "--no-fund",
        "--no-update-notifier",
        "--ignore-scripts",  # Azurite needs none; nothing from the registry runs at install time
        "--save-exact",
        "--loglevel=error",
        f"azurite@{version}",
    ]
    env = dict(os.environ, NO_UPDATE_NOTIFIER="1", npm_config_update_notifier="false")
    try:
        result = subprocess.run(
            args, cwd=prefix, env=env, capture_output=True, text=True, errors="replace", timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise AzuriteInstallError(
            f"npm install azurite@{version} took longer than {timeout} s; check access to the npm registry "
            f"(npm config get registry) and retry."
        ) from exc
    except OSError as exc:
        raise AzuriteNotFoundError(f"could not run {npm} ({exc}); install Node.js {_MIN_NODE[0]}+ with npm.") from exc
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()[-_TAIL_LINES:]
        tail = "\n".join(f"    {line}" for line in lines) or "    (no output)"
        raise AzuriteInstallError(
            f"npm install azurite@{version} failed with status {result.returncode}:\n{tail}\n"
            f"Check access to the npm registry (npm config get registry) and retry."
        )


@contextlib.contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps concurrent installs correct.
        yield
        return
    with open(root / ".install.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_watchdog(root: Path) -> Path:
    # In the installation folder, beside (not inside) the package trees npm manages.
    path = root / "aiobatch-watchdog.js"
    try:
        if path.read_text(encoding="utf-8") == _WATCHDOG_JS:
            return path
    except OSError:
        pass
    staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    staging.write_text(_WATCHDOG_JS, encoding="utf-8")
    os.replace(staging, path)
    return path


def _signal_group(process: subprocess.Popen[str], *, force: bool) -> None:
    # The process leads its own group (start_new_session), so the group id is its pid.
    with contextlib.suppress(OSError):
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGKILL if force else signal.SIGTERM)
        elif force:
            process.kill()
        else:
            process.terminate()


_USAGE: Final = """\
usage: python -m aiobatch._azurite {{install,where}} [--dir DIR]

  install   install Azurite {version} with npm (Node.js {node}+ on PATH), or find it installed; prints the folder
  where     print the folder Azurite is installed into (see default_azurite_dir), installed or not

  --dir DIR  use DIR instead of ${env} or the per-user cache folder
"""


def _main(argv: list[str]) -> int:
    # `python -m aiobatch._azurite install`: pre-install Azurite for an offline machine or a CI image.
    usage = _USAGE.format(version=AZURITE_VERSION, node=_MIN_NODE[0], env=AZURITE_DIR_ENV)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    directory: Path | None = None
    if len(argv) == 3 and argv[1] == "--dir":
        directory = Path(argv[2]).expanduser().absolute()
    elif len(argv) != 1:
        print(usage, file=sys.stderr)
        return 2
    command = argv[0]
    try:
        root = directory if directory is not None else default_azurite_dir()
        if command == "where":
            print(root)
            return 0
        if command == "install":
            logging.basicConfig(level=logging.INFO, format="%(message)s")
            script = install_azurite(root)
            print(f"azurite {AZURITE_VERSION} is installed in {root} ({script})")
            return 0
    except AzuriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
