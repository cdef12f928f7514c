"""Blob Storage: containers, concurrent uploads that skip what is already there, verified downloads.

SAS minting has a module of its own, `aiobatch._sas`.

Everything here is a coroutine over one ``azure.storage.blob.aio.BlobServiceClient``; build it with
`blob_service_client`, which switches the SDK's own retries off (its first backoff is 15 s) so that the one
policy in `aiobatch._retry` retries each request.

Uploads. Files are hashed in worker threads, streamed (never the whole file in memory). A blob that already has
the same size and ``Content-MD5`` is skipped: nothing is sent, so a re-run is cheap. Other files go up in one
Put Blob (up to *single_put_size*, at most 1 MiB: aiohttp warns about larger in-memory bodies) or as blocks of
*block_size* staged concurrently and committed with the file's MD5 as the blob's ``Content-MD5``. A single Put
Blob goes out as one signed request over the SDK's own connections (`aiobatch._blobput`: a SAS made once per
call, not the SDK's pipeline per file) when the client has an account key or a SAS, and through the SDK
otherwise. A file sent in blocks is read and hashed once: each block, read in order, feeds the file's MD5 and its
own, and is staged as soon as it is read (the file is hashed beforehand only when a blob of its size is there to
compare with). Every request body carries a transactional ``Content-MD5`` that the service checks: for a single
put the file's MD5, for a block the block's. At most *concurrency* requests are in flight and at most
*concurrency* blocks are in memory; by default the limit is tuned to the throughput (`aiobatch._tuner`). A
block list is committed only when every block is staged, so readers never see a partial blob, and only if the
file did not change while it was read.

Downloads write to a temporary file beside the destination, hashing in a worker thread, and rename it only
after the bytes' MD5 matches the blob's ``Content-MD5`` (when it has one): a mismatch is downloaded once more
(corruption in transit), then raises `IntegrityError`, and leaves no final file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import mimetypes
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
from azure.storage.blob import (
    BlobBlock,
    BlobProperties,
    ContentSettings,
)
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient

from ._blobput import BlobPutter
from ._config import StorageSettings
from ._errors import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    StorageError,
)
from ._retry import RetryPolicy, call, sdk_client_kwargs
from ._tuner import AUTO_MAXIMUM, ConcurrencyTuner

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = [
    "RUN_ID_METADATA",
    "BlobFile",
    "DownloadResult",
    "TransferProgress",
    "UploadResult",
    "blob_service_client",
    "delete_containers",
    "download_blobs",
    "ensure_container",
    "stored_blob_name",
    "upload_files",
]

logger = logging.getLogger("aiobatch")
T = TypeVar("T")

MiB = 1024 * 1024
_HASH_CHUNK = 1 * MiB
#: From this many files on, one listing of the container replaces a properties request per file.
_LISTING = 8
_CREATE_TOKEN = "aiobatch_create"  # container metadata: which ensure_container call created it
#: Container metadata naming the run that created it (pools and jobs use ``aiobatch-run-id``; container metadata
#: names must be C# identifiers, so no hyphens). A crash sweep finds a run's containers by it.
RUN_ID_METADATA = "aiobatch_run_id"
_CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")


# --------------------------------------------------------------------------------------------------------------
# Results and progress
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobFile:
    """A local file and the blob that holds the same bytes.

    Attributes:
        name: the blob name, as the service stores it.
        path: the local file.
        size: bytes.
        md5: hex MD5 of the bytes.
    """

    name: str
    path: Path
    size: int
    md5: str


@dataclass(frozen=True)
class UploadResult:
    """What `upload_files` did, file by file.

    Attributes:
        container: the container.
        uploaded: files sent, in the order given.
        skipped: files whose blob already held the same bytes; nothing was sent for them.
    """

    container: str
    uploaded: tuple[BlobFile, ...]
    skipped: tuple[BlobFile, ...]

    @property
    def files(self) -> tuple[BlobFile, ...]:
        """Every file, uploaded or skipped."""
        return self.uploaded + self.skipped

    @property
    def bytes_uploaded(self) -> int:
        """Bytes sent."""
        return sum(f.size for f in self.uploaded)


@dataclass(frozen=True)
class DownloadResult:
    """What `download_blobs` did, blob by blob.

    Attributes:
        container: the container.
        downloaded: blobs written to disk (each verified against its ``Content-MD5`` when it had one).
        skipped: blobs whose local file already held the same bytes.
    """

    container: str
    downloaded: tuple[BlobFile, ...]
    skipped: tuple[BlobFile, ...]

    @property
    def files(self) -> tuple[BlobFile, ...]:
        """Every file, downloaded or skipped."""
        return self.downloaded + self.skipped


@dataclass(frozen=True)
class TransferProgress:
    """One step of a transfer, passed to a *progress* callback.

    Attributes:
        name: the blob name.
        done: bytes of this blob transferred so far (its size when skipped).
        total: the blob's size.
        skipped: the blob was already in place; nothing was transferred.
    """

    name: str
    done: int
    total: int
    skipped: bool = False


ProgressCallback = Callable[[TransferProgress], None]


# --------------------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------------------


def blob_service_client(
    settings: StorageSettings,
    *,
    credential: AsyncTokenCredential | None = None,
    connection_timeout: float = 20.0,
    read_timeout: float = 60.0,
    connection_verify: bool | str = True,
) -> BlobServiceClient:
    """Build the ``BlobServiceClient`` aiobatch uses: SDK retries off, bounded timeouts.

    The caller owns the client (``async with`` it, or ``await client.close()``).

    Args:
        settings: where the account is; a connection string signs with its key or SAS.
        credential: the Entra ID credential, required when *settings* has an account URL.
        connection_timeout: seconds to connect.
        read_timeout: seconds to wait for the next bytes of an answer.
        connection_verify: check the service's TLS certificate against the system's authorities (``True``),
            or against this CA file (e.g. ``str(AzuriteServer.cert_path)`` for a local Azurite over HTTPS).

    Returns:
        The client.

    Raises:
        ConfigurationError: an account URL without a credential.

    Example:
        >>> settings = StorageSettings(connection_string="UseDevelopmentStorage=true")
        >>> service = blob_service_client(settings)
    """
    kwargs: dict[str, Any] = sdk_client_kwargs(connection_timeout=connection_timeout, read_timeout=read_timeout)
    # Downloads stream in 4 MiB ranges: bounded memory per blob, and a small unit to lose to a dropped connection.
    kwargs.update(max_single_get_size=4 * MiB, max_chunk_get_size=4 * MiB)
    if connection_verify is not True:
        kwargs["connection_verify"] = connection_verify
    if settings.connection_string:
        return BlobServiceClient.from_connection_string(settings.connection_string, **kwargs)
    if credential is None:
        raise ConfigurationError(
            "AZURE_STORAGE_ACCOUNT_URL needs an Entra ID credential (aiobatch uses DefaultAzureCredential); "
            "pass credential=, or set AZURE_STORAGE_CONNECTION_STRING instead.",
            setting="AZURE_STORAGE_ACCOUNT_URL",
        )
    return BlobServiceClient(settings.blob_endpoint, credential=credential, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------------------------


def _check_container(name: str) -> str:
    if not _CONTAINER_RE.match(name):
        raise ConfigurationError(
            f"container name {name!r} is invalid: use 3 to 63 lower-case letters, digits and single hyphens, "
            "starting and ending with a letter or digit.",
            setting="container",
        )
    return name


async def ensure_container(
    service: BlobServiceClient, container: str, *, policy: RetryPolicy | None = None, run_id: str | None = None
) -> bool:
    """Create *container* if it does not exist.

    Args:
        service: the blob service.
        container: the container name.
        policy: the retry policy.
        run_id: the run creating it, recorded in its metadata (`RUN_ID_METADATA`) so that a sweep of the run
            (``aiobatch cleanup --run-id``) finds it even if the process dies.

    The container is created with a random token in its metadata (``aiobatch_create``). A create can take
    effect and lose its answer; the re-sent create (by the retry policy, or by aiohttp itself, which re-sends
    an idempotent PUT once when the connection drops) then meets ``ContainerAlreadyExists``. The token tells
    whether the container that exists is the one this call made, so the caller deletes what it created, and
    never what it did not.

    Returns:
        ``True`` if this call created it, ``False`` if it already existed.

    Raises:
        ConfigurationError: an invalid container name.
        ConflictError: the container is being deleted.
        ServiceError: the service refused (see the message for the fix).

    Example:
        >>> async def prepare(service):
        ...     await ensure_container(service, "inputs")
    """
    client = service.get_container_client(_check_container(container))
    token = uuid.uuid4().hex
    metadata = {_CREATE_TOKEN: token, **({RUN_ID_METADATA: run_id} if run_id else {})}
    try:
        await call(
            lambda: client.create_container(metadata=metadata),
            policy=policy,
            resource="container",
            resource_id=container,
            action="create",
        )
    except ConflictError as exc:
        if exc.code != "ContainerAlreadyExists":
            raise
        try:
            props = await call(
                client.get_container_properties, policy=policy, resource="container", resource_id=container
            )
        except AuthenticationError:
            return False  # a credential that may create but not read: cannot tell, so claim nothing
        if (props.metadata or {}).get(_CREATE_TOKEN) != token:
            return False
    logger.info("created container %r", container)
    return True


async def delete_containers(
    service: BlobServiceClient, containers: Iterable[str], *, policy: RetryPolicy | None = None
) -> list[str]:
    """Delete containers; one that does not exist counts as deleted.

    Args:
        service: the blob service.
        containers: the names.
        policy: the retry policy for each delete.

    Returns:
        The names this call deleted (not those already gone).

    Raises:
        ServiceError: a delete failed for another reason than the container being gone.
    """
    deleted: list[str] = []
    for name in containers:
        client = service.get_container_client(name)
        try:
            await call(client.delete_container, policy=policy, resource="container", resource_id=name, action="delete")
        except NotFoundError:
            continue
        except ConflictError as exc:
            if exc.code == "ContainerBeingDeleted":
                continue
            raise
        logger.info("deleted container %r", name)
        deleted.append(name)
    return deleted


# --------------------------------------------------------------------------------------------------------------
# Hashing and files (run in worker threads)
# --------------------------------------------------------------------------------------------------------------


def _md5_file(path: Path) -> tuple[int, str]:
    """Size and hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _read_small(path: Path, limit: int) -> tuple[int, str | None, bytes | None]:
    """Size of a file, and its hex MD5 and bytes when it fits in one request (*limit* bytes).

    A larger file is not hashed here: its upload hashes it block by block as it reads (`_read_hashed`), and the
    skip check hashes it only when a blob of the same size is there to compare with.
    """
    with path.open("rb") as f:
        data = f.read(limit + 1)
        if len(data) <= limit:
            return len(data), hashlib.md5(data, usedforsecurity=False).hexdigest(), data
        return os.fstat(f.fileno()).st_size, None, None


