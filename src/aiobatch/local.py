"""The Batch emulator and Azurite on this machine, for a user's own code, the demo, notebooks and tests.

Like `aiobatch.testing`, this is one of the few places that knows both the client and the emulator. The client
itself never learns where it is: `LocalBatch.environ` holds the same ``AZURE_*`` variables a real account would
(`aiobatch.Client.from_env` reads them), pointing at the emulator and Azurite.

`LocalServices` is the one way the emulator and Azurite are started together: ``aiobatch local``, `LocalBatch`
(which adds the ffmpeg package when asked) and the ``local_services`` test fixture all use it, so where Azurite
is found, how both start and stop, and the variables that point a client at them are decided once.

    async with LocalBatch() as local:
        async with Client.from_env(local.environ, cleanup=True) as client:
            ...
        print(await local.leftovers())   # [] once cleanup has deleted everything

The pet-video demo's own pieces -- sample videos, the demo runner, the ffmpeg package builder -- are in
`aiobatch.demo`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType

import anyio
import anyio.to_thread
from azure.batch.aio import BatchClient
from azure.storage.blob.aio import BlobServiceClient

from ._azurite import AzuriteServer, default_azurite_dir
from ._config import (
    ENV_BATCH_ACCOUNT_KEY,
    ENV_BATCH_ACCOUNT_NAME,
    ENV_BATCH_ENDPOINT,
    ENV_STORAGE_ACCOUNT_URL,
    ENV_STORAGE_CONNECTION_STRING,
)
from ._specs import AppPackageRef
from .demo.ffmpeg import FFMPEG_APP_ID, build_ffmpeg_package, ffmpeg_version
from .emulator import Emulator, Timings

__all__ = [
    "CONFLICTING_VARIABLES",
    "INTERACTIVE_TIMINGS",
    "TEST_TIMINGS",
    "LocalBatch",
    "LocalServices",
    "find_azurite_dir",
    "services_environ",
]

logger = logging.getLogger("aiobatch")

# ----------------------------------------------------------------------------------------------------
# The services
# ----------------------------------------------------------------------------------------------------


#: Delays for a person watching (``aiobatch local``, the demo, notebooks): about a second, so progress shows.
INTERACTIVE_TIMINGS = Timings(allocation_delay=1.0, node_start_delay=0.8, deletion_delay=0.2)
#: Delays for tests: real waits for readiness, but brief.
TEST_TIMINGS = Timings(allocation_delay=0.2, node_start_delay=0.1, deletion_delay=0.05)
#: Variables that would contradict `services_environ` if left in an environment it is laid over:
#: `aiobatch.Client.from_env` refuses a connection string and an account URL together.
CONFLICTING_VARIABLES = (ENV_STORAGE_ACCOUNT_URL,)


def find_azurite_dir(start: str | os.PathLike[str] | None = None) -> Path:
    """Where Azurite is (or will be) installed: `aiobatch._azurite.default_azurite_dir`, the one place that decides.

    That is ``$AIOBATCH_AZURITE_DIR`` if set, else the per-user cache folder (``~/.cache/aiobatch/azurite`` on
    Linux). *start* is no longer used: the folder work starts in plays no part (earlier versions looked for
    ``.azurite`` there and above it; set ``AIOBATCH_AZURITE_DIR`` to keep using such a copy).

    Example:
        >>> find_azurite_dir().as_posix()  # doctest: +SKIP
        '/home/me/.cache/aiobatch/azurite'
    """
    del start
    return default_azurite_dir()


def services_environ(emulator: Emulator, azurite: AzuriteServer) -> dict[str, str]:
    """The ``AZURE_*`` variables `aiobatch.Client.from_env` reads, pointing at a running emulator and Azurite.

    Both carry development keys only: the emulator's and Azurite's well-known ones unless they were given others.
    """
    return {
        ENV_BATCH_ENDPOINT: emulator.endpoint,
        ENV_BATCH_ACCOUNT_NAME: emulator.account_name,
        ENV_BATCH_ACCOUNT_KEY: emulator.credential.named_key.key,
        ENV_STORAGE_CONNECTION_STRING: azurite.connection_string,
    }


class LocalServices:
    """The Batch emulator and Azurite's Blob service on loopback, as one async context manager.

    Entering starts Azurite (installing it with npm on first use; unless a running *azurite* is given, which is
    used and left running), then the emulator serving *apps_dir*; leaving stops what it started, shielded from
    cancellation: the emulator kills its task processes and removes its temporary folder, Azurite's process
    group is ended. A failure or cancellation half-way stops what was already started.

    Args:
        apps_dir: application packages, ``<id>/<version>.zip``; none by default.
        workdir: where the emulator keeps node directories; a temporary folder by default.
        timings: the emulator's delays; `INTERACTIVE_TIMINGS` by default.
        azurite_dir: where Azurite is installed; `aiobatch._azurite.default_azurite_dir` by default.
        azurite: an Azurite already running (e.g. a test session's) to use instead of starting one.

    Example:
        >>> async def main():  # doctest: +SKIP
        ...     async with LocalServices() as services:
        ...         async with Client.from_env(services.environ) as client:
        ...             ...
    """

    def __init__(
        self,
        *,
        apps_dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        timings: Timings | None = None,
        azurite_dir: str | os.PathLike[str] | None = None,
        azurite: AzuriteServer | None = None,
    ) -> None:
        self.apps_dir = Path(apps_dir) if apps_dir is not None else None
        self._workdir = Path(workdir) if workdir is not None else None
        self.timings = timings or INTERACTIVE_TIMINGS
        self._azurite_dir = azurite_dir
        self._given_azurite = azurite
        self._stack = contextlib.AsyncExitStack()
        self.azurite: AzuriteServer | None = None
        self.emulator: Emulator | None = None

    def __repr__(self) -> str:
        running = self.emulator is not None and self.azurite is not None
        where = f" batch={self.emulator.endpoint!r}" if running and self.emulator is not None else ""
        return f"<LocalServices{where} {'running' if running else 'stopped'}>"

    async def start(self) -> LocalServices:
        """Start both (``async with`` does this); for a notebook, where a block cannot span cells.

        Returns:
            self.
        """
        return await self.__aenter__()

    async def stop(self) -> None:
        """Stop what was started (``async with`` does this); safe to call twice."""
        await self.__aexit__(None, None, None)

    async def __aenter__(self) -> LocalServices:
        stack = self._stack
        try:
            if self._given_azurite is not None:
                self.azurite = self._given_azurite
            else:
                # None: AzuriteServer asks default_azurite_dir (the one place the folder is decided).
                self.azurite = await stack.enter_async_context(AzuriteServer(directory=self._azurite_dir))
            self.emulator = await stack.enter_async_context(
                Emulator(apps_dir=self.apps_dir, workdir=self._workdir, timings=self.timings)
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            self.azurite = self.emulator = None
            raise
        logger.info("local Batch emulator on %s, Azurite on %s", self.emulator.endpoint, self.azurite.blob_endpoint)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()

    @property
    def environ(self) -> dict[str, str]:
        """The ``AZURE_*`` variables `aiobatch.Client.from_env` reads, pointing here (see `services_environ`).

        Raises:
            RuntimeError: not started.
        """
        if self.emulator is None or self.azurite is None:
            raise RuntimeError("the local services are not running; use `async with LocalServices() as services:`")
        return services_environ(self.emulator, self.azurite)

    async def leftovers(self, *, wait: float = 10.0) -> list[str]:
        """What is still in the Batch account and the storage account: pools, jobs and containers.

        Deletions take a moment on the service side, so this asks again for up to *wait* seconds while
        something is still there (being deleted).

        Returns:
            One description per resource left, e.g. ``"pool 'pets' (deleting)"``; empty when all is gone.

        Raises:
            RuntimeError: not started.
        """
        if self.emulator is None or self.azurite is None:
            raise RuntimeError("the local services are not running")
        deadline = time.monotonic() + wait
        async with (
            BatchClient(self.emulator.endpoint, self.emulator.credential) as batch,
            BlobServiceClient.from_connection_string(self.azurite.connection_string) as blobs,
        ):
            while True:
                left = [f"pool {p.id!r} ({p.state})" async for p in batch.list_pools()]
                left += [f"job {j.id!r} ({j.state})" async for j in batch.list_jobs()]
                left += [f"container {c.name!r}" async for c in blobs.list_containers()]
                if not left or time.monotonic() >= deadline:
                    return left
                await anyio.sleep(0.2)


class LocalBatch:
    """The Batch emulator and Azurite on loopback, and the ffmpeg application package when asked.

    An async context manager: entering builds ``ffmpeg/<version>.zip`` from the pip-installed binary into the
    apps folder when *ffmpeg* is true (skipped when it is there), then starts Azurite's Blob service (installing
    it with npm on first use) and the emulator serving that folder, through `LocalServices`
    (the starter ``aiobatch local`` and the test fixtures share); leaving stops both and removes temporary
    folders.

    Args:
        apps_dir: the application packages folder; none (or, with *ffmpeg*, a temporary one) by default.
        workdir: where the emulator keeps node directories; a temporary folder by default.
        timings: the emulator's allocation and boot delays (about a second by default, so progress shows).
        azurite_dir: where Azurite is installed; `aiobatch._azurite.default_azurite_dir` by default.
        ffmpeg: build the ffmpeg application package (~80 MB zipped, once per apps folder) and serve it; the
            GIF pipeline needs it, other work does not.

    Example:
        >>> async def main():  # doctest: +SKIP
        ...     async with LocalBatch(ffmpeg=True) as local:
        ...         async with Client.from_env(local.environ, cleanup=True) as client:
        ...             pool = gifs.gif_pool_spec("pets", app=local.ffmpeg_app)
    """

    def __init__(
        self,
        *,
        apps_dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        timings: Timings | None = None,
        azurite_dir: str | os.PathLike[str] | None = None,
        ffmpeg: bool = False,
    ) -> None:
        self._apps_dir = Path(apps_dir) if apps_dir is not None else None
        self._workdir = Path(workdir) if workdir is not None else None
        self._timings = timings or INTERACTIVE_TIMINGS
        self._azurite_dir = azurite_dir
        self._ffmpeg = ffmpeg
        self._stack = contextlib.AsyncExitStack()
        self.services: LocalServices | None = None
        self.azurite: AzuriteServer | None = None
        self.emulator: Emulator | None = None
        self.apps_dir: Path | None = None
        self._ffmpeg_app: AppPackageRef | None = None

    def __repr__(self) -> str:
        endpoint = self.emulator.endpoint if self.emulator is not None and self.emulator.account else None
        return f"LocalBatch(batch={endpoint!r}, apps_dir={str(self.apps_dir) if self.apps_dir else None!r})"

    @property
    def ffmpeg_app(self) -> AppPackageRef:
        """The ffmpeg application package served, with its version.

        Raises:
            RuntimeError: not entered, or entered without ``ffmpeg=True``.
        """
        if self._ffmpeg_app is None:
            raise RuntimeError("no ffmpeg package: use LocalBatch(ffmpeg=True) to build and serve it")
        return self._ffmpeg_app

    async def start(self) -> LocalBatch:
        """Start everything (``async with`` does this); for a notebook, where a block cannot span cells.

        Returns:
            self.
        """
        return await self.__aenter__()

    async def stop(self) -> None:
        """Stop everything (``async with`` does this); safe to call twice."""
        await self.__aexit__(None, None, None)

    async def __aenter__(self) -> LocalBatch:
        stack = self._stack
        try:
            apps = self._apps_dir
            if apps is None and self._ffmpeg:
                apps = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="aiobatch-apps-")))
                stack.push_async_callback(
                    anyio.to_thread.run_sync, functools.partial(shutil.rmtree, apps, ignore_errors=True)
                )
            self.apps_dir = apps
            if self._ffmpeg:
                assert apps is not None
                # Asking ffmpeg its version runs it: a subprocess, like zipping the package, is for a worker thread.
                version = await anyio.to_thread.run_sync(ffmpeg_version)
                await anyio.to_thread.run_sync(lambda: build_ffmpeg_package(apps, version=version))
                self._ffmpeg_app = AppPackageRef(FFMPEG_APP_ID, version)
            services = LocalServices(
                apps_dir=apps, workdir=self._workdir, timings=self._timings, azurite_dir=self._azurite_dir
            )
            self.services = await stack.enter_async_context(services)
            self.azurite, self.emulator = services.azurite, services.emulator
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self._stack.aclose()

    @property
    def environ(self) -> dict[str, str]:
        """The ``AZURE_*`` variables `aiobatch.Client.from_env` reads, pointing here (development keys only).

        Raises:
            RuntimeError: not entered yet.
        """
        if self.services is None or self.services.emulator is None:
            raise RuntimeError("LocalBatch is not running; use `async with LocalBatch() as local:`")
        return self.services.environ

    async def leftovers(self, *, wait: float = 10.0) -> list[str]:
        """What is still in the Batch account and the storage account: pools, jobs and containers.

        Deletions take a moment on the service side, so this asks again for up to *wait* seconds while
        something is still there (being deleted).

        Returns:
            One description per resource left, e.g. ``"pool 'pets' (deleting)"``; empty when all is gone.
        """
        if self.services is None:
            raise RuntimeError("LocalBatch is not running")
        return await self.services.leftovers(wait=wait)
