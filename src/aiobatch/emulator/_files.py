"""HTTP transfer of resource files (in) and output files (out) for the emulator's task runner.

Everything here speaks plain HTTP to Blob Storage (or any HTTP server, for ``httpUrl`` resource files)
through one shared :class:`aiohttp.ClientSession`, the way a Batch node agent does: the SAS token that
authorises a request is part of the URL it was given, so no storage SDK and no credentials are involved.

Rules every function here keeps:

- File data is streamed in chunks; no file is ever held whole in memory (an upload holds one 4 MiB block).
- A download lands under a hidden temporary name and is renamed into place only once complete and verified,
  so a partial download never shows up as the final file.
- Transient failures (dropped connections, timeouts, 408/429/5xx) are retried a few times with a short
  jittered backoff; anything else fails at once with a :class:`TransferError`.
- URLs in messages, logs and error details have their SAS signature masked (``sig=REDACTED``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import logging
import os
import random
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import aiohttp
import anyio
from yarl import URL

__all__ = [
    "BLOCK_SIZE",
    "TransferError",
    "blob_url",
    "download",
    "list_blobs",
    "mask_sas",
    "upload_file",
]

log = logging.getLogger("aiobatch.emulator")

#: The Blob REST API version sent as ``x-ms-version``; Azurite 3.37 (and the real service) accept it.
X_MS_VERSION = "2021-08-06"
#: Files up to this size go up in one Put Blob; larger ones as Put Block (this size each) + Put Block List.
BLOCK_SIZE = 4 * 1024 * 1024
#: Read/write granularity when streaming a download to disk.
CHUNK_SIZE = 1024 * 1024
#: How many times one request is tried before a transient failure becomes final.
ATTEMPTS = 4
#: Base delay of the exponential backoff between attempts, in seconds (tests may set it to 0).
BACKOFF = 0.2
#: Blob names asked for per List Blobs page (the service's own maximum is 5000).
LIST_PAGE_SIZE = 5000
#: The longest a ``Retry-After`` answer makes us wait, in seconds.
MAX_RETRY_AFTER = 5.0

_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=60)
_SIG = re.compile(r"(?i)(\bsig=)[^&\s\"'<>]*")
_UNSAFE = re.compile(r"[^\x21-\x7e]")

Kind = Literal["access_denied", "not_found", "conflict", "timed_out", "misc"]


def mask_sas(text: str) -> str:
    """Return *text* with the value of every ``sig=`` query parameter replaced by ``REDACTED``.

    Applied to every URL and every server message that leaves this module, so that the signature of a SAS (a
    secret that grants access) never reaches a log line, an exception or a task's failure details.
    """
    return _SIG.sub(r"\1REDACTED", text)


class TransferError(Exception):
    """A download, listing or upload that failed for good: after retries, or at once when not transient.

    Attributes:
        kind: what went wrong, in the terms the Batch failure codes distinguish: ``access_denied`` (401/403),
            ``not_found`` (404), ``conflict`` (409), ``timed_out`` (every attempt timed out) or ``misc``.
        url: the URL involved, SAS signature masked.
        status: the HTTP status of the last answer, or None when no answer came (connection error, timeout).
        error_code: the storage error code (``x-ms-error-code`` or the XML ``<Code>``), when there was one.
        reason: a one-line explanation: the server's message, the connection error, or what is wrong with the
            SAS (for example that it expired), masked.
    """

    def __init__(
        self,
        kind: Kind,
        url: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        reason: str = "",
    ) -> None:
        self.kind: Kind = kind
        self.url = mask_sas(url)
        self.status = status
        self.error_code = error_code
        self.reason = mask_sas(reason)
        what = f"HTTP {status}" if status is not None else "no answer"
        code = f" {error_code}" if error_code else ""
        super().__init__(f"{self.url}: {what}{code}: {self.reason}".rstrip(": "))

    def details(self) -> tuple[tuple[str, str], ...]:
        """Name/value pairs for a task's ``failureInfo.details``: masked URL, status and reasons."""
        pairs: list[tuple[str, str]] = [("Url", self.url)]
        if self.status is not None:
            pairs.append(("HttpStatusCode", str(self.status)))
        if self.error_code:
            pairs.append(("StorageErrorCode", self.error_code))
        if self.reason:
            pairs.append(("Reason", self.reason))
        return tuple(pairs)