def _stamp(f: IO[bytes]) -> tuple[int, int]:
    st = os.fstat(f.fileno())
    return st.st_size, st.st_mtime_ns


def _read_hashed(f: IO[bytes], path: Path, offset: int, length: int, whole: Any) -> tuple[bytes, bytes]:
    """A block's bytes and their MD5, fed to the file's MD5 too: each byte read once, in one pass.

    Called for the blocks in order, so *whole* sees the file from its first byte to its last.
    """
    parts = []
    got = 0
    while got < length:
        part = os.pread(f.fileno(), length - got, offset + got)
        if not part:
            raise StorageError(f"file {str(path)!r} changed while it was being uploaded; upload it again.")
        parts.append(part)
        got += len(part)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    whole.update(data)
    return data, hashlib.md5(data, usedforsecurity=False).digest()


def _stored_md5(props: BlobProperties) -> str | None:
    md5 = props.content_settings.content_md5 if props.content_settings else None
    return bytes(md5).hex() if md5 else None


def _content_settings(name: str, md5_hex: str) -> ContentSettings:
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return ContentSettings(content_type=content_type, content_md5=bytearray(bytes.fromhex(md5_hex)))


def stored_blob_name(name: str) -> str:
    r"""The name Blob Storage stores a blob under when asked for *name*: each ``\`` becomes ``/``.

    Azure Blob Storage and Azurite treat a backslash in a blob's URL as a path separator, so a file called
    ``back\slash.txt`` is stored (and listed) as ``back/slash.txt``. Comparing with what a listing returns, or
    telling two names apart, must use this form, or a file would be uploaded again on every run.

    Example:
        >>> stored_blob_name("back\\slash.txt")
        'back/slash.txt'
    """
    return name.replace("\\", "/")


