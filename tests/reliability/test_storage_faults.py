"""Issue 8, clause 5: transfers under storage faults lose nothing, and never show or leave half a file.

Every test here drives the client's own `aiobatch._storage` functions through the `storage_faults` proxy in front of
Azurite, and judges the outcome with the test's own hashes of the source files and a second client that talks to
Azurite directly (the proxy's and the client's accounts of what happened are not the oracle).

The design decided in `_storage.download_blobs`: a body whose MD5 does not match the blob's is downloaded once more
within the call; if that fails too the call raises `IntegrityError`, and no final file is written (an existing one
is left as it was). Calling it again heals a transient corruption, because verified files are skipped and only the
rest are fetched again.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import os
import random
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web
from azure.storage.blob.aio import BlobServiceClient

from aiobatch._azurite import AzuriteServer
from aiobatch._config import StorageSettings
from aiobatch._errors import IntegrityError, NotFoundError, ServiceUnavailableError
from aiobatch._faultproxy import StorageFaultProxy
from aiobatch._retry import RetryPolicy, instant_waits
from aiobatch._storage import (
    DownloadResult,
    _block_id,
    blob_service_client,
    download_blobs,
    ensure_container,
    upload_files,
)

BLOCK = 4 * 1024  # small blocks, so multi-block files stay small
MiB = 1024 * 1024
# Each request fails with p ~ 0.3 at the rates used here; 15 attempts make giving up a ~1e-8 event per request.
# Waits are instant (virtual clock), so the bound costs no time.
POLICY = RetryPolicy(attempts=15, deadline=3600.0, initial=0.05, maximum=1.0, jitter=0.05)
TEN_PERCENT = {"503": 0.1, "reset": 0.1, "flip": 0.1}

pytestmark = pytest.mark.clause(5)


@pytest.fixture(autouse=True)
def _instant() -> Iterator[None]:
    with instant_waits():
        yield


@pytest.fixture(autouse=True)
def _collect_leaks() -> Iterator[None]:
    """Collect garbage after each test, so that a connection the test left open fails that test, not a later one.

    aiohttp warns ``Unclosed connection`` (a ResourceWarning, an error under this project's filterwarnings) when
    the garbage collector finds a connection nobody released; collecting here pins it on the test that leaked.
    `checked_out` is the deterministic check: the garbage collector may also free such a connection silently.
    """
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _record_faults(storage_faults: StorageFaultProxy, fault_record: Callable[..., None]) -> Iterator[None]:
    """Add what the proxy injected to the session's record (the soak summary's table)."""
    yield
    fault_record(storage_faults.injected, source="storage")


@pytest.fixture
async def direct(azurite: AzuriteServer) -> AsyncIterator[BlobServiceClient]:
    """A client straight to Azurite: the judge of what storage really holds."""
    async with blob_service_client(StorageSettings(connection_string=azurite.connection_string)) as svc:
        yield svc


@pytest.fixture
async def via(storage_faults: StorageFaultProxy) -> AsyncIterator[BlobServiceClient]:
    """The client under test, built as aiobatch builds it, reaching Azurite through the fault proxy."""
    settings = StorageSettings(connection_string=storage_faults.connection_string)
    async with blob_service_client(settings) as svc:
        yield svc
        # Every transfer released its connection, however it ended (a reset, a corrupt body, a sibling's failure).
        assert checked_out(svc) == 0


@pytest.fixture
def container(storage_faults: StorageFaultProxy, request: pytest.FixtureRequest) -> str:
    """A container named after the test and the seed: request paths, hence the faults drawn, replay with the seed."""
    test = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    return f"f-{test}-{storage_faults.seed}"


@dataclass(frozen=True)
class Source:
    name: str  # the blob name (a relative path, '/' separated)
    path: Path
    md5: str


def write_corpus(folder: Path, count: int, *, block: int, big: int = 0, seed: int = 0) -> list[Source]:
    """*count* files: the edge sizes and awkward names first, then small files, a few multi-block ones, and
    *big* files of a few MiB (several download ranges)."""
    rng = random.Random(seed)
    edge = {
        "empty.bin": 0,
        "one byte.bin": 1,
        "block minus one.bin": block - 1,
        "block.bin": block,
        "block plus one.bin": block + 1,
        "two blocks.bin": 2 * block,
        "multi block ünïcödé 猫.bin": 5 * block + 7,
        "sub dir/nested ü file.bin": 3 * block - 1,
        "quote ' and & 100% + more.txt": 33,
        "spaces  in   name .bin": 64,
        "日本語/ファイル名.dat": 700,
    }
    sizes = list(edge.items())
    for i in range(big):
        sizes.append((f"big/{i:02d} large file.bin", 4 * MiB + 1 + i * MiB))
    multi = max(4, count // 100)
    while len(sizes) < count:
        i = len(sizes)
        size = rng.randrange(block + 1, 6 * block) if i % (count // multi) == 0 else rng.randrange(0, block // 2)
        sizes.append((f"many/file {i:04d} ñ.bin", size))
    sources = []
    for name, size in sizes[:count]:
        path = folder.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        path.write_bytes(data)
        sources.append(Source(name, path, hashlib.md5(data).hexdigest()))
    return sources


def checked_out(service: BlobServiceClient) -> int:
    """Connections the client's pool has handed out and not got back: a response left open holds one.

    Reads azure-core's aiohttp transport (the session it owns) and aiohttp's connector; if either moves, fix this
    helper rather than dropping the check.
    """
    session = service._pipeline._transport.session
    return 0 if session is None else len(session.connector._acquired)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def part_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".aiobatch-part")]


async def stored(direct: BlobServiceClient, container: str) -> dict[str, tuple[int, str | None]]:
    """What the container holds, read straight from Azurite: name -> (size, stored Content-MD5 hex)."""
    out = {}
    async for blob in direct.get_container_client(container).list_blobs():
        md5 = blob.content_settings.content_md5
        out[blob.name] = (blob.size, bytes(md5).hex() if md5 else None)
    return out


async def download_until_healed(
    service: BlobServiceClient, container: str, out: Path, *, rounds: int = 30
) -> tuple[DownloadResult, list[IntegrityError]]:
    """Run `download_blobs` again after each `IntegrityError`, as a user would, checking what each failure left."""
    failures: list[IntegrityError] = []
    for _ in range(rounds):
        try:
            result = await download_blobs(service, container, out, concurrency=16, policy=POLICY)
        except IntegrityError as exc:
            failures.append(exc)
            assert exc.path is not None and not await anyio.Path(exc.path).exists(), f"{exc.blob} left a final file"
            assert part_files(out) == []
            continue
        return result, failures
    raise AssertionError(f"downloads did not heal in {rounds} rounds: {[f.blob for f in failures]}")


# ----------------------------------------------------------------------------------------------------
# Every hash matches, end to end
# ----------------------------------------------------------------------------------------------------


async def round_trip_under_faults(
    proxy: StorageFaultProxy,
    via: BlobServiceClient,
    direct: BlobServiceClient,
    container: str,
    tmp_path: Path,
    *,
    count: int,
    block: int,
    big: int = 0,
) -> None:
    sources = write_corpus(tmp_path / "in", count, block=block, big=big, seed=proxy.seed)
    by_name = {s.name: s for s in sources}
    assert len(by_name) == count >= 1000
    assert sum(1 for s in sources if s.path.stat().st_size > block) >= 5  # several multi-block files
    proxy.rates = TEN_PERCENT

    uploaded = await upload_files(
        via,
        container,
        [s.path for s in sources],
        blob_names=[s.name for s in sources],
        block_size=block,
        single_put_size=min(block, MiB),
        concurrency=16,
        policy=POLICY,
    )
    assert len(uploaded.uploaded) == count and uploaded.skipped == ()
    # What storage holds, asked directly: every blob, with the source's size and MD5.
    held = await stored(direct, container)
    assert held == {s.name: (s.path.stat().st_size, s.md5) for s in sources}

    out = tmp_path / "out"
    result, failures = await download_until_healed(via, container, out)
    assert sorted(f.name for f in result.files) == sorted(by_name)
    for source in sources:
        local = out.joinpath(*source.name.split("/"))
        assert md5_of(local) == source.md5, source.name  # the test's own hash of source and of result
    assert part_files(out) == []
    assert sorted(str(p.relative_to(out).as_posix()) for p in out.rglob("*") if p.is_file()) == sorted(by_name)

    # A re-run under the same faults sends nothing: every blob already holds the same bytes, and stays as it was.
    etags = {b.name: b.etag async for b in direct.get_container_client(container).list_blobs()}
    again = await upload_files(
        via,
        container,
        [s.path for s in sources],
        blob_names=[s.name for s in sources],
        block_size=block,
        single_put_size=min(block, MiB),
        concurrency=16,
        policy=POLICY,
    )
    assert again.uploaded == () and len(again.skipped) == count
    assert {b.name: b.etag async for b in direct.get_container_client(container).list_blobs()} == etags

    # Not vacuous: each kind, and each way of dropping a connection, happened (flips only hit downloads).
    assert all(proxy.injected[kind] > 0 for kind in ("503", "reset", "flip")), proxy.injected
    variants = {(i.kind, i.variant.split()[0], i.method) for i in proxy.injections}
    for expected in (
        ("reset", "before-forward", "PUT"),
        ("reset", "no-answer", "PUT"),
        ("reset", "mid-body", "GET"),
        ("flip", "byte", "GET"),
    ):
        assert expected in variants, (expected, proxy.injected)
    # Flips were healed: within the call (downloaded once more) or by the next call.
    assert proxy.injected["flip"] > len(failures)
    print(f"seed {proxy.seed}: injected {dict(proxy.injected)}, {len(failures)} IntegrityErrors healed by a re-run")


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_thousand_files_round_trip_under_ten_percent_faults_of_each_kind(
    storage_faults: StorageFaultProxy,
    via: BlobServiceClient,
    direct: BlobServiceClient,
    container: str,
    tmp_path: Path,
) -> None:
    await round_trip_under_faults(storage_faults, via, direct, container, tmp_path, count=1000, block=BLOCK)


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_thousand_files_with_multi_mib_blobs_round_trip_under_faults(
    storage_faults: StorageFaultProxy,
    via: BlobServiceClient,
    direct: BlobServiceClient,
    container: str,
    tmp_path: Path,
) -> None:
    # Production sizes: 1 MiB blocks and multi-range downloads (the client fetches 4 MiB ranges).
    await round_trip_under_faults(storage_faults, via, direct, container, tmp_path, count=1000, block=MiB, big=6)


# ----------------------------------------------------------------------------------------------------
# Corrupted bodies
# ----------------------------------------------------------------------------------------------------


async def put_clean(proxy: StorageFaultProxy, via: BlobServiceClient, container: str, files: dict[str, Path]) -> None:
    with proxy.paused():
        await upload_files(
            via, container, list(files.values()), blob_names=list(files), block_size=BLOCK, single_put_size=BLOCK
        )


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1, 3 * BLOCK + 5, 4 * MiB + 1], ids=["1 B", "multi-block", "two ranges"])
async def test_a_body_corrupted_every_time_raises_integrity_error_and_leaves_no_file(
    storage_faults: StorageFaultProxy, via: BlobServiceClient, container: str, tmp_path: Path, size: int
) -> None:
    source = tmp_path / "in" / "clip ü.gif"
    source.parent.mkdir()
    source.write_bytes(random.Random(size).randbytes(size))
    await put_clean(storage_faults, via, container, {"clip ü.gif": source})
    out = tmp_path / "out"
    storage_faults.rates = {"flip": 1.0}

    with pytest.raises(IntegrityError) as info:
        await download_blobs(via, container, out, policy=POLICY)
    assert info.value.blob == "clip ü.gif" and info.value.container == container
    assert info.value.expected_md5 == md5_of(source) != info.value.actual_md5
    assert not (out / "clip ü.gif").exists() and part_files(out) == []
    # Downloaded once more, then given up: two attempts, each flipped in every range it fetched.
    ranges = -(-size // (4 * MiB))
    assert storage_faults.injected == {"flip": 2 * ranges}

    # An existing file at the destination (an older output) is left exactly as it was.
    (out / "clip ü.gif").parent.mkdir(parents=True, exist_ok=True)
    (out / "clip ü.gif").write_bytes(b"previous version")
    with pytest.raises(IntegrityError):
        await download_blobs(via, container, out, policy=POLICY)
    assert (out / "clip ü.gif").read_bytes() == b"previous version" and part_files(out) == []

    # Once the damage stops, downloading again heals it.
    storage_faults.rates = {}
    result = await download_blobs(via, container, out, policy=POLICY)
    assert [f.name for f in result.downloaded] == ["clip ü.gif"] and md5_of(out / "clip ü.gif") == md5_of(source)


@pytest.mark.anyio
@pytest.mark.parametrize("storage_faults", [{"flip": 1.0, "limit": 1}], indirect=True)
async def test_a_body_corrupted_once_is_fetched_again_and_verified(
    storage_faults: StorageFaultProxy, via: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    source = tmp_path / "in" / "a.bin"
    source.parent.mkdir()
    source.write_bytes(random.Random(storage_faults.seed).randbytes(3 * BLOCK))
    await put_clean(storage_faults, via, container, {"a.bin": source})
    result = await download_blobs(via, container, tmp_path / "out", policy=POLICY)
    assert [f.md5 for f in result.downloaded] == [md5_of(source)] == [md5_of(tmp_path / "out" / "a.bin")]
    assert storage_faults.injected == {"flip": 1}


# ----------------------------------------------------------------------------------------------------
# Interrupted multi-block uploads never show a partial blob
# ----------------------------------------------------------------------------------------------------


def block_id_param(index: int) -> str:
    """The start of block *index*'s id in a Put Block URL (base64 of aiobatch's id, then URL-encoded).

    Ids start with the index (9 characters, whole base64 groups), then the upload's random token.
    """
    prefix = base64.b64encode(_block_id("0" * 16, index).encode()).decode()[:12]
    return urllib.parse.quote(prefix, safe="")


def versions(tmp_path: Path, seed: int) -> tuple[Path, bytes, bytes]:
    """A file's path and two versions of its bytes (6 and 10 blocks), derived from the seed."""
    path = tmp_path / "in" / "video ü.mp4"
    path.parent.mkdir(exist_ok=True)
    rng = random.Random(seed)
    return path, rng.randbytes(6 * BLOCK + 3), rng.randbytes(9 * BLOCK + 1)


