"""A seeded fault-injecting reverse proxy in front of a Blob Storage endpoint (Azurite), for reliability tests.

`StorageFaultProxy` listens on loopback, forwards every request to the real endpoint byte for byte, and now and
then misbehaves on purpose. Point a client at `StorageFaultProxy.blob_endpoint` (or its `connection_string`)
instead of Azurite's; the account, key and SAS tokens stay the same, because Shared Key signs the account, path,
query and ``x-ms-*`` headers, never the ``Host``, and the proxy changes none of them.

Kinds (rates are probabilities per eligible request, drawn in this order from one uniform number):

    ``503``     answer 503 ServerBusy with a storage XML error body; the request is not forwarded.
    ``reset``   drop the connection. A request with a body (an upload) is dropped before it is forwarded
                (it never takes effect) or after (it took effect; the answer is lost), half and half. Any
                other request is forwarded and its answer cut off at a random byte of the body (or, for an
                answer without a body, not sent at all).
    ``flip``    only a GET of blob data (no ``comp=`` query) answered 200/206 with a body: one byte of the body,
                at a random offset, is XOR-ed with a random non-zero value. Headers stay as they were, so the
                body no longer matches the blob's ``Content-MD5`` (or ``x-ms-content-crc64``).

Decisions are reproducible: each request's fate is drawn from an RNG seeded by the proxy's seed, the request's
identity (method, path, the query parameters that name the operation, the range) and how many times that
identity was seen before. Concurrent requests therefore get the same faults on every run with the same seed,
whatever order they arrive in. Bodies are streamed in chunks in both directions; nothing holds a whole blob.

What was injected is counted in `StorageFaultProxy.injected` (by kind) and listed in
`StorageFaultProxy.injections`; `StorageFaultProxy.forwarded` counts requests sent upstream, by method. Faults
can be aimed (`methods`, `pattern`), bounded (`limit`) and switched off while a test sets up (`enabled`,
`paused`). Nothing the proxy logs carries an account key or a SAS signature: targets go through `redact`, and
aiohttp's access log (which prints request lines, SAS included) is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import re
import secrets
import socket
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import aiohttp
import yarl
from aiohttp import web
from multidict import CIMultiDict

from ._redact import redact, register_secret

__all__ = ["KINDS", "Injection", "StorageFaultProxy"]

logger = logging.getLogger("aiobatch.faultproxy")

#: The fault kinds, in the order a request's draw is matched against their rates.
KINDS: Final = ("503", "reset", "flip")

# Connection-level headers, which belong to one hop and are not forwarded (RFC 9110, 7.6.1).
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# Query parameters that say which operation a request is (SAS parameters and timeouts do not).
_IDENTITY_PARAMS: Final = (
    "restype",
    "comp",
    "blockid",
    "blocklisttype",
    "prefix",
    "delimiter",
    "marker",
    "maxresults",
    "include",
    "snapshot",
    "versionid",
)
# aiohttp's client would otherwise add these; Content-Type is signed by Shared Key, so adding one breaks it.
_NO_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_CHUNK: Final = 64 * 1024


@dataclass(frozen=True)
class Injection:
    """One fault the proxy injected.

    Attributes:
        kind: ``"503"``, ``"reset"`` or ``"flip"``.
        variant: how: ``"server-busy"``; for resets ``"before-forward"``, ``"mid-body"`` or ``"no-answer"``;
            for flips ``"byte N"`` (N is the offset in the answer's body).
        method: the request's HTTP method.
        target: the request's path and query, redacted (SAS signatures masked).
        forwarded: whether the request reached the upstream service (it may have taken effect).
    """

    kind: str
    variant: str
    method: str
    target: str
    forwarded: bool


def _check_rates(rates: Mapping[str, float]) -> dict[str, float]:
    unknown = set(rates) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown storage fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    checked = {kind: float(rate) for kind, rate in rates.items()}
    for kind, rate in checked.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the rate of {kind!r} faults must be between 0 and 1, not {rate}")
    if sum(checked.values()) > 1.0 + 1e-9:
        raise ValueError(f"fault rates add up to {sum(checked.values()):g}; at most 1 fault per request, so <= 1")
    return checked


class StorageFaultProxy:
    """A reverse proxy on 127.0.0.1 in front of a Blob endpoint that injects seeded 503s, resets and bit flips.

    An async context manager: entering binds a free port and starts serving; leaving stops it. Transparent
    when no fault is drawn: status, headers and bodies pass unchanged both ways, so Shared Key and SAS keep
    working.

    Args:
        upstream: the real Blob endpoint, e.g. Azurite's ``http://127.0.0.1:10000/devstoreaccount1``.
        account_name: the account, for `connection_string`; defaults to the last segment of *upstream*'s path
            (path-style endpoints, as Azurite's).
        account_key: the account key, for `connection_string` only (never logged).
        seed: the RNG seed; a random one is chosen (and logged) when ``None``.
        rates: probability per eligible request for each kind in `KINDS`; they must add up to at most 1.
        methods: only requests with these HTTP methods are eligible (``None``: all).
        pattern: only requests whose ``"METHOD /path?query"`` matches this regular expression (searched, not
            anchored) are eligible (``None``: all).
        limit: at most this many injections in all (``None``: no bound).
        enabled: inject at all; ``False`` makes the proxy a plain pass-through until switched on.
        host: the address to listen on.
        retry_after: seconds to send in ``Retry-After`` with 503s (``None``: no header, as the service does
            for ServerBusy).

    Attributes:
        seed: the seed in use.
        methods: see Args; may be changed at any time.
        pattern: see Args (compiled); may be changed at any time.
        limit: see Args; may be changed at any time.
        enabled: see Args; may be changed at any time.
        injected: injections by kind.
        injections: every injection, in order.
        forwarded: requests sent upstream, by HTTP method.

    Raises:
        ValueError: an unknown kind, a rate outside 0..1, or rates adding up to more than 1.

    Example:
        >>> async def flaky_upload(azurite, paths):  # doctest: +SKIP
        ...     async with StorageFaultProxy(azurite.blob_endpoint, account_key=azurite.account_key,
        ...                                  seed=7, rates={"503": 0.1, "reset": 0.1}) as proxy:
        ...         settings = StorageSettings(connection_string=proxy.connection_string)
        ...         async with blob_service_client(settings) as service:
        ...             await upload_files(service, "inputs", paths)
        ...         print(proxy.injected)
    """

    def __init__(
        self,
        upstream: str,
        *,
        account_name: str | None = None,
        account_key: str | None = None,
        seed: int | None = None,
        rates: Mapping[str, float] | None = None,
        methods: Iterable[str] | None = None,
        pattern: str | re.Pattern[str] | None = None,
        limit: int | None = None,
        enabled: bool = True,
        host: str = "127.0.0.1",
        retry_after: float | None = None,
    ) -> None:
        url = yarl.URL(upstream.rstrip("/"))
        if not url.is_absolute() or url.scheme not in ("http", "https"):
            raise ValueError(f"upstream must be an http(s) Blob endpoint URL, not {redact(upstream)!r}")
        self._origin = url.origin()
        self._base_path = url.path.rstrip("/")
        self.account_name = account_name or (self._base_path.rsplit("/", 1)[-1] or None)
        register_secret(account_key)
        self._account_key = account_key
        self.seed = seed if seed is not None else secrets.randbits(32)
        self._rates = _check_rates(rates or {})
        self.methods: frozenset[str] | None = None
        self.pattern: re.Pattern[str] | None = None
        self.aim(methods=methods, pattern=pattern)
        self.limit = limit
        self.enabled = enabled
        self.host = host
        self.retry_after = retry_after
        self.injected: Counter[str] = Counter()
        self.injections: list[Injection] = []
        self.forwarded: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._port: int | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._entered = False

    def __repr__(self) -> str:
        where = f"{self.url} -> {self._origin}" if self._port is not None else f"(not started) -> {self._origin}"
        return f"<StorageFaultProxy {where} seed={self.seed} rates={self._rates} enabled={self.enabled}>"

    # ----------------------------------------------------------------------------------------------------
    # Settings
    # ----------------------------------------------------------------------------------------------------

    @property
    def rates(self) -> Mapping[str, float]:
        """The rate of each kind (a copy); assign a new mapping, or use `set_rate`, to change them."""
        return dict(self._rates)

    @rates.setter
    def rates(self, rates: Mapping[str, float]) -> None:
        self._rates = _check_rates(rates)

    def set_rate(self, kind: str, rate: float) -> None:
        """Set the rate of one kind, keeping the others.

        Raises:
            ValueError: an unknown kind, a rate outside 0..1, or rates adding up to more than 1.
        """
        self._rates = _check_rates({**self._rates, kind: rate})

    def aim(self, *, methods: Iterable[str] | None = None, pattern: str | re.Pattern[str] | None = None) -> None:
        """Make only matching requests eligible for faults; ``aim()`` with no arguments makes all eligible.

        Args:
            methods: HTTP methods, e.g. ``("PUT",)``.
            pattern: a regular expression searched in ``"METHOD /path?query"``, e.g. ``r"comp=block(&|$)"``
                for Put Block only.
        """
        self.methods = frozenset(m.upper() for m in methods) if methods is not None else None
        self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Inject nothing inside the block (for a test's setup), then restore the previous `enabled`.

        Example:
            >>> with proxy.paused():  # doctest: +SKIP
            ...     await upload_files(service, "inputs", paths)
        """
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def reset_counts(self) -> None:
        """Forget what was injected and forwarded (the seed and the per-request draws carry on)."""
        self.injected.clear()
        self.injections.clear()
        self.forwarded.clear()

    # ----------------------------------------------------------------------------------------------------
    # Where it listens
    # ----------------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on.

        Raises:
            RuntimeError: the proxy is not running.
        """
        if self._port is None:
            raise RuntimeError("the StorageFaultProxy is not running; use it as 'async with StorageFaultProxy(...)'")
        return self._port

    @property
    def url(self) -> str:
        """The proxy's origin, ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def blob_endpoint(self) -> str:
        """The Blob endpoint to give clients: upstream's path on the proxy's port."""
        return f"{self.url}{self._base_path}"

    @property
    def connection_string(self) -> str:
        """A connection string for the same account through the proxy (it holds the key: do not log it).

        Raises:
            RuntimeError: no account key was given, or the proxy is not running.
        """
        if not self._account_key or not self.account_name:
            raise RuntimeError("pass account_key= (and account_name= for a non-path-style endpoint) to get one")
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self._account_key};BlobEndpoint={self.blob_endpoint};"
        )

    # ----------------------------------------------------------------------------------------------------
    # Lifecycle
    # ----------------------------------------------------------------------------------------------------

    async def start(self) -> StorageFaultProxy:
        """Bind a free port on `host` and start serving (what ``async with`` does).

        Raises:
            RuntimeError: the proxy was started before.
        """
        if self._entered:
            raise RuntimeError("a StorageFaultProxy can be started only once")
        self._entered = True
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # access_log=None: aiohttp's access log prints request lines, SAS signatures included.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        try:
            await runner.setup()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, 0))
            self._runner = runner
            await web.SockSite(runner, sock).start()
        except BaseException:
            await self.aclose()
            raise
        self._port = int(sock.getsockname()[1])
        logger.info(
            "storage fault proxy on %s -> %s (seed %d, rates %s)",
            self.url,
            redact(str(self._origin)),
            self.seed,
            self._rates or "none",
        )
        return self

    async def aclose(self) -> None:
        """Stop serving and close upstream connections; safe to call twice."""
        runner, self._runner = self._runner, None
        session, self._session = self._session, None
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            if session is not None:
                await session.close()
        if self._port is not None:
            logger.info("storage fault proxy (seed %d) injected %s", self.seed, dict(self.injected) or "nothing")

    async def __aenter__(self) -> StorageFaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ----------------------------------------------------------------------------------------------------
    # Deciding
    # ----------------------------------------------------------------------------------------------------

    def _eligible(self, request: web.Request) -> bool:
        if not self.enabled or not self._rates:
            return False
        if self.limit is not None and len(self.injections) >= self.limit:
            return False
        if self.methods is not None and request.method.upper() not in self.methods:
            return False
        return self.pattern is None or self.pattern.search(f"{request.method} {request.raw_path}") is not None

    def _rng(self, request: web.Request) -> random.Random:
        query = request.rel_url.query
        params = "&".join(f"{k}={query[k]}" for k in _IDENTITY_PARAMS if k in query)
        ranged = request.headers.get("x-ms-range") or request.headers.get("Range") or ""
        identity = f"{request.method} {request.rel_url.path}?{params} {ranged}"
        self._seen[identity] += 1
        # A str seed is hashed with SHA-512, so the draw is the same in every process (no hash randomisation).
        return random.Random(f"{self.seed}|{identity}|{self._seen[identity]}")

    def _decide(self, request: web.Request, rng: random.Random) -> str | None:
        if not self._eligible(request):
            return None
        draw = rng.random()
        edge = 0.0
        for kind in KINDS:
            edge += self._rates.get(kind, 0.0)
            if draw < edge:
                if kind == "flip" and not _is_blob_read(request):
                    return None
                return kind
        return None

    def _record(self, kind: str, variant: str, request: web.Request, *, forwarded: bool) -> None:
        target = redact(request.raw_path)
        self.injected[kind] += 1
        self.injections.append(Injection(kind, variant, request.method, target, forwarded))
        logger.debug("injected %s (%s) into %s %s", kind, variant, request.method, target)

    # ----------------------------------------------------------------------------------------------------
    # Serving
    # ----------------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rng = self._rng(request)  # drawn for every request, so identities' counts do not depend on `enabled`
        kind = self._decide(request, rng)
        if kind == "503":
            await _drain(request)
            self._record("503", "server-busy", request, forwarded=False)
            return self._busy(request)
        has_body = request.body_exists
        if kind == "reset" and has_body and rng.random() < 0.5:
            self._record("reset", "before-forward", request, forwarded=False)
            _drop(request, flush=False)
            return web.Response()  # never sent: aiohttp swallows the write to the dropped connection
        session = self._session
        assert session is not None  # _handle runs only between start() and aclose()
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP)
        url = yarl.URL(str(self._origin) + request.raw_path, encoded=True)
        try:
            async with session.request(
                request.method,
                url,
                headers=headers,
                data=request.content if has_body else None,
                allow_redirects=False,
            ) as upstream:
                self.forwarded[request.method] += 1
                return await self._relay(request, upstream, kind, rng)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            if request.transport is None or request.transport.is_closing():
                return web.Response()  # the client went away (or we dropped it) while we were relaying
            logger.warning(
                "storage fault proxy: upstream failed for %s: %s", redact(request.raw_path), redact(str(exc))
            )
            return web.Response(status=502, text=f"upstream failed: {type(exc).__name__}")

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, kind: str | None, rng: random.Random
    ) -> web.StreamResponse:
        headers = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP)
        length = upstream.content_length
        bodiless = request.method == "HEAD" or upstream.status in (204, 304) or length == 0
        if kind == "reset" and bodiless:
            self._record("reset", "no-answer", request, forwarded=True)
            _drop(request, flush=False)
            return web.Response()
        cut: int | None = None
        flip_at: int | None = None
        if kind == "reset":
            cut = rng.randrange(length) if length else -1  # -1: in the first chunk of an unknown length
        elif kind == "flip" and upstream.status in (200, 206) and not bodiless:
            flip_at = rng.randrange(length) if length else -1
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        try:
            await response.prepare(request)
            offset = 0
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                end = offset + len(chunk)
                if flip_at is not None and (flip_at == -1 or offset <= flip_at < end):
                    at = (flip_at if flip_at >= 0 else rng.randrange(len(chunk)) + offset) - offset
                    damaged = bytearray(chunk)
                    damaged[at] ^= rng.randrange(1, 256)
                    chunk = bytes(damaged)
                    self._record("flip", f"byte {offset + at}", request, forwarded=True)
                    flip_at = None
                if cut is not None and (cut == -1 or cut < end):
                    keep = (cut if cut >= 0 else len(chunk) // 2) - offset
                    if keep > 0:
                        await response.write(chunk[:keep])
                    self._record("reset", "mid-body", request, forwarded=True)
                    _drop(request, flush=True)
                    return response
                await response.write(chunk)
                offset = end
            await response.write_eof()
        except ConnectionError:
            pass  # the client hung up; nothing to tell it
        return response

    def _busy(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        now = dt.datetime.now(dt.timezone.utc)
        headers = {
            "x-ms-error-code": "ServerBusy",
            "x-ms-request-id": request_id,
            "x-ms-version": request.headers.get("x-ms-version", "2021-12-02"),
            "Content-Type": "application/xml",
        }
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(0, round(self.retry_after)))
        body = (
            '<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code><Message>The server is currently '
            f"unable to receive requests. Please retry your request.\nRequestId:{request_id}\n"
            f"Time:{now.strftime('%Y-%m-%dT%H:%M:%S.%f')}0Z</Message></Error>"
        )
        return web.Response(
            status=503, reason="The server is currently unable to receive requests.", headers=headers, text=body
        )


def _is_blob_read(request: web.Request) -> bool:
    """A Get Blob: GET of a blob (container and name in the path) that is not a ``comp=`` or ``restype=`` call."""
    query = request.rel_url.query
    return request.method == "GET" and "comp" not in query and "restype" not in query


async def _drain(request: web.Request) -> None:
    """Read and discard a request's body, as a server that refuses it still must to keep the connection."""
    if request.body_exists:
        async for _ in request.content.iter_chunked(_CHUNK):
            pass


def _drop(request: web.Request, *, flush: bool) -> None:
    """Close the client's connection: after sending what is buffered (*flush*), or at once (a reset)."""
    transport = request.transport
    if transport is None:
        return
    if flush:
        transport.close()
    else:
        transport.abort()