def _check_blob_name(name: str, path: Path | None = None) -> str:
    of = f" (for {str(path)!r})" if path is not None else ""
    if not name or len(name) > 1024 or name.endswith((".", "/")) or any(ord(c) < 32 for c in name):
        raise ConfigurationError(
            f"blob name {name!r}{of} is invalid: use 1 to 1024 characters without control characters, not ending "
            "in '.' or '/'. Pass blob_names= to choose other names.",
            setting="blob_names",
        )
    if any(segment in (".", "..") for segment in name.split("/")):
        # HTTP clients resolve such segments in the URL (after the SDK signed the path, so the service refuses
        # the signature; with a SAS the blob would land under another name): refused here, before any request.
        raise ConfigurationError(
            f"blob name {name!r}{of} has a '.' or '..' path segment, which URLs resolve away (a/../b is b), so "
            "no blob can be stored under it. Pass blob_names= with the name the blob should have, without "
            "'./' or '../' segments (e.g. the path relative to a folder).",
            setting="blob_names",
        )
    return name


def _block_id(token: str, index: int) -> str:
    # Same length for every block of a blob (the SDK base64-encodes it); the upload's random token keeps another
    # writer's uncommitted blocks apart from ours. The index comes first: its 9 characters are whole base64
    # groups, so a block's number is readable in the request's URL whatever the token.
    return f"{index:08d}-{token[:16]}"