async def assert_holds(direct: BlobServiceClient, container: str, name: str, data: bytes) -> None:
    """Storage shows exactly *data* under *name*: listing, properties and content agree."""
    md5 = hashlib.md5(data).hexdigest()
    assert (await stored(direct, container))[name] == (len(data), md5)
    blob = direct.get_blob_client(container, name)
    assert await (await blob.download_blob()).readall() == data


@pytest.mark.anyio
async def test_a_refused_commit_shows_the_old_version_or_nothing(
    storage_faults: StorageFaultProxy, via: BlobServiceClient, direct: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    path, old, new = versions(tmp_path, storage_faults.seed)
    fresh = tmp_path / "in" / "fresh.bin"
    fresh.write_bytes(random.Random(storage_faults.seed + 1).randbytes(4 * BLOCK + 1))
    path.write_bytes(old)
    await put_clean(storage_faults, via, container, {"video ü.mp4": path})
    path.write_bytes(new)

    storage_faults.rates = {"503": 1.0}
    storage_faults.aim(methods=["PUT"], pattern=r"comp=blocklist")  # every block goes up; no commit does
    with pytest.raises(ServiceUnavailableError):
        await upload_files(
            via, container, [path, fresh], block_size=BLOCK, single_put_size=BLOCK, concurrency=1, policy=POLICY
        )
    assert storage_faults.injected["503"] >= POLICY.attempts  # the commit was really tried, and refused
    await assert_holds(direct, container, "video ü.mp4", old)
    assert "fresh.bin" not in await stored(direct, container)
    # The new version's blocks did reach storage, uncommitted: only the commit would have shown them.
    _, uncommitted = await direct.get_blob_client(container, "video ü.mp4").get_block_list("uncommitted")
    assert len(uncommitted) == 10

    # With the service healthy again, a re-run commits the new version whole.
    storage_faults.rates = {}
    await upload_files(via, container, [path, fresh], block_size=BLOCK, single_put_size=BLOCK, policy=POLICY)
    await assert_holds(direct, container, "video ü.mp4", new)
    await assert_holds(direct, container, "fresh.bin", fresh.read_bytes())


@pytest.mark.anyio
async def test_a_block_that_never_gets_through_leaves_the_old_version(
    storage_faults: StorageFaultProxy, via: BlobServiceClient, direct: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    path, old, new = versions(tmp_path, storage_faults.seed)
    path.write_bytes(old)
    await put_clean(storage_faults, via, container, {"video ü.mp4": path})
    path.write_bytes(new)

    storage_faults.rates = {"reset": 1.0}  # dropped before or after Azurite took the block, at random
    storage_faults.aim(pattern=f"comp=block&blockid={block_id_param(5)}")
    with pytest.raises(ServiceUnavailableError):
        await upload_files(
            via, container, [path], block_size=BLOCK, single_put_size=BLOCK, concurrency=1, policy=POLICY
        )
    assert storage_faults.injected["reset"] >= POLICY.attempts
    assert {i.variant for i in storage_faults.injections} <= {"before-forward", "no-answer"}
    await assert_holds(direct, container, "video ü.mp4", old)
    _, uncommitted = await direct.get_blob_client(container, "video ü.mp4").get_block_list("uncommitted")
    assert len(uncommitted) >= 5  # blocks 0-4 were staged before block 5 failed


@pytest.mark.anyio
@pytest.mark.parametrize(
    "storage_faults",
    # One to three commits dropped, before or after they took effect (the variant is drawn per request).
    [{"reset": 1.0, "methods": ["PUT"], "pattern": "comp=blocklist", "limit": 1 + i % 3, "seed": i} for i in range(6)],
    indirect=True,
)
async def test_a_commit_whose_answer_is_lost_still_ends_whole(
    storage_faults: StorageFaultProxy, via: BlobServiceClient, direct: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    path, old, new = versions(tmp_path, storage_faults.seed)
    path.write_bytes(old)
    await put_clean(storage_faults, via, container, {"video ü.mp4": path})
    path.write_bytes(new)
    await upload_files(via, container, [path], block_size=BLOCK, single_put_size=BLOCK, policy=POLICY)
    assert storage_faults.injected["reset"] == storage_faults.limit
    # Re-committing a list already committed ends with the new version, whole. (aiobatch names blocks 'latest', as
    # the real service requires for this; Azurite would also accept 'uncommitted', so it cannot check that part.)
    await assert_holds(direct, container, "video ü.mp4", new)


@pytest.mark.anyio
async def test_under_mixed_faults_a_blob_is_always_one_whole_version(
    storage_faults: StorageFaultProxy, via: BlobServiceClient, direct: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    """Many short-budget uploads that may fail anywhere: whatever storage shows is the old or the new file."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = random.Random(storage_faults.seed)
    olds = {f"v {i}.bin": rng.randbytes(rng.randrange(2 * BLOCK, 8 * BLOCK)) for i in range(30)}
    news = {name: rng.randbytes(rng.randrange(2 * BLOCK, 8 * BLOCK)) for name in olds}
    for name, data in olds.items():
        (folder / name).write_bytes(data)
    await put_clean(storage_faults, via, container, {name: folder / name for name in olds})
    for name, data in news.items():
        (folder / name).write_bytes(data)
    storage_faults.rates = {"503": 0.15, "reset": 0.15}
    outcomes = []
    for name in news:  # one file per call, so one failure does not cancel the others
        try:
            await upload_files(
                via, container, [folder / name], block_size=BLOCK, single_put_size=BLOCK, policy=RetryPolicy(attempts=2)
            )
            outcomes.append("ok")
        except ServiceUnavailableError:
            outcomes.append("failed")
    assert "ok" in outcomes and "failed" in outcomes, outcomes  # both paths were taken
    held = await stored(direct, container)
    for (name, old), ok in zip(olds.items(), outcomes, strict=True):
        new = news[name]
        want = {(len(old), hashlib.md5(old).hexdigest()), (len(new), hashlib.md5(new).hexdigest())}
        assert held[name] in want, name
        data = await (await direct.get_blob_client(container, name).download_blob()).readall()
        assert (len(data), hashlib.md5(data).hexdigest()) == held[name]  # content matches its stored MD5
        if ok == "ok":
            assert data == new


@pytest.mark.anyio
async def test_missing_blob_under_faults_is_not_found(
    storage_faults: StorageFaultProxy, via: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    with storage_faults.paused():
        await upload_files(via, container, [])
    storage_faults.rates = {"503": 0.3, "reset": 0.3}
    with pytest.raises(NotFoundError):
        await download_blobs(via, container, tmp_path, names=["nope.gif"], policy=POLICY)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "storage_faults", [{"reset": 1.0, "methods": ["PUT"], "pattern": r"restype=container$", "limit": 1}], indirect=True
)
async def test_a_create_whose_answer_was_lost_still_counts_as_this_calls_container(
    storage_faults: StorageFaultProxy, via: BlobServiceClient, direct: BlobServiceClient, container: str
) -> None:
    """The client deletes the containers it created; one whose create answer was lost must count as created."""
    assert await ensure_container(via, container, policy=POLICY) is True
    # The create took effect and its answer was dropped; the re-sent create met 409 ContainerAlreadyExists.
    assert [(i.variant, i.forwarded) for i in storage_faults.injections] == [("no-answer", True)]
    assert storage_faults.forwarded["PUT"] == 2
    assert await ensure_container(via, container, policy=POLICY) is False  # this call did not create it
    # Nor is a container someone else created claimed as ours.
    other = f"{container[:50]}-other"
    await direct.create_container(other)
    assert await ensure_container(via, other, policy=POLICY) is False


# ----------------------------------------------------------------------------------------------------
# A download cut short releases its connection at once
# ----------------------------------------------------------------------------------------------------


class StallingProxy:
    """A pass-through proxy to Azurite that sends the first bytes of each Get Blob body, then holds the rest.

    The client is left waiting mid-body for as long as it keeps the connection: `stalled` is set when the first
    body is held, `hung_up` when the client has closed that connection. A request for a blob named in *after_stall*
    is held until then, so its answer (a 404) lands while the other download is mid-body.
    """

    def __init__(self, azurite: AzuriteServer, *, after_stall: str = "") -> None:
        self._upstream = azurite.blob_endpoint.rsplit("/", 1)[0]
        self._azurite = azurite
        self._after_stall = after_stall
        self.stalled = anyio.Event()
        self.hung_up = anyio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.connection_string = ""

    async def __aenter__(self) -> StallingProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self.connection_string = self._azurite.connection_string.replace(self._upstream, f"http://127.0.0.1:{port}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        if self._after_stall and self._after_stall in request.path:
            await self.stalled.wait()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "transfer-encoding")}
        async with self._session.request(
            request.method,
            self._upstream + request.raw_path,
            headers=headers,
            data=await request.read() if request.body_exists else None,
            allow_redirects=False,
        ) as upstream:
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
            blob_read = request.method == "GET" and not {"comp", "restype"} & set(request.query)
            if not (blob_read and upstream.status in (200, 206)) or self.stalled.is_set():
                return web.Response(status=upstream.status, headers=out, body=await upstream.read())
            response = web.StreamResponse(status=upstream.status, headers=out)
            await response.prepare(request)
            await response.write(await upstream.content.read(64 * 1024))
            self.stalled.set()
            try:
                while request.transport is not None and not request.transport.is_closing():
                    await anyio.sleep(0.01)
            finally:
                self.hung_up.set()
            return response


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["cancelled by the caller", "cancelled by a sibling's failure"])
async def test_a_download_cut_short_mid_body_releases_its_connection(
    azurite: AzuriteServer, direct: BlobServiceClient, container: str, tmp_path: Path, how: str
) -> None:
    """Not left to the garbage collector: the connection is closed when the download ends, however it ends."""
    source = tmp_path / "big.bin"
    source.write_bytes(random.Random(how).randbytes(5 * MiB))
    await upload_files(direct, container, [source])
    out = tmp_path / "out"
    sibling = how != "cancelled by the caller"
    async with (
        StallingProxy(azurite, after_stall="missing.bin" if sibling else "") as proxy,
        blob_service_client(StorageSettings(connection_string=proxy.connection_string)) as svc,
    ):
        # With the collector off, only the download itself can close what it opened.
        gc.disable()
        try:
            if sibling:
                with pytest.raises(NotFoundError):
                    await download_blobs(svc, container, out, names=["big.bin", "missing.bin"], policy=POLICY)
            else:

                async def cancel_when_stalled() -> None:
                    await proxy.stalled.wait()
                    scope.cancel()

                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(cancel_when_stalled)
                        await download_blobs(svc, container, out, policy=POLICY)
                assert scope.cancelled_caught
            assert proxy.stalled.is_set()
            assert checked_out(svc) == 0
            with anyio.fail_after(5):
                await proxy.hung_up.wait()
        finally:
            gc.enable()
    assert not (out / "big.bin").exists() and part_files(out) == []
