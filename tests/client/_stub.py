"""`StubServer`: a loopback HTTP server that answers each request from a script.

The stub shapes faults (a 503, a Retry-After, a dropped connection, an OData error body) for the real SDK
clients to meet, so translation and retry tests exercise the SDKs' own pipelines rather than hand-made
exception objects. It is not a Batch or Storage service: for those, the tests use the emulator and Azurite.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class StubServer:
    """Serve ``behaviour(request, n)`` (n = 0, 1, ...) on 127.0.0.1, port chosen by the OS."""

    behaviour: Behaviour
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> StubServer:
        async def handle(request: web.Request) -> web.StreamResponse:
            n = len(self.seen)
            self.seen.append(Seen(request.method, request.path, request.query_string, dict(request.headers)))
            await request.read()
            return await self.behaviour(request, n)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def batch_error(status: int, code: str, message: str = "", headers: dict[str, str] | None = None) -> Behaviour:
    """Answer every request with a Batch-style OData error."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        body: dict[str, Any] = {
            "odata.metadata": "https://x/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
            "code": code,
            "message": {"lang": "en-US", "value": message or f"{code} happened."},
        }
        return web.Response(
            status=status, body=json.dumps(body), content_type="application/json", headers=headers or {}
        )

    return answer


def storage_error(status: int, code: str, message: str = "", headers: dict[str, str] | None = None) -> Behaviour:
    """Answer every request with a Blob-Storage-style XML error."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        body = (
            '<?xml version="1.0" encoding="utf-8"?><Error><Code>'
            f"{code}</Code><Message>{message or code}\nRequestId:abc\nTime:now</Message></Error>"
        )
        h = {"x-ms-error-code": code, **(headers or {})}
        return web.Response(status=status, body=body, content_type="application/xml", headers=h)

    return answer


async def drop(request: web.Request, n: int) -> web.StreamResponse:
    """Close the connection without answering."""
    assert request.transport is not None
    request.transport.close()
    return web.Response(status=200)


def sequence(*behaviours: Behaviour) -> Behaviour:
    """Use the n-th behaviour for the n-th request, the last one for every request after."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        return await behaviours[min(n, len(behaviours) - 1)](request, n)

    return answer


def pool_json(pool_id: str = "p1") -> Behaviour:
    """Answer with a minimal Batch pool."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response({"id": pool_id, "state": "active"})

    return answer