class _Counter:
    """Bytes done for one transfer, reported to the progress callback."""

    def __init__(self, name: str, total: int, progress: ProgressCallback | None) -> None:
        self.name, self.total, self.done, self.progress = name, total, 0, progress

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(TransferProgress(self.name, self.done, self.total))

    def skipped(self) -> None:
        if self.progress is not None:
            self.progress(TransferProgress(self.name, self.total, self.total, skipped=True))


async def _for_each(items: Sequence[Any], concurrency: int, work: Callable[[Any], Any]) -> None:
    """Run ``await work(item)`` for every item with at most *concurrency* at once; first error cancels the rest."""
    iterator: Iterator[Any] = iter(items)

    async def worker() -> None:
        for item in iterator:  # shared: each item is taken by exactly one worker
            await work(item)

    async with _unwrapped_task_group() as tg:
        for _ in range(min(concurrency, len(items))):
            tg.start_soon(worker)


def _first_error(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(getattr(exc, "exceptions", None), tuple) and exc.exceptions:  # type: ignore[attr-defined]
        inner: tuple[BaseException, ...] = exc.exceptions  # type: ignore[attr-defined]
        exc = next((e for e in inner if isinstance(e, Exception)), inner[0])
    return exc


@contextlib.asynccontextmanager
async def _unwrapped_task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group whose failure surfaces as the first child's own (typed) exception, not an ExceptionGroup.

    Callers catch `IntegrityError` or `NotFoundError`, not a group; the rest of the group is cancelled anyway.
    """
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except Exception as exc:
        first = _first_error(exc)
        if first is exc:
            raise
        raise first from first.__cause__


def _check_concurrency(concurrency: int | None) -> None:
    if concurrency is not None and concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1 (or None, to tune it), not {concurrency}.")


class _Flow:
    """Requests in flight: a fixed limit (an explicit *concurrency*), or one tuned to the throughput (None)."""

    def __init__(self, concurrency: int | None) -> None:
        self.tuner = ConcurrencyTuner() if concurrency is None else None
        self.limiter = self.tuner.limiter if self.tuner is not None else anyio.CapacityLimiter(concurrency or 1)
        #: Files worked on at once: enough for the most requests the limit may allow.
        self.workers = AUTO_MAXIMUM if concurrency is None else concurrency

    def attempt(self, request: Awaitable[T]) -> Awaitable[T]:
        """One attempt of a request, watched by the tuner (a transient failure backs off)."""
        return self.tuner.watch(request) if self.tuner is not None else request

    def done(self, nbytes: int) -> None:
        """A request completed, moving *nbytes*."""
        if self.tuner is not None:
            self.tuner.done(nbytes)


# --------------------------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------------------------


async def upload_files(
    service: BlobServiceClient,
    container: str,
    paths: Iterable[str | os.PathLike[str]],
    *,
    blob_names: Sequence[str] | None = None,
    concurrency: int | None = None,
    block_size: int = 4 * MiB,
    single_put_size: int = 1 * MiB,
    progress: ProgressCallback | None = None,
    policy: RetryPolicy | None = None,
    create_container: bool = True,
) -> UploadResult:
    r"""Upload files to a container concurrently, skipping those whose blob already holds the same bytes.

    The container is created if missing. A file is skipped when its blob exists with the same size and
    ``Content-MD5``. Files up to *single_put_size* go up in one request; larger ones in blocks of *block_size*,
    committed with the file's MD5 as ``Content-MD5``. Each request is retried under *policy*.

    Args:
        service: the blob service (see `blob_service_client`).
        container: the container name.
        paths: the local files.
        blob_names: a blob name per path, in order; defaults to each file's name. A ``\`` in a name becomes
            ``/``, as the service stores it (`stored_blob_name`); the results carry the stored names.
        concurrency: most requests in flight (and files being worked on) at once; by default (``None``) tuned
            to the round trip: from 4, doubled while throughput grows, halved on a transient failure, at most 64.
        block_size: bytes per staged block (at most 4000 MiB).
        single_put_size: largest file, in bytes, sent in one request (at most 1 MiB).
        progress: called with a `TransferProgress` after each request's bytes are sent, and once per skip.
        policy: the retry policy for each request.
        create_container: create the container if it is missing (``False`` when the caller just made sure).

    Returns:
        The uploaded and skipped files, with names, sizes and MD5s.

    Raises:
        ConfigurationError: a missing file, a directory, duplicate or invalid blob names, bad sizes.
        ServiceUnavailableError: a request kept failing transiently.
        ServiceError: the service refused (e.g. `AuthenticationError` for a wrong key).

    Example:
        >>> async def stage(service, videos):
        ...     result = await upload_files(service, "inputs", videos, concurrency=16)
        ...     print(len(result.uploaded), "sent,", len(result.skipped), "already there")
    """
    _check_container(container)
    _check_concurrency(concurrency)
    if not 0 < block_size <= 4000 * MiB or not 0 <= single_put_size <= MiB:
        raise ConfigurationError("block_size must be 1 byte to 4000 MiB, and single_put_size 0 to 1 MiB.")
    files = [Path(p) for p in paths]
    # Named as the service will store them, once, here: the skip check, the duplicate check and the results
    # (`BlobFile.name`, from which callers build URLs) all then speak of the blob that is really there.
    given = [Path(p).name for p in files] if blob_names is None else list(blob_names)
    names = [stored_blob_name(name) for name in given]
    if len(names) != len(files):
        raise ConfigurationError(f"blob_names has {len(names)} names for {len(files)} paths; give one per path.")
    seen: dict[str, Path] = {}
    for path, name in zip(files, names, strict=True):
        _check_blob_name(name, path)
        if name in seen:
            raise ConfigurationError(
                f"{str(seen[name])!r} and {str(path)!r} would both become blob {name!r}; pass blob_names= to "
                "give them distinct names.",
                setting="blob_names",
            )
        seen[name] = path

    if create_container:
        await ensure_container(service, container, policy=policy)
    flow = _Flow(concurrency)
    outcome: dict[int, tuple[BlobFile, bool]] = {}
    stored = await _stored(service.get_container_client(container), names, policy) if len(files) >= _LISTING else None
    # One signed Put Blob per small file (a SAS made once for the call); the SDK keeps blocks and listings.
    putter = BlobPutter.open(service, container) if single_put_size else None

    async def one(index: int) -> None:
        path, name = files[index], names[index]
        try:
            size, md5, data = await anyio.to_thread.run_sync(_read_small, path, single_put_size)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            raise ConfigurationError(
                f"cannot read input {str(path)!r} ({type(exc).__name__}): check that the file exists and is readable.",
                setting="paths",
            ) from exc
        counter = _Counter(name, size, progress)
        # A BlobClient costs about half a millisecond to build (a client of its own): only where the SDK is used.
        held = (
            stored.get(name)
            if stored is not None
            else await _properties(service.get_blob_client(container, name), name, flow.limiter, policy)
        )
        if held is not None and held.size == size and _stored_md5(held) is not None:
            if md5 is None:  # a large file: hashed for the comparison, since a blob of its size is there
                md5 = (await anyio.to_thread.run_sync(_md5_file, path))[1]
            if _stored_md5(held) == md5:
                logger.debug("skipped %r: blob already holds the same %d bytes", name, size)
                counter.skipped()
                outcome[index] = (BlobFile(name=name, path=path, size=size, md5=md5), False)
                return
        if data is not None:
            assert md5 is not None
            item = BlobFile(name=name, path=path, size=size, md5=md5)
            if putter is not None:
                await _put_signed(putter, item, data, flow, policy, counter)
            else:
                await _put_whole(service.get_blob_client(container, name), item, data, flow, policy, counter)
        else:
            blob = service.get_blob_client(container, name)
            md5 = await _put_blocks(blob, name, path, size, block_size, flow, policy, counter)
            item = BlobFile(name=name, path=path, size=size, md5=md5)
        logger.debug("uploaded %r (%d bytes)", name, size)
        outcome[index] = (item, True)

    await _for_each(range(len(files)), flow.workers, one)
    ordered = [outcome[i] for i in range(len(files))]
    result = UploadResult(
        container=container,
        uploaded=tuple(f for f, sent in ordered if sent),
        skipped=tuple(f for f, sent in ordered if not sent),
    )
    logger.info(
        "uploaded %d files (%d bytes) to container %r; %d already there",
        len(result.uploaded),
        result.bytes_uploaded,
        container,
        len(result.skipped),
    )
    return result


async def _stored(
    client: ContainerClient, names: Sequence[str], policy: RetryPolicy | None
) -> dict[str, BlobProperties] | None:
    """What the container holds under the names' common prefix, from one listing (5,000 blobs a page).

    One listing replaces a properties request per file. It is abandoned (None: check file by file) when it
    would take more than a page per 500 files, e.g. a container with far more blobs than are being uploaded.
    """
    prefix = os.path.commonprefix(list(names)) or None  # noqa: RUF071 (blob names: a character prefix is meant)
    max_pages = max(1, len(names) // 500)

    async def listing() -> dict[str, BlobProperties] | None:
        found: dict[str, BlobProperties] = {}
        pages = client.list_blobs(name_starts_with=prefix, results_per_page=5000).by_page()
        count = 0
        async for page in pages:
            async for props in page:
                found[props.name] = props
            count += 1
            if count >= max_pages and getattr(pages, "continuation_token", None):
                return None
        return found

    stored: dict[str, BlobProperties] | None = await call(
        listing, policy=policy, resource="container", resource_id=client.container_name, action="list"
    )
    return stored


async def _properties(
    blob: BlobClient, name: str, limiter: anyio.CapacityLimiter, policy: RetryPolicy | None
) -> BlobProperties | None:
    """The blob's properties, or None when it does not exist."""
    async with limiter:
        try:
            props: BlobProperties = await call(
                blob.get_blob_properties, policy=policy, resource="blob", resource_id=name, action="check"
            )
        except NotFoundError:
            return None
    return props


async def _put_signed(
    putter: BlobPutter,
    item: BlobFile,
    data: bytes,
    flow: _Flow,
    policy: RetryPolicy | None,
    counter: _Counter,
) -> None:
    content_type = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
    await _send_whole(item, flow, policy, counter, lambda: putter.put(item.name, data, item.md5, content_type))


async def _put_whole(
    blob: BlobClient,
    item: BlobFile,
    data: bytes,
    flow: _Flow,
    policy: RetryPolicy | None,
    counter: _Counter,
) -> None:
    md5 = bytes.fromhex(item.md5)  # the file's MD5 is the body's: no need to hash it again on the loop
    await _send_whole(
        item,
        flow,
        policy,
        counter,
        lambda: blob.upload_blob(
            data,
            length=len(data),
            overwrite=True,
            transactional_content_md5=md5,  # checked by the service, as validate_content would have it
            content_settings=_content_settings(item.name, item.md5),
            max_concurrency=1,
        ),
    )


async def _send_whole(
    item: BlobFile, flow: _Flow, policy: RetryPolicy | None, counter: _Counter, send: Callable[[], Awaitable[Any]]
) -> None:
    """Send a whole file in one request (``send``) within the flow's limit, retried by the one policy."""
    async with flow.limiter:
        await call(
            lambda: flow.attempt(send()),
            policy=policy,
            resource="blob",
            resource_id=item.name,
            action="upload",
            retry_on=_is_transit_corruption,
        )
    flow.done(item.size)
    counter.add(item.size)


async def _put_blocks(
    blob: BlobClient,
    name: str,
    path: Path,
    size: int,
    block_size: int,
    flow: _Flow,
    policy: RetryPolicy | None,
    counter: _Counter,
) -> str:
    """Stage the file in blocks and commit them; return the file's hex MD5.

    One pass over the file: blocks are read in order in a worker thread, each feeding the file's MD5 and its own
    (the request's Content-MD5, which the service checks), and are staged concurrently as they are read. The
    commit carries the file's MD5 as the blob's ``Content-MD5``: the MD5 of exactly the bytes sent. A file that
    changed meanwhile (size or modification time) is not committed.
    """
    count = -(-size // block_size)
    token = uuid.uuid4().hex
    ids = [_block_id(token, i) for i in range(count)]
    whole = hashlib.md5(usedforsecurity=False)

    async def stage(index: int, data: bytes, md5: bytes, slot: object) -> None:
        try:
            await call(
                # A fresh stream per attempt; aiohttp sends a stream without stalling the loop, and the MD5
                # computed in the thread stands in for validate_content (which would hash on the loop).
                lambda: flow.attempt(
                    blob.stage_block(ids[index], io.BytesIO(data), length=len(data), transactional_content_md5=md5)
                ),
                policy=policy,
                resource="blob",
                resource_id=name,
                action="upload a block of",
                retry_on=_is_transit_corruption,
            )
        finally:
            flow.limiter.release_on_behalf_of(slot)
        flow.done(len(data))
        counter.add(len(data))

    f = await anyio.to_thread.run_sync(path.open, "rb")
    try:
        before = await anyio.to_thread.run_sync(_stamp, f)
        async with _unwrapped_task_group() as tg:
            for i in range(count):
                # A slot per block, held from its read to its answer: at most *concurrency* requests in flight
                # and blocks in memory, as for whole files.
                slot = object()
                await flow.limiter.acquire_on_behalf_of(slot)
                try:
                    offset = i * block_size
                    length = min(block_size, size - offset)
                    data, md5 = await anyio.to_thread.run_sync(_read_hashed, f, path, offset, length, whole)
                except BaseException:
                    flow.limiter.release_on_behalf_of(slot)
                    raise
                tg.start_soon(stage, i, data, md5, slot)
        if await anyio.to_thread.run_sync(_stamp, f) != before or before[0] != size:
            raise StorageError(f"file {str(path)!r} changed while it was being uploaded; upload it again.")
    finally:
        f.close()
    md5_hex = whole.hexdigest()
    async with flow.limiter:
        await call(
            lambda: blob.commit_block_list(
                [BlobBlock(block_id=i) for i in ids], content_settings=_content_settings(name, md5_hex)
            ),
            policy=policy,
            resource="blob",
            resource_id=name,
            action="commit",
        )
    return md5_hex


# --------------------------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------------------------


def _local_path(destination: Path, name: str) -> Path:
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in name:
        raise StorageError(
            f"blob name {name!r} cannot be written under {str(destination)!r} safely (absolute, empty or '..' "
            "segments); download it by hand or rename it.",
            blob=name,
        )
    return destination.joinpath(*parts)


def _open_temp(final: Path) -> tuple[IO[bytes], Path]:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name[:40]}.", suffix=".aiobatch-part")
    if hasattr(os, "fchmod"):
        # mkstemp makes the file owner-only (0600); an output gets the mode any new file gets (0666 - umask).
        os.fchmod(fd, 0o666 & ~_UMASK)
    return os.fdopen(fd, "wb"), Path(tmp)


def _read_umask() -> int:
    """The process's umask. Reading it means setting it, so it is read once, at import, and set straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _write(f: IO[bytes], digest: Any, chunk: bytes) -> None:
    f.write(chunk)
    digest.update(chunk)


def _local_md5_if_size(path: Path, size: int) -> str | None:
    try:
        if path.stat().st_size != size:
            return None
    except FileNotFoundError:
        return None
    return _md5_file(path)[1]


def _is_transit_corruption(exc: BaseException) -> bool:
    """Bytes damaged on the wire: the service's Md5Mismatch (400) on an upload, or our check on a download."""
    code = getattr(exc, "error_code", None)
    return (
        isinstance(exc, IntegrityError)
        or str(getattr(code, "value", code) or "") == "Md5Mismatch"
        or "md5 mismatch" in str(exc).lower()
    )


async def download_blobs(
    service: BlobServiceClient,
    container: str,
    destination: str | os.PathLike[str],
    *,
    names: Iterable[str] | None = None,
    prefix: str | None = None,
    concurrency: int | None = None,
    skip_existing: bool = True,
    progress: ProgressCallback | None = None,
    policy: RetryPolicy | None = None,
) -> DownloadResult:
    """Download blobs concurrently into a folder, verifying each against its stored MD5.

    Each blob is written to a temporary file in its destination folder and renamed into place only when
    complete and, if the blob has a ``Content-MD5``, matching it. A mismatch is downloaded once more (corruption
    in transit), then raises `IntegrityError`; no final file is left. Blob names with ``/`` make subfolders.

    Args:
        service: the blob service.
        container: the container.
        destination: the local folder (created if missing).
        names: the blobs to fetch; by default every blob in the container (under *prefix*).
        prefix: only blobs whose names start with this (when *names* is not given).
        concurrency: most blobs downloading at once; by default (``None``) tuned to the round trip, as for
            `upload_files`.
        skip_existing: leave a local file alone when it already has the blob's size and MD5.
        progress: called with a `TransferProgress` as bytes arrive, and once per skip.
        policy: the retry policy for each blob.

    Returns:
        The downloaded and skipped files.

    Raises:
        IntegrityError: a blob's bytes did not match its stored MD5, twice.
        NotFoundError: the container or a named blob does not exist.
        StorageError: a blob name is unsafe as a local path.
        ServiceUnavailableError: a download kept failing transiently.

    Example:
        >>> async def collect(service):
        ...     result = await download_blobs(service, "outputs", "gifs/")
        ...     return [f.path for f in result.files]
    """
    _check_container(container)
    _check_concurrency(concurrency)
    folder = Path(destination)
    client = service.get_container_client(container)
    if names is None:
        listed: list[BlobProperties] = await call(
            lambda: _list_blobs(client, prefix),
            policy=policy,
            resource="container",
            resource_id=container,
            action="list",
        )
        wanted: list[tuple[str, BlobProperties | None]] = [(b.name, b) for b in listed]
    else:
        wanted = [(n, None) for n in names]
    for name, _ in wanted:
        _local_path(folder, name)  # refuse unsafe names before writing anything
    await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
    outcome: dict[int, tuple[BlobFile, bool]] = {}
    flow = _Flow(concurrency)

    async def one(index: int) -> None:
        name, props = wanted[index]
        blob = client.get_blob_client(name)
        if props is None:
            async with flow.limiter:
                props = await call(
                    blob.get_blob_properties, policy=policy, resource="blob", resource_id=name, action="get"
                )
        final = _local_path(folder, name)
        size, expected = int(props.size), _stored_md5(props)
        if skip_existing and expected is not None:
            local = await anyio.to_thread.run_sync(_local_md5_if_size, final, size)
            if local == expected:
                _Counter(name, size, progress).skipped()
                outcome[index] = (BlobFile(name=name, path=final, size=size, md5=expected), False)
                return
        corrupt = 0

        def retry_corruption(exc: BaseException) -> bool:
            nonlocal corrupt
            if not _is_transit_corruption(exc):
                return False
            corrupt += 1
            return corrupt < 2

        async with flow.limiter:
            md5 = await call(
                lambda: flow.attempt(_download_one(blob, container, name, final, expected, progress)),
                policy=policy,
                resource="blob",
                resource_id=name,
                action="download",
                retry_on=retry_corruption,
            )
        flow.done(size)
        outcome[index] = (BlobFile(name=name, path=final, size=size, md5=md5), True)

    await _for_each(range(len(wanted)), flow.workers, one)
    ordered = [outcome[i] for i in range(len(wanted))]
    result = DownloadResult(
        container=container,
        downloaded=tuple(f for f, got in ordered if got),
        skipped=tuple(f for f, got in ordered if not got),
    )
    logger.info(
        "downloaded %d blobs from container %r to %s; %d already there",
        len(result.downloaded),
        container,
        folder,
        len(result.skipped),
    )
    return result


async def _list_blobs(client: ContainerClient, prefix: str | None) -> list[BlobProperties]:
    return [b async for b in client.list_blobs(name_starts_with=prefix)]


async def _download_one(
    blob: BlobClient,
    container: str,
    name: str,
    final: Path,
    expected: str | None,
    progress: ProgressCallback | None,
) -> str:
    """One attempt: stream into a temporary file, verify, rename. Returns the hex MD5."""
    responses = _Responses()
    f, tmp = await anyio.to_thread.run_sync(_open_temp, final)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        downloader = await blob.download_blob(max_concurrency=1, raw_response_hook=responses.track)
        counter = _Counter(name, int(downloader.size or 0), progress)
        async for chunk in downloader.chunks():
            await anyio.to_thread.run_sync(_write, f, digest, chunk)
            counter.add(len(chunk))
        await anyio.to_thread.run_sync(f.close)
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise IntegrityError(
                container=container, blob=name, path=str(final), expected_md5=expected, actual_md5=actual
            )
        await anyio.to_thread.run_sync(os.replace, tmp, final)
        return actual
    finally:
        # Quick syscalls, done inline so they also run while the task is being cancelled.
        responses.close()
        f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class _Responses:
    """The HTTP responses of one download attempt, closed when it ends, however it ends.

    The Storage SDK streams each range's body through azure-core, whose aiohttp stream closes the response at
    the end of the body and on a cut-short body, but not when the read is cancelled, times out or fails with
    another client error (azure-core 1.41, ``AioHttpStreamDownloadGenerator.__anext__``); the SDK keeps that
    response only in a local variable. A download cancelled mid-body (by the caller, a timeout, or a sibling's
    failure in `_for_each`) would leave its connection checked out of the pool until the garbage collector
    found it, which warns ``Unclosed connection``. The SDK's ``raw_response_hook`` sees every response once its
    headers are in; closing them all at the end releases each connection at once. Closing a response whose body
    was read to the end does nothing, so finished connections stay in the pool for reuse.
    """

    def __init__(self) -> None:
        self._responses: list[Any] = []

    def track(self, pipeline_response: Any) -> None:
        """The ``raw_response_hook``: remember the transport response."""
        self._responses.append(pipeline_response.http_response)

    def close(self) -> None:
        """Close every response seen (synchronous, so it also runs while the task is being cancelled)."""
        responses, self._responses = self._responses, []
        for response in responses:
            # aiohttp's ClientResponse.close() is synchronous and idempotent; other transports close their own.
            close = getattr(getattr(response, "internal_response", None), "close", None)
            if callable(close):
                close()
