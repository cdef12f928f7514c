"""Upload to Azurite: many small files and a few large ones, three ways, interleaved round by round.

- aiobatch: ``Client.upload_files`` (MD5 per file, skip what is already there, blocks for large files,
  transactional MD5 on every request, *concurrency* requests in flight);
- a sequential loop of ``upload_blob`` with the async SDK, one file after the other (what the Batch .NET
  walkthrough does);
- the ceiling: bare aiohttp PUTs (Put Blob, or Put Block and Put Block List in blocks of the same size as
  aiobatch's) with a SAS, the same concurrency, no hashing and no checks.

Each variant uploads into a fresh container; a fresh Azurite serves each round, so no round pays for the blobs
an earlier one left in memory.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas
from azure.storage.blob.aio import BlobServiceClient

from aiobatch import BatchSettings, Client, StorageSettings
from aiobatch._azurite import AzuriteServer

from ._harness import CaseResult, MiB, Series, Target, fmt, log, paired_ratio, stopwatch
from ._latency import relay_process

BLOCK = 4 * MiB  # aiobatch's block size, used by the ceiling too


def make_files(folder: Path, count: int, size: int, prefix: str) -> list[Path]:
    """Write *count* files of *size* random bytes (reused when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}-{i:04d}.bin"
        if not path.is_file() or path.stat().st_size != size:
            with path.open("wb") as f:
                left = size
                while left:
                    n = min(left, 16 * MiB)
                    f.write(os.urandom(n))
                    left -= n
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Store:
    """Where the uploads go: Azurite itself, or Azurite behind a latency relay."""

    account_name: str
    account_key: str
    blob_endpoint: str

    @property
    def connection_string(self) -> str:
        """The connection string for this endpoint."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob_endpoint};"
        )


def _store(azurite: AzuriteServer, port: int | None = None) -> Store:
    endpoint = azurite.blob_endpoint if port is None else f"http://127.0.0.1:{port}/{azurite.account_name}"
    return Store(azurite.account_name, azurite.account_key, endpoint)


async def _aiobatch(azurite: Store, container: str, paths: list[Path], concurrency: int | None) -> None:
    batch = BatchSettings("http://127.0.0.1:9", account_name="unused", account_key=base64.b64encode(b"k").decode())
    storage = StorageSettings(connection_string=azurite.connection_string)
    async with Client(batch, storage) as client:
        result = await client.upload_files(container, paths, concurrency=concurrency)
    assert len(result.uploaded) == len(paths)


async def _sequential(azurite: Store, container: str, paths: list[Path]) -> None:
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        client = service.get_container_client(container)
        await client.create_container()
        for path in paths:
            with path.open("rb") as data:
                await client.upload_blob(path.name, data, overwrite=True)


async def _bare(azurite: Store, container: str, paths: list[Path], concurrency: int) -> None:
    sas = generate_account_sas(
        azurite.account_name,
        azurite.account_key,
        resource_types=ResourceTypes(container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, create=True),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
    )
    base = f"{azurite.blob_endpoint}/{container}"
    headers = {"x-ms-version": "2025-01-05"}
    # Work items: whole small files, or the blocks of large ones (committed once all of a file's are in).
    work: list[tuple[Path, int, int, str | None]] = []
    blocks: dict[Path, list[str]] = {}
    for path in paths:
        size = path.stat().st_size
        if size <= MiB:
            work.append((path, 0, size, None))
            continue
        ids = [base64.b64encode(f"{i:08d}".encode()).decode() for i in range(-(-size // BLOCK))]
        blocks[path] = ids
        work += [(path, i * BLOCK, min(BLOCK, size - i * BLOCK), block_id) for i, block_id in enumerate(ids)]
    queue = iter(work)

    async def worker(session: aiohttp.ClientSession) -> None:
        for path, offset, length, block_id in queue:
            with path.open("rb") as f:
                data = os.pread(f.fileno(), length, offset)
            if block_id is None:
                url = f"{base}/{path.name}?{sas}"
                extra = {"x-ms-blob-type": "BlockBlob"}
                body: bytes | io.BytesIO = data
            else:
                # Azurite hashes a block sent without Content-MD5 itself, at three times the CPU time: the
                # ceiling sends one (hashlib is cheaper). A stream, as aiohttp prefers for large bodies.
                url = f"{base}/{path.name}?comp=block&blockid={block_id}&{sas}"
                extra = {"Content-MD5": base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()}
                body = io.BytesIO(data)
            async with session.put(url, data=body, headers={**headers, **extra}) as response:
                assert response.status == 201, await response.text()

    async with aiohttp.ClientSession() as session:
        async with session.put(f"{base}?restype=container&{sas}", headers=headers) as response:
            assert response.status in (201, 409), await response.text()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        for path, ids in blocks.items():
            body = "<BlockList>" + "".join(f"<Latest>{i}</Latest>" for i in ids) + "</BlockList>"
            async with session.put(f"{base}/{path.name}?comp=blocklist&{sas}", data=body, headers=headers) as r:
                assert r.status == 201, await r.text()


async def _round(
    store: Store,
    sets: dict[str, list[Path]],
    variants: dict[str, Callable[..., Awaitable[None]]],
    rates: dict[tuple[str, str], Series],
    tag: str,
) -> None:
    """Upload each set with each variant, back to back, each into a fresh container deleted after."""
    for set_name, paths in sets.items():
        total = sum(p.stat().st_size for p in paths)
        for key, upload in variants.items():
            container = f"{set_name}-{key}-{tag}".replace("_", "-")
            with stopwatch() as elapsed:
                await upload(store, container, paths)
            rates[(set_name, key)].values.append(total / elapsed() / 1e6)
            log(f"  upload {set_name} {key}: {rates[(set_name, key)].values[-1]:,.0f} MB/s")
            async with BlobServiceClient.from_connection_string(store.connection_string) as service:
                await service.delete_container(container)


async def run(
    work: Path,
    *,
    small: int,
    large: int,
    large_size: int,
    rounds: int,
    latency_rounds: int,
    concurrency: int,
    rtt: float,
) -> CaseResult:
    """Upload *small* files of 256 KiB and *large* files of *large_size* bytes per variant per round.

    Then, in *latency_rounds* rounds, the small files again through a relay adding *rtt* seconds per round trip.
    """
    log(f"upload: writing {small} x 256 KiB and {large} x {large_size // MiB} MiB of random bytes")
    sets = {
        "small": make_files(work / "small", small, 256 * 1024, "small"),
        "large": make_files(work / "large", large, large_size, "large"),
    }
    wide = 2 * concurrency
    names = {
        "aiobatch": f"aiobatch `upload_files` (concurrency {concurrency})",
        "aiobatch_wide": f"aiobatch `upload_files` (concurrency {wide})",
        "aiobatch_auto": "aiobatch `upload_files` (default: concurrency tuned)",
        "sequential": "sequential `upload_blob` loop (SDK)",
        "bare": f"bare aiohttp PUT ({concurrency} in flight)",
    }
    loopback: dict[str, Callable[..., Awaitable[None]]] = {
        "aiobatch": partial(_aiobatch, concurrency=concurrency),
        "bare": partial(_bare, concurrency=concurrency),
        "sequential": _sequential,
        "aiobatch_auto": partial(_aiobatch, concurrency=None),
    }
    remote: dict[str, Callable[..., Awaitable[None]]] = {
        **loopback,
        "aiobatch_wide": partial(_aiobatch, concurrency=wide),
    }
    rates = {(s, v): Series("MB/s") for s in (*sets, "remote") for v in names}
    for r in range(max(rounds, latency_rounds)):
        log(f"upload round {r + 1}")
        async with AzuriteServer() as azurite:
            store = _store(azurite)
            await _bare(store, "warm-up", sets["small"][:200], concurrency)  # Node's JIT, before measuring
            if r < rounds:
                order = dict(reversed(loopback.items())) if r % 2 else loopback
                await _round(store, sets, order, rates, f"{r}")
            if r < latency_rounds:
                with relay_process(azurite.port, rtt / 2) as port:
                    order = dict(reversed(remote.items())) if r % 2 else remote
                    await _round(_store(azurite, port), {"remote": sets["small"]}, order, rates, f"{r}")

    def ratio(set_name: str, key: str, other: str = "aiobatch") -> float:
        return paired_ratio(rates[(set_name, other)].values, rates[(set_name, key)].values)

    rows = []
    labels = {
        "small": f"{small:,} x 256 KiB",
        "large": f"{large} x {large_size // MiB} MiB",
        "remote": f"{small:,} x 256 KiB, {rtt * 1000:g} ms round trip",
    }
    for set_name in labels:
        for key, name in names.items():
            series = rates[(set_name, key)]
            if not series.values:
                continue
            rows.append(
                [
                    labels[set_name],
                    name,
                    fmt(series.median),
                    series.spread(),
                    "—" if key == "aiobatch" else f"{ratio(set_name, key):.2f}x",
                ]
            )
    small_bare, small_seq = ratio("small", "bare"), ratio("small", "sequential")
    remote_seq, remote_wide = ratio("remote", "sequential"), ratio("remote", "sequential", "aiobatch_wide")
    remote_auto = ratio("remote", "sequential", "aiobatch_auto")
    large_bare = ratio("large", "bare")
    targets = [
        Target(
            "Upload, small files: aiobatch vs bare PUT ceiling", "≥ 0.85x", f"{small_bare:.2f}x", small_bare >= 0.85
        ),
        Target(
            "Upload, small files: aiobatch vs sequential loop (loopback)",
            "≥ 8x",
            f"{small_seq:.1f}x",
            small_seq >= 8,
        ),
        Target(
            f"Upload, small files: aiobatch vs sequential loop ({rtt * 1000:g} ms round trip)",
            "≥ 8x",
            f"{remote_seq:.1f}x ({remote_wide:.1f}x with concurrency {wide})",
            remote_seq >= 8,
        ),
        Target(
            f"Upload, small files: aiobatch at default settings vs sequential loop ({rtt * 1000:g} ms round trip)",
            "≥ 8x",
            f"{remote_auto:.1f}x",
            remote_auto >= 8,
        ),
        Target(
            "Upload, large files: aiobatch vs bare PUT ceiling", "≥ 0.95x", f"{large_bare:.2f}x", large_bare >= 0.95
        ),
    ]
    notes = [
        f"MB/s is 10^6 bytes per second of file data; {rounds} rounds on loopback and {latency_rounds} through a "
        f"relay adding {rtt * 1000:g} ms per round trip (a client some distance from its storage account); "
        "variants interleaved, a fresh Azurite (in-memory) per round.",
        "aiobatch hashes each file (to skip what is already there, and for Content-MD5), lists the container once, "
        "and sends a transactional MD5 with every request; the ceiling sends the same bytes with none of that "
        "(it sends Content-MD5 with blocks: Azurite hashes a block itself otherwise, at three times the cost).",
        f"With {concurrency} requests in flight, concurrency can gain at most {concurrency}x over a sequential "
        "loop when round trips dominate. At default settings `upload_files` tunes the requests in flight to the "
        "throughput (from 4, doubling while it grows, halving on 503/429/timeouts, at most 64).",
    ]
    return CaseResult(
        case="upload",
        title="Upload to Azurite",
        headers=["Files", "Variant", "MB/s (median)", "range", "aiobatch x"],
        rows=rows,
        targets=targets,
        notes=notes,
        params={
            "small": small,
            "large": large,
            "large_size": large_size,
            "rounds": rounds,
            "latency_rounds": latency_rounds,
            "concurrency": concurrency,
            "rtt": rtt,
        },
        raw={f"{s}/{v}": rates[(s, v)].values for s, v in rates},
    )
