"""`Client`: one Batch and one Blob client, an explicit lifecycle, a run id, and cleanup that survives cancellation.

Each public coroutine delegates to one module (`_storage`, `_pools`, `_jobs`, `_entities`, `_submit`, `_watch`);
what this run created, its cleanup and its sweep belong to `_run`. This module holds only the lifecycle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import anyio
from azure.batch.aio import BatchClient
from azure.storage.blob.aio import BlobServiceClient

from . import _entities, _fanout, _jobs, _mapoptions, _pools, _run, _sas, _storage, _submit, _template, _watch
from ._config import BatchSettings, Settings, StorageSettings, default_credential
from ._errors import AiobatchError, ConfigurationError
from ._jobs import JobOptions, JobRef, OnAllTasksComplete
from ._pools import PoolRef, PoolStatus
from ._redact import guard_loggers, redact
from ._retry import RetryPolicy, sdk_client_kwargs
from ._run import SweepReport, new_run_id
from ._sas import SasPolicy
from ._specs import PoolSpec, TaskSpec
from ._storage import DownloadResult, ProgressCallback, UploadResult
from ._submit import SubmissionLedger, SubmitResult
from ._watch import TaskEvent, TaskSummary, TaskWatch

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from typing_extensions import Unpack

__all__ = ["Client"]

logger = logging.getLogger("aiobatch")

State = Literal["unopened", "open", "closed"]


class Client:
    """Drive Azure Batch and Blob Storage from asyncio: upload, pool, job, tasks, events, outputs, cleanup.

    A `Client` is an async context manager owning one ``azure.batch.aio.BatchClient`` and one
    ``azure.storage.blob.aio.BlobServiceClient``, opened together (a failure half-way closes what was opened).
    Its lifecycle is explicit: unopened, open, closed; it cannot be opened twice, and `aclose` is safe to call
    twice. It never calls ``asyncio.run`` and never blocks the loop, so it works inside a running loop (a
    notebook): ``async with Client.from_env() as client: ...`` in a cell.

    Every pool and job it creates is tagged with its *run_id* (metadata ``aiobatch-run-id``), so a retry whose
    answer was lost, a re-run with the same run id, cleanup and a crash sweep all recognise this run's resources
    -- and leave everybody else's alone.

    With ``cleanup=True``, leaving the ``async with`` block deletes the jobs, pools and containers this client
    created -- on normal exit, on error, on cancellation and on Ctrl-C -- inside a shielded scope bounded by
    *cleanup_timeout*.

    Every request is retried by *retry_policy* alone (the SDKs' own retries are off): jittered exponential
    backoff honouring ``Retry-After``, bounded by attempts and by time.

    Args:
        batch: where the Batch account is and how to sign in (Shared Key, or Entra ID without a key).
        storage: where Blob Storage is and how to sign in.
        run_id: this run's id (1-64 of ``[A-Za-z0-9_-]``); a new one is made if not given. Give the id of an
            earlier run to resume it.
        cleanup: delete what this client created when it closes.
        cleanup_timeout: seconds cleanup may take in all.
        retry_policy: the retry policy for every request.
        sas_policy: the validity window of the SAS URLs the client mints.
        credential: an Entra ID credential for both services. Without one, when a setting has no key, the client
            makes one ``DefaultAzureCredential``, shares it between the Batch and Blob clients and closes it when
            it closes (or when opening fails half-way). One passed in is shared the same way but stays the
            caller's: the client never closes it, so it can outlive the client or serve several; close it
            yourself. A service whose settings carry a key (Batch with an account key, storage with a connection
            string) signs with the key, so Batch with a key and storage with Entra ID is
            ``BatchSettings(..., account_key=...)``, ``StorageSettings(account_url=...)`` and ``credential=``.
        connection_verify: check both services' TLS certificates against the system's authorities (``True``), or
            against this CA file: a private authority, or a local Azurite over HTTPS
            (``str(AzuriteServer.cert_path)``).

    Raises:
        ConfigurationError: an invalid run id.

    Example:
        >>> async def convert(videos):  # doctest: +SKIP
        ...     async with Client.from_env(cleanup=True) as client:
        ...         uploaded = await client.upload_files("inputs", videos)
        ...         await client.ensure_pool(pool_spec)
        ...         await client.wait_for_pool_ready(pool_spec.id)
        ...         await client.create_job("convert", pool_id=pool_spec.id, on_all_tasks_complete="terminatejob")
        ...         await client.submit_tasks("convert", specs)
        ...         async for event in client.watch_tasks("convert"):
        ...             print(event.task_id, "ok" if event.succeeded else await event.stderr_tail())
        ...         await client.download_outputs("outputs", "gifs/")
    """

    def __init__(
        self,
        batch: BatchSettings,
        storage: StorageSettings,
        *,
        run_id: str | None = None,
        cleanup: bool = False,
        cleanup_timeout: float = 120.0,
        retry_policy: RetryPolicy | None = None,
        sas_policy: SasPolicy | None = None,
        credential: AsyncTokenCredential | None = None,
        connection_verify: bool | str = True,
    ) -> None:
        if run_id is not None:
            _run.check_run_id(run_id)
        if cleanup_timeout <= 0:
            raise ConfigurationError("cleanup_timeout must be positive seconds.", setting="cleanup_timeout")
        self._batch_settings = batch
        self._storage_settings = storage
        self.run_id = run_id or new_run_id()
        self.cleanup = cleanup
        self.cleanup_timeout = cleanup_timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self.sas_policy = sas_policy or SasPolicy()
        self._credential = credential
        self._connection_verify = connection_verify
        self._state: State = "unopened"
        self._stack = contextlib.AsyncExitStack()
        self._batch: BatchClient | None = None
        self._blobs: BlobServiceClient | None = None
        self._ledger = SubmissionLedger(self.run_id, resumed=run_id is not None)
        self._submitted: dict[str, set[str]] = {}
        self._deferred_completion: dict[str, OnAllTasksComplete] = {}
        # What this run created (or recognised as its own by the run-id tag), and what it may have created.
        self._run = _run.Run(self.run_id)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        run_id: str | None = None,
        cleanup: bool = False,
        cleanup_timeout: float = 120.0,
        retry_policy: RetryPolicy | None = None,
        sas_policy: SasPolicy | None = None,
        credential: AsyncTokenCredential | None = None,
        connection_verify: bool | str = True,
    ) -> Client:
        """Build a client from ``AZURE_BATCH_*`` and ``AZURE_STORAGE_*`` variables (see `aiobatch._config`).

        ``AZURE_BATCH_ENDPOINT``, ``AZURE_BATCH_ACCOUNT_NAME`` and ``AZURE_BATCH_ACCOUNT_KEY``;
        ``AZURE_STORAGE_CONNECTION_STRING`` or ``AZURE_STORAGE_ACCOUNT_URL``. Without a key, a service is
        reached with ``DefaultAzureCredential``. Pointing these at the emulator and Azurite is the only change
        between a local run and Azure.

        Args:
            environ: where to read the variables (``os.environ`` by default).
            run_id: see `Client`.
            cleanup: see `Client`.
            cleanup_timeout: see `Client`.
            retry_policy: see `Client`.
            sas_policy: see `Client`.
            credential: see `Client`.
            connection_verify: see `Client`.

        Returns:
            An unopened client: use it with ``async with``.

        Raises:
            ConfigurationError: a variable is missing or malformed; the message names it and the fix.

        Example:
            >>> async def main():  # doctest: +SKIP
            ...     async with Client.from_env(cleanup=True) as client:
            ...         print(client.run_id)
        """
        settings = Settings.from_env(os.environ if environ is None else environ)
        return cls(
            settings.batch,
            settings.storage,
            run_id=run_id,
            cleanup=cleanup,
            cleanup_timeout=cleanup_timeout,
            retry_policy=retry_policy,
            sas_policy=sas_policy,
            credential=credential,
            connection_verify=connection_verify,
        )

    def __repr__(self) -> str:
        return redact(
            f"Client(run_id={self.run_id!r}, batch_endpoint={self._batch_settings.endpoint!r}, "
            f"storage={self._storage_settings.blob_endpoint!r}, state={self._state!r}, cleanup={self.cleanup})"
        )

    def __del__(self, _warn: Callable[..., None] = warnings.warn, _log: Callable[..., None] = logger.warning) -> None:
        # Only a warning: a finalizer runs wherever the garbage collector happens to be (maybe with no event loop
        # left), so it must not call the services -- what the run created can only be named, with the command that
        # deletes it. (Default arguments keep both callables reachable during interpreter shutdown.)
        if getattr(self, "_state", None) != "open":
            return
        message = f"unclosed aiobatch Client (run {self.run_id!r}): use `async with` or `await client.aclose()`"
        if not self._run.anything:
            _warn(message, ResourceWarning, source=self, stacklevel=2)
            return
        message += (
            f". It created {self._run.left_behind()}, which stay (and a pool's nodes cost money) until deleted: "
            f"aiobatch cleanup --run-id {self.run_id}"
        )
        _warn(message, ResourceWarning, source=self, stacklevel=2)
        # Python hides ResourceWarning outside tests and development mode; a leak that costs money is also logged
        # (as aiohttp reports an unclosed session through the loop's exception handler), so it is never silent.
        # Not contextlib.suppress: at interpreter exit the module's globals may already be gone.
        try:  # noqa: SIM105
            _log("%s", message)
        except Exception:  # logging torn down at interpreter exit: the warning above still stands
            pass

    # ------------------------------------------------------------------------------------------------
    # Lifecycle
    # ------------------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``"unopened"``, ``"open"`` or ``"closed"``."""
        return self._state

    @property
    def batch(self) -> BatchClient:
        """The underlying ``azure.batch.aio.BatchClient`` (SDK retries off), for what aiobatch does not wrap."""
        self._check_open()
        assert self._batch is not None
        return self._batch

    @property
    def blob_service(self) -> BlobServiceClient:
        """The underlying ``azure.storage.blob.aio.BlobServiceClient`` (SDK retries off)."""
        self._check_open()
        assert self._blobs is not None
        return self._blobs

    @property
    def created(self) -> dict[str, tuple[str, ...]]:
        """What this client created and would delete on cleanup: ``{"jobs": ..., "pools": ..., "containers": ...}``."""
        return self._run.created

    def _check_open(self) -> None:
        if self._state != "open":
            what = "not open yet: use `async with Client(...) as client:`" if self._state == "unopened" else "closed"
            raise RuntimeError(f"this aiobatch Client is {what}.")

    async def open(self) -> Client:
        """Open the Batch and Blob clients (``async with`` does this); returns self.

        Raises:
            RuntimeError: the client was opened before (a client is opened at most once).
            ConfigurationError: an account URL without a credential.

        Example:
            >>> async def main():  # doctest: +SKIP
            ...     client = await Client.from_env().open()  # or: async with Client.from_env() as client:
            ...     try:
            ...         print(client.state)
            ...     finally:
            ...         await client.aclose()
        """
        if self._state != "unopened":
            raise RuntimeError(
                f"this aiobatch Client is {self._state}: a client can be opened only once; create a new one."
            )
        stack = self._stack
        try:
            credential = self._credential
            if credential is None and (self._batch_settings.uses_entra_id or self._storage_settings.uses_entra_id):
                credential = default_credential()
                stack.push_async_callback(credential.close)
            batch_credential = self._batch_settings.shared_key_credential() or credential
            kwargs = sdk_client_kwargs()
            if self._connection_verify is not True:
                kwargs["connection_verify"] = self._connection_verify
            batch = BatchClient(self._batch_settings.endpoint, batch_credential, **kwargs)  # type: ignore[arg-type]
            self._batch = await stack.enter_async_context(batch)
            blobs = _storage.blob_service_client(
                self._storage_settings, credential=credential, connection_verify=self._connection_verify
            )
            self._blobs = await stack.enter_async_context(blobs)
            # The SDKs are loaded now: mask secrets in their records (and ours) whatever the app's handlers.
            guard_loggers()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            self._state = "closed"
            raise
        self._state = "open"
        logger.info("aiobatch client open (run %s)", self.run_id)
        return self

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close(raise_cleanup_errors=exc_type is None)

    async def aclose(self) -> None:
        """Clean up (with ``cleanup=True``) and close both SDK clients. Safe to call twice.

        Raises:
            AiobatchError: cleanup could not delete something, or ran out of *cleanup_timeout*; the message names
                the run id and what is left (the client is closed anyway).

        Example:
            >>> async def main():  # doctest: +SKIP
            ...     client = await Client.from_env(cleanup=True).open()
            ...     try:
            ...         await client.ensure_container("scratch")
            ...     finally:
            ...         await client.aclose()  # deletes "scratch", then closes both SDK clients
        """
        await self._close(raise_cleanup_errors=True)

    async def _close(self, *, raise_cleanup_errors: bool) -> None:
        if self._state == "closed":
            return
        if self._state == "unopened":
            self._state = "closed"
            return
        errors: list[BaseException] = []
        try:
            await _fanout.wait_for_dropped(self)  # a fan-out left by a plain `break` stops its job first
            if self.cleanup:
                errors = await self._run.cleanup(
                    self.batch, self.blob_service, policy=self.retry_policy, timeout=self.cleanup_timeout
                )
        finally:
            self._state = "closed"
            with anyio.CancelScope(shield=True):
                await self._stack.aclose()
            logger.info("aiobatch client closed (run %s)", self.run_id)
        if not errors:
            return
        message = (
            f"cleanup of run {self.run_id!r} left {self._run.left_behind()}: {str(errors[0]).rstrip('.')}"
            f"{f' (and {len(errors) - 1} more error(s))' if len(errors) > 1 else ''}. "
            f"Delete them by hand, or sweep the run: aiobatch cleanup --run-id {self.run_id}"
        )
        if not raise_cleanup_errors:
            # The block is already raising (an error, a cancellation, Ctrl-C): that exception goes on; this is
            # the record of what it left.
            logger.warning("%s", message)
            return
        raise AiobatchError(message) from errors[0]

    async def sweep_run(
        self,
        run_id: str | None = None,
        *,
        dry_run: bool = False,
        wait: bool = True,
        timeout: float = 600.0,  # noqa: ASYNC109 (the error names what was still there)
    ) -> SweepReport:
        """Delete every job, pool and container tagged with a run id -- what a crashed run left behind.

        Finds them by the tag alone (``aiobatch-run-id`` on pools and jobs, ``aiobatch_run_id`` on containers),
        so it works from any process that knows the run id; ``aiobatch cleanup --run-id ID`` calls it. Nothing
        without exactly that tag is touched. Jobs go first, then pools, then containers; one already gone or
        being deleted counts as done, so a sweep can be repeated.

        Args:
            run_id: the run to sweep; by default this client's own.
            dry_run: only list what would be deleted.
            wait: wait until the service has removed the jobs and pools.
            timeout: seconds to wait for that.

        Returns:
            What was found (and deleted, unless *dry_run*).

        Raises:
            ConfigurationError: an invalid run id.
            AiobatchError: something could not be deleted; sweeping again retries it.

        Example:
            >>> async def sweep(client):  # doctest: +SKIP
            ...     report = await client.sweep_run("20261124T161837-3fa9c1", dry_run=True)
            ...     for line in report.found.lines():
            ...         print(line)
        """
        self._check_open()
        report = await _run.sweep_run(
            self.batch,
            self.blob_service,
            run_id if run_id is not None else self.run_id,
            dry_run=dry_run,
            wait=wait,
            timeout=timeout,
            policy=self.retry_policy,
        )
        if not dry_run and report.run_id == self.run_id:
            self._run.forget()
        return report

    # ------------------------------------------------------------------------------------------------
    # Storage
    # ------------------------------------------------------------------------------------------------

    async def ensure_container(self, container: str) -> bool:
        """Create a container unless it exists; one this call creates is deleted on cleanup.

        The container is tagged with this run's id (metadata ``aiobatch_run_id``), like the run's pools and jobs.

        Args:
            container: the name (3-63 lower-case letters, digits, hyphens).

        Returns:
            ``True`` if this call created it.

        Example:
            >>> async def scratch(client):  # doctest: +SKIP
            ...     if await client.ensure_container("scratch"):
            ...         print("created, and deleted on cleanup")
        """
        self._check_open()
        with self._run.creating("container", container):
            created = await _storage.ensure_container(
                self.blob_service, container, policy=self.retry_policy, run_id=self.run_id
            )
        if created:
            self._run.containers[container] = None
        return created

    async def upload_files(
        self,
        container: str,
        paths: Iterable[str | os.PathLike[str]],
        *,
        blob_names: Sequence[str] | None = None,
        concurrency: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        """Upload files to a container (created if missing), skipping blobs that already hold the same bytes.

        A re-run uploads nothing that is already there (same size and MD5). Large files go up in blocks;
        every request's content is validated.

        Args:
            container: the container.
            paths: the local files.
            blob_names: a blob name per path; by default each file's name.
            concurrency: most requests in flight; by default tuned to the round trip (from 4, growing while
                throughput grows, backing off on 503/429 and timeouts, at most 64).
            progress: called with a ``TransferProgress`` as bytes go up.

        Returns:
            The uploaded and skipped files (names, sizes, MD5s).

        Raises:
            ConfigurationError: a missing or unreadable file, or clashing names.
            ServiceError: the service refused (the message has the fix).

        Example:
            >>> async def stage(client, videos):  # doctest: +SKIP
            ...     result = await client.upload_files("inputs", videos)
            ...     urls = [await client.input_sas_url("inputs", f.name) for f in result.files]
        """
        await self.ensure_container(container)  # tagged with the run id, remembered for cleanup
        return await _storage.upload_files(
            self.blob_service,
            container,
            paths,
            blob_names=blob_names,
            concurrency=concurrency,
            progress=progress,
            policy=self.retry_policy,
            create_container=False,
        )

    async def input_sas_url(self, container: str, blob: str, *, sas_policy: SasPolicy | None = None) -> str:
        """Return a read-only SAS URL for one blob (for a task's resource file), valid per the SAS policy.

        Args:
            container: the container.
            blob: the blob name.
            sas_policy: overrides the client's SAS policy for this URL.

        Returns:
            The URL; it grants read on that blob only.

        Example:
            >>> async def spec(client):  # doctest: +SKIP
            ...     url = await client.input_sas_url("inputs", "cat.mp4")
            ...     return TaskSpec(id="cat", command_line="ffmpeg -i cat.mp4 cat.gif",
            ...                     resource_files=[resource_file(url)])
        """
        self._check_open()
        return await _sas.input_sas_url(self.blob_service, container, blob, policy=sas_policy or self.sas_policy)

    async def output_container_sas_url(self, container: str, *, sas_policy: SasPolicy | None = None) -> str:
        """Return a create/write-only SAS URL for a container (for tasks' output files); creates the container.

        Args:
            container: the container.
            sas_policy: overrides the client's SAS policy for this URL.

        Returns:
            The URL; it grants create and write only (no read, list or delete).

        Example:
            >>> async def outputs(client):  # doctest: +SKIP
            ...     url = await client.output_container_sas_url("outputs")
            ...     return [output_files_to(url, "*.gif", path="gifs")]
        """
        await self.ensure_container(container)
        return await _sas.output_container_sas_url(self.blob_service, container, policy=sas_policy or self.sas_policy)

    async def download_outputs(
        self,
        container: str,
        destination: str | os.PathLike[str],
        *,
        names: Iterable[str] | None = None,
        prefix: str | None = None,
        concurrency: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> DownloadResult:
        """Download blobs (by default all of a container's) into a folder, each verified against its MD5.

        A blob whose bytes do not match its stored MD5 raises `IntegrityError` and leaves no file behind.

        Args:
            container: the container.
            destination: the local folder (created if missing).
            names: the blobs to fetch; by default all (under *prefix*).
            prefix: only blobs whose names start with this.
            concurrency: most downloads at once; by default tuned to the round trip, as for uploads.
            progress: called with a ``TransferProgress`` as bytes arrive.

        Returns:
            The downloaded and skipped files.

        Example:
            >>> async def collect(client):  # doctest: +SKIP
            ...     result = await client.download_outputs("outputs", "gifs/")
            ...     print([str(f.path) for f in result.files])
        """
        self._check_open()
        return await _storage.download_blobs(
            self.blob_service,
            container,
            destination,
            names=names,
            prefix=prefix,
            concurrency=concurrency,
            progress=progress,
            policy=self.retry_policy,
        )

    async def delete_containers(self, containers: str | Iterable[str]) -> list[str]:
        """Delete containers; one that does not exist counts as deleted.

        Args:
            containers: the names (one name alone is accepted too).

        Returns:
            The names this call deleted.

        Example:
            >>> async def tidy(client):  # doctest: +SKIP
            ...     deleted = await client.delete_containers(["inputs", "outputs"])
            ...     print("deleted", deleted)
        """
        self._check_open()
        names = [containers] if isinstance(containers, str) else list(containers)
        deleted = await _storage.delete_containers(self.blob_service, names, policy=self.retry_policy)
        for name in names:
            self._run.containers.pop(name, None)
        return deleted

    # ------------------------------------------------------------------------------------------------
    # Pools
    # ------------------------------------------------------------------------------------------------

    async def ensure_pool(
        self,
        spec: PoolSpec,
        *,
        reuse_existing: bool = False,
        deletion_timeout: float = 900.0,
    ) -> PoolRef:
        """Create the pool unless it exists; a pool this run did not create is adopted only when asked.

        The pool is tagged with this run's id. If the id is taken by a pool carrying this run's id (a create
        whose answer was lost, or a resumed run), it is left as it is and counts as this run's. A pool this
        run did not create raises `ConflictError`, unless *reuse_existing* -- then it is used as it is and never
        deleted by this client. A pool with the id that is being deleted (by an earlier run's cleanup, say) is
        waited for, up to *deletion_timeout*, and then created anew.

        Args:
            spec: the pool.
            reuse_existing: run on an existing pool with this id that this run did not create.
            deletion_timeout: seconds to wait for a pool with this id that is being deleted to go.

        Returns:
            The pool's id and whether it was created now and is this run's.

        Raises:
            ConflictError: the id is another's pool (without *reuse_existing*), or it was still being deleted
                after *deletion_timeout*.
            ServiceError: the service refused the spec.

        Example:
            >>> async def pool(client):  # doctest: +SKIP
            ...     spec = PoolSpec(id="pets", vm_size="standard_d2s_v3", image_publisher="canonical",
            ...                     image_offer="ubuntu-24_04-lts", image_sku="server",
            ...                     node_agent_sku_id="batch.node.ubuntu 24.04", dedicated_nodes=2)
            ...     await client.ensure_pool(spec)
            ...     await client.wait_for_pool_ready("pets", timeout=1200)
        """
        self._check_open()
        with self._run.creating("pool", spec.id):
            ref = await _pools.ensure_pool(
                self.batch,
                spec,
                run_id=self.run_id,
                reuse_existing=reuse_existing,
                policy=self.retry_policy,
                deletion_timeout=deletion_timeout,
            )
        if ref.owned:
            self._run.pools[ref.id] = None
        return ref

    async def wait_for_pool_ready(
        self,
        pool_id: str,
        *,
        min_nodes: int | None = None,
        timeout: float = 1800.0,  # noqa: ASYNC109 (the error says what the pool looked like at the end)
        poll_interval: float = 2.0,
        max_poll_interval: float = 30.0,
    ) -> PoolStatus:
        """Wait until the pool's allocation is steady and enough nodes are usable; fail fast when they cannot be.

        Raises at once -- not at the timeout -- when the pool reports resize errors (such as a core quota) and
        too few nodes are usable or on their way, when the start task failed on the nodes needed, or when
        nodes are unusable. A stale resize error on a pool with enough usable nodes is not fatal.

        Args:
            pool_id: the pool.
            min_nodes: usable nodes needed; by default every node the pool asks for.
            timeout: seconds to wait in all.
            poll_interval: seconds before the second poll (waits double from there).
            max_poll_interval: the longest wait between polls.

        Returns:
            The pool's status once ready.

        Raises:
            PoolResizeError: resize errors (e.g. quota) and too few usable nodes; ask for more quota or fewer
                nodes.
            PoolStartTaskError: the start task failed; fix it and recreate the pool.
            PoolTimeoutError: not ready within *timeout*.
            PoolError: the pool is being deleted or its nodes are unusable.

        Example:
            >>> async def ready(client):  # doctest: +SKIP
            ...     status = await client.wait_for_pool_ready("pets", min_nodes=1, timeout=900)
            ...     print(status.describe())
        """
        self._check_open()
        return await _pools.wait_for_pool_ready(
            self.batch,
            pool_id,
            min_nodes=min_nodes,
            timeout=timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            policy=self.retry_policy,
        )

    async def delete_pool(self, pool_id: str, *, force: bool = False, wait: bool = False) -> bool:
        """Delete a pool this run created; another's only with *force*. A pool already gone counts as deleted.

        Args:
            pool_id: the pool.
            force: delete it even if this run did not create it.
            wait: wait until the service has removed it.

        Returns:
            ``True`` if this call asked for the deletion, ``False`` if it was already gone or going.

        Raises:
            ConflictError: the pool is not this run's and *force* is false.

        Example:
            >>> async def drop_pool(client):  # doctest: +SKIP
            ...     await client.delete_pool("pets", wait=True)
        """
        return await self._delete_entity("pool", pool_id, force=force, wait=wait)

    async def _delete_entity(self, kind: Literal["pool", "job"], entity_id: str, *, force: bool, wait: bool) -> bool:
        """Delete a pool or job: this run's, or (with *force*) anyone's; forget it as this run's."""
        self._check_open()
        record = self._run.pools if kind == "pool" else self._run.jobs
        if entity_id not in record and not force:
            await _run.check_ours(self.batch, self.blob_service, kind, entity_id, self.run_id, policy=self.retry_policy)
        deleted = await _entities.delete(self.batch, kind, entity_id, wait=wait, policy=self.retry_policy)
        record.pop(entity_id, None)
        return deleted

    # ------------------------------------------------------------------------------------------------
    # Jobs and tasks
    # ------------------------------------------------------------------------------------------------

    async def create_job(
        self,
        job_id: str,
        **options: Unpack[JobOptions],
    ) -> JobRef:
        """Create a job (idempotently) on a pool, or with an auto-pool that lives and dies with the job.

        Creating a job that this run already created is fine; a job with that id that this run did not create
        is a `ConflictError` unless *reuse_existing*. A job with that id that is being deleted is waited for
        (up to *deletion_timeout*), then the job is created anew. With *auto_pool*, the service creates the pool
        with the job (``poolLifetimeOption=job``) and deletes it when the job ends, so a crashed client leaves no
        pool running once the job is terminated or deleted.

        ``on_all_tasks_complete="terminatejob"`` is applied when `submit_tasks` finishes (``final=True``): a job
        created with it would terminate at once, having no tasks yet.

        Args:
            job_id: the job id.
            **options: keyword options, all optional: ``pool_id`` (the pool to run on) or ``auto_pool`` (a
                `PoolSpec` for a pool for this job alone), ``on_all_tasks_complete``, ``on_task_failure``,
                ``max_task_retry_count``, ``max_wall_clock_time`` (seconds), ``priority`` (-1000 to 1000),
                ``display_name``, ``metadata``, ``reuse_existing`` (add to an existing job this run did not
                create) and ``deletion_timeout`` (seconds, default 300); see `aiobatch.JobOptions`.

        Returns:
            The job's id, pool and ownership.

        Raises:
            ConflictError: another's job with this id, or one still being deleted after *deletion_timeout*.
            ConfigurationError: neither or both of *pool_id* and *auto_pool*.

        Example:
            >>> async def job(client):  # doctest: +SKIP
            ...     await client.create_job("convert", pool_id="pets", on_all_tasks_complete="terminatejob")
        """
        self._check_open()
        with self._run.creating("job", job_id):
            ref = await _jobs.create_job(
                self.batch,
                job_id,
                run_id=self.run_id,
                policy=self.retry_policy,
                **options,
            )
        if ref.owned:
            self._run.jobs[ref.id] = None
        if ref.on_all_tasks_complete != "noaction":
            self._deferred_completion[job_id.lower()] = ref.on_all_tasks_complete
        return ref

    async def submit_tasks(
        self,
        job_id: str,
        tasks: Iterable[TaskSpec],
        *,
        concurrency: int = 4,
        final: bool = True,
    ) -> SubmitResult:
        """Add tasks to a job, each exactly once, and say per task what happened.

        Safe to repeat: submitting the same specs again (a retry, a re-run, a resumed run with ``run_id=``)
        adds only what is missing, and what this run added before counts as existing. A task id already taken
        by someone else's task is a conflict, reported in ``result.failed`` and ``result.conflicts``, never as
        success. Transient failures are retried under the client's retry policy (chunking, retries and how a
        task is never added twice: see `aiobatch._submit`).

        Args:
            job_id: the job.
            tasks: the task specs; ids distinct case-insensitively (see ``task_ids_for``).
            concurrency: most requests in flight.
            final: this is the job's last submission: apply the job's deferred ``on_all_tasks_complete`` (see
                `create_job`). Pass ``False`` on all but the last of several submissions.

        Returns:
            What was added, what already existed (this run's) and what failed with the service's reason; call
            ``result.raise_for_failures()`` to turn failures into a `SubmissionError`.

        Raises:
            SubmissionError: a request failed as a whole and for good, or per-task server errors outlasted the
                retry policy (cause chained); it says what was added and what failed.

        Example:
            >>> async def submit(client, specs):  # doctest: +SKIP
            ...     result = await client.submit_tasks("convert", specs)
            ...     result.raise_for_failures()
            ...     print(len(result.added), "added in", result.requests, "requests")
        """
        self._check_open()
        result = await _submit.submit_tasks(
            self.batch,
            job_id,
            tasks,
            ledger=self._ledger,
            concurrency=concurrency,
            policy=self.retry_policy,
        )
        submitted = self._submitted.setdefault(job_id.lower(), set())
        submitted.update(t.lower() for t in result.added)
        submitted.update(t.lower() for t in result.existing)
        action = self._deferred_completion.get(job_id.lower())
        if final and action is not None and submitted:
            await _jobs.set_on_all_tasks_complete(self.batch, job_id, action, policy=self.retry_policy)
            del self._deferred_completion[job_id.lower()]
        return result

    def watch_tasks(
        self,
        job_id: str,
        *,
        expected: int | None = None,
        include_running: bool = False,
        poll_interval: float = 1.0,
        max_poll_interval: float = 15.0,
    ) -> TaskWatch:
        """Iterate over completion events of a job's tasks: one per task, as each completes.

        The watch ends when *expected* tasks have completed (by default, as many as this client submitted to the
        job), or when the job completes. Without a count it also ends once the job holds no unfinished task;
        pass *expected*, or use ``terminatejob``, when tasks are still being added elsewhere. Breaking out of
        the loop stops all work. (How it polls cheaply: see `aiobatch._watch`.)

        Args:
            job_id: the job.
            expected: how many tasks to wait for; by default those this client submitted (if any), else until
                the job completes or holds no unfinished task.
            include_running: also yield a ``"running"`` event the first time a task is seen running.
            poll_interval: seconds between polls while things change.
            max_poll_interval: the longest wait between polls while nothing does.

        Returns:
            An async iterator of `TaskEvent`.

        Example:
            >>> async def follow(client):  # doctest: +SKIP
            ...     async for event in client.watch_tasks("convert"):
            ...         if event.failed:
            ...             print(event.task_id, event.exit_code, await event.stderr_tail())
        """
        self._check_open()
        if expected is None:
            submitted = self._submitted.get(job_id.lower())
            expected = len(submitted) if submitted else None
        return TaskWatch(
            self.batch,
            job_id,
            expected=expected,
            include_running=include_running,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            policy=self.retry_policy,
        )

    async def wait_for_tasks(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the error says how many tasks were still pending)
        expected: int | None = None,
        on_event: Callable[[TaskEvent], object] | None = None,
        poll_interval: float = 1.0,
        max_poll_interval: float = 15.0,
    ) -> TaskSummary:
        """Wait until the job's tasks have completed (see `watch_tasks`) and summarise how they ended.

        Args:
            job_id: the job.
            timeout: seconds to wait in all; ``None`` waits as long as it takes.
            expected: how many tasks to wait for (see `watch_tasks`).
            on_event: called with each event, e.g. for a progress bar.
            poll_interval: see `watch_tasks`.
            max_poll_interval: see `watch_tasks`.

        Returns:
            Counts of completed and succeeded tasks, and the failure events; ``summary.raise_for_failures()``
            raises `TaskFailedError` if any failed.

        Raises:
            DeadlineExceededError: not all complete within *timeout*.

        Example:
            >>> async def run(client):  # doctest: +SKIP
            ...     summary = await client.wait_for_tasks("convert", timeout=3600)
            ...     print(summary.succeeded, "ok,", len(summary.failed), "failed")
        """
        watch = self.watch_tasks(
            job_id, expected=expected, poll_interval=poll_interval, max_poll_interval=max_poll_interval
        )
        return await _watch.wait_for_tasks(watch, timeout=timeout, on_event=on_event)

    async def terminate_job(self, job_id: str) -> bool:
        """Terminate a job: running tasks are stopped, no more are scheduled (an auto-pool goes with it).

        Args:
            job_id: the job.

        Returns:
            ``True`` if this call terminated it, ``False`` if it had already completed or is gone.

        Example:
            >>> async def stop(client):  # doctest: +SKIP
            ...     if await client.terminate_job("convert"):
            ...         print("stopped")
        """
        self._check_open()
        return await _jobs.terminate_job(self.batch, job_id, policy=self.retry_policy)

    async def delete_job(self, job_id: str, *, force: bool = False, wait: bool = False) -> bool:
        """Delete a job this run created, with its tasks and auto-pool; as `delete_pool` does for a pool.

        Args:
            job_id: the job.
            force: as for `delete_pool`.
            wait: as for `delete_pool`.

        Returns:
            Whether this call asked for the deletion (``False``: the job was already gone or going).

        Raises:
            ConflictError: another's job, without *force*.

        Example:
            >>> async def drop_job(client):  # doctest: +SKIP
            ...     await client.delete_job("convert")
        """
        return await self._delete_entity("job", job_id, force=force, wait=wait)

    # ------------------------------------------------------------------------------------------------
    # Fan-out
    # ------------------------------------------------------------------------------------------------

    def map_files(
        self,
        inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        command: str,
        outputs: _template.OutputName | Sequence[_template.OutputName],
        *,
        pool: PoolSpec | str,
        output_dir: str | os.PathLike[str],
        **options: Unpack[_mapoptions.MapOptions],
    ) -> _fanout.FileMap:
        """Run a command once per local file on a pool, one task each, and yield one result per file as it ends.

        Uploads the inputs (skipping blobs that hold the same bytes), makes sure the pool is usable (created from
        a `PoolSpec`, or an existing pool's id), creates a job, adds one task per input (the largest first), and
        downloads each task's outputs into *output_dir* as it completes. Inputs whose outputs are all there
        already are skipped, so a re-run does only what is missing. Each `FileResult` names its input and holds
        the local outputs, exit code, node and times -- or, for a failure, the explanation and the stderr tail.

        The command template's placeholders are quoted for the pool's OS: ``{input}`` (the input on the node,
        under a fixed safe name such as ``input.txt``), ``{output}`` and ``{outputs}`` / ``{outputs[N]}`` (the
        files the command must write), ``{name}``, ``{stem}`` and ``{suffix}`` (the input's real name); it runs
        in ``/bin/bash -c`` on Linux and ``cmd /c`` on Windows. Output names may use ``{name}``, ``{stem}`` and
        ``{suffix}`` and may hold folders (``logs/{stem}.log``).

        Iterate it (``async for``), use it as ``async with`` (leaving early terminates the job), or ``await`` it
        for the `MapReport` (also ``.report`` after the loop). See `aiobatch.FileMap` for the details.

        Args:
            inputs: a folder (its files matching *glob*) or a list of files.
            command: the command template.
            outputs: the output name template(s), relative to *output_dir* (or functions of the input's name).
            pool: a pool spec to ensure, or the id of an existing pool.
            output_dir: where the outputs go (created if missing).
            **options: the fan-out's options, listed in `aiobatch.MapOptions`: ``glob``, ``job_id``, the
                containers, ``reuse_pool``, the pool wait, ``application_packages``, ``environment``, ``retries``,
                a per-task ``timeout``, concurrency, ``poll_interval`` and a progress ``observer``.

        Returns:
            The fan-out, not started yet: nothing happens until it is iterated or awaited.

        Raises:
            ConfigurationError: a bad template (now); two inputs with one name or two outputs with one path (on
                the first iteration, before anything is created); the pool exists and is not this run's (without
                *reuse_pool*), or the reused pool lacks an application package of the spec (``setting`` is
                ``"reuse_pool"`` for the last two).

        Example:
            >>> async def count_words(client):  # doctest: +SKIP
            ...     pool = PoolSpec.ubuntu_24_04("words", "standard_d2s_v3", dedicated_nodes=2)
            ...     async for result in client.map_files("texts", "wc -w < {input} > {output}", "{stem}.count",
            ...                                          pool=pool, output_dir="counts"):
            ...         print(result.name, result.status, result.error or "")
        """
        self._check_open()
        return _fanout.FileMap(self, inputs, command, outputs, pool=pool, output_dir=output_dir, **options)