class _Transient(Exception):
    """An attempt that failed in a way worth repeating; carries what the final error would say."""

    def __init__(self, error: TransferError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


# --- URLs ---------------------------------------------------------------------------------------------------


def _normalize(url: str) -> str:
    """Percent-encode what may not appear raw in a URL (spaces, non-ASCII), leaving existing escapes alone."""
    if not _UNSAFE.search(url):
        return url
    parts = urlsplit(url)
    path = quote(parts.path, safe="/%:@!$&'()*+,;=~-._")
    query = quote(parts.query, safe="/%:@!$&'()*+,;=~-._?")
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


def _with_query(url: str, **params: str) -> str:
    """Append query parameters to *url* (which may already carry a SAS query), values percent-encoded."""
    parts = urlsplit(url)
    extra = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def blob_url(container_url: str, blob_name: str) -> str:
    """Return the URL of blob *blob_name* in the container at *container_url*, keeping its SAS query.

    The name is percent-encoded segment by segment (``/`` stays a separator), so names with spaces, ``#``,
    ``?`` or non-ASCII characters address the right blob.

    Example:
        >>> blob_url("http://h/acct/c?sv=1&sig=x", "a b/é.gif")
        'http://h/acct/c/a%20b/%C3%A9.gif?sv=1&sig=x'
    """
    parts = urlsplit(_normalize(container_url))
    path = parts.path.rstrip("/") + "/" + quote(blob_name, safe="/~")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _sas_reason(url: str, *, now: dt.datetime | None = None) -> str:
    """Explain, from the SAS in *url* itself, why storage may have refused it (expired, not yet valid).

    Storage emulators (Azurite among them) answer an expired SAS with a bare ``AuthorizationFailure``; the
    real service says "Signature not valid in the specified time frame". Reading ``se``/``st`` from the URL
    lets a failed task say plainly that its SAS expired, whichever of the two answered.
    """
    query = parse_qs(urlsplit(url).query)
    now = now or dt.datetime.now(dt.timezone.utc)
    for key, verdict in (("se", "expired"), ("st", "is not valid before")):
        values = query.get(key)
        if not values:
            continue
        try:
            when = dt.datetime.fromisoformat(values[0].replace("Z", "+00:00"))
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        if key == "se" and when <= now:
            return f"the SAS token {verdict} at {values[0]} (signed expiry time, se); it is now {_iso(now)}"
        if key == "st" and when > now:
            return f"the SAS token {verdict} {values[0]} (signed start time, st); it is now {_iso(now)}"
    return ""


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- requests and retries -----------------------------------------------------------------------------------


def _kind_for(status: int) -> Kind:
    if status in (401, 403):
        return "access_denied"
    if status == 404:
        return "not_found"
    if status == 409:
        return "conflict"
    return "misc"


async def _status_error(resp: aiohttp.ClientResponse, url: str) -> TransferError | _Transient:
    """Turn a non-success answer into the error to raise: final, or transient (worth another attempt)."""
    code = resp.headers.get("x-ms-error-code")
    message = ""
    with contextlib.suppress(Exception):
        body = await resp.content.read(16 * 1024)
        root = ET.fromstring(body)
        code = code or (root.findtext("Code") or None)
        message = (root.findtext("Message") or "").split("\n", 1)[0].strip()
        detail = (root.findtext("AuthenticationErrorDetail") or "").strip()
        if detail:
            message = f"{message} {detail}".strip()
    message = message or resp.reason or ""
    if resp.status in (401, 403):
        sas = _sas_reason(url)
        if sas:
            message = f"{message} ({sas})" if message else sas
    error = TransferError(_kind_for(resp.status), url, status=resp.status, error_code=code, reason=message)
    if resp.status in _TRANSIENT_STATUSES:
        retry_after = None
        with contextlib.suppress(ValueError):
            retry_after = float(resp.headers.get("Retry-After", ""))
        return _Transient(error, retry_after)
    return error


def _connection_error(url: str, exc: BaseException) -> _Transient:
    if isinstance(exc, asyncio.TimeoutError):
        return _Transient(TransferError("timed_out", url, reason="the request timed out"))
    return _Transient(TransferError("misc", url, reason=f"{type(exc).__name__}: {exc}"))


async def _backoff(attempt: int, retry_after: float | None) -> None:
    delay = BACKOFF * (2**attempt) * (0.5 + random.random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    await asyncio.sleep(delay)


def _headers(extra: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    headers = {"x-ms-version": X_MS_VERSION}
    headers.update(dict(extra))
    return headers


async def _send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
    ok: tuple[int, ...] = (200, 201),
) -> bytes:
    """Send one small request (a listing, a Put Blob or Block) with retries; return the answer's body."""
    for attempt in range(ATTEMPTS):
        try:
            async with http.request(
                method, URL(url, encoded=True), headers=_headers(headers or {}), data=data, timeout=_TIMEOUT
            ) as resp:
                if resp.status in ok:
                    return await resp.read()
                failure = await _status_error(resp, url)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            failure = _connection_error(url, exc)
        if isinstance(failure, TransferError):
            raise failure
        if attempt == ATTEMPTS - 1:
            raise failure.error
        log.debug("retrying %s %s after %s", method, mask_sas(url), failure)
        await _backoff(attempt, failure.retry_after)
    raise AssertionError("unreachable")  # pragma: no cover


# --- downloads ----------------------------------------------------------------------------------------------


async def download(http: aiohttp.ClientSession, url: str, dest: Path, *, file_mode: int | None = None) -> int:
    """Download *url* to *dest*, streaming, and return the number of bytes written.

    The data goes to a hidden temporary file beside *dest* that is renamed into place only once the whole body
    arrived (and matched ``Content-Length`` and, when the server sent one, ``Content-MD5``); on any failure or
    cancellation the temporary file is removed. Parent directories are created as needed; the caller sees to
    it that the way to *dest* goes where it should (the runner keeps resource files inside a task's working
    directory). A link at *dest* itself is replaced by the file, never written through.

    Args:
        http: the session to send the request through.
        url: the URL to fetch, typically a blob URL with a SAS query; spaces and non-ASCII characters in it
            are percent-encoded if they are not already.
        dest: the final path of the file.
        file_mode: permission bits to give the file (for example ``0o770``), or None to keep the default.

    Returns:
        The size of the downloaded file in bytes.

    Raises:
        TransferError: the server refused (403, 404, ...), or every attempt failed in a transient way.
        OSError: the file or its directory could not be created or written.
    """
    url = _normalize(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(ATTEMPTS):
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
        try:
            async with http.get(URL(url, encoded=True), headers=_headers(), timeout=_TIMEOUT) as resp:
                if resp.status == 200:
                    size = await _stream_to(resp, tmp, url)
                    if file_mode is not None:
                        os.chmod(tmp, file_mode)
                    os.replace(tmp, dest)
                    return size
                failure = await _status_error(resp, url)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            failure = _connection_error(url, exc)
        except _Transient as exc:
            failure = exc
        finally:
            tmp.unlink(missing_ok=True)
        if isinstance(failure, TransferError):
            raise failure
        if attempt == ATTEMPTS - 1:
            raise failure.error
        log.debug("retrying download of %s after %s", mask_sas(url), failure)
        await _backoff(attempt, failure.retry_after)
    raise AssertionError("unreachable")  # pragma: no cover


async def _stream_to(resp: aiohttp.ClientResponse, tmp: Path, url: str) -> int:
    """Write the body of *resp* to *tmp* chunk by chunk; raise _Transient if it arrived short or corrupted."""
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    # anyio's file object runs each write in a worker thread, so a large file never stalls the event loop
    # (which also serves the emulator's HTTP API). Opening and closing happen here, on the loop: a cancelled
    # task never gets back a file a worker thread opened for it, nor closes one through a worker thread (the
    # cancellation strikes first), and the descriptor leaks.
    # "x": a new file or nothing -- never through whatever (a link) might already sit at that name.
    with open(tmp, "xb") as f:  # noqa: ASYNC230 (a local create, not a slow read)
        out = anyio.wrap_file(f)
        async for chunk in resp.content.iter_chunked(CHUNK_SIZE):
            md5.update(chunk)
            size += len(chunk)
            await out.write(chunk)
    expected = resp.content_length
    if expected is not None and size != expected:
        raise _Transient(TransferError("misc", url, reason=f"the body ended after {size} of {expected} bytes"))
    sent_md5 = resp.headers.get("Content-MD5")
    if sent_md5 and resp.headers.get("Content-Range") is None:
        got = base64.b64encode(md5.digest()).decode()
        if got != sent_md5:
            raise _Transient(TransferError("misc", url, reason=f"Content-MD5 mismatch: got {got}, sent {sent_md5}"))
    return size


async def list_blobs(http: aiohttp.ClientSession, container_url: str, prefix: str | None = None) -> AsyncIterator[str]:
    """Yield the names of the blobs in the container at *container_url* (a SAS URL) that start with *prefix*.

    Uses the Blob REST API's List Blobs (``?restype=container&comp=list``) and follows ``NextMarker`` until
    the listing is complete. The SAS must grant list permission.

    Raises:
        TransferError: the container could not be listed (403 without list permission or with an expired SAS,
            404 when the container does not exist, ...).
    """
    base = _normalize(container_url)
    marker = ""
    while True:
        params = {"restype": "container", "comp": "list", "maxresults": str(LIST_PAGE_SIZE)}
        if prefix:
            params["prefix"] = prefix
        if marker:
            params["marker"] = marker
        body = await _send(http, "GET", _with_query(base, **params), ok=(200,))
        root = ET.fromstring(body)
        for name in root.iterfind("./Blobs/Blob/Name"):
            if name.text:
                yield name.text
        next_marker = root.findtext("NextMarker") or ""
        if not next_marker:
            return
        if next_marker == marker:  # a server that repeats itself would keep us here forever
            raise TransferError("misc", base, reason=f"the listing repeated NextMarker {next_marker!r}")
        marker = next_marker


# --- uploads ------------------------------------------------------------------------------------------------

# Put Block List takes the blob's HTTP properties as x-ms-blob-* headers, where Put Blob takes plain ones.
_BLOB_PROPERTY_HEADERS = {
    "content-type": "x-ms-blob-content-type",
    "content-encoding": "x-ms-blob-content-encoding",
    "content-language": "x-ms-blob-content-language",
    "content-disposition": "x-ms-blob-content-disposition",
    "cache-control": "x-ms-blob-cache-control",
}


async def upload_file(
    http: aiohttp.ClientSession,
    src: Path,
    url: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
) -> str:
    """Upload the file *src* as a block blob to *url* (a blob URL carrying a SAS with write permission).

    Files up to :data:`BLOCK_SIZE` go up with one Put Blob; larger ones block by block (Put Block, then Put
    Block List), one block in memory at a time. Either way the blob's ``Content-MD5`` property is set to the
    MD5 of the whole file, so readers can verify what they download, and every request carries a
    transactional MD5 so that storage rejects a body corrupted on the way.

    Args:
        http: the session to send the requests through.
        src: the local file.
        url: the destination blob's URL, from :func:`blob_url`.
        headers: extra Put Blob headers (a task's ``uploadHeaders``), e.g. ``("Content-Type", "image/gif")``.

    Returns:
        The base64 MD5 of the uploaded content.

    Raises:
        TransferError: storage refused the upload (403 for a SAS without write permission or expired, 404
            for a missing container, ...), or every attempt failed in a transient way.
        OSError: the local file could not be read.
    """
    url = _normalize(url)
    size = (await anyio.Path(src).stat()).st_size
    extra = list(headers)
    if size <= BLOCK_SIZE:
        data = await anyio.Path(src).read_bytes()  # at most one block
        digest = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        put = {"x-ms-blob-type": "BlockBlob", "Content-MD5": digest, "x-ms-blob-content-md5": digest}
        put.setdefault("Content-Type", "application/octet-stream")
        put.update(extra)
        await _send(http, "PUT", url, headers=put, data=data, ok=(201,))
        return digest

    whole = hashlib.md5(usedforsecurity=False)
    block_ids: list[str] = []
    with open(src, "rb") as raw:  # noqa: ASYNC230 (opened and closed on the loop: see _stream_to)
        f = anyio.wrap_file(raw)
        while chunk := await f.read(BLOCK_SIZE):
            whole.update(chunk)
            block_id = base64.b64encode(f"block-{len(block_ids):08d}".encode()).decode()
            chunk_md5 = base64.b64encode(hashlib.md5(chunk, usedforsecurity=False).digest()).decode()
            await _send(
                http,
                "PUT",
                _with_query(url, comp="block", blockid=block_id),
                headers={"Content-MD5": chunk_md5},
                data=chunk,
                ok=(201,),
            )
            block_ids.append(block_id)
    digest = base64.b64encode(whole.digest()).decode()
    body = (
        '<?xml version="1.0" encoding="utf-8"?><BlockList>'
        + "".join(f"<Latest>{b}</Latest>" for b in block_ids)
        + "</BlockList>"
    ).encode()
    commit = {"x-ms-blob-content-md5": digest, "x-ms-blob-content-type": "application/octet-stream"}
    for name, value in extra:
        commit[_BLOB_PROPERTY_HEADERS.get(name.lower(), name)] = value
    commit["Content-Type"] = "application/xml"
    await _send(http, "PUT", _with_query(url, comp="blocklist"), headers=commit, data=body, ok=(201,))
    return digest
