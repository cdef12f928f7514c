"""Blob Storage against real Azurite: uploads that skip, verified downloads, least-privilege SAS, containers."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import stat
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import (
    AccountSasPermissions,
    ContentSettings,
    ResourceTypes,
    UserDelegationKey,
    generate_account_sas,
)
from azure.storage.blob.aio import BlobClient, BlobServiceClient, ContainerClient

from _support import minted_ago
from aiobatch._azurite import AzuriteServer
from aiobatch._blobput import BlobPutter
from aiobatch._config import StorageSettings
from aiobatch._errors import (
    AuthenticationError,
    ConfigurationError,
    IntegrityError,
    NotFoundError,
    SasExpiredError,
    StorageError,
)
from aiobatch._retry import RetryPolicy, call, instant_waits, sdk_client_kwargs
from aiobatch._sas import SasPolicy, input_sas_url, output_container_sas_url, sas_expiry
from aiobatch._storage import (
    TransferProgress,
    _is_transit_corruption,
    _local_path,
    blob_service_client,
    delete_containers,
    download_blobs,
    ensure_container,
    upload_files,
)

BLOCK = 64 * 1024  # small blocks keep multi-block cases fast


@pytest.fixture
async def service(azurite: AzuriteServer) -> AsyncIterator[BlobServiceClient]:
    async with blob_service_client(StorageSettings(connection_string=azurite.connection_string)) as svc:
        yield svc


@pytest.fixture
def container() -> str:
    return f"t-{uuid.uuid4().hex[:20]}"


@pytest.fixture(autouse=True)
def _instant() -> Iterator[None]:
    with instant_waits():
        yield


def write_files(folder: Path, sizes: dict[str, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, size) in enumerate(sizes.items()):
        path = folder / name
        path.write_bytes(bytes((i + j) % 251 for j in range(size)))
        paths.append(path)
    return paths


SIZES = {
    "empty.bin": 0,
    "one.bin": 1,
    "block-minus-1.bin": BLOCK - 1,
    "block.bin": BLOCK,
    "block-plus-1.bin": BLOCK + 1,
    "multi block.bin": 3 * BLOCK + 123,
    "my cat \u2013 Ünïcödé 猫.mp4": 5000,
    "quotes 'and' \"more\" & 100%.txt": 10,
    **{f"many-{i:03d}.dat": 100 + i for i in range(40)},
}


async def upload(service: BlobServiceClient, container: str, paths: list[Path], **kwargs: Any) -> Any:
    return await upload_files(service, container, paths, block_size=BLOCK, single_put_size=BLOCK, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Uploads
# ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_upload_of_every_size_and_name(
    service: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    paths = write_files(tmp_path / "in", SIZES)
    events: list[TransferProgress] = []
    result = await upload(service, container, paths, concurrency=8, progress=events.append)
    assert [f.name for f in result.uploaded] == list(SIZES) and result.skipped == ()
    assert result.bytes_uploaded == sum(SIZES.values())
    client = service.get_container_client(container)
    for item in result.uploaded:
        blob = client.get_blob_client(item.name)
        data = await (await blob.download_blob()).readall()
        assert data == item.path.read_bytes(), item.name
        props = await blob.get_blob_properties()
        assert props.size == SIZES[item.name]
        stored = props.content_settings.content_md5
        assert stored is not None and bytes(stored).hex() == hashlib.md5(data).hexdigest() == item.md5
    multi = [e for e in events if e.name == "multi block.bin"]
    assert [e.done for e in multi] and multi[-1].done == multi[-1].total == 3 * BLOCK + 123
    assert len(multi) == 4  # one event per staged block
    assert (await client.get_blob_client("my cat.mp4").exists()) is False
    assert "%20" in client.get_blob_client("my cat \u2013 Ünïcödé 猫.mp4").url


@pytest.mark.anyio
async def test_reupload_sends_nothing_for_identical_files(
    service: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    paths = write_files(tmp_path / "in", SIZES)
    await upload(service, container, paths)
    client = service.get_container_client(container)
    before = {b.name: (b.etag, b.last_modified) async for b in client.list_blobs()}

    # Change one file's bytes but not its size: size alone must not fool the skip.
    changed = tmp_path / "in" / "block.bin"
    changed.write_bytes(b"\xff" * BLOCK)
    skipped_events: list[TransferProgress] = []
    again = await upload(service, container, paths, progress=skipped_events.append)

    assert [f.name for f in again.uploaded] == ["block.bin"]
    assert len(again.skipped) == len(SIZES) - 1
    after = {b.name: (b.etag, b.last_modified) async for b in client.list_blobs()}
    for name in SIZES:
        if name == "block.bin":
            assert after[name] != before[name]
        else:
            assert after[name] == before[name], f"{name} was rewritten"
    assert sum(e.skipped for e in skipped_events) == len(SIZES) - 1


@pytest.mark.anyio
@pytest.mark.parametrize("extra", [0, 10], ids=["checked-file-by-file", "checked-by-one-listing"])
async def test_a_backslash_name_is_compared_as_the_service_stores_it(
    service: BlobServiceClient, container: str, tmp_path: Path, extra: int
) -> None:
    sizes = {"back\\slash.txt": 11, "dir\\sub\\deep.txt": 12, **{f"other-{i}.txt": i for i in range(extra)}}
    paths = write_files(tmp_path / "in", sizes)
    first = await upload(service, container, paths)
    listed = {b.name async for b in service.get_container_client(container).list_blobs()}
    assert {"back/slash.txt", "dir/sub/deep.txt"} <= listed, "Azurite stores a backslash as a slash"
    assert {f.name for f in first.uploaded} >= {"back/slash.txt", "dir/sub/deep.txt"}, "results name the stored blob"
    again = await upload(service, container, paths)
    assert again.uploaded == (), f"uploaded again: {[f.name for f in again.uploaded]}"
    assert len(again.skipped) == len(sizes)


@pytest.mark.anyio
async def test_names_that_the_service_stores_alike_are_duplicates(
    service: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    a, b = write_files(tmp_path, {"a\\b.txt": 1, "c.txt": 2})
    with pytest.raises(ConfigurationError, match=r"would both become blob 'a/b\.txt'"):
        await upload_files(service, container, [a, b], blob_names=["a\\b.txt", "a/b.txt"])


@pytest.mark.anyio
async def test_blob_names_and_bad_inputs(service: BlobServiceClient, container: str, tmp_path: Path) -> None:
    a, b = write_files(tmp_path / "x", {"same.txt": 3}) + write_files(tmp_path / "y", {"same.txt": 4})
    with pytest.raises(ConfigurationError, match="blob_names"):
        await upload_files(service, container, [a, b])
    result = await upload_files(service, container, [a, b], blob_names=["x/same.txt", "y/same.txt"])
    assert sorted(f.name for f in result.uploaded) == ["x/same.txt", "y/same.txt"]
    with pytest.raises(ConfigurationError, match="cannot read input"):
        await upload_files(service, container, [tmp_path / "missing.mp4"])
    with pytest.raises(ConfigurationError, match="cannot read input"):
        await upload_files(service, container, [tmp_path])
    with pytest.raises(ConfigurationError, match="container name"):
        await upload_files(service, "Bad_Name", [a])
    with pytest.raises(ConfigurationError, match="one per path"):
        await upload_files(service, container, [a, b], blob_names=["only-one"])


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["a/../b.txt", "./c.txt", "d/./e.txt", "..\\f.txt"])
async def test_a_dot_segment_name_is_refused_naming_the_file_and_the_fix(
    service: BlobServiceClient, container: str, tmp_path: Path, name: str
) -> None:
    (path,) = write_files(tmp_path, {"x.txt": 3})
    with pytest.raises(ConfigurationError) as caught:
        await upload_files(service, container, [path], blob_names=[name])
    message = str(caught.value)
    assert str(path) in message and "'..' path segment" in message and "blob_names=" in message, message
    assert caught.value.setting == "blob_names"
    assert not await service.get_container_client(container).exists(), "refused before any request"


@pytest.mark.anyio
async def test_small_files_are_stored_with_their_md5_type_and_exact_names(
    service: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    names = ["plain.txt", "a b/c+d=e&f?g#h%25i;j.json", "ünï/猫 ~'x'.png", "dots.in.name..txt", "..hidden/x.txt"]
    paths = write_files(tmp_path, {f"f{i}": 1000 + i for i in range(len(names))})
    result = await upload_files(service, container, paths, blob_names=names)
    assert [f.name for f in result.uploaded] == names
    client = service.get_container_client(container)
    assert sorted([b.name async for b in client.list_blobs()]) == sorted(names)
    kinds = ["text/plain", "application/json", "image/png", "text/plain", "text/plain"]
    for item, kind in zip(result.uploaded, kinds, strict=True):
        props = await client.get_blob_client(item.name).get_blob_properties()
        assert bytes(props.content_settings.content_md5).hex() == item.md5
        assert props.content_settings.content_type == kind
        assert await (await client.get_blob_client(item.name).download_blob()).readall() == item.path.read_bytes()


@pytest.mark.anyio
async def test_the_service_refuses_a_small_put_whose_md5_does_not_match(
    service: BlobServiceClient, container: str
) -> None:
    await ensure_container(service, container)
    putter = BlobPutter.open(service, container)
    assert putter is not None
    with pytest.raises(HttpResponseError) as caught:
        await putter.put("x.bin", b"some bytes", hashlib.md5(b"other bytes").hexdigest(), "application/octet-stream")
    assert caught.value.status_code == 400 and caught.value.error_code == "Md5Mismatch"  # type: ignore[attr-defined]
    assert _is_transit_corruption(caught.value), "the upload retries it as corruption in transit"
    assert not await service.get_blob_client(container, "x.bin").exists()


@pytest.mark.anyio
async def test_a_client_built_on_a_sas_uploads_small_and_large_files(
    azurite: AzuriteServer, container: str, tmp_path: Path
) -> None:
    sas = generate_account_sas(
        azurite.account_name,
        azurite.account_key,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, create=True, list=True, delete=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )
    settings = StorageSettings(connection_string=f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={sas}")
    paths = write_files(tmp_path, {"small.txt": 100, "large.bin": 3 * BLOCK})
    async with blob_service_client(settings) as via_sas:
        assert BlobPutter.open(via_sas, container) is not None
        result = await upload(via_sas, container, paths)
        again = await upload(via_sas, container, paths)
    assert len(result.uploaded) == 2 and len(again.skipped) == 2
    async with blob_service_client(StorageSettings(connection_string=azurite.connection_string)) as direct:
        for path in paths:
            blob = direct.get_blob_client(container, path.name)
            assert await (await blob.download_blob()).readall() == path.read_bytes()


@pytest.mark.anyio
async def test_a_wrong_key_on_a_small_put_is_an_authentication_error(
    service: BlobServiceClient, azurite: AzuriteServer, container: str, tmp_path: Path
) -> None:
    await ensure_container(service, container)
    wrong = azurite.connection_string.replace(azurite.account_key, base64.b64encode(b"w" * 64).decode())
    (path,) = write_files(tmp_path, {"a.txt": 10})
    async with blob_service_client(StorageSettings(connection_string=wrong)) as bad:
        with pytest.raises(AuthenticationError) as caught:
            await upload_files(bad, container, [path], create_container=False, policy=RetryPolicy(attempts=1))
    assert "sig=" not in str(caught.value) or "sig=***" in str(caught.value)
    assert not await service.get_blob_client(container, "a.txt").exists()


@pytest.mark.anyio
async def test_a_block_file_is_hashed_in_the_pass_that_sends_it(
    service: BlobServiceClient, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiobatch._storage as storage

    whole_file_hashes: list[Path] = []
    real = storage._md5_file

    def counting(path: Path) -> tuple[int, str]:
        whole_file_hashes.append(path)
        return real(path)

    monkeypatch.setattr(storage, "_md5_file", counting)
    big, other = write_files(tmp_path, {"big.bin": 5 * BLOCK + 7, "other.bin": 2 * BLOCK})
    first = await upload(service, container, [big, other])
    assert whole_file_hashes == [], "no blob of their size was there: no pass before the upload's own"
    for item in first.uploaded:
        props = await service.get_blob_client(container, item.name).get_blob_properties()
        assert (
            bytes(props.content_settings.content_md5).hex()
            == item.md5
            == hashlib.md5(item.path.read_bytes()).hexdigest()
        )

    # A blob of the same size is there: the file is hashed to compare, and sent again only if its bytes differ.
    big.write_bytes(bytes(reversed(big.read_bytes())))
    again = await upload(service, container, [big, other])
    assert sorted(whole_file_hashes) == sorted([big, other])
    assert [f.name for f in again.uploaded] == ["big.bin"] and [f.name for f in again.skipped] == ["other.bin"]
    data = await (await service.get_blob_client(container, "big.bin").download_blob()).readall()
    assert data == big.read_bytes() and again.uploaded[0].md5 == hashlib.md5(data).hexdigest()


@pytest.mark.anyio
async def test_a_file_that_changes_while_sent_in_blocks_is_not_committed(
    service: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    (path,) = write_files(tmp_path, {"growing.bin": 6 * BLOCK})

    def change_after_first_block(event: TransferProgress) -> None:
        if event.done == BLOCK:
            with path.open("ab") as f:
                f.write(b"more")

    with pytest.raises(StorageError, match="changed while it was being uploaded"):
        await upload(service, container, [path], concurrency=1, progress=change_after_first_block)
    assert not await service.get_blob_client(container, "growing.bin").exists()


@pytest.mark.anyio
async def test_interrupted_multi_block_upload_leaves_no_blob(
    service: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    (path,) = write_files(tmp_path, {"big.bin": 8 * BLOCK})
    with anyio.CancelScope() as scope:

        def stop_after_first_block(event: TransferProgress) -> None:
            if event.done >= BLOCK:
                scope.cancel()

        await upload(service, container, [path], concurrency=1, progress=stop_after_first_block)
    assert scope.cancel_called
    assert (await service.get_blob_client(container, "big.bin").exists()) is False


@pytest.mark.anyio
async def test_hashing_and_reading_do_not_block_the_loop(
    service: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    path = tmp_path / "large.bin"
    path.write_bytes(b"\x01" * (24 * 1024 * 1024))
    gaps: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await anyio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await upload_files(service, container, [path], block_size=4 * 1024 * 1024, single_put_size=0)
        done.set()
    # The SDK's per-request MD5 (4 MiB at a time) runs on the loop; whole-file hashing and reads must not.
    assert max(gaps) < 0.3


# ----------------------------------------------------------------------------------------------------
# Downloads
# ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_download_verifies_and_writes_every_blob(
    service: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    paths = write_files(tmp_path / "in", SIZES)
    await upload(service, container, paths, blob_names=[f"sub dir/{p.name}" for p in paths])
    out = tmp_path / "out"
    result = await download_blobs(service, container, out, concurrency=8)
    assert len(result.downloaded) == len(SIZES) and result.skipped == ()
    for path in paths:
        assert (out / "sub dir" / path.name).read_bytes() == path.read_bytes()
    assert not [p for p in out.rglob("*") if p.name.endswith(".aiobatch-part")]
    # Outputs get the mode any new file gets (0666 less the umask), not the temporary file's owner-only 0600.
    mask = os.umask(0o022)
    os.umask(mask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()} == {0o666 & ~mask}
    again = await download_blobs(service, container, out)
    assert len(again.skipped) == len(SIZES) and again.downloaded == ()
    only = await download_blobs(service, container, tmp_path / "one", names=["sub dir/one.bin"])
    assert [f.name for f in only.downloaded] == ["sub dir/one.bin"]
    by_prefix = await download_blobs(service, container, tmp_path / "many", prefix="sub dir/many-00")
    assert len(by_prefix.downloaded) == 10


@pytest.mark.anyio
async def test_corrupted_blob_raises_integrity_error_and_leaves_no_file(
    service: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    await ensure_container(service, container)
    blob = service.get_blob_client(container, "corrupt.gif")
    wrong_md5 = bytearray(hashlib.md5(b"what was meant").digest())
    await blob.upload_blob(b"what is there", overwrite=True)
    # Azurite checks an MD5 sent with the bytes, so corrupt the stored property afterwards.
    await blob.set_http_headers(ContentSettings(content_md5=wrong_md5))
    out = tmp_path / "out"
    with pytest.raises(IntegrityError) as info:
        await download_blobs(service, container, out)
    assert info.value.blob == "corrupt.gif" and info.value.expected_md5 == bytes(wrong_md5).hex()
    assert info.value.actual_md5 == hashlib.md5(b"what is there").hexdigest()
    assert list(out.iterdir()) == []  # neither the final file nor a temporary one


@pytest.mark.anyio
async def test_a_block_damaged_in_transit_counts_as_transient(service: BlobServiceClient, container: str) -> None:
    await ensure_container(service, container)
    blob = service.get_blob_client(container, "b.bin")
    with pytest.raises(HttpResponseError) as info:
        await blob.stage_block("x", b"data", transactional_content_md5=hashlib.md5(b"other").digest())
    assert _is_transit_corruption(info.value)  # Azurite's Md5Mismatch: the upload retries it
    assert not _is_transit_corruption(NotFoundError("x"))


@pytest.mark.anyio
async def test_missing_blob_is_not_found(service: BlobServiceClient, container: str, tmp_path: Path) -> None:
    await ensure_container(service, container)
    with pytest.raises(NotFoundError) as info:
        await download_blobs(service, container, tmp_path, names=["nope.gif"])
    assert info.value.resource_id == "nope.gif"


def test_unsafe_blob_names_are_refused_as_local_paths(tmp_path: Path) -> None:
    for bad in ("../escape", "a/../../b", "/abs", "a//b", "./x"):
        with pytest.raises(StorageError):
            _local_path(tmp_path, bad)
    assert _local_path(tmp_path, "ok dir/ü.gif") == tmp_path / "ok dir" / "ü.gif"


# ----------------------------------------------------------------------------------------------------
# SAS
# ----------------------------------------------------------------------------------------------------


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).items()}


async def status_of(coro: Any) -> int:
    try:
        await coro
    except HttpResponseError as exc:
        return int(exc.status_code or 0)
    return 200


@pytest.mark.anyio
async def test_input_sas_reads_and_cannot_write_or_delete(
    service: BlobServiceClient, container: str, tmp_path: Path, azurite: AzuriteServer
) -> None:
    (path,) = write_files(tmp_path, {"my cat 猫.mp4": 1000})
    await upload_files(service, container, [path])
    policy = SasPolicy(duration=2 * 3600, margin=1800)
    url = await input_sas_url(service, container, "my cat 猫.mp4", policy=policy)
    q = query(url)
    assert q["sp"] == "r" and azurite.account_key not in url and "AccountKey" not in url
    now = dt.datetime.now(dt.timezone.utc)
    expiry = sas_expiry(url)
    assert expiry is not None and abs((expiry - now).total_seconds() - (2 * 3600 + 1800)) < 60
    start = dt.datetime.fromisoformat(q["st"].replace("Z", "+00:00"))
    assert 240 < (now - start).total_seconds() < 400
    async with BlobClient.from_blob_url(url, **sdk_client_kwargs()) as blob:
        assert await (await blob.download_blob()).readall() == path.read_bytes()
        assert await status_of(blob.upload_blob(b"overwrite", overwrite=True)) == 403
        assert await status_of(blob.delete_blob()) == 403


@pytest.mark.anyio
async def test_output_sas_writes_and_cannot_read_list_or_delete(
    service: BlobServiceClient, container: str, azurite: AzuriteServer
) -> None:
    await ensure_container(service, container)
    url = await output_container_sas_url(service, container, policy=SasPolicy(duration=600))
    assert query(url)["sp"] == "cw" and azurite.account_key not in url
    async with ContainerClient.from_container_url(url, **sdk_client_kwargs()) as out:
        await out.upload_blob("task-1/out put.gif", b"GIF89a", overwrite=True)
        assert await status_of(out.download_blob("task-1/out put.gif")) == 403
        assert await status_of(out.list_blobs().__anext__()) == 403
        assert await status_of(out.delete_blob("task-1/out put.gif")) == 403
        assert await status_of(out.get_container_properties()) == 403
    assert await service.get_blob_client(container, "task-1/out put.gif").exists()


@pytest.mark.anyio
async def test_expired_sas_is_refused_and_reported_as_expired(service: BlobServiceClient, container: str) -> None:
    await ensure_container(service, container)
    await service.get_blob_client(container, "x.txt").upload_blob(b"x")
    # Minted 3.2 s ago, valid for 1 s: expired 2.2 s ago, with no wait on the wall clock.
    url = await input_sas_url(service, container, "x.txt", policy=minted_ago(SasPolicy(duration=1.0, margin=0.0), 3.2))
    async with BlobClient.from_blob_url(url, **sdk_client_kwargs()) as blob:

        async def read() -> bytes:
            return await (await blob.download_blob()).readall()

        with pytest.raises(SasExpiredError) as info:
            await call(read, policy=RetryPolicy(attempts=3), resource="blob", resource_id="x.txt")
    assert info.value.expiry is not None and "sig=" not in str(info.value).replace("sig=***", "")


def test_sas_policy_bounds() -> None:
    with pytest.raises(ConfigurationError, match="bound"):
        SasPolicy(duration=8 * 24 * 3600)
    with pytest.raises(ConfigurationError):
        SasPolicy(duration=-1)
    start, expiry = SasPolicy(duration=100, margin=20, backdate=60).window(
        dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    )
    assert (start.minute, start.second, expiry.minute, expiry.second) == (59, 0, 2, 0)


@pytest.mark.anyio
async def test_a_given_delegation_key_signs_a_user_delegation_sas(service: BlobServiceClient, container: str) -> None:
    key = UserDelegationKey()  # type: ignore[no-untyped-call]
    key.signed_oid, key.signed_tid = str(uuid.uuid4()), str(uuid.uuid4())
    key.signed_start, key.signed_expiry = "2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z"
    key.signed_service, key.signed_version = "b", "2024-08-04"
    key.value = "c2VjcmV0LWRlbGVnYXRpb24ta2V5LXZhbHVl"
    url = await input_sas_url(service, container, "a.mp4", delegation_key=key)
    q = query(url)
    assert q["skoid"] == key.signed_oid and q["sp"] == "r" and key.value not in url


@pytest.mark.anyio
async def test_no_way_to_sign_is_a_configuration_error(azurite: AzuriteServer) -> None:
    url = f"{azurite.blob_endpoint}?sv=2024-08-04&ss=b&srt=sco&sp=rl&se=2099-01-01&sig=c2ln"
    async with BlobServiceClient(url, **sdk_client_kwargs()) as svc:
        with pytest.raises(ConfigurationError, match="cannot mint SAS"):
            await input_sas_url(svc, "c1c", "b")


# ----------------------------------------------------------------------------------------------------
# Containers and auth
# ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ensure_and_delete_containers(service: BlobServiceClient, container: str) -> None:
    assert await ensure_container(service, container) is True
    assert await ensure_container(service, container) is False
    assert await delete_containers(service, [container, "never-existed-xyz"]) == [container]
    assert await delete_containers(service, [container]) == []


@pytest.mark.anyio
async def test_wrong_key_is_an_authentication_error(azurite: AzuriteServer, container: str, tmp_path: Path) -> None:
    wrong = azurite.connection_string.replace(azurite.account_key, "d3Jvbmcta2V5LXdyb25nLWtleQ==")
    (path,) = write_files(tmp_path, {"a.txt": 3})
    async with blob_service_client(StorageSettings(connection_string=wrong)) as svc:
        with pytest.raises(AuthenticationError) as info:
            await upload_files(svc, container, [path])
    assert info.value.status == 403 and "d3Jvbmcta2V5" not in str(info.value)
